//! What a container runs with, worked out from the image config and `kiln run`'s flags the way
//! docker does: ENTRYPOINT + CMD, environment overlays, `-p` and `-v` specs, sizes, signals.
//! Pure functions (no I/O apart from `--env-file` and kiln's own environment), unit-tested.

use std::net::IpAddr;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One port to publish, as asked: `host_port` None = any free port; a range of host ports is
/// kept as (first, last) and the first free one is taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRequest {
    pub host_ip: IpAddr,
    pub host_ports: Option<(u16, u16)>,
    pub container_port: u16,
    pub proto: Proto,
}

/// A published port as bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBinding {
    pub container_port: u16,
    pub proto: Proto,
    pub host_ip: IpAddr,
    pub host_port: u16,
}

fn parse_port_range(s: &str, what: &str) -> Result<(u16, u16)> {
    let parse = |p: &str| -> Result<u16> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("invalid {what} {p:?}: expected a number from 1 to 65535"),
        }
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (parse(a)?, parse(b)?);
            if b < a {
                bail!("invalid {what} range {s:?}: the end is before the start");
            }
            Ok((a, b))
        }
        None => {
            let p = parse(s)?;
            Ok((p, p))
        }
    }
}

/// Parses one `-p` value: `[ip:][hostPort:]containerPort[/proto]`, `ip::containerPort`, port
/// ranges on either side (`8000-8001:80-81`), IPv6 host addresses in brackets.
pub fn parse_publish(spec: &str) -> Result<Vec<PortRequest>> {
    let bad = |why: &str| {
        anyhow::anyhow!(
            "invalid port specification {spec:?}: {why} (expected \
             [ip:][hostPort:]containerPort[/tcp|/udp])"
        )
    };
    let (rest, proto) = match spec.rsplit_once('/') {
        Some((rest, "tcp")) => (rest, Proto::Tcp),
        Some((rest, "udp")) => (rest, Proto::Udp),
        Some((_, p)) => return Err(bad(&format!("unknown protocol {p:?}"))),
        None => (spec, Proto::Tcp),
    };
    let (ip, rest) = if let Some(after) = rest.strip_prefix('[') {
        let (ip, after) = after
            .split_once("]:")
            .ok_or_else(|| bad("unterminated [IPv6 address]"))?;
        let ip: IpAddr = ip.parse().map_err(|_| bad("bad IP address"))?;
        (Some(ip), after.to_string())
    } else {
        let parts: Vec<&str> = rest.split(':').collect();
        match parts.len() {
            1 | 2 => (None, rest.to_string()),
            3 => {
                let ip: IpAddr = parts[0]
                    .parse()
                    .map_err(|_| bad(&format!("bad IP address {:?}", parts[0])))?;
                (Some(ip), format!("{}:{}", parts[1], parts[2]))
            }
            _ => return Err(bad("too many ':' (put an IPv6 address in brackets)")),
        }
    };
    let (host, container) = match rest.split_once(':') {
        Some((h, c)) => (Some(h), c),
        None => (None, rest.as_str()),
    };
    if container.is_empty() {
        return Err(bad("no container port"));
    }
    let (c_first, c_last) = parse_port_range(container, "container port")?;
    let host_range = match host {
        None | Some("") => None,
        Some(h) => Some(parse_port_range(h, "host port")?),
    };
    let host_ip = ip.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let count = c_last - c_first + 1;
    let mut out = Vec::new();
    match host_range {
        Some((h_first, h_last)) if count > 1 => {
            if h_last - h_first + 1 != count {
                return Err(bad("host and container port ranges differ in size"));
            }
            for i in 0..count {
                out.push(PortRequest {
                    host_ip,
                    host_ports: Some((h_first + i, h_first + i)),
                    container_port: c_first + i,
                    proto,
                });
            }
        }
        _ => {
            for port in c_first..=c_last {
                out.push(PortRequest {
                    host_ip,
                    host_ports: host_range,
                    container_port: port,
                    proto,
                });
            }
        }
    }
    Ok(out)
}

/// Parses an EXPOSE key of the image config (`80/tcp`, `53/udp`, `8000-8001/tcp`) into
/// requests for free host ports on every address (`-P`).
pub fn parse_exposed(key: &str) -> Result<Vec<PortRequest>> {
    parse_publish(key).with_context(|| format!("image EXPOSE entry {key:?}"))
}

/// A `-v` mount, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    /// `bind` (source is a host path) or `volume` (source is a volume name).
    pub kind: MountType,
    pub source: String,
    pub target: String,
    pub readonly: bool,
    /// A volume made for an image VOLUME or a `-v /path` without a name.
    #[serde(default)]
    pub anonymous: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    Bind,
    Volume,
    /// `--tmpfs` / `--mount type=tmpfs`: `source` holds its options (`runflags::tmpfs_options`).
    Tmpfs,
}

/// Whether a string is a valid volume name (docker's `[a-zA-Z0-9][a-zA-Z0-9_.-]+`).
pub fn valid_volume_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

/// Parses one `-v` value: `/host:/ctr[:ro]`, `./rel:/ctr[:ro]` (a host path relative to `cwd`,
/// as docker's: it must start with `.`), `name:/ctr[:ro]` or `/ctr` (an anonymous volume; the
/// caller names it).
pub fn parse_volume(spec: &str, cwd: &std::path::Path) -> Result<VolumeMount> {
    let bad = |why: &str| {
        anyhow::anyhow!(
            "invalid volume specification {spec:?}: {why} (expected /host/path:/container/path, \
             ./relative/path:/container/path, name:/container/path or /container/path, with an \
             optional :ro or :rw)"
        )
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [target] => ("", *target, ""),
        [source, target] => (*source, *target, ""),
        [source, target, mode] => (*source, *target, *mode),
        _ => return Err(bad("too many ':'")),
    };
    if !target.starts_with('/') {
        return Err(bad("the container path must be absolute"));
    }
    let mut readonly = false;
    for opt in mode.split(',').filter(|o| !o.is_empty()) {
        match opt {
            "ro" => readonly = true,
            "rw" => readonly = false,
            // SELinux relabelling and propagation flags mean nothing here.
            "z" | "Z" | "rprivate" | "private" | "rslave" | "slave" | "nocopy" => {}
            o => return Err(bad(&format!("unknown option {o:?}"))),
        }
    }
    let relative =
        source == "." || source == ".." || source.starts_with("./") || source.starts_with("../");
    let joined;
    let source = if relative {
        joined = normalize_path(&format!("{}/{source}", cwd.display()));
        joined.as_str()
    } else {
        source
    };
    let (kind, anonymous) = if source.is_empty() {
        (MountType::Volume, true)
    } else if source.starts_with('/') {
        (MountType::Bind, false)
    } else if valid_volume_name(source) {
        (MountType::Volume, false)
    } else {
        return Err(bad(&format!(
            "{source:?} is neither an absolute host path nor a volume name \
             ([a-zA-Z0-9][a-zA-Z0-9_.-]+)"
        )));
    };
    Ok(VolumeMount {
        kind,
        source: source.to_string(),
        target: normalize_path(target),
        readonly,
        anonymous,
    })
}

/// `/a//b/./c/` -> `/a/b/c` (without resolving `..` against the filesystem).
pub fn normalize_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

pub use crate::sandbox::parse_memory;

/// Parses a signal name or number: `SIGTERM`, `TERM`, `term`, `15`.
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if n > 0 && n < 65 {
            return Ok(n);
        }
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let sig = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ILL" => libc::SIGILL,
        "TRAP" => libc::SIGTRAP,
        "ABRT" | "IOT" => libc::SIGABRT,
        "BUS" => libc::SIGBUS,
        "FPE" => libc::SIGFPE,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "SEGV" => libc::SIGSEGV,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "STKFLT" => libc::SIGSTKFLT,
        "CHLD" | "CLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "URG" => libc::SIGURG,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "VTALRM" => libc::SIGVTALRM,
        "PROF" => libc::SIGPROF,
        "WINCH" => libc::SIGWINCH,
        "IO" | "POLL" => libc::SIGIO,
        "PWR" => libc::SIGPWR,
        "SYS" => libc::SIGSYS,
        _ => {
            if let Some(n) = name
                .strip_prefix("RTMIN+")
                .and_then(|n| n.parse::<i32>().ok())
            {
                return Ok(libc::SIGRTMIN() + n);
            }
            bail!("invalid signal {s:?}: expected a name such as SIGTERM or a number")
        }
    };
    Ok(sig)
}

/// The container's argv by docker's rules: `--entrypoint` replaces the image's ENTRYPOINT and
/// drops its CMD; arguments after the image replace CMD.
pub fn command_line(
    image_entrypoint: &[String],
    image_cmd: &[String],
    entrypoint_flag: Option<&str>,
    args: &[String],
) -> Result<(Vec<String>, Vec<String>)> {
    let (entrypoint, cmd): (Vec<String>, Vec<String>) = match entrypoint_flag {
        Some("") => (Vec::new(), args.to_vec()),
        Some(e) => (vec![e.to_string()], args.to_vec()),
        None if !args.is_empty() => (image_entrypoint.to_vec(), args.to_vec()),
        None => (image_entrypoint.to_vec(), image_cmd.to_vec()),
    };
    if entrypoint.is_empty() && cmd.is_empty() {
        bail!("no command specified: the image has no ENTRYPOINT or CMD; give one after the image name");
    }
    Ok((entrypoint, cmd))
}

/// Sets `KEY=VALUE` in `env`, replacing an earlier value of KEY.
pub fn set_env(env: &mut Vec<String>, entry: String) {
    let key = entry.split('=').next().unwrap_or_default().to_string();
    env.retain(|e| e.split('=').next() != Some(key.as_str()));
    env.push(entry);
}

/// Adds `HOSTNAME=<hostname>` to a container process's environment, after PATH, unless the
/// image or `-e` set it: docker's daemon gives it to every container and `exec` (it is not in
/// the container's config).
pub fn add_hostname_env(env: &mut Vec<String>, hostname: &str) {
    if hostname.is_empty() || env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        return;
    }
    let at = env
        .iter()
        .position(|e| e.starts_with("PATH="))
        .map_or(0, |i| i + 1);
    env.insert(at, format!("HOSTNAME={hostname}"));
}

/// Applies one `-e` value: `K=V`, or `K` taken from `lookup` (kiln's environment; dropped when
/// unset, as docker does).
pub fn apply_env_flag(
    env: &mut Vec<String>,
    flag: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<()> {
    let key = flag.split('=').next().unwrap_or_default();
    if key.is_empty() {
        bail!("invalid environment variable {flag:?}: expected KEY=VALUE or KEY");
    }
    if flag.contains('=') {
        set_env(env, flag.to_string());
    } else if let Some(v) = lookup(flag) {
        set_env(env, format!("{flag}={v}"));
    }
    Ok(())
}

/// Reads an `--env-file`: one `K=V` or `K` per line, `#` comments and blank lines skipped.
pub fn read_env_file(path: &str) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the env file {path}: check the --env-file path"))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('=') || line.split('=').next().unwrap_or("").contains(' ') {
            bail!(
                "{path}:{}: invalid environment line {line:?}: expected KEY=VALUE or KEY",
                i + 1
            );
        }
        out.push(line.to_string());
    }
    Ok(out)
}

/// A container's seccomp setting (`--security-opt seccomp=...`), kept in its config so that
/// `kiln exec` applies the same filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompConfig {
    /// Docker's default profile.
    #[default]
    Default,
    /// No filter.
    Unconfined,
    /// A profile in Docker's JSON format: where it was read from, and its text as read then.
    Profile { path: String, json: String },
}

impl SeccompConfig {
    /// The sandbox's form (the profile is parsed again: it was checked when the container was
    /// created).
    pub fn to_sandbox(&self) -> Result<crate::sandbox::seccomp::Seccomp> {
        use crate::sandbox::seccomp::{self, Seccomp};
        Ok(match self {
            SeccompConfig::Default => Seccomp::Default,
            SeccompConfig::Unconfined => Seccomp::Unconfined,
            SeccompConfig::Profile { path, json } => {
                let p = seccomp::parse_docker_json(json)
                    .map_err(|e| anyhow::anyhow!("seccomp profile {path}: {e}"))?;
                Seccomp::Custom(std::sync::Arc::new(p))
            }
        })
    }
}

/// Parses `--security-opt` values as docker does for the ones kiln has: `seccomp=unconfined`,
/// `seccomp=PROFILE.json` (read with `read_file` and checked now), and `apparmor=unconfined`
/// (kiln applies no AppArmor profile, so there is nothing to lift). The last seccomp value wins.
pub fn parse_security_opts(
    opts: &[String],
    read_file: impl Fn(&str) -> std::io::Result<String>,
) -> Result<SeccompConfig> {
    let mut seccomp = SeccompConfig::Default;
    for opt in opts {
        let (key, value) = opt
            .split_once('=')
            .or_else(|| opt.split_once(':'))
            .unwrap_or((opt.as_str(), ""));
        match key {
            "seccomp" if value == "unconfined" => seccomp = SeccompConfig::Unconfined,
            "seccomp" if value.is_empty() => bail!(
                "invalid --security-opt {opt:?}: seccomp needs a value: seccomp=unconfined or \
                 seccomp=PROFILE.json"
            ),
            "seccomp" => {
                let json = read_file(value).with_context(|| {
                    format!("--security-opt {opt:?}: reading the seccomp profile {value}")
                })?;
                if let Err(e) = crate::sandbox::seccomp::parse_docker_json(&json) {
                    bail!(
                        "--security-opt {opt:?}: the seccomp profile {value} is not valid: {e} \
                         (Docker's JSON profile format: defaultAction, syscalls[].names, \
                         action, args)"
                    );
                }
                seccomp = SeccompConfig::Profile {
                    path: value.to_string(),
                    json,
                };
            }
            "apparmor" if value == "unconfined" => {}
            _ => bail!(
                "unsupported --security-opt {opt:?}: kiln supports seccomp=unconfined, \
                 seccomp=PROFILE.json, apparmor=unconfined and no-new-privileges"
            ),
        }
    }
    Ok(seccomp)
}

#[cfg(test)]
mod tests {
    #[test]
    fn hostname_env_comes_after_path_unless_given() {
        let mut env = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        super::add_hostname_env(&mut env, "abc123");
        assert_eq!(env, ["PATH=/bin", "HOSTNAME=abc123", "A=1"]);
        let mut given = vec!["HOSTNAME=mine".to_string()];
        super::add_hostname_env(&mut given, "abc123");
        assert_eq!(given, ["HOSTNAME=mine"]);
    }

    use super::*;

    fn req(ip: &str, hp: Option<(u16, u16)>, cp: u16, proto: Proto) -> PortRequest {
        PortRequest {
            host_ip: ip.parse().unwrap(),
            host_ports: hp,
            container_port: cp,
            proto,
        }
    }

    #[test]
    fn publish_forms() {
        assert_eq!(
            parse_publish("80").unwrap(),
            vec![req("0.0.0.0", None, 80, Proto::Tcp)]
        );
        assert_eq!(
            parse_publish("8080:80").unwrap(),
            vec![req("0.0.0.0", Some((8080, 8080)), 80, Proto::Tcp)]
        );
        assert_eq!(
            parse_publish("127.0.0.1:8080:80/udp").unwrap(),
            vec![req("127.0.0.1", Some((8080, 8080)), 80, Proto::Udp)]
        );
        assert_eq!(
            parse_publish("127.0.0.1::6379").unwrap(),
            vec![req("127.0.0.1", None, 6379, Proto::Tcp)]
        );
        assert_eq!(
            parse_publish("[::1]:99:80").unwrap(),
            vec![req("::1", Some((99, 99)), 80, Proto::Tcp)]
        );
        assert_eq!(
            parse_publish("8000-8001:80-81/tcp").unwrap(),
            vec![
                req("0.0.0.0", Some((8000, 8000)), 80, Proto::Tcp),
                req("0.0.0.0", Some((8001, 8001)), 81, Proto::Tcp)
            ]
        );
        assert_eq!(
            parse_publish("8000-8010:80").unwrap(),
            vec![req("0.0.0.0", Some((8000, 8010)), 80, Proto::Tcp)]
        );
        assert_eq!(parse_publish("80-82").unwrap().len(), 3);
        for bad in [
            "",
            "x",
            "80/sctp",
            "1:2:3:4",
            "0",
            "70000",
            "9-8",
            "8000-8002:80-81",
            "a.b:1:2",
        ] {
            assert!(parse_publish(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn volume_forms() {
        let cwd = std::path::Path::new("/work/app");
        let v = parse_volume("/srv/data:/data:ro", cwd).unwrap();
        assert_eq!(v.kind, MountType::Bind);
        assert!(v.readonly);
        for (rel, abs) in [
            ("./src:/x", "/work/app/src"),
            (".:/x", "/work/app"),
            ("../lib/./a:/x:ro", "/work/lib/a"),
        ] {
            let v = parse_volume(rel, cwd).unwrap();
            assert_eq!((v.kind, v.source.as_str()), (MountType::Bind, abs), "{rel}");
        }
        let v = parse_volume("data:/data/", cwd).unwrap();
        assert_eq!(
            (v.kind, v.source.as_str(), v.target.as_str()),
            (MountType::Volume, "data", "/data")
        );
        let v = parse_volume("/cache", cwd).unwrap();
        assert!(v.anonymous);
        for bad in ["data", "a:b", "x!:/d", "/a:/b:bogus", "a:/b:ro:x", ".x:/d"] {
            assert!(parse_volume(bad, cwd).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn memory_and_signals() {
        assert_eq!(parse_memory("256m").unwrap(), 256 << 20);
        assert_eq!(parse_memory("1g").unwrap(), 1 << 30);
        assert_eq!(parse_memory("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_memory("10485760").unwrap(), 10 << 20);
        assert!(parse_memory("1k").is_err());
        assert!(parse_memory("lots").is_err());
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("kill").unwrap(), 9);
        assert_eq!(parse_signal("2").unwrap(), 2);
        assert!(parse_signal("SIGNOPE").is_err());
    }

    #[test]
    fn entrypoint_and_cmd_rules() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ep = s(&["/entry"]);
        let cmd = s(&["serve"]);
        assert_eq!(
            command_line(&ep, &cmd, None, &[]).unwrap(),
            (ep.clone(), cmd.clone())
        );
        assert_eq!(
            command_line(&ep, &cmd, None, &s(&["x"])).unwrap(),
            (ep.clone(), s(&["x"]))
        );
        assert_eq!(
            command_line(&ep, &cmd, Some("sh"), &[]).unwrap(),
            (s(&["sh"]), vec![])
        );
        assert_eq!(
            command_line(&ep, &cmd, Some(""), &s(&["ls"])).unwrap(),
            (vec![], s(&["ls"]))
        );
        assert!(command_line(&[], &[], None, &[]).is_err());
    }

    #[test]
    fn env_flags() {
        let mut env = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        apply_env_flag(&mut env, "A=2", |_| None).unwrap();
        apply_env_flag(&mut env, "HOMEDIR", |k| {
            (k == "HOMEDIR").then(|| "/h".into())
        })
        .unwrap();
        apply_env_flag(&mut env, "UNSET", |_| None).unwrap();
        assert_eq!(env, vec!["PATH=/bin", "A=2", "HOMEDIR=/h"]);
        assert!(apply_env_flag(&mut env, "=x", |_| None).is_err());
    }

    #[test]
    fn security_opts() {
        let files = |p: &str| match p {
            "/deny-mkdir.json" => Ok(r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}"#
                .to_string()),
            "/bad.json" => Ok(r#"{"defaultAction": "SCMP_ACT_NOPE"}"#.to_string()),
            _ => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
        };
        let opts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_security_opts(&[], files).unwrap(),
            SeccompConfig::Default
        );
        assert_eq!(
            parse_security_opts(&opts(&["seccomp=unconfined"]), files).unwrap(),
            SeccompConfig::Unconfined
        );
        assert_eq!(
            parse_security_opts(&opts(&["seccomp:unconfined", "apparmor=unconfined"]), files)
                .unwrap(),
            SeccompConfig::Unconfined
        );
        let custom = parse_security_opts(&opts(&["seccomp=/deny-mkdir.json"]), files).unwrap();
        assert!(
            matches!(&custom, SeccompConfig::Profile { path, .. } if path == "/deny-mkdir.json")
        );
        assert!(matches!(
            custom.to_sandbox().unwrap(),
            crate::sandbox::seccomp::Seccomp::Custom(_)
        ));
        let err = |v: &[&str]| format!("{:#}", parse_security_opts(&opts(v), files).unwrap_err());
        let e = err(&["seccomp=/bad.json"]);
        assert!(
            e.contains("/bad.json is not valid") && e.contains("SCMP_ACT_NOPE"),
            "{e}"
        );
        let e = err(&["seccomp=/missing.json"]);
        assert!(
            e.contains("reading the seccomp profile /missing.json"),
            "{e}"
        );
        let e = err(&["seccomp="]);
        assert!(e.contains("seccomp needs a value"), "{e}");
        let e = err(&["no-new-privileges"]);
        assert!(
            e.contains("unsupported --security-opt \"no-new-privileges\""),
            "{e}"
        );
        let e = err(&["label=disable"]);
        assert!(e.contains("unsupported"), "{e}");
    }
}
