//! ADD of a URL: downloads the file (following redirects; http by hand, https through ureq),
//! verifies `--checksum=sha256:...`, and reads the `Last-Modified` time BuildKit gives the file.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

/// Largest download ADD accepts into memory.
const MAX_SIZE: usize = 1 << 30;

/// Downloads `url`; with `checksum`, fails unless the content's sha256 matches.
pub fn fetch(url: &str, checksum: Option<&str>) -> Result<Vec<u8>> {
    fetch_authorized(url, checksum, None)
}

/// The secrets that authorize a download, as BuildKit names them: `HTTP_AUTH_HEADER_<host>` is
/// the `Authorization` header's value, `HTTP_AUTH_TOKEN_<host>` a bearer token (it wins when
/// both are given). `secret` reads a secret by id.
pub fn authorization_for(
    url: &str,
    secret: impl Fn(&str) -> Result<Option<Vec<u8>>>,
) -> Result<Option<String>> {
    let Some(host) = host_of(url) else {
        return Ok(None);
    };
    let mut value = None;
    if let Some(v) = secret(&format!("HTTP_AUTH_HEADER_{host}"))? {
        value = Some(
            String::from_utf8_lossy(&v)
                .trim_end_matches('\n')
                .to_string(),
        );
    }
    if let Some(v) = secret(&format!("HTTP_AUTH_TOKEN_{host}"))? {
        value = Some(format!(
            "Bearer {}",
            String::from_utf8_lossy(&v).trim_end_matches('\n')
        ));
    }
    Ok(value)
}

/// The host name of an http(s) URL (no userinfo, no port).
fn host_of(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit('@').next()?;
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        hostport.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// [`fetch`] with an `Authorization` header for the URL's host (dropped when a redirect leaves
/// that host, as Go's client drops it). The header is never part of a message.
pub fn fetch_authorized(
    url: &str,
    checksum: Option<&str>,
    authorization: Option<&str>,
) -> Result<Vec<u8>> {
    Ok(download(url, checksum, authorization)?.data)
}

/// What a URL served: its bytes and, when the server sent `Last-Modified`, that time (seconds
/// since the epoch), which BuildKit gives the downloaded file as its mtime.
pub struct Download {
    pub data: Vec<u8>,
    pub modified: Option<i64>,
}

/// [`fetch_authorized`], keeping the `Last-Modified` time.
pub fn download(
    url: &str,
    checksum: Option<&str>,
    authorization: Option<&str>,
) -> Result<Download> {
    let shown = crate::source::git::redact_urls(url);
    let auth = authorization.and_then(|a| host_of(url).map(|h| (h, a.to_string())));
    let (data, last_modified) =
        get(url, 5, auth.as_ref()).with_context(|| format!("ADD {shown}"))?;
    if let Some(sum) = checksum {
        let want = sum
            .strip_prefix("sha256:")
            .ok_or_else(|| anyhow!("ADD --checksum={sum}: expected sha256:<hex>"))?;
        let got = hex::encode(Sha256::digest(&data));
        if !got.eq_ignore_ascii_case(want) {
            bail!("ADD {shown}: checksum mismatch: got sha256:{got}, expected {sum}");
        }
    }
    Ok(Download {
        data,
        modified: last_modified.as_deref().and_then(parse_http_date),
    })
}

/// An HTTP date (`Thu, 02 Jan 2020 03:04:05 GMT`, the form RFC 9110 requires) as seconds since
/// the epoch; `None` for anything else (the file then gets the time it was written, as when
/// the header is missing).
fn parse_http_date(value: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc2822(value.trim())
        .ok()
        .map(|t| t.timestamp())
}

/// The value of header `name` in an HTTP response head.
fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    })
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

/// `auth`: (host, header value), sent only to that host. Returns the body and the
/// `Last-Modified` header.
fn get(
    url: &str,
    redirects_left: u32,
    auth: Option<&(String, String)>,
) -> Result<(Vec<u8>, Option<String>)> {
    let header = auth
        .filter(|(host, _)| host_of(url).as_deref() == Some(host.as_str()))
        .map(|(_, v)| v.as_str());
    let rest = match url.strip_prefix("http://") {
        Some(r) => r,
        None if url.starts_with("https://") => return get_https(url, header),
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
    let authorization = header
        .map(|v| format!("Authorization: {v}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {hostport}\r\nUser-Agent: kiln\r\nAccept: */*\r\n{authorization}\r\n"
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
        let location = header_value(&head, "location")
            .ok_or_else(|| anyhow!("redirect without a Location"))?;
        let next = if location.starts_with('/') {
            format!("http://{hostport}{location}")
        } else {
            location
        };
        return get(&next, redirects_left - 1, auth);
    }
    if status != 200 {
        bail!("HTTP status {status}");
    }
    let modified = header_value(&head, "last-modified");
    Ok((response[header_end + 4..].to_vec(), modified))
}

/// https through ureq (rustls, the platform's roots), following redirects.
fn get_https(url: &str, authorization: Option<&str>) -> Result<(Vec<u8>, Option<String>)> {
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
    let mut request = agent.get(url);
    if let Some(v) = authorization {
        // ureq drops it on redirects (its default), as Go's client does across hosts.
        request = request.header("Authorization", v);
    }
    let mut resp = request.call().map_err(|e| anyhow!("{e}"))?;
    let modified = resp
        .headers()
        .get("last-modified")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let data = resp
        .body_mut()
        .with_config()
        .limit(MAX_SIZE as u64)
        .read_to_vec()
        .map_err(|e| anyhow!("reading the download: {e}"))?;
    Ok((data, modified))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a request up to the end of its head, so the answer never races the request.
    fn read_request_head(s: &mut TcpStream) {
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            req.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn downloads_and_verifies() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for _ in 0..2 {
                let (mut s, _) = listener.accept().unwrap();
                read_request_head(&mut s);
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

    #[test]
    fn last_modified_is_read_as_the_files_time() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for head in [
                "last-modified:  Thu, 02 Jan 2020 03:04:05 GMT\r\n",
                "Last-Modified: yesterday\r\n",
                "",
            ] {
                let (mut s, _) = listener.accept().unwrap();
                read_request_head(&mut s);
                write!(s, "HTTP/1.0 200 OK\r\n{head}Content-Length: 2\r\n\r\nhi").unwrap();
            }
        });
        let url = format!("http://127.0.0.1:{port}/f");
        let got: Vec<Option<i64>> = (0..3)
            .map(|_| download(&url, None, None).unwrap().modified)
            .collect();
        // 2020-01-02T03:04:05Z; a date that is not an HTTP date counts as none.
        assert_eq!(got, [Some(1_577_934_245), None, None]);
    }
}
