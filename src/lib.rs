//! kiln: a daemonless, BuildKit-style Dockerfile-to-image builder with a minimal runner.
//!
//! The pipeline, and which module owns each step (docs/architecture.md has the long form):
//!
//! ```text
//! Dockerfile -> dockerfile (parse, expand, .dockerignore) -> build (graph, solver, cache)
//!   RUN -> sandbox on a snapshot;  COPY/ADD -> file operations on a snapshot
//!   snapshot (overlay upperdir) -> oci::layer (diff -> tar) -> store (blobs + SQLite)
//!   -> oci (save/load archives), registry (push/pull)
//! run: runner -> snapshot -> sandbox
//! ```

pub mod build;
pub mod cli;
pub mod config;
pub mod digest;
pub mod dockerfile;
pub mod oci;
pub mod reference;
pub mod registry;
pub mod runner;
pub mod sandbox;
pub mod snapshot;
pub mod store;
