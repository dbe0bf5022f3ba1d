#!/usr/bin/env bash
# Pull and push of a ~400 MB image over loopback: kiln against `skopeo copy` of the same image,
# same run, against Debian's docker-registry. Every measured transfer starts from an empty
# destination (fresh kiln root, fresh registry storage), so nothing is skipped as present.
#
#   cargo build --release && benches/registry.sh [RUNS] [LAYER_MB] [LAYERS]
#
# Defaults: 3 runs, 4 layers of 100 MB (incompressible data in uncompressed tar layers, so the
# figures measure transfer, hashing and fsync, not gzip).
set -euo pipefail
RUNS=${1:-3}
LAYER_MB=${2:-100}
LAYERS=${3:-4}
KILN=${KILN:-$(dirname "$0")/../target/release/kiln}
[ -x "$KILN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
KILN=$(realpath "$KILN")
WORK=$(mktemp -d /var/tmp/kiln-registry-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_registry NAME -> sets REG_PORT, REG_PID
start_registry() {
  local dir=$WORK/reg-$1 port
  port=$(free_port)
  rm -rf "$dir"; mkdir -p "$dir"
  cat > "$dir/config.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
http:
  addr: 127.0.0.1:$port
YML
  /usr/bin/docker-registry serve "$dir/config.yml" > "$dir/log" 2>&1 &
  REG_PID=$!
  PIDS+=("$REG_PID")
  REG_PORT=$port
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && return 0
    sleep 0.05
  done
  echo "registry did not start: $(cat "$dir/log")" >&2; exit 1
}
stop_registry() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# The image: an OCI layout with LAYERS uncompressed tar layers of LAYER_MB each.
LAYOUT=$WORK/layout
mkdir -p "$LAYOUT/blobs/sha256"
echo '{"imageLayoutVersion":"1.0.0"}' > "$LAYOUT/oci-layout"
echo "making a $((LAYER_MB * LAYERS)) MB image..." >&2
python3 - "$LAYOUT" "$LAYER_MB" "$LAYERS" <<'PY'
import hashlib, io, json, os, sys, tarfile
layout, mb, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def put(data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs/sha256", d), "wb") as f:
        f.write(data)
    return "sha256:" + d
layers, diff_ids = [], []
for i in range(n):
    payload = os.urandom(mb << 20)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        info = tarfile.TarInfo(f"data{i}.bin"); info.size = len(payload); info.mtime = 0
        t.addfile(info, io.BytesIO(payload))
    data = buf.getvalue()
    d = put(data)
    layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": len(data)})
    diff_ids.append(d)
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                     "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
cd = put(config)
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(config)},
    "layers": layers}).encode()
md = put(manifest)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": md, "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "bench"}}]},
    open(os.path.join(layout, "index.json"), "w"))
PY
SIZE_MB=$(du -sm "$LAYOUT/blobs" | cut -f1)

start_registry src
SRC_PORT=$REG_PORT
skopeo copy -q --dest-tls-verify=false "oci:$LAYOUT:bench" "docker://127.0.0.1:$SRC_PORT/bench/img:1"
SRC=127.0.0.1:$SRC_PORT/bench/img:1

now() { date +%s.%N; }
declare -A TOTAL
record() { TOTAL[$1]=$(python3 -c "print(${TOTAL[$1]:-0} + $2)"); printf '  %-24s %6.2f s\n' "$1" "$2" >&2; }
elapsed() { python3 -c "print(round($2 - $1, 3))"; }

export KILN_CONFIG=$WORK/empty-config.toml
: > "$KILN_CONFIG"
KROOT=$WORK/kiln-root-pushsrc
"$KILN" --root "$KROOT" pull -q "$SRC" > /dev/null   # the image kiln pushes from

for run in $(seq "$RUNS"); do
  echo "run $run/$RUNS" >&2
  # Pull: kiln into an empty root; skopeo into an empty OCI layout (both verify digests).
  rm -rf "$WORK/pull-root" "$WORK/pull-oci"; sync
  t0=$(now); "$KILN" --root "$WORK/pull-root" pull -q "$SRC" > /dev/null; t1=$(now)
  record "kiln pull" "$(elapsed "$t0" "$t1")"
  t0=$(now); skopeo copy -q --src-tls-verify=false "docker://$SRC" "oci:$WORK/pull-oci:bench"; t1=$(now)
  record "skopeo copy (pull)" "$(elapsed "$t0" "$t1")"

  # Push: each to a fresh, empty registry.
  start_registry "kpush$run"; P=$REG_PORT; PID=$REG_PID
  t0=$(now); "$KILN" --root "$KROOT" push -q "$SRC" "127.0.0.1:$P/bench/img:1" > /dev/null; t1=$(now)
  record "kiln push" "$(elapsed "$t0" "$t1")"
  stop_registry "$PID"
  start_registry "spush$run"; P=$REG_PORT; PID=$REG_PID
  t0=$(now); skopeo copy -q --dest-tls-verify=false "oci:$LAYOUT:bench" "docker://127.0.0.1:$P/bench/img:1"; t1=$(now)
  record "skopeo copy (push)" "$(elapsed "$t0" "$t1")"
  stop_registry "$PID"
  rm -rf "$WORK"/reg-kpush* "$WORK"/reg-spush*
done

echo
echo "image: ${SIZE_MB} MB in $LAYERS layers; mean of $RUNS runs over loopback:"
for k in "kiln pull" "skopeo copy (pull)" "kiln push" "skopeo copy (push)"; do
  python3 -c "t=${TOTAL[$k]}/$RUNS; print(f'  {\"$k\":24s} {t:6.2f} s  {$SIZE_MB/t:7.1f} MB/s')"
done
