//! The namespace holder: a process that keeps a user's namespace alive between kilns, so the
//! next kiln joins it (`setns`, a few microseconds) instead of making a new one, which costs two
//! setuid execs of `newuidmap` and `newgidmap` (about 7 ms, most of a no-op rebuild's time).
//!
//! It is not a daemon: it serves nothing, holds no state, and ends by itself once no kiln has
//! joined it for `KILN_ROOTLESS_HOLD` seconds (600 unless set; 0 starts none), or at once when its
//! registration under `ROOT/userns` is removed. Podman's rootless "pause process" does the same
//! job. A kiln that finds a holder whose mapping no longer matches `/etc/subuid` (a range was
//! added since) removes that registration and makes a new namespace.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::Mapping;

/// Seconds a holder waits for a kiln to join before it ends; `0` starts no holder.
pub const HOLD_ENV: &str = "KILN_ROOTLESS_HOLD";
const DEFAULT_IDLE: Duration = Duration::from_secs(600);

/// How long a holder waits for the next kiln, from `KILN_ROOTLESS_HOLD`; `None` when holders
/// are turned off.
pub fn idle_limit() -> Option<Duration> {
    idle_limit_from(std::env::var(HOLD_ENV).ok().as_deref())
}

fn idle_limit_from(value: Option<&str>) -> Option<Duration> {
    match value.map(|v| v.trim().parse::<u64>()) {
        None => Some(DEFAULT_IDLE),
        Some(Ok(0)) => None,
        Some(Ok(secs)) => Some(Duration::from_secs(secs)),
        // A value kiln cannot read is not a reason to fail a build: the default.
        Some(Err(_)) => Some(DEFAULT_IDLE),
    }
}

/// What a holder's registration file says: that it is a holder, and the mapping it holds. A
/// container owner's registration (`hold_namespace`) is empty.
pub fn registration_text(mapping: Mapping) -> &'static [u8] {
    match mapping {
        Mapping::Single => b"holder single",
        _ => b"holder full",
    }
}

/// Whether the registration at `path` is a holder's (not a container owner's, which a kiln must
/// join to reach the container however it was mapped).
pub fn is_holder(path: &Path) -> bool {
    fs::read(path).is_ok_and(|t| t.starts_with(b"holder "))
}

/// Whether the registration at `path` is a holder of a single-id namespace: stale once the user
/// has a subordinate range, which a new namespace would map.
pub fn holds_single(path: &Path) -> bool {
    fs::read(path).is_ok_and(|t| t == b"holder single")
}

/// Marks a registration as used now, so its holder keeps waiting.
pub fn touch(path: &Path) {
    if let Ok(f) = fs::File::options().write(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// How often a holder looks at its registration: a quarter of its idle limit, within 0.25–15 s.
fn check_interval(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(250), Duration::from_secs(15))
}

/// Whether a holder registered at `path` should end now: the registration is gone, or no kiln
/// touched it for `idle`.
fn should_end(path: &Path, idle: Duration, now: SystemTime) -> bool {
    match fs::metadata(path).and_then(|m| m.modified()) {
        Err(_) => true,
        Ok(touched) => now.duration_since(touched).unwrap_or_default() > idle,
    }
}

/// Starts a holder of the calling process's (new) user namespace, registered under `dir`. Called
/// by `enter` right after the namespace is made, while kiln has one thread. Failing to start one
/// only costs the next kiln the slower entry, so nothing here is an error.
pub fn spawn(dir: &Path, mapping: Mapping, idle: Duration) {
    if fs::create_dir_all(dir).is_err() {
        return;
    }
    // SAFETY: kiln has one thread here (see `enter`), so the child may allocate; the child
    // leaves only by _exit, never returning into the parent's code.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            // The middle process exits at once (below): reap it so no zombie stays.
            let _ = nix::sys::wait::waitpid(child, None);
        }
        Ok(nix::unistd::ForkResult::Child) => {
            // A new session, then a second fork: the holder is nobody's child and no
            // terminal's, so neither kiln's exit nor a closed terminal signals it.
            let _ = nix::unistd::setsid();
            // SAFETY: as above; this process has one thread.
            if let Ok(nix::unistd::ForkResult::Child) = unsafe { nix::unistd::fork() } {
                hold(dir, mapping, idle);
            }
            // SAFETY: ends the middle process without running the parent's exit handlers.
            unsafe { libc::_exit(0) }
        }
        Err(_) => {}
    }
}

/// The holder's life: detach from every file kiln had open (a caller waiting for kiln's output
/// must not wait for the holder), register, wait until idle, unregister, end.
fn hold(dir: &Path, mapping: Mapping, idle: Duration) -> ! {
    detach_files();
    let _ = std::env::set_current_dir("/");
    if let Ok(delegated) = super::delegation::current() {
        delegated.step_aside();
    }
    // SAFETY: prctl(PR_SET_NAME) with a NUL-terminated buffer: only renames this thread, so `ps`
    // shows what the process is.
    unsafe {
        libc::prctl(
            libc::PR_SET_NAME,
            c"kiln-userns".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    let path: PathBuf = dir.join(crate::owner::Owner::current().tag());
    let temp = dir.join(format!(".{}.new", std::process::id()));
    // Written whole under a temporary name first, so a kiln never reads a half-written mapping.
    let registered =
        fs::write(&temp, registration_text(mapping)).is_ok() && fs::rename(&temp, &path).is_ok();
    if registered {
        let interval = check_interval(idle);
        while !should_end(&path, idle, SystemTime::now()) {
            std::thread::sleep(interval);
        }
        let _ = fs::remove_file(&path);
    } else {
        let _ = fs::remove_file(&temp);
    }
    // SAFETY: ends the holder without running the exit handlers inherited from kiln.
    unsafe { libc::_exit(0) }
}

/// Points stdin, stdout and stderr at /dev/null and closes every other descriptor.
fn detach_files() {
    if let Ok(null) = fs::File::options().read(true).write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        for fd in 0..=2 {
            // SAFETY: dup2 onto the standard descriptors; `null` stays open until the loop ends.
            unsafe {
                libc::dup2(null.as_raw_fd(), fd);
            }
        }
    }
    // SAFETY: close_range(3, ~0, 0) closes descriptors this process owns; nothing in the holder
    // uses them afterwards.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_limit_comes_from_the_environment_and_zero_turns_holders_off() {
        assert_eq!(idle_limit_from(Some("0")), None);
        assert_eq!(idle_limit_from(Some("42")), Some(Duration::from_secs(42)));
        assert_eq!(idle_limit_from(Some("soon")), Some(DEFAULT_IDLE));
        assert_eq!(idle_limit_from(None), Some(DEFAULT_IDLE));
    }

    #[test]
    fn a_holder_ends_when_idle_or_unregistered() {
        let dir = tempfile::tempdir().unwrap();
        let reg = dir.path().join("123-456");
        let idle = Duration::from_secs(60);
        assert!(should_end(&reg, idle, SystemTime::now()), "no registration");
        fs::write(&reg, registration_text(Mapping::Full)).unwrap();
        let now = SystemTime::now();
        assert!(!should_end(&reg, idle, now));
        assert!(should_end(&reg, idle, now + Duration::from_secs(120)));
        // A kiln joining moves the deadline.
        let f = fs::File::options().write(true).open(&reg).unwrap();
        f.set_modified(now - Duration::from_secs(120)).unwrap();
        assert!(should_end(&reg, idle, now));
        touch(&reg);
        assert!(!should_end(&reg, idle, SystemTime::now()));
    }

    #[test]
    fn registrations_tell_holders_and_their_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let reg = dir.path().join("1-2");
        fs::write(&reg, registration_text(Mapping::Single)).unwrap();
        assert!(is_holder(&reg) && holds_single(&reg));
        fs::write(&reg, registration_text(Mapping::Full)).unwrap();
        assert!(is_holder(&reg) && !holds_single(&reg));
        // A container owner's registration.
        fs::write(&reg, b"").unwrap();
        assert!(!is_holder(&reg) && !holds_single(&reg));
    }

    #[test]
    fn the_check_interval_stays_within_bounds() {
        assert_eq!(
            check_interval(Duration::from_secs(1)),
            Duration::from_millis(250)
        );
        assert_eq!(
            check_interval(Duration::from_secs(8)),
            Duration::from_secs(2)
        );
        assert_eq!(
            check_interval(Duration::from_secs(600)),
            Duration::from_secs(15)
        );
    }
}
