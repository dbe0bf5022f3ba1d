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

/// `--log-opt max-size=SIZE` and `max-file=N`, docker's json-file rotation: when an entry
/// would take the log past `max_size`, the log moves to `<log>.1` (`.1` to `.2`, ..., the
/// oldest beyond `max_files` is dropped) and a new one starts; with one file it is emptied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLimits {
    pub max_size: Option<u64>,
    /// Files kept, the live one included (docker's default 1).
    #[serde(default = "one")]
    pub max_files: u32,
    /// The options as given, for `inspect` (`HostConfig.LogConfig.Config`).
    #[serde(default)]
    pub given: std::collections::BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

impl Default for LogLimits {
    fn default() -> LogLimits {
        LogLimits {
            max_size: None,
            max_files: 1,
            given: Default::default(),
        }
    }
}

impl LogLimits {
    /// Parses `--log-driver` and the `--log-opt KEY=VALUE`s: json-file's `max-size` (bytes, or
    /// with k/m/g) and `max-file` (which, as docker's, does nothing without `max-size`).
    pub fn parse(driver: Option<&str>, opts: &[String]) -> Result<LogLimits> {
        if let Some(d) = driver.filter(|d| *d != "json-file") {
            anyhow::bail!(
                "--log-driver {d:?}: kiln writes docker's json-file logs only (`kiln logs` reads \
                 them); leave --log-driver out or pass json-file"
            );
        }
        let mut out = LogLimits::default();
        for o in opts {
            let (k, v) = o
                .split_once('=')
                .with_context(|| format!("invalid --log-opt {o:?}: expected KEY=VALUE"))?;
            match k {
                "max-size" => {
                    let n = crate::store::space::parse_size(v)
                        .with_context(|| format!("invalid --log-opt max-size={v}"))?;
                    if n == 0 {
                        anyhow::bail!("invalid --log-opt max-size={v}: must be more than 0");
                    }
                    out.max_size = Some(n);
                }
                "max-file" => {
                    out.max_files =
                        v.parse().ok().filter(|n: &u32| *n >= 1).with_context(|| {
                            format!(
                                "invalid --log-opt max-file={v}: expected a number of 1 or more"
                            )
                        })?;
                }
                other => anyhow::bail!(
                    "unknown log opt '{other}' for the json-file log driver: kiln supports \
                     max-size and max-file"
                ),
            }
            out.given.insert(k.to_string(), v.to_string());
        }
        Ok(out)
    }

    /// `HostConfig.LogConfig.Config` as docker's inspect shows it: the options as given.
    pub fn docker_config(&self) -> &std::collections::BTreeMap<String, String> {
        &self.given
    }
}

/// The log of rotation `n` (`<log>.1` is the newest rotated one).
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

struct LiveLog {
    file: File,
    path: PathBuf,
    size: u64,
    max_size: Option<u64>,
    max_files: u32,
}

impl LiveLog {
    fn append(&mut self, entry: &[u8]) {
        if let Some(max) = self.max_size {
            if self.size > 0 && self.size + entry.len() as u64 > max {
                self.rotate();
            }
        }
        if self.file.write_all(entry).is_ok() {
            self.size += entry.len() as u64;
        }
    }

    fn rotate(&mut self) {
        if self.max_files <= 1 {
            // The file is opened O_APPEND: the next write lands at the new end, 0.
            if self.file.set_len(0).is_ok() {
                self.size = 0;
            }
            return;
        }
        let last = self.max_files - 1;
        let _ = std::fs::remove_file(rotated_path(&self.path, last));
        for n in (1..last).rev() {
            let _ = std::fs::rename(rotated_path(&self.path, n), rotated_path(&self.path, n + 1));
        }
        if std::fs::rename(&self.path, rotated_path(&self.path, 1)).is_err() {
            return;
        }
        if let Ok(f) = open_append(&self.path) {
            self.file = f;
            self.size = 0;
        }
    }
}

fn open_append(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the log {}", path.display()))
}

/// Appends entries to a container's log; shared by the stdout and stderr copiers.
#[derive(Clone)]
pub struct LogWriter {
    live: Arc<Mutex<LiveLog>>,
}

impl LogWriter {
    pub fn open(path: &Path, limits: &LogLimits) -> Result<LogWriter> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = open_append(path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(LogWriter {
            live: Arc::new(Mutex::new(LiveLog {
                file,
                path: path.to_path_buf(),
                size,
                max_size: limits.max_size,
                max_files: limits.max_files,
            })),
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
            if let Ok(mut live) = self.live.lock() {
                live.append(&json);
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

/// Where a reader of a live log is: the file (by inode, so a rotation is noticed) and the offset
/// after the last entry read.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogCursor {
    ino: u64,
    offset: u64,
}

impl LogCursor {
    /// At the end of the log as it is now (what `attach` shows starts there).
    pub fn at_end(path: &Path) -> LogCursor {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path)
            .map(|m| LogCursor {
                ino: m.ino(),
                offset: m.len(),
            })
            .unwrap_or_default()
    }
}

/// Every entry kept: the rotated logs, oldest first, then the live one; and a cursor at its end.
pub fn read_all(path: &Path) -> Result<(Vec<LogLine>, LogCursor)> {
    let mut lines = Vec::new();
    let mut n = 1;
    while rotated_path(path, n).exists() {
        n += 1;
    }
    for k in (1..n).rev() {
        lines.extend(read_from(&rotated_path(path, k), 0)?.0);
    }
    let mut cursor = LogCursor::default();
    lines.extend(follow(path, &mut cursor)?);
    Ok((lines, cursor))
}

/// The entries written since `cursor`, which moves past them. After rotations the rest of the
/// file read last and the files rotated since come first; after the single file was emptied,
/// the new start. (Lines in a file dropped between two calls are lost, as in docker's.)
pub fn follow(path: &Path, cursor: &mut LogCursor) -> Result<Vec<LogLine>> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(vec![]);
    };
    let mut lines = Vec::new();
    if cursor.ino != 0 && meta.ino() != cursor.ino {
        // Rotated since: the file read last is `<log>.k` now (unless it was dropped); its rest
        // and the newer rotated files come before the live one.
        let mut k = 1;
        while let Ok(m) = std::fs::metadata(rotated_path(path, k)) {
            if m.ino() == cursor.ino {
                lines.extend(read_from(&rotated_path(path, k), cursor.offset)?.0);
                for newer in (1..k).rev() {
                    lines.extend(read_from(&rotated_path(path, newer), 0)?.0);
                }
                break;
            }
            k += 1;
        }
        cursor.offset = 0;
    } else if meta.len() < cursor.offset {
        cursor.offset = 0;
    }
    cursor.ino = meta.ino();
    let (more, next) = read_from(path, cursor.offset)?;
    cursor.offset = next;
    lines.extend(more);
    Ok(lines)
}

/// Reads complete entries from `offset`; returns them and the offset after the last one.
fn read_from(path: &Path, offset: u64) -> Result<(Vec<LogLine>, u64)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(lines: &[LogLine]) -> Vec<String> {
        lines
            .iter()
            .map(|l| String::from_utf8_lossy(&l.text).trim_end().to_string())
            .collect()
    }

    fn limits(opts: &[&str]) -> LogLimits {
        LogLimits::parse(
            None,
            &opts.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap()
    }

    #[test]
    fn options_parse_as_dockers_and_bad_ones_are_refused() {
        let l = limits(&["max-size=1k", "max-file=3"]);
        assert_eq!((l.max_size, l.max_files), (Some(1024), 3));
        assert_eq!(l.docker_config().get("max-size").unwrap(), "1k");
        // max-file alone does nothing, as docker's.
        assert_eq!(limits(&["max-file=2"]).max_size, None);
        let err = |driver: Option<&str>, o: &str| {
            LogLimits::parse(driver, &[o.to_string()])
                .unwrap_err()
                .to_string()
        };
        assert!(err(None, "bogus=1").contains("unknown log opt 'bogus'"));
        assert!(err(None, "max-size=0").contains("more than 0"));
        assert!(err(None, "max-file=0").contains("1 or more"));
        assert!(err(None, "max-size").contains("expected KEY=VALUE"));
        assert!(err(Some("syslog"), "max-size=1k").contains("json-file logs only"));
        assert!(LogLimits::parse(Some("json-file"), &[]).is_ok());
    }

    #[test]
    fn rotation_keeps_max_file_files_under_max_size_and_readers_follow_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c-json.log");
        let log = LogWriter::open(&path, &limits(&["max-size=300", "max-file=3"])).unwrap();
        let mut cursor = LogCursor::at_end(&path);
        let mut followed = Vec::new();
        for i in 0..60 {
            log.write_line("stdout", format!("{i}\n").as_bytes());
            if i % 7 == 0 {
                followed.extend(texts(&follow(&path, &mut cursor).unwrap()));
            }
        }
        followed.extend(texts(&follow(&path, &mut cursor).unwrap()));
        // A reader that looks often enough sees every line, across rotations, in order.
        let all: Vec<String> = (0..60).map(|i| i.to_string()).collect();
        assert_eq!(followed, all);
        for n in [1, 2] {
            let rotated = rotated_path(&path, n);
            assert!(std::fs::metadata(&rotated).unwrap().len() <= 300, "{n}");
        }
        assert!(!rotated_path(&path, 3).exists());
        assert!(std::fs::metadata(&path).unwrap().len() <= 300);
        // What is kept is the newest lines, oldest first.
        let (kept, _) = read_all(&path).unwrap();
        let kept = texts(&kept);
        assert!(kept.len() >= 6 && kept.len() < 60, "{kept:?}");
        assert_eq!(kept, all[60 - kept.len()..].to_vec());
    }

    #[test]
    fn one_file_is_emptied_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c-json.log");
        let log = LogWriter::open(&path, &limits(&["max-size=200"])).unwrap();
        let mut cursor = LogCursor::default();
        for i in 0..20 {
            log.write_line("stderr", format!("line {i}\n").as_bytes());
        }
        assert!(!rotated_path(&path, 1).exists());
        let (kept, _) = read_all(&path).unwrap();
        let kept = texts(&kept);
        assert_eq!(kept.last().unwrap(), "line 19");
        assert!(kept.len() < 20);
        let seen = texts(&follow(&path, &mut cursor).unwrap());
        assert_eq!(seen, kept);
        log.write_line("stderr", b"line 20\n");
        assert_eq!(
            texts(&follow(&path, &mut cursor).unwrap()).last().unwrap(),
            "line 20"
        );
    }
}
