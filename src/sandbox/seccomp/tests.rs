//! The profile, the JSON parser and the compiled program, checked by running the BPF program in
//! a small classic-BPF interpreter.

use super::*;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;

/// struct seccomp_data: nr, arch, instruction_pointer, args[6].
fn seccomp_data(nr: i64, arch: u32, args: [u64; 6]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(nr as i32).to_ne_bytes());
    d.extend_from_slice(&arch.to_ne_bytes());
    d.extend_from_slice(&0u64.to_ne_bytes());
    for a in args {
        d.extend_from_slice(&a.to_ne_bytes());
    }
    d
}

/// Runs one classic BPF program (the subset seccomp filters use).
fn run_bpf(prog: &[seccompiler::sock_filter], data: &[u8]) -> u32 {
    run_bpf_counted(prog, data).0
}

fn count_steps(prog: &[seccompiler::sock_filter], data: &[u8]) -> usize {
    run_bpf_counted(prog, data).1
}

/// The return value and how many instructions ran.
fn run_bpf_counted(prog: &[seccompiler::sock_filter], data: &[u8]) -> (u32, usize) {
    let (mut a, mut pc, mut steps) = (0u32, 0usize, 0usize);
    loop {
        steps += 1;
        let i = &prog[pc];
        pc += 1;
        let class = i.code & 0x07;
        match class {
            0x00 => {
                // BPF_LD | BPF_W | BPF_ABS
                assert_eq!(i.code, 0x20, "unsupported load {:#x}", i.code);
                let off = i.k as usize;
                a = u32::from_ne_bytes(data[off..off + 4].try_into().unwrap());
            }
            0x04 => {
                // BPF_ALU | BPF_AND | BPF_K
                assert_eq!(i.code, 0x54, "unsupported alu {:#x}", i.code);
                a &= i.k;
            }
            0x05 => {
                let op = i.code & 0xf0;
                if op == 0x00 {
                    pc += i.k as usize; // BPF_JA
                    continue;
                }
                assert_eq!(i.code & 0x08, 0, "only BPF_K jumps");
                let taken = match op {
                    0x10 => a == i.k,
                    0x20 => a > i.k,
                    0x30 => a >= i.k,
                    0x40 => a & i.k != 0,
                    _ => panic!("unsupported jump {:#x}", i.code),
                };
                pc += if taken { i.jt } else { i.jf } as usize;
            }
            0x06 => return (i.k, steps),
            _ => panic!("unsupported instruction {:#x}", i.code),
        }
    }
}

fn evaluate(f: &Filter, arch: u32, nr: i64, args: [u64; 6]) -> u32 {
    run_bpf(f.program(), &seccomp_data(nr, arch, args))
}

fn target(arch: Arch, caps: u64) -> Target {
    Target {
        arch,
        caps,
        kernel: (6, 1),
    }
}

fn docker_default(arch: Arch) -> Filter {
    compile(
        &default_profile(),
        &target(arch, crate::sandbox::caps::default_mask()),
    )
    .unwrap()
}

fn nr(arch: Arch, name: &str) -> i64 {
    arch.syscall_number(name)
        .unwrap_or_else(|| panic!("no {name}"))
}

fn x86(f: &Filter, name: &str, args: [u64; 6]) -> u32 {
    evaluate(f, AUDIT_ARCH_X86_64, nr(Arch::X86_64, name), args)
}

const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;
const ENOSYS: u32 = RET_ERRNO | libc::ENOSYS as u32;
const NONE: [u64; 6] = [0; 6];

#[test]
fn syscall_numbers_are_the_architectures_own() {
    assert_eq!(Arch::X86_64.syscall_number("read"), Some(0));
    assert_eq!(Arch::X86_64.syscall_number("keyctl"), Some(250));
    assert_eq!(Arch::X86_64.syscall_number("io_uring_setup"), Some(425));
    assert_eq!(Arch::Aarch64.syscall_number("read"), Some(63));
    assert_eq!(Arch::Aarch64.syscall_number("keyctl"), Some(219));
    // Calls an architecture lacks are skipped, as Docker does.
    assert_eq!(Arch::Aarch64.syscall_number("open"), None);
    assert_eq!(Arch::X86_64.syscall_number("socketcall"), None);
}

#[test]
fn docker_default_refuses_what_docker_refuses() {
    let f = docker_default(Arch::X86_64);
    for name in [
        "keyctl",
        "add_key",
        "request_key",
        "io_uring_setup",
        "io_uring_enter",
        "unshare",
        "setns",
        "mount",
        "umount2",
        "pivot_root",
        "kexec_load",
        "init_module",
        "reboot",
        "bpf",
        "perf_event_open",
        "open_by_handle_at",
        "userfaultfd",
        "swapon",
        "sethostname",
        "clock_settime",
        "fsopen",
        "move_mount",
    ] {
        assert_eq!(x86(&f, name, NONE), EPERM, "{name}");
    }
}

#[test]
fn docker_default_allows_an_ordinary_workload() {
    let f = docker_default(Arch::X86_64);
    for name in [
        "read",
        "write",
        "openat",
        "execve",
        "mmap",
        "mkdir",
        "fork",
        "vfork",
        "wait4",
        "capset",
        "setuid",
        "setgroups",
        "prctl",
        "seccomp",
        "chroot",
        "ptrace",
        "arch_prctl",
        "close_range",
        "rt_sigreturn",
        "exit_group",
    ] {
        assert_eq!(x86(&f, name, NONE), RET_ALLOW, "{name}");
    }
}

#[test]
fn clone_with_namespace_flags_is_refused_and_clone3_says_enosys() {
    let f = docker_default(Arch::X86_64);
    // A thread or fork: allowed.
    let thread_flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD) as u64;
    assert_eq!(x86(&f, "clone", [thread_flags, 0, 0, 0, 0, 0]), RET_ALLOW);
    assert_eq!(
        x86(&f, "clone", [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]),
        RET_ALLOW
    );
    for ns in [
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWNS,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWCGROUP,
    ] {
        let flags = ns as u64 | libc::SIGCHLD as u64;
        assert_eq!(x86(&f, "clone", [flags, 0, 0, 0, 0, 0]), EPERM, "{ns:#x}");
    }
    assert_eq!(x86(&f, "clone3", NONE), ENOSYS);
}

#[test]
fn personality_and_socket_arguments_are_checked() {
    let f = docker_default(Arch::X86_64);
    for ok in [0u64, 8, 0x20000, 0x20008, 0xffff_ffff] {
        assert_eq!(x86(&f, "personality", [ok, 0, 0, 0, 0, 0]), RET_ALLOW);
    }
    // READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE.
    for bad in [0x0400_0000u64, 0x0004_0000] {
        assert_eq!(x86(&f, "personality", [bad, 0, 0, 0, 0, 0]), EPERM);
    }
    for ok in [
        libc::AF_UNIX,
        libc::AF_INET,
        libc::AF_INET6,
        libc::AF_NETLINK,
        39,
        41,
    ] {
        assert_eq!(x86(&f, "socket", [ok as u64, 0, 0, 0, 0, 0]), RET_ALLOW);
    }
    for bad in [libc::AF_ALG, libc::AF_VSOCK] {
        assert_eq!(x86(&f, "socket", [bad as u64, 0, 0, 0, 0, 0]), EPERM);
    }
}

#[test]
fn capability_groups_apply_only_with_their_capability() {
    let admin = crate::sandbox::caps::default_mask() | 1 << 21;
    let f = compile(&default_profile(), &target(Arch::X86_64, admin)).unwrap();
    assert_eq!(x86(&f, "unshare", NONE), RET_ALLOW);
    assert_eq!(x86(&f, "mount", NONE), RET_ALLOW);
    assert_eq!(x86(&f, "clone3", NONE), RET_ALLOW);
    let newuser = libc::CLONE_NEWUSER as u64;
    assert_eq!(x86(&f, "clone", [newuser, 0, 0, 0, 0, 0]), RET_ALLOW);
    // Still refused: no CAP_SYS_MODULE.
    assert_eq!(x86(&f, "init_module", NONE), EPERM);
    assert_eq!(x86(&f, "keyctl", NONE), EPERM);

    // Without CAP_SYS_CHROOT, chroot goes too.
    let no_chroot = crate::sandbox::caps::default_mask() & !(1 << 18);
    let f = compile(&default_profile(), &target(Arch::X86_64, no_chroot)).unwrap();
    assert_eq!(x86(&f, "chroot", NONE), EPERM);
}

#[test]
fn ptrace_needs_kernel_4_8() {
    let mut t = target(Arch::X86_64, crate::sandbox::caps::default_mask());
    t.kernel = (4, 4);
    let f = compile(&default_profile(), &t).unwrap();
    assert_eq!(x86(&f, "ptrace", NONE), EPERM);
    t.kernel = (4, 8);
    let f = compile(&default_profile(), &t).unwrap();
    assert_eq!(x86(&f, "ptrace", NONE), RET_ALLOW);
}

#[test]
fn aarch64_gets_its_own_numbers_and_arch_rules() {
    let f = docker_default(Arch::Aarch64);
    let a = |name: &str, args| evaluate(&f, AUDIT_ARCH_AARCH64, nr(Arch::Aarch64, name), args);
    assert_eq!(a("read", NONE), RET_ALLOW);
    assert_eq!(a("openat", NONE), RET_ALLOW);
    assert_eq!(a("keyctl", NONE), EPERM);
    assert_eq!(a("io_uring_setup", NONE), EPERM);
    assert_eq!(a("unshare", NONE), EPERM);
    assert_eq!(a("clone3", NONE), ENOSYS);
    let newuser = libc::CLONE_NEWUSER as u64;
    assert_eq!(a("clone", [newuser, 0, 0, 0, 0, 0]), EPERM);
    assert_eq!(a("clone", [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]), RET_ALLOW);
    // arch_prctl is x86's only; aarch64 has no such number, so nothing to allow.
    assert_eq!(Arch::Aarch64.syscall_number("arch_prctl"), None);
    // An x86_64 call reaching an aarch64 filter is killed.
    assert_eq!(evaluate(&f, AUDIT_ARCH_X86_64, 0, NONE), RET_KILL_PROCESS);
}

#[test]
fn a_foreign_architecture_call_is_killed() {
    let f = docker_default(Arch::X86_64);
    assert_eq!(evaluate(&f, AUDIT_ARCH_I386, 3, NONE), RET_KILL_PROCESS);
}

#[test]
fn the_default_filter_is_within_the_kernel_limit_and_a_search() {
    let f = docker_default(Arch::X86_64);
    assert!(f.len() < 4096, "{}", f.len());
    // Every number, allowed or not, is decided within a few dozen instructions (a linear
    // chain takes hundreds).
    for nr in 0..470 {
        let steps = count_steps(f.program(), &seccomp_data(nr, AUDIT_ARCH_X86_64, NONE));
        assert!(steps <= 40, "syscall {nr} takes {steps} instructions");
    }
}

#[test]
fn json_profile_that_denies_mkdir() {
    let p = parse_docker_json(
        r#"{
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"},
                {"name": "chmod", "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                {"names": ["getpid"], "action": "SCMP_ACT_LOG"}
            ]
        }"#,
    )
    .unwrap();
    let f = compile(
        &p,
        &target(Arch::X86_64, crate::sandbox::caps::default_mask()),
    )
    .unwrap();
    assert_eq!(x86(&f, "mkdir", NONE), EPERM);
    assert_eq!(x86(&f, "mkdirat", NONE), EPERM);
    assert_eq!(x86(&f, "chmod", NONE), RET_ERRNO | 13);
    assert_eq!(x86(&f, "getpid", NONE), RET_LOG);
    assert_eq!(x86(&f, "read", NONE), RET_ALLOW);
    assert_eq!(x86(&f, "keyctl", NONE), RET_ALLOW);
}

#[test]
fn json_profile_with_arguments_includes_and_excludes() {
    let p = parse_docker_json(
        r#"{
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 38,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "syscalls": [
                {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "comment": "io"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                          {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288, "valueTwo": 0,
                           "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["mmap"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 100, "op": "SCMP_CMP_GE"},
                          {"index": 2, "value": 4, "op": "SCMP_CMP_NE"}]},
                {"names": ["unshare"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["chroot"], "action": "SCMP_ACT_ALLOW",
                 "excludes": {"arches": ["amd64"]}},
                {"names": ["getpid"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"arches": ["amd64"], "minKernel": "5.0"}}
            ]
        }"#,
    )
    .unwrap();
    let f = compile(
        &p,
        &target(Arch::X86_64, crate::sandbox::caps::default_mask()),
    )
    .unwrap();
    let nosys = RET_ERRNO | 38;
    assert_eq!(x86(&f, "read", NONE), RET_ALLOW);
    assert_eq!(x86(&f, "openat", NONE), nosys);
    // Two conditions on one argument: either may hold (runc's rule).
    assert_eq!(x86(&f, "personality", [0, 0, 0, 0, 0, 0]), RET_ALLOW);
    assert_eq!(x86(&f, "personality", [8, 0, 0, 0, 0, 0]), RET_ALLOW);
    assert_eq!(x86(&f, "personality", [9, 0, 0, 0, 0, 0]), nosys);
    // Conditions on different arguments: all must hold.
    assert_eq!(x86(&f, "mmap", [200, 0, 3, 0, 0, 0]), RET_ALLOW);
    assert_eq!(x86(&f, "mmap", [200, 0, 4, 0, 0, 0]), nosys);
    assert_eq!(x86(&f, "mmap", [50, 0, 3, 0, 0, 0]), nosys);
    // 64-bit comparisons.
    assert_eq!(x86(&f, "mmap", [1 << 40, 0, 3, 0, 0, 0]), RET_ALLOW);
    assert_eq!(x86(&f, "clone", [0x11, 0, 0, 0, 0, 0]), RET_ALLOW);
    assert_eq!(x86(&f, "clone", [0x1000_0011, 0, 0, 0, 0, 0]), nosys);
    assert_eq!(x86(&f, "unshare", NONE), nosys);
    assert_eq!(x86(&f, "chroot", NONE), nosys);
    assert_eq!(x86(&f, "getpid", NONE), RET_ALLOW);
    let mut old = target(Arch::X86_64, crate::sandbox::caps::default_mask());
    old.kernel = (4, 19);
    let f = compile(&p, &old).unwrap();
    assert_eq!(x86(&f, "getpid", NONE), nosys);
}

#[test]
fn bad_json_profiles_say_what_is_wrong() {
    let cases = [
        ("{", "EOF"),
        (r#"{"syscalls": []}"#, "defaultAction is missing"),
        (
            r#"{"defaultAction": "SCMP_ACT_DENY"}"#,
            "defaultAction: unknown action \"SCMP_ACT_DENY\"",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "sycalls": []}"#,
            "unknown field `sycalls`",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"]}]}"#,
            "missing field `action`",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [], "action": "SCMP_ACT_ERRNO"}]}"#,
            "syscalls[0]: no system call names",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"name": "a", "names": ["b"], "action": "SCMP_ACT_ERRNO"}]}"#,
            "syscalls[0]: both 'name' and 'names'",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ALLOW"}, {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
            "syscalls[1]: args[0].index 6 is out of range",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQUAL"}]}]}"#,
            "syscalls[0]: args[0]: unknown comparison \"SCMP_CMP_EQUAL\"",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}]}"#,
            "errnoRet is only valid",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "includes": {"caps": ["CAP_SYSADMIN"]}}]}"#,
            "syscalls[0]: includes.caps: unknown capability \"CAP_SYSADMIN\"",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "excludes": {"minKernel": "five"}}]}"#,
            "excludes.minKernel: \"five\" is not a kernel version",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["x86_64"]}"#,
            "unknown architecture \"x86_64\"",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#,
            "SCMP_ACT_NOTIFY needs a seccomp agent",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["Mkdir!"], "action": "SCMP_ACT_ERRNO"}]}"#,
            "\"Mkdir!\" is not a system call name",
        ),
    ];
    for (json, want) in cases {
        let err = parse_docker_json(json).unwrap_err();
        assert!(err.contains(want), "{json}: {err:?} lacks {want:?}");
    }
}

#[test]
fn dockers_own_profile_format_parses() {
    // The shape of moby's default.json, with archMap and includes/excludes.
    let p = parse_docker_json(
        r#"{
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "archMap": [
                {"architecture": "SCMP_ARCH_X86_64",
                 "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                {"architecture": "SCMP_ARCH_RISCV64", "subArchitectures": null}
            ],
            "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
                 "excludes": {"caps": ["CAP_SYS_ADMIN"]}}
            ]
        }"#,
    )
    .unwrap();
    assert_eq!(p.default_action, Action::Errno(1));
    assert_eq!(p.rules[1].action, Action::Errno(38));
    assert_eq!(p.rules[1].excludes.caps, vec!["CAP_SYS_ADMIN".to_string()]);
}

#[test]
fn unconfined_has_no_filter_and_default_is_cached() {
    assert_eq!(Seccomp::Unconfined.filter().unwrap(), None);
    let a = Seccomp::Default.filter().unwrap().unwrap();
    let b = Seccomp::Default.filter().unwrap().unwrap();
    assert!(Arc::ptr_eq(&a, &b));
}
