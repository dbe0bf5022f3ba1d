//! The formats: layer tarballs (write, apply), compression, image config/manifest helpers, docker
//! and OCI archives (save/load), import. See docs/architecture.md.
pub mod archive;
pub mod change;
pub mod compress;
pub mod config;
pub mod image;
pub mod import;
pub mod index;
pub mod progress;
pub mod tar;

pub use tar::{layer, targuard};
