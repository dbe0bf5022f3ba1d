//! oci: see docs/architecture.md for what this module owns.
pub mod change;
