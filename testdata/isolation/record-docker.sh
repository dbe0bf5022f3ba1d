#!/bin/sh
# Records Docker's answers to probes.sh into docker-answers.txt (run from anywhere, as root,
# after ../shared/tools/reference-env has started `docker-ref` with busybox in its registry).
#
#   testdata/isolation/record-docker.sh [DOCKER]      # DOCKER defaults to docker-ref
#
# The container runs as `docker run --network=none -v /:/host:ro` does by default (Docker's
# default capabilities, seccomp profile, device cgroup, masked paths).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
docker=${1:-docker-ref}
image=busybox:latest
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/probes" "$work/probes/bin"
cp "$here/probes.sh" "$work/probes/"
cc -O2 -static -o "$work/probes/bin/syscall-probe" "$here/syscall-probe.c"
$docker image inspect "$image" >/dev/null 2>&1 || $docker pull "$image"
version=$($docker version --format '{{.Server.Version}}')
out="$here/docker-answers.txt"
{
    echo "# Docker $version: docker run --rm --network=none -v /:/host:ro $image sh probes.sh GROUPS"
    echo "# recorded by record-docker.sh on kernel $(uname -r), cgroup $(stat -fc %T /sys/fs/cgroup)"
    echo "# NAME VERDICT DETAIL (tests compare NAME and VERDICT)"
    $docker run --rm --network=none -v /:/host:ro -v "$work/probes:/probes:ro" "$image" \
        sh /probes/probes.sh caps proc sys mount dev robind seccomp
} >"$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out"
