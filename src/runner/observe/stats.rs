//! `kiln stats`: a container's runtime metrics as docker's: CPU %, memory usage / limit and %,
//! network and block I/O, processes. The counters are read from the container's cgroup
//! (`sandbox::cgroup_stats`) and its network namespace; CPU % needs two readings (the
//! container's CPU time over the system's in between, times the online CPUs).

use crate::runner::state::{ContainerRecord, Status};
use crate::sandbox::cgroup::{self, CgroupVersion};
use crate::sandbox::cgroup_stats;

/// One reading of a container's counters, with the system's CPU time at that moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    pub running: bool,
    pub cgroup: cgroup_stats::CgroupStats,
    pub system_ns: u64,
    pub online_cpus: u32,
    pub net_rx: u64,
    pub net_tx: u64,
}

/// Reads the counters of `rec` now; a container that is not running reads as zeros (docker
/// shows it so).
pub fn sample(rec: &ContainerRecord) -> Sample {
    if rec.status() != Status::Running || rec.init_pid <= 0 {
        return Sample::default();
    }
    let Ok(mut cgroup) = cgroup_stats::read_of(rec.init_pid) else {
        // The container ended between the state read and this one.
        return Sample::default();
    };
    if let Some(n) = container_tasks(rec.init_pid) {
        cgroup.pids = n;
    }
    // Host networking has no interfaces of the container's own: docker shows 0B / 0B.
    let (net_rx, net_tx) = if rec.config.network == "host" {
        (0, 0)
    } else {
        cgroup_stats::net_io(rec.init_pid).unwrap_or((0, 0))
    };
    Sample {
        running: true,
        cgroup,
        system_ns: cgroup_stats::system_cpu_ns().unwrap_or(0),
        online_cpus: cgroup_stats::online_cpus(),
        net_rx,
        net_tx,
    }
}

/// The tasks (threads, as `pids.current` counts them) of the container's cgroup that are in
/// its PID namespace: kiln's setup process, which waits outside it, is not the container's.
fn container_tasks(init: i32) -> Option<u64> {
    let (dir, file) = match cgroup::detect() {
        CgroupVersion::V1 => (cgroup::dir_of(init, "pids")?, "tasks"),
        CgroupVersion::V2 => (cgroup::dir_of(init, "")?, "cgroup.threads"),
    };
    let tasks = std::fs::read_to_string(dir.join(file)).ok()?;
    let ns = |tid: &str| std::fs::read_link(format!("/proc/{tid}/ns/pid")).ok();
    let init_ns = ns(&init.to_string())?;
    let n = tasks
        .lines()
        .filter(|t| ns(t.trim()).as_ref() == Some(&init_ns))
        .count();
    Some(n as u64)
}

/// Docker's CPU %: the container's CPU time over the system's between two readings, times the
/// online CPUs (so one busy CPU of two is 100%); 0 when either did not advance.
pub fn cpu_percent(prev: &Sample, cur: &Sample) -> f64 {
    let cpu = cur.cgroup.cpu_ns as f64 - prev.cgroup.cpu_ns as f64;
    let system = cur.system_ns as f64 - prev.system_ns as f64;
    if !prev.running || !cur.running || cpu <= 0.0 || system <= 0.0 {
        return 0.0;
    }
    cpu / system * f64::from(cur.online_cpus) * 100.0
}

/// The table's header, as docker's.
pub const HEADER: &[&str] = &[
    "CONTAINER ID",
    "NAME",
    "CPU %",
    "MEM USAGE / LIMIT",
    "MEM %",
    "NET I/O",
    "BLOCK I/O",
    "PIDS",
];

/// One row of the table for `rec`, from two readings.
pub fn row(rec: &ContainerRecord, prev: &Sample, cur: &Sample, no_trunc: bool) -> Vec<String> {
    let id = if no_trunc {
        rec.id.clone()
    } else {
        rec.short_id().to_string()
    };
    let c = &cur.cgroup;
    let mem_pct = if c.mem_limit > 0 {
        c.mem_usage as f64 / c.mem_limit as f64 * 100.0
    } else {
        0.0
    };
    vec![
        id,
        rec.name.clone(),
        format!("{:.2}%", cpu_percent(prev, cur)),
        format!("{} / {}", bytes_size(c.mem_usage), bytes_size(c.mem_limit)),
        format!("{mem_pct:.2}%"),
        format!("{} / {}", human_size(cur.net_rx), human_size(cur.net_tx)),
        format!("{} / {}", human_size(c.blk_read), human_size(c.blk_write)),
        c.pids.to_string(),
    ]
}

/// go-units' `BytesSize`: binary units, 4 significant digits (`960KiB`, `23.54GiB`).
pub fn bytes_size(n: u64) -> String {
    custom_size(
        n,
        1024.0,
        &["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"],
        4,
    )
}

/// go-units' `HumanSizeWithPrecision(n, 3)`: decimal units (`0B`, `1.2kB`, `34.5MB`).
pub fn human_size(n: u64) -> String {
    custom_size(n, 1000.0, &["B", "kB", "MB", "GB", "TB", "PB", "EB"], 3)
}

fn custom_size(n: u64, base: f64, units: &[&str], precision: usize) -> String {
    let mut size = n as f64;
    let mut i = 0;
    while size >= base && i + 1 < units.len() {
        size /= base;
        i += 1;
    }
    format!("{}{}", go_g(size, precision), units[i])
}

/// Go's `%.{precision}g`: the shortest form with at most `precision` significant digits,
/// trailing zeros dropped; an exponent (`1e+03`) when it is below -4 or not below `precision`.
pub fn go_g(v: f64, precision: usize) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let p = precision.max(1);
    let sci = format!("{:.*e}", p - 1, v);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if exp < -4 || exp >= p as i32 {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exp.abs())
    } else {
        let decimals = (p as i32 - 1 - exp).max(0) as usize;
        trim(&format!("{v:.decimals$}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::cgroup_stats::CgroupStats;

    #[test]
    fn sizes_are_formatted_as_docker_formats_them() {
        // Recorded from `docker stats` of Docker 28.5.
        assert_eq!(bytes_size(960 * 1024), "960KiB");
        assert_eq!(bytes_size(64 << 20), "64MiB");
        assert_eq!(bytes_size(24_681_784 * 1024), "23.54GiB");
        assert_eq!(bytes_size((31.7 * 1048576.0) as u64), "31.7MiB");
        assert_eq!(bytes_size(0), "0B");
        assert_eq!(bytes_size(1023), "1023B");
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(1200), "1.2kB");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(34_567_000), "34.6MB");
        assert_eq!(human_size(1_000_000), "1MB");
        // Go's %.3g of 999.7 is 1e+03.
        assert_eq!(human_size(999_700), "1e+03kB");
        assert_eq!(go_g(0.000_012_34, 3), "1.23e-05");
        assert_eq!(go_g(0.5, 4), "0.5");
    }

    #[test]
    fn cpu_percent_is_the_share_of_the_system_times_the_cpus() {
        let at = |cpu_ns, system_ns| Sample {
            running: true,
            cgroup: CgroupStats {
                cpu_ns,
                ..Default::default()
            },
            system_ns,
            online_cpus: 2,
            ..Default::default()
        };
        // One CPU busy of two for a second: 1 s of 2 s of system time, times 2.
        let pct = cpu_percent(&at(0, 10_000_000_000), &at(1_000_000_000, 12_000_000_000));
        assert!((pct - 100.0).abs() < 1e-9, "{pct}");
        assert_eq!(cpu_percent(&at(5, 10), &at(5, 20)), 0.0);
        assert_eq!(cpu_percent(&Sample::default(), &at(5, 20)), 0.0);
    }
}
