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
//! seccompiler's filters have one action for every match. A profile with several actions
//! (Docker's has two: allow, and ENOSYS for `clone3`) becomes several stacked filters, which
//! the kernel runs all, taking the strictest answer:
//! - a base filter: every system call that has rules, when one of its rules matches -> allow;
//!   anything else -> the default action (left out when the default is to allow);
//! - one filter per other action A: the rules with action A -> A; anything else -> allow.
//!
//! A call that matches a rule with action A gets A (the base allows it, A's filter answers A,
//! the others allow); a call that matches nothing gets the default, as libseccomp's filters do.
//!
//! Limits: the filters check the architecture of each call; a 32-bit (i386 or arm) call in a
//! 64-bit container kills the process, where Docker's profile lists those sub-architectures
//! too.

mod default_profile;
pub mod profile;

use std::io;
use std::sync::{Arc, OnceLock};

use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

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

/// A profile compiled for one target: the BPF programs to install, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    programs: Vec<seccompiler::BpfProgram>,
}

impl Filter {
    /// How many stacked programs, and their instruction counts.
    pub fn program_lengths(&self) -> Vec<usize> {
        self.programs.iter().map(Vec::len).collect()
    }

    /// Installs the programs on the calling thread. Needs CAP_SYS_ADMIN or no_new_privs. Makes
    /// no allocation (safe in a forked child).
    pub fn install(&self) -> io::Result<()> {
        for p in &self.programs {
            let prog = libc::sock_fprog {
                len: p.len() as libc::c_ushort,
                // seccompiler's sock_filter is repr(C) with linux/filter.h's layout, as libc's.
                filter: p.as_ptr() as *mut libc::sock_filter,
            };
            // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER) with a pointer to a sock_fprog that
            // points at `p` (same layout as the kernel's struct sock_filter), which outlives
            // the call; the kernel copies the program.
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

/// The seccompiler rule chain for a set of alternatives: empty (= match on the number alone)
/// when one alternative has no conditions.
fn chain<'a>(
    alternatives: impl Iterator<Item = &'a [ArgCond]>,
) -> Result<Vec<SeccompRule>, String> {
    let mut rules = Vec::new();
    for args in alternatives {
        if args.is_empty() {
            return Ok(Vec::new());
        }
        rules.push(seccompiler_rule(args)?);
    }
    Ok(rules)
}

/// Compiles `profile` for `target` into stacked BPF programs (see the module comment).
pub fn compile(profile: &Profile, target: &Target) -> Result<Filter, String> {
    let resolved = profile.resolve(target);
    let arch = match target.arch {
        Arch::X86_64 => TargetArch::x86_64,
        Arch::Aarch64 => TargetArch::aarch64,
    };
    let mut actions: Vec<Action> = resolved
        .values()
        .flatten()
        .map(|r| r.action)
        .filter(|a| *a != Action::Allow)
        .collect();
    actions.sort();
    actions.dedup();

    let build = |rules, mismatch: Action, matched: Action| -> Result<_, String> {
        let filter = SeccompFilter::new(
            rules,
            seccompiler_action(mismatch),
            seccompiler_action(matched),
            arch,
        )
        .map_err(|e| e.to_string())?;
        let program: seccompiler::BpfProgram = filter
            .try_into()
            .map_err(|e: seccompiler::BackendError| format!("cannot build the BPF program: {e}"))?;
        Ok(program)
    };

    let mut programs = Vec::new();
    for &action in &actions {
        let mut rules = std::collections::BTreeMap::new();
        for (&nr, list) in &resolved {
            let mut alts = list
                .iter()
                .filter(|r| r.action == action)
                .map(|r| r.args.as_slice())
                .peekable();
            if alts.peek().is_some() {
                rules.insert(nr, chain(alts)?);
            }
        }
        programs.push(build(rules, Action::Allow, action)?);
    }
    if profile.default_action != Action::Allow {
        let mut rules = std::collections::BTreeMap::new();
        for (&nr, list) in &resolved {
            if !list.is_empty() {
                rules.insert(nr, chain(list.iter().map(|r| r.args.as_slice()))?);
            }
        }
        programs.push(build(rules, profile.default_action, Action::Allow)?);
    }
    Ok(Filter { programs })
}

#[cfg(test)]
mod tests;
