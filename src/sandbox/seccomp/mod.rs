//! seccomp: the system call filter of a sandboxed process. By default Docker's profile
//! (`default_profile`), resolved for Docker's 14 default capabilities on the machine's
//! architecture and kernel; `Seccomp::Unconfined` for none; `Seccomp::Custom` for a profile in
//! Docker's JSON format (`--security-opt seccomp=PROFILE.json`).
//!
//! A profile is compiled to classic BPF with `seccompiler` before the sandbox forks (the default
//! one once per kiln process), and the child only hands the ready programs to the kernel. It
//! installs them while it is still root with every capability (after cutting the bounding set,
//! before the user switch), as runc does when no_new_privs is off: without no_new_privs,
//! installing a filter needs CAP_SYS_ADMIN.
//!
//! The program: an architecture check (another architecture's call kills the process, as in
//! seccompiler's filters), then a binary search over the system call numbers that have rules,
//! then each call's rules in profile order (the first that matches gives its action), else the
//! default action. seccompiler builds each rule's argument checks (64-bit comparisons in 32-bit
//! BPF); kiln lays out the search itself because seccompiler's own filters are a linear chain,
//! which the kernel walks for every system call number when a filter is installed (to cache
//! the calls that are always allowed): 2.9 ms per install for Docker's profile as a chain,
//! 0.55 ms as a search (fork + install + exit, against fork + exit). One program, one
//! `Seccomp_filters` entry, as Docker's.
//!
//! Limits: the filters check the architecture of each call; a 32-bit (i386 or arm) call in a
//! 64-bit container kills the process, where Docker's profile lists those sub-architectures
//! too.

mod default_profile;
pub mod profile;

use std::io;
use std::sync::{Arc, OnceLock};

use seccompiler::{SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

pub use profile::{parse_docker_json, Action, Arch, ArgCond, Op, Profile, Rule, Target};

/// The seccomp choice of one execution (`ExecSpec::seccomp`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Seccomp {
    /// Docker's default profile.
    #[default]
    Default,
    /// No filter (`--security-opt seccomp=unconfined`).
    Unconfined,
    /// A profile of the user's.
    Custom(Arc<Profile>),
}

/// Docker's default profile.
pub fn default_profile() -> Profile {
    default_profile::profile()
}

/// A profile compiled for one target: the BPF program to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    program: seccompiler::BpfProgram,
}

impl Filter {
    /// The program's instruction count.
    pub fn len(&self) -> usize {
        self.program.len()
    }

    /// Whether the program is empty (never: it has at least the architecture check).
    pub fn is_empty(&self) -> bool {
        self.program.is_empty()
    }

    /// The instructions (for tests that run them).
    pub fn program(&self) -> &[seccompiler::sock_filter] {
        &self.program
    }

    /// Installs the program on the calling thread. Needs CAP_SYS_ADMIN or no_new_privs. Makes
    /// no allocation (safe in a forked child).
    pub fn install(&self) -> io::Result<()> {
        let prog = libc::sock_fprog {
            len: self.program.len() as libc::c_ushort,
            // seccompiler's sock_filter is repr(C) with linux/filter.h's layout, as libc's.
            filter: self.program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER) with a pointer to a sock_fprog that points
        // at the program (same layout as the kernel's struct sock_filter), which outlives the
        // call; the kernel copies it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Seccomp {
    /// The filter to install for this choice on this machine (`None` = unconfined). The default
    /// profile is compiled once per process.
    pub fn filter(&self) -> anyhow::Result<Option<Arc<Filter>>> {
        match self {
            Seccomp::Unconfined => Ok(None),
            Seccomp::Default => {
                static DEFAULT: OnceLock<Result<Arc<Filter>, String>> = OnceLock::new();
                let compiled = DEFAULT.get_or_init(|| {
                    let target = native_target()?;
                    compile(&default_profile(), &target).map(Arc::new)
                });
                match compiled {
                    Ok(f) => Ok(Some(f.clone())),
                    Err(e) => anyhow::bail!("the default seccomp profile: {e}"),
                }
            }
            Seccomp::Custom(p) => {
                let target = native_target().map_err(anyhow::Error::msg)?;
                compile(p, &target)
                    .map(|f| Some(Arc::new(f)))
                    .map_err(|e| anyhow::anyhow!("the seccomp profile: {e}"))
            }
        }
    }
}

impl Seccomp {
    /// [`Seccomp::filter`] for a process with the capabilities `caps` (a profile allows some
    /// calls only with a capability, as Docker's does `mount` with CAP_SYS_ADMIN): compiled
    /// for those when they are not Docker's default set.
    pub fn filter_with_caps(&self, caps: u64) -> anyhow::Result<Option<Arc<Filter>>> {
        if caps == crate::sandbox::caps::default_mask() {
            return self.filter();
        }
        let profile = match self {
            Seccomp::Unconfined => return Ok(None),
            Seccomp::Default => default_profile(),
            Seccomp::Custom(p) => (**p).clone(),
        };
        let mut target = native_target().map_err(anyhow::Error::msg)?;
        target.caps = caps;
        compile(&profile, &target)
            .map(|f| Some(Arc::new(f)))
            .map_err(|e| anyhow::anyhow!("the seccomp profile: {e}"))
    }
}

/// This machine with Docker's default capabilities.
pub fn native_target() -> Result<Target, String> {
    let arch = Arch::native().ok_or_else(|| {
        format!(
            "seccomp filters are built for x86_64 and aarch64, not {}: run with \
             --security-opt seccomp=unconfined",
            std::env::consts::ARCH
        )
    })?;
    Ok(Target {
        arch,
        caps: crate::sandbox::caps::default_mask(),
        kernel: profile::kernel_version(),
    })
}

fn seccompiler_action(a: Action) -> SeccompAction {
    match a {
        Action::Allow => SeccompAction::Allow,
        Action::Errno(n) => SeccompAction::Errno(n),
        Action::KillThread => SeccompAction::KillThread,
        Action::KillProcess => SeccompAction::KillProcess,
        Action::Trap => SeccompAction::Trap,
        Action::Trace(n) => SeccompAction::Trace(n),
        Action::Log => SeccompAction::Log,
    }
}

fn seccompiler_rule(args: &[ArgCond]) -> Result<SeccompRule, String> {
    let conds = args
        .iter()
        .map(|a| {
            let op = match a.op {
                Op::Ne => SeccompCmpOp::Ne,
                Op::Lt => SeccompCmpOp::Lt,
                Op::Le => SeccompCmpOp::Le,
                Op::Eq => SeccompCmpOp::Eq,
                Op::Ge => SeccompCmpOp::Ge,
                Op::Gt => SeccompCmpOp::Gt,
                Op::MaskedEq { mask } => SeccompCmpOp::MaskedEq(mask),
            };
            SeccompCondition::new(a.index, SeccompCmpArgLen::Qword, op, a.value)
                .map_err(|e| format!("argument {}: {e}", a.index))
        })
        .collect::<Result<Vec<_>, _>>()?;
    SeccompRule::new(conds).map_err(|e| e.to_string())
}

// Classic BPF (linux/filter.h, linux/seccomp.h).
/// BPF_LD | BPF_W | BPF_ABS.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JA: u16 = 0x05;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
/// The kernel's limit (BPF_MAXINSNS).
const MAX_INSTRUCTIONS: usize = 4096;
/// Calls checked one after another at the bottom of the search.
const LINEAR: usize = 4;

fn stmt(code: u16, k: u32) -> seccompiler::sock_filter {
    seccompiler::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> seccompiler::sock_filter {
    seccompiler::sock_filter { code, jt, jf, k }
}

fn ret(a: Action) -> seccompiler::sock_filter {
    stmt(BPF_RET_K, u32::from(seccompiler_action(a)))
}

/// One call's code: its rules in order (seccompiler's checks fall through to the next
/// instruction when they hold and skip it when not), then the default action.
fn call_body(
    rules: &[profile::SyscallRule],
    default: Action,
) -> Result<Vec<seccompiler::sock_filter>, String> {
    let mut body = Vec::new();
    for r in rules {
        if r.args.is_empty() {
            body.push(ret(r.action));
            return Ok(body);
        }
        let checks: seccompiler::BpfProgram = seccompiler_rule(&r.args)?.into();
        body.extend(checks);
        body.push(ret(r.action));
    }
    body.push(ret(default));
    Ok(body)
}

/// The search over `calls` (sorted by number); the accumulator holds the call number. Every
/// conditional jump goes at most one instruction ahead; longer ones are `JA`s (32-bit).
fn emit_search(
    out: &mut Vec<seccompiler::sock_filter>,
    calls: &[(u32, Vec<seccompiler::sock_filter>)],
    default: Action,
) {
    if calls.len() <= LINEAR {
        for (nr, body) in calls {
            // Equal: skip the jump over the body.
            out.push(jump(BPF_JMP_JEQ_K, *nr, 1, 0));
            out.push(stmt(BPF_JMP_JA, body.len() as u32));
            out.extend_from_slice(body);
        }
        out.push(ret(default));
        return;
    }
    let (left, right) = calls.split_at(calls.len() / 2);
    // nr >= the right half's first: take the jump to it; else fall into the left half.
    out.push(jump(BPF_JMP_JGE_K, right[0].0, 0, 1));
    let ja = out.len();
    out.push(stmt(BPF_JMP_JA, 0));
    emit_search(out, left, default);
    out[ja].k = (out.len() - ja - 1) as u32;
    emit_search(out, right, default);
}

/// Compiles `profile` for `target` into one BPF program (see the module comment).
pub fn compile(profile: &Profile, target: &Target) -> Result<Filter, String> {
    let resolved = profile.resolve(target);
    let default = profile.default_action;
    let mut calls = Vec::with_capacity(resolved.len());
    for (nr, rules) in &resolved {
        let nr = u32::try_from(*nr).map_err(|_| format!("system call number {nr}"))?;
        calls.push((nr, call_body(rules, default)?));
    }
    let audit_arch = match target.arch {
        Arch::X86_64 => AUDIT_ARCH_X86_64,
        Arch::Aarch64 => AUDIT_ARCH_AARCH64,
    };
    let mut program = vec![
        stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARCH),
        jump(BPF_JMP_JEQ_K, audit_arch, 1, 0),
        ret(Action::KillProcess),
        stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR),
    ];
    emit_search(&mut program, &calls, default);
    if program.len() > MAX_INSTRUCTIONS {
        return Err(format!(
            "the profile needs {} BPF instructions, more than the kernel's {MAX_INSTRUCTIONS}",
            program.len()
        ));
    }
    Ok(Filter { program })
}

#[cfg(test)]
mod tests;
