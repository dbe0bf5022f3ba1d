//! `kiln build --ssh default|ID[=SOCKET|KEY[,KEY...]]`, buildx's flag: the agents a
//! `RUN --mount=type=ssh` step may use. `default` alone is the agent of `$SSH_AUTH_SOCK`; a path
//! that is a socket is that agent; key files are loaded into an `ssh-agent` of the build's own
//! (started for the build, killed after it), so a key never leaves memory. Neither the socket
//! paths nor the keys reach a cache key, the history or a log.

use std::collections::HashMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// One `--ssh` flag, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSpec {
    pub id: String,
    /// Sockets or key files; empty for `$SSH_AUTH_SOCK`.
    pub paths: Vec<PathBuf>,
}

pub fn parse(spec: &str) -> Result<SshSpec> {
    let (id, paths) = match spec.split_once('=') {
        Some((id, p)) => (id, p.split(',').map(PathBuf::from).collect()),
        None => (spec, Vec::new()),
    };
    if id.is_empty() || id.contains(',') {
        bail!("--ssh {spec}: expected default|ID[=SOCKET|KEY[,KEY...]]");
    }
    Ok(SshSpec {
        id: id.to_string(),
        paths,
    })
}

/// The agents of a build: each id's socket. Agents kiln started end with it.
pub struct SshAgents {
    pub sockets: HashMap<String, PathBuf>,
    children: Vec<Child>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Drop for SshAgents {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl SshAgents {
    pub fn start(specs: &[String], tmp_dir: &Path) -> Result<SshAgents> {
        let mut agents = SshAgents {
            sockets: HashMap::new(),
            children: Vec::new(),
            _dirs: Vec::new(),
        };
        for raw in specs {
            let spec = parse(raw)?;
            if agents.sockets.contains_key(&spec.id) {
                bail!("--ssh {}: the id is given twice", spec.id);
            }
            let socket = agents
                .socket_for(&spec, tmp_dir)
                .with_context(|| format!("--ssh {}", spec.id))?;
            agents.sockets.insert(spec.id, socket);
        }
        Ok(agents)
    }

    fn socket_for(&mut self, spec: &SshSpec, tmp_dir: &Path) -> Result<PathBuf> {
        if spec.paths.is_empty() {
            let sock = std::env::var_os("SSH_AUTH_SOCK").ok_or_else(|| {
                anyhow!("SSH_AUTH_SOCK is not set: start an ssh-agent, or give the socket or key files (--ssh {}=PATH)", spec.id)
            })?;
            return check_socket(Path::new(&sock));
        }
        if let [one] = spec.paths.as_slice() {
            let meta = std::fs::metadata(one).with_context(|| format!("{}", one.display()))?;
            if meta.file_type().is_socket() {
                return Ok(one.clone());
            }
        }
        for p in &spec.paths {
            let meta = std::fs::metadata(p).with_context(|| format!("{}", p.display()))?;
            if !meta.is_file() {
                bail!("{}: neither an agent socket nor a key file", p.display());
            }
        }
        self.agent_with_keys(&spec.paths, tmp_dir)
    }

    /// An `ssh-agent` of the build's own, with the keys added.
    fn agent_with_keys(&mut self, keys: &[PathBuf], tmp_dir: &Path) -> Result<PathBuf> {
        let dir = tempfile::Builder::new()
            .prefix("ssh-keys.")
            .tempdir_in(tmp_dir)
            .context("making a directory for the ssh agent")?;
        let socket = dir.path().join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                anyhow!(
                    "starting ssh-agent for the key files: {e} (apt-get install openssh-client)"
                )
            })?;
        self.children.push(child);
        self._dirs.push(dir);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if Instant::now() > deadline {
                bail!("ssh-agent did not make its socket within 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for key in keys {
            let out = Command::new("ssh-add")
                .arg("-q")
                .arg(key)
                .env("SSH_AUTH_SOCK", &socket)
                .env("SSH_ASKPASS_REQUIRE", "never")
                .env_remove("DISPLAY")
                .stdin(Stdio::null())
                .output()
                .map_err(|e| anyhow!("running ssh-add: {e} (apt-get install openssh-client)"))?;
            if !out.status.success() {
                bail!(
                    "ssh-add {}: {} (a key with a passphrase needs an agent of your own: \
                     ssh-add it there and give --ssh ID alone)",
                    key.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(socket)
    }
}

fn check_socket(path: &Path) -> Result<PathBuf> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("SSH_AUTH_SOCK {}", path.display()))?;
    if !meta.file_type().is_socket() {
        bail!("SSH_AUTH_SOCK {}: not a socket", path.display());
    }
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_as_buildx_takes_them() {
        assert_eq!(
            parse("default").unwrap(),
            SshSpec {
                id: "default".into(),
                paths: vec![]
            }
        );
        assert_eq!(
            parse("gh=/k/a,/k/b").unwrap().paths,
            vec![PathBuf::from("/k/a"), PathBuf::from("/k/b")]
        );
        assert!(parse("=x").is_err());
    }
}
