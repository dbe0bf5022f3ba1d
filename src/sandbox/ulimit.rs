//! docker's `--ulimit NAME=SOFT[:HARD]`: resource limits (setrlimit) of the command, set in its
//! process before the capabilities are cut (raising a hard limit needs CAP_SYS_RESOURCE) and
//! inherited across exec. `-1` is unlimited; without `:HARD` the hard limit is the soft one.

use anyhow::{bail, Context, Result};
use nix::sys::resource::Resource;

/// One `--ulimit`: the resource, its soft and hard limits (`u64::MAX` = unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ulimit {
    pub resource: Resource,
    pub soft: u64,
    pub hard: u64,
}

/// docker's names (go-units' `ulimitNameMapping`).
const NAMES: &[(&str, Resource)] = &[
    ("as", Resource::RLIMIT_AS),
    ("core", Resource::RLIMIT_CORE),
    ("cpu", Resource::RLIMIT_CPU),
    ("data", Resource::RLIMIT_DATA),
    ("fsize", Resource::RLIMIT_FSIZE),
    ("locks", Resource::RLIMIT_LOCKS),
    ("memlock", Resource::RLIMIT_MEMLOCK),
    ("msgqueue", Resource::RLIMIT_MSGQUEUE),
    ("nice", Resource::RLIMIT_NICE),
    ("nofile", Resource::RLIMIT_NOFILE),
    ("nproc", Resource::RLIMIT_NPROC),
    ("rss", Resource::RLIMIT_RSS),
    ("rtprio", Resource::RLIMIT_RTPRIO),
    ("rttime", Resource::RLIMIT_RTTIME),
    ("sigpending", Resource::RLIMIT_SIGPENDING),
    ("stack", Resource::RLIMIT_STACK),
];

fn limit(s: &str, whole: &str) -> Result<u64> {
    if s == "-1" {
        return Ok(u64::MAX);
    }
    s.parse::<u64>()
        .with_context(|| format!("invalid ulimit {whole:?}: {s:?} is not a number (or -1)"))
}

/// Parses `nofile=1024:2048`, `nproc=512`, `core=-1`.
pub fn parse(s: &str) -> Result<Ulimit> {
    let Some((name, values)) = s.split_once('=') else {
        bail!("invalid ulimit argument {s:?}: expected NAME=SOFT[:HARD], as nofile=1024:2048");
    };
    let Some((_, resource)) = NAMES.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
        bail!(
            "invalid ulimit type {name:?} in {s:?}: one of {}",
            names.join(", ")
        );
    };
    let (soft, hard) = match values.split_once(':') {
        Some((a, b)) => (limit(a, s)?, limit(b, s)?),
        None => {
            let v = limit(values, s)?;
            (v, v)
        }
    };
    if soft > hard {
        bail!("invalid ulimit {s:?}: the soft limit must be less than or equal to the hard limit");
    }
    Ok(Ulimit {
        resource: *resource,
        soft,
        hard,
    })
}

impl Ulimit {
    /// Sets this limit on the calling process.
    pub fn apply(&self) -> nix::Result<()> {
        let v = |x: u64| {
            if x == u64::MAX {
                nix::libc::RLIM_INFINITY
            } else {
                x
            }
        };
        nix::sys::resource::setrlimit(self.resource, v(self.soft), v(self.hard))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockers_forms() {
        assert_eq!(
            parse("nofile=100:200").unwrap(),
            Ulimit {
                resource: Resource::RLIMIT_NOFILE,
                soft: 100,
                hard: 200
            }
        );
        let u = parse("nproc=64").unwrap();
        assert_eq!((u.soft, u.hard), (64, 64));
        let u = parse("core=-1").unwrap();
        assert_eq!((u.soft, u.hard), (u64::MAX, u64::MAX));
        assert!(parse("nofile=200:100")
            .unwrap_err()
            .to_string()
            .contains("soft limit must be less"));
        assert!(parse("bogus=1").unwrap_err().to_string().contains("nofile"));
        assert!(parse("nofile").is_err());
        assert!(parse("nofile=x").is_err());
    }
}
