//! Start-to-exit of `true` in a busybox snapshot (`sandbox::run`, network none, no cgroup),
//! median of N runs; also the full cycle with the snapshot's mount and unmount, the same exec
//! with and without Docker's default seccomp filter (interleaved), and the filter's compile time.
//!
//! Run as root: `cargo bench --bench exec` (N from `KILN_BENCH_RUNS`, default 200).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use kiln::sandbox::{self, ExecSpec};
use kiln::snapshot::{PrepareOptions, Snapshotter};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    common::require_root();
    let runs: usize = std::env::var("KILN_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let root = common::temp_root();
    let snapshotter = Snapshotter::new(root.path()).unwrap();
    let lower = common::busybox_rootfs();
    let opts = PrepareOptions { volatile: true };

    let snap = snapshotter
        .prepare(std::slice::from_ref(&lower), &opts)
        .unwrap();
    let spec = ExecSpec::new(snap.merged(), ["/bin/true"]);
    for _ in 0..10 {
        sandbox::run(&spec).unwrap();
    }
    let mut exec = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let exit = sandbox::run(&spec).unwrap();
        exec.push(t.elapsed());
        assert_eq!(exit.code, 0);
    }
    // The seccomp filter's cost: runs alternate so machine noise hits both alike.
    let mut unconfined_spec = spec.clone();
    unconfined_spec.seccomp = sandbox::seccomp::Seccomp::Unconfined;
    let (mut filtered, mut unfiltered) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        for (s, v) in [(&spec, &mut filtered), (&unconfined_spec, &mut unfiltered)] {
            let t = Instant::now();
            let exit = sandbox::run(s).unwrap();
            v.push(t.elapsed());
            assert_eq!(exit.code, 0);
        }
    }
    let target = sandbox::seccomp::native_target().unwrap();
    let profile = sandbox::seccomp::default_profile();
    let mut compile = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let f = sandbox::seccomp::compile(&profile, &target).unwrap();
        compile.push(t.elapsed());
        assert!(!f.is_empty());
    }
    snap.release().unwrap();

    let mut cycle = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let snap = snapshotter
            .prepare(std::slice::from_ref(&lower), &opts)
            .unwrap();
        let exit = sandbox::run(&ExecSpec::new(snap.merged(), ["/bin/true"])).unwrap();
        snap.release().unwrap();
        cycle.push(t.elapsed());
        assert_eq!(exit.code, 0);
    }
    let (lo, hi) = (
        exec.iter().min().copied().unwrap_or_default(),
        exec.iter().max().copied().unwrap_or_default(),
    );
    println!(
        "exec true in a busybox snapshot: median {} (min {}, max {}, {runs} runs)",
        ms(median(exec)),
        ms(lo),
        ms(hi)
    );
    println!(
        "prepare snapshot + exec true + release: median {} ({runs} runs)",
        ms(median(cycle))
    );
    println!(
        "exec true, default seccomp filter: median {}; seccomp=unconfined: median {} ({runs} \
         runs each, interleaved)",
        ms(median(filtered)),
        ms(median(unfiltered))
    );
    println!(
        "compile Docker's default profile to BPF (once per kiln process): median {:.1} µs",
        median(compile).as_secs_f64() * 1e6
    );
}
