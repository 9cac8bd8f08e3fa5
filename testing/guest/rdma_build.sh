#!/bin/sh
# Builds the soft-RoCE guest of remora's RDMA test from Debian packages only:
#   build/rdma-guest/vmlinuz        Debian's generic kernel (linux-image-amd64's
#                                   dependency; it ships rdma_rxe.ko, the cloud
#                                   kernel does not)
#   build/rdma-guest/initramfs.gz   busybox-static, the kernel modules the guest
#                                   needs (virtio-net, 9p, overlay, ib_uverbs,
#                                   rdma_rxe and their dependencies) and
#                                   rdma_init.sh as /init
# Nothing is installed on the host: the kernel package is `apt-get download`ed
# and unpacked with dpkg-deb. Deno, libibverbs, librxe, iproute2's `rdma` and
# the repository itself come from the host's root, which the guest mounts
# read-only over 9p (see rdma_qemu.ts).
# Idempotent: the kernel package is fetched once; the initramfs is rebuilt only
# when one of its inputs changes. Needs: apt-get (package lists present),
# dpkg-deb, objcopy (binutils), busybox-static, cpio-capable busybox, gzip.
# Output directory: $REMORA_RDMA_GUEST_DIR, default <repo>/build/rdma-guest.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${REMORA_RDMA_GUEST_DIR:-$ROOT/build/rdma-guest}
BUSYBOX=${BUSYBOX:-/bin/busybox}
# Every module /init loads; their dependencies are added from .modinfo.
MODULES="virtio_pci virtio_net 9pnet_virtio 9p overlay crc32_generic ib_uverbs rdma_rxe"
mkdir -p "$OUT"
root=""
trap 'rm -rf ${root:+"$root"}' EXIT

# Two test runs may start at once: one builds, the other waits.
if [ -z "${REMORA_RDMA_GUEST_LOCKED:-}" ] && command -v flock >/dev/null 2>&1; then
  REMORA_RDMA_GUEST_LOCKED=1 exec flock "$OUT/.lock" sh "$HERE/rdma_build.sh" "$@"
fi

say() { echo "rdma-guest/build: $*" >&2; }

# --- kernel and its modules -------------------------------------------------
if [ ! -s "$OUT/kernel-version" ]; then
  mkdir -p "$OUT/deb"
  (
    cd "$OUT/deb"
    rm -f ./*.deb
    apt-get download linux-image-amd64 >&2 || {
      say "apt-get download failed; run 'apt-get update' first"
      exit 1
    }
    dep=$(dpkg-deb -f linux-image-amd64_*.deb Depends | sed 's/[ ,|(].*//')
    say "kernel package: $dep"
    apt-get download "$dep" >&2
    rm -f linux-image-amd64_*.deb
  )
  rm -rf "$OUT/x"
  mkdir -p "$OUT/x"
  dpkg-deb --fsys-tarfile "$OUT"/deb/linux-image-6*.deb | tar -C "$OUT/x" -xf - ./boot ./lib/modules
  cp "$OUT"/x/boot/vmlinuz-* "$OUT/vmlinuz"
  ls "$OUT/x/lib/modules" >"$OUT/kernel-version"
  say "kernel $(cat "$OUT/kernel-version"): $(wc -c <"$OUT/vmlinuz") bytes"
fi
KVER=$(cat "$OUT/kernel-version")
MODDIR="$OUT/x/lib/modules/$KVER"

# --- initramfs ----------------------------------------------------------------
if ! "$BUSYBOX" 2>&1 | grep -q 'BusyBox' ||
  readelf -l "$BUSYBOX" 2>/dev/null | grep -q 'program interpreter'; then
  say "$BUSYBOX is not a static busybox (apt-get install busybox-static)"
  exit 1
fi
inputs=$(cat "$BUSYBOX" "$HERE/rdma_init.sh" "$HERE/rdma_build.sh" "$OUT/kernel-version" |
  sha256sum | cut -d' ' -f1)
if [ -s "$OUT/initramfs.gz" ] && [ "$(cat "$OUT/initramfs.inputs" 2>/dev/null)" = "$inputs" ]; then
  exit 0
fi

# The package's modules.dep is written by depmod in postinst, which never ran:
# follow each module's `depends=` in .modinfo instead.
modpath() { find "$MODDIR/kernel" -name "$1.ko" -o -name "$(echo "$1" | tr _ -).ko" | head -1; }
modepends() {
  objcopy -O binary --only-section=.modinfo "$1" /dev/stdout 2>/dev/null | tr '\0' '\n' |
    sed -n 's/^depends=//p' | tr ',' ' '
}
todo=$MODULES
seen=" "
while [ -n "$(echo "$todo" | tr -d ' ')" ]; do
  set -- $todo
  m=$1
  shift
  todo="$*"
  case "$seen" in *" $m "*) continue ;; esac
  seen="$seen$m "
  f=$(modpath "$m")
  [ -n "$f" ] || { say "module $m not found in $KVER" && exit 1; }
  todo="$todo $(modepends "$f")"
done

root=$(mktemp -d)
mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin" "$root/proc" "$root/sys" \
  "$root/dev" "$root/tmp" "$root/host" "$root/upper" "$root/newroot" "$root/lib/modules/$KVER"
cp "$BUSYBOX" "$root/bin/busybox"
for applet in $("$BUSYBOX" --list-full); do
  [ "$applet" = bin/busybox ] && continue
  [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
for m in $seen; do
  f=$(modpath "$m")
  rel=${f#"$MODDIR"/}
  mkdir -p "$root/lib/modules/$KVER/$(dirname "$rel")"
  cp "$f" "$root/lib/modules/$KVER/$rel"
done
"$BUSYBOX" depmod -b "$root" "$KVER"
cp "$HERE/rdma_init.sh" "$root/init"
chmod 755 "$root/init"
mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true
(cd "$root" && find . | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc -R 0:0 2>/dev/null) |
  gzip -6 >"$OUT/initramfs.gz.tmp"
mv "$OUT/initramfs.gz.tmp" "$OUT/initramfs.gz"
echo "$inputs" >"$OUT/initramfs.inputs"
say "initramfs: $(wc -c <"$OUT/initramfs.gz") bytes, modules:$seen"
