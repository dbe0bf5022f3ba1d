//! kiln: a daemonless, BuildKit-style Dockerfile-to-image builder with a minimal runner.
//!
//! The pipeline, and which module owns each step (docs/architecture.md has the long form):
//!
//! ```text
//! Dockerfile -> dockerfile (parse, expand, stages) -> solver (graph, plan + cache keys, schedule)
//!   sources: source::{local, image, http, git}    ops: ops::run (sandbox), ops::file (COPY/ADD)
//!   snapshot (overlay upperdir) -> oci::layer (diff -> tar) -> store (blobs + SQLite)
//!   -> exporter::{image, archive, local, tar, registry}
//! engine wires them for `kiln build`; run: runner -> snapshot -> sandbox
//! ```

pub mod cleanup;
pub mod cli;
pub mod config;
pub mod digest;
pub mod dockerfile;
pub mod engine;
pub mod exporter;
pub mod oci;
pub mod ops;
pub mod owner;
pub mod platform;
pub mod reference;
pub mod registry;
pub mod report;
pub mod rootless;
pub mod runner;
pub mod sandbox;
pub mod snapshot;
pub mod solver;
pub mod source;
pub mod store;
