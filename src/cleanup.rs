//! Cleanup on Ctrl-C and SIGTERM: mounts and sandboxes register what must be undone; on the
//! first SIGINT, SIGTERM or SIGHUP a thread runs it (newest first) and then lets the signal take
//! its default course. What a SIGKILL leaves is recovered at the next start (`snapshot::recover`,
//! `sandbox::recover`), which removes only what belongs to processes that are gone
//! (`process_alive`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Mutex, Once};

type Action = Box<dyn FnOnce() + Send>;

static ACTIONS: Mutex<BTreeMap<u64, Action>> = Mutex::new(BTreeMap::new());
static NEXT: AtomicU64 = AtomicU64::new(1);
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);
static INSTALL: Once = Once::new();

/// Registers `action` to run if kiln is interrupted; returns a key for `unregister`.
pub fn register(action: impl FnOnce() + Send + 'static) -> u64 {
    install_signal_handlers();
    let key = NEXT.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut a) = ACTIONS.lock() {
        a.insert(key, Box::new(action));
    }
    key
}

/// Forgets an action (its owner cleaned up normally).
pub fn unregister(key: u64) {
    if let Ok(mut a) = ACTIONS.lock() {
        a.remove(&key);
    }
}

/// Runs every registered action now, newest first.
pub fn run_all() {
    let actions: Vec<Action> = match ACTIONS.lock() {
        Ok(mut a) => std::mem::take(&mut *a).into_values().rev().collect(),
        Err(_) => return,
    };
    for action in actions {
        action();
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = PIPE_WRITE.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; one byte from the stack.
        unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
    }
}

/// Installs the SIGINT/SIGTERM/SIGHUP handlers (once per process; `register` calls it).
pub fn install_signal_handlers() {
    INSTALL.call_once(|| {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return;
        }
        PIPE_WRITE.store(fds[1], Ordering::Relaxed);
        let read_fd = fds[0];
        let spawned = std::thread::Builder::new()
            .name("kiln-cleanup".into())
            .spawn(move || loop {
                let mut b = 0u8;
                // SAFETY: reading one byte into a stack variable from our pipe.
                let n = unsafe { libc::read(read_fd, (&mut b as *mut u8).cast(), 1) };
                if n == 1 {
                    run_all();
                    // SAFETY: restore the default action and re-raise, so kiln dies of it.
                    unsafe {
                        libc::signal(b as libc::c_int, libc::SIG_DFL);
                        libc::raise(b as libc::c_int);
                    }
                } else if n == 0 {
                    return;
                }
            });
        if spawned.is_err() {
            return;
        }
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: installing a handler that only calls write(2).
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    });
}

/// Whether a process exists (signal 0) and is not a zombie: a killed kiln whose parent has not
/// reaped it yet (e.g. a detached monitor reparented to an init that reaps slowly) owns nothing.
pub fn process_alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks for existence.
    let rc = unsafe { libc::kill(pid, 0) };
    let exists = rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !is_zombie(pid)
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = &stat[stat.rfind(')')? + 1..];
            after
                .split_whitespace()
                .next()
                .map(|s| s == "Z" || s == "X")
        })
        .unwrap_or(false)
}
