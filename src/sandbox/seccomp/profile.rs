//! A seccomp profile as Docker defines one (its JSON format, `docker run --security-opt
//! seccomp=PROFILE.json`), parsed and checked, and resolved for one execution: the rules that
//! apply on an architecture, with a capability set, on a kernel version.

use std::collections::BTreeMap;

use serde::Deserialize;

/// What the kernel does with a system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Allow,
    /// Fail with this errno.
    Errno(u32),
    KillThread,
    KillProcess,
    /// SIGSYS.
    Trap,
    /// Notify a ptrace tracer with this value.
    Trace(u32),
    /// Allow and log.
    Log,
}

/// A comparison of one system call argument, as libseccomp's `SCMP_CMP_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    Ne,
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
    /// `(arg & mask) == value`.
    MaskedEq {
        mask: u64,
    },
}

/// `arg[index] <op> value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArgCond {
    pub index: u8,
    pub op: Op,
    pub value: u64,
}

/// The conditions of a rule's `includes` / `excludes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Condition {
    /// Docker's native architecture names (`amd64`, `arm64`, ...).
    pub arches: Vec<String>,
    /// Capability names (`CAP_SYS_ADMIN`).
    pub caps: Vec<String>,
    /// (major, minor).
    pub min_kernel: Option<(u32, u32)>,
}

/// One entry of `syscalls`: these names get `action` when every argument condition holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub names: Vec<String>,
    pub action: Action,
    pub args: Vec<ArgCond>,
    /// The rule applies only when all of these hold.
    pub includes: Condition,
    /// The rule is left out when any of these holds.
    pub excludes: Condition,
}

/// A whole profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub default_action: Action,
    pub rules: Vec<Rule>,
}

/// The architectures kiln builds filters for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// The machine kiln runs on.
    pub fn native() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            _ => None,
        }
    }

    /// Docker's name of the architecture in `includes.arches` / `excludes.arches`.
    pub fn docker_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// The system call number of `name` on this architecture; `None` when it has no such call
    /// (Docker skips those: its profile lists calls of every architecture).
    pub fn syscall_number(self, name: &str) -> Option<i64> {
        match self {
            Arch::X86_64 => name
                .parse::<syscalls::x86_64::Sysno>()
                .ok()
                .map(|s| i64::from(s.id())),
            Arch::Aarch64 => name
                .parse::<syscalls::aarch64::Sysno>()
                .ok()
                .map(|s| i64::from(s.id())),
        }
    }
}

/// What a profile is resolved against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub arch: Arch,
    /// The container's capability set (bit n = capability n).
    pub caps: u64,
    pub kernel: (u32, u32),
}

/// One rule as it applies to one system call number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyscallRule {
    pub action: Action,
    /// All must hold; empty = always.
    pub args: Vec<ArgCond>,
}

impl Profile {
    /// The rules that apply to `target`, by system call number. A rule whose conditions compare
    /// the same argument more than once becomes one rule per condition (any of them matching),
    /// as Docker's runtime (runc) does; otherwise its conditions must all hold.
    pub fn resolve(&self, target: &Target) -> BTreeMap<i64, Vec<SyscallRule>> {
        let mut out: BTreeMap<i64, Vec<SyscallRule>> = BTreeMap::new();
        for rule in &self.rules {
            if !rule.applies(target) {
                continue;
            }
            let mut seen = [0u8; 6];
            for a in &rule.args {
                seen[usize::from(a.index)] += 1;
            }
            let alternatives: Vec<Vec<ArgCond>> = if seen.iter().any(|&n| n > 1) {
                rule.args.iter().map(|a| vec![*a]).collect()
            } else {
                vec![rule.args.clone()]
            };
            for name in &rule.names {
                let Some(nr) = target.arch.syscall_number(name) else {
                    continue;
                };
                let entry = out.entry(nr).or_default();
                for args in &alternatives {
                    entry.push(SyscallRule {
                        action: rule.action,
                        args: args.clone(),
                    });
                }
            }
        }
        out
    }
}

impl Rule {
    fn applies(&self, t: &Target) -> bool {
        let arch = t.arch.docker_name();
        let has_cap = |name: &String| {
            crate::sandbox::caps::by_name(name).is_some_and(|c| t.caps & (1u64 << c) != 0)
        };
        let ex = &self.excludes;
        if ex.arches.iter().any(|a| a == arch)
            || ex.caps.iter().any(has_cap)
            || ex.min_kernel.is_some_and(|k| t.kernel >= k)
        {
            return false;
        }
        let inc = &self.includes;
        if !inc.arches.is_empty() && !inc.arches.iter().any(|a| a == arch) {
            return false;
        }
        if !inc.caps.iter().all(has_cap) {
            return false;
        }
        !inc.min_kernel.is_some_and(|k| t.kernel < k)
    }
}

/// The running kernel's (major, minor), from uname.
pub fn kernel_version() -> (u32, u32) {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    parse_kernel_version(&release).unwrap_or((0, 0))
}

fn parse_kernel_version(s: &str) -> Option<(u32, u32)> {
    let mut parts = s.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().unwrap_or("0").parse().ok()?;
    Some((major, minor))
}

// ---- Docker's JSON format ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct JsonProfile {
    default_action: Option<String>,
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    arch_map: Vec<JsonArchMap>,
    #[serde(default)]
    syscalls: Option<Vec<JsonSyscall>>,
    /// Checked, not applied: kiln installs filters without flags, as Docker does by default.
    #[serde(default)]
    flags: Vec<String>,
    listener_path: Option<String>,
    listener_metadata: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct JsonArchMap {
    architecture: String,
    #[serde(default)]
    sub_architectures: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct JsonSyscall {
    #[serde(default)]
    name: String,
    #[serde(default)]
    names: Vec<String>,
    action: String,
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<JsonArg>>,
    #[serde(default, rename = "comment")]
    _comment: serde::de::IgnoredAny,
    includes: Option<JsonFilter>,
    excludes: Option<JsonFilter>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct JsonArg {
    index: u32,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct JsonFilter {
    #[serde(default)]
    arches: Option<Vec<String>>,
    #[serde(default)]
    caps: Option<Vec<String>>,
    min_kernel: Option<String>,
}

const SECCOMP_ARCHES: &[&str] = &[
    "SCMP_ARCH_X86",
    "SCMP_ARCH_X86_64",
    "SCMP_ARCH_X32",
    "SCMP_ARCH_ARM",
    "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_MIPS",
    "SCMP_ARCH_MIPS64",
    "SCMP_ARCH_MIPS64N32",
    "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32",
    "SCMP_ARCH_PPC",
    "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE",
    "SCMP_ARCH_S390",
    "SCMP_ARCH_S390X",
    "SCMP_ARCH_PARISC",
    "SCMP_ARCH_PARISC64",
    "SCMP_ARCH_RISCV64",
    "SCMP_ARCH_LOONGARCH64",
    "SCMP_ARCH_M68K",
    "SCMP_ARCH_SH",
    "SCMP_ARCH_SHEB",
];

fn parse_action(s: &str, errno: Option<u32>, default_errno: u32) -> Result<Action, String> {
    let action = match s {
        "SCMP_ACT_ALLOW" => Action::Allow,
        "SCMP_ACT_ERRNO" => Action::Errno(errno.unwrap_or(default_errno)),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => Action::KillThread,
        "SCMP_ACT_KILL_PROCESS" => Action::KillProcess,
        "SCMP_ACT_TRAP" => Action::Trap,
        "SCMP_ACT_TRACE" => Action::Trace(errno.unwrap_or(default_errno)),
        "SCMP_ACT_LOG" => Action::Log,
        "SCMP_ACT_NOTIFY" => {
            return Err(
                "action SCMP_ACT_NOTIFY needs a seccomp agent, which kiln does not \
                        support"
                    .into(),
            )
        }
        other => {
            return Err(format!(
                "unknown action {other:?} (expected SCMP_ACT_ALLOW, SCMP_ACT_ERRNO, \
                 SCMP_ACT_KILL, SCMP_ACT_KILL_PROCESS, SCMP_ACT_KILL_THREAD, SCMP_ACT_TRAP, \
                 SCMP_ACT_TRACE or SCMP_ACT_LOG)"
            ))
        }
    };
    if errno.is_some() && !matches!(action, Action::Errno(_) | Action::Trace(_)) {
        return Err(format!(
            "errnoRet is only valid with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not {s}"
        ));
    }
    Ok(action)
}

fn parse_op(s: &str, value: u64, value_two: u64) -> Result<ArgCond, String> {
    let (op, value) = match s {
        "SCMP_CMP_NE" => (Op::Ne, value),
        "SCMP_CMP_LT" => (Op::Lt, value),
        "SCMP_CMP_LE" => (Op::Le, value),
        "SCMP_CMP_EQ" => (Op::Eq, value),
        "SCMP_CMP_GE" => (Op::Ge, value),
        "SCMP_CMP_GT" => (Op::Gt, value),
        // libseccomp: (arg & value) == valueTwo.
        "SCMP_CMP_MASKED_EQ" => (Op::MaskedEq { mask: value }, value_two),
        other => {
            return Err(format!(
                "unknown comparison {other:?} (expected SCMP_CMP_NE, SCMP_CMP_LT, SCMP_CMP_LE, \
                 SCMP_CMP_EQ, SCMP_CMP_GE, SCMP_CMP_GT or SCMP_CMP_MASKED_EQ)"
            ))
        }
    };
    Ok(ArgCond {
        index: 0,
        op,
        value,
    })
}

fn parse_filter(f: Option<JsonFilter>, what: &str) -> Result<Condition, String> {
    let f = f.unwrap_or_default();
    let caps = f.caps.unwrap_or_default();
    for c in &caps {
        if crate::sandbox::caps::by_name(c).is_none() {
            return Err(format!(
                "{what}.caps: unknown capability {c:?} (expected a name such as CAP_SYS_ADMIN)"
            ));
        }
    }
    let min_kernel = match f.min_kernel {
        None => None,
        Some(k) => match parse_kernel_version(&k) {
            Some(v) if k.split('.').count() >= 2 => Some(v),
            _ => {
                return Err(format!(
                    "{what}.minKernel: {k:?} is not a kernel version such as \"4.8\""
                ))
            }
        },
    };
    Ok(Condition {
        arches: f.arches.unwrap_or_default(),
        caps,
        min_kernel,
    })
}

fn valid_syscall_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Parses a profile in Docker's JSON format. Errors say what is wrong and where (the JSON
/// position, or `syscalls[N]`).
pub fn parse_docker_json(text: &str) -> Result<Profile, String> {
    let json: JsonProfile = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if json.listener_path.is_some() || json.listener_metadata.is_some() {
        return Err("listenerPath needs a seccomp agent, which kiln does not support".into());
    }
    if !json.architectures.is_empty() && !json.arch_map.is_empty() {
        return Err(
            "both 'architectures' and 'archMap' are given: use either 'architectures' or \
             'archMap'"
                .into(),
        );
    }
    let arch_names = json
        .architectures
        .iter()
        .chain(json.arch_map.iter().flat_map(|m| {
            std::iter::once(&m.architecture).chain(m.sub_architectures.iter().flatten())
        }));
    for a in arch_names {
        if !SECCOMP_ARCHES.contains(&a.as_str()) {
            return Err(format!(
                "unknown architecture {a:?} (expected a libseccomp name such as SCMP_ARCH_X86_64)"
            ));
        }
    }
    for f in &json.flags {
        if !matches!(
            f.as_str(),
            "SECCOMP_FILTER_FLAG_TSYNC"
                | "SECCOMP_FILTER_FLAG_LOG"
                | "SECCOMP_FILTER_FLAG_SPEC_ALLOW"
        ) {
            return Err(format!("unknown flag {f:?}"));
        }
    }
    let Some(default_action) = json.default_action else {
        return Err("defaultAction is missing (e.g. \"defaultAction\": \"SCMP_ACT_ERRNO\")".into());
    };
    let default_errno = json.default_errno_ret.unwrap_or(libc::EPERM as u32);
    let default_action = parse_action(&default_action, json.default_errno_ret, default_errno)
        .map_err(|e| format!("defaultAction: {e}"))?;
    let mut rules = Vec::new();
    for (i, s) in json.syscalls.unwrap_or_default().into_iter().enumerate() {
        let at = |e: String| format!("syscalls[{i}]: {e}");
        let names = match (s.name.is_empty(), s.names.is_empty()) {
            (false, false) => {
                return Err(at(
                    "both 'name' and 'names' are given: use either 'name' or 'names'".into(),
                ))
            }
            (false, true) => vec![s.name],
            (true, false) => s.names,
            (true, true) => return Err(at("no system call names ('names' is empty)".into())),
        };
        if let Some(bad) = names.iter().find(|n| !valid_syscall_name(n)) {
            return Err(at(format!("{bad:?} is not a system call name")));
        }
        let action = parse_action(&s.action, s.errno_ret, libc::EPERM as u32).map_err(at)?;
        let mut args = Vec::new();
        for (j, a) in s.args.unwrap_or_default().into_iter().enumerate() {
            if a.index > 5 {
                return Err(at(format!(
                    "args[{j}].index {} is out of range (system calls have arguments 0 to 5)",
                    a.index
                )));
            }
            let mut cond =
                parse_op(&a.op, a.value, a.value_two).map_err(|e| at(format!("args[{j}]: {e}")))?;
            cond.index = a.index as u8;
            args.push(cond);
        }
        let includes = parse_filter(s.includes, "includes").map_err(at)?;
        let excludes = parse_filter(s.excludes, "excludes").map_err(at)?;
        rules.push(Rule {
            names,
            action,
            args,
            includes,
            excludes,
        });
    }
    Ok(Profile {
        default_action,
        rules,
    })
}

impl Rule {
    /// An unconditional rule.
    pub fn new(names: &[&str], action: Action) -> Rule {
        Rule {
            names: names.iter().map(|n| n.to_string()).collect(),
            action,
            args: Vec::new(),
            includes: Condition::default(),
            excludes: Condition::default(),
        }
    }

    pub fn arg(mut self, index: u8, op: Op, value: u64) -> Rule {
        self.args.push(ArgCond { index, op, value });
        self
    }

    pub fn if_arch(mut self, arches: &[&str]) -> Rule {
        self.includes.arches = arches.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn if_caps(mut self, caps: &[&str]) -> Rule {
        self.includes.caps = caps.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn if_kernel(mut self, major: u32, minor: u32) -> Rule {
        self.includes.min_kernel = Some((major, minor));
        self
    }

    pub fn unless_caps(mut self, caps: &[&str]) -> Rule {
        self.excludes.caps = caps.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn unless_arch(mut self, arches: &[&str]) -> Rule {
        self.excludes.arches = arches.iter().map(|a| a.to_string()).collect();
        self
    }
}
