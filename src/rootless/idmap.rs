//! The text formats of id mappings: `/proc/PID/uid_map` lines and `/etc/subuid` entries.

/// One line of `/proc/PID/uid_map`: `count` ids from `inside` map to `outside` onward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMapLine {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// Parses `/proc/PID/uid_map` (or gid_map); malformed lines are skipped.
pub fn parse_id_map(text: &str) -> Vec<IdMapLine> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().map(str::parse::<u32>);
            Some(IdMapLine {
                inside: f.next()?.ok()?,
                outside: f.next()?.ok()?,
                count: f.next()?.ok()?,
            })
        })
        .collect()
}

/// One subordinate range of `/etc/subuid` or `/etc/subgid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubIdRange {
    pub start: u32,
    pub count: u32,
}

/// The ranges of `user` (by name or number) in the text of `/etc/subuid` / `/etc/subgid`
/// (`name:start:count` lines; comments and malformed lines skipped), in file order.
pub fn subid_ranges(text: &str, name: &str, uid: u32) -> Vec<SubIdRange> {
    let uid = uid.to_string();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut f = l.trim().split(':');
            let who = f.next()?;
            if who != name && who != uid {
                return None;
            }
            let start = f.next()?.parse().ok()?;
            let count: u32 = f.next()?.parse().ok()?;
            (count > 0).then_some(SubIdRange { start, count })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rootless::{map_args, Mapping};

    #[test]
    fn mappings_from_uid_map() {
        assert_eq!(
            Mapping::from_uid_map("         0          0 4294967295\n"),
            Mapping::Host
        );
        assert_eq!(Mapping::from_uid_map("0 1000 1\n"), Mapping::Single);
        assert_eq!(
            Mapping::from_uid_map("0 1000 1\n1 100000 65536\n"),
            Mapping::Full
        );
        assert_eq!(Mapping::from_uid_map("0 0 65536\n"), Mapping::Full);
    }

    #[test]
    fn subid_lines_by_name_or_uid() {
        let text =
            "# c\nalice:100000:65536\nbob:165536:65536\n1000:300000:10\nalice:x:1\nalice:5:0\n";
        assert_eq!(
            subid_ranges(text, "alice", 1000),
            vec![
                SubIdRange {
                    start: 100000,
                    count: 65536
                },
                SubIdRange {
                    start: 300000,
                    count: 10
                }
            ]
        );
        assert!(subid_ranges(text, "carol", 1002).is_empty());
    }

    #[test]
    fn newuidmap_arguments_stack_the_ranges() {
        let r = [
            SubIdRange {
                start: 100000,
                count: 65536,
            },
            SubIdRange {
                start: 300000,
                count: 10,
            },
        ];
        assert_eq!(
            map_args(1000, &r).join(" "),
            "0 1000 1 1 100000 65536 65537 300000 10"
        );
        assert_eq!(map_args(7, &[]).join(" "), "0 7 1");
    }
}
