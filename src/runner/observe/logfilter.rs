//! `kiln logs --since/--until/-t/--details`: which entries of the json-file log to show and
//! how, as docker's `logs` does.

use anyhow::{bail, Result};
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};

/// A time as docker's `--since`/`--until` take it: RFC 3339 (`2024-01-02T13:23:37Z`, with
/// fractions or an offset), `2024-01-02T13:23:37` or `2024-01-02` (local time), a Unix
/// timestamp (`1704201817`, `1704201817.5`), or a duration before `now` (`10m`, `1h30m`).
pub fn parse_time(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            if let Some(t) = chrono::Local.from_local_datetime(&t).earliest() {
                return Ok(t.with_timezone(&Utc));
            }
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if let Some(t) = d
            .and_hms_opt(0, 0, 0)
            .and_then(|t| chrono::Local.from_local_datetime(&t).earliest())
        {
            return Ok(t.with_timezone(&Utc));
        }
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let (secs, frac) = s.split_once('.').unwrap_or((s, "0"));
        let secs: i64 = secs.parse().map_err(|_| bad(s))?;
        let nanos: u32 = format!("{frac:0<9}")[..9].parse().map_err(|_| bad(s))?;
        return DateTime::from_timestamp(secs, nanos).ok_or_else(|| bad(s));
    }
    match crate::runner::health::parse_duration(s) {
        Ok(d) => Ok(now - chrono::Duration::from_std(d).map_err(|_| bad(s))?),
        Err(_) => Err(bad(s)),
    }
}

fn bad(s: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "invalid time {s:?}: expected an RFC 3339 time (2024-01-02T13:23:37Z), a date \
         (2024-01-02), a Unix timestamp or a duration before now (10m, 1h30m)"
    )
}

/// Which entries to show and what goes before each.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub timestamps: bool,
    pub details: bool,
}

impl Filter {
    pub fn new(
        since: Option<&str>,
        until: Option<&str>,
        timestamps: bool,
        details: bool,
    ) -> Result<Filter> {
        let now = Utc::now();
        let since = since.map(|s| parse_time(s, now)).transpose()?;
        let until = until.map(|s| parse_time(s, now)).transpose()?;
        if let (Some(a), Some(b)) = (since, until) {
            if b < a {
                bail!("--until is before --since: no log entry can be shown");
            }
        }
        Ok(Filter {
            since,
            until,
            timestamps,
            details,
        })
    }

    fn time_of(entry_time: &str) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(entry_time)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// Whether an entry written at `entry_time` is shown.
    pub fn keeps(&self, entry_time: &str) -> bool {
        if self.since.is_none() && self.until.is_none() {
            return true;
        }
        let Some(t) = Self::time_of(entry_time) else {
            return false;
        };
        self.since.map_or(true, |s| t >= s) && self.until.map_or(true, |u| t <= u)
    }

    /// Whether following can stop: `--until` has passed.
    pub fn past_until(&self) -> bool {
        self.until.is_some_and(|u| Utc::now() > u)
    }

    /// What goes before an entry's text: docker's fixed RFC 3339 time with nanoseconds and a
    /// space for `-t`, and the (empty: kiln has no log attributes) details and a space.
    pub fn prefix(&self, entry_time: &str) -> String {
        let mut p = String::new();
        if self.timestamps {
            match Self::time_of(entry_time) {
                Some(t) => p.push_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)),
                None => p.push_str(entry_time),
            }
            p.push(' ');
        }
        if self.details {
            p.push(' ');
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_as_docker_takes_them() {
        let now = DateTime::parse_from_rfc3339("2026-01-02T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let t = |s| parse_time(s, now).unwrap().to_rfc3339();
        assert_eq!(t("2026-01-01T10:00:00Z"), "2026-01-01T10:00:00+00:00");
        assert_eq!(
            t("2026-01-01T10:00:00.5+01:00"),
            "2026-01-01T09:00:00.500+00:00"
        );
        assert_eq!(t("1767268800"), "2026-01-01T12:00:00+00:00");
        assert_eq!(t("1767268800.25"), "2026-01-01T12:00:00.250+00:00");
        assert_eq!(t("10m"), "2026-01-02T11:50:00+00:00");
        assert_eq!(t("1h30m"), "2026-01-02T10:30:00+00:00");
        assert!(parse_time("yesterday", now).is_err());
    }

    #[test]
    fn keeps_and_prefixes() {
        let f = Filter {
            since: Some(parse_time("2026-01-01T10:00:00Z", Utc::now()).unwrap()),
            until: Some(parse_time("2026-01-01T11:00:00Z", Utc::now()).unwrap()),
            timestamps: true,
            details: true,
        };
        assert!(!f.keeps("2026-01-01T09:59:59.999999999Z"));
        assert!(f.keeps("2026-01-01T10:30:00.000000001Z"));
        assert!(!f.keeps("2026-01-01T11:00:00.1Z"));
        assert_eq!(
            f.prefix("2026-01-01T10:30:00.5Z"),
            "2026-01-01T10:30:00.500000000Z  "
        );
        assert!(Filter::default().keeps("garbage"));
        assert_eq!(Filter::default().prefix("x"), "");
    }
}
