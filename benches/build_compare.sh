#!/usr/bin/env bash
# build_compare.sh: kiln build against Docker's BuildKit on ../shared/bench workloads, for when
# `kiln import` is not available to ../shared/bench/compare (it seeds the root through the test
# helper instead). Usage, as root, from the repository:
#   cargo build --release && benches/build_compare.sh [RUNS]
# Prints medians in ms (hyperfine) and kiln's peak RSS for the bigctx cold build.
set -euo pipefail
RUNS=${1:-5}
W=${WORKLOADS:-/tmp/kiln-bench}
KILN=$(realpath target/release/kiln)
[ -d "$W/tiny" ] || ../shared/bench/gen-workloads "$W" >/dev/null
ROOT=$(mktemp -d /tmp/kiln-bench-root.XXXX)
trap 'rm -rf "$ROOT"' EXIT
KILN_SEED_ROOT=$ROOT KILN_SEED_TAR=/var/cache/kiln-reference/busybox.tar \
  cargo test -q --test build_e2e seed_root -- --ignored >/dev/null
k() { "$KILN" --root "$ROOT" build -q --network host -t "bench/$1" "${@:2}" "$W/$1"; }
d() { docker-ref build -q --network=host -t "bench/$1" "${@:2}" "$W/$1"; }
export -f k d; export KILN ROOT W
f="$W/bigctx/node_modules/pkg1500/lib/f3.js"
hf() { hyperfine -N --runs "$RUNS" --export-json /tmp/hf.json "$@" >/dev/null 2>&1 || true; python3 -c 'import json;r=json.load(open("/tmp/hf.json"))["results"];print("  ".join(f"{x[\"command\"][:40]:40s} {x[\"median\"]*1000:8.0f} ms" for x in r))'; }
echo "tiny no-op";            k tiny >/dev/null; d tiny >/dev/null; hf "bash -c 'k tiny'" "bash -c 'd tiny'"
echo "bigctx cold";           hf "bash -c 'k bigctx --no-cache'" "bash -c 'd bigctx --no-cache'"
echo "bigctx no-op";          hf "bash -c 'k bigctx'" "bash -c 'd bigctx'"
echo "bigctx one file";       hf --prepare "bash -c 'echo // \$RANDOM >> $f'" "bash -c 'k bigctx'" "bash -c 'd bigctx'"
echo "parallel cold";         hf "bash -c 'k parallel --no-cache'" "bash -c 'd parallel --no-cache'"
echo -n "bigctx cold peak RSS: "; /usr/bin/time -f "%M KB" "$KILN" --root "$ROOT" build -q --no-cache -t bench/bigctx "$W/bigctx" 2>&1 >/dev/null | tail -1
