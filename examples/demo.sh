#!/bin/sh
# kiln's main job until the build engine lands: make a busybox root filesystem from
# /bin/busybox (Debian's busybox-static), import it as an image, save it as an OCI archive, and
# check the archive with skopeo and umoci. Run as root after `cargo build --release`.
set -eu
cd "$(dirname "$0")/.."
KILN=${KILN:-./target/release/kiln}
OUT=${OUT:-target/demo}
ROOT=${KILN_ROOT:-$OUT/root}

for tool in "$KILN" /bin/busybox skopeo umoci; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "$tool" ] || {
        echo "demo: $tool is missing (cargo build --release; apt-get install busybox-static skopeo umoci)" >&2
        exit 1
    }
done

rm -rf "$OUT/rootfs" "$OUT/bundle" "$OUT/layout"
mkdir -p "$OUT/rootfs"
echo "==> making a busybox root filesystem in $OUT/rootfs"
(
    cd "$OUT/rootfs"
    mkdir -p bin etc root tmp proc sys dev home var
    chmod 1777 tmp
    cp /bin/busybox bin/busybox
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -sf busybox "bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\n' > etc/passwd
    printf 'root:x:0:\n' > etc/group
)
tar --numeric-owner --sort=name --mtime=@0 -C "$OUT/rootfs" -cf "$OUT/busybox.tar" .

echo "==> kiln import"
"$KILN" --root "$ROOT" import "$OUT/busybox.tar" kiln-demo/busybox:latest --change 'CMD ["sh"]'
"$KILN" --root "$ROOT" images kiln-demo/busybox

echo "==> kiln save --format oci -o $OUT/busybox-oci.tar"
"$KILN" --root "$ROOT" save --format oci -o "$OUT/busybox-oci.tar" kiln-demo/busybox:latest

echo "==> skopeo inspect oci-archive:$OUT/busybox-oci.tar"
skopeo inspect "oci-archive:$OUT/busybox-oci.tar"

echo "==> umoci unpack"
mkdir -p "$OUT/layout"
tar -C "$OUT/layout" -xf "$OUT/busybox-oci.tar"
umoci unpack --image "$OUT/layout:latest" "$OUT/bundle" >/dev/null
"$OUT/bundle/rootfs/bin/busybox" echo "busybox from the unpacked image runs"

echo "==> done: $OUT/busybox-oci.tar is a standard OCI image archive"
