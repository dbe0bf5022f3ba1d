//! What an execution's cgroup has accounted for (`kiln stats`): CPU time, memory in use and its
//! limit, block I/O, processes; read from v1's `cpuacct`, `memory`, `blkio` and `pids`
//! controllers or from the one v2 directory, as Docker's daemon reads them. Plus the host's
//! side of Docker's CPU % (the system's CPU time, the online CPUs) and the bytes through a
//! network namespace's interfaces.

use std::io;
use std::path::{Path, PathBuf};

use super::cgroup::{self, CgroupVersion};

/// One reading of a cgroup's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// CPU time used by every process of the cgroup, in nanoseconds.
    pub cpu_ns: u64,
    /// Memory in use less the inactive file cache (what Docker's CLI shows).
    pub mem_usage: u64,
    /// The memory limit, or the host's memory when there is none (or it is larger).
    pub mem_limit: u64,
    pub blk_read: u64,
    pub blk_write: u64,
    pub pids: u64,
}

fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file)).ok()
}

fn read_u64(dir: &Path, file: &str) -> Option<u64> {
    read(dir, file)?.trim().parse().ok()
}

/// The value of `key` in a flat keyed file (`memory.stat`, `cpu.stat`: `key value` lines).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// Docker's memory usage: `usage` less the inactive file cache when that is smaller.
pub fn usage_without_cache(usage: u64, inactive_file: Option<u64>) -> u64 {
    match inactive_file {
        Some(v) if v < usage => usage - v,
        _ => usage,
    }
}

/// Bytes read and written from v1's `blkio.*io_service_bytes*` (`MAJ:MIN Read N` lines and a
/// `Total N` line), summed over devices as Docker's CLI does.
pub fn parse_blkio_v1(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0, 0);
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let [_, op, v] = f[..] {
            let v: u64 = v.parse().unwrap_or(0);
            match op.to_ascii_lowercase().as_str() {
                "read" => r += v,
                "write" => w += v,
                _ => {}
            }
        }
    }
    (r, w)
}

/// Bytes read and written from v2's `io.stat` (`MAJ:MIN rbytes=N wbytes=N rios=N …` lines).
pub fn parse_io_stat_v2(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0, 0);
    for field in text.split_whitespace() {
        if let Some(v) = field.strip_prefix("rbytes=") {
            r += v.parse().unwrap_or(0);
        } else if let Some(v) = field.strip_prefix("wbytes=") {
            w += v.parse().unwrap_or(0);
        }
    }
    (r, w)
}

/// The host's memory (MemTotal of /proc/meminfo), in bytes.
pub fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_meminfo_total(&t))
        .unwrap_or(0)
}

pub fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The system's CPU time in nanoseconds, as Docker counts it: the first seven fields (user,
/// nice, system, idle, iowait, irq, softirq) of /proc/stat's `cpu` line, in clock ticks.
pub fn system_cpu_ns() -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/stat")?;
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    parse_proc_stat(&text, if ticks > 0 { ticks as u64 } else { 100 }).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "/proc/stat has no cpu line with 7 fields",
        )
    })
}

pub fn parse_proc_stat(text: &str, ticks_per_sec: u64) -> Option<u64> {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some("cpu"))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(7)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    (fields.len() == 7).then(|| {
        (fields.iter().sum::<u64>() as u128 * 1_000_000_000 / ticks_per_sec as u128) as u64
    })
}

/// The CPUs online on the host (Docker multiplies the container's share by them).
pub fn online_cpus() -> u32 {
    // SAFETY: sysconf only reads a system constant.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u32::try_from(n).unwrap_or(1).max(1)
}

/// Bytes received and sent by the interfaces of /proc/<pid>/net/dev (the network namespace of
/// process `pid`), loopback left out as Docker leaves it out.
pub fn net_io(pid: i32) -> io::Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev"))?;
    Ok(parse_net_dev(&text))
}

/// `net/dev`: two header lines, then `  name: rx_bytes packets errs drop fifo frame compressed
/// multicast tx_bytes …`.
pub fn parse_net_dev(text: &str) -> (u64, u64) {
    let (mut rx, mut tx) = (0, 0);
    for line in text.lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = counters
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        if f.len() >= 9 {
            rx += f[0];
            tx += f[8];
        }
    }
    (rx, tx)
}

/// The counters of the kiln cgroup that process `pid` is in.
pub fn read_of(pid: i32) -> io::Result<CgroupStats> {
    let host = host_memory();
    let gone = || {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("process {pid} is in no kiln cgroup"),
        )
    };
    match cgroup::detect() {
        CgroupVersion::V1 => {
            let dir = |c: &str| cgroup::dir_of(pid, c);
            let dirs: Vec<Option<PathBuf>> = ["cpuacct", "memory", "blkio", "pids"]
                .iter()
                .map(|c| dir(c))
                .collect();
            if dirs.iter().all(Option::is_none) {
                return Err(gone());
            }
            Ok(read_v1(
                dirs[0].as_deref(),
                dirs[1].as_deref(),
                dirs[2].as_deref(),
                dirs[3].as_deref(),
                host,
            ))
        }
        CgroupVersion::V2 => Ok(read_v2(&cgroup::dir_of(pid, "").ok_or_else(gone)?, host)),
    }
}

/// A limit as shown: the host's memory when there is none or it is larger.
fn shown_limit(limit: Option<u64>, host: u64) -> u64 {
    match limit {
        Some(l) if host == 0 || l < host => l,
        _ => host,
    }
}

fn read_v1(
    cpuacct: Option<&Path>,
    memory: Option<&Path>,
    blkio: Option<&Path>,
    pids: Option<&Path>,
    host: u64,
) -> CgroupStats {
    let mut s = CgroupStats {
        mem_limit: host,
        ..Default::default()
    };
    if let Some(d) = cpuacct {
        s.cpu_ns = read_u64(d, "cpuacct.usage").unwrap_or(0);
    }
    if let Some(d) = memory {
        let usage = read_u64(d, "memory.usage_in_bytes").unwrap_or(0);
        let stat = read(d, "memory.stat").unwrap_or_default();
        s.mem_usage = usage_without_cache(usage, keyed(&stat, "total_inactive_file"));
        s.mem_limit = shown_limit(read_u64(d, "memory.limit_in_bytes"), host);
    }
    if let Some(d) = blkio {
        // The CFQ/BFQ schedulers' counters when they have any, else the throttle layer's
        // (which counts for every scheduler), as runc reads them.
        for f in [
            "blkio.io_service_bytes_recursive",
            "blkio.bfq.io_service_bytes_recursive",
            "blkio.throttle.io_service_bytes_recursive",
            "blkio.throttle.io_service_bytes",
        ] {
            if let Some(text) = read(d, f) {
                if text.lines().any(|l| l.split_whitespace().count() == 3) {
                    (s.blk_read, s.blk_write) = parse_blkio_v1(&text);
                    break;
                }
            }
        }
    }
    if let Some(d) = pids {
        s.pids = read_u64(d, "pids.current").unwrap_or(0);
    }
    s
}

fn read_v2(dir: &Path, host: u64) -> CgroupStats {
    let cpu = read(dir, "cpu.stat").unwrap_or_default();
    let usage = read_u64(dir, "memory.current").unwrap_or(0);
    let stat = read(dir, "memory.stat").unwrap_or_default();
    let (blk_read, blk_write) = parse_io_stat_v2(&read(dir, "io.stat").unwrap_or_default());
    CgroupStats {
        cpu_ns: keyed(&cpu, "usage_usec").unwrap_or(0) * 1000,
        mem_usage: usage_without_cache(usage, keyed(&stat, "inactive_file")),
        // "max" when there is no limit: not a number, so the host's memory.
        mem_limit: shown_limit(read_u64(dir, "memory.max"), host),
        blk_read,
        blk_write,
        pids: read_u64(dir, "pids.current").unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_usage_leaves_the_inactive_file_cache_out() {
        let stat = "cache 1000\nrss 500\ninactive_file 300\ntotal_inactive_file 700\n";
        assert_eq!(keyed(stat, "total_inactive_file"), Some(700));
        assert_eq!(keyed(stat, "inactive_file"), Some(300));
        assert_eq!(keyed(stat, "active_file"), None);
        assert_eq!(usage_without_cache(2000, Some(700)), 1300);
        assert_eq!(usage_without_cache(500, Some(700)), 500);
        assert_eq!(usage_without_cache(500, None), 500);
        assert_eq!(shown_limit(Some(64 << 20), 8 << 30), 64 << 20);
        assert_eq!(shown_limit(Some(i64::MAX as u64), 8 << 30), 8 << 30);
        assert_eq!(shown_limit(None, 8 << 30), 8 << 30);
    }

    #[test]
    fn block_io_sums_reads_and_writes_over_devices() {
        let v1 = "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Async 12288\n8:0 Total 12288\n\
                  253:0 Read 1000\n253:0 Write 0\nTotal 13288\n";
        assert_eq!(parse_blkio_v1(v1), (5096, 8192));
        assert_eq!(parse_blkio_v1("Total 0\n"), (0, 0));
        let v2 = "8:0 rbytes=4096 wbytes=100 rios=1 wios=1 dbytes=0 dios=0\n\
                  253:0 rbytes=10 wbytes=20 rios=1 wios=1\n";
        assert_eq!(parse_io_stat_v2(v2), (4106, 120));
    }

    #[test]
    fn system_cpu_time_counts_dockers_seven_fields() {
        let stat = "cpu  100 2 30 400 5 6 7 8 0 0\ncpu0 50 1 15 200 2 3 3 4 0 0\nintr 1\n";
        // 550 ticks of 1/100 s; steal (8) is not counted.
        assert_eq!(parse_proc_stat(stat, 100), Some(5_500_000_000));
        assert_eq!(parse_proc_stat("cpu 1 2 3\n", 100), None);
        assert_eq!(
            parse_meminfo_total("MemTotal:       24681784 kB\nMemFree: 1 kB\n"),
            Some(24_681_784 * 1024)
        );
    }

    #[test]
    fn network_io_leaves_loopback_out() {
        let dev = "Inter-|   Receive                                                |  Transmit\n \
face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo: 9999 10 0 0 0 0 0 0 9999 10 0 0 0 0 0 0\n  \
eth0: 1200 3 0 0 0 0 0 0 340 2 0 0 0 0 0 0\n  \
eth1: 800 1 0 0 0 0 0 0 60 1 0 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(dev), (2000, 400));
    }

    #[test]
    fn cpu_usage_of_v2_is_in_microseconds() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").unwrap();
        std::fs::write(d.join("memory.current"), "10000\n").unwrap();
        std::fs::write(d.join("memory.stat"), "anon 6000\ninactive_file 4000\n").unwrap();
        std::fs::write(d.join("memory.max"), "max\n").unwrap();
        std::fs::write(d.join("pids.current"), "3\n").unwrap();
        let s = read_v2(d, 1 << 30);
        assert_eq!(
            s,
            CgroupStats {
                cpu_ns: 1_500_000,
                mem_usage: 6000,
                mem_limit: 1 << 30,
                blk_read: 0,
                blk_write: 0,
                pids: 3
            }
        );
        std::fs::write(d.join("memory.max"), "67108864\n").unwrap();
        assert_eq!(read_v2(d, 1 << 30).mem_limit, 64 << 20);
    }
}
