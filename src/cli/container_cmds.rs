//! Container commands about a container's files and settings (docker's flags and output): cp,
//! diff, export, commit, create, rename, update. The work is in `crate::runner`.

use std::ffi::OsString;
use std::path::PathBuf;

use std::io::Write;

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
    /// Inspect changes to files or directories on a container's filesystem (A added, C changed,
    /// D deleted), against its image.
    Diff { container: String },
    /// Export a container's filesystem as a tar archive (to stdout unless -o).
    Export {
        /// Write to a file instead of stdout.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        container: String,
    },
    /// Create a new image from a container's changes.
    Commit {
        /// Author (e.g. "Jane Doe <jane@example.com>").
        #[arg(short = 'a', long)]
        author: Option<String>,
        /// Apply a Dockerfile instruction to the image (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL,
        /// USER, WORKDIR, VOLUME, STOPSIGNAL).
        #[arg(short = 'c', long = "change")]
        change: Vec<String>,
        /// Commit message.
        #[arg(short = 'm', long)]
        message: Option<String>,
        /// Pause the container during the commit (default true).
        #[arg(short = 'p', long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
        pause: bool,
        container: String,
        /// REPOSITORY[:TAG]
        name: Option<String>,
    },
    /// Create a new container (as `run` does, without starting it: `kiln start` runs it).
    #[command(disable_help_flag = true)]
    Create(Box<super::run_cmds::RunArgs>),
    /// Rename a container.
    Rename { container: String, new_name: String },
    /// Update the resource limits (live when running) or restart policy of containers.
    Update {
        /// CPU shares (relative weight).
        #[arg(short = 'c', long = "cpu-shares")]
        cpu_shares: Option<u64>,
        /// CPUs the container may use (0-3, 0,1).
        #[arg(long = "cpuset-cpus", value_name = "CPUS")]
        cpuset_cpus: Option<String>,
        /// Memory limit (e.g. 256m, 1g).
        #[arg(short = 'm', long = "memory")]
        memory: Option<String>,
        /// Maximum number of processes (-1 for unlimited).
        #[arg(long = "pids-limit", allow_negative_numbers = true)]
        pids_limit: Option<i64>,
        /// Restart policy: no, on-failure[:max-retries], always, unless-stopped.
        #[arg(long)]
        restart: Option<String>,
        #[arg(required = true)]
        containers: Vec<String>,
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
        ContainerCommands::Diff { container } => {
            let store = runner::open_store(root)?;
            let rec = state::find(&store, &container)?;
            for (kind, path) in runner::commit::diff(&store, &rec)? {
                crate::outln!("{} {}", kind.letter(), path.display())?;
            }
            Ok(0)
        }
        ContainerCommands::Export { output, container } => {
            let store = runner::open_store(root)?;
            let rec = state::find(&store, &container)?;
            match output {
                Some(path) => export_to_file(&store, &rec, &path)?,
                None => {
                    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                        bail!(
                            "cowardly refusing to write a tar archive to a terminal: use -o FILE \
                             or redirect the output"
                        );
                    }
                    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                    runner::commit::export(&store, &rec, &mut out)?;
                    out.flush()?;
                }
            }
            Ok(0)
        }
        ContainerCommands::Commit {
            author,
            change,
            message,
            pause,
            container,
            name,
        } => {
            let store = runner::open_store(root)?;
            let rec = state::find(&store, &container)?;
            let name = name
                .as_deref()
                .map(crate::reference::Reference::parse)
                .transpose()
                .context("kiln commit: the image name")?;
            let id = runner::commit::commit(
                &store,
                &rec,
                &runner::commit::CommitOptions {
                    name,
                    changes: change,
                    message,
                    author,
                    pause,
                },
            )?;
            crate::outln!("{id}")?;
            Ok(0)
        }
        ContainerCommands::Create(args) => {
            let opts = args.into_options()?;
            if opts.detach {
                bail!("kiln create: -d/--detach is for kiln run (a created container is started with kiln start)");
            }
            let id = runner::create_only(root, &opts).context("kiln create")?;
            crate::outln!("{id}")?;
            Ok(0)
        }
        ContainerCommands::Rename {
            container,
            new_name,
        } => {
            let store = runner::open_store(root)?;
            let rec = state::find(&store, &container)?;
            runner::settings::rename(&store, &rec, &new_name)?;
            Ok(0)
        }
        ContainerCommands::Update {
            cpu_shares,
            cpuset_cpus,
            memory,
            pids_limit,
            restart,
            containers,
        } => {
            let update = runner::settings::Update {
                cpu_shares,
                cpuset: cpuset_cpus,
                memory,
                pids_limit,
                restart,
            };
            let store = runner::open_store(root)?;
            let mut failed = false;
            for n in &containers {
                match state::find(&store, n)
                    .and_then(|rec| runner::settings::update(&store, &rec, &update))
                {
                    Ok(()) => crate::outln!("{n}")?,
                    Err(e) => {
                        crate::report::report_error(&e);
                        failed = true;
                    }
                }
            }
            Ok(i32::from(failed))
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

/// `export -o FILE`: a temp file beside FILE, synced and renamed into place.
fn export_to_file(
    store: &crate::store::Store,
    rec: &state::ContainerRecord,
    path: &std::path::Path,
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".kiln-export.")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    let mut out = std::io::BufWriter::new(tmp);
    runner::commit::export(store, rec, &mut out)?;
    let tmp = out.into_inner().map_err(|e| e.into_error())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
