//! Real components for the registry tests: Debian's `docker-registry` on a free loopback port
//! (no auth, htpasswd, or token auth against a token server run here), a byte-level proxy that
//! corrupts or cuts transfers, OCI layout fixtures for skopeo, and store checks.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

pub const USER: &str = "kiltest";
pub const PASSWORD: &str = "s3cret-Pa55";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AuthMode {
    None,
    Basic,
    Token,
}

/// A running registry; killed (and its token server stopped) when dropped, even on panic.
pub struct Registry {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub mode: AuthMode,
    token_server: Option<TokenServer>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    pub fn start(mode: AuthMode) -> Registry {
        Registry::start_with(mode, false)
    }

    /// A registry that logs every request it serves (see [`Registry::requests`]).
    pub fn start_logged(mode: AuthMode) -> Registry {
        Registry::start_with(mode, true)
    }

    /// The request lines the registry served so far, each as `METHOD PATH STATUS` (a registry
    /// from [`Registry::start_logged`]; its access log is in combined log format).
    pub fn requests(&self) -> Vec<String> {
        let log = fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default();
        log.lines()
            .filter_map(|l| {
                let (_, rest) = l.split_once('"')?;
                let (request, after) = rest.split_once('"')?;
                let mut words = request.split_whitespace();
                let (method, path) = (words.next()?, words.next()?);
                let status = after.split_whitespace().next()?;
                Some(format!("{method} {path} {status}"))
            })
            .collect()
    }

    fn start_with(mode: AuthMode, logged: bool) -> Registry {
        let mut last_err = String::new();
        // A free port can be taken between asking and binding; try a few.
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("kiln-registry.")
                .tempdir()
                .unwrap();
            let port = free_port();
            let mut token_server = None;
            let auth = match mode {
                AuthMode::None => String::new(),
                AuthMode::Basic => {
                    let out = Command::new("htpasswd")
                        .args(["-Bbn", USER, PASSWORD])
                        .output()
                        .expect("htpasswd (apache2-utils)");
                    assert!(out.status.success());
                    fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
                    format!(
                        "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                        dir.path().join("htpasswd").display()
                    )
                }
                AuthMode::Token => {
                    let ts = TokenServer::start(dir.path());
                    let s = format!(
                        "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: kiln-test-registry\n    issuer: kiln-test-issuer\n    rootcertbundle: {}\n",
                        ts.port,
                        ts.cert.display()
                    );
                    token_server = Some(ts);
                    s
                }
            };
            let config = format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: {}\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
                !logged,
                dir.path().join("data").display()
            );
            let cfg_path = dir.path().join("config.yml");
            fs::write(&cfg_path, config).unwrap();
            let log = fs::File::create(dir.path().join("registry.log")).unwrap();
            let child = Command::new("/usr/bin/docker-registry")
                .arg("serve")
                .arg(&cfg_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("docker-registry (Debian package docker-registry)");
            let mut reg = Registry {
                child,
                port,
                dir,
                mode,
                token_server,
            };
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = reg.child.try_wait() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return reg;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            last_err = fs::read_to_string(reg.dir.path().join("registry.log")).unwrap_or_default();
            if !last_err.contains("address already in use") {
                panic!("docker-registry did not start: {last_err}");
            }
        }
        panic!("docker-registry did not start: {last_err}")
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// skopeo's credential flags for this registry.
    pub fn creds_args(&self, flag: &str) -> Vec<String> {
        match self.mode {
            AuthMode::None => vec![],
            _ => vec![flag.to_string(), format!("{USER}:{PASSWORD}")],
        }
    }

    pub fn token_requests(&self) -> usize {
        self.token_server
            .as_ref()
            .map(|t| t.requests.load(Ordering::SeqCst))
            .unwrap_or(0)
    }

    /// Stops the registry now (a registry that goes away).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A token server for distribution's `auth.token`: checks Basic credentials, grants what was
/// asked, signs RS256 JWTs with a key made for this test (x5c carries the certificate that the
/// registry's rootcertbundle trusts).
pub struct TokenServer {
    pub port: u16,
    pub cert: PathBuf,
    pub requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl TokenServer {
    fn start(dir: &Path) -> TokenServer {
        let key = dir.join("token-key.pem");
        let cert = dir.join("token-cert.pem");
        let st = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=kiln-test-token",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "openssl req failed");
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .unwrap();
        assert!(der.status.success());
        let x5c = base64::engine::general_purpose::STANDARD.encode(&der.stdout);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let (stop2, req2) = (stop.clone(), requests.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                req2.fetch_add(1, Ordering::SeqCst);
                let (key, x5c) = (key.clone(), x5c.clone());
                std::thread::spawn(move || {
                    let _ = serve_token(conn, &key, &x5c);
                });
            }
        });
        TokenServer {
            port,
            cert,
            requests,
            stop,
        }
    }
}

fn serve_token(conn: TcpStream, key: &Path, x5c: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") {
                authorization = Some(v.trim().to_string());
            }
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut scopes = Vec::new();
    let mut service = String::new();
    for pair in query.split('&') {
        if let Some((k, v)) = pair.split_once('=') {
            match k {
                "scope" => scopes.push(percent_decode(v)),
                "service" => service = percent_decode(v),
                _ => {}
            }
        }
    }
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    let mut out = conn;
    if authorization.as_deref() != Some(expected.as_str()) {
        let body = r#"{"details":"incorrect username or password"}"#;
        write!(out, "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
        return Ok(());
    }
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let (typ, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(serde_json::json!({"type": typ, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": "kiln-test-issuer", "sub": USER, "aud": service,
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", rand_id()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(signing_input.as_bytes())?;
    let sig = child.wait_with_output()?;
    let token = format!("{signing_input}.{}", b64url(&sig.stdout));
    let body = serde_json::json!({"token": token, "expires_in": 300}).to_string();
    write!(out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    Ok(())
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(1);
    h.finish()
}

/// What the proxy does to the first response stream that contains `needle`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Sabotage {
    /// Flip one byte of the needle.
    Corrupt,
    /// Forward the needle, then close every connection and stop listening.
    Cut,
    /// Forward the needle, then send nothing more (a transfer that hangs).
    Stall,
}

/// A TCP proxy in front of a registry that sabotages the transfer containing `needle`.
pub struct Proxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
    /// Set once the needle went by.
    pub triggered: Arc<AtomicBool>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl Proxy {
    pub fn start(upstream: u16, needle: Vec<u8>, sabotage: Sabotage) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let triggered = Arc::new(AtomicBool::new(false));
        let triggered2 = triggered.clone();
        let needle = Arc::new(needle);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return; // drops the listener: later connections are refused
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut &c2, &mut &s2);
                    let _ = s2.shutdown(Shutdown::Write);
                });
                let (needle, stop3, trig) = (needle.clone(), stop2.clone(), triggered2.clone());
                std::thread::spawn(move || pump(server, client, &needle, sabotage, &stop3, &trig));
            }
        });
        Proxy {
            port,
            stop,
            triggered,
        }
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    needle: &[u8],
    sabotage: Sabotage,
    stop: &AtomicBool,
    triggered: &AtomicBool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    // Bytes held back so a needle split across reads is still seen.
    let mut pending: Vec<u8> = Vec::new();
    // A short read timeout flushes what is held back when the stream pauses (end of a
    // response on a kept-alive connection).
    let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Ordering::SeqCst) && sabotage == Sabotage::Cut {
                    break;
                }
                if to.write_all(&pending).is_err() {
                    break;
                }
                pending.clear();
                continue;
            }
            Err(_) => break,
        };
        pending.extend_from_slice(&buf[..n]);
        if let Some(pos) = pending.windows(needle.len()).position(|w| w == needle) {
            triggered.store(true, Ordering::SeqCst);
            match sabotage {
                Sabotage::Corrupt => {
                    pending[pos + needle.len() / 2] ^= 0x55;
                }
                Sabotage::Cut => {
                    let _ = to.write_all(&pending[..pos + needle.len()]);
                    stop.store(true, Ordering::SeqCst);
                    let _ = to.shutdown(Shutdown::Both);
                    let _ = from.shutdown(Shutdown::Both);
                    return;
                }
                Sabotage::Stall => {
                    let _ = to.write_all(&pending[..pos + needle.len()]);
                    // Hold both connections open until the proxy is dropped.
                    while !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    return;
                }
            }
        }
        let keep = needle.len().saturating_sub(1).min(pending.len());
        let send = pending.len() - keep;
        if to.write_all(&pending[..send]).is_err() {
            break;
        }
        pending.drain(..send);
    }
    let _ = to.write_all(&pending);
    let _ = to.shutdown(Shutdown::Write);
}

/// An image written as an OCI layout for skopeo to push.
pub struct Fixture {
    pub layout: tempfile::TempDir,
    /// Digest of what the tag points to (the manifest, or the index for multi-platform).
    pub top_digest: String,
    pub manifest_digests: Vec<String>,
    pub config_digests: Vec<String>,
    /// The layer blobs (gzip), for needles.
    pub layers: Vec<Vec<u8>>,
}

fn deterministic_bytes(seed: u64, len: usize) -> Vec<u8> {
    // xorshift: incompressible enough that gzip keeps the size, reproducible per seed.
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn gz_layer(files: &[(&str, Vec<u8>)]) -> (Vec<u8>, String) {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    let tar = tar.into_inner().unwrap();
    let diff_id = sha256(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    (gz.finish().unwrap(), diff_id)
}

fn put_blob(layout: &Path, bytes: &[u8]) -> String {
    let d = sha256(bytes);
    fs::write(layout.join("blobs/sha256").join(&d[7..]), bytes).unwrap();
    d
}

fn image_in_layout(
    layout: &Path,
    seed: u64,
    arch: &str,
    layer_sizes: &[usize],
) -> (String, usize, String, Vec<Vec<u8>>) {
    let mut layers = Vec::new();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, size) in layer_sizes.iter().enumerate() {
        let (gz, diff_id) = gz_layer(&[(
            &format!("data-{arch}-{i}.bin"),
            deterministic_bytes(seed * 31 + i as u64, *size),
        )]);
        let d = put_blob(layout, &gz);
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": gz.len()}));
        diff_ids.push(diff_id);
        layers.push(gz);
    }
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "Labels": {"seed": seed.to_string()}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "kiln registry test fixture"}],
    })
    .to_string();
    let config_digest = put_blob(layout, config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": descs,
    })
    .to_string();
    let md = put_blob(layout, manifest.as_bytes());
    (md, manifest.len(), config_digest, layers)
}

impl Fixture {
    fn new_layout() -> tempfile::TempDir {
        let layout = tempfile::Builder::new()
            .prefix("kiln-oci-layout.")
            .tempdir()
            .unwrap();
        fs::create_dir_all(layout.path().join("blobs/sha256")).unwrap();
        fs::write(
            layout.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        layout
    }

    fn write_index(layout: &Path, digest: &str, media_type: &str, size: usize, tag: &str) {
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [
            {"mediaType": media_type, "digest": digest, "size": size, "annotations": {"org.opencontainers.image.ref.name": tag}}]});
        fs::write(layout.join("index.json"), index.to_string()).unwrap();
    }

    /// A single-platform (linux/amd64) image with layers of these sizes, tagged `fixture`.
    pub fn image(seed: u64, layer_sizes: &[usize]) -> Fixture {
        let layout = Self::new_layout();
        let (md, size, cd, layers) = image_in_layout(layout.path(), seed, "amd64", layer_sizes);
        Self::write_index(
            layout.path(),
            &md,
            "application/vnd.oci.image.manifest.v1+json",
            size,
            "fixture",
        );
        Fixture {
            layout,
            top_digest: md.clone(),
            manifest_digests: vec![md],
            config_digests: vec![cd],
            layers,
        }
    }

    /// An image index with linux/arm64 and linux/amd64 images (in that order), tagged `fixture`.
    pub fn multi_platform(seed: u64) -> Fixture {
        let layout = Self::new_layout();
        let mut entries = Vec::new();
        let mut fx = Fixture {
            layout,
            top_digest: String::new(),
            manifest_digests: vec![],
            config_digests: vec![],
            layers: vec![],
        };
        for (i, (arch, variant)) in [("arm64", Some("v8")), ("amd64", None)].iter().enumerate() {
            let (md, size, cd, layers) =
                image_in_layout(fx.layout.path(), seed + i as u64 * 1000, arch, &[3000]);
            let mut platform = serde_json::json!({"architecture": arch, "os": "linux"});
            if let Some(v) = variant {
                platform["variant"] = serde_json::json!(v);
            }
            entries.push(serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": size, "platform": platform}));
            fx.manifest_digests.push(md);
            fx.config_digests.push(cd);
            fx.layers.extend(layers);
        }
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries}).to_string();
        let id = put_blob(fx.layout.path(), index.as_bytes());
        Self::write_index(
            fx.layout.path(),
            &id,
            "application/vnd.oci.image.index.v1+json",
            index.len(),
            "fixture",
        );
        fx.top_digest = id;
        fx
    }

    /// `skopeo copy` of the fixture to `registry/repo:tag`.
    pub fn push_with_skopeo(&self, registry: &Registry, repo_tag: &str) {
        self.push_with_skopeo_as(registry, repo_tag, None)
    }

    /// The same, converting the manifest to `format` (`v2s2`: Docker schema 2) when given.
    pub fn push_with_skopeo_as(&self, registry: &Registry, repo_tag: &str, format: Option<&str>) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--all", "--dest-tls-verify=false"]);
        match format {
            Some(f) => cmd.args(["--format", f]),
            None => cmd.arg("--preserve-digests"),
        };
        cmd.args(registry.creds_args("--dest-creds"))
            .arg(format!("oci:{}:fixture", self.layout.path().display()))
            .arg(format!("docker://{}/{repo_tag}", registry.host()));
        let out = cmd.output().expect("skopeo");
        assert!(
            out.status.success(),
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `skopeo inspect` of what a registry serves: (manifest digest, raw config bytes).
pub fn skopeo_inspect(registry: &Registry, repo_tag: &str) -> (String, Vec<u8>) {
    let target = format!("docker://{}/{repo_tag}", registry.host());
    let run = |extra: &[&str]| {
        let out = Command::new("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .args(registry.creds_args("--creds"))
            .args(extra)
            .arg(&target)
            .output()
            .expect("skopeo");
        assert!(
            out.status.success(),
            "skopeo inspect {target} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let info: serde_json::Value = serde_json::from_slice(&run(&[])).unwrap();
    let config = run(&["--config", "--raw"]);
    (info["Digest"].as_str().unwrap().to_string(), config)
}

/// Asserts the store is whole: nothing left in `tmp/`, every blob hashes to its name.
pub fn assert_store_clean(root: &Path) {
    let tmp = root.join("tmp");
    if tmp.exists() {
        let left: Vec<_> = fs::read_dir(&tmp)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "temp files left in the store: {left:?}");
    }
    let blobs = root.join("blobs/sha256");
    if blobs.exists() {
        for e in fs::read_dir(&blobs).unwrap() {
            let e = e.unwrap();
            let bytes = fs::read(e.path()).unwrap();
            assert_eq!(
                sha256(&bytes)[7..],
                *e.file_name().to_string_lossy(),
                "unverified blob in the store"
            );
        }
    }
}

pub fn has_blob(root: &Path, digest: &str) -> bool {
    root.join("blobs/sha256").join(&digest[7..]).exists()
}
