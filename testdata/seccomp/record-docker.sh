#!/bin/sh
# Records Docker's answers to the seccomp probes into docker-answers.txt, which
# tests/sandbox_seccomp.rs compares kiln's answers with. Needs ../shared/tools/reference-env
# running (docker-ref) and gcc with a static libc. The script run in the container is the same
# as the test's (PROBE_SCRIPT there).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
gcc -static -O2 -o "$tmp/probe" "$here/probe.c"
script=$(sed -n 's/^const PROBE_SCRIPT: &str = "\(.*\)";$/\1/p' "$here/../../tests/sandbox_seccomp.rs" | sed 's/\\"/"/g')
[ -n "$script" ] || { echo "PROBE_SCRIPT not found in tests/sandbox_seccomp.rs" >&2; exit 1; }
out="$here/docker-answers.txt"
{
    echo "# Docker's answers ($(docker-ref version --format '{{.Server.Version}}'), docker-ref run --rm --network=none busybox),"
    echo "# recorded by testdata/seccomp/record-docker.sh on kernel $(uname -r)."
    for mode in default unconfined deny-mkdir; do
        case $mode in
            default) opt= ;;
            unconfined) opt="--security-opt seccomp=unconfined" ;;
            deny-mkdir) opt="--security-opt seccomp=$here/deny-mkdir.json" ;;
        esac
        echo "[$mode]"
        # shellcheck disable=SC2086
        docker-ref run --rm --network=none $opt -v "$tmp/probe:/probe:ro" busybox sh -c "$script"
    done
} >"$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out"
