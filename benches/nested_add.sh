#!/bin/sh
# ADD of a deeply nested archive: time `kiln build` of `FROM scratch` + `ADD nested.tar /` for
# archives nesting N directories deep (each level a directory `d`, every 100th level also a
# file), to show that extraction is linear in the depth.
#
#   benches/nested_add.sh [KILN_BINARY] [DEPTH...]     (as root; default target/release/kiln 1500 3000)
#
# Figures measured on the development VM are in benches/nested_add.md.
set -eu
kiln=${1:-target/release/kiln}
[ $# -gt 0 ] && shift
depths=${*:-1500 3000}
work=$(mktemp -d /tmp/kiln-nested-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
for depth in $depths; do
    ctx="$work/ctx-$depth"
    mkdir -p "$ctx"
    python3 - "$ctx/nested.tar" "$depth" <<'PY'
import io, sys, tarfile
path, depth = sys.argv[1], int(sys.argv[2])
with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
    name = ""
    for level in range(1, depth + 1):
        name += "d/"
        info = tarfile.TarInfo(name.rstrip("/"))
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        t.addfile(info)
        if level % 100 == 0:
            data = b"level %d\n" % level
            info = tarfile.TarInfo(name + "f")
            info.size, info.mode = len(data), 0o644
            t.addfile(info, io.BytesIO(data))
PY
    printf 'FROM scratch\nADD nested.tar /\n' > "$ctx/Dockerfile"
    root="$work/root-$depth"
    start=$(date +%s.%N)
    if "$kiln" --root "$root" build -q --no-cache -t "nested:$depth" "$ctx" >"$work/out" 2>&1; then
        result=ok
    else
        result="failed: $(tail -c 300 "$work/out")"
    fi
    end=$(date +%s.%N)
    printf '%s levels: %.1f s (%s)\n' "$depth" "$(echo "$end - $start" | bc)" "$result"
done
