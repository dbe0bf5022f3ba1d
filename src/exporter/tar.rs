//! `--output type=tar`: the final filesystem, flattened, as one tarball (`-`: stdout).

use std::path::Path;

use anyhow::Result;

use crate::oci::layer::LayerRef;
use crate::store::Store;

pub fn export(store: &Store, layers: &[LayerRef], dest: &Path) -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("export.")
        .tempdir_in(store.tmp_dir())?;
    super::local::flatten_into(store, layers, tmp.path())?;
    let opts = crate::oci::layer::WriteOptions {
        source_date_epoch: None,
    };
    super::write_to_dest(dest, |w| {
        crate::oci::layer::write_tree_layer(tmp.path(), w, &opts)
    })
}
