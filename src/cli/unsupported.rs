//! Docker flags kiln does not have, and what they do in docker: a docker user who types one gets
//! `kiln does not support --FLAG (docker: what it does)` rather than clap's bare "unexpected
//! argument", so they know whether it matters for what they are doing.

/// (command, long flag, short flag, what docker's flag does). Commands are named by their short
/// forms (`images`, `ps`); the management forms (`image ls`, `container ls`) map to them.
const TABLE: &[(&str, &str, Option<char>, &str)] = &[
    // build
    (
        "build",
        "annotation",
        None,
        "adds OCI annotations to the image manifest",
    ),
    (
        "build",
        "attest",
        None,
        "attaches attestations (SBOM, provenance) to the image",
    ),
    (
        "build",
        "builder",
        None,
        "selects a buildx builder instance; kiln is its own builder",
    ),
    (
        "build",
        "cgroup-parent",
        None,
        "sets the parent cgroup of RUN steps",
    ),
    (
        "build",
        "metadata-file",
        None,
        "writes the build result metadata as JSON to a file",
    ),
    (
        "build",
        "provenance",
        None,
        "attaches a provenance attestation",
    ),
    ("build", "sbom", None, "attaches an SBOM attestation"),
    ("build", "debug", Some('D'), "enables debug logging"),
    ("build", "squash", None, "squashes the new layers into one"),
    (
        "build",
        "isolation",
        None,
        "selects the container isolation technology (Windows)",
    ),
    // run
    (
        "run",
        "annotation",
        None,
        "adds an OCI annotation to the container",
    ),
    (
        "run",
        "attach",
        Some('a'),
        "attaches to only some of STDIN, STDOUT, STDERR",
    ),
    ("run", "blkio-weight", None, "sets the block IO weight"),
    (
        "run",
        "cgroup-parent",
        None,
        "sets the container's parent cgroup",
    ),
    (
        "run",
        "cgroupns",
        None,
        "selects the cgroup namespace mode (host or private)",
    ),
    ("run", "cidfile", None, "writes the container ID to a file"),
    (
        "run",
        "cpu-period",
        None,
        "sets the CFS period for a CPU quota",
    ),
    ("run", "cpu-quota", None, "sets a CFS CPU quota"),
    ("run", "cpuset-mems", None, "limits the NUMA memory nodes"),
    ("run", "device", None, "adds a host device to the container"),
    (
        "run",
        "device-cgroup-rule",
        None,
        "adds a rule to the container's device cgroup",
    ),
    (
        "run",
        "dns",
        None,
        "sets DNS servers in the container's /etc/resolv.conf",
    ),
    (
        "run",
        "dns-option",
        None,
        "sets DNS options in /etc/resolv.conf",
    ),
    (
        "run",
        "dns-search",
        None,
        "sets DNS search domains in /etc/resolv.conf",
    ),
    (
        "run",
        "domainname",
        None,
        "sets the container's NIS domain name",
    ),
    (
        "run",
        "expose",
        None,
        "exposes ports without publishing them",
    ),
    ("run", "gpus", None, "adds GPU devices to the container"),
    (
        "run",
        "ip",
        None,
        "sets the container's IPv4 address on a user-defined network",
    ),
    (
        "run",
        "ip6",
        None,
        "sets the container's IPv6 address on a user-defined network",
    ),
    (
        "run",
        "ipc",
        None,
        "selects the IPC namespace mode (host, shareable, container:NAME)",
    ),
    (
        "run",
        "label-file",
        None,
        "reads container labels from a file",
    ),
    (
        "run",
        "link",
        None,
        "links to another container on the legacy bridge",
    ),
    (
        "run",
        "mac-address",
        None,
        "sets the container's MAC address",
    ),
    (
        "run",
        "memory-reservation",
        None,
        "sets a soft memory limit",
    ),
    (
        "run",
        "memory-swappiness",
        None,
        "tunes the container's swappiness",
    ),
    ("run", "network-alias", None, "adds a network-scoped alias"),
    (
        "run",
        "oom-kill-disable",
        None,
        "disables the OOM killer for the container",
    ),
    (
        "run",
        "oom-score-adj",
        None,
        "tunes the host's OOM preference for the container",
    ),
    (
        "run",
        "pid",
        None,
        "selects the PID namespace (host or container:NAME)",
    ),
    ("run", "quiet", Some('q'), "suppresses the pull output"),
    ("run", "runtime", None, "selects the OCI runtime"),
    (
        "run",
        "sig-proxy",
        None,
        "controls whether signals are proxied to the container",
    ),
    ("run", "storage-opt", None, "sets storage driver options"),
    ("run", "sysctl", None, "sets namespaced kernel parameters"),
    ("run", "userns", None, "selects the user namespace mode"),
    ("run", "uts", None, "selects the UTS namespace mode"),
    ("run", "volume-driver", None, "selects the volume driver"),
    (
        "run",
        "blkio-weight-device",
        None,
        "sets the block IO weight of a device",
    ),
    (
        "run",
        "cpu-rt-period",
        None,
        "limits the CPU real-time period",
    ),
    (
        "run",
        "cpu-rt-runtime",
        None,
        "limits the CPU real-time runtime",
    ),
    (
        "run",
        "device-read-bps",
        None,
        "limits the read rate from a device (bytes per second)",
    ),
    (
        "run",
        "device-read-iops",
        None,
        "limits the read rate from a device (IO per second)",
    ),
    (
        "run",
        "device-write-bps",
        None,
        "limits the write rate to a device (bytes per second)",
    ),
    (
        "run",
        "device-write-iops",
        None,
        "limits the write rate to a device (IO per second)",
    ),
    (
        "run",
        "disable-content-trust",
        None,
        "skips image verification (Docker Content Trust)",
    ),
    (
        "run",
        "health-start-interval",
        None,
        "sets the health check interval during the start period",
    ),
    (
        "run",
        "isolation",
        None,
        "selects the container isolation technology (Windows)",
    ),
    (
        "run",
        "kernel-memory",
        None,
        "limits kernel memory (deprecated in docker)",
    ),
    (
        "run",
        "link-local-ip",
        None,
        "sets the container's link-local addresses",
    ),
    (
        "run",
        "use-api-socket",
        None,
        "bind mounts the docker API socket into the container",
    ),
    // start
    (
        "start",
        "detach-keys",
        None,
        "overrides the key sequence for detaching",
    ),
    // restart
    (
        "restart",
        "signal",
        Some('s'),
        "sets the signal that stops the container",
    ),
    (
        "run",
        "volumes-from",
        None,
        "mounts the volumes of another container",
    ),
    // ps
    // images
    (
        "images",
        "tree",
        None,
        "lists multi-platform images as a tree",
    ),
    // rmi
    ("rmi", "no-prune", None, "keeps untagged parent images"),
    ("rmi", "platform", None, "removes only one platform variant"),
    // inspect
    (
        "inspect",
        "size",
        Some('s'),
        "adds the container's disk use",
    ),
    (
        "inspect",
        "type",
        None,
        "inspects only objects of one type (image, container, volume)",
    ),
    // logs
    // stop / rm / exec
    (
        "stop",
        "signal",
        Some('s'),
        "sets the signal to send first (default the image's STOPSIGNAL)",
    ),
    (
        "rm",
        "link",
        Some('l'),
        "removes a legacy link, not the container",
    ),
    (
        "exec",
        "detach",
        Some('d'),
        "runs the command in the background",
    ),
    (
        "exec",
        "detach-keys",
        None,
        "overrides the key sequence for detaching",
    ),
    (
        "exec",
        "env-file",
        None,
        "reads environment variables from a file",
    ),
    // save / load / import
    ("load", "platform", None, "loads only one platform variant"),
    (
        "import",
        "message",
        Some('m'),
        "sets the commit message of the imported image",
    ),
    // pull / push / login
    (
        "pull",
        "all-tags",
        Some('a'),
        "pulls every tag of the repository",
    ),
    (
        "pull",
        "disable-content-trust",
        None,
        "skips image verification (the default)",
    ),
    (
        "push",
        "all-tags",
        Some('a'),
        "pushes every tag of the repository",
    ),
    (
        "push",
        "disable-content-trust",
        None,
        "skips image signing (the default)",
    ),
    ("push", "platform", None, "pushes one platform's manifest"),
    (
        "history",
        "platform",
        None,
        "shows the history of one platform variant",
    ),
    (
        "login",
        "password",
        Some('p'),
        "takes the password on the command line; kiln takes it only from stdin (--password-stdin)",
    ),
];

/// The docker command a command line runs, by its short name (`image ls` -> `images`), from
/// the arguments after the program name; None when there is none.
pub fn command_of(args: &[String]) -> Option<String> {
    let mut words = Vec::new();
    let mut i = 0;
    while i < args.len() && words.len() < 2 {
        let a = &args[i];
        if a == "--root" {
            i += 2;
            continue;
        }
        if a.starts_with('-') {
            if !words.is_empty() {
                break;
            }
            i += 1;
            continue;
        }
        words.push(a.as_str());
        i += 1;
    }
    let first = *words.first()?;
    let name = match (first, words.get(1).copied()) {
        ("image", Some(sub)) => match sub {
            "ls" | "list" => "images",
            "rm" | "remove" => "rmi",
            other => other,
        },
        ("container", Some(sub)) => match sub {
            "ls" | "list" => "ps",
            "remove" => "rm",
            other => other,
        },
        (other, _) => other,
    };
    Some(name.to_string())
}

/// The message for a flag kiln's `command` does not have, when docker's does; None when the
/// flag is not one of docker's (clap's own error is the better answer then). `flag` is as
/// typed: `--privileged`, `--log-opt=max-size=1m`, `-a`.
pub fn message(command: &str, flag: &str) -> Option<String> {
    let flag = flag.split_once('=').map_or(flag, |(f, _)| f);
    let found = if let Some(long) = flag.strip_prefix("--") {
        TABLE
            .iter()
            .find(|(c, l, _, _)| *c == command && *l == long)
    } else if let Some(short) = flag.strip_prefix('-') {
        let mut chars = short.chars();
        let first = chars.next()?;
        TABLE
            .iter()
            .find(|(c, _, s, _)| *c == command && *s == Some(first))
    } else {
        None
    }?;
    let (_, long, short, what) = found;
    let shown = match short {
        Some(s) if !flag.starts_with("--") => format!("-{s}/--{long}"),
        _ => format!("--{long}"),
    };
    Some(format!(
        "kiln {command}: kiln does not support {shown} (docker: {what})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn commands_are_found_past_globals_and_management_forms() {
        assert_eq!(
            command_of(&args("run --privileged x")).as_deref(),
            Some("run")
        );
        assert_eq!(
            command_of(&args("--root /r ps -f x")).as_deref(),
            Some("ps")
        );
        assert_eq!(
            command_of(&args("image ls --digests")).as_deref(),
            Some("images")
        );
        assert_eq!(command_of(&args("container ls -s")).as_deref(), Some("ps"));
        assert_eq!(command_of(&args("image rm -x a")).as_deref(), Some("rmi"));
        assert_eq!(
            command_of(&args("container logs --since 1h c")).as_deref(),
            Some("logs")
        );
        assert_eq!(command_of(&args("--root /r")), None);
    }

    #[test]
    fn docker_flags_get_docker_meaning_others_none() {
        let m = message("run", "--pid").unwrap();
        assert_eq!(
            m,
            "kiln run: kiln does not support --pid (docker: selects the PID namespace (host or \
             container:NAME))"
        );
        assert!(message("run", "--link=other:alias")
            .unwrap()
            .contains("does not support --link "));
        assert!(message("run", "--no-such-docker-flag").is_none());
        assert!(message("images", "--pid").is_none());
        assert!(message("stats", "--format").is_none());
    }

    /// The table names only flags kiln lacks: a flag added to kiln must leave the table.
    #[test]
    fn no_entry_is_a_flag_kiln_has() {
        use clap::CommandFactory;
        let cli = crate::cli::Cli::command();
        for (c, long, short, _) in TABLE {
            let cmd = cli
                .find_subcommand(c)
                .unwrap_or_else(|| panic!("kiln has no command {c}"));
            for arg in cmd.get_arguments() {
                assert_ne!(arg.get_long(), Some(*long), "kiln {c} has --{long}");
                if let Some(s) = short {
                    assert_ne!(arg.get_short(), Some(*s), "kiln {c} has -{s}");
                }
            }
        }
    }

    #[test]
    fn every_entry_is_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for (c, l, _, _) in TABLE {
            assert!(seen.insert((c, l)), "{c} --{l} twice");
        }
    }
}
