//! Build progress, in the modes `docker build --progress` knows: a live view on a terminal
//! (indicatif: one line per running step with its elapsed time and the tail of its output,
//! parallel steps side by side), `plain` (numbered lines as BuildKit prints them, with RUN output,
//! durations and a summary), `rawjson` (one JSON event per line, for tools) and `quiet`.
//! Everything goes to stderr; stdout is kept for the image ID.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Tty,
    Plain,
    RawJson,
    Quiet,
}

impl Mode {
    /// `auto` is the terminal view when stderr is a terminal, else plain lines.
    pub fn parse(s: &str) -> anyhow::Result<Mode> {
        Ok(match s {
            "auto" => {
                if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                    Mode::Tty
                } else {
                    Mode::Plain
                }
            }
            "tty" => Mode::Tty,
            "plain" => Mode::Plain,
            "rawjson" => Mode::RawJson,
            "quiet" => Mode::Quiet,
            other => {
                anyhow::bail!("--progress={other}: expected auto, tty, plain, quiet or rawjson")
            }
        })
    }
}

pub type StepId = usize;

struct Running {
    name: String,
    started: Instant,
    bar: Option<indicatif::ProgressBar>,
    tail: Vec<String>,
}

struct State {
    next: StepId,
    running: HashMap<StepId, Running>,
    total: usize,
    cached: usize,
}

pub struct Progress {
    mode: Mode,
    explain: bool,
    started: Instant,
    multi: Option<indicatif::MultiProgress>,
    state: Mutex<State>,
}

/// How many lines of a step's output the terminal view keeps.
const TAIL_LINES: usize = 6;

impl Progress {
    pub fn new(mode: Mode, explain: bool) -> Progress {
        let multi = (mode == Mode::Tty).then(indicatif::MultiProgress::new);
        Progress {
            mode,
            explain: explain || mode == Mode::Plain,
            started: Instant::now(),
            multi,
            state: Mutex::new(State {
                next: 1,
                running: HashMap::new(),
                total: 0,
                cached: 0,
            }),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn json(&self, value: serde_json::Value) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{value}");
    }

    fn plain(&self, line: &str) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
    }

    /// A step begins (or is about to be looked up in the cache).
    pub fn start(&self, name: &str) -> StepId {
        self.start_vertex(name, true)
    }

    /// The export begins (`exporting to image`): shown as a step, as BuildKit shows it, but not
    /// counted among the build's steps in the summary.
    pub fn start_export(&self) -> StepId {
        self.start_vertex("exporting to image", false)
    }

    /// One status line of a step, BuildKit's `#6 writing image sha256:… done`.
    pub fn status(&self, id: StepId, text: &str) {
        match self.mode {
            Mode::Plain => self.plain(&format!("#{id} {text}")),
            Mode::RawJson => {
                self.json(serde_json::json!({"event": "status", "step": id, "text": text}))
            }
            Mode::Tty => match &self.multi {
                Some(m) => {
                    let _ = m.println(format!("#{id} {text}"));
                }
                None => self.plain(&format!("#{id} {text}")),
            },
            Mode::Quiet => {}
        }
    }

    fn start_vertex(&self, name: &str, counted: bool) -> StepId {
        let mut st = self.state();
        let id = st.next;
        st.next += 1;
        if counted {
            st.total += 1;
        }
        let bar = self.multi.as_ref().map(|m| {
            let bar = m.add(indicatif::ProgressBar::new_spinner());
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {prefix} {msg} {elapsed:>4}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.set_prefix(format!("#{id} {name}"));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        st.running.insert(
            id,
            Running {
                name: name.to_string(),
                started: Instant::now(),
                bar,
                tail: Vec::new(),
            },
        );
        drop(st);
        match self.mode {
            Mode::Plain => self.plain(&format!("#{id} {name}")),
            Mode::RawJson => {
                self.json(serde_json::json!({"event": "start", "step": id, "name": name}))
            }
            _ => {}
        }
        id
    }

    /// One line of a running step's output.
    pub fn log(&self, id: StepId, line: &str) {
        let mut st = self.state();
        let Some(run) = st.running.get_mut(&id) else {
            return;
        };
        let elapsed = run.started.elapsed().as_secs_f64();
        run.tail.push(line.to_string());
        if run.tail.len() > TAIL_LINES {
            run.tail.remove(0);
        }
        if let Some(bar) = &run.bar {
            let shown: String = line.chars().take(80).collect();
            bar.set_message(format!("| {shown}"));
        }
        drop(st);
        match self.mode {
            Mode::Plain => self.plain(&format!("#{id} {elapsed:.3} {line}")),
            Mode::RawJson => {
                self.json(serde_json::json!({"event": "log", "step": id, "line": line}))
            }
            _ => {}
        }
    }

    /// Why the step was not found in the cache (plain, or any mode with `--explain`).
    pub fn explain(&self, id: StepId, name: &str, reason: &str) {
        if !self.explain {
            return;
        }
        let text = format!("cache miss: {name}: {reason}");
        match self.mode {
            Mode::RawJson => {
                self.json(serde_json::json!({"event": "explain", "step": id, "reason": reason}))
            }
            Mode::Tty => match &self.multi {
                Some(m) => {
                    let _ = m.println(format!("#{id} {text}"));
                }
                None => self.plain(&format!("#{id} {text}")),
            },
            Mode::Quiet => self.plain(&text),
            Mode::Plain => self.plain(&format!("#{id} {text}")),
        }
    }

    pub fn cached(&self, id: StepId) {
        self.finish_step(id, Outcome::Cached);
    }

    pub fn done(&self, id: StepId) {
        self.finish_step(id, Outcome::Done);
    }

    pub fn failed(&self, id: StepId, error: &str) {
        self.finish_step(id, Outcome::Failed(error));
    }

    fn finish_step(&self, id: StepId, outcome: Outcome) {
        let mut st = self.state();
        if matches!(outcome, Outcome::Cached) {
            st.cached += 1;
        }
        let Some(run) = st.running.remove(&id) else {
            return;
        };
        drop(st);
        let secs = run.started.elapsed().as_secs_f64();
        let word = match outcome {
            Outcome::Cached => "CACHED".to_string(),
            Outcome::Done => format!("DONE {secs:.1}s"),
            Outcome::Failed(e) => format!("ERROR {}", e.lines().next().unwrap_or("")),
        };
        // On a terminal a finished step leaves the live area for a line of its own above it
        // (a finished bar would be cleared with the area when the build ends): the list of
        // steps stays on the screen, one line each with its time or CACHED, as BuildKit's.
        if let Some(bar) = run.bar {
            bar.finish_and_clear();
            if let Some(m) = &self.multi {
                let _ = m.println(format!("#{id} {} {word}", run.name));
            }
        }
        match self.mode {
            Mode::Plain => self.plain(&format!("#{id} {word}")),
            Mode::RawJson => {
                let status = match outcome {
                    Outcome::Cached => "cached",
                    Outcome::Done => "done",
                    Outcome::Failed(_) => "error",
                };
                let mut ev = serde_json::json!({"event": "end", "step": id, "name": run.name, "status": status, "seconds": secs});
                if let Outcome::Failed(e) = outcome {
                    ev["error"] = serde_json::Value::String(e.to_string());
                }
                self.json(ev)
            }
            _ => {}
        }
    }

    /// A line that is not about one step (exporting, naming).
    pub fn note(&self, text: &str) {
        match self.mode {
            Mode::Plain => self.plain(text),
            Mode::RawJson => self.json(serde_json::json!({"event": "note", "text": text})),
            Mode::Tty => match &self.multi {
                Some(m) => {
                    let _ = m.println(text);
                }
                None => self.plain(text),
            },
            Mode::Quiet => {}
        }
    }

    /// The closing summary.
    pub fn summary(&self, image_id: Option<&str>) {
        let st = self.state();
        let secs = self.started.elapsed().as_secs_f64();
        let text = format!(
            "built in {secs:.1}s: {} steps, {} cached",
            st.total, st.cached
        );
        drop(st);
        match self.mode {
            Mode::RawJson => self
                .json(serde_json::json!({"event": "summary", "seconds": secs, "image": image_id})),
            Mode::Quiet => {}
            _ => self.note(&text),
        }
    }
}

enum Outcome<'a> {
    Cached,
    Done,
    Failed(&'a str),
}
