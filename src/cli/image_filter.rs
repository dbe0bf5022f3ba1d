//! `kiln images --filter KEY=VALUE`, as docker's: `dangling=true|false`, `reference=PATTERN`
//! (Go's path.Match on the short name, `app:*`, `*/app`, with or without the tag), `label=K` or
//! `label=K=V`, `before=IMAGE`, `since=IMAGE` (created earlier / later than IMAGE). Different
//! keys must all match; several `reference=` match when any does; several `label=` must all
//! match, as docker's daemon combines them.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

use crate::reference::Reference;
use crate::store::{ImageRecord, Store};

/// The filters of one `images` command, parsed and resolved (before/since to a time).
#[derive(Debug, Default)]
pub struct ImageFilter {
    dangling: Option<bool>,
    references: Vec<String>,
    labels: Vec<LabelFilter>,
    before: Option<i64>,
    since: Option<i64>,
}

/// Splits `KEY=VALUE` as docker's CLI does; its error when there is no `=`.
pub fn split_filter(raw: &str) -> Result<(&str, &str)> {
    match raw.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k, v)),
        _ => bail!("invalid argument {raw:?} for \"-f, --filter\" flag: bad format of filter (expected name=value)"),
    }
}

/// A `label=KEY` or `label=KEY=VALUE` filter, the same for images, containers and volumes.
#[derive(Debug, Clone)]
pub struct LabelFilter {
    key: String,
    value: Option<String>,
}

impl LabelFilter {
    /// From the value after `label=`.
    pub fn parse(value: &str) -> LabelFilter {
        match value.split_once('=') {
            Some((k, v)) => LabelFilter {
                key: k.to_string(),
                value: Some(v.to_string()),
            },
            None => LabelFilter {
                key: value.to_string(),
                value: None,
            },
        }
    }

    /// Whether every filter holds for `labels` (docker's daemon combines several with AND).
    pub fn all_match(filters: &[LabelFilter], labels: &BTreeMap<String, String>) -> bool {
        filters
            .iter()
            .all(|f| match (labels.get(&f.key), &f.value) {
                (Some(have), Some(want)) => have == want,
                (Some(_), None) => true,
                (None, _) => false,
            })
    }
}

/// A `name=` filter: a regular expression found anywhere in the name (containers, volumes).
pub fn name_pattern(value: &str) -> Result<regex::Regex> {
    regex::Regex::new(value).with_context(|| format!("invalid filter 'name={value}'"))
}

/// The labels of an image config (`config.Labels`), empty when it has none or is unreadable.
pub fn config_labels(config_json: &[u8]) -> BTreeMap<String, String> {
    let config: serde_json::Value = serde_json::from_slice(config_json).unwrap_or_default();
    config
        .pointer("/config/Labels")
        .and_then(|l| l.as_object())
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a `--filter` value is well formed (`KEY=VALUE`): docker's CLI refuses the rest as a
/// usage error (exit 125) before anything runs.
pub fn check_syntax(filters: &[String]) -> Result<()> {
    for f in filters {
        split_filter(f)?;
    }
    Ok(())
}

impl ImageFilter {
    pub fn parse(store: &Store, filters: &[String]) -> Result<ImageFilter> {
        let mut out = ImageFilter::default();
        for raw in filters {
            let (key, value) = split_filter(raw)?;
            match key {
                "dangling" => {
                    out.dangling = Some(match value.to_ascii_lowercase().as_str() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => {
                            bail!("invalid filter 'dangling=[{value}]': dangling is true or false")
                        }
                    })
                }
                "reference" => {
                    // A malformed pattern is refused now, not silently matching nothing.
                    crate::source::fsutil::go_path_match(value, "")
                        .with_context(|| format!("invalid filter 'reference={value}'"))?;
                    out.references.push(value.to_string());
                }
                "label" => out.labels.push(LabelFilter::parse(value)),
                "before" | "since" => {
                    let img = store
                        .resolve(value)
                        .with_context(|| format!("invalid filter '{key}={value}'"))?;
                    if key == "before" {
                        out.before = Some(img.created);
                    } else {
                        out.since = Some(img.created);
                    }
                }
                other => bail!(
                    "invalid filter '{other}': images filter by dangling, reference, label, \
                     before or since"
                ),
            }
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.dangling.is_none()
            && self.references.is_empty()
            && self.labels.is_empty()
            && self.before.is_none()
            && self.since.is_none()
    }

    /// Whether the filters need the image's labels (read from its config).
    pub fn needs_labels(&self) -> bool {
        !self.labels.is_empty()
    }

    /// Whether one row (a name, or a nameless image) passes; `labels` are the image's.
    pub fn matches(
        &self,
        img: &ImageRecord,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        let tagged = img.name.as_ref().is_some_and(|n| n.tag().is_some());
        if let Some(d) = self.dangling {
            if d == tagged {
                return false;
            }
        }
        if !self.references.is_empty() {
            let Some(name) = &img.name else {
                return false;
            };
            if !self.references.iter().any(|p| reference_matches(p, name)) {
                return false;
            }
        }
        if !LabelFilter::all_match(&self.labels, labels) {
            return false;
        }
        if self.before.is_some_and(|t| img.created >= t) {
            return false;
        }
        if self.since.is_some_and(|t| img.created <= t) {
            return false;
        }
        true
    }
}

/// docker's `reference.FamiliarMatch`: the pattern against `app:1`, then against `app`.
fn reference_matches(pattern: &str, name: &Reference) -> bool {
    let repo = name.familiar_repository();
    let full = match (name.tag(), name.digest()) {
        (Some(t), _) => format!("{repo}:{t}"),
        (None, Some(d)) => format!("{repo}@{d}"),
        (None, None) => repo.clone(),
    };
    let m = |s: &str| crate::source::fsutil::go_path_match(pattern, s).unwrap_or(false);
    m(&full) || m(&repo)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn references_match_as_dockers_familiar_match() {
        assert!(reference_matches("app", &name("app:1")));
        assert!(reference_matches("app:1", &name("app:1")));
        assert!(!reference_matches("app:2", &name("app:1")));
        assert!(reference_matches("app:*", &name("app:1")));
        assert!(reference_matches("a*", &name("app:1")));
        assert!(!reference_matches("*", &name("library/x/app:1")));
        assert!(reference_matches("*/app", &name("me/app:1")));
        assert!(!reference_matches("*/app", &name("app:1")));
        assert!(reference_matches(
            "localhost:5000/*",
            &name("localhost:5000/app:1")
        ));
        assert!(reference_matches(
            "busybox",
            &name("docker.io/library/busybox")
        ));
    }

    #[test]
    fn filter_syntax_is_key_equals_value() {
        assert!(split_filter("dangling").is_err());
        assert!(split_filter("=x").is_err());
        assert_eq!(split_filter("label=a=b").unwrap(), ("label", "a=b"));
    }
}
