//! Image config helpers: canonical JSON, the host platform, and docker's `--change` instructions
//! (`CMD ["sh"]`, `ENV A=b`, ...) applied to a config, as `docker import --change` does.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use oci_spec::image::{Config, ImageConfiguration};

/// The OCI architecture name of this machine (`amd64`, `arm64`, ...).
pub fn host_architecture() -> &'static str {
    crate::platform::host_architecture()
}

/// The current time as the RFC 3339 string image configs use.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Applies one `--change` instruction (Dockerfile syntax; CMD, ENTRYPOINT, ENV, EXPOSE, LABEL,
/// USER, WORKDIR, VOLUME, STOPSIGNAL) to `image`.
pub fn apply_change(image: &mut ImageConfiguration, change: &str) -> Result<()> {
    let change = change.trim();
    let (instr, rest) = change
        .split_once(|c: char| c.is_whitespace())
        .map(|(a, b)| (a, b.trim()))
        .unwrap_or((change, ""));
    let mut config = image.config().clone().unwrap_or_default();
    let upper = instr.to_ascii_uppercase();
    if rest.is_empty() {
        bail!("--change {change:?}: {upper} needs an argument");
    }
    match upper.as_str() {
        "CMD" => {
            config.set_cmd(Some(command_form(rest)?));
        }
        "ENTRYPOINT" => {
            config.set_entrypoint(Some(command_form(rest)?));
        }
        "ENV" => {
            let mut env = config.env().clone().unwrap_or_default();
            for (k, v) in key_values(rest, "ENV")? {
                env.retain(|e| e.split('=').next() != Some(k.as_str()));
                env.push(format!("{k}={v}"));
            }
            config.set_env(Some(env));
        }
        "LABEL" => {
            let mut labels: HashMap<String, String> = config.labels().clone().unwrap_or_default();
            for (k, v) in key_values(rest, "LABEL")? {
                labels.insert(k, v);
            }
            config.set_labels(Some(labels));
        }
        "EXPOSE" => {
            let mut ports = config.exposed_ports().clone().unwrap_or_default();
            for port in rest.split_whitespace() {
                let port = if port.contains('/') {
                    port.to_string()
                } else {
                    format!("{port}/tcp")
                };
                let (num, proto) = port.split_once('/').unwrap_or((&port, "tcp"));
                if num.parse::<u16>().is_err() || !["tcp", "udp", "sctp"].contains(&proto) {
                    bail!("--change {change:?}: bad port {port:?} (expected PORT[/tcp|udp|sctp])");
                }
                if !ports.contains(&port) {
                    ports.push(port);
                }
            }
            config.set_exposed_ports(Some(ports));
        }
        "VOLUME" => {
            let mut volumes = config.volumes().clone().unwrap_or_default();
            let list = if rest.starts_with('[') {
                serde_json::from_str::<Vec<String>>(rest)
                    .with_context(|| format!("--change {change:?}: bad JSON array"))?
            } else {
                rest.split_whitespace().map(String::from).collect()
            };
            for v in list {
                if !volumes.contains(&v) {
                    volumes.push(v);
                }
            }
            config.set_volumes(Some(volumes));
        }
        "USER" => {
            config.set_user(Some(rest.to_string()));
        }
        "WORKDIR" => {
            config.set_working_dir(Some(rest.to_string()));
        }
        "STOPSIGNAL" => {
            config.set_stop_signal(Some(rest.to_string()));
        }
        other => bail!(
            "--change {change:?}: {other} is not supported (use CMD, ENTRYPOINT, ENV, EXPOSE, \
             LABEL, USER, WORKDIR, VOLUME or STOPSIGNAL)"
        ),
    }
    image.set_config(Some(config));
    Ok(())
}

/// `["a","b"]` (exec form) or `a b` (shell form -> `/bin/sh -c "a b"`).
fn command_form(rest: &str) -> Result<Vec<String>> {
    if rest.starts_with('[') {
        if let Ok(list) = serde_json::from_str::<Vec<String>>(rest) {
            return Ok(list);
        }
    }
    Ok(vec!["/bin/sh".into(), "-c".into(), rest.to_string()])
}

/// `k=v k2="v 2"` or the legacy `k v w` (one pair, the value being the rest).
fn key_values(rest: &str, what: &str) -> Result<Vec<(String, String)>> {
    let words = shell_words(rest)?;
    let first = words.first().map(String::as_str).unwrap_or("");
    if !first.contains('=') {
        let (k, v) = rest
            .split_once(char::is_whitespace)
            .with_context(|| format!("{what} {rest:?}: expected KEY=VALUE or KEY VALUE"))?;
        return Ok(vec![(k.to_string(), v.trim().to_string())]);
    }
    words
        .into_iter()
        .map(|w| {
            let (k, v) = w
                .split_once('=')
                .with_context(|| format!("{what} {rest:?}: {w:?} is not KEY=VALUE"))?;
            if k.is_empty() {
                bail!("{what} {rest:?}: empty key");
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Splits on whitespace, honouring "double" and 'single' quotes and backslash escapes.
fn shell_words(s: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some(q) if q == c => break,
                        Some('\\') if c == '"' => {
                            if let Some(e) = chars.next() {
                                cur.push(e);
                            }
                        }
                        Some(x) => cur.push(x),
                        None => bail!("unterminated quote in {s:?}"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(e) = chars.next() {
                    cur.push(e);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// An empty `Config` (for builders that want to start from nothing).
pub fn empty_config() -> Config {
    Config::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageConfiguration {
        ImageConfiguration::default()
    }

    #[test]
    fn changes_apply_like_docker_import() {
        let mut img = image();
        apply_change(&mut img, r#"CMD ["sh", "-c", "echo hi"]"#).unwrap();
        apply_change(&mut img, "ENTRYPOINT /bin/init --x").unwrap();
        apply_change(&mut img, r#"ENV A=1 B="two words""#).unwrap();
        apply_change(&mut img, "ENV A 3").unwrap();
        apply_change(&mut img, "EXPOSE 80 53/udp").unwrap();
        apply_change(&mut img, "LABEL a=b").unwrap();
        apply_change(&mut img, "WORKDIR /srv").unwrap();
        apply_change(&mut img, "USER 1000:1000").unwrap();
        let c = img.config().as_ref().unwrap();
        assert_eq!(c.cmd().as_ref().unwrap(), &["sh", "-c", "echo hi"]);
        assert_eq!(
            c.entrypoint().as_ref().unwrap(),
            &["/bin/sh", "-c", "/bin/init --x"]
        );
        assert_eq!(c.env().as_ref().unwrap(), &["B=two words", "A=3"]);
        assert_eq!(c.exposed_ports().as_ref().unwrap(), &["80/tcp", "53/udp"]);
        assert_eq!(c.working_dir().as_deref(), Some("/srv"));
        assert!(apply_change(&mut img, "RUN echo").is_err());
        assert!(apply_change(&mut img, "EXPOSE abc").is_err());
        assert!(apply_change(&mut img, "CMD").is_err());
    }
}
