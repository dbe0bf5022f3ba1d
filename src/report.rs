//! How kiln reports to the user: errors as one line on stderr, and command output on stdout
//! through a writer that notices a closed pipe. Below every command module, so the CLI, the
//! engine and the runner's monitor report the same way.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Prints an error as one line, `kiln: outer: inner: root cause`, the way ripgrep does: what
/// failed, then why. A closed stderr is not an error of its own (nothing could report it).
pub fn report_error(err: &anyhow::Error) {
    let mut line = String::from("kiln: ");
    for (i, cause) in err.chain().enumerate() {
        if i > 0 {
            line.push_str(": ");
        }
        line.push_str(&cause.to_string());
    }
    line.push('\n');
    let _ = io::stderr().write_all(line.as_bytes());
}

/// Set once a write to stdout failed because its reader went away (`kiln images | head -1`).
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Whether stdout's reader has gone away: the command's output was cut short on purpose, so the
/// CLI exits as docker and every Unix filter does (killed by SIGPIPE), printing nothing.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::SeqCst)
}

/// kiln's stdout. Unlike `println!`, a write error is returned (never a panic), and a closed
/// pipe is remembered for [`stdout_closed`]. Every line a command prints goes through this.
pub fn stdout() -> Stdout {
    Stdout(io::stdout())
}

pub struct Stdout(io::Stdout);

fn note<T>(r: io::Result<T>) -> io::Result<T> {
    if let Err(e) = &r {
        if e.kind() == io::ErrorKind::BrokenPipe {
            STDOUT_CLOSED.store(true, Ordering::SeqCst);
        }
    }
    r
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        note(self.0.write(buf))
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        note(self.0.write_all(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        note(self.0.flush())
    }
}

/// `println!` for command output: writes a line to [`stdout()`] and evaluates to an
/// `io::Result<()>`, so callers write `outln!("{x}")?;`.
#[macro_export]
macro_rules! outln {
    () => {
        ::std::io::Write::write_all(&mut $crate::report::stdout(), b"\n")
    };
    ($($arg:tt)*) => {{
        let mut line = ::std::format!($($arg)*);
        line.push('\n');
        ::std::io::Write::write_all(&mut $crate::report::stdout(), line.as_bytes())
    }};
}

/// `print!` for command output; see [`outln!`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        ::std::io::Write::write_all(&mut $crate::report::stdout(), ::std::format!($($arg)*).as_bytes())
    };
}

/// `eprintln!` that never panics: progress and warnings on a closed stderr are dropped.
#[macro_export]
macro_rules! errln {
    () => {
        let _ = ::std::io::Write::write_all(&mut ::std::io::stderr(), b"\n");
    };
    ($($arg:tt)*) => {{
        let mut line = ::std::format!($($arg)*);
        line.push('\n');
        let _ = ::std::io::Write::write_all(&mut ::std::io::stderr(), line.as_bytes());
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_pipe_is_remembered_other_errors_are_not() {
        assert!(note::<()>(Err(io::Error::from(io::ErrorKind::Other))).is_err());
        assert!(!stdout_closed());
        assert!(note::<()>(Err(io::Error::from(io::ErrorKind::BrokenPipe))).is_err());
        assert!(stdout_closed());
    }
}
