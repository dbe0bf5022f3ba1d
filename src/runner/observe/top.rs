//! `kiln top`: a container's processes as the host sees them, as docker's: the host's `ps`
//! (with the user's options, `-ef` by default) filtered to the processes in the container's PID
//! namespace that are in its cgroup.

use std::collections::HashSet;

use anyhow::{bail, Context, Result};

use crate::runner::state::{ContainerRecord, Status};
use crate::sandbox::cgroup;

/// The table: ps's column titles and one row per process (the last column joins the rest of
/// the line, as the command line may contain spaces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Top {
    pub titles: Vec<String>,
    pub processes: Vec<Vec<String>>,
}

/// The host pids of the container's processes: those in its cgroup that are in the PID
/// namespace of its init (kiln's setup process, outside that namespace, is left out).
pub fn container_pids(rec: &ContainerRecord) -> Result<Vec<i32>> {
    if rec.status() != Status::Running || rec.init_pid <= 0 {
        bail!("container {} is not running", rec.name);
    }
    let init = rec.init_pid;
    let ns = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    if crate::rootless::in_userns() {
        // No cgroup rootless: every process of the host in the init's PID namespace.
        let init_ns = ns(init).with_context(|| format!("container {} is not running", rec.name))?;
        let mut pids: Vec<i32> = std::fs::read_dir("/proc")
            .context("reading /proc")?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|p| ns(*p).as_ref() == Some(&init_ns))
            .collect();
        pids.sort_unstable();
        return Ok(pids);
    }
    let dir = cgroup::dir_of(init, "freezer")
        .or_else(|| cgroup::dir_of(init, "devices"))
        .or_else(|| cgroup::dir_of(init, "pids"))
        .with_context(|| format!("container {}: its cgroup was not found", rec.name))?;
    let procs = std::fs::read_to_string(dir.join("cgroup.procs"))
        .with_context(|| format!("reading {}", dir.join("cgroup.procs").display()))?;
    let init_ns = ns(init).with_context(|| format!("container {} is not running", rec.name))?;
    let mut pids: Vec<i32> = procs
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|p| ns(*p).as_ref() == Some(&init_ns))
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

/// Runs the host's `ps` with `ps_args` (whitespace-separated; `-ef` when empty) and keeps the
/// container's processes.
pub fn top(rec: &ContainerRecord, ps_args: &[String]) -> Result<Top> {
    let pids = container_pids(rec)?;
    let args: Vec<String> = if ps_args.is_empty() {
        vec!["-ef".into()]
    } else {
        ps_args
            .iter()
            .flat_map(|a| a.split_whitespace().map(str::to_string))
            .collect()
    };
    let list = pids
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    // `-q PIDS` lists only those (procps); a ps without it, or options it conflicts with, gets
    // the full list, filtered below either way.
    let run = |extra: &[&str]| {
        std::process::Command::new("ps")
            .args(&args)
            .args(extra)
            .output()
    };
    let mut output = run(&["-q", &list]).context("running ps (is procps installed?)")?;
    if !output.status.success() {
        output = run(&[]).context("running ps")?;
    }
    if !output.status.success() {
        bail!(
            "ps {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    parse_ps(&String::from_utf8_lossy(&output.stdout), &pids)
}

/// Keeps the lines of ps's output whose PID column is one of `pids`.
pub fn parse_ps(text: &str, pids: &[i32]) -> Result<Top> {
    let mut lines = text.lines();
    let titles: Vec<String> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let pid_col = titles.iter().position(|t| t == "PID").with_context(|| {
        "couldn't find the PID field in ps output: give ps options that show it (e.g. -o pid,comm)"
    })?;
    let wanted: HashSet<i32> = pids.iter().copied().collect();
    let mut processes = Vec::new();
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < titles.len() {
            continue;
        }
        let Ok(pid) = fields[pid_col].parse::<i32>() else {
            continue;
        };
        if !wanted.contains(&pid) {
            continue;
        }
        let last = titles.len() - 1;
        let mut row: Vec<String> = fields[..last].iter().map(|f| f.to_string()).collect();
        row.push(fields[last..].join(" "));
        processes.push(row);
    }
    Ok(Top { titles, processes })
}

/// The table as docker prints it: every column but the last padded to at least 20 characters,
/// and 3 more than its widest cell.
pub fn format_table(top: &Top) -> String {
    let mut widths: Vec<usize> = top.titles.iter().map(|t| t.chars().count()).collect();
    for row in &top.processes {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&top.titles).chain(&top.processes) {
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < row.len() {
                let width = (widths[i] + 3).max(20);
                out.push_str(&" ".repeat(width - cell.chars().count()));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PS_EF: &str = "\
UID          PID    PPID  C STIME TTY          TIME CMD
root           1       0  0 09:00 ?        00:00:01 /sbin/init
root         200       1  0 09:59 ?        00:00:00 sh -c i=0; while true; do sleep 1; done
root         201     200  0 09:59 ?        00:00:00 sleep 1
";

    #[test]
    fn filters_by_pid_and_keeps_the_command_line_whole() {
        let top = parse_ps(PS_EF, &[200, 201]).unwrap();
        assert_eq!(
            top.titles,
            ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
        );
        assert_eq!(top.processes.len(), 2);
        assert_eq!(
            top.processes[0][7],
            "sh -c i=0; while true; do sleep 1; done"
        );
        // Docker's layout (recorded from `docker top` of Docker 28.5).
        let table = format_table(&top);
        let first = table.lines().nth(1).unwrap();
        assert!(
            first.starts_with("root                200                 1                   0 "),
            "{table}"
        );
        assert!(parse_ps("USER COMMAND\nroot sh\n", &[1]).is_err());
    }
}
