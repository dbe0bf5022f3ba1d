#!/usr/bin/env bash
# dev_workloads.sh: the two developer-loop workloads of issue #17, kiln against Docker's BuildKit
# (docker-ref from ../shared/tools/reference-env) in one run, as medians and ratios.
#
#   cargo build --release && benches/dev_workloads.sh [RUNS]
#   WORKLOADS=/tmp/kiln-dev ONLY="compile deps" benches/dev_workloads.sh 3
#
# compile: debian base, `apt-get install gcc make` in a cached step, a C project of 200 files
#          compiled with a cache mount holding the objects; rebuild after touching one .c file.
# deps:    apt-get update + install with the apt cache and lists as cache mounts, then COPY . /app;
#          rebuild after an app change, and after adding one package to the install line.
#
# Both need the Debian mirror (RUN steps use --network host) and the debian:bookworm rootfs that
# reference-env makes ($REF_DIR/bookworm.tar). Without docker-ref it prints kiln's figures alone.
set -u
RUNS=${1:-3}
KILN=$(realpath "${KILN:-target/release/kiln}")
W=${WORKLOADS:-/tmp/kiln-dev}
ONLY=${ONLY:-compile deps}
REF_DIR=${REF_DIR:-/var/cache/kiln-reference}
DOCKER=${DOCKER:-docker-ref}
have_docker=0; $DOCKER info >/dev/null 2>&1 && have_docker=1

gen() {
  rm -rf "$W"; mkdir -p "$W/compile/src" "$W/deps/app"
  # compile: 200 translation units, each a small function; main.c sums them
  python3 - "$W/compile" <<'P'
import os, sys
root = sys.argv[1]
calls = []
for i in range(200):
    with open(os.path.join(root, "src", f"u{i:03d}.c"), "w") as fh:
        fh.write(f"int u{i:03d}(int x) {{\n")
        fh.write("".join(f"  x = x * {j + 3} + {i};\n" for j in range(40)))
        fh.write("  return x;\n}\n")
    calls.append(f"u{i:03d}")
with open(os.path.join(root, "src", "main.c"), "w") as fh:
    fh.write("".join(f"int {c}(int);\n" for c in calls))
    fh.write("#include <stdio.h>\nint main(void) { int s = 0;\n")
    fh.write("".join(f"  s += {c}(s);\n" for c in calls))
    fh.write('  printf("%d\\n", s); return 0; }\n')
P
  cat >"$W/compile/Makefile" <<'M'
OBJ ?= obj
SRCS := $(wildcard src/*.c)
OBJS := $(patsubst src/%.c,$(OBJ)/%.o,$(SRCS))
$(OBJ)/app: $(OBJS)
	cc -o $@ $^
$(OBJ)/%.o: src/%.c
	@mkdir -p $(OBJ)
	cc -O1 -c -o $@ $<
M
  cat >"$W/compile/Dockerfile" <<'D'
FROM debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev make && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . /src
RUN --mount=type=cache,target=/cache make -j2 OBJ=/cache/obj && cp /cache/obj/app /usr/local/bin/app
CMD ["app"]
D
  # deps: a package step with apt's cache and lists as cache mounts, then the app
  cat >"$W/deps/Dockerfile" <<'D'
FROM debian:bookworm
RUN rm -f /etc/apt/apt.conf.d/docker-clean
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked --mount=type=cache,target=/var/lib/apt,sharing=locked \
    apt-get update && apt-get install -y --no-install-recommends jq file less
COPY . /app
CMD ["ls", "/app"]
D
  for i in $(seq 1 50); do echo "module $i" >"$W/deps/app/m$i.txt"; done
}
gen

ROOT=$(mktemp -d /tmp/kiln-dev-root.XXXX)
trap 'rm -rf "$ROOT" 2>/dev/null' EXIT
if ! "$KILN" --root "$ROOT" import "$REF_DIR/bookworm.tar" debian:bookworm >/dev/null 2>&1; then
  echo "dev_workloads: kiln could not import $REF_DIR/bookworm.tar (run ../shared/tools/reference-env first)"; exit 2
fi

now() { date +%s%N; }
time_ms() { local t0 t1; t0=$(now); if "$@" >/dev/null 2>&1; then t1=$(now); echo $(((t1 - t0) / 1000000)); else echo FAIL; fi; }
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END{ if (NR==0) print "FAIL"; else print a[int((NR+1)/2)] }'; }
measure() { # SETUP CMD...
  local setup=$1; shift; local xs="" x
  for _ in $(seq "$RUNS"); do eval "$setup" >/dev/null 2>&1; x=$(time_ms "$@"); [ "$x" = FAIL ] && { echo FAIL; return; }; xs="$xs $x"; done
  echo "$xs" | median
}
row() {
  local r="-"
  if [[ $2 =~ ^[0-9]+$ && $3 =~ ^[0-9]+$ && $3 -gt 0 ]]; then r=$(awk -v a="$2" -v b="$3" 'BEGIN{printf "%.2f", a/b}'); fi
  printf "%-40s %10s %10s %8s\n" "$1" "$2" "$3" "$r"
}
kb() { "$KILN" --root "$ROOT" build -q --network host -t "dev/$1" "${@:2}" "$W/$1"; }
db() { $DOCKER build -q --network=host -t "dev/$1" "${@:2}" "$W/$1"; }
peer() { if [ $have_docker = 1 ]; then measure "$@"; else echo "-"; fi; }

echo "kiln: $KILN   runs per figure: $RUNS   (ms, median; ratio = kiln/docker)"
printf "%-40s %10s %10s %8s\n" figure kiln docker ratio
for w in $ONLY; do
  case $w in
  compile)
    # the first builds install gcc (minutes, network-bound): done once, not measured
    kb compile >/dev/null 2>&1 || echo "compile: kiln's first build failed"
    [ $have_docker = 1 ] && { db compile >/dev/null 2>&1 || echo "compile: docker's first build failed"; }
    row "compile: cold build (--no-cache)" "$(measure : kb compile --no-cache)" "$(peer : db compile --no-cache)"
    touch1="echo '/* '\$RANDOM' */' >> $W/compile/src/u100.c"
    row "compile: one .c file touched" "$(measure "$touch1" kb compile)" "$(peer "$touch1" db compile)"
    row "compile: no-op rebuild" "$(measure : kb compile)" "$(peer : db compile)"
    ;;
  deps)
    kb deps >/dev/null 2>&1 || echo "deps: kiln's first build failed"
    [ $have_docker = 1 ] && { db deps >/dev/null 2>&1 || echo "deps: docker's first build failed"; }
    row "deps: cold build (--no-cache, warm apt cache mounts)" "$(measure : kb deps --no-cache)" "$(peer : db deps --no-cache)"
    edit="echo \$RANDOM >> $W/deps/app/m7.txt"
    row "deps: app code changed" "$(measure "$edit" kb deps)" "$(peer "$edit" db deps)"
    # one more package, each run a different one so that every run misses the package step
    # (the apt cache mounts stay warm, as on a developer's machine); a token unique to this run
    # keeps a builder's cache from an earlier run of this script from answering
    pk=(tree bc zip unzip pv)
    n=0
    token="$(date +%s%N)"
    # kiln and docker in turn (same package, each its own token), so that a drift of the shared
    # machine or of the mirror weighs on both alike
    addpkg() { sed -i "s/jq file less.*/jq file less ${pk[$n]} # $token-$n-$1/" "$W/deps/Dockerfile"; }
    kx=""; dx=""
    for _ in $(seq "$RUNS"); do
      addpkg k; kx="$kx $(time_ms kb deps)"
      if [ $have_docker = 1 ]; then addpkg d; dx="$dx $(time_ms db deps)"; fi
      n=$((n + 1))
    done
    row "deps: one package added" "$(echo "$kx" | median)" "$( [ -n "$dx" ] && echo "$dx" | median || echo -)"
    ;;
  esac
done
