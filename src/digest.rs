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

/// The state of a SHA-256 after a whole number of 64-byte blocks: what
/// [`ResumableSha256::resume`] continues from. A layer's tar keeps these at entry boundaries
/// (every entry starts at a multiple of 512 bytes), so a rebuild whose tar starts with the same
/// bytes hashes only what follows them (`oci::tar::layer::hash_layer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sha256State {
    pub h: [u32; 8],
    /// Bytes hashed so far, a multiple of 64.
    pub len: u64,
}

impl Sha256State {
    /// The state before any input.
    pub const INITIAL: Sha256State = Sha256State {
        h: [
            0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
            0x5be0cd19,
        ],
        len: 0,
    };

    /// 40 bytes: the eight words, then the length (little endian).
    pub fn to_bytes(&self) -> [u8; 40] {
        let mut out = [0u8; 40];
        for (i, w) in self.h.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        out[32..].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    /// What [`Sha256State::to_bytes`] wrote; None for anything else.
    pub fn from_bytes(b: &[u8]) -> Option<Sha256State> {
        if b.len() != 40 {
            return None;
        }
        let mut h = [0u32; 8];
        for (i, w) in h.iter_mut().enumerate() {
            *w = u32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().ok()?);
        }
        let len = u64::from_le_bytes(b[32..].try_into().ok()?);
        (len % 64 == 0).then_some(Sha256State { h, len })
    }
}

/// SHA-256 whose state can be taken at any 64-byte boundary and resumed later, in another
/// process ([`Sha256State`]); the block function is the `sha2` crate's (SHA extensions where the
/// CPU has them). Same digests as [`Sha256`].
#[derive(Clone)]
pub struct ResumableSha256 {
    state: Sha256State,
    buf: [u8; 64],
    buf_len: usize,
}

impl Default for ResumableSha256 {
    fn default() -> Self {
        ResumableSha256::resume(Sha256State::INITIAL)
    }
}

impl ResumableSha256 {
    pub fn new() -> ResumableSha256 {
        ResumableSha256::default()
    }

    pub fn resume(state: Sha256State) -> ResumableSha256 {
        ResumableSha256 {
            state,
            buf: [0; 64],
            buf_len: 0,
        }
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.state.len + self.buf_len as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The state, when the input so far is a whole number of blocks.
    pub fn state(&self) -> Option<Sha256State> {
        (self.buf_len == 0).then_some(self.state)
    }

    fn compress(&mut self, blocks: &[u8]) {
        use sha2::digest::generic_array::GenericArray;
        // The block function takes whole blocks as an array type: a batch is copied into one
        // (a copy costs a small fraction of the hashing).
        const BATCH: usize = 64;
        let mut batch = [GenericArray::<u8, sha2::digest::consts::U64>::default(); BATCH];
        for group in blocks.chunks(64 * BATCH) {
            let n = group.len() / 64;
            for (dst, src) in batch.iter_mut().zip(group.chunks_exact(64)) {
                dst.copy_from_slice(src);
            }
            sha2::compress256(&mut self.state.h, &batch[..n]);
        }
        self.state.len += blocks.len() as u64;
    }

    pub fn update(&mut self, mut data: &[u8]) {
        if self.buf_len > 0 {
            let take = (64 - self.buf_len).min(data.len());
            self.buf[self.buf_len..self.buf_len + take].copy_from_slice(&data[..take]);
            self.buf_len += take;
            data = &data[take..];
            if self.buf_len < 64 {
                return;
            }
            let block = self.buf;
            self.compress(&block);
            self.buf_len = 0;
        }
        let whole = data.len() - data.len() % 64;
        if whole > 0 {
            self.compress(&data[..whole]);
        }
        let rest = &data[whole..];
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buf_len = rest.len();
    }

    /// The 32-byte digest.
    pub fn finalize(mut self) -> [u8; 32] {
        let bits = self.len().wrapping_mul(8);
        let mut tail = [0u8; 128];
        tail[..self.buf_len].copy_from_slice(&self.buf[..self.buf_len]);
        tail[self.buf_len] = 0x80;
        let total = if self.buf_len < 56 { 64 } else { 128 };
        tail[total - 8..total].copy_from_slice(&bits.to_be_bytes());
        let len = self.state.len;
        self.compress(&tail[..total]);
        self.state.len = len;
        let mut out = [0u8; 32];
        for (i, w) in self.state.h.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
        }
        out
    }
}

impl io::Write for ResumableSha256 {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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
    fn resumable_sha256_matches_and_resumes() {
        // Lengths around the block and padding boundaries, fed in uneven pieces.
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for n in [
            0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000, 4096, 4097, 5000,
        ] {
            let input = &data[..n];
            let mut r = ResumableSha256::new();
            for piece in input.chunks(37) {
                r.update(piece);
            }
            assert_eq!(r.len(), n as u64);
            assert_eq!(r.finalize(), Sha256::digest(input), "length {n}");
        }
        // Saved at a block boundary, through bytes, and resumed.
        let mut r = ResumableSha256::new();
        r.update(&data[..1024]);
        let state = r.state().expect("a whole number of blocks");
        assert_eq!(state.len, 1024);
        let restored = Sha256State::from_bytes(&state.to_bytes()).unwrap();
        let mut again = ResumableSha256::resume(restored);
        again.update(&data[1024..]);
        assert_eq!(again.finalize(), Sha256::digest(&data));
        // Not at a boundary: no state to save; damaged bytes are refused.
        r.update(b"x");
        assert!(r.state().is_none());
        assert!(Sha256State::from_bytes(&[0u8; 39]).is_none());
        let mut odd = state.to_bytes();
        odd[32] = 1;
        assert!(Sha256State::from_bytes(&odd).is_none());
    }

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
