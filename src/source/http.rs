//! ADD of a URL: downloads the file (following redirects; http by hand, https through ureq),
//! verifies `--checksum=sha256:...`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

/// Largest download ADD accepts into memory.
const MAX_SIZE: usize = 1 << 30;

/// Downloads `url`; with `checksum`, fails unless the content's sha256 matches.
pub fn fetch(url: &str, checksum: Option<&str>) -> Result<Vec<u8>> {
    let data = get(url, 5).with_context(|| format!("ADD {url}"))?;
    if let Some(sum) = checksum {
        let want = sum
            .strip_prefix("sha256:")
            .ok_or_else(|| anyhow!("ADD --checksum={sum}: expected sha256:<hex>"))?;
        let got = hex::encode(Sha256::digest(&data));
        if !got.eq_ignore_ascii_case(want) {
            bail!("ADD {url}: checksum mismatch: got sha256:{got}, expected {sum}");
        }
    }
    Ok(data)
}

/// The file name ADD gives a download: the last path segment of the URL.
pub fn file_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let after_host = path.splitn(4, '/').nth(3).unwrap_or("");
    after_host
        .rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or("download")
        .to_string()
}

fn get(url: &str, redirects_left: u32) -> Result<Vec<u8>> {
    let rest = match url.strip_prefix("http://") {
        Some(r) => r,
        None if url.starts_with("https://") => return get_https(url),
        None => bail!("unsupported URL scheme"),
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let mut stream = TcpStream::connect(&addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {hostport}\r\nUser-Agent: kiln\r\nAccept: */*\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream
        .take(MAX_SIZE as u64 + 65536)
        .read_to_end(&mut response)?;
    let header_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response"))?;
    let head = String::from_utf8_lossy(&response[..header_end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("malformed HTTP status line"))?;
    if (300..400).contains(&status) {
        if redirects_left == 0 {
            bail!("too many redirects");
        }
        let location = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("location"))
                    .map(|(_, v)| v.trim().to_string())
            })
            .ok_or_else(|| anyhow!("redirect without a Location"))?;
        let next = if location.starts_with('/') {
            format!("http://{hostport}{location}")
        } else {
            location
        };
        return get(&next, redirects_left - 1);
    }
    if status != 200 {
        bail!("HTTP status {status}");
    }
    Ok(response[header_end + 4..].to_vec())
}

/// https through ureq (rustls, the platform's roots), following redirects.
fn get_https(url: &str) -> Result<Vec<u8>> {
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_per_read(Some(Duration::from_secs(120)))
        .accept_encoding("identity")
        .build()
        .new_agent();
    let mut resp = agent.get(url).call().map_err(|e| anyhow!("{e}"))?;
    resp.body_mut()
        .with_config()
        .limit(MAX_SIZE as u64)
        .read_to_vec()
        .map_err(|e| anyhow!("reading the download: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downloads_and_verifies() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for _ in 0..2 {
                let (mut s, _) = listener.accept().unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    req.extend_from_slice(&buf[..n]);
                }
                s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                    .unwrap();
            }
        });
        let url = format!("http://127.0.0.1:{port}/files/a.txt?x=1");
        assert_eq!(file_name(&url), "a.txt");
        let sum = format!("sha256:{}", hex::encode(Sha256::digest(b"hello")));
        assert_eq!(fetch(&url, Some(&sum)).unwrap(), b"hello");
        assert!(fetch(&url, Some("sha256:00"))
            .unwrap_err()
            .to_string()
            .contains("checksum mismatch"));
    }
}
