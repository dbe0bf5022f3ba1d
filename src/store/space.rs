//! Bounds on what kiln writes to disk: a free-space floor (writing stops with an error before
//! the filesystem drops under it) and a largest accepted layer (uncompressed). Both come from
//! the `[storage]` table of the config file, overridden by `KILN_MIN_FREE_SPACE` and
//! `KILN_MAX_LAYER_SIZE`:
//!
//! - `min-free-space`: a size (`"1GiB"`, `"500M"`, `"0"` = no floor) or a share of the
//!   filesystem (`"5%"`). Default: 1 GiB, but never more than 5% of the filesystem.
//! - `max-layer-size`: the largest uncompressed layer tar that import, load and unpacking
//!   accept. Default: no limit.
//!
//! The floor is checked with statvfs when writing starts and then again after at most
//! [`CHECK_EVERY`] bytes, sooner as the free space nears the floor (after half of what is left
//! above it), not per write.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

/// The most bytes written between two free-space checks.
pub const CHECK_EVERY: u64 = 16 << 20;
/// The fewest (near the floor).
const CHECK_AT_LEAST_EVERY: u64 = 64 << 10;

const DEFAULT_FLOOR: u64 = 1 << 30;
const DEFAULT_FLOOR_MAX_PERCENT: f64 = 5.0;

/// The free-space floor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Floor {
    Bytes(u64),
    Percent(f64),
    /// 1 GiB, or 5% of the filesystem when that is less.
    Default,
}

/// The storage bounds in force.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub min_free: Floor,
    pub max_layer_size: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            min_free: Floor::Default,
            max_layer_size: None,
        }
    }
}

/// Where a bound was set, for error messages.
fn setting_hint(key: &str, env: &str) -> String {
    format!(
        "{key} in [storage] of {} or {env}",
        crate::config::path().display()
    )
}

impl Limits {
    /// The limits for this process: the config file's `[storage]`, then the environment. Read
    /// once.
    pub fn current() -> Result<Limits> {
        static CURRENT: OnceLock<std::result::Result<Limits, String>> = OnceLock::new();
        CURRENT
            .get_or_init(|| Limits::load().map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(anyhow::Error::msg)
    }

    fn load() -> Result<Limits> {
        let storage = crate::config::load()?.storage;
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let floor = env("KILN_MIN_FREE_SPACE").or(storage.min_free_space);
        let max = env("KILN_MAX_LAYER_SIZE").or(storage.max_layer_size);
        Limits::parse(floor.as_deref(), max.as_deref())
    }

    /// Limits from the two settings' text (None: the default).
    pub fn parse(min_free: Option<&str>, max_layer_size: Option<&str>) -> Result<Limits> {
        let min_free = match min_free {
            None => Floor::Default,
            Some(s) => {
                match s.trim().strip_suffix('%') {
                    Some(p) => {
                        let p: f64 = p.trim().parse().ok().filter(|p| (0.0..100.0).contains(p)).with_context(
                        || format!("min-free-space {s:?}: a percentage must be from 0% to under 100%"),
                    )?;
                        Floor::Percent(p)
                    }
                    None => Floor::Bytes(
                        parse_size(s).with_context(|| format!("min-free-space {s:?}"))?,
                    ),
                }
            }
        };
        let max_layer_size = match max_layer_size {
            None => None,
            Some(s) => Some(parse_size(s).with_context(|| format!("max-layer-size {s:?}"))?),
        };
        Ok(Limits {
            min_free,
            max_layer_size,
        })
    }

    /// The floor in bytes for a filesystem of `total` bytes.
    pub fn floor_bytes(&self, total: u64) -> u64 {
        match self.min_free {
            Floor::Bytes(b) => b,
            Floor::Percent(p) => (total as f64 * p / 100.0) as u64,
            Floor::Default => {
                DEFAULT_FLOOR.min((total as f64 * DEFAULT_FLOOR_MAX_PERCENT / 100.0) as u64)
            }
        }
    }

    /// An error when an uncompressed layer of `size` bytes (so far) is over the limit.
    pub fn check_layer_size(&self, size: u64) -> io::Result<()> {
        match self.max_layer_size {
            Some(max) if size > max => Err(io::Error::other(format!(
                "the layer expands to more than {} (the largest accepted layer; raise {})",
                human(max),
                setting_hint("max-layer-size", "KILN_MAX_LAYER_SIZE")
            ))),
            _ => Ok(()),
        }
    }
}

/// `"1024"`, `"512K"`, `"1.5GiB"`, `"2gb"`: bytes (K/M/G/T are powers of 1024, as docker's).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)
        .with_context(|| format!("{s:?} is not a size (e.g. 512MiB, 2GiB, 1048576)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => bail!("{s:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB or TiB)"),
    };
    let bytes = n * mult as f64;
    if bytes > u64::MAX as f64 {
        bail!("{s:?} is too large");
    }
    Ok(bytes as u64)
}

/// `1.5 GiB`-style text.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Free and total bytes of the filesystem holding `path` (for unprivileged use: f_bavail).
pub fn free_space(path: &Path) -> io::Result<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    let frsize = st.fragment_size() as u64;
    Ok((
        (st.blocks_available() as u64).saturating_mul(frsize),
        (st.blocks() as u64).saturating_mul(frsize),
    ))
}

/// Watches the free space of one filesystem while something is written to it.
#[derive(Debug)]
pub struct SpaceGuard {
    path: PathBuf,
    limits: Limits,
    since_check: u64,
    /// Bytes that may be written before the next check.
    next_check: u64,
}

impl SpaceGuard {
    /// A guard for writes under `path`, which is checked at once.
    pub fn new(path: &Path, limits: Limits) -> io::Result<SpaceGuard> {
        let mut guard = SpaceGuard {
            path: path.to_path_buf(),
            limits,
            since_check: 0,
            next_check: 0,
        };
        guard.check()?;
        Ok(guard)
    }

    /// Counts `n` more bytes written; checks the floor when it is time.
    pub fn wrote(&mut self, n: u64) -> io::Result<()> {
        self.since_check += n;
        if self.since_check >= self.next_check {
            self.since_check = 0;
            self.check()?;
        }
        Ok(())
    }

    /// An error when the filesystem is under the floor.
    pub fn check(&mut self) -> io::Result<()> {
        if self.limits.min_free == Floor::Bytes(0) {
            self.next_check = u64::MAX;
            return Ok(());
        }
        let (free, total) = free_space(&self.path)?;
        let floor = self.limits.floor_bytes(total);
        self.next_check = (free.saturating_sub(floor) / 2).clamp(CHECK_AT_LEAST_EVERY, CHECK_EVERY);
        if free < floor {
            return Err(io::Error::other(format!(
                "stopped: the filesystem of {} is down to {} free, under kiln's floor of {}; \
                 free some space (kiln image prune, rmi) or lower {}",
                self.path.display(),
                human(free),
                human(floor),
                setting_hint("min-free-space", "KILN_MIN_FREE_SPACE")
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_floors_parse() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("512K").unwrap(), 512 << 10);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size(" 2 gb").unwrap(), 2 << 30);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        let l = Limits::parse(Some("10%"), Some("1MiB")).unwrap();
        assert_eq!(l.floor_bytes(1000), 100);
        assert_eq!(l.max_layer_size, Some(1 << 20));
        assert!(l.check_layer_size(1 << 20).is_ok());
        let err = l.check_layer_size((1 << 20) + 1).unwrap_err().to_string();
        assert!(
            err.contains("1.0 MiB") && err.contains("KILN_MAX_LAYER_SIZE"),
            "{err}"
        );
        assert!(Limits::parse(Some("100%"), None).is_err());
        let d = Limits::parse(None, None).unwrap();
        assert_eq!(d.floor_bytes(100 << 30), 1 << 30);
        assert_eq!(d.floor_bytes(10 << 30), (10u64 << 30) / 20);
    }

    #[test]
    fn the_guard_trips_under_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let (free, _) = free_space(dir.path()).unwrap();
        let over = Limits {
            min_free: Floor::Bytes(free + (1 << 40)),
            max_layer_size: None,
        };
        let err = SpaceGuard::new(dir.path(), over).unwrap_err().to_string();
        assert!(err.contains("under kiln's floor"), "{err}");
        let off = Limits {
            min_free: Floor::Bytes(0),
            max_layer_size: None,
        };
        let mut g = SpaceGuard::new(dir.path(), off).unwrap();
        g.wrote(CHECK_EVERY * 2).unwrap();
    }
}
