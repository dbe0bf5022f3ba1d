#!/bin/sh
# make-base.sh OUT.tar: the busybox root filesystem every conformance case starts from, made from
# Debian's busybox-static (/bin/busybox) exactly as ../shared/tools/reference-env makes the
# reference Docker's busybox:latest (the same directories, /etc files, modes, sort order and
# mtimes), so that both builders start from byte-identical layers. record.sh and
# tests/conformance_corpus.rs both call it; change them together.
set -eu
out=$1
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/bin "$root"/etc "$root"/tmp "$root"/root "$root"/proc "$root"/sys "$root"/dev
cp /bin/busybox "$root/bin/"
for a in $("$root/bin/busybox" --list); do [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"
chmod 1777 "$root/tmp"
tar --sort=name --mtime=@0 --numeric-owner -C "$root" -cf "$out.tmp.$$" .
mv "$out.tmp.$$" "$out"
