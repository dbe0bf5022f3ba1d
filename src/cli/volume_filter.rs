//! `kiln volume ls --filter KEY=VALUE`, as docker's: `name=` (a regular expression, found
//! anywhere in the name), `label=K` or `label=K=V`, `dangling=true|false` (used by no
//! container), `driver=` (kiln's volumes are all `local`). Several values of one key match when
//! any does (`label=` when all do); different keys must all match.

use anyhow::{bail, Result};

use crate::runner::state::VolumeRecord;

#[derive(Debug, Default)]
pub struct VolumeFilter {
    names: Vec<regex::Regex>,
    labels: Vec<super::image_filter::LabelFilter>,
    dangling: Option<bool>,
    drivers: Vec<String>,
}

impl VolumeFilter {
    pub fn parse(filters: &[String]) -> Result<VolumeFilter> {
        let mut out = VolumeFilter::default();
        for raw in filters {
            let (key, value) = super::image_filter::split_filter(raw)?;
            match key {
                "name" => out.names.push(super::image_filter::name_pattern(value)?),
                "label" => out
                    .labels
                    .push(super::image_filter::LabelFilter::parse(value)),
                "dangling" => {
                    out.dangling = Some(match value {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => bail!(
                            "invalid filter 'dangling={value}': expected true or false (or 1/0)"
                        ),
                    })
                }
                "driver" => out.drivers.push(value.to_string()),
                other => bail!(
                    "invalid filter '{other}': volumes filter by name, label, dangling or driver"
                ),
            }
        }
        Ok(out)
    }

    pub fn matches(&self, v: &VolumeRecord) -> bool {
        if !self.names.is_empty() && !self.names.iter().any(|r| r.is_match(&v.name)) {
            return false;
        }
        if !super::image_filter::LabelFilter::all_match(&self.labels, &v.labels) {
            return false;
        }
        if self.dangling.is_some_and(|d| d != v.users.is_empty()) {
            return false;
        }
        if !self.drivers.is_empty() && !self.drivers.iter().any(|d| d == "local") {
            return false;
        }
        true
    }
}

/// Labels as docker's list formats show them: `k=v,k2=v2`, in key order.
pub fn labels_text(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(name: &str, labels: &[(&str, &str)], users: &[&str]) -> VolumeRecord {
        VolumeRecord {
            name: name.to_string(),
            created: 0,
            anonymous: false,
            users: users.iter().map(|u| u.to_string()).collect(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn filter(f: &[&str]) -> VolumeFilter {
        VolumeFilter::parse(&f.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn filters_combine_as_dockers() {
        let a = vol("cache-a", &[("team", "x"), ("tmp", "")], &[]);
        let b = vol("data-b", &[("team", "y")], &["c1"]);
        assert!(filter(&["label=team"]).matches(&a) && filter(&["label=team"]).matches(&b));
        assert!(filter(&["label=team=x"]).matches(&a) && !filter(&["label=team=x"]).matches(&b));
        // Several label filters must all match.
        assert!(filter(&["label=team", "label=tmp"]).matches(&a));
        assert!(!filter(&["label=team", "label=tmp"]).matches(&b));
        // Several names: any.
        assert!(filter(&["name=^cache", "name=b$"]).matches(&b));
        assert!(!filter(&["name=^cache"]).matches(&b));
        assert!(filter(&["dangling=true"]).matches(&a) && !filter(&["dangling=1"]).matches(&b));
        assert!(filter(&["dangling=false"]).matches(&b));
        assert!(filter(&["driver=local"]).matches(&a) && !filter(&["driver=nfs"]).matches(&a));
        assert_eq!(labels_text(&a.labels), "team=x,tmp=");
    }

    #[test]
    fn bad_filters_are_refused_naming_the_key() {
        let err = |f: &str| {
            VolumeFilter::parse(&[f.to_string()])
                .unwrap_err()
                .to_string()
        };
        assert!(err("bogus=1").contains("invalid filter 'bogus'"));
        assert!(err("dangling=maybe").contains("expected true or false"));
        assert!(err("name=(").contains("invalid filter 'name=('"));
        assert!(err("label").contains("bad format of filter"));
    }
}
