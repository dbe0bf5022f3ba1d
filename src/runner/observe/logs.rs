//! Container logs in docker's json-file format (`containers/<id>/<id>-json.log`): one JSON object
//! per line, `{"log":"text\n","stream":"stdout","time":"RFC 3339"}`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Lines longer than this are split, as docker does.
const MAX_LINE: usize = 16 * 1024;

pub fn log_path(container_dir: &Path, id: &str) -> PathBuf {
    container_dir.join(format!("{id}-json.log"))
}

#[derive(Serialize, Deserialize)]
struct Entry<'a> {
    log: std::borrow::Cow<'a, str>,
    stream: std::borrow::Cow<'a, str>,
    time: String,
}

/// Appends entries to a container's log; shared by the stdout and stderr copiers.
#[derive(Clone)]
pub struct LogWriter {
    file: Arc<Mutex<File>>,
}

impl LogWriter {
    pub fn open(path: &Path) -> Result<LogWriter> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening the log {}", path.display()))?;
        Ok(LogWriter {
            file: Arc::new(Mutex::new(file)),
        })
    }

    fn write_line(&self, stream: &str, line: &[u8]) {
        let entry = Entry {
            log: String::from_utf8_lossy(line),
            stream: stream.into(),
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        };
        if let Ok(mut json) = serde_json::to_vec(&entry) {
            json.push(b'\n');
            if let Ok(mut f) = self.file.lock() {
                let _ = f.write_all(&json);
            }
        }
    }

    /// Copies `from` to the log as `stream` lines (and to `tee` as it comes) until EOF.
    pub fn copy_from(
        &self,
        mut from: File,
        stream: &'static str,
        mut tee: Option<Box<dyn Write + Send>>,
    ) -> JoinHandle<()> {
        let log = self.clone();
        std::thread::spawn(move || {
            let mut pending: Vec<u8> = Vec::new();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                if let Some(t) = tee.as_mut() {
                    if t.write_all(&buf[..n]).and_then(|_| t.flush()).is_err() {
                        tee = None;
                    }
                }
                pending.extend_from_slice(&buf[..n]);
                let mut start = 0;
                while let Some(pos) = pending[start..].iter().position(|&b| b == b'\n') {
                    log.write_line(stream, &pending[start..start + pos + 1]);
                    start += pos + 1;
                }
                pending.drain(..start);
                while pending.len() >= MAX_LINE {
                    log.write_line(stream, &pending[..MAX_LINE]);
                    pending.drain(..MAX_LINE);
                }
            }
            if !pending.is_empty() {
                log.write_line(stream, &pending);
            }
        })
    }
}

/// One parsed log line.
pub struct LogLine {
    pub stream: String,
    pub text: Vec<u8>,
    /// When it was written (RFC 3339, as stored).
    pub time: String,
}

/// Reads complete entries from `offset`; returns them and the offset after the last one.
pub fn read_from(path: &Path, offset: u64) -> Result<(Vec<LogLine>, u64)> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((vec![], offset)),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = BufReader::new(file);
    let mut lines = Vec::new();
    let mut pos = offset;
    let mut raw = Vec::new();
    loop {
        raw.clear();
        let n = reader.read_until(b'\n', &mut raw)?;
        if n == 0 || raw.last() != Some(&b'\n') {
            break; // end, or an entry still being written
        }
        pos += n as u64;
        if let Ok(e) = serde_json::from_slice::<Entry>(&raw) {
            lines.push(LogLine {
                stream: e.stream.into_owned(),
                text: e.log.into_owned().into_bytes(),
                time: e.time,
            });
        }
    }
    Ok((lines, pos))
}
