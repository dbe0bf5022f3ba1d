#!/usr/bin/env bash
# The CI fleet sharing its build cache through a registry (`--cache-to/--cache-from
# type=registry,mode=max`), kiln alone, against Debian's docker-registry on a free loopback port.
# The workload is the shared bench's `ci` one (a dependency stage, 5,000 vendored files, an app
# file, FROM the loopback registry). Every runner is an empty kiln root:
#   A: cold build, cache export (mode=max), push
#   B: same commit, --cache-from + --cache-to, push
#   B': after main.go changed, the same flags
# Prints the median wall time of each and what each cache export uploaded (from kiln's
# "exported cache to ..." line), plus the growth of the registry's storage.
#
#   cargo build --release && benches/remote_cache.sh [RUNS]
#   SETTLE=35 benches/remote_cache.sh   wait 35 s after each root is removed, before the next run
#
# SETTLE: on ext4 without a journal (this VM's root filesystem) the inode allocator skips inodes
# freed in the last 30 s, one by one from the start of the group, so a 5,000-file tree written
# right after another was deleted takes 2-8x longer (runner A's COPY vendor, runner B's unpack of
# the vendor layer); SETTLE takes that out of the figures.
set -euo pipefail
RUNS=${1:-3}
SETTLE=${SETTLE:-0}
KILN=${KILN:-$(dirname "$0")/../target/release/kiln}
[ -x "$KILN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
KILN=$(realpath "$KILN")
BUSYBOX_TAR=${BUSYBOX_TAR:-/var/cache/kiln-reference/busybox.tar}
[ -f "$BUSYBOX_TAR" ] || BUSYBOX_TAR=$(dirname "$0")/../target/test-fixtures/busybox.tar
[ -f "$BUSYBOX_TAR" ] || { echo "no busybox tar (run the tests once, or reference-env)" >&2; exit 1; }
WORK=$(mktemp -d /var/tmp/kiln-cache-bench.XXXXXX)
REG_PID=
cleanup() {
  [ -n "$REG_PID" ] && { kill "$REG_PID" 2>/dev/null || true; wait "$REG_PID" 2>/dev/null || true; }
  rm -rf "$WORK"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$WORK/reg"
cat > "$WORK/reg/config.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/reg/data
http:
  addr: 127.0.0.1:$port
YML
/usr/bin/docker-registry serve "$WORK/reg/config.yml" > "$WORK/reg/log" 2>&1 &
REG_PID=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
reg=127.0.0.1:$port

# The base, pushed once.
"$KILN" --root "$WORK/seed" import "$BUSYBOX_TAR" "$reg/busybox:latest" >/dev/null
"$KILN" --root "$WORK/seed" push -q "$reg/busybox:latest" >/dev/null 2>&1 || "$KILN" --root "$WORK/seed" push "$reg/busybox:latest" >/dev/null
rm -rf "$WORK/seed"

# The ci workload (as ../shared/bench/gen-workloads makes it).
W=$WORK/ci
mkdir -p "$W"
python3 - "$W" <<'P'
import os, sys, random
root = sys.argv[1]; r = random.Random(7)
for d in range(500):
    p = os.path.join(root, "vendor", f"mod{d:03d}")
    os.makedirs(p, exist_ok=True)
    for f in range(10):
        with open(os.path.join(p, f"f{f}.go"), "w") as fh:
            fh.write(("// mod %d file %d\n" % (d, f)) + "y" * r.choice([300, 1500, 6000]) + "\n")
P
echo 'package main // v1' >"$W/main.go"
cat >"$W/Dockerfile" <<D
FROM $reg/busybox:latest AS deps
RUN for i in \$(seq 1 30); do seq 1 200000 > /dep.\$i; done && cat /dep.* | md5sum > /deps.sum
FROM $reg/busybox:latest
WORKDIR /src
COPY --from=deps /deps.sum /src/deps.sum
COPY vendor /src/vendor
COPY main.go /src/main.go
RUN ls -R /src | wc -l > /src/count && cat /src/main.go /src/deps.sum > /src/build.out
CMD ["cat", "/src/build.out"]
D

to="--cache-to type=registry,ref=$reg/ci-cache:kiln,mode=max"
from="--cache-from type=registry,ref=$reg/ci-cache:kiln"
now() { date +%s%N; }
# run_ci ROOT FLAGS...: one runner's build + push; prints "ms uploaded_bytes"
run_ci() {
  local root=$1; shift
  rm -rf "$root"
  local t0 t1 log=$WORK/log
  t0=$(now)
  "$KILN" --root "$root" build --progress plain --network host "$@" -t "$reg/ci:kiln" --push "$W" >"$log" 2>&1 ||
    { echo "FAIL: $(tail -5 "$log")" >&2; exit 1; }
  t1=$(now)
  local bytes
  bytes=$(sed -n 's/.*exported cache to .*: [0-9]* records, [0-9]* blobs: [0-9]* uploaded (\([0-9]*\) bytes).*/\1/p' "$log" | head -1)
  echo "$(((t1 - t0) / 1000000)) ${bytes:-?} $(grep -c ' CACHED$' "$log")"
  [ -n "${KEEP_LOG:-}" ] && cp "$log" "$KEEP_LOG.$(date +%s%N)"
  rm -rf "$root"
  sleep "$SETTLE"
}
median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
du_reg() { du -sb "$WORK/reg/data" | cut -f1; }

printf "%-36s %10s %16s %8s %14s\n" figure "ms (med)" "cache upload B" cached "registry grew"
row() {
  local label=$1 setup=$2; shift 2
  local ts="" last="" before after
  before=$(du_reg)
  for _ in $(seq "$RUNS"); do
    eval "$setup"
    last=$(run_ci "$WORK/root" "$@")
    ts="$ts ${last%% *}"
  done
  after=$(du_reg)
  read -r _ bytes cached <<<"$last"
  printf "%-36s %10s %16s %8s %14s\n" "$label" "$(echo $ts | tr ' ' '\n' | median)" "$bytes" "$cached" "$((after - before))"
}
# Runner A's figure is measured on an empty cache each time: the cache tag is re-created.
row "ci: runner A cold + export + push" "rm -rf $WORK/reg/data/docker/registry/v2/repositories/ci-cache" $to
row "ci: runner B, same commit" ":" $from $to
row "ci: runner B, main.go changed" "echo // \$RANDOM >> $W/main.go" $from $to
