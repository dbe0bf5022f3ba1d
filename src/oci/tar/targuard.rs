//! A bound the tar crate lacks: it reads PAX extended headers and GNU long names/links into
//! memory whole, whatever size their header claims (a small gzip bomb could make it allocate
//! gigabytes). [`TarGuard`] follows the tar stream's structure as it passes through and stops at
//! an extension header over [`MAX_EXTENSION`], before the tar crate reads it.

use std::io::{self, Read};

/// The largest PAX header or GNU long name/link accepted.
pub const MAX_EXTENSION: u64 = 1 << 20;

/// Passes a tar stream through unchanged, checking the size of each extension header.
pub struct TarGuard<R> {
    inner: R,
    /// The header block being handed out, and how much of it was.
    block: Vec<u8>,
    given: usize,
    /// Data and padding of the current member still to pass through.
    data_left: u64,
    /// The data of the current PAX header, kept to find a `size` record.
    pax: Option<Vec<u8>>,
    /// A `size` record for the next member.
    pax_size: Option<u64>,
    /// The next block is a GNU sparse extension block.
    sparse_ext: bool,
    /// Past the end-of-archive marker: everything passes through.
    ended: bool,
}

impl<R: Read> TarGuard<R> {
    pub fn new(inner: R) -> TarGuard<R> {
        TarGuard {
            inner,
            block: Vec::new(),
            given: 0,
            data_left: 0,
            pax: None,
            pax_size: None,
            sparse_ext: false,
            ended: false,
        }
    }

    /// Reads the next header block and sets up what follows it.
    fn next_block(&mut self) -> io::Result<()> {
        self.block.clear();
        self.given = 0;
        (&mut self.inner).take(512).read_to_end(&mut self.block)?;
        if self.block.len() < 512 {
            // A short archive: the tar reader reports it.
            self.ended = true;
            return Ok(());
        }
        if self.block.iter().all(|&b| b == 0) {
            self.ended = true;
            return Ok(());
        }
        if self.sparse_ext {
            self.sparse_ext = self.block[504] != 0;
            return Ok(());
        }
        let kind = self.block[156];
        let Some(mut size) = parse_numeric(&self.block[124..136]) else {
            self.ended = true; // the tar reader reports the bad header
            return Ok(());
        };
        match kind {
            b'x' | b'g' | b'L' | b'K' => {
                if size > MAX_EXTENSION {
                    return Err(io::Error::other(format!(
                        "a tar extension header ({}) of {size} bytes, over the {MAX_EXTENSION} \
                         kiln reads: refusing this archive",
                        match kind {
                            b'x' | b'g' => "PAX",
                            _ => "GNU long name",
                        }
                    )));
                }
                if kind == b'x' {
                    self.pax = Some(Vec::with_capacity(size as usize));
                }
            }
            _ => {
                if let Some(s) = self.pax_size.take() {
                    size = s;
                }
                if kind == b'S' {
                    self.sparse_ext = self.block[482] != 0;
                }
            }
        }
        self.data_left = size.div_ceil(512) * 512;
        if self.data_left == 0 {
            self.finish_member();
        }
        Ok(())
    }

    /// After a member's data: a PAX header's `size` record applies to the next member.
    fn finish_member(&mut self) {
        if let Some(pax) = self.pax.take() {
            self.pax_size = pax_size_record(&pax);
        }
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.given < self.block.len() {
                let n = (self.block.len() - self.given).min(buf.len());
                buf[..n].copy_from_slice(&self.block[self.given..self.given + n]);
                self.given += n;
                return Ok(n);
            }
            if self.ended {
                return self.inner.read(buf);
            }
            if self.data_left > 0 {
                let want = (buf.len() as u64).min(self.data_left) as usize;
                let n = self.inner.read(&mut buf[..want])?;
                if n == 0 {
                    return Ok(0);
                }
                self.data_left -= n as u64;
                if let Some(pax) = &mut self.pax {
                    pax.extend_from_slice(&buf[..n]);
                }
                if self.data_left == 0 {
                    self.finish_member();
                }
                return Ok(n);
            }
            self.next_block()?;
            if self.block.is_empty() {
                return Ok(0);
            }
        }
    }
}

/// A tar numeric field: octal (NUL/space padded) or GNU base-256.
fn parse_numeric(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let mut v: u64 = (field[0] & 0x7f) as u64;
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(b as u64)?;
        }
        return Some(v);
    }
    let text: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&text).ok()?, 8).ok()
}

/// The `size` record of PAX header data (`<len> size=<n>\n` records).
fn pax_size_record(mut data: &[u8]) -> Option<u64> {
    let mut size = None;
    while !data.is_empty() {
        let space = data.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&data[..space]).ok()?.parse().ok()?;
        if len <= space || len > data.len() {
            return size;
        }
        let record = &data[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(v) = record.strip_prefix(b"size=") {
            size = std::str::from_utf8(v).ok().and_then(|v| v.parse().ok());
        }
        data = &data[len..];
    }
    size
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(pax: &[(&str, &str)], name: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().map(|(k, v)| (*k, v.as_bytes())))
                .unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
        let long = "l/".repeat(200);
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        b.into_inner().unwrap()
    }

    fn names(r: impl Read) -> io::Result<Vec<(String, Vec<u8>)>> {
        let mut a = tar::Archive::new(r);
        let mut out = Vec::new();
        for e in a.entries()? {
            let mut e = e?;
            let mut data = Vec::new();
            e.read_to_end(&mut data)?;
            out.push((e.path()?.display().to_string(), data));
        }
        Ok(out)
    }

    #[test]
    fn passes_archives_through_unchanged() {
        let a = archive(
            &[("SCHILY.xattr.user.x", "1"), ("mtime", "1.5")],
            "f",
            b"data",
        );
        let mut copy = Vec::new();
        TarGuard::new(&a[..]).read_to_end(&mut copy).unwrap();
        assert_eq!(copy, a);
        assert_eq!(
            names(TarGuard::new(&a[..])).unwrap(),
            names(&a[..]).unwrap()
        );
    }

    #[test]
    fn refuses_oversized_extension_headers() {
        let big = "x".repeat(MAX_EXTENSION as usize + 1);
        let a = archive(&[("comment", &big)], "f", b"data");
        let err = names(TarGuard::new(&a[..])).unwrap_err().to_string();
        assert!(err.contains("a tar extension header (PAX)"), "{err}");
        let ok = archive(&[("comment", &"x".repeat(1000))], "f", b"data");
        assert_eq!(names(TarGuard::new(&ok[..])).unwrap().len(), 2);
    }

    #[test]
    fn reads_pax_size_records() {
        assert_eq!(pax_size_record(b"12 size=100\n9 a=bcd\n"), Some(100));
        assert_eq!(pax_size_record(b"9 a=bcd\n"), None);
        assert_eq!(parse_numeric(b"0000644\0    "), Some(0o644));
        assert_eq!(
            parse_numeric(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
            Some(256)
        );
    }
}
