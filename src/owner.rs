//! Which process owns a leftover: a pid and the process's start time (field 22 of
//! `/proc/PID/stat`, clock ticks since boot). The pair names one process across pid reuse, so a
//! file tagged with it is removed only once that very process is gone, never because an
//! unrelated process happens to have the pid now, and never while its owner lives.

/// A process, identified across pid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub pid: i32,
    pub start: u64,
}

impl Owner {
    /// The calling process.
    pub fn current() -> Owner {
        let pid = std::process::id() as i32;
        Owner {
            pid,
            start: start_time(pid).unwrap_or(0),
        }
    }

    /// Whether this process still runs (a zombie counts as gone).
    pub fn is_alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }

    /// `<pid>-<start>`, for file names.
    pub fn tag(&self) -> String {
        format!("{}-{}", self.pid, self.start)
    }

    /// Reads a [`Owner::tag`] back; `None` for anything else.
    pub fn parse_tag(tag: &str) -> Option<Owner> {
        let (pid, start) = tag.split_once('-')?;
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(pid) || !all_digits(start) {
            return None;
        }
        Some(Owner {
            pid: pid.parse().ok().filter(|p| *p > 0)?,
            start: start.parse().ok()?,
        })
    }
}

/// The start time of a live process (field 22 of /proc/PID/stat); `None` when there is no such
/// process or it is a zombie.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state); field 22 is index 19.
    let state = fields.first()?;
    if *state == "Z" || *state == "X" {
        return None;
    }
    fields.get(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_process_is_alive_and_its_tag_reads_back() {
        let me = Owner::current();
        assert!(me.start > 0);
        assert!(me.is_alive());
        assert_eq!(Owner::parse_tag(&me.tag()), Some(me));
    }

    #[test]
    fn the_same_pid_with_another_start_time_is_another_process() {
        let me = Owner::current();
        let earlier = Owner {
            start: me.start - 1,
            ..me
        };
        assert!(!earlier.is_alive(), "a reused pid is not the owner");
    }

    #[test]
    fn a_reaped_child_is_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        let owner = Owner {
            pid,
            start: start_time(std::process::id() as i32).unwrap(),
        };
        assert!(!owner.is_alive());
    }

    #[test]
    fn tags_that_are_not_ours_are_refused() {
        for t in [
            "",
            "12",
            "-5",
            "12-",
            "a-1",
            "1-b",
            "0-5",
            "1-2-3",
            "99999999999-1",
        ] {
            assert_eq!(Owner::parse_tag(t), None, "{t:?}");
        }
        assert_eq!(
            Owner::parse_tag("12-34"),
            Some(Owner { pid: 12, start: 34 })
        );
    }
}
