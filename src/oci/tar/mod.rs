//! Layer tarballs: writing a layer from a change list or a tree, applying one (flattened, as an
//! overlay lowerdir, or as ADD's extraction) confined to its target (`layer`), and the guard that
//! refuses oversized PAX headers before the tar crate reads them (`targuard`).

pub mod layer;
pub mod targuard;
