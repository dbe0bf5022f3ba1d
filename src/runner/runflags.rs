//! Parsing of `kiln run`'s docker flags beyond the first set (`config`): `--mount`, `--tmpfs`,
//! `--add-host`, `--label`. Each refuses what kiln cannot honour with one clear error.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::config::{normalize_path, MountType, VolumeMount};

/// `--mount type=bind|volume|tmpfs,source=…,target=…[,readonly][,tmpfs-size=…][,tmpfs-mode=…]`
/// (docker's keys: `src`/`source`, `dst`/`destination`/`target`, `ro`/`readonly`). A
/// volume without a source is anonymous (its name is filled in by the caller).
pub fn parse_mount(spec: &str, cwd: &Path) -> Result<VolumeMount> {
    let bad = |why: String| anyhow::anyhow!("invalid --mount {spec:?}: {why}");
    let mut kind = None;
    let mut source = None;
    let mut target = None;
    let mut readonly = false;
    let mut size = None;
    let mut mode = None;
    for field in spec.split(',').filter(|f| !f.is_empty()) {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (field.trim(), None),
        };
        match (k, v) {
            ("type", Some(t)) => {
                kind = Some(match t {
                    "bind" => MountType::Bind,
                    "volume" => MountType::Volume,
                    "tmpfs" => MountType::Tmpfs,
                    other => {
                        return Err(bad(format!(
                            "type {other:?} is not supported (kiln has bind, volume, tmpfs)"
                        )))
                    }
                })
            }
            ("source" | "src", Some(s)) => source = Some(s.to_string()),
            ("target" | "destination" | "dst", Some(t)) => target = Some(t.to_string()),
            ("readonly" | "ro", None) => readonly = true,
            ("readonly" | "ro", Some(b)) => {
                readonly = match b {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(bad(format!("{k}={b}: expected true or false"))),
                }
            }
            ("tmpfs-size", Some(s)) => size = Some(parse_size(s).map_err(|e| bad(e.to_string()))?),
            ("tmpfs-mode", Some(m)) => {
                mode = Some(
                    u32::from_str_radix(m, 8)
                        .map_err(|_| bad(format!("tmpfs-mode {m:?}: expected octal (1777)")))?,
                )
            }
            (
                "bind-propagation" | "bind-recursive" | "volume-driver" | "volume-opt"
                | "volume-subpath" | "volume-nocopy" | "consistency" | "tmpfs-options",
                _,
            ) => {
                return Err(bad(format!(
                    "kiln does not support the {k} option (docker: sets the mount's {})",
                    k.replace('-', " ")
                )))
            }
            _ => return Err(bad(format!("unknown field {field:?}"))),
        }
    }
    let kind = kind.unwrap_or(MountType::Volume);
    let target = target.ok_or_else(|| bad("a target (target=/path) is required".into()))?;
    if !target.starts_with('/') {
        return Err(bad(format!(
            "the target {target:?} is not an absolute path"
        )));
    }
    let target = normalize_path(&target);
    if (size.is_some() || mode.is_some()) && kind != MountType::Tmpfs {
        return Err(bad("tmpfs-size and tmpfs-mode are for type=tmpfs".into()));
    }
    match kind {
        MountType::Bind => {
            let s =
                source.ok_or_else(|| bad("a bind needs a source (source=/host/path)".into()))?;
            let p = Path::new(&s);
            let abs = if p.is_absolute() {
                p.to_path_buf()
            } else {
                cwd.join(p)
            };
            if !abs.exists() {
                // docker's --mount (unlike -v) does not create a missing bind source.
                return Err(bad(format!(
                    "bind source path does not exist: {}",
                    abs.display()
                )));
            }
            Ok(VolumeMount {
                kind,
                source: normalize_path(&abs.to_string_lossy()),
                target,
                readonly,
                anonymous: false,
            })
        }
        MountType::Volume => {
            let anonymous = source.is_none();
            let s = source.unwrap_or_default();
            if !anonymous && !super::config::valid_volume_name(&s) {
                return Err(bad(format!(
                    "{s:?} is not a volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]+; a host path needs \
                     type=bind)"
                )));
            }
            Ok(VolumeMount {
                kind,
                source: s,
                target,
                readonly,
                anonymous,
            })
        }
        MountType::Tmpfs => {
            if source.is_some() {
                return Err(bad("a tmpfs has no source".into()));
            }
            if readonly {
                return Err(bad("kiln cannot mount a tmpfs read-only".into()));
            }
            Ok(tmpfs_mount(target, size, mode))
        }
    }
}

/// A tmpfs mount; its options are kept in `source` as `size=BYTES,mode=OCTAL`.
fn tmpfs_mount(target: String, size: Option<u64>, mode: Option<u32>) -> VolumeMount {
    let mut opts = Vec::new();
    if let Some(s) = size {
        opts.push(format!("size={s}"));
    }
    opts.push(format!("mode={:o}", mode.unwrap_or(0o1777)));
    VolumeMount {
        kind: MountType::Tmpfs,
        source: opts.join(","),
        target,
        readonly: false,
        anonymous: false,
    }
}

/// The size and mode a tmpfs mount's `source` holds.
pub fn tmpfs_options(source: &str) -> Result<(Option<u64>, u32)> {
    let mut size = None;
    let mut mode = 0o1777;
    for o in source.split(',').filter(|o| !o.is_empty()) {
        match o.split_once('=') {
            Some(("size", v)) => size = Some(v.parse().context("tmpfs size")?),
            Some(("mode", v)) => mode = u32::from_str_radix(v, 8).context("tmpfs mode")?,
            _ => bail!("tmpfs option {o:?} in the container's config is not valid"),
        }
    }
    Ok((size, mode))
}

/// `--tmpfs /path[:size=64m,mode=1777,rw,nosuid,nodev]` (kiln's tmpfs mounts are always
/// nosuid and nodev).
pub fn parse_tmpfs(spec: &str) -> Result<VolumeMount> {
    let (target, opts) = spec.split_once(':').unwrap_or((spec, ""));
    if !target.starts_with('/') {
        bail!("invalid --tmpfs {spec:?}: {target:?} is not an absolute path");
    }
    let mut size = None;
    let mut mode = None;
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o.split_once('=') {
            Some(("size", v)) => {
                size = Some(parse_size(v).with_context(|| format!("invalid --tmpfs {spec:?}"))?)
            }
            Some(("mode", v)) => {
                mode = Some(u32::from_str_radix(v, 8).map_err(|_| {
                    anyhow::anyhow!("invalid --tmpfs {spec:?}: mode {v:?} is not octal")
                })?)
            }
            None if ["rw", "nosuid", "nodev"].contains(&o) => {}
            _ => bail!(
                "invalid --tmpfs {spec:?}: kiln does not support the option {o:?} (it has size=, \
                 mode=, rw, nosuid, nodev)"
            ),
        }
    }
    Ok(tmpfs_mount(normalize_path(target), size, mode))
}

/// A tmpfs size: bytes, or with k, m, g (docker's units, powers of 1024; a trailing b allowed).
fn parse_size(s: &str) -> Result<u64> {
    let lower = s.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix('b').unwrap_or(&lower);
    let (digits, mult) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1u64 << 10),
        Some('m') => (&lower[..lower.len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.len() - 1], 1 << 30),
        _ => (lower, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .ok_or_else(|| anyhow::anyhow!("size {s:?} is not a size (64m, 1g, 4096)"))
}

/// The capability set after `--cap-add` and `--cap-drop` (names with or without `CAP_`, any
/// case, or `ALL`), docker's order: drops first, then adds. `None`: the default set.
pub fn capabilities(add: &[String], drop: &[String]) -> Result<Option<u64>> {
    if add.is_empty() && drop.is_empty() {
        return Ok(None);
    }
    let all = crate::sandbox::caps::all_mask();
    let parse = |n: &str, flag: &str| -> Result<u64> {
        let up = n.trim().to_ascii_uppercase();
        if up == "ALL" {
            return Ok(all);
        }
        let full = if up.starts_with("CAP_") {
            up
        } else {
            format!("CAP_{up}")
        };
        crate::sandbox::caps::by_name(&full)
            .map(|c| 1u64 << c)
            .ok_or_else(|| anyhow::anyhow!("invalid {flag} {n:?}: no such capability"))
    };
    let mut mask = crate::sandbox::caps::default_mask();
    for d in drop {
        mask &= !parse(d, "--cap-drop")?;
    }
    for a in add {
        mask |= parse(a, "--cap-add")?;
    }
    Ok(Some(mask))
}

/// `--cpus 1.5`: the CFS quota per 100 ms period, in microseconds.
pub fn parse_cpus(s: &str) -> Result<u64> {
    let n: f64 = s
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid --cpus {s:?}: expected a number such as 1.5"))?;
    let online = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    if n.is_nan() || n <= 0.0 || n > online {
        bail!("invalid --cpus {s:?}: the range of CPUs is from 0.01 to {online} (this machine's)");
    }
    let quota = (n * 100_000.0).round() as u64;
    if quota < 1000 {
        bail!("invalid --cpus {s:?}: the minimum is 0.01");
    }
    Ok(quota)
}

/// `--memory-swap`: memory plus swap (`-1`: unlimited), which needs `-m` and must be at least
/// that.
pub fn parse_memory_swap(s: &str, memory: Option<u64>) -> Result<i64> {
    let Some(memory) = memory else {
        bail!("--memory-swap needs -m/--memory as well (it is memory plus swap)");
    };
    if s.trim() == "-1" {
        return Ok(-1);
    }
    let total = super::config::parse_memory(s).context("--memory-swap")?;
    if total < memory {
        bail!("--memory-swap {s} is less than the memory limit: it counts memory plus swap, so it must be at least -m");
    }
    Ok(total as i64)
}

/// `--add-host NAME:IP` (or `NAME=IP`; an IPv6 address may be in brackets).
pub fn parse_add_host(spec: &str) -> Result<(String, IpAddr)> {
    let (name, ip) = spec
        .split_once('=')
        .or_else(|| spec.split_once(':'))
        .ok_or_else(|| anyhow::anyhow!("invalid --add-host {spec:?}: expected NAME:IP"))?;
    if ip == "host-gateway" {
        bail!(
            "invalid --add-host {spec:?}: kiln has no host gateway (containers have no bridge): \
             use --network host, or 127.0.0.1 with a published port"
        );
    }
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid --add-host {spec:?}: {ip:?} is not an IP address"))?;
    if name.is_empty() || name.contains(char::is_whitespace) {
        bail!("invalid --add-host {spec:?}: the host name is empty or has spaces");
    }
    Ok((name.to_string(), ip))
}

/// `--label K=V` (or `K` for an empty value) over the image's labels.
pub fn labels(
    image: Option<&std::collections::HashMap<String, String>>,
    flags: &[String],
) -> Result<BTreeMap<String, String>> {
    let mut out: BTreeMap<String, String> = image
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    for l in flags {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        if k.is_empty() {
            bail!("invalid --label {l:?}: expected KEY=VALUE");
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_as_docker_writes_them() {
        let cwd = Path::new("/");
        let m = parse_mount("type=bind,source=/tmp,target=/x,readonly", cwd).unwrap();
        assert_eq!(
            (m.kind, m.source.as_str(), m.target.as_str(), m.readonly),
            (MountType::Bind, "/tmp", "/x", true)
        );
        let m = parse_mount("type=volume,src=data,dst=/data", cwd).unwrap();
        assert_eq!(
            (m.kind, m.source.as_str(), m.anonymous),
            (MountType::Volume, "data", false)
        );
        assert!(
            parse_mount("type=volume,target=/anon", cwd)
                .unwrap()
                .anonymous
        );
        let m = parse_mount(
            "type=tmpfs,destination=/scratch,tmpfs-size=1m,tmpfs-mode=700",
            cwd,
        )
        .unwrap();
        assert_eq!(tmpfs_options(&m.source).unwrap(), (Some(1 << 20), 0o700));
        assert!(parse_mount("type=bind,source=/no/such/dir,target=/x", cwd).is_err());
        assert!(parse_mount("type=nfs,target=/x", cwd).is_err());
        assert!(parse_mount("type=bind,source=/tmp", cwd).is_err());
        assert!(parse_mount(
            "type=bind,source=/tmp,target=/x,bind-propagation=shared",
            cwd
        )
        .unwrap_err()
        .to_string()
        .contains("does not support"));
        let t = parse_tmpfs("/run:size=64m,mode=1770,rw").unwrap();
        assert_eq!(tmpfs_options(&t.source).unwrap(), (Some(64 << 20), 0o1770));
        assert!(parse_tmpfs("/run:noexec").is_err());
        assert!(parse_tmpfs("run").is_err());
    }

    #[test]
    fn hosts_and_labels() {
        assert_eq!(
            parse_add_host("db:127.0.0.2").unwrap(),
            ("db".to_string(), "127.0.0.2".parse().unwrap())
        );
        assert_eq!(
            parse_add_host("v6=[::1]").unwrap(),
            ("v6".to_string(), "::1".parse().unwrap())
        );
        assert!(parse_add_host("x:host-gateway").is_err());
        assert!(parse_add_host("x:notanip").is_err());
        let mut image = std::collections::HashMap::new();
        image.insert("a".to_string(), "1".to_string());
        let l = labels(Some(&image), &["b=2".into(), "a=3".into(), "c".into()]).unwrap();
        assert_eq!(
            l.into_iter().collect::<Vec<_>>(),
            [
                ("a".into(), "3".into()),
                ("b".into(), "2".into()),
                ("c".into(), String::new())
            ]
        );
    }
}
