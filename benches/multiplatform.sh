#!/usr/bin/env bash
# multiplatform.sh: time of a two-platform build (linux/amd64 + linux/arm64, arm64 emulated by
# qemu-user-static) of a small multi-stage workload, and the share of it spent in the emulated
# RUN steps. Usage, as root, after `kiln binfmt --install linux/arm64`:
#   benches/multiplatform.sh [KILN] [RUNS]
# Needs the fixtures the tests make (target/test-fixtures/busybox.tar, busybox-arm64.tar: run
# `cargo test --test build_multiplatform` once). Not a timed test: it prints the figures.
set -euo pipefail
KILN=$(realpath "${1:-target/release/kiln}")
RUNS=${2:-3}
FIX=target/test-fixtures
ROOT=$(mktemp -d /tmp/kiln-mp-bench.XXXX)
CTX=$(mktemp -d /tmp/kiln-mp-ctx.XXXX)
trap 'rm -rf "$ROOT" "$CTX"' EXIT
k() { "$KILN" --root "$ROOT" "$@"; }
k import -q --platform linux/arm64 "$FIX/busybox-arm64.tar" bb:arm64 >/dev/null
k import -q "$FIX/busybox.tar" bb:amd64 >/dev/null
k manifest create bb bb:arm64 bb:amd64 >/dev/null
# A native builder stage (shared by both platforms), then per platform a CPU-bound RUN.
cat > "$CTX/Dockerfile" <<'D'
FROM --platform=$BUILDPLATFORM bb AS builder
RUN i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo $i > /tool
FROM bb
ARG TARGETARCH
COPY --from=builder /tool /tool
RUN i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; cp /bin/busybox /x; echo $TARGETARCH > /arch
D
for run in $(seq "$RUNS"); do
  start=$(date +%s.%N)
  k build --no-cache --progress plain --platform linux/amd64,linux/arm64 -t mp "$CTX" \
    >"$CTX/out.txt" 2>&1
  end=$(date +%s.%N)
  # The DONE time of each platform's final RUN (the step id of its "[linux/... stage-1 3/3]" line).
  python3 - "$start" "$end" "$CTX/out.txt" <<'P'
import re, sys
text = open(sys.argv[3]).read()
ids = {}
for line in text.splitlines():
    m = re.match(r"#(\d+) \[(linux/\w+) stage-1 \d+/\d+\] RUN", line)
    if m: ids[m.group(1)] = m.group(2)
done = {}
for line in text.splitlines():
    m = re.match(r"#(\d+) DONE ([\d.]+)s", line)
    if m and m.group(1) in ids: done[ids[m.group(1)]] = float(m.group(2))
total = float(sys.argv[2]) - float(sys.argv[1])
arm = done.get("linux/arm64", 0.0); amd = done.get("linux/amd64", 0.0)
print(f"two-platform build {total:.2f}s; final RUN amd64 {amd:.2f}s (native), arm64 {arm:.2f}s (emulated): "
      f"emulated RUN = {100*arm/total:.0f}% of the wall time (the platforms run in parallel)")
P
done
