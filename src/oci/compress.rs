//! Layer compression: detection by magic bytes on read; gzip (flate2 on zlib-rs, in parallel
//! across cores) and zstd on write; the uncompressed DiffID and the compressed digest computed
//! in the same pass.
//!
//! Parallel gzip: the uncompressed stream is cut into fixed 1 MiB chunks and each chunk becomes
//! an independent gzip member (RFC 1952 allows a file of several members; Go's gzip reader,
//! zlib's gunzip and flate2's MultiGzDecoder read them as one stream). The chunk size does not
//! depend on the number of cores, so the output, and its digest, is the same on every machine.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::digest::Sha256;
use anyhow::{bail, Result};

/// Uncompressed bytes per gzip member.
const GZIP_CHUNK: usize = 1 << 20;
/// Default gzip level (gzip's own default).
pub const DEFAULT_GZIP_LEVEL: u32 = 6;
/// gzip's fastest level, for layer blobs kiln makes from its own builds (at export): about half
/// the CPU of level 6 for a few percent larger blobs on typical trees. Deterministic like any
/// fixed level, and the level builds wrote their blobs with before layers were kept unpacked, so
/// an export gives the blob digests an older kiln's build gave.
pub const FAST_GZIP_LEVEL: u32 = 1;
/// Default zstd level (zstd's own default).
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The OCI layer media type for a tar compressed this way.
    pub fn layer_media_type(self) -> oci_spec::image::MediaType {
        use oci_spec::image::MediaType;
        match self {
            Compression::None => MediaType::ImageLayer,
            Compression::Gzip => MediaType::ImageLayerGzip,
            Compression::Zstd => MediaType::ImageLayerZstd,
        }
    }

    /// Parses `gzip`, `zstd`, `none` (the `--compression` flag).
    pub fn parse(s: &str) -> Result<Compression> {
        Ok(match s {
            "gzip" => Compression::Gzip,
            "zstd" => Compression::Zstd,
            "none" | "uncompressed" => Compression::None,
            other => bail!("unknown compression {other:?}: expected gzip, zstd or none"),
        })
    }

    /// Recognises the stream's compression from its first bytes.
    pub fn detect(magic: &[u8]) -> Compression {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Wraps `reader` so that it yields the decompressed stream, whatever the compression (gzip
/// with any number of members, zstd, or none). Returns the compression found.
pub fn decompress<'a>(reader: impl Read + 'a) -> io::Result<(Compression, Box<dyn Read + 'a>)> {
    let mut buffered = BufReader::with_capacity(256 * 1024, reader);
    let magic = buffered.fill_buf()?;
    let compression = Compression::detect(magic);
    let out: Box<dyn Read + 'a> = match compression {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?),
        Compression::None => Box::new(buffered),
    };
    Ok((compression, out))
}

/// The digests of one compressed layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDigests {
    /// `sha256:` of the uncompressed tar (empty after [`Compressor::without_diff_id`]).
    pub diff_id: String,
    pub uncompressed_size: u64,
    /// `sha256:` of the bytes written out.
    pub digest: String,
    pub size: u64,
}

/// A writer that hashes and counts what goes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum Encoder<W: Write> {
    None(HashingWriter<W>),
    Gzip(ParallelGzip<HashingWriter<W>>),
    Zstd(zstd::stream::write::Encoder<'static, HashingWriter<W>>),
}

/// Compresses what is written to it into `out`, hashing both sides. Call [`Compressor::finish`].
pub struct Compressor<W: Write> {
    encoder: Encoder<W>,
    /// None when the caller knows the DiffID already (recompressing a stored layer).
    diff_hasher: Option<DiffHasher>,
    uncompressed_size: u64,
}

impl<W: Write> Compressor<W> {
    pub fn new(out: W, compression: Compression) -> io::Result<Self> {
        Self::with_gzip_level(out, compression, DEFAULT_GZIP_LEVEL)
    }

    /// Like [`Compressor::new`], with gzip at `gzip_level` (1 fastest ..= 9 smallest); other
    /// compressions are unaffected.
    pub fn with_gzip_level(out: W, compression: Compression, gzip_level: u32) -> io::Result<Self> {
        let out = HashingWriter {
            inner: out,
            hasher: Sha256::new(),
            size: 0,
        };
        let encoder = match compression {
            Compression::None => Encoder::None(out),
            Compression::Gzip => Encoder::Gzip(ParallelGzip::new(out, gzip_level.clamp(1, 9))),
            Compression::Zstd => {
                Encoder::Zstd(zstd::stream::write::Encoder::new(out, DEFAULT_ZSTD_LEVEL)?)
            }
        };
        Ok(Compressor {
            encoder,
            diff_hasher: Some(DiffHasher::default()),
            uncompressed_size: 0,
        })
    }

    /// Skips hashing the uncompressed stream (saves a SHA-256 pass when the DiffID is known);
    /// [`LayerDigests::diff_id`] is then empty.
    pub fn without_diff_id(mut self) -> Self {
        self.diff_hasher = None;
        self
    }

    /// Flushes everything and returns the output with the digests.
    pub fn finish(self) -> io::Result<(W, LayerDigests)> {
        let out = match self.encoder {
            Encoder::None(w) => w,
            Encoder::Gzip(g) => g.finish()?,
            Encoder::Zstd(z) => z.finish()?,
        };
        let diff_id = match self.diff_hasher {
            Some(h) => format!("sha256:{}", hex::encode(h.finalize()?)),
            None => String::new(),
        };
        let digests = LayerDigests {
            diff_id,
            uncompressed_size: self.uncompressed_size,
            digest: format!("sha256:{}", hex::encode(out.hasher.finalize())),
            size: out.size,
        };
        Ok((out.inner, digests))
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.encoder {
            Encoder::None(w) => w.write(buf)?,
            Encoder::Gzip(g) => g.write(buf)?,
            Encoder::Zstd(z) => z.write(buf)?,
        };
        if let Some(h) = &mut self.diff_hasher {
            h.update(&buf[..n]);
        }
        self.uncompressed_size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The DiffID's SHA-256 of the uncompressed stream. Past the first chunk it runs on a thread of
/// its own, fed whole chunks, so it overlaps with producing the tar and compressing it: inline it
/// was the largest single cost of writing a big layer. Small layers are hashed inline.
#[derive(Default)]
struct DiffHasher {
    buf: Vec<u8>,
    worker: Option<(SyncSender<Vec<u8>>, JoinHandle<Sha256>)>,
}

impl DiffHasher {
    fn update(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= GZIP_CHUNK {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(2 * GZIP_CHUNK));
            let (tx, _) = self.worker.get_or_insert_with(|| {
                let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(4);
                let handle = std::thread::spawn(move || {
                    let mut hasher = Sha256::new();
                    for chunk in rx {
                        hasher.update(&chunk);
                    }
                    hasher
                });
                (tx, handle)
            });
            // A send fails only when the thread died; `finalize` reports that.
            let _ = tx.send(chunk);
        }
    }

    fn finalize(self) -> io::Result<[u8; 32]> {
        match self.worker {
            None => {
                let mut hasher = Sha256::new();
                hasher.update(&self.buf);
                Ok(hasher.finalize())
            }
            Some((tx, handle)) => {
                let sent = self.buf.is_empty() || tx.send(self.buf).is_ok();
                drop(tx);
                let hasher = handle
                    .join()
                    .map_err(|_| io::Error::other("the layer hashing thread failed"))?;
                if !sent {
                    return Err(io::Error::other("the layer hashing thread stopped early"));
                }
                Ok(hasher.finalize())
            }
        }
    }
}

/// A sink that computes a layer's DiffID and uncompressed size from the tar written to it, and
/// writes nothing anywhere (a build keeps its layers unpacked: see `snapshot::built`). The hash
/// runs on its own thread past the first chunk, as [`Compressor`]'s does.
#[derive(Default)]
pub struct DiffIdWriter {
    hasher: DiffHasher,
    size: u64,
}

impl DiffIdWriter {
    pub fn new() -> DiffIdWriter {
        DiffIdWriter::default()
    }

    /// The DiffID (`sha256:<hex>`) and the number of bytes written.
    pub fn finish(self) -> io::Result<(String, u64)> {
        let hash = self.hasher.finalize()?;
        Ok((format!("sha256:{}", hex::encode(hash)), self.size))
    }
}

impl Write for DiffIdWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.size += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Compresses all of `input` into `out`.
pub fn compress(
    mut input: impl Read,
    out: impl Write,
    compression: Compression,
) -> io::Result<LayerDigests> {
    let mut c = Compressor::new(out, compression)?;
    io::copy(&mut input, &mut c)?;
    Ok(c.finish()?.1)
}

type Job = (Vec<u8>, SyncSender<io::Result<Vec<u8>>>);

/// pigz-like gzip: 1 MiB chunks compressed as independent members by a pool of threads (started
/// only once a second chunk arrives, so small layers cost no threads), written in order.
struct ParallelGzip<W: Write> {
    out: W,
    level: u32,
    buf: Vec<u8>,
    members: usize,
    pool: Option<Pool>,
    pending: VecDeque<Receiver<io::Result<Vec<u8>>>>,
}

struct Pool {
    jobs: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    max_in_flight: usize,
}

fn gzip_member(data: &[u8], level: u32) -> io::Result<Vec<u8>> {
    let mut enc = flate2::GzBuilder::new().mtime(0).write(
        Vec::with_capacity(data.len() / 3 + 64),
        flate2::Compression::new(level),
    );
    enc.write_all(data)?;
    enc.finish()
}

impl<W: Write> ParallelGzip<W> {
    fn new(out: W, level: u32) -> Self {
        ParallelGzip {
            out,
            level,
            buf: Vec::with_capacity(GZIP_CHUNK),
            members: 0,
            pool: None,
            pending: VecDeque::new(),
        }
    }

    fn start_pool(&mut self) -> &mut Pool {
        let level = self.level;
        self.pool.get_or_insert_with(|| {
            let threads = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .clamp(1, 16);
            let (tx, rx) = mpsc::sync_channel::<Job>(threads * 2);
            let rx = Arc::new(Mutex::new(rx));
            let workers = (0..threads)
                .map(|_| {
                    let rx = Arc::clone(&rx);
                    std::thread::spawn(move || loop {
                        let job = match rx.lock() {
                            Ok(guard) => guard.recv(),
                            Err(_) => return,
                        };
                        let Ok((data, reply)) = job else { return };
                        let _ = reply.send(gzip_member(&data, level));
                    })
                })
                .collect();
            Pool {
                jobs: Some(tx),
                workers,
                max_in_flight: threads * 2 + 1,
            }
        })
    }

    /// Hands the full buffer to the pool (or compresses it here for the first chunk, which
    /// stays inline until we know the stream is longer than one chunk).
    fn dispatch(&mut self) -> io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(GZIP_CHUNK));
        self.members += 1;
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        let pool = self.start_pool();
        let max = pool.max_in_flight;
        pool.jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("gzip pool closed"))?
            .send((data, reply_tx))
            .map_err(|_| io::Error::other("gzip worker died"))?;
        self.pending.push_back(reply_rx);
        while self.pending.len() >= max {
            self.write_oldest()?;
        }
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        if let Some(rx) = self.pending.pop_front() {
            let member = rx
                .recv()
                .map_err(|_| io::Error::other("gzip worker died"))??;
            self.out.write_all(&member)?;
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<W> {
        if self.pool.is_none() {
            // Zero or one chunk: one member, no threads.
            let member = gzip_member(&self.buf, self.level)?;
            self.out.write_all(&member)?;
        } else {
            if !self.buf.is_empty() {
                self.dispatch()?;
            }
            while !self.pending.is_empty() {
                self.write_oldest()?;
            }
        }
        if let Some(mut pool) = self.pool.take() {
            pool.jobs = None;
            for w in pool.workers.drain(..) {
                let _ = w.join();
            }
        }
        Ok(self.out)
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = GZIP_CHUNK - self.buf.len();
        if room == 0 {
            self.dispatch()?;
            return self.write(buf);
        }
        let n = room.min(buf.len());
        self.buf.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i / 7919) as u8)
            .collect()
    }

    #[test]
    fn round_trips_every_compression_and_size() {
        for len in [0, 10, GZIP_CHUNK, GZIP_CHUNK + 1, 5 * GZIP_CHUNK + 17] {
            let data = sample(len);
            for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
                let mut out = Vec::new();
                let d = compress(&data[..], &mut out, c).unwrap();
                assert_eq!(d.uncompressed_size, len as u64);
                assert_eq!(d.size, out.len() as u64);
                assert_eq!(d.diff_id, crate::digest::sha256_digest(&data));
                assert_eq!(d.digest, crate::digest::sha256_digest(&out));
                let (found, mut r) = decompress(&out[..]).unwrap();
                if len > 0 || c != Compression::None {
                    assert_eq!(found, c);
                }
                let mut back = Vec::new();
                r.read_to_end(&mut back).unwrap();
                assert_eq!(back, data, "{c:?} {len}");
            }
        }
    }

    #[test]
    fn gzip_output_is_deterministic() {
        let data = sample(3 * GZIP_CHUNK + 5);
        let a = compress(&data[..], io::sink(), Compression::Gzip).unwrap();
        let b = compress(&data[..], io::sink(), Compression::Gzip).unwrap();
        assert_eq!(a, b);
    }
}
