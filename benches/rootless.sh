#!/usr/bin/env bash
# rootless.sh: kiln as root against kiln as an unprivileged user (rootless) on the same workloads,
# in one run; prints the median wall time of each figure (ms) and the rootless/root ratio.
#
#   benches/rootless.sh [KILN] [USER]     KILN defaults to target/release/kiln, USER to kilnrl-full
#   RUNS=5 ONLY="tiny bigctx parallel" benches/rootless.sh target/debug/kiln
#   ROOTLESS_ENV=KILN_SNAPSHOTTER=copy benches/rootless.sh      the copy-based snapshotter
#
# Run as root. USER must exist with a subuid/subgid range (tests/rootless.rs makes kilnrl-full).
# Workloads come from ../shared/bench/gen-workloads (or $GEN_WORKLOADS); busybox:latest is the test fixture tarball
# (target/test-fixtures/busybox.tar, made by any test that uses it).
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=$(realpath "${1:-target/release/kiln}")
USER_NAME=${2:-kilnrl-full}
RUNS=${RUNS:-5}
ONLY=${ONLY:-tiny bigctx parallel}
ROOTLESS_ENV=${ROOTLESS_ENV:-}   # e.g. KILN_SNAPSHOTTER=copy: the copy-based snapshotter
BUSYBOX=target/test-fixtures/busybox.tar
[ -x "$KILN" ] || { echo "rootless.sh: no kiln binary at $KILN"; exit 2; }
[ -f "$BUSYBOX" ] || { echo "rootless.sh: no $BUSYBOX (run cargo test --test rootless first)"; exit 2; }
id "$USER_NAME" >/dev/null || { echo "rootless.sh: no user $USER_NAME"; exit 2; }

TMP=$(mktemp -d /tmp/kiln-rootless-bench.XXXX)
chmod 755 "$TMP"
trap 'rm -rf "$TMP"' EXIT
W=$TMP/workloads
GEN=${GEN_WORKLOADS:-}
for g in ../shared/bench/gen-workloads ../../shared/bench/gen-workloads; do
  [ -n "$GEN" ] || { [ -x "$g" ] && GEN=$g; }
done
[ -n "$GEN" ] || { echo "rootless.sh: no gen-workloads (set GEN_WORKLOADS)"; exit 2; }
"$GEN" "$W" >/dev/null
chmod -R a+rX "$W"
install -m 755 "$KILN" "$TMP/kiln"
install -m 644 "$BUSYBOX" "$TMP/busybox.tar"
HOME_DIR=$TMP/home
mkdir -p "$HOME_DIR" && chown "$USER_NAME": "$HOME_DIR" && chmod 700 "$HOME_DIR"

# Both sides start kiln the same way (setpriv, then env), so the ratio is kiln's own cost and
# not the few milliseconds of the two wrapper execs.
as_root() { setpriv --reuid=0 --regid=0 --clear-groups -- \
  env HOME=/root "$TMP/kiln" --root "$TMP/root-state" "$@"; }
as_user() { setpriv --reuid="$USER_NAME" --regid="$USER_NAME" --clear-groups -- \
  env HOME="$HOME_DIR" $ROOTLESS_ENV "$TMP/kiln" "$@"; }
as_root import "$TMP/busybox.tar" busybox:latest >/dev/null
as_user import "$TMP/busybox.tar" busybox:latest >/dev/null

ms() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1 || { echo FAIL; return; }; e=$(date +%s%N); echo $(((e - s) / 1000000)); }
median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print "FAIL"; else print a[int((NR+1)/2)]}'; }
measure() { # who setup args...
  local who=$1 setup=$2; shift 2
  for _ in $(seq "$RUNS"); do eval "$setup"; ms "$who" build -q "$@"; done | grep -v FAIL | median
}
row() {
  local ratio=n/a
  if [[ $2 =~ ^[0-9]+$ && $3 =~ ^[0-9]+$ && $2 -gt 0 ]]; then ratio=$(awk -v a="$3" -v b="$2" 'BEGIN{printf "%.2f", a/b}'); fi
  printf "%-30s %10s %10s %8s\n" "$1" "$2" "$3" "$ratio"
}
echo "kiln: $KILN   runs per figure: $RUNS   (ms, median; ratio = rootless/root)"
printf "%-30s %10s %10s %8s\n" figure root rootless ratio
for w in $ONLY; do
  case $w in
    tiny|parallel)
      row "$w: cold build" "$(measure as_root : --no-cache "$W/$w")" "$(measure as_user : --no-cache "$W/$w")"
      row "$w: no-op rebuild" "$(measure as_root : "$W/$w")" "$(measure as_user : "$W/$w")"
      ;;
    bigctx)
      f="$W/bigctx/node_modules/pkg1500/lib/f3.js"
      row "bigctx: cold build" "$(measure as_root : --no-cache "$W/bigctx")" "$(measure as_user : --no-cache "$W/bigctx")"
      row "bigctx: no-op rebuild" "$(measure as_root : "$W/bigctx")" "$(measure as_user : "$W/bigctx")"
      row "bigctx: one file changed" "$(measure as_root "echo // \$RANDOM >> $f" "$W/bigctx")" "$(measure as_user "echo // \$RANDOM >> $f" "$W/bigctx")"
      ;;
  esac
done
