//! Terminals inside a container: a pty pair from the container's own devpts instance (opened
//! through the container's `/dev/ptmx` after the pivot, or after `kiln exec` entered its root),
//! and the passing of the master side to kiln over a unix socket (SCM_RIGHTS).
//!
//! The slave is the command's stdin/stdout/stderr and controlling terminal (`setsid` +
//! `TIOCSCTTY`), so `tty` prints `/dev/pts/0` and the line discipline inside the container
//! turns Ctrl-C, Ctrl-Z and Ctrl-\ into signals for the container's foreground process group.
//! kiln keeps only the master: when the last copy of it closes, the kernel hangs the terminal
//! up and the session gets SIGHUP, as on a real terminal.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A terminal's size in characters (rows, columns), as `TIOCGWINSZ` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WinSize {
    pub rows: u16,
    pub cols: u16,
}

impl WinSize {
    fn to_libc(self) -> libc::winsize {
        libc::winsize {
            ws_row: self.rows,
            ws_col: self.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }
    }
}

/// The size of the terminal on `fd`, or `None` when `fd` is no terminal.
pub fn size_of(fd: RawFd) -> Option<WinSize> {
    // SAFETY: a zeroed winsize is a valid value; TIOCGWINSZ fills it or fails.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ with a pointer to a winsize we own.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some(WinSize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// Sets the size of the terminal whose master (or slave) is `fd`; the kernel sends SIGWINCH
/// to the terminal's foreground process group when it changes.
pub fn set_size(fd: RawFd, size: WinSize) -> io::Result<()> {
    let ws = size.to_libc();
    // SAFETY: TIOCSWINSZ with a pointer to a winsize we own.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens a new pty pair through `/dev/ptmx` of the current root (the container's: its
/// `/dev/ptmx` is a link to its own devpts instance's `pts/ptmx`): (master, slave), both
/// close-on-exec, the slave not yet anyone's controlling terminal. Async-signal-safe enough for
/// a forked child (system calls only).
pub fn open_pair(size: Option<WinSize>) -> io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: open with a NUL-terminated path; the result is checked.
    let m = unsafe {
        libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if m < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: m was just opened and is owned only here.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK with a pointer to an int we own (0 = unlock the slave).
    if unsafe { libc::ioctl(m, libc::TIOCSPTLCK, &unlock) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // TIOCGPTPEER opens the slave of this very master (no lookup of /dev/pts/N by name).
    // SAFETY: TIOCGPTPEER with open flags; returns a new descriptor or -1.
    let s = unsafe {
        libc::ioctl(
            m,
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: s was just opened and is owned only here.
    let slave = unsafe { OwnedFd::from_raw_fd(s) };
    if let Some(size) = size {
        set_size(m, size)?;
    }
    Ok((master, slave))
}

/// A connected pair of unix stream sockets, close-on-exec: one end for the process that opens
/// the terminal, one for kiln.
pub fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into the array.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just created and are owned only here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends `fd` over the unix socket `sock` (one byte of data with an SCM_RIGHTS message).
pub fn send_fd(sock: RawFd, fd: RawFd) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd];
    let iov = [io::IoSlice::new(b"T")];
    sendmsg::<()>(
        sock,
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(io::Error::from)?;
    Ok(())
}

/// Receives one descriptor sent with `send_fd` (`None` when the peer closed without sending
/// one). Blocks until a message or the end of the stream.
pub fn recv_fd(sock: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            let mut it = fds.into_iter();
            if let Some(first) = it.next() {
                for extra in it {
                    // SAFETY: closing descriptors the kernel just gave us and nobody uses.
                    unsafe { libc::close(extra) };
                }
                // SAFETY: the kernel gave us this descriptor; it is owned only here.
                return Ok(Some(unsafe { OwnedFd::from_raw_fd(first) }));
            }
        }
    }
    Ok(None)
}

/// Makes the terminal on fd 0 the calling process's controlling terminal in a new session
/// (the process becomes session and process group leader, the terminal's foreground group).
pub fn become_session_leader_of_stdin() -> io::Result<()> {
    // SAFETY: setsid and TIOCSCTTY have no memory arguments.
    unsafe {
        if libc::setsid() < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descriptor_crosses_a_socket_pair() {
        let (a, b) = socket_pair().unwrap();
        let (r, w) = {
            let mut fds = [0; 2];
            // SAFETY: pipe writes two descriptors.
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
            // SAFETY: just created.
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
        };
        send_fd(a.as_raw_fd(), w.as_raw_fd()).unwrap();
        drop(w);
        let got = recv_fd(&b).unwrap().expect("a descriptor");
        let mut f = std::fs::File::from(got);
        std::io::Write::write_all(&mut f, b"x").unwrap();
        drop(f);
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut s).unwrap();
        assert_eq!(s, "x");
        drop(a);
        assert!(recv_fd(&b).unwrap().is_none());
    }

    #[test]
    fn a_pair_has_the_size_it_was_given() {
        // The host's /dev/ptmx: the same code as in a container's root.
        let (m, s) = open_pair(Some(WinSize { rows: 33, cols: 77 })).unwrap();
        assert_eq!(size_of(s.as_raw_fd()), Some(WinSize { rows: 33, cols: 77 }));
        set_size(m.as_raw_fd(), WinSize { rows: 5, cols: 6 }).unwrap();
        assert_eq!(size_of(s.as_raw_fd()), Some(WinSize { rows: 5, cols: 6 }));
    }
}
