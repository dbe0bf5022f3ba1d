//! Redirects: a registry that sends blob downloads to another host (as registries backed by
//! S3 do) must not see its credentials forwarded there.

mod common;
mod registry_support;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use registry_support::*;

struct Request {
    path: String,
    authorization: Option<String>,
}

fn read_request(conn: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut authorization = None;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") {
                authorization = Some(v.trim().to_string());
            }
        }
    }
    Some(Request {
        path,
        authorization,
    })
}

fn respond(mut conn: &TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body);
}

/// Serves one connection at a time with `handler` on a free port.
fn serve(handler: impl Fn(&TcpStream, Request) + Send + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            if let Some(req) = read_request(&conn) {
                handler(&conn, req);
            }
        }
    });
    port
}

#[test]
fn registry_redirect_to_another_host_carries_no_credentials() {
    let fx = Fixture::image(55, &[3000]);
    let blobs = fx.layout.path().join("blobs/sha256");
    let read = |d: &str| std::fs::read(blobs.join(&d[7..])).unwrap();
    let manifest = read(&fx.manifest_digests[0]);
    let config = read(&fx.config_digests[0]);
    let layer = fx.layers[0].clone();
    let layer_digest = sha256(&layer);

    // The "storage" host: serves blobs, records the Authorization it is sent.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let (config2, layer2) = (config.clone(), layer.clone());
    let (cd, ld) = (fx.config_digests[0].clone(), layer_digest.clone());
    let storage = serve(move |conn, req| {
        seen2.lock().unwrap().push(req.authorization.clone());
        let body = if req.path.contains(&cd[7..]) {
            &config2
        } else if req.path.contains(&ld[7..]) {
            &layer2
        } else {
            &Vec::new()
        };
        respond(conn, "200 OK", &[], body);
    });

    // The registry: Basic auth, manifests itself, blobs redirected to the storage host.
    let expected = format!("Basic {}", {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    });
    let registry_auth = Arc::new(Mutex::new(Vec::new()));
    let ra = registry_auth.clone();
    let md = fx.manifest_digests[0].clone();
    let registry = serve(move |conn, req| {
        ra.lock().unwrap().push(req.authorization.clone());
        if req.authorization.as_deref() != Some(expected.as_str()) {
            return respond(
                conn,
                "401 Unauthorized",
                &[("WWW-Authenticate", "Basic realm=\"test\"".into())],
                b"",
            );
        }
        if req.path.contains("/manifests/") {
            let headers = [
                (
                    "Content-Type",
                    "application/vnd.oci.image.manifest.v1+json".to_string(),
                ),
                ("Docker-Content-Digest", md.clone()),
            ];
            return respond(conn, "200 OK", &headers, &manifest);
        }
        if let Some(i) = req.path.find("/blobs/") {
            let location = format!(
                "http://127.0.0.1:{storage}/store/{}?X-Signature=abc",
                &req.path[i + 7..]
            );
            return respond(
                conn,
                "307 Temporary Redirect",
                &[("Location", location)],
                b"",
            );
        }
        respond(conn, "404 Not Found", &[], b"");
    });

    let root = common::temp_root();
    let cfg = root.path().join("config.toml");
    std::fs::write(&cfg, "").unwrap();
    let out = common::kiln_command()
        .arg("--root")
        .arg(root.path())
        .args(["pull", "-q", &format!("127.0.0.1:{registry}/redir/app:1")])
        .env("KILN_CONFIG", &cfg)
        .env("DOCKER_CONFIG", root.path())
        .env("KILN_REGISTRY_USER", USER)
        .env("KILN_REGISTRY_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        fx.manifest_digests[0]
    );
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.len(),
        2,
        "config and layer fetched from the storage host"
    );
    assert!(
        seen.iter().all(Option::is_none),
        "credentials were forwarded to another host: {seen:?}"
    );
    assert!(
        registry_auth.lock().unwrap().iter().any(Option::is_some),
        "the registry itself got credentials"
    );
    assert!(has_blob(root.path(), &layer_digest));
    assert_store_clean(root.path());
}
