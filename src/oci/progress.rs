//! Progress for long work (load, save, import): an indicatif bar on a terminal, plain lines
//! otherwise, nothing with `--quiet`. Always on stderr: stdout carries results (and archives).

use std::io::{self, IsTerminal, Read, Write};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

/// Below this many bytes, non-terminal output stays silent.
const PLAIN_THRESHOLD: u64 = 64 * 1024 * 1024;

/// Reports the progress of one task measured in bytes.
pub struct Progress {
    label: String,
    bar: Option<ProgressBar>,
    plain: bool,
    done: u64,
    started: Instant,
}

impl Progress {
    /// `total`: the expected number of bytes when known.
    pub fn new(label: &str, total: Option<u64>, quiet: bool) -> Progress {
        let terminal = !quiet && io::stderr().is_terminal();
        let bar = terminal.then(|| {
            let bar = match total {
                Some(t) => ProgressBar::new(t),
                None => ProgressBar::new_spinner(),
            };
            let template = if total.is_some() {
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}"
            } else {
                "{msg} {spinner} {bytes} {bytes_per_sec}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label.to_string());
            bar
        });
        // Plain lines only for work big enough to be worth reporting (or of unknown size).
        let plain = !quiet && bar.is_none() && total.map_or(true, |t| t >= PLAIN_THRESHOLD);
        if plain {
            crate::errln!("{label}...");
        }
        Progress {
            label: label.to_string(),
            bar,
            plain,
            done: 0,
            started: Instant::now(),
        }
    }

    pub fn inc(&mut self, n: u64) {
        self.done += n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// Ends the task; plain output gets one summary line.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if self.plain {
            crate::errln!(
                "{}: done, {} in {:.1}s",
                self.label,
                human_bytes(self.done),
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Counts bytes read through it into a [`Progress`].
pub struct ProgressReader<'p, R> {
    pub inner: R,
    pub progress: &'p mut Progress,
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
}

/// Counts bytes written through it into a [`Progress`].
pub struct ProgressWriter<'p, W> {
    pub inner: W,
    pub progress: &'p mut Progress,
}

impl<W: Write> Write for ProgressWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Sizes as docker prints them: decimal units, three significant digits (`4.26MB`, `512kB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        let s = if v >= 100.0 {
            format!("{v:.0}")
        } else if v >= 10.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.2}")
        };
        let trimmed = if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        };
        format!("{trimmed}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_print_like_docker() {
        use super::human_bytes;
        assert_eq!(human_bytes(100), "100B");
        assert_eq!(human_bytes(4_260_000), "4.26MB");
        assert_eq!(human_bytes(512_000), "512kB");
        assert_eq!(human_bytes(1_500_000_000), "1.5GB");
    }
}
