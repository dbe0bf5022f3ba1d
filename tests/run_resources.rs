//! Resource limits of `kiln run`: CPU shares on a shared CPU, memory limits and the OOM killer.

mod common;
mod run_fixtures;

use std::path::{Path, PathBuf};
use std::time::Duration;

use run_fixtures::Container;
use serde_json::json;

/// The container's cgroup directory for `controller`, from its init's /proc/PID/cgroup.
fn cgroup_dir(init_pid: i64, controller: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{init_pid}/cgroup")).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        ctrls.split(',').any(|c| c == controller).then(|| {
            Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(path.trim_start_matches('/'))
        })
    })
}

/// CPU time (ns) used by the container: `cpuacct.usage` of its cpuacct cgroup (every execution
/// has one where v1 mounts cpuacct, with cpu or apart); otherwise the sum of the CPU times of
/// the processes in its cpu cgroup.
fn cgroup_cpu_ns(init_pid: i64) -> u64 {
    if let Some(u) = cgroup_dir(init_pid, "cpuacct")
        .and_then(|d| std::fs::read_to_string(d.join("cpuacct.usage")).ok())
    {
        return u.trim().parse().unwrap();
    }
    let dir = cgroup_dir(init_pid, "cpu").expect("the container has a cpu cgroup");
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
    let tick_ns = 1_000_000_000 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    procs
        .lines()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .map(|stat| {
            let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
            // utime and stime: fields 14 and 15 (index 11 and 12 after the state).
            (f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()) * tick_ns
        })
        .sum()
}

#[test]
fn cpu_shares_split_one_cpu_about_one_to_four() {
    common::require_root();
    let root = common::temp_root();
    let r = root.path();
    run_fixtures::busybox_image(r, "bb", json!({"Cmd": ["sh", "-c", "while :; do :; done"]}));
    let low = Container::run(r, &["--cpuset-cpus=0", "--cpu-shares=20", "bb"]);
    let high = Container::run(r, &["--cpuset-cpus", "0", "--cpu-shares", "80", "bb"]);
    let (lp, hp) = (
        low.inspect()["State"]["Pid"].as_i64().unwrap(),
        high.inspect()["State"]["Pid"].as_i64().unwrap(),
    );
    let shares =
        |pid| std::fs::read_to_string(cgroup_dir(pid, "cpu").unwrap().join("cpu.shares")).unwrap();
    assert_eq!((shares(lp).trim(), shares(hp).trim()), ("20", "80"));
    let cpus = std::fs::read_to_string(cgroup_dir(lp, "cpuset").unwrap().join("cpuset.cpus"));
    assert_eq!(cpus.unwrap().trim(), "0");
    std::thread::sleep(Duration::from_millis(500));
    let (l0, h0) = (cgroup_cpu_ns(lp), cgroup_cpu_ns(hp));
    std::thread::sleep(Duration::from_secs(4));
    let (l1, h1) = (cgroup_cpu_ns(lp), cgroup_cpu_ns(hp));
    let (dl, dh) = ((l1 - l0) as f64, (h1 - h0) as f64);
    assert!(dl > 0.0, "the low-share container ran a little");
    let ratio = dh / dl;
    eprintln!("cpu time high/low: {ratio:.2}");
    assert!(
        (2.5..=6.0).contains(&ratio),
        "CPU time high/low = {ratio:.2} ({dh} ns / {dl} ns), expected about 4"
    );
    // Both were pinned to CPU 0: together they used at most about one CPU.
    assert!(dl + dh < 4.0e9 * 1.3, "{dl} + {dh} ns in 4 s on one CPU");
}

#[test]
fn memory_limit_oom_kills_with_137_and_inspect_says_so() {
    common::require_root();
    let root = common::temp_root();
    let r = root.path();
    run_fixtures::busybox_image(r, "bb", json!({"Cmd": ["sh"]}));
    // tail keeps the last "line" of /dev/zero, which never ends: it allocates without bound.
    let o = common::kiln(
        r,
        &[
            "run",
            "--name",
            "hog",
            "-m",
            "32m",
            "bb",
            "tail",
            "/dev/zero",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(137),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let insp: serde_json::Value =
        serde_json::from_str(&common::kiln_ok(r, &["container", "inspect", "hog"])).unwrap();
    assert_eq!(insp[0]["State"]["OOMKilled"], true);
    assert_eq!(insp[0]["State"]["ExitCode"], 137);
    assert_eq!(insp[0]["HostConfig"]["Memory"], 32 << 20);
    // Below the limit nothing is killed.
    let o = common::kiln(
        r,
        &[
            "run",
            "--name",
            "fine",
            "-m",
            "64m",
            "bb",
            "sh",
            "-c",
            "head -c 8m /dev/zero | wc -c",
        ],
    );
    assert_eq!(o.status.code(), Some(0));
    let insp: serde_json::Value =
        serde_json::from_str(&common::kiln_ok(r, &["container", "inspect", "fine"])).unwrap();
    assert_eq!(insp[0]["State"]["OOMKilled"], false);
    // The pids limit holds too.
    let o = common::kiln(
        r,
        &[
            "run",
            "--rm",
            "--pids-limit",
            "5",
            "bb",
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8; do sleep 2 & done; wait",
        ],
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("fork"), "{o:?}");
    common::kiln_ok(r, &["rm", "hog", "fine"]);
}

/// The container sees its own cgroup, read-only, at /sys/fs/cgroup, as under runc, so a JVM or
/// Go runtime sizes itself to `-m` and `--cpus` (docker 28 on cgroup v1:
/// `/sys/fs/cgroup/memory/memory.limit_in_bytes` is the limit, `cpu.cfs_quota_us` the quota).
#[test]
fn the_container_sees_its_limits_under_sys_fs_cgroup() {
    common::require_root();
    let root = common::temp_root();
    let r = root.path();
    run_fixtures::busybox_image(r, "bb", json!({"Cmd": ["sh"]}));
    let version = kiln::sandbox::cgroup::detect();
    let script = match version {
        kiln::sandbox::cgroup::CgroupVersion::V1 => {
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us \
             /sys/fs/cgroup/cpu/cpu.cfs_period_us; touch /sys/fs/cgroup/memory/x 2>&1 || true"
        }
        _ => "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max; touch /sys/fs/cgroup/x 2>&1 || true",
    };
    let out = common::kiln_ok(
        r,
        &[
            "run", "--rm", "-m", "96m", "--cpus", "0.5", "bb", "sh", "-c", script,
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    match version {
        kiln::sandbox::cgroup::CgroupVersion::V1 => {
            assert_eq!(lines[..3], ["100663296", "50000", "100000"], "{out}");
        }
        _ => assert_eq!(lines[..2], ["100663296", "50000 100000"], "{out}"),
    }
    assert!(
        lines[lines.len() - 1].contains("Read-only file system"),
        "{out}"
    );
}
