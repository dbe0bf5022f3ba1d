//! Sources: where a build's files come from. Each kind of source is a sibling module that names
//! its content by a cache key (what the solver puts in a step's key) and brings that content onto
//! the machine as a filesystem when a step runs:
//!
//! | source | cache key | filesystem |
//! |---|---|---|
//! | `local`: the build context (`.dockerignore` applied, `contenthash`) | digest of the selected files' contents | the context directory |
//! | `image`: a FROM or `--from` image (store, else registry) | manifest digest | its layers |
//! | `http`: ADD of a URL | sha256 of what the URL serves (or `--checksum`) | the downloaded file |
//! | `git`: ADD of a repository | the commit the ref resolves to | a shallow checkout |
//! | `named`: `--build-context NAME=…` (an image, a layout, a directory, git, https) | an image's digest, or the selected files' contents | an image's layers, or a directory |
//!
//! `select` (what a COPY selects from a tree), `fsutil` (paths confined to a root, globs) and
//! `archive` (confined tar unpacking, compression sniffing) serve them and the COPY/ADD operation.
//! A new source (a named build context, a remote cache) is a new sibling module.

pub mod archive;
pub mod fsutil;
pub mod git;
pub mod http;
pub mod image;
pub mod local;
pub mod named;
pub mod select;
