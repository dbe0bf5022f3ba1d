//! Device control on cgroup v2: a `BPF_PROG_TYPE_CGROUP_DEVICE` program made from device rules
//! and attached to an execution's cgroup (v2 has no `devices.allow` file). The kernel runs it on
//! every open and mknod of a device node by a process in the cgroup; it returns 1 (allow) when a
//! rule matches the device's type, major, minor and access, else 0 (EPERM).
//!
//! The program, one block per rule, on `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major;
//! u32 minor; }` (`access_type` = access << 16 | type):
//! ```text
//!   r2 = ctx->access_type & 0xffff     r3 = ctx->access_type >> 16
//!   r4 = ctx->major                    r5 = ctx->minor
//!   rule: if r2 != TYPE goto next; if r3 & ~ACCESS goto next;
//!         if r4 != MAJOR goto next; if r5 != MINOR goto next; return 1
//!   ...
//!   return 0
//! ```
//! (a `*` major or minor, or full access, leaves its test out).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::cgroup::DeviceRule;

/// One BPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    /// The 8 bytes the kernel reads (x86-64 and other little-endian machines: dst in the low
    /// nibble of byte 1).
    pub fn encode(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = (self.src << 4) | (self.dst & 0x0f);
        b[2..4].copy_from_slice(&self.off.to_ne_bytes());
        b[4..8].copy_from_slice(&self.imm.to_ne_bytes());
        b
    }
}

// Opcodes (linux/bpf_common.h, linux/bpf.h).
pub const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
pub const ALU32_AND_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
pub const ALU32_RSH_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
pub const ALU32_MOV_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
pub const ALU64_MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
pub const JMP_JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
pub const JMP_EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

/// `BPF_DEVCG_DEV_*` and `BPF_DEVCG_ACC_*`.
pub const DEV_BLOCK: u32 = 1;
pub const DEV_CHAR: u32 = 2;
pub const ACC_MKNOD: u32 = 1;
pub const ACC_READ: u32 = 2;
pub const ACC_WRITE: u32 = 4;

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        dst,
        src,
        off,
        imm,
    }
}

fn access_mask(access: &str) -> u32 {
    access.chars().fold(0, |m, c| {
        m | match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => 0,
        }
    })
}

/// The program allowing exactly `rules`.
pub fn program(rules: &[DeviceRule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for r in rules {
        let kind = if r.kind == 'b' { DEV_BLOCK } else { DEV_CHAR };
        let mut block = vec![insn(JMP_JNE_K, 2, 0, 0, kind as i32)];
        let mask = access_mask(r.access);
        if mask != ACC_READ | ACC_WRITE | ACC_MKNOD {
            block.push(insn(ALU32_MOV_X, 1, 3, 0, 0));
            block.push(insn(ALU32_AND_K, 1, 0, 0, !mask as i32));
            block.push(insn(JMP_JNE_K, 1, 0, 0, 0));
        }
        if let Some(major) = r.major {
            block.push(insn(JMP_JNE_K, 4, 0, 0, major as i32));
        }
        if let Some(minor) = r.minor {
            block.push(insn(JMP_JNE_K, 5, 0, 0, minor as i32));
        }
        block.push(insn(ALU64_MOV_K, 0, 0, 0, 1));
        block.push(insn(JMP_EXIT, 0, 0, 0, 0));
        // Every "goto next" lands just past this block.
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == JMP_JNE_K {
                ins.off = (len - 1 - i) as i16;
            }
        }
        p.extend(block);
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    p
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD (the kernel takes a shorter attr
/// than its own as long as it is the leading part).
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_PROG_ATTACH.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn load(prog: &[Insn]) -> io::Result<OwnedFd> {
    let code: Vec<u8> = prog.iter().flat_map(|i| i.encode()).collect();
    let license = c"Apache-2.0";
    let mut name = [0u8; 16];
    name[..11].copy_from_slice(b"kiln_device");
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: code.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: BPF_CGROUP_DEVICE,
    };
    // SAFETY: bpf(BPF_PROG_LOAD) with an attr we own, whose pointers (the instructions and the
    // license) stay alive for the call; the kernel copies them and returns a new descriptor.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just returned to us and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads the program for `rules` and attaches it to the v2 cgroup directory `cgroup` (with
/// BPF_F_ALLOW_MULTI, so programs of parent cgroups, e.g. systemd's, still apply too). The
/// attachment lives as long as the cgroup.
pub fn attach(cgroup: &Path, rules: &[DeviceRule]) -> io::Result<()> {
    let prog = load(&program(rules))
        .map_err(|e| io::Error::new(e.kind(), format!("load the device program: {e}")))?;
    let c = std::ffi::CString::new(cgroup.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: open(2) of a NUL-terminated path; the descriptor is wrapped right away.
    let dir = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    let dir = unsafe { OwnedFd::from_raw_fd(dir) };
    let attr = ProgAttachAttr {
        target_fd: dir.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    // SAFETY: bpf(BPF_PROG_ATTACH) with an attr we own naming two descriptors we hold.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const ProgAttachAttr,
            std::mem::size_of::<ProgAttachAttr>() as libc::c_uint,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("attach the device program to {}: {e}", cgroup.display()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::cgroup::DEFAULT_DEVICES;
    use super::*;

    /// Runs `prog` as the kernel would on one device access (only the opcodes `program` emits),
    /// checking that every jump stays inside the program.
    fn eval(prog: &[Insn], kind: u32, major: u32, minor: u32, access: u32) -> u64 {
        let ctx = [access << 16 | kind, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let (d, s) = (i.dst as usize, i.src as usize);
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(s, 1, "loads only from the context");
                    r[d] = ctx[(i.off / 4) as usize] as u64;
                }
                ALU32_AND_K => r[d] = (r[d] as u32 & i.imm as u32) as u64,
                ALU32_RSH_K => r[d] = ((r[d] as u32) >> i.imm) as u64,
                ALU32_MOV_X => r[d] = r[s] as u32 as u64,
                ALU64_MOV_K => r[d] = i.imm as i64 as u64,
                JMP_JNE_K => {
                    if r[d] != i.imm as i64 as u64 {
                        pc = (pc as i64 + 1 + i.off as i64) as usize;
                        assert!(pc < prog.len(), "jump out of the program");
                        continue;
                    }
                }
                JMP_EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
            pc += 1;
            assert!(pc < prog.len(), "fell off the end");
        }
    }

    #[test]
    fn default_program_allows_dockers_devices_and_mknod_only() {
        let p = program(DEFAULT_DEVICES);
        let rw = ACC_READ | ACC_WRITE;
        for (major, minor) in [
            (1, 3),
            (1, 5),
            (1, 7),
            (1, 8),
            (1, 9),
            (5, 0),
            (5, 1),
            (5, 2),
        ] {
            assert_eq!(eval(&p, DEV_CHAR, major, minor, rw), 1, "c {major}:{minor}");
            assert_eq!(eval(&p, DEV_CHAR, major, minor, ACC_READ), 1);
            assert_eq!(
                eval(&p, DEV_BLOCK, major, minor, ACC_READ),
                0,
                "b {major}:{minor}"
            );
        }
        assert_eq!(eval(&p, DEV_CHAR, 136, 0, rw), 1, "ptys");
        assert_eq!(eval(&p, DEV_CHAR, 136, 4711, rw), 1, "ptys");
        // The issue's devices: mknod yes, open no.
        for (kind, major, minor) in [
            (DEV_CHAR, 10, 232),
            (DEV_CHAR, 10, 237),
            (DEV_BLOCK, 7, 0),
            (DEV_CHAR, 10, 229),
            (DEV_CHAR, 4, 1),
            (DEV_CHAR, 10, 183),
            (DEV_CHAR, 1, 11),
        ] {
            assert_eq!(eval(&p, kind, major, minor, ACC_MKNOD), 1);
            for acc in [ACC_READ, ACC_WRITE, rw, rw | ACC_MKNOD] {
                assert_eq!(
                    eval(&p, kind, major, minor, acc),
                    0,
                    "{kind} {major}:{minor} access {acc}"
                );
            }
        }
    }

    #[test]
    fn rules_leave_out_tests_for_wildcards_and_full_access() {
        // c *:* m is a type test and an access test only.
        let p = program(&DEFAULT_DEVICES[..1]);
        assert_eq!(p.len(), 6 + 6 + 2);
        // c 1:3 rwm is a type, a major and a minor test.
        let p = program(&DEFAULT_DEVICES[2..3]);
        assert_eq!(p.len(), 6 + 5 + 2);
        assert_eq!(p[6], insn(JMP_JNE_K, 2, 0, 4, DEV_CHAR as i32));
        assert_eq!(p[7], insn(JMP_JNE_K, 4, 0, 3, 1));
        assert_eq!(p[8], insn(JMP_JNE_K, 5, 0, 2, 3));
        assert_eq!(p[p.len() - 2], insn(ALU64_MOV_K, 0, 0, 0, 0));
        // An empty rule list denies everything.
        assert_eq!(eval(&program(&[]), DEV_CHAR, 1, 3, ACC_READ), 0);
    }

    #[test]
    fn encoding_is_the_kernels_struct_bpf_insn() {
        let i = insn(LDX_MEM_W, 4, 1, 4, 0);
        assert_eq!(i.encode(), [0x61, 0x14, 4, 0, 0, 0, 0, 0]);
        let j = insn(JMP_JNE_K, 5, 0, 2, 232);
        assert_eq!(j.encode(), [0x55, 0x05, 2, 0, 232, 0, 0, 0]);
    }
}
