//! `kiln stats`: the runtime metrics of running containers, read from their cgroups, in
//! docker's table (headers and number formats recorded from `docker stats` of Docker 28.5).

mod common;
mod run_fixtures;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use run_fixtures::Container;
use serde_json::json;

/// The tests that load CPU 0 take turns, so one's hogs do not take another's CPU.
static CPU0: std::sync::Mutex<()> = std::sync::Mutex::new(());

const HEADER: &str =
    "CONTAINER ID   NAME      CPU %     MEM USAGE / LIMIT   MEM %     NET I/O   BLOCK I/O   PIDS";

/// One row of `kiln stats`, by column.
#[derive(Debug, Clone)]
struct Row {
    id: String,
    name: String,
    cpu: f64,
    mem_usage: u64,
    mem_limit: String,
    mem_pct: String,
    net: String,
    block: String,
    pids: u64,
}

/// Cells are padded with at least three spaces and hold single spaces only.
fn cells(line: &str) -> Vec<String> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

/// `29.35MiB` in bytes (docker's binary units).
fn binary_bytes(s: &str) -> u64 {
    let units = [
        ("KiB", 1u64 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("B", 1),
    ];
    let (n, mult) = units
        .iter()
        .find_map(|(u, m)| s.strip_suffix(u).map(|n| (n, *m)))
        .unwrap_or_else(|| panic!("no binary unit in {s:?}"));
    (n.parse::<f64>().unwrap_or_else(|_| panic!("{s:?}")) * mult as f64) as u64
}

/// The rows of one `kiln stats --no-stream ARGS`, by name; checks the header.
fn stats(root: &Path, args: &[&str]) -> HashMap<String, Row> {
    let mut full = vec!["stats", "--no-stream"];
    full.extend_from_slice(args);
    let out = common::kiln_ok(root, &full);
    let mut lines = out.lines();
    let header = lines.next().unwrap_or_default();
    assert_eq!(cells(header), cells(HEADER), "{out}");
    lines
        .map(|l| {
            let c = cells(l);
            assert_eq!(c.len(), 8, "{l:?}");
            let (usage, limit) = c[3].split_once(" / ").unwrap();
            let row = Row {
                id: c[0].clone(),
                name: c[1].clone(),
                cpu: c[2].strip_suffix('%').unwrap().parse().unwrap(),
                mem_usage: binary_bytes(usage),
                mem_limit: limit.to_string(),
                mem_pct: c[4].clone(),
                net: c[5].clone(),
                block: c[6].clone(),
                pids: c[7].parse().unwrap(),
            };
            (row.name.clone(), row)
        })
        .collect()
}

/// The container's v1 cgroup directory for `controller` (None on v2).
fn cgroup_dir(init_pid: i64, controller: &str) -> Option<std::path::PathBuf> {
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

fn read_u64(f: &Path) -> u64 {
    std::fs::read_to_string(f).unwrap().trim().parse().unwrap()
}

/// The system's CPU time as docker counts it (user..softirq of /proc/stat), in nanoseconds.
fn system_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let ticks: u64 = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .take(7)
        .map(|v| v.parse::<u64>().unwrap())
        .sum();
    // SAFETY: sysconf only reads a constant.
    ticks * 1_000_000_000 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64
}

#[test]
fn a_pinned_cpu_hog_uses_one_cpu() {
    common::require_root();
    let _cpu0 = CPU0.lock().unwrap_or_else(|e| e.into_inner());
    let root = common::temp_root();
    let r = root.path();
    run_fixtures::busybox_image(r, "bb", json!({"Cmd": ["sh", "-c", "while :; do :; done"]}));
    let hog = Container::run(r, &["--name", "hog", "--cpuset-cpus", "0", "bb"]);
    let _idle = Container::run(r, &["--name", "idle", "bb", "sleep", "300"]);
    // One CPU of the machine's: 100% (docker's scale), less what other work on the machine
    // takes of CPU 0 (the best of three readings).
    // Each reading agrees with the hog's CPU time over the system's measured around it.
    let init = hog.inspect()["State"]["Pid"].as_i64().unwrap();
    let cpuacct = cgroup_dir(init, "cpuacct").map(|d| d.join("cpuacct.usage"));
    let mut best = 0.0f64;
    let mut rows = HashMap::new();
    for _ in 0..5 {
        let before = cpuacct.as_deref().map(|f| (read_u64(f), system_ns()));
        rows = stats(r, &[]);
        let cpu = rows["hog"].cpu;
        if let (Some((c0, s0)), Some(f)) = (before, cpuacct.as_deref()) {
            let (c1, s1) = (read_u64(f), system_ns());
            let cpus = std::thread::available_parallelism().unwrap().get() as f64;
            let around = (c1 - c0) as f64 / (s1 - s0) as f64 * cpus * 100.0;
            // The command's two readings are a second apart, inside this window.
            assert!(
                (cpu - around).abs() < 25.0,
                "stats says {cpu}%, cpuacct over /proc/stat around it {around:.2}%"
            );
        }
        assert!(cpu < 115.0, "hog CPU % {cpu}");
        best = best.max(cpu);
        if best > 50.0 {
            break;
        }
    }
    assert!(best > 50.0, "hog CPU % {best}");
    assert_eq!(rows.len(), 2, "every running container: {rows:?}");
    let h = &rows["hog"];
    assert_eq!(h.id, hog.id[..12]);
    assert!(rows["idle"].cpu < 20.0, "idle CPU % {}", rows["idle"].cpu);
    // No network of its own but loopback, which docker does not count; nothing read or written
    // to a block device that the machine's blkio accounts for.
    assert_eq!(h.net, "0B / 0B");
    assert!(h.block.contains(" / "), "{}", h.block);
    let full = common::kiln_ok(r, &["stats", "--no-stream", "--no-trunc", "hog"]);
    let line = full.lines().nth(1).unwrap();
    assert!(line.starts_with(&format!("{}   hog   ", hog.id)), "{full}");
    assert_eq!(full.lines().count(), 2, "only the container named: {full}");
}

#[test]
fn memory_usage_and_limit() {
    common::require_root();
    let root = common::temp_root();
    let r = root.path();
    run_fixtures::busybox_image(r, "bb", json!({"Cmd": ["sleep", "300"]}));
    // 40 MB in the container's /dev/shm (a tmpfs: memory charged to its cgroup); "ready" once
    // written.
    let _mem = Container::run(
        r,
        &[
            "--name",
            "mem",
            "bb",
            "sh",
            "-c",
            "head -c 40000000 /dev/zero > /dev/shm/fill && touch /ready; sleep 300",
        ],
    );
    let _limited = Container::run(r, &["--name", "limited", "-m", "64m", "bb"]);
    for _ in 0..100 {
        let o = common::kiln(r, &["exec", "mem", "test", "-e", "/ready"]);
        if o.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let rows = stats(r, &["mem", "limited"]);
    let m = &rows["mem"];
    assert!(
        m.mem_usage >= 38_000_000 && m.mem_usage < 60 << 20,
        "40 MB in /dev/shm: {} bytes",
        m.mem_usage
    );
    // No limit: the host's memory, as docker shows it.
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: u64 = meminfo
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let host = binary_bytes(&m.mem_limit);
    assert!(
        host.abs_diff(kb * 1024) < (kb * 1024) / 500,
        "{} is the host's {kb} kB",
        m.mem_limit
    );
    let l = &rows["limited"];
    assert_eq!(l.mem_limit, "64MiB");
    assert!(l.mem_usage > 0 && l.mem_usage < 8 << 20, "{}", l.mem_usage);
    let pct: f64 = l.mem_pct.strip_suffix('%').unwrap().parse().unwrap();
    let want = l.mem_usage as f64 / (64 << 20) as f64 * 100.0;
    assert!(
        (pct - want).abs() < 0.1,
        "{} of 64MiB is {want:.2}%",
        l.mem_pct
    );
}

#[test]
fn pids_counts_the_containers_processes() {
    common::require_root();
    let root = common::temp_root();
    let r = root.path();
    run_fixtures::busybox_image(r, "bb", json!({"Cmd": ["sleep", "300"]}));
    let _c = Container::run(
        r,
        &[
            "--name",
            "many",
            "bb",
            "sh",
            "-c",
            "sleep 300 & sleep 301 & sleep 302 & wait",
        ],
    );
    let _one = Container::run(r, &["--name", "one", "bb"]);
    let count = |name: &str| {
        let top = common::kiln_ok(r, &["top", name]);
        top.lines().count() as u64 - 1
    };
    // The three sleeps start at once but not before sh forks them.
    let mut rows = stats(r, &["many", "one"]);
    for _ in 0..20 {
        if rows["many"].pids == count("many") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        rows = stats(r, &["many", "one"]);
    }
    assert!(
        rows["many"].pids >= 4,
        "sh and three sleeps: {:?}",
        rows["many"]
    );
    assert_eq!(rows["many"].pids, count("many"), "what kiln top lists");
    assert_eq!(rows["many"].pids, rows["one"].pids + 3);
    // A container that is not running reads as zeros; an unknown one is an error.
    common::kiln_ok(r, &["run", "--name", "done", "bb", "true"]);
    let rows = stats(r, &["done"]);
    assert_eq!(
        (
            rows["done"].pids,
            rows["done"].mem_limit.as_str(),
            rows["done"].cpu
        ),
        (0, "0B", 0.0)
    );
    let o = common::kiln(r, &["stats", "--no-stream", "nosuch"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no such container: nosuch"));
}

/// The seed's low_prio/high_prio example: two CPU hogs on one CPU, with 256 and 1024 shares,
/// get about a fifth and four fifths of it, and `kiln stats` shows so.
#[test]
fn cpu_shares_show_as_one_to_four_in_stats() {
    common::require_root();
    let _cpu0 = CPU0.lock().unwrap_or_else(|e| e.into_inner());
    let root = common::temp_root();
    let r = root.path();
    run_fixtures::busybox_image(r, "bb", json!({"Cmd": ["sh", "-c", "while :; do :; done"]}));
    let args = |name: &'static str, shares: &'static str| {
        vec![
            "--name",
            name,
            "--cpuset-cpus",
            "0",
            "--cpu-shares",
            shares,
            "bb",
        ]
    };
    let _low = Container::run(r, &args("low_prio", "256"));
    let _high = Container::run(r, &args("high_prio", "1024"));
    // Two readings, a second each, both containers in the same one.
    let (mut low, mut high) = (0.0, 0.0);
    for _ in 0..2 {
        let rows = stats(r, &["low_prio", "high_prio"]);
        low += rows["low_prio"].cpu;
        high += rows["high_prio"].cpu;
    }
    eprintln!(
        "CPU %: low_prio {:.2}, high_prio {:.2}",
        low / 2.0,
        high / 2.0
    );
    assert!(low > 0.0, "the low-share container ran a little");
    let ratio = high / low;
    assert!(
        (2.5..=6.5).contains(&ratio),
        "CPU % high/low = {ratio:.2} ({high:.2} / {low:.2} over two readings), expected about 4"
    );
    // Both pinned to CPU 0: together at most about one CPU (100%).
    assert!((low + high) / 2.0 < 115.0, "{low} + {high}");
}

/// Without --no-stream the table is redrawn in place about every second until interrupted.
#[test]
fn streaming_redraws_the_table_every_second() {
    common::require_root();
    let root = common::temp_root();
    let r = root.path();
    run_fixtures::busybox_image(r, "bb", json!({"Cmd": ["sleep", "300"]}));
    let c = Container::run(r, &["--name", "streamed", "bb"]);
    let mut child = common::kiln_command()
        .args(["--root", r.to_str().unwrap(), "stats", "streamed"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(3500));
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let frames: Vec<&str> = text.split("\x1b[H").skip(1).collect();
    assert!(
        (2..=4).contains(&frames.len()),
        "a frame a second in 3.5 s: {text:?}"
    );
    assert!(
        text.starts_with("\x1b[2J"),
        "the first frame clears the screen"
    );
    for f in &frames {
        let lines: Vec<&str> = f.split("\x1b[K\n").collect();
        assert_eq!(cells(lines[0]), cells(HEADER), "{f:?}");
        assert!(lines[1].starts_with(&c.id[..12]), "{f:?}");
        assert!(lines[2].starts_with("\x1b[J"), "the rest cleared: {f:?}");
    }
}
