//! The build cache in the store's SQLite database: step cache key -> the layer the step produced
//! (or none, when it changed nothing), and, for explaining misses, the inputs each step had the
//! last time it ran at the same place in the same Dockerfile.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub use crate::oci::layer::LayerRef;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS build_cache (
    key TEXT PRIMARY KEY,
    layer TEXT,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS build_step_inputs (
    place TEXT PRIMARY KEY,
    inputs TEXT NOT NULL
);";

pub fn init(conn: &rusqlite::Connection) -> Result<()> {
    conn.execute_batch(SCHEMA)
        .context("creating the build cache tables")?;
    // When each entry was last used, for the collector (`store::gc`).
    conn.execute_batch(crate::store::gc::CACHE_USE_SCHEMA)
        .context("creating the build cache tables")
}

/// A cached result: `Some(None)` is a step that changed nothing.
pub fn lookup(conn: &rusqlite::Connection, key: &str) -> Result<Option<Option<LayerRef>>> {
    let mut stmt = conn.prepare_cached("SELECT layer FROM build_cache WHERE key = ?1")?;
    let mut rows = stmt.query([key])?;
    match rows.next()? {
        None => Ok(None),
        Some(row) => {
            let layer: Option<String> = row.get(0)?;
            match layer {
                None => Ok(Some(None)),
                Some(json) => match serde_json::from_str(&json) {
                    Ok(l) => Ok(Some(Some(l))),
                    Err(_) => Ok(None),
                },
            }
        }
    }
}

/// Records a step's result; `created` (seconds since the epoch) becomes the history time of later
/// cache hits, so a fully cached rebuild reproduces the same image.
pub fn record(
    conn: &rusqlite::Connection,
    key: &str,
    layer: Option<&LayerRef>,
    created: i64,
) -> Result<()> {
    let json = layer.map(|l| serde_json::to_string(l).unwrap_or_default());
    let now = created;
    conn.execute(
        "INSERT OR REPLACE INTO build_cache (key, layer, created) VALUES (?1, ?2, ?3)",
        rusqlite::params![key, json, now],
    )
    .context("recording a build cache entry")?;
    crate::store::gc::touch_cache_key(conn, key)
}

/// When a cached step was first built.
pub fn created_of(conn: &rusqlite::Connection, key: &str) -> Result<Option<i64>> {
    let mut stmt = conn.prepare_cached("SELECT created FROM build_cache WHERE key = ?1")?;
    let mut rows = stmt.query([key])?;
    Ok(match rows.next()? {
        Some(row) => Some(row.get(0)?),
        None => None,
    })
}

/// What went into a step's cache key, kept to explain the next miss at the same place.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StepInputs {
    pub parent: String,
    pub instruction: String,
    #[serde(default)]
    pub args: BTreeMap<String, String>,
    #[serde(default)]
    pub env: Vec<String>,
    /// For COPY/ADD from the context: (path, digest prefix) of each selected entry.
    #[serde(default)]
    pub files: Vec<(String, String)>,
    #[serde(default)]
    pub sources: Vec<String>,
    /// The layer the step made with these inputs (recorded after it ran), for an incremental
    /// COPY the next time only its files changed.
    #[serde(default)]
    pub layer: Option<LayerRef>,
}

/// The previous result of a COPY from the context to build on, when `old` (the inputs the step
/// last ran with at this place) differs from `new` only in the selected files.
pub fn previous_copy(old: &StepInputs, new: &StepInputs) -> Option<crate::solver::PreviousCopy> {
    let layer = old.layer.clone()?;
    let same_step = old.parent == new.parent
        && old.instruction == new.instruction
        && old.args == new.args
        && old.env == new.env
        && old.sources == new.sources;
    if !same_step || old.files.is_empty() || new.files.is_empty() || old.files == new.files {
        return None;
    }
    let before: std::collections::HashMap<&str, &str> = old
        .files
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_str()))
        .collect();
    let unchanged = new
        .files
        .iter()
        .filter(|(p, d)| before.get(p.as_str()) == Some(&d.as_str()))
        .map(|(p, _)| p.clone())
        .collect();
    Some(crate::solver::PreviousCopy { layer, unchanged })
}

pub fn load_inputs(conn: &rusqlite::Connection, place: &str) -> Result<Option<StepInputs>> {
    let mut stmt = conn.prepare_cached("SELECT inputs FROM build_step_inputs WHERE place = ?1")?;
    let mut rows = stmt.query([place])?;
    Ok(match rows.next()? {
        Some(row) => serde_json::from_str(&row.get::<_, String>(0)?).ok(),
        None => None,
    })
}

pub fn save_inputs(conn: &rusqlite::Connection, place: &str, inputs: &StepInputs) -> Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO build_step_inputs (place, inputs) VALUES (?1, ?2)",
        rusqlite::params![place, serde_json::to_string(inputs)?],
    )?;
    Ok(())
}

/// Why a step missed the cache, comparing its inputs with the last ones recorded at its place.
pub fn explain_miss(old: Option<&StepInputs>, new: &StepInputs, first_step: bool) -> String {
    let Some(old) = old else {
        return "no earlier build of this step".to_string();
    };
    let mut reasons = Vec::new();
    if old.instruction != new.instruction {
        reasons.push(format!("instruction changed (was: {})", old.instruction));
    }
    let mut arg_names: Vec<&String> = old.args.keys().chain(new.args.keys()).collect();
    arg_names.sort();
    arg_names.dedup();
    for name in arg_names {
        if old.args.get(name) != new.args.get(name) {
            reasons.push(format!("build arg {name} changed"));
        }
    }
    if reasons.is_empty() && old.env != new.env {
        let changed: Vec<String> = new
            .env
            .iter()
            .filter(|e| !old.env.contains(e))
            .chain(old.env.iter().filter(|e| !new.env.contains(e)))
            .filter_map(|e| e.split_once('=').map(|(k, _)| k.to_string()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        reasons.push(format!("environment changed: {}", changed.join(", ")));
    }
    if old.sources != new.sources && !new.sources.is_empty() {
        let mut what: Vec<String> = new
            .sources
            .iter()
            .filter(|s| !old.sources.contains(s))
            .map(|s| describe_source(s))
            .collect();
        what.dedup();
        if what.is_empty() {
            what.push("a source was removed".to_string());
        }
        reasons.push(what.join("; "));
    }
    let to_pairs = |v: &[(String, String)]| -> Vec<(String, [u8; 32])> {
        v.iter()
            .map(|(p, d)| {
                let mut digest = [0u8; 32];
                let bytes = hex::decode(d).unwrap_or_default();
                let n = bytes.len().min(32);
                digest[..n].copy_from_slice(&bytes[..n]);
                (p.clone(), digest)
            })
            .collect()
    };
    if let Some(files) = crate::source::local::contenthash::describe_changes(
        &to_pairs(&old.files),
        &to_pairs(&new.files),
    ) {
        reasons.push(files);
    }
    if reasons.is_empty() && old.parent != new.parent {
        reasons.push(if first_step {
            "the base image changed".into()
        } else {
            "a previous step changed".into()
        });
    }
    if reasons.is_empty() {
        reasons.push("cache entry missing (pruned or never recorded)".into());
    }
    reasons.join("; ")
}

/// What a changed source of a step is, for a miss explanation: a git ref that moved, a URL that
/// serves new content, or a stage or image.
fn describe_source(source: &str) -> String {
    if let Some(commit) = source.strip_prefix("git:") {
        let short: String = commit.chars().take(12).collect();
        format!("the git ref now points at commit {short}")
    } else if let Some(rest) = source.strip_prefix("url:") {
        let url = rest.split_once(' ').map_or(rest, |(_, u)| u);
        format!("{url} serves new content")
    } else {
        "a source stage or image changed".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_explains() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        init(&conn).unwrap();
        assert_eq!(lookup(&conn, "k").unwrap(), None);
        record(&conn, "k", None, 5).unwrap();
        assert_eq!(created_of(&conn, "k").unwrap(), Some(5));
        assert_eq!(lookup(&conn, "k").unwrap(), Some(None));
        let l = LayerRef {
            digest: "sha256:a".into(),
            diff_id: "sha256:b".into(),
            size: 3,
            media_type: "m".into(),
        };
        record(&conn, "k2", Some(&l), 6).unwrap();
        assert_eq!(lookup(&conn, "k2").unwrap(), Some(Some(l.clone())));

        let mut old = StepInputs {
            instruction: "RUN make".into(),
            ..Default::default()
        };
        old.args.insert("VERSION".into(), "1".into());
        save_inputs(&conn, "p", &old).unwrap();
        let mut new = old.clone();
        new.args.insert("VERSION".into(), "2".into());
        let loaded = load_inputs(&conn, "p").unwrap();
        assert_eq!(
            explain_miss(loaded.as_ref(), &new, false),
            "build arg VERSION changed"
        );
        let mut copy_old = StepInputs {
            instruction: "COPY . /app".into(),
            ..Default::default()
        };
        copy_old.files = vec![
            ("src/app.js".into(), "aa".into()),
            ("x".into(), "bb".into()),
        ];
        let mut copy_new = copy_old.clone();
        copy_new.files[0].1 = "cc".into();
        assert_eq!(
            explain_miss(Some(&copy_old), &copy_new, false),
            "1 file changed: src/app.js"
        );

        // Only the files differ: the previous layer is offered, with the unchanged paths.
        assert!(
            previous_copy(&copy_old, &copy_new).is_none(),
            "no layer recorded"
        );
        copy_old.layer = Some(l.clone());
        let prev = previous_copy(&copy_old, &copy_new).unwrap();
        assert_eq!(prev.layer, l);
        assert_eq!(
            prev.unchanged.into_iter().collect::<Vec<_>>(),
            vec!["x".to_string()]
        );
        // Another parent, instruction or no change at all: none.
        let mut other = copy_new.clone();
        other.parent = "another".into();
        assert!(previous_copy(&copy_old, &other).is_none());
        other = copy_new.clone();
        other.instruction = "COPY . /srv".into();
        assert!(previous_copy(&copy_old, &other).is_none());
        assert!(previous_copy(&copy_old, &copy_old.clone()).is_none());
    }
}
