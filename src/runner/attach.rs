//! A `-t` container's terminal: the monitor's side (it keeps the master of the container's pty
//! and serves it on `ROOT/containers/<id>/attach.sock`) and the client's (`kiln run -it`,
//! `kiln attach`: the user's terminal in raw mode relayed to the socket, window size changes
//! sent along, the detach keys leaving the container running).
//!
//! The container's processes belong to the monitor, never to a client: a client that exits,
//! detaches or is killed only closes its connection. The monitor copies the terminal's output to
//! the json-file log and to every connected client; input and window sizes come from any client.
//!
//! Frames on the socket, both ways: a tag byte, a big-endian u32 length, the payload.
//! Client to monitor: `d` input bytes, `w` a window size (rows, cols: two big-endian u16).
//! Monitor to client: `d` output bytes, `x` the container's exit code (big-endian i32), sent
//! once it has ended and been recorded (and with `--rm` removed).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::sandbox::tty::{self, WinSize};

/// docker's default detach keys.
pub const DEFAULT_DETACH_KEYS: &str = "ctrl-p,ctrl-q";

const T_DATA: u8 = b'd';
const T_SIZE: u8 = b'w';
const T_EXIT: u8 = b'x';

/// Output kept for the first client of a `kiln run -it` (what the command printed before the
/// client connected, such as a shell's first prompt); the newest bytes are kept.
const BACKLOG_MAX: usize = 256 * 1024;

/// Parses docker's `--detach-keys`: comma-separated keys, each one character or `ctrl-X`
/// (X a letter, `@`, `[`, `\`, `]`, `^` or `_`).
pub fn parse_detach_keys(spec: &str) -> Result<Vec<u8>> {
    let mut keys = Vec::new();
    for part in spec.split(',') {
        let b = part.as_bytes();
        let key = if b.len() == 1 {
            b[0]
        } else if let Some(rest) = part.strip_prefix("ctrl-") {
            match rest.as_bytes() {
                [c @ b'a'..=b'z'] => c - b'a' + 1,
                [c @ b'A'..=b'Z'] => c - b'A' + 1,
                [b'@'] => 0,
                [b'['] => 27,
                [b'\\'] => 28,
                [b']'] => 29,
                [b'^'] => 30,
                [b'_'] => 31,
                _ => bail!(invalid_keys(spec)),
            }
        } else {
            bail!(invalid_keys(spec));
        };
        keys.push(key);
    }
    Ok(keys)
}

fn invalid_keys(spec: &str) -> String {
    format!(
        "invalid detach keys ({spec}) provided: use a comma-separated list of single characters \
         and ctrl-<value> (a-z, @, [, \\, ], ^, _), e.g. ctrl-p,ctrl-q"
    )
}

fn write_frame(w: &mut impl Write, tag: u8, payload: &[u8]) -> io::Result<()> {
    let mut msg = Vec::with_capacity(5 + payload.len());
    msg.push(tag);
    msg.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    msg.extend_from_slice(payload);
    w.write_all(&msg)
}

/// One frame, or `None` at the end of the stream.
fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > 1 << 20 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "attach: frame too large",
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some((head[0], payload)))
}

fn size_payload(s: WinSize) -> [u8; 4] {
    let r = s.rows.to_be_bytes();
    let c = s.cols.to_be_bytes();
    [r[0], r[1], c[0], c[1]]
}

/// The socket's path in the container's directory.
pub fn socket_path(container_dir: &Path) -> PathBuf {
    container_dir.join("attach.sock")
}

/// A path to `name` in `dir` short enough for a unix socket address whatever the root's length:
/// through the open directory's /proc/self/fd link.
fn short_path(dir: &File, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
}

struct Clients {
    conns: Vec<UnixStream>,
    backlog: Option<Vec<u8>>,
    /// A client is expected at once (`kiln run -t`) and has not connected yet.
    awaited: bool,
}

/// The monitor's terminal server.
pub struct Server {
    clients: Arc<Mutex<Clients>>,
    path: PathBuf,
}

impl Server {
    /// Serves the terminal whose master is `master` on `container_dir/attach.sock`. Clients'
    /// input reaches the terminal only when the container keeps stdin open (`interactive`);
    /// with `backlog`, output made before the first client connects is kept for it.
    pub fn start(
        container_dir: &Path,
        master: &File,
        interactive: bool,
        backlog: bool,
    ) -> Result<Server> {
        std::fs::create_dir_all(container_dir)
            .with_context(|| format!("creating {}", container_dir.display()))?;
        let path = socket_path(container_dir);
        let _ = std::fs::remove_file(&path);
        let dir = File::open(container_dir)
            .with_context(|| format!("opening {}", container_dir.display()))?;
        let listener = UnixListener::bind(short_path(&dir, "attach.sock"))
            .with_context(|| format!("listening on {}", path.display()))?;
        drop(dir);
        let clients = Arc::new(Mutex::new(Clients {
            conns: Vec::new(),
            backlog: backlog.then(Vec::new),
            awaited: backlog,
        }));
        let master = master.try_clone().context("attach: the terminal")?;
        let shared = clients.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let _ = conn.set_write_timeout(Some(Duration::from_secs(10)));
                let Ok(writer) = conn.try_clone() else {
                    continue;
                };
                if let Ok(mut c) = shared.lock() {
                    c.awaited = false;
                    let mut writer = writer;
                    if let Some(b) = c.backlog.take() {
                        if !b.is_empty() && write_frame(&mut writer, T_DATA, &b).is_err() {
                            continue;
                        }
                    }
                    c.conns.push(writer);
                }
                let Ok(mut input) = master.try_clone() else {
                    continue;
                };
                std::thread::spawn(move || {
                    let mut conn = conn;
                    while let Ok(Some((tag, payload))) = read_frame(&mut conn) {
                        match tag {
                            T_DATA if interactive && input.write_all(&payload).is_err() => {
                                break;
                            }
                            T_SIZE if payload.len() == 4 => {
                                let size = WinSize {
                                    rows: u16::from_be_bytes([payload[0], payload[1]]),
                                    cols: u16::from_be_bytes([payload[2], payload[3]]),
                                };
                                let _ = tty::set_size(input.as_raw_fd(), size);
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
        Ok(Server { clients, path })
    }

    /// Where the terminal's output goes besides the log: every connected client.
    pub fn tee(&self) -> Box<dyn Write + Send> {
        Box::new(Broadcast(self.clients.clone()))
    }

    /// Tells every client the container's exit code and stops serving. A command that ended
    /// before the `kiln run -t` that started it connected still has its output and exit code
    /// delivered: the client is waited for (10 seconds at most).
    pub fn finish(self, code: i32) {
        let start = std::time::Instant::now();
        while self.clients.lock().map(|c| c.awaited).unwrap_or(false)
            && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_file(&self.path);
        if let Ok(mut c) = self.clients.lock() {
            for conn in c.conns.iter_mut() {
                let _ = write_frame(conn, T_EXIT, &code.to_be_bytes());
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
            c.conns.clear();
        }
    }
}

struct Broadcast(Arc<Mutex<Clients>>);

impl Write for Broadcast {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Ok(mut c) = self.0.lock() {
            if let Some(b) = c.backlog.as_mut() {
                b.extend_from_slice(buf);
                if b.len() > BACKLOG_MAX {
                    let cut = b.len() - BACKLOG_MAX;
                    b.drain(..cut);
                }
            }
            c.conns
                .retain_mut(|conn| write_frame(conn, T_DATA, buf).is_ok());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How a client session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The container ended with this code.
    Exited(i32),
    /// The user typed the detach keys; the container runs on.
    Detached,
    /// The monitor went away without an exit code.
    Lost,
}

/// Connects to a running container's terminal; waits up to `wait` for the socket to appear.
pub fn connect(container_dir: &Path, wait: Duration) -> Result<UnixStream> {
    let dir = File::open(container_dir)
        .with_context(|| format!("opening {}", container_dir.display()))?;
    let start = std::time::Instant::now();
    loop {
        match UnixStream::connect(short_path(&dir, "attach.sock")) {
            Ok(s) => return Ok(s),
            Err(e) if start.elapsed() < wait => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "connecting to the container's terminal {}",
                        socket_path(container_dir).display()
                    )
                })
            }
        }
    }
}

/// The signals the relay handles on its own thread (blocked everywhere else).
fn relay_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGWINCH,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
    ] {
        set.add(s);
    }
    set
}

/// kiln's terminal in raw mode for as long as it lives (when stdin is a terminal).
pub struct RawTerminal(Option<nix::sys::termios::Termios>);

impl RawTerminal {
    pub fn enter() -> RawTerminal {
        use nix::sys::termios;
        let stdin = io::stdin();
        let Ok(saved) = termios::tcgetattr(&stdin) else {
            return RawTerminal(None);
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        if termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &raw).is_err() {
            return RawTerminal(None);
        }
        RawTerminal(Some(saved))
    }

    fn restore(&self) {
        if let Some(t) = &self.0 {
            let _ =
                nix::sys::termios::tcsetattr(io::stdin(), nix::sys::termios::SetArg::TCSANOW, t);
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        self.restore();
    }
}

enum Event {
    Output(Ended),
    Detach,
    Signal(i32),
}

/// Where the user's side of a relay goes: the bytes typed and the window size.
pub trait Sink: Send + 'static {
    fn input(&mut self, data: &[u8]) -> io::Result<()>;
    fn resize(&mut self, size: WinSize) -> io::Result<()>;
}

struct SocketSink(UnixStream);

impl Sink for SocketSink {
    fn input(&mut self, data: &[u8]) -> io::Result<()> {
        write_frame(&mut self.0, T_DATA, data)
    }
    fn resize(&mut self, size: WinSize) -> io::Result<()> {
        write_frame(&mut self.0, T_SIZE, &size_payload(size))
    }
}

/// The user's terminal relayed to `sink` while `output` (run on its own thread) copies the
/// other side to stdout and says how it ended. kiln's terminal is raw meanwhile, so Ctrl-C,
/// Ctrl-Z and Ctrl-\ are bytes for the terminal inside; SIGWINCH sends the new size; the
/// `detach` keys (if any) end the relay with `Ended::Detached`; SIGTERM, SIGHUP, SIGINT and
/// SIGQUIT sent to kiln end it too (the terminal restored), leaving the other side as it is.
pub fn relay(
    sink: impl Sink,
    output: impl FnOnce() -> Ended + Send + 'static,
    stdin_open: bool,
    detach: Option<Vec<u8>>,
) -> Result<Ended> {
    let sigs = relay_signals();
    // Blocked here before any thread starts, so every thread inherits it and only the signal
    // thread takes them.
    sigs.thread_block().context("blocking signals")?;
    // Raw only when the keys go to the container; else Ctrl-C stays kiln's (it ends the
    // client, the container runs on).
    let raw = if stdin_open {
        RawTerminal::enter()
    } else {
        RawTerminal(None)
    };
    let sink = Arc::new(Mutex::new(sink));
    if let Some(size) = tty::size_of(0) {
        if let Ok(mut s) = sink.lock() {
            let _ = s.resize(size);
        }
    }
    let (tx, rx) = mpsc::channel::<Event>();
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send(Event::Output(output()));
        });
    }
    {
        let tx = tx.clone();
        let sink = sink.clone();
        std::thread::spawn(move || loop {
            let Ok(sig) = sigs.wait() else { continue };
            if sig == nix::sys::signal::Signal::SIGWINCH {
                if let Some(size) = tty::size_of(0) {
                    if let Ok(mut s) = sink.lock() {
                        let _ = s.resize(size);
                    }
                }
            } else {
                let _ = tx.send(Event::Signal(sig as i32));
            }
        });
    }
    if stdin_open {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut stdin = io::stdin().lock();
            let mut buf = [0u8; 4096];
            let keys = detach.unwrap_or_default();
            let mut held: Vec<u8> = Vec::new();
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut out = Vec::with_capacity(n);
                for &b in &buf[..n] {
                    if keys.is_empty() {
                        out.push(b);
                        continue;
                    }
                    if b == keys[held.len()] {
                        held.push(b);
                        if held.len() == keys.len() {
                            if !out.is_empty() {
                                if let Ok(mut s) = sink.lock() {
                                    let _ = s.input(&out);
                                }
                            }
                            let _ = tx.send(Event::Detach);
                            return;
                        }
                        continue;
                    }
                    // Not the sequence after all: what was held back goes through.
                    out.append(&mut held);
                    if b == keys[0] {
                        held.push(b);
                    } else {
                        out.push(b);
                    }
                }
                if !out.is_empty() {
                    let ok = sink.lock().map(|mut s| s.input(&out).is_ok());
                    if !ok.unwrap_or(false) {
                        return;
                    }
                }
            }
        });
    }
    drop(tx);
    let ended = match rx.recv() {
        Ok(Event::Output(e)) => e,
        Ok(Event::Detach) => Ended::Detached,
        Ok(Event::Signal(sig)) => {
            raw.restore();
            drop(raw);
            return Ok(Ended::Exited(128 + sig));
        }
        Err(_) => Ended::Lost,
    };
    let _ = io::stdout().flush();
    drop(raw);
    Ok(ended)
}

/// A client of the monitor's terminal server: `kiln run -it` (right after the monitor started
/// the container) and `kiln attach`.
pub fn attach(container_dir: &Path, stdin_open: bool, detach: Option<Vec<u8>>) -> Result<Ended> {
    let conn = connect(container_dir, Duration::from_secs(5))?;
    let mut reader = conn.try_clone().context("attach: the socket")?;
    let output = move || {
        let mut stdout = io::stdout();
        loop {
            match read_frame(&mut reader) {
                Ok(Some((T_DATA, data))) => {
                    if stdout
                        .write_all(&data)
                        .and_then(|_| stdout.flush())
                        .is_err()
                    {
                        return Ended::Lost;
                    }
                }
                Ok(Some((T_EXIT, code))) if code.len() == 4 => {
                    return Ended::Exited(i32::from_be_bytes([code[0], code[1], code[2], code[3]]))
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return Ended::Lost,
            }
        }
    };
    relay(SocketSink(conn), output, stdin_open, detach)
}

/// `kiln attach C`: the user's terminal on a running `-t` container's terminal until it ends
/// (its exit code) or the detach keys are typed (`read escape sequence`, exit 1, as docker's).
pub fn attach_cmd(
    store: &crate::store::Store,
    rec: &super::state::ContainerRecord,
    detach_keys: Option<&str>,
    no_stdin: bool,
    sig_proxy: bool,
) -> Result<i32> {
    use super::state::Status;
    let keys = parse_detach_keys(detach_keys.unwrap_or(DEFAULT_DETACH_KEYS))?;
    if rec.status() != Status::Running || !rec.owner_alive() {
        bail!(
            "you cannot attach to a stopped container, start it first (kiln start {})",
            rec.name
        );
    }
    if !rec.config.tty {
        return attach_output(store, rec, sig_proxy);
    }
    let dir = super::lifecycle::container_dir(store, &rec.id);
    match attach(&dir, rec.config.interactive && !no_stdin, Some(keys))? {
        Ended::Exited(code) => Ok(code),
        Ended::Detached => {
            eprintln!("read escape sequence");
            Ok(1)
        }
        Ended::Lost => exit_code_after_loss(store, &rec.id),
    }
}

/// `kiln attach` of a container without a terminal: its output from now on (through its log,
/// line by line, stdout and stderr apart) until it ends, then its exit code; with `sig_proxy`
/// (docker's default) SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to kiln go to the container.
/// Its stdin is not attached (a detached container's stdin is closed).
fn attach_output(
    store: &crate::store::Store,
    rec: &super::state::ContainerRecord,
    sig_proxy: bool,
) -> Result<i32> {
    use super::state::{self, Status};
    let path = super::logs::log_path(&super::lifecycle::container_dir(store, &rec.id), &rec.id);
    let mut cursor = super::logs::LogCursor::at_end(&path);
    if sig_proxy {
        let sigs = relay_signals();
        sigs.thread_block().context("blocking signals")?;
        let target = rec.clone();
        std::thread::spawn(move || loop {
            if let Ok(sig) = sigs.wait() {
                if sig != nix::sys::signal::Signal::SIGWINCH {
                    let _ = super::signal(&target, sig as i32);
                }
            }
        });
    }
    loop {
        let running = state::get(store, &rec.id)?
            .is_some_and(|r| r.status() == Status::Running || r.owner_alive());
        let lines = super::logs::follow(&path, &mut cursor)?;
        let mut out = io::stdout().lock();
        let mut err = io::stderr().lock();
        for l in lines {
            let _ = if l.stream == "stderr" {
                err.write_all(&l.text)
            } else {
                out.write_all(&l.text)
            };
        }
        let _ = out.flush();
        if !running {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    exit_code_after_loss(store, &rec.id)
}

/// The exit code recorded for a container whose monitor closed the terminal without sending
/// one (it died, or the container was removed).
pub fn exit_code_after_loss(store: &crate::store::Store, id: &str) -> Result<i32> {
    match super::wait_stopped(store, id, Some(Duration::from_secs(5)))? {
        Some(r) if r.status() == super::state::Status::Exited => Ok(r.shown_exit_code()),
        _ => Ok(125),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_as_docker_parses_them() {
        assert_eq!(
            parse_detach_keys(DEFAULT_DETACH_KEYS).unwrap(),
            vec![16, 17]
        );
        assert_eq!(parse_detach_keys("ctrl-a,x").unwrap(), vec![1, b'x']);
        assert_eq!(parse_detach_keys("ctrl-@,ctrl-\\").unwrap(), vec![0, 28]);
        let e = parse_detach_keys("ctrl-1").unwrap_err().to_string();
        assert!(e.contains("invalid detach keys (ctrl-1)"), "{e}");
        assert!(parse_detach_keys("ab").is_err());
        assert!(parse_detach_keys("").is_err());
    }

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, T_DATA, b"hello").unwrap();
        write_frame(
            &mut buf,
            T_SIZE,
            &size_payload(WinSize { rows: 3, cols: 4 }),
        )
        .unwrap();
        let mut r = &buf[..];
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((T_DATA, b"hello".to_vec()))
        );
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((T_SIZE, vec![0, 3, 0, 4]))
        );
        assert_eq!(read_frame(&mut r).unwrap(), None);
    }
}
