//! Nothing is left behind: no processes, mounts, cgroups, ports or directories after `rm`, and
//! `kiln run --rm` in a loop leaves nothing at all.

mod common;
mod run_fixtures;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;

use run_fixtures::{cgroups_of, mounts_under, process_alive, Container};
use serde_json::json;

/// Processes whose root directory or command line points into `root`.
fn processes_using(root: &Path) -> Vec<String> {
    let root = root.canonicalize().unwrap();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let in_root = std::fs::read_link(e.path().join("root"))
            .map(|l| l.starts_with(&root))
            .unwrap_or(false);
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let mentions = String::from_utf8_lossy(&cmdline).contains(root.to_str().unwrap());
        if in_root || mentions {
            found.push(format!("{name}: {}", String::from_utf8_lossy(&cmdline)));
        }
    }
    found
}

/// Runs `kiln --root ROOT ARGS...` like `common::kiln_ok`; returns the kiln process's pid.
fn kiln_ok_pid(root: &Path, args: &[&str]) -> u32 {
    let child = common::kiln_command()
        .arg("--root")
        .arg(root)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn kiln");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kiln {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    pid
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn run_rm_in_a_loop_leaves_nothing() {
    common::require_root();
    let root = common::temp_root();
    let r = root.path();
    run_fixtures::busybox_image(
        r,
        "busybox:latest",
        json!({"Cmd": ["sh"], "Volumes": {"/cache": {}}}),
    );
    let mut owners = Vec::new();
    for i in 0..40 {
        let mut args = vec!["run", "--rm"];
        // Every fourth run with limits (a cgroup) and a published port (the proxy).
        if i % 4 == 0 {
            args.extend(["-m", "64m", "--pids-limit", "50", "-p", "127.0.0.1::80"]);
        }
        args.extend(["busybox", "true"]);
        owners.push(kiln_ok_pid(r, &args));
    }
    assert_eq!(common::kiln_ok(r, &["ps", "-a", "-q"]), "");
    assert_eq!(mounts_under(r), Vec::<String>::new());
    assert_eq!(processes_using(r), Vec::<String>::new());
    assert_eq!(entries(&r.join("snapshots/active")), Vec::<String>::new());
    assert_eq!(entries(&r.join("containers")), Vec::<String>::new());
    // The image's VOLUME got an anonymous volume each time, removed with --rm.
    assert_eq!(entries(&r.join("volumes")), Vec::<String>::new());
    assert_eq!(common::kiln_ok(r, &["volume", "ls", "-q"]), "");
    assert_eq!(entries(&r.join("tmp")), Vec::<String>::new());
    // The cgroups of these kiln processes (not of every kiln on the machine: another test's
    // killed kiln leaves its own until someone recovers it).
    let left: Vec<_> = owners
        .iter()
        .flat_map(|pid| cgroups_of(i64::from(*pid)))
        .collect();
    assert_eq!(left, Vec::<std::path::PathBuf>::new());
}

#[test]
fn rm_force_of_a_running_container_leaves_nothing() {
    common::require_root();
    let root = common::temp_root();
    let r = root.path();
    run_fixtures::busybox_image(
        r,
        "bb",
        json!({"Cmd": ["sh", "-c", "sleep 1000 & nc -ll -p 80 -e cat"], "Volumes": {"/data": {}}}),
    );
    let port = run_fixtures::free_tcp_port();
    let spec = format!("127.0.0.1:{port}:80");
    let c = Container::run(
        r,
        &[
            "-m",
            "64m",
            "--cpu-shares",
            "512",
            "--cpuset-cpus",
            "0",
            "--pids-limit",
            "20",
            "-p",
            &spec,
            "-v",
            "named:/named",
            "bb",
        ],
    );
    let insp = c.inspect();
    let (owner, init) = (
        insp["State"]["OwnerPid"].as_i64().unwrap(),
        insp["State"]["Pid"].as_i64().unwrap(),
    );
    assert!(process_alive(owner) && process_alive(init));
    let mounted = run_fixtures::V1_CONTROLLERS
        .iter()
        .filter(|c| {
            std::path::Path::new("/sys/fs/cgroup")
                .join(c)
                .join("cgroup.procs")
                .exists()
        })
        .count();
    assert_eq!(
        cgroups_of(owner).len(),
        mounted.max(1),
        "a cgroup in every v1 controller mounted (limits, accounting, devices, freezer), or \
         the one v2 directory"
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(TcpStream::connect(addr).is_ok(), "the port is published");
    assert!(!mounts_under(r).is_empty());
    common::kiln_ok(r, &["rm", "-f", "-v", &c.id]);
    assert!(!process_alive(owner) && !process_alive(init));
    assert_eq!(cgroups_of(owner), Vec::<std::path::PathBuf>::new());
    assert_eq!(mounts_under(r), Vec::<String>::new());
    assert_eq!(processes_using(r), Vec::<String>::new());
    assert!(TcpStream::connect(addr).is_err(), "the port is closed");
    assert!(TcpListener::bind(addr).is_ok());
    assert_eq!(entries(&r.join("containers")), Vec::<String>::new());
    // -v removed the anonymous volume; the named one stays.
    assert_eq!(common::kiln_ok(r, &["volume", "ls", "-q"]), "named\n");
}
