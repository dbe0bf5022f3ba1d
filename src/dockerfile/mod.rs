//! dockerfile: see docs/architecture.md for what this module owns.
pub mod error;
pub mod expand;
pub mod raw;
