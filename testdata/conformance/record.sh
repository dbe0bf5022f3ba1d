#!/usr/bin/env bash
# record.sh [CASE...]: records what Docker's BuildKit builds for each conformance case (all the
# directories here that hold a Dockerfile, or only the named ones) into CASE/expected.
#
# Needs the reference Docker 28 (`../shared/tools/reference-env` from the repository's parent
# directory, which gives `docker-ref`). tests/conformance_corpus.rs compares kiln's build of
# each case with CASE/expected; it never needs Docker.
#
# A case is a directory with:
#   Dockerfile    the Dockerfile (given with -f, so it is not part of the context)
#   context/      the build context (optional: an empty directory when missing)
#   args          optional, one `docker build` / `kiln build` argument a line (--build-arg K=V,
#                 --target T, --label K=V ...)
#   mtimes        optional, path prefixes (one a line) whose mtimes are recorded and compared
#   expected      written here: listing.py's listing of the image relative to busybox:latest,
#                 or `rejected` (and BuildKit's error as a comment) when the build fails
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
command -v docker-ref >/dev/null || { echo "record.sh: docker-ref missing: run ../shared/tools/reference-env" >&2; exit 1; }
docker-ref info >/dev/null 2>&1 || { echo "record.sh: docker-ref's daemon is not running: run ../shared/tools/reference-env" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The base: busybox:latest must be the layer make-base.sh makes (reference-env makes it the same
# way); otherwise import ours under that name.
"$here/make-base.sh" "$work/base-layer.tar"
want="sha256:$(sha256sum "$work/base-layer.tar" | cut -d' ' -f1)"
have=$(docker-ref image inspect busybox:latest --format '{{json .RootFS.Layers}}' 2>/dev/null || true)
if [ "$have" != "[\"$want\"]" ]; then
  echo "record.sh: docker-ref's busybox:latest is not make-base.sh's; importing it" >&2
  docker-ref import "$work/base-layer.tar" busybox:latest >/dev/null
fi
docker-ref save -o "$work/base.tar" busybox:latest
# Cache mounts and the build cache outlive builds: each case is built with --no-cache and
# without cache mounts (the kiln test starts from an empty root).
docker-ref builder prune -f --filter type=exec.cachemount >/dev/null

version=$(docker-ref version --format '{{.Server.Version}}')
cases=("$@")
if [ ${#cases[@]} -eq 0 ]; then
  for d in "$here"/*/; do [ -f "$d/Dockerfile" ] && cases+=("$(basename "$d")"); done
fi
for c in "${cases[@]}"; do
  dir="$here/$c"
  [ -f "$dir/Dockerfile" ] || { echo "record.sh: $c: no Dockerfile" >&2; exit 1; }
  ctx="$dir/context"
  [ -d "$ctx" ] || { ctx="$work/empty"; mkdir -p "$ctx"; }
  args=()
  [ -f "$dir/args" ] && mapfile -t args <"$dir/args"
  mtimes=()
  [ -f "$dir/mtimes" ] && mapfile -t mtimes <"$dir/mtimes"
  tag="kiln-conformance-$(echo "$c" | tr 'A-Z_' 'a-z-'):latest"
  docker-ref builder prune -f --filter type=exec.cachemount >/dev/null
  if docker-ref build --no-cache --network=host --progress=plain -f "$dir/Dockerfile" -t "$tag" \
      ${args[@]+"${args[@]}"} "$ctx" >"$work/log" 2>&1; then
    if ! docker-ref save -o "$work/image.tar" "$tag" 2>"$work/save.err"; then
      # Docker cannot save an image without layers ("empty export"): give such a case a layer.
      echo "record.sh: $c: docker-ref save failed: $(cat "$work/save.err")" >&2
      docker-ref rmi -f "$tag" >/dev/null
      continue
    fi
    { echo "# recorded by record.sh from Docker $version's BuildKit"
      python3 "$here/listing.py" "$work/image.tar" "$work/base.tar" ${mtimes[@]+"${mtimes[@]}"}
    } >"$dir/expected.tmp"
    docker-ref rmi -f "$tag" >/dev/null
    echo "record.sh: $c: built"
  else
    { echo "# recorded by record.sh from Docker $version's BuildKit"
      grep -E '^(ERROR|error|failed)' "$work/log" | head -3 | sed 's/^/# buildkit: /'
      echo rejected
    } >"$dir/expected.tmp"
    echo "record.sh: $c: rejected"
  fi
  mv "$dir/expected.tmp" "$dir/expected"
done
