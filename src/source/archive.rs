//! Unpacking tar archives for a tar build context and for ADD's auto-extraction, confined to the
//! target directory by `oci::layer::extract_archive` (the layer applier's confinement: `..`
//! refused, symlinks resolved inside the target), so an archive never writes outside it.

use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{Context, Result};

/// Unpacks an uncompressed tar stream into `dest`. With `owner`, every entry is owned by it
/// (ADD --chown); otherwise the archive's numeric owners are kept.
pub fn unpack_confined<R: Read>(reader: R, dest: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    crate::oci::layer::extract_archive(reader, dest, crate::oci::layer::ExtractOptions { owner })
        .context("unpacking the archive")
}

/// Unpacks a possibly compressed tar file (gzip, zstd, bzip2, xz) into `dest`.
pub fn unpack_file(path: &Path, dest: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (reader, _) = decompressing_reader(file)?;
    unpack_confined(reader, dest, owner)
}

/// Whether downloaded bytes are a tar archive, compressed or not (`ADD --unpack=true URL`).
pub fn is_archive_data(data: &[u8]) -> bool {
    match archive_kind(&data[..data.len().min(512)]) {
        None => false,
        Some(ArchiveKind::Tar) => true,
        Some(_) => {
            let Ok((mut reader, _)) = decompressing_reader(std::io::Cursor::new(data.to_vec()))
            else {
                return false;
            };
            let mut head = [0u8; 512];
            let n = read_up_to(&mut reader, &mut head);
            matches!(archive_kind(&head[..n]), Some(ArchiveKind::Tar))
        }
    }
}

/// Unpacks a possibly compressed tar held in memory into `dest`.
pub fn unpack_data(data: &[u8], dest: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    let (reader, _) = decompressing_reader(std::io::Cursor::new(data.to_vec()))?;
    unpack_confined(reader, dest, owner)
}

/// Whether ADD should unpack this local file: it is a tar archive, compressed or not. Reads only
/// the first bytes (and, for compressed files, the first block after decompression).
pub fn is_local_archive(path: &Path) -> bool {
    let mut head = [0u8; 512];
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let n = read_up_to(&mut file, &mut head);
    match archive_kind(&head[..n]) {
        None => false,
        Some(ArchiveKind::Tar) => true,
        Some(_) => {
            // A compressed file is an archive only when what it holds is a tar.
            let Ok(file) = std::fs::File::open(path) else {
                return false;
            };
            let Ok((mut reader, _)) = decompressing_reader(file) else {
                return false;
            };
            let n = read_up_to(&mut reader, &mut head);
            matches!(archive_kind(&head[..n]), Some(ArchiveKind::Tar))
        }
    }
}

fn read_up_to(reader: &mut dyn Read, buf: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    filled
}

/// The compression of an archive, sniffed from its first bytes; `None` when it is not an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    Tar,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

pub fn archive_kind(head: &[u8]) -> Option<ArchiveKind> {
    if head.starts_with(&[0x1f, 0x8b]) {
        return Some(ArchiveKind::Gzip);
    }
    if head.starts_with(b"BZh") {
        return Some(ArchiveKind::Bzip2);
    }
    if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        return Some(ArchiveKind::Xz);
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Some(ArchiveKind::Zstd);
    }
    if head.len() >= 262 && &head[257..262] == b"ustar" {
        return Some(ArchiveKind::Tar);
    }
    None
}

/// Wraps a reader in the decompressor its first bytes call for. bzip2 and xz go through the
/// system's `bzip2` and `xz` programs (Debian's bzip2 and xz-utils).
pub fn decompressing_reader<R: Read + Send + 'static>(
    reader: R,
) -> Result<(Box<dyn Read>, ArchiveKind)> {
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let head = std::io::BufRead::fill_buf(&mut reader)?.to_vec();
    let kind = archive_kind(&head).unwrap_or(ArchiveKind::Tar);
    let boxed: Box<dyn Read> = match kind {
        ArchiveKind::Tar => Box::new(reader),
        ArchiveKind::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        ArchiveKind::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
        ArchiveKind::Bzip2 => Box::new(ExternalDecoder::spawn("bzip2", reader)?),
        ArchiveKind::Xz => Box::new(ExternalDecoder::spawn("xz", reader)?),
    };
    Ok((boxed, kind))
}

/// A decompressor run as a child process (`PROGRAM -dc`), fed by a thread.
struct ExternalDecoder {
    program: &'static str,
    child: std::process::Child,
    stdout: std::process::ChildStdout,
    feeder: Option<std::thread::JoinHandle<()>>,
}

impl ExternalDecoder {
    fn spawn<R: Read + Send + 'static>(
        program: &'static str,
        mut input: R,
    ) -> Result<ExternalDecoder> {
        let mut child = std::process::Command::new(program)
            .arg("-dc")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| {
                format!("running {program} to decompress (install Debian's {program} package)")
            })?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow::anyhow!("{program}: no stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("{program}: no stdout"))?;
        let feeder = std::thread::spawn(move || {
            let _ = std::io::copy(&mut input, &mut stdin);
        });
        Ok(ExternalDecoder {
            program,
            child,
            stdout,
            feeder: Some(feeder),
        })
    }
}

impl Read for ExternalDecoder {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.stdout.read(buf)?;
        if n == 0 && !buf.is_empty() {
            if let Some(f) = self.feeder.take() {
                let _ = f.join();
            }
            let status = self.child.wait()?;
            if !status.success() {
                return Err(std::io::Error::other(format!(
                    "{} -dc failed: {status}",
                    self.program
                )));
            }
        }
        Ok(n)
    }
}

impl Drop for ExternalDecoder {
    fn drop(&mut self) {
        // Stop a decoder whose output is no longer read (is_local_archive reads one block).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            // set_path refuses `..`; write the raw name to build a hostile archive.
            let bytes = name.as_bytes();
            h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn entries_replace_paths_of_another_type() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("dir_to_file/sub")).unwrap();
        std::fs::write(d.join("dir_to_file/sub/y"), "y").unwrap();
        std::fs::write(d.join("file_to_dir"), "f").unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(4);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "dir_to_file", &b"file"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Directory);
        b.append_data(&mut h, "file_to_dir/", &b""[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, "file_to_dir/in", &b"in"[..]).unwrap();
        let data = b.into_inner().unwrap();
        unpack_confined(&data[..], d, None).unwrap();
        assert_eq!(std::fs::read(d.join("dir_to_file")).unwrap(), b"file");
        assert_eq!(std::fs::read(d.join("file_to_dir/in")).unwrap(), b"in");
    }

    #[test]
    fn traversal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        let data = tar_with(&[("ok.txt", b"fine"), ("../escape.txt", b"bad")]);
        let _ = unpack_confined(std::io::Cursor::new(data), &dest, None);
        assert!(!dir.path().join("escape.txt").exists());
        assert_eq!(std::fs::read(dest.join("ok.txt")).unwrap(), b"fine");
    }

    #[test]
    fn gzip_archives_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let data = tar_with(&[("a", b"x")]);
        let plain = dir.path().join("a.tar");
        std::fs::write(&plain, &data).unwrap();
        let gz = dir.path().join("a.tar.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &data).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        let text = dir.path().join("t.txt");
        std::fs::write(&text, "not an archive").unwrap();
        assert!(is_local_archive(&plain));
        assert!(is_local_archive(&gz));
        assert!(!is_local_archive(&text));
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        unpack_file(&gz, &out, None).unwrap();
        assert_eq!(std::fs::read(out.join("a")).unwrap(), b"x");
        for (program, ext) in [("xz", "xz"), ("bzip2", "bz2")] {
            let st = std::process::Command::new(program)
                .arg("-kf")
                .arg(&plain)
                .status();
            if !st.map(|s| s.success()).unwrap_or(false) {
                panic!("{program} is needed by this test (Debian package {program})");
            }
            let packed = dir.path().join(format!("a.tar.{ext}"));
            assert!(is_local_archive(&packed), "{program}");
            let out = dir.path().join(format!("out-{ext}"));
            std::fs::create_dir(&out).unwrap();
            unpack_file(&packed, &out, None).unwrap();
            assert_eq!(std::fs::read(out.join("a")).unwrap(), b"x");
        }
    }
}
