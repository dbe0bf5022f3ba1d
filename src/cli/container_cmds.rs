//! Container commands about a container's files and settings (docker's flags and output): cp,
//! diff, export, commit, create, rename, update. The work is in `crate::runner`.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use super::Globals;
use crate::runner::{self, copy, state};

#[derive(Debug, Subcommand)]
pub enum ContainerCommands {
    /// Copy files between a container and the host: CONTAINER:SRC DEST, SRC CONTAINER:DEST
    /// (`-` for a tar stream on stdin or stdout).
    Cp {
        /// Archive mode: keep the files' uid/gid.
        #[arg(short = 'a', long)]
        archive: bool,
        /// Follow a symlink that SRC is.
        #[arg(short = 'L', long = "follow-link")]
        follow_link: bool,
        /// Print nothing but errors (kiln prints no progress anyway).
        #[arg(short = 'q', long)]
        quiet: bool,
        src: String,
        dest: String,
    },
    /// Internal: the container side of `kiln cp`, chrooted into the container's root.
    #[command(name = "container-cp-helper", hide = true)]
    ContainerCpHelper {
        #[arg(long)]
        chroot: PathBuf,
        #[command(subcommand)]
        work: CpHelperWork,
    },
}

#[derive(Debug, Subcommand)]
pub enum CpHelperWork {
    /// Write PATH as a tar stream on stdout.
    Archive {
        path: String,
        #[arg(long)]
        name: OsString,
        #[arg(long)]
        follow: bool,
    },
    /// Extract the tar stream on stdin into DIR.
    Extract {
        dir: String,
        #[arg(long)]
        owner: Option<String>,
    },
}

pub fn run(cmd: ContainerCommands, globals: &Globals) -> Result<i32> {
    let root = globals.root.as_path();
    match cmd {
        ContainerCommands::Cp {
            archive,
            follow_link,
            quiet: _,
            src,
            dest,
        } => {
            let src = copy::Endpoint::parse(&src)?;
            let dest = copy::Endpoint::parse(&dest)?;
            let store = runner::open_store(root)?;
            copy::cp(
                &store,
                &src,
                &dest,
                copy::CopyOptions {
                    archive,
                    follow_link,
                },
            )?;
            Ok(0)
        }
        ContainerCommands::ContainerCpHelper { chroot, work } => {
            let work = match work {
                CpHelperWork::Archive { path, name, follow } => {
                    copy::HelperWork::Archive { path, name, follow }
                }
                CpHelperWork::Extract { dir, owner } => copy::HelperWork::Extract {
                    dir,
                    owner: owner.as_deref().map(parse_owner).transpose()?,
                },
            };
            copy::helper_main(&chroot, work)?;
            Ok(0)
        }
    }
}

fn parse_owner(s: &str) -> Result<(u32, u32)> {
    let (u, g) = s.split_once(':').context("--owner UID:GID")?;
    Ok((u.parse()?, g.parse()?))
}

#[allow(dead_code)]
fn find(store: &crate::store::Store, name: &str) -> Result<state::ContainerRecord> {
    state::find(store, name)
}

#[allow(dead_code)]
fn unused() -> Result<()> {
    bail!("")
}
