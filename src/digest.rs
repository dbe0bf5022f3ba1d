//! SHA-256, the hash behind every content address kiln writes or checks (blobs, DiffIDs, cache
//! keys, the build context). It is on the hot path of load, pull and context hashing, so it uses
//! ring's assembly implementation: on CPUs without SHA extensions (like the 2-core VMs kiln is
//! benchmarked on) it runs about twice as fast as the portable `sha2` crate.
//!
//! The API mirrors `sha2::Sha256` (`new`, `update`, `finalize`, `digest`), so call sites read the
//! same.

use std::io;

/// An incremental SHA-256 hasher.
#[derive(Clone)]
pub struct Sha256(ring::digest::Context);

impl Sha256 {
    pub fn new() -> Sha256 {
        Sha256(ring::digest::Context::new(&ring::digest::SHA256))
    }

    pub fn update(&mut self, data: impl AsRef<[u8]>) {
        self.0.update(data.as_ref());
    }

    /// The 32-byte digest.
    pub fn finalize(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }

    /// The digest in the OCI form `sha256:<64 hex digits>`.
    pub fn finalize_oci(self) -> String {
        format!("sha256:{}", hex::encode(self.finalize()))
    }

    /// The digest of `data` in one call.
    pub fn digest(data: impl AsRef<[u8]>) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(data);
        h.finalize()
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Sha256::new()
    }
}

impl io::Write for Sha256 {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    h.finalize_oci()
}

/// Checks that `digest` is `sha256:<64 lowercase hex>` and returns the hex part.
pub fn digest_hex(digest: &str) -> anyhow::Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(hex)
        }
        _ => anyhow::bail!("invalid digest {digest:?}: expected sha256:<64 lowercase hex digits>"),
    }
}

/// JSON with object keys sorted (serde_json's map is ordered), so that a config holding hash
/// maps (labels) always serialises to the same bytes and the same digest.
pub fn canonical_json(value: &impl serde::Serialize) -> anyhow::Result<Vec<u8>> {
    let value =
        serde_json::to_value(value).map_err(|e| anyhow::anyhow!("serialising JSON: {e}"))?;
    Ok(serde_json::to_vec(&value)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut h = Sha256::new();
        h.update(b"a");
        h.update("bc");
        assert_eq!(
            hex::encode(h.finalize()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
