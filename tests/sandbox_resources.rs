//! cgroup limits on sandboxed commands, as root: OOM kills, pids, cpuset, cpu shares.

mod common;

use kiln::sandbox::{self, ExecSpec, Resources};
use kiln::snapshot::{ActiveSnapshot, PrepareOptions, Snapshotter};

fn busybox_snapshot() -> (tempfile::TempDir, ActiveSnapshot) {
    common::require_root();
    let root = common::temp_root();
    let snap = Snapshotter::new(root.path())
        .unwrap()
        .prepare(
            &[common::busybox_rootfs()],
            &PrepareOptions { volatile: true },
        )
        .unwrap();
    (root, snap)
}

fn sh(snap: &ActiveSnapshot, script: &str, resources: Resources) -> ExecSpec {
    let mut spec = ExecSpec::new(snap.merged(), ["/bin/sh", "-c", script]);
    spec.resources = resources;
    spec
}

#[test]
fn memory_limit_ends_an_allocation_heavy_command_as_an_oom_kill() {
    let (_root, snap) = busybox_snapshot();
    // The shell keeps the whole 256 MiB in a variable, far above the 32 MiB limit.
    let spec = sh(
        &snap,
        "x=$(head -c 268435456 /dev/zero | tr '\\0' a); echo survived ${#x}",
        Resources {
            memory_bytes: Some(32 << 20),
            ..Default::default()
        },
    );
    let (exit, out, _) = sandbox::output(&spec).unwrap();
    assert_eq!(exit.code, 137, "{exit:?} {}", String::from_utf8_lossy(&out));
    assert!(exit.oom_killed, "{exit:?}");

    // Under the limit: no OOM.
    let spec = sh(
        &snap,
        "x=$(head -c 1048576 /dev/zero | tr '\\0' a); echo ${#x}",
        Resources {
            memory_bytes: Some(64 << 20),
            ..Default::default()
        },
    );
    let (exit, out, _) = sandbox::output(&spec).unwrap();
    assert_eq!((exit.code, exit.oom_killed), (0, false));
    assert_eq!(String::from_utf8_lossy(&out).trim(), "1048576");
}

/// The cgroup directory of `pid` for a v1 `controller` (or the v2 one).
fn cgroup_dir(pid: i32, controller: &str) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    match kiln::sandbox::cgroup::detect() {
        kiln::sandbox::cgroup::CgroupVersion::V1 => {
            let path = cgroups
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.splitn(3, ':').collect();
                    f[1].split(',')
                        .any(|c| c == controller)
                        .then(|| f[2].to_string())
                })
                .unwrap();
            format!("/sys/fs/cgroup/{controller}{path}")
        }
        kiln::sandbox::cgroup::CgroupVersion::V2 => {
            let path = cgroups.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
            format!("/sys/fs/cgroup{path}")
        }
    }
}

#[test]
fn pids_limit_stops_a_fork_bomb() {
    let (_root, snap) = busybox_snapshot();
    // `sleep` is forked before the bomb so the script can still wait and report afterwards;
    // busybox sh exits when a fork fails, so the bomb dies out once the limit bites.
    let spec = sh(
        &snap,
        "sleep 2 & s=$!; bomb() { while :; do bomb & done; }; (bomb) 2>/dev/null & \
         wait $s; echo survived",
        Resources {
            pids_limit: Some(32),
            ..Default::default()
        },
    );
    let mut spec = spec;
    spec.stdout = kiln::sandbox::Stdio::Piped;
    let mut running = sandbox::spawn(&spec).unwrap();
    let dir = cgroup_dir(running.pid(), "pids");
    assert!(dir.contains("/kiln/"), "{dir}");
    let mut peak = 0u64;
    let mut refused = 0u64;
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_millis(1500) {
        if let Ok(c) = std::fs::read_to_string(format!("{dir}/pids.current")) {
            peak = peak.max(c.trim().parse().unwrap_or(0));
        }
        if let Ok(e) = std::fs::read_to_string(format!("{dir}/pids.events")) {
            refused = e
                .lines()
                .find_map(|l| l.strip_prefix("max ").and_then(|n| n.trim().parse().ok()))
                .unwrap_or(0);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut running.stdout.take().unwrap(), &mut out).unwrap();
    let exit = running.wait().unwrap();
    assert_eq!((exit.code, out.trim()), (0, "survived"));
    assert!(peak <= 32, "never more than the limit: {peak}");
    assert!(peak >= 10, "the bomb did grow: {peak}");
    assert!(refused > 0, "forks were refused by the pids controller");
}

#[test]
fn cpuset_pins_the_command() {
    let (_root, snap) = busybox_snapshot();
    let spec = sh(
        &snap,
        "grep Cpus_allowed_list /proc/self/status",
        Resources {
            cpuset: Some("0".into()),
            ..Default::default()
        },
    );
    let (exit, out, _) = sandbox::output(&spec).unwrap();
    assert_eq!(exit.code, 0);
    assert_eq!(
        String::from_utf8_lossy(&out).split_whitespace().last(),
        Some("0")
    );
}

#[test]
fn cpu_shares_are_set_and_the_cgroup_is_removed_at_the_end() {
    let (_root, snap) = busybox_snapshot();
    let mut spec = sh(
        &snap,
        "cat >/dev/null",
        Resources {
            cpu_shares: Some(512),
            ..Default::default()
        },
    );
    spec.stdin = sandbox::Stdio::Piped;
    let mut running = sandbox::spawn(&spec).unwrap();
    let dir = cgroup_dir(running.pid(), "cpu");
    assert!(dir.contains("/kiln/"), "{dir}");
    let value = std::fs::read_to_string(format!("{dir}/cpu.shares"))
        .or_else(|_| std::fs::read_to_string(format!("{dir}/cpu.weight")))
        .unwrap();
    assert!(value.trim() == "512" || value.trim() == "20", "{value}");
    drop(running.stdin.take());
    assert_eq!(running.wait().unwrap().code, 0);
    assert!(!std::path::Path::new(&dir).exists(), "cgroup removed");
}
