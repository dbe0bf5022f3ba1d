//! The socket a `RUN --mount=type=ssh` step sees: a unix socket of its own, owned and moded as
//! the mount says (`uid`, `gid`, `mode`, default 0600), in a private directory outside the
//! rootfs, that relays each connection to the agent `kiln build --ssh` gave. The container never
//! sees the host's socket path, no key is ever written anywhere, and the socket is bound in, so
//! nothing of it reaches the layer.

use std::io::ErrorKind;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

/// A relaying socket, served until dropped.
pub struct AgentProxy {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AgentProxy {
    /// Listens on a new socket under `tmp_parent` that relays to `upstream`.
    pub fn start(
        tmp_parent: &Path,
        upstream: &Path,
        (uid, gid): (u32, u32),
        mode: u32,
    ) -> Result<AgentProxy> {
        let dir = tempfile::Builder::new()
            .prefix("ssh-agent.")
            .tempdir_in(tmp_parent)
            .context("making the ssh agent socket's directory")?;
        let socket = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&socket)
            .with_context(|| format!("listening on {}", socket.display()))?;
        std::os::unix::fs::chown(&socket, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", socket.display()))?;
        std::fs::set_permissions(
            &socket,
            std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777),
        )
        .with_context(|| format!("chmod {}", socket.display()))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, upstream) = (stop.clone(), upstream.to_path_buf());
        let thread = std::thread::spawn(move || serve(listener, &upstream, &stop2));
        Ok(AgentProxy {
            socket,
            stop,
            _dir: dir,
            thread: Some(thread),
        })
    }

    /// The socket to bind into the container.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for AgentProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: UnixListener, upstream: &Path, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let _ = client.set_nonblocking(false);
                if let Ok(agent) = UnixStream::connect(upstream) {
                    relay(client, agent);
                }
                // An agent that is gone: the client sees the connection close.
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Copies both ways until either side closes (each direction on its own thread, so a
/// long-lived client such as `ssh` keeps its connection as long as it wants).
fn relay(client: UnixStream, agent: UnixStream) {
    let (Ok(client2), Ok(agent2)) = (client.try_clone(), agent.try_clone()) else {
        return;
    };
    let pump = |mut from: UnixStream, mut to: UnixStream| {
        move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        }
    };
    std::thread::spawn(pump(client, agent2));
    std::thread::spawn(pump(agent, client2));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn relays_to_the_upstream_socket_with_its_own_owner_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let upstream = dir.path().join("up.sock");
        let agent = UnixListener::bind(&upstream).unwrap();
        std::thread::spawn(move || {
            let (mut c, _) = agent.accept().unwrap();
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).unwrap();
            c.write_all(&buf.map(|b| b.to_ascii_uppercase())).unwrap();
        });
        let me = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        let proxy = AgentProxy::start(dir.path(), &upstream, me, 0o640).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(proxy.socket())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
        let mut c = UnixStream::connect(proxy.socket()).unwrap();
        c.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"PING");
        let path = proxy.socket().to_path_buf();
        drop(proxy);
        assert!(!path.exists());
    }
}
