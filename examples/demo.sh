#!/bin/sh
# kiln's main job, end to end, with nothing from outside but Debian's packages:
#   1. make a busybox base image from /bin/busybox (Debian's busybox-static) with `kiln import`;
#   2. `kiln build` the example in examples/hello (a small web server);
#   3. `kiln run -d -p` it, fetch its page through the published port, read its logs, stop it;
#   4. `kiln save --format oci` the image and check the archive with skopeo.
# Run as root after `cargo build --release`. State goes to target/demo/root (or $KILN_ROOT).
set -eu
cd "$(dirname "$0")/.."
KILN=${KILN:-./target/release/kiln}
OUT=${OUT:-target/demo}
ROOT=${KILN_ROOT:-$OUT/root}
k() { "$KILN" --root "$ROOT" "$@"; }

for tool in "$KILN" /bin/busybox skopeo; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "$tool" ] || {
        echo "demo: $tool is missing (cargo build --release; apt-get install busybox-static skopeo)" >&2
        exit 1
    }
done

echo "==> 1. a busybox base image from /bin/busybox"
rm -rf "$OUT/rootfs"
mkdir -p "$OUT/rootfs"
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
k import -q "$OUT/busybox.tar" busybox:latest --change 'CMD ["sh"]'

echo "==> 2. kiln build -t kiln-demo/hello examples/hello"
k build --progress plain -t kiln-demo/hello examples/hello
k images

echo "==> 3. kiln run -d -p 127.0.0.1::8080 kiln-demo/hello"
k rm -f kiln-demo-hello >/dev/null 2>&1 || true
k run -d --name kiln-demo-hello -p 127.0.0.1::8080 kiln-demo/hello
addr=$(k port kiln-demo-hello 8080/tcp | head -1 | sed 's/.*-> //')
echo "published on $addr"
page=""
for _ in 1 2 3 4 5 6 7 8 9 10; do
    # a client from the busybox image itself, on the host's network
    page=$(k run --rm --network host busybox:latest wget -qO- "http://$addr/" 2>/dev/null) && break
    sleep 0.3
done
echo "$page"
echo "$page" | grep -q "hello from kiln" || { echo "demo: the page did not come back" >&2; k logs kiln-demo-hello >&2; exit 1; }
k logs kiln-demo-hello
k ps
k rm -f kiln-demo-hello

echo "==> 4. kiln save --format oci -o $OUT/hello-oci.tar kiln-demo/hello"
k save --format oci -o "$OUT/hello-oci.tar" kiln-demo/hello
skopeo inspect "oci-archive:$OUT/hello-oci.tar" | head -20

echo "==> done: built, ran and exported kiln-demo/hello ($OUT/hello-oci.tar is a standard OCI archive)"
