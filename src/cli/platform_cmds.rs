//! Multi-platform commands: `kiln manifest create|inspect` (image indexes in the store) and
//! `kiln binfmt [--install]` (which platforms this machine runs, natively or through qemu).

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use super::Globals;
use crate::platform::Platform;
use crate::reference::Reference;
use crate::sandbox::binfmt::{self, Installed, Support};
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum PlatformCommands {
    /// Multi-platform images (image indexes): create one from per-platform images, inspect one.
    Manifest {
        #[command(subcommand)]
        command: ManifestCommand,
    },
    /// Show which platforms this machine runs (natively or emulated through binfmt_misc);
    /// `--install` registers the installed qemu emulators.
    Binfmt {
        /// Register qemu-user-static's emulators for these platforms (all it has when none are
        /// named) with the fix-binary flag, mounting binfmt_misc if needed. Needs root.
        #[arg(long)]
        install: bool,
        #[arg(value_name = "PLATFORM")]
        platforms: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ManifestCommand {
    /// Name an image index over IMAGE... (one image per platform, each config's platform as the
    /// entry's); the name then stands for every platform.
    Create {
        /// NAME[:TAG] for the index.
        name: String,
        /// The per-platform images (names, IDs or digests); an index contributes its manifests.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Print a stored image index (or a single manifest) as stored.
    Inspect { image: String },
}

pub fn run(cmd: PlatformCommands, globals: &Globals) -> Result<i32> {
    match cmd {
        PlatformCommands::Manifest {
            command: ManifestCommand::Create { name, images },
        } => {
            let store = Store::open(&globals.root)?;
            let name = Reference::parse(&name).context("manifest create: NAME")?;
            let digest = create_index(&store, &name, &images)?;
            crate::outln!("{digest}")?;
            Ok(0)
        }
        PlatformCommands::Manifest {
            command: ManifestCommand::Inspect { image },
        } => {
            let store = Store::open(&globals.root)?;
            let rec = store
                .resolve(&image)
                .with_context(|| format!("manifest inspect: {image}"))?;
            let bytes = store.read_blob(rec.stored_digest())?;
            let value: serde_json::Value = serde_json::from_slice(&bytes)?;
            crate::outln!("{}", serde_json::to_string_pretty(&value)?)?;
            Ok(0)
        }
        PlatformCommands::Binfmt { install, platforms } => {
            let wanted = platforms
                .iter()
                .map(|p| Platform::parse(p))
                .collect::<Result<Vec<_>>>()?;
            if install {
                let done = binfmt::install(&wanted)?;
                if done.is_empty() {
                    bail!(
                        "no qemu emulator is installed in {} (apt-get install qemu-user-static)",
                        binfmt::BINFMT_CONF_DIR
                    );
                }
                for (p, what) in done {
                    match what {
                        Installed::Registered(n) => crate::outln!("{p}: registered {n}")?,
                        Installed::AlreadyRegistered(n) => {
                            crate::outln!("{p}: {n} was registered already")?
                        }
                    }
                }
                return Ok(0);
            }
            print_support(&wanted)
        }
    }
}

/// `kiln manifest create`: the index over `images`' manifests, named `name`.
pub fn create_index(store: &Store, name: &Reference, images: &[String]) -> Result<String> {
    let mut manifests = Vec::new();
    for spec in images {
        let rec = store
            .resolve(spec)
            .with_context(|| format!("manifest create: {spec}"))?;
        match &rec.index {
            Some(index) => manifests.extend(
                index
                    .manifests
                    .iter()
                    .map(|m| (m.manifest_digest.clone(), Some(m.platform.clone()))),
            ),
            None => manifests.push((rec.manifest_digest.clone(), None)),
        }
    }
    let bytes = crate::oci::index::build_index(store, &manifests).context("manifest create")?;
    store
        .add_index_with_names(&bytes, std::slice::from_ref(name))
        .context("manifest create")
}

fn print_support(wanted: &[Platform]) -> Result<i32> {
    let mut platforms = vec![Platform::host()];
    if wanted.is_empty() {
        platforms.extend(binfmt::known_foreign_platforms());
    } else {
        platforms = wanted.to_vec();
    }
    let mut rows = Vec::new();
    for p in &platforms {
        let support = match binfmt::support(p) {
            Support::Native => "native".to_string(),
            Support::Emulated {
                entry,
                interpreter,
                fix_binary,
            } => format!(
                "emulated ({entry}: {interpreter}{})",
                if fix_binary {
                    ""
                } else {
                    "; lacks the F flag: not usable in containers"
                }
            ),
            Support::Unavailable(why) => {
                let hint = match binfmt::installable_in(
                    std::path::Path::new(binfmt::BINFMT_CONF_DIR),
                    p,
                ) {
                    Ok(Some(_)) => format!(" (kiln binfmt --install {p})"),
                    _ => " (no qemu emulator installed)".to_string(),
                };
                format!("unavailable: {why}{hint}")
            }
        };
        rows.push(vec![p.to_string(), support]);
    }
    let mut out = crate::report::stdout();
    super::table::write(&mut out, &["PLATFORM", "SUPPORT"], &rows)?;
    Ok(0)
}
