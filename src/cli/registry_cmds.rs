//! `kiln pull`, `kiln push`, `kiln login`, `kiln logout`; see src/registry/.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use super::Globals;
use crate::registry::{
    self, auth, local::open_store, Platform, PushOptions, RegistryContext, RepoRef,
};

#[derive(Debug, Subcommand)]
pub enum RegistryCommands {
    /// Download an image from a registry into the store.
    Pull {
        /// NAME[:TAG|@DIGEST], e.g. busybox, 127.0.0.1:5000/app:1
        image: String,
        /// The platform to take from a multi-platform image (os/arch[/variant]; default this
        /// machine's). The name then stands for the index, with the platforms pulled so far.
        #[arg(long, conflicts_with = "all_platforms")]
        platform: Option<String>,
        /// Pull every platform of a multi-platform image.
        #[arg(long)]
        all_platforms: bool,
        /// No progress output; print only the digest.
        #[arg(short, long)]
        quiet: bool,
        /// Talk plain HTTP to this registry (HOST[:PORT]; repeatable). Loopback always is.
        #[arg(long = "insecure-registry", value_name = "HOST")]
        insecure_registries: Vec<String>,
    },
    /// Upload an image from the store to a registry.
    Push {
        /// The local image, NAME[:TAG].
        image: String,
        /// Where to push it, when not to IMAGE's own name.
        destination: Option<String>,
        /// Upload blobs larger than this many bytes in chunks of this size (default: one
        /// request per blob).
        #[arg(long, value_name = "BYTES")]
        chunk_size: Option<u64>,
        /// Talk plain HTTP to this registry (HOST[:PORT]; repeatable). Loopback always is.
        #[arg(long = "insecure-registry", value_name = "HOST")]
        insecure_registries: Vec<String>,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Save credentials for a registry (in ROOT/auth.json, mode 0600).
    Login {
        /// The registry host, e.g. ghcr.io or 127.0.0.1:5000 (default docker.io).
        registry: Option<String>,
        #[arg(short, long)]
        username: Option<String>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Talk plain HTTP to this registry (HOST[:PORT]; repeatable). Loopback always is.
        #[arg(long = "insecure-registry", value_name = "HOST")]
        insecure_registries: Vec<String>,
    },
    /// Forget the saved credentials for a registry.
    Logout { registry: Option<String> },
}

pub fn run(cmd: RegistryCommands, globals: &Globals) -> Result<i32> {
    let mut ctx = RegistryContext::load(globals.root.clone())?;
    match cmd {
        RegistryCommands::Pull {
            image,
            platform,
            all_platforms,
            quiet,
            insecure_registries,
        } => {
            ctx.config.insecure_registries.extend(insecure_registries);
            ctx.quiet = quiet;
            let r = RepoRef::parse(&image)?;
            let store = open_store(&globals.root)?;
            let platform = match &platform {
                Some(p) => Platform::parse(p)?,
                None => Platform::host(),
            };
            if all_platforms {
                let platforms = registry::remote_platforms(&ctx, &r)?;
                if !platforms.is_empty() {
                    for p in &platforms {
                        let pulled = registry::pull(&ctx, &store, &r, p)?;
                        crate::outln!(
                            "{}: pulled {p}, manifest {}",
                            pulled.name,
                            pulled.manifest_digest
                        )?;
                    }
                    return Ok(0);
                }
            }
            let pulled = registry::pull(&ctx, &store, &r, &platform)?;
            if quiet {
                crate::outln!("{}", pulled.manifest_digest)?;
            } else {
                crate::outln!(
                    "{}: pulled, digest {} (manifest {}, config {})",
                    pulled.name,
                    pulled.resolved_digest,
                    pulled.manifest_digest,
                    pulled.config_digest
                )?;
            }
            Ok(0)
        }
        RegistryCommands::Push {
            image,
            destination,
            chunk_size,
            quiet,
            insecure_registries,
        } => {
            ctx.config.insecure_registries.extend(insecure_registries);
            ctx.quiet = quiet;
            let dest = match &destination {
                Some(d) => RepoRef::parse(d)?,
                None => RepoRef::parse(&image)?,
            };
            let store = open_store(&globals.root)?;
            let opts = PushOptions { chunk_size, quiet };
            // A built image's layers are kept unpacked: compressed (once) for the push.
            let local = store.resolve(&image).with_context(|| {
                format!(
                    "push: image {image} is not in the local store; build, pull or tag it first"
                )
            })?;
            let manifest = crate::snapshot::blobs::export_manifest(
                &store,
                local.stored_digest(),
                crate::oci::compress::Compression::Gzip,
            )
            .with_context(|| format!("push: {image}"))?;
            let pushed = registry::push_digest(&ctx, &store, &manifest, &dest, &opts)?;
            registry::LocalStore::record_push(
                &store,
                &dest.to_string(),
                local.stored_digest(),
                &pushed.manifest_digest,
            )?;
            crate::outln!("{}", pushed.manifest_digest)?;
            Ok(0)
        }
        RegistryCommands::Login {
            registry,
            username,
            password_stdin,
            insecure_registries,
        } => {
            ctx.config.insecure_registries.extend(insecure_registries);
            let registry = registry.unwrap_or_else(|| "docker.io".to_string());
            let username = match username {
                Some(u) => u,
                None if std::io::stdin().is_terminal() && !password_stdin => prompt("Username: ")?,
                None => bail!("kiln login: give the user name with -u USER"),
            };
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .context("reading the password from standard input")?;
                line.trim_end_matches(['\n', '\r']).to_string()
            } else if std::io::stdin().is_terminal() {
                prompt_hidden("Password: ")?
            } else {
                bail!("kiln login: no terminal to ask for the password; pass it with --password-stdin")
            };
            if password.is_empty() {
                bail!("kiln login: the password is empty");
            }
            registry::login(&ctx, &registry, auth::Credentials { username, password })?;
            crate::outln!("Login Succeeded")?;
            Ok(0)
        }
        RegistryCommands::Logout { registry } => {
            let registry = registry.unwrap_or_else(|| "docker.io".to_string());
            if registry::logout(&ctx, &registry)? {
                crate::outln!("Removing login credentials for {registry}")?;
            } else {
                crate::outln!("Not logged in to {registry}")?;
            }
            Ok(0)
        }
    }
}

fn prompt(label: &str) -> Result<String> {
    write!(std::io::stderr(), "{label}")?;
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// Reads a line from the terminal with echo off.
fn prompt_hidden(label: &str) -> Result<String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).context("reading the terminal settings")?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet).context("turning off the terminal echo")?;
    let line = prompt(label);
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    crate::errln!();
    line
}
