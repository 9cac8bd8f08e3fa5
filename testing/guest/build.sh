#!/bin/sh
# Builds remora's QEMU test guest from Debian packages only:
#   build/guest/vmlinuz        kernel of linux-image-cloud-amd64
#   build/guest/initramfs.gz   busybox-static + memverify + init (cpio newc, gzip)
#   build/guest/memverify      the static workload (also runs on the host)
# Idempotent: the kernel is fetched once; the initramfs is rebuilt only when
# one of its inputs (busybox, memverify.c, init.sh, this script) changes.
# Needs: apt-get (package lists present), dpkg-deb, gcc, busybox-static.
# Output directory: $REMORA_GUEST_DIR, default <repo>/build/guest (gitignored).
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${REMORA_GUEST_DIR:-$ROOT/build/guest}
BUSYBOX=${BUSYBOX:-/bin/busybox}
mkdir -p "$OUT"
tmp=""
root=""
trap 'rm -rf ${tmp:+"$tmp"} ${root:+"$root"}' EXIT

# Two test runs may start at once: one builds, the other waits.
if [ -z "${REMORA_GUEST_LOCKED:-}" ] && command -v flock >/dev/null 2>&1; then
  REMORA_GUEST_LOCKED=1 exec flock "$OUT/.lock" sh "$HERE/build.sh" "$@"
fi

say() { echo "guest/build: $*" >&2; }

# --- kernel --------------------------------------------------------------
if [ ! -s "$OUT/vmlinuz" ]; then
  tmp=$(mktemp -d)
  (
    cd "$tmp"
    # The metapackage only depends on the versioned image that holds vmlinuz.
    apt-get download linux-image-cloud-amd64 >&2 || {
      say "apt-get download failed; run 'apt-get update' first"
      exit 1
    }
    dep=$(dpkg-deb -f linux-image-cloud-amd64_*.deb Depends | sed 's/[ ,|(].*//')
    say "kernel package: $dep"
    apt-get download "$dep" >&2
    # Only ./boot is needed: skip the ~100 MB of modules a full dpkg -x writes.
    dpkg-deb --fsys-tarfile "$dep"_*.deb | tar -xf - --wildcards './boot/vmlinuz-*'
    cp boot/vmlinuz-* "$OUT/vmlinuz.tmp"
    basename boot/vmlinuz-* | sed 's/^vmlinuz-//' >"$OUT/kernel-version"
  )
  mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
  say "kernel $(cat "$OUT/kernel-version"): $(wc -c <"$OUT/vmlinuz") bytes"
fi

# --- initramfs -------------------------------------------------------------
# The initramfs has no libc: a dynamically linked busybox (package `busybox`
# rather than `busybox-static`) would make /init fail with ENOENT.
if ! "$BUSYBOX" 2>&1 | grep -q 'BusyBox' ||
  readelf -l "$BUSYBOX" 2>/dev/null | grep -q 'program interpreter'; then
  say "$BUSYBOX is not a static busybox (apt-get install busybox-static)"
  exit 1
fi
inputs=$(cat "$BUSYBOX" "$HERE/memverify.c" "$HERE/init.sh" "$HERE/build.sh" | sha256sum | cut -d' ' -f1)
if [ -s "$OUT/initramfs.gz" ] && [ "$(cat "$OUT/initramfs.inputs" 2>/dev/null)" = "$inputs" ]; then
  exit 0
fi

gcc -static -O2 -Wall -o "$OUT/memverify.tmp" "$HERE/memverify.c"
mv "$OUT/memverify.tmp" "$OUT/memverify"

root=$(mktemp -d)
mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin" \
  "$root/proc" "$root/sys" "$root/dev" "$root/tmp" "$root/root"
cp "$BUSYBOX" "$root/bin/busybox"
# Applet links made here rather than by `busybox --install` at boot: fewer
# moving parts in the guest, and the archive is identical on every boot.
for applet in $("$BUSYBOX" --list-full); do
  [ "$applet" = bin/busybox ] && continue
  [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
cp "$OUT/memverify" "$root/bin/memverify"
cp "$HERE/init.sh" "$root/init"
chmod 755 "$root/init" "$root/bin/memverify"
# /dev/console must exist before devtmpfs is mounted: the kernel opens it for
# init's stdio before running /init.
mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true
(cd "$root" && find . | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc -R 0:0 2>/dev/null) |
  gzip -9 >"$OUT/initramfs.gz.tmp"
mv "$OUT/initramfs.gz.tmp" "$OUT/initramfs.gz"
echo "$inputs" >"$OUT/initramfs.inputs"
say "initramfs: $(wc -c <"$OUT/initramfs.gz") bytes"
