//! The formats: layer tarballs (write, apply), compression, image config/manifest helpers, docker
//! and OCI archives (save/load), import. See docs/architecture.md.
pub mod change;
pub mod compress;
pub mod layer;
