//! The sandbox on a busybox overlay snapshot, as root: namespaces, filesystem, privileges.

mod common;

use std::path::PathBuf;

use kiln::sandbox::{self, ExecSpec, Network};
use kiln::snapshot::{PrepareOptions, Snapshotter};

struct Fixture {
    _root: tempfile::TempDir,
    snap: kiln::snapshot::ActiveSnapshot,
}

fn busybox_snapshot() -> Fixture {
    common::require_root();
    let root = common::temp_root();
    let snapshotter = Snapshotter::new(root.path()).unwrap();
    let snap = snapshotter
        .prepare(
            &[common::busybox_rootfs()],
            &PrepareOptions { volatile: true },
        )
        .unwrap();
    Fixture { _root: root, snap }
}

fn sh(fx: &Fixture, script: &str) -> ExecSpec {
    ExecSpec::new(fx.snap.merged(), ["/bin/sh", "-c", script])
}

fn output(spec: &ExecSpec) -> (i32, String, String) {
    let (exit, out, err) = sandbox::output(spec).unwrap();
    (
        exit.code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

#[test]
fn sees_its_own_pid_1_hostname_and_only_loopback() {
    let fx = busybox_snapshot();
    let mut spec = sh(&fx, "echo pid=$$; hostname; cat /etc/hostname; ls /sys/class/net; ip link show lo | head -1; ps -o pid,comm | tail -n +2");
    spec.hostname = "kiln-test-box".into();
    let (code, out, err) = output(&spec);
    assert_eq!(code, 0, "stderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0], "pid=2",
        "the command is the init's only child: {out}"
    );
    assert_eq!(lines[1], "kiln-test-box");
    assert_eq!(lines[2], "kiln-test-box");
    assert_eq!(lines[3], "lo", "only loopback: {out}");
    assert!(lines[4].contains("UP"), "loopback is up: {out}");
    // The process table holds only the init, the shell and ps.
    let pids: Vec<&str> = lines[5..]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert!(pids.contains(&"1"), "{out}");
    assert!(lines.len() <= 5 + 4, "no host processes visible: {out}");
    assert!(out.contains("1 kiln-init"), "{out}");
}

#[test]
fn host_network_sees_host_interfaces_and_resolv_conf() {
    let fx = busybox_snapshot();
    let mut spec = sh(
        &fx,
        "ls /sys/class/net | sort | tr '\\n' ' '; echo; cat /etc/resolv.conf",
    );
    spec.network = Network::Host;
    let (code, out, err) = output(&spec);
    assert_eq!(code, 0, "stderr: {err}");
    let mut host: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    host.sort();
    assert_eq!(out.lines().next().unwrap().trim(), host.join(" "));
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    assert!(
        out.contains(resolv.trim()),
        "host resolv.conf bound in: {out}"
    );
}

#[test]
fn sees_the_image_files_not_the_hosts() {
    let fx = busybox_snapshot();
    let marker = format!("/kiln-host-marker-{}", std::process::id());
    std::fs::write(&marker, "host").unwrap();
    let (code, out, _) = output(&sh(
        &fx,
        &format!("test -e {marker} && echo LEAK; cat /etc/passwd | head -1; ls /"),
    ));
    std::fs::remove_file(&marker).unwrap();
    assert_eq!(code, 0);
    assert!(!out.contains("LEAK"));
    assert!(out.starts_with("root:x:0:0:root:/root:/bin/sh"));
    assert!(!out.contains("usr\n"), "busybox image has no /usr: {out}");
}

#[test]
fn cannot_mount_or_load_modules_and_proc_is_masked() {
    let fx = busybox_snapshot();
    let (code, out, err) = output(&sh(
        &fx,
        "mount -t tmpfs none /mnt 2>/dev/null && echo MOUNTED; \
         mkdir -p /mnt; mount -t tmpfs none /mnt 2>/dev/null && echo MOUNTED2; \
         echo x > /tmp/m.ko; insmod /tmp/m.ko 2>/dev/null && echo LOADED; \
         echo kcore=$(cat /proc/kcore | wc -c); \
         echo 1 > /proc/sys/kernel/hostname 2>/dev/null && echo SYSWRITE; \
         grep -c . /proc/keys; \
         grep CapEff /proc/self/status",
    ));
    assert_eq!(code, 0, "stderr: {err}");
    assert!(!out.contains("MOUNTED"), "{out}");
    assert!(!out.contains("LOADED"), "{out}");
    assert!(!out.contains("SYSWRITE"), "/proc/sys is read-only: {out}");
    assert!(
        out.contains("kcore=0"),
        "/proc/kcore masked with /dev/null: {out}"
    );
    assert!(
        out.contains("CapEff:\t00000000a80425fb"),
        "docker's default caps: {out}"
    );
}

#[test]
fn device_nodes_are_the_containers_own_so_chmod_and_chown_leave_the_hosts_alone() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let fx = busybox_snapshot();
    let nodes = ["/dev/null", "/dev/zero", "/dev/full"];
    let before: Vec<(u32, u32, u32)> = nodes
        .iter()
        .map(|n| {
            let m = std::fs::metadata(n).unwrap();
            (m.mode(), m.uid(), m.gid())
        })
        .collect();
    let (code, out, err) = output(&sh(
        &fx,
        "chmod 600 /dev/null /dev/zero && chown 5:5 /dev/full && stat -c '%n %a %u:%g' /dev/null /dev/full; \
         head -c 3 /dev/zero | wc -c; echo x > /dev/null && echo null-ok",
    ));
    // Put the host back first if the container changed it, so a failure here breaks nothing else.
    let after: Vec<(u32, u32, u32)> = nodes
        .iter()
        .map(|n| {
            let m = std::fs::metadata(n).unwrap();
            (m.mode(), m.uid(), m.gid())
        })
        .collect();
    for (n, (mode, uid, gid)) in nodes.iter().zip(&before) {
        let _ = std::fs::set_permissions(n, std::fs::Permissions::from_mode(*mode));
        let _ = std::os::unix::fs::chown(n, Some(*uid), Some(*gid));
    }
    assert_eq!(code, 0, "stderr: {err}");
    assert!(out.contains("/dev/null 600 0:0"), "{out}");
    assert!(out.contains("/dev/full 666 5:5"), "{out}");
    assert!(out.contains("null-ok"), "{out}");
    assert_eq!(out.lines().nth(2), Some("3"), "{out}");
    assert_eq!(
        before, after,
        "the container changed the host's device nodes"
    );
}

#[test]
fn writes_land_in_the_upperdir() {
    let fx = busybox_snapshot();
    let (code, _, err) = output(&sh(&fx, "echo hello > /root/new.txt && mkdir -p /work/a"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(fx.snap.upper().join("root/new.txt")).unwrap(),
        "hello\n"
    );
    assert!(fx.snap.upper().join("work/a").is_dir());
    // Mount points the sandbox created (/etc/hosts etc. exist?) do not linger in the upperdir
    // beyond what the image lacked and the command made.
    assert!(!fx.snap.upper().join("proc").exists());
    assert!(!common::busybox_rootfs().join("root/new.txt").exists());
}

#[test]
fn exit_codes_signals_cwd_env_and_user() {
    let fx = busybox_snapshot();
    assert_eq!(sandbox::run(&sh(&fx, "exit 42")).unwrap().code, 42);
    let exit = sandbox::run(&sh(&fx, "kill -TERM $$")).unwrap();
    assert_eq!((exit.code, exit.signal), (143, Some(15)));

    let mut spec = sh(&fx, "pwd; echo $FOO; echo $HOME; id -u; id -g; echo $PATH");
    spec.cwd = PathBuf::from("/does/not/exist");
    spec.env = vec!["FOO=bar".into()];
    spec.user = "nobody".into();
    let (code, out, err) = output(&spec);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "/does/not/exist");
    assert_eq!(lines[1], "bar");
    assert_eq!(lines[2], "/home");
    assert_eq!(lines[3], "65534");
    assert_eq!(lines[4], "65534");
    assert!(lines[5].contains("/bin"));

    let mut spec = sh(&fx, "id -u; id -g; grep CapEff /proc/self/status");
    spec.user = "1234:5678".into();
    let (_, out, _) = output(&spec);
    assert_eq!(out.lines().take(2).collect::<Vec<_>>(), ["1234", "5678"]);
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");

    let mut spec = sh(&fx, "true");
    spec.user = "ghost".into();
    let err = sandbox::run(&spec).unwrap_err().to_string();
    assert!(err.contains("ghost"), "{err}");

    let spec = ExecSpec::new(fx.snap.merged(), ["no-such-command"]);
    let err = sandbox::run(&spec).unwrap_err().to_string();
    assert!(err.contains("no-such-command"), "{err}");
}

#[test]
fn init_reaps_orphans_and_forwards_signals() {
    let fx = busybox_snapshot();
    // The orphaned sleep is re-parented to the init, which must reap it.
    let (code, out, _) = output(&sh(
        &fx,
        "(sleep 0.1 &); sleep 0.5; ps -o stat,comm | grep -c '^Z' || true",
    ));
    assert_eq!((code, out.trim()), (0, "0"), "no zombies");

    let mut spec = sh(
        &fx,
        "trap 'echo got TERM; exit 3' TERM; echo ready; while :; do sleep 0.05; done",
    );
    spec.stdout = sandbox::Stdio::Piped;
    let mut running = sandbox::spawn(&spec).unwrap();
    let mut reader = std::io::BufReader::new(running.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    assert_eq!(line, "ready\n");
    running.kill(libc::SIGTERM).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    let exit = running.wait().unwrap();
    assert_eq!((exit.code, rest.as_str()), (3, "got TERM\n"));

    // SIGKILL to the init takes the whole container down.
    let mut running = sandbox::spawn(&sh(&fx, "sleep 100 & sleep 100")).unwrap();
    assert!(std::path::Path::new(&running.netns_path()).exists());
    running.kill(libc::SIGKILL).unwrap();
    let exit = running.wait().unwrap();
    assert_eq!((exit.code, exit.signal), (137, Some(9)));
}

#[test]
fn extra_mounts_bind_ro_rw_and_tmpfs_and_mount_points_are_removed() {
    let fx = busybox_snapshot();
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("in.txt"), "from host\n").unwrap();
    let rw = tempfile::tempdir().unwrap();
    let mut spec = sh(
        &fx,
        "cat /src/in.txt; touch /src/x 2>/dev/null && echo WROTE_RO; \
         echo out > /out/result; grep ' /scratch ' /proc/mounts | cut -d' ' -f3; \
         echo tmp > /scratch/t",
    );
    spec.mounts = vec![
        sandbox::Mount {
            target: "/src".into(),
            kind: sandbox::MountKind::Bind {
                source: host.path().to_path_buf(),
                readonly: true,
            },
        },
        sandbox::Mount {
            target: "/out".into(),
            kind: sandbox::MountKind::Bind {
                source: rw.path().to_path_buf(),
                readonly: false,
            },
        },
        sandbox::Mount {
            target: "/scratch/deep".into(),
            kind: sandbox::MountKind::Tmpfs {
                size_bytes: Some(1 << 20),
                mode: 0o755,
            },
        },
        sandbox::Mount {
            target: "/scratch".into(),
            kind: sandbox::MountKind::Tmpfs {
                size_bytes: None,
                mode: 0o1777,
            },
        },
    ];
    let (code, out, err) = output(&spec);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("from host\n"), "{out}");
    assert!(!out.contains("WROTE_RO"), "{out}");
    assert!(out.contains("tmpfs"), "{out}");
    assert_eq!(
        std::fs::read_to_string(rw.path().join("result")).unwrap(),
        "out\n"
    );
    // The mount points the sandbox made in the root filesystem are gone again.
    for p in ["src", "out", "scratch", "etc/hosts", "etc/hostname"] {
        assert!(
            !fx.snap.upper().join(p).exists(),
            "{p} left in the upperdir"
        );
    }
    assert!(
        fx.snap.changes().unwrap().is_empty(),
        "{:?}",
        fx.snap.changes()
    );
}

#[test]
fn tty_makes_the_pty_the_controlling_terminal() {
    let fx = busybox_snapshot();
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = std::sync::Arc::new(pty.slave);
    let mut spec = sh(
        &fx,
        "[ -t 0 ] && [ -t 1 ] && echo is-a-tty; \
         [ \"$(cut -d' ' -f6 /proc/$$/stat)\" = \"$$\" ] && echo session-leader",
    );
    spec.tty = true;
    spec.stdin = sandbox::Stdio::Fd(slave.clone());
    spec.stdout = sandbox::Stdio::Fd(slave.clone());
    spec.stderr = sandbox::Stdio::Fd(slave.clone());
    let exit = sandbox::run(&spec).unwrap();
    // Every copy of the slave must be closed for the master to report the end.
    drop(spec);
    drop(slave);
    let mut master = std::fs::File::from(pty.master);
    let mut out = Vec::new();
    // Reading a pty master whose slave is closed ends with EIO once drained.
    let mut buf = [0u8; 256];
    while let Ok(n) = std::io::Read::read(&mut master, &mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let out = String::from_utf8_lossy(&out);
    assert_eq!(exit.code, 0, "{out}");
    assert!(out.contains("is-a-tty"), "{out}");
    assert!(out.contains("session-leader"), "{out}");
}
