//! HTTP transport to one registry: authentication (anonymous, Basic, Bearer tokens cached until
//! they expire), redirects (credentials never follow to another host) and retries with backoff
//! for 5xx answers and broken connections.

use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ureq::http::{Method, Request, Response};

use super::auth::{self, Challenge, Credentials};

/// Attempts for one request when the registry answers 5xx or the connection breaks.
const MAX_ATTEMPTS: u32 = 4;
const MAX_REDIRECTS: u32 = 8;

/// A request body that can be sent again on a retry.
pub enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// `len` bytes from a reader made afresh for each attempt.
    Stream {
        open: &'a (dyn Fn() -> Result<Box<dyn Read + Send>> + Sync),
        len: u64,
    },
}

#[derive(Clone)]
enum AuthState {
    /// No request has been challenged yet.
    Anonymous,
    Basic,
    Bearer {
        token: String,
        expires: Instant,
    },
}

pub struct Client {
    agent: ureq::Agent,
    /// `scheme://host[:port]` of the registry (or mirror).
    pub base: String,
    /// What the user calls this registry (`docker.io`, `127.0.0.1:5000`), for messages.
    pub name: String,
    creds: Option<Credentials>,
    /// Token scopes this client asks for (`repository:NAME:pull,push`).
    scopes: Vec<String>,
    state: Mutex<AuthState>,
}

fn agent() -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .tls_config(tls)
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        .timeout_per_read(Some(Duration::from_secs(120)))
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        // Blobs are compressed already; a transparent decompression would break digests.
        .accept_encoding("identity")
        .build()
        .new_agent()
}

/// `scheme://authority` of a URL.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

/// Resolves a `Location` header against the URL it answered.
pub fn resolve_location(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else if location.starts_with('/') {
        format!("{}{location}", origin(base))
    } else {
        let path = base.split(['?', '#']).next().unwrap_or(base);
        match path.rfind('/') {
            Some(i) if i >= origin(base).len() => format!("{}{location}", &path[..=i]),
            _ => format!("{}/{location}", origin(base)),
        }
    }
}

fn is_transient(err: &ureq::Error) -> bool {
    matches!(
        err,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::Protocol(_)
            | ureq::Error::HostNotFound
    )
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64 << attempt.min(5))
}

/// A registry's JSON error body, `{"errors":[{"code":..,"message":..}]}`, as one line.
pub fn error_summary(body: &str) -> Option<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let e: Errors = serde_json::from_str(body).ok()?;
    let first = e.errors.into_iter().next()?;
    Some((first.code, first.message))
}

/// Reads an error answer's body (at most 64 KiB) and summarises it as `error_summary` does.
pub fn read_error_summary(resp: &mut ureq::http::Response<ureq::Body>) -> Option<(String, String)> {
    let body = resp
        .body_mut()
        .with_config()
        .limit(1 << 16)
        .read_to_string()
        .unwrap_or_default();
    error_summary(&body)
}

impl Client {
    pub fn new(
        base: String,
        name: String,
        creds: Option<Credentials>,
        scopes: Vec<String>,
    ) -> Self {
        Client {
            agent: agent(),
            base,
            name,
            creds,
            scopes,
            state: Mutex::new(AuthState::Anonymous),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn auth_header(&self) -> Option<String> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match state {
            AuthState::Anonymous => None,
            AuthState::Basic => self.creds.as_ref().map(|c| c.basic_header()),
            AuthState::Bearer { token, expires } if Instant::now() < expires => {
                Some(format!("Bearer {token}"))
            }
            // Expired: send nothing, take the 401, fetch a new token.
            AuthState::Bearer { .. } => None,
        }
    }

    /// Answers a 401 challenge: switches to Basic, or fetches a Bearer token for our scopes.
    fn authenticate(&self, challenge: &str) -> Result<()> {
        let parsed = auth::parse_challenge(challenge).ok_or_else(|| {
            anyhow!(
                "{}: unsupported authentication scheme in WWW-Authenticate",
                self.name
            )
        })?;
        let new_state = match parsed {
            Challenge::Basic => {
                if self.creds.is_none() {
                    bail!(
                        "{}: the registry requires a login; run `kiln login {}` or set {}/{}",
                        self.name,
                        self.name,
                        auth::ENV_USER,
                        auth::ENV_PASSWORD
                    );
                }
                AuthState::Basic
            }
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let (token, expires_in) =
                    self.fetch_token(&realm, service.as_deref(), scope.as_deref())?;
                // Renew a little early so a long transfer does not start on a dying token.
                let life = Duration::from_secs(expires_in).saturating_sub(Duration::from_secs(5));
                AuthState::Bearer {
                    token,
                    expires: Instant::now() + life.max(Duration::from_secs(1)),
                }
            }
        };
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = new_state;
        Ok(())
    }

    fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        challenge_scope: Option<&str>,
    ) -> Result<(String, u64)> {
        let mut scopes: Vec<&str> = self.scopes.iter().map(String::as_str).collect();
        if let Some(s) = challenge_scope {
            if !scopes.contains(&s) {
                scopes.push(s);
            }
        }
        let mut query: Vec<String> = Vec::new();
        if let Some(s) = service {
            query.push(format!("service={}", encode(s)));
        }
        for s in &scopes {
            query.push(format!("scope={}", encode(s)));
        }
        let sep = if realm.contains('?') { '&' } else { '?' };
        let url = if query.is_empty() {
            realm.to_string()
        } else {
            format!("{realm}{sep}{}", query.join("&"))
        };
        let mut last_err = None;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(backoff(attempt));
            }
            super::config::check_allowed(&url)?;
            let mut req = Request::get(&url);
            if let Some(c) = &self.creds {
                req = req.header("Authorization", c.basic_header());
            }
            let req = req.body(()).context("building the token request")?;
            match self.agent.run(req) {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let body = resp
                        .body_mut()
                        .with_config()
                        .limit(1 << 20)
                        .read_to_string()
                        .unwrap_or_default();
                    if status >= 500 {
                        last_err = Some(anyhow!("token server {realm} answered {status}"));
                        continue;
                    }
                    if status == 401 || status == 403 {
                        bail!(
                            "{}: the token server {realm} refused {} (HTTP {status}); check the user name and password (`kiln login {}`)",
                            self.name,
                            self.creds.as_ref().map(|c| format!("the credentials of user {:?}", c.username)).unwrap_or_else(|| "anonymous access".into()),
                            self.name
                        );
                    }
                    if status != 200 {
                        bail!(
                            "{}: the token server {realm} answered HTTP {status}",
                            self.name
                        );
                    }
                    let parsed: auth::TokenResponse =
                        serde_json::from_str(&body).with_context(|| {
                            format!(
                                "{}: the token server {realm} sent an answer that is not JSON",
                                self.name
                            )
                        })?;
                    return parsed.into_token();
                }
                Err(e) if is_transient(&e) => last_err = Some(anyhow!(e)),
                Err(e) => {
                    return Err(anyhow!(e))
                        .with_context(|| format!("requesting a token from {realm}"))
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("no attempt made")))
            .with_context(|| format!("{}: could not get a token from {realm}", self.name))
    }

    /// Sends one request, following redirects and answering auth challenges, retrying
    /// transient failures. Returns the final response, whatever its status (except 401 after
    /// authenticating, which is an error).
    pub fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &Body,
    ) -> Result<Response<ureq::Body>> {
        let mut url = url.to_string();
        let mut method = method;
        let mut authenticated = false;
        let mut redirects = 0;
        let mut attempt = 0;
        loop {
            super::config::check_allowed(&url)
                .with_context(|| format!("{}: {method} {}", self.name, redact_query(&url)))?;
            // Credentials go only to the registry itself, never to a host it redirects to.
            let same_host = origin(&url) == origin(&self.base);
            let mut req = Request::builder().method(method.clone()).uri(&url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if same_host {
                if let Some(a) = self.auth_header() {
                    req = req.header("Authorization", a);
                }
            }
            let result = match body {
                Body::Empty => {
                    if method == Method::PUT || method == Method::POST || method == Method::PATCH {
                        req = req.header("Content-Length", "0");
                    }
                    self.agent.run(req.body(()).context("building a request")?)
                }
                Body::Bytes(b) => {
                    req = req.header("Content-Length", b.len().to_string());
                    self.agent.run(req.body(*b).context("building a request")?)
                }
                Body::Stream { open, len } => {
                    req = req.header("Content-Length", len.to_string());
                    let reader = open()?;
                    let send = ureq::SendBody::from_owned_reader(reader.take(*len));
                    self.agent
                        .run(req.body(send).context("building a request")?)
                }
            };
            let resp = match result {
                Ok(r) => r,
                Err(e) if is_transient(&e) && attempt + 1 < MAX_ATTEMPTS => {
                    attempt += 1;
                    std::thread::sleep(backoff(attempt));
                    continue;
                }
                Err(e) => {
                    return Err(anyhow!(e)).with_context(|| {
                        format!(
                            "{}: {method} {} failed after {} attempts",
                            self.name,
                            redact_query(&url),
                            attempt + 1
                        )
                    });
                }
            };
            let status = resp.status().as_u16();
            if status == 401 && same_host {
                let challenge = resp
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                match challenge {
                    Some(ch) if !authenticated => {
                        self.authenticate(&ch)?;
                        authenticated = true;
                        continue;
                    }
                    _ => {
                        let who = match &self.creds {
                            Some(c) => format!("user {:?} was refused", c.username),
                            None => "anonymous access was refused".to_string(),
                        };
                        bail!("{}: authentication failed: {who} (HTTP 401); check the credentials with `kiln login {}`", self.name, self.name);
                    }
                }
            }
            if (300..400).contains(&status) && status != 304 {
                let Some(loc) = resp.headers().get("location").and_then(|v| v.to_str().ok()) else {
                    return Ok(resp);
                };
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    bail!(
                        "{}: too many redirects for {}",
                        self.name,
                        redact_query(&url)
                    );
                }
                url = resolve_location(&url, loc);
                if status == 303 && method != Method::HEAD {
                    method = Method::GET;
                }
                continue;
            }
            if (status >= 500 || status == 429) && attempt + 1 < MAX_ATTEMPTS {
                attempt += 1;
                std::thread::sleep(backoff(attempt));
                continue;
            }
            return Ok(resp);
        }
    }

    /// `GET /v2/`: checks the registry is there and the credentials work.
    pub fn ping(&self) -> Result<()> {
        let mut resp = self.send(Method::GET, &self.url("/v2/"), &[], &Body::Empty)?;
        let status = resp.status().as_u16();
        if status == 200 {
            return Ok(());
        }
        bail!(
            "{}: GET /v2/ answered HTTP {status}{}",
            self.name,
            read_error_summary(&mut resp)
                .map(|(c, m)| format!(" ({c}: {m})"))
                .unwrap_or_default()
        )
    }
}

/// URLs of redirects (to S3 and the like) can carry signatures in their query; keep those out of
/// error messages.
pub fn redact_query(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?..."),
        None => url.to_string(),
    }
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve() {
        let base = "http://127.0.0.1:5000/v2/a/blobs/uploads/";
        assert_eq!(
            resolve_location(base, "/v2/a/blobs/uploads/xyz?_state=1"),
            "http://127.0.0.1:5000/v2/a/blobs/uploads/xyz?_state=1"
        );
        assert_eq!(
            resolve_location(base, "https://s3.example/b?sig=1"),
            "https://s3.example/b?sig=1"
        );
        assert_eq!(
            resolve_location(base, "xyz"),
            "http://127.0.0.1:5000/v2/a/blobs/uploads/xyz"
        );
        assert_eq!(origin("https://h:1/x/y"), "https://h:1");
        assert_eq!(
            redact_query("https://s3/b?X-Amz-Signature=s"),
            "https://s3/b?..."
        );
        assert_eq!(
            encode("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
    }
}
