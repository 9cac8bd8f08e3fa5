#!/bin/sh
# Builds remora's QEMU test guest from Debian packages only:
#   build/guest/vmlinuz        kernel of linux-image-cloud-amd64
#   build/guest/initramfs.gz   busybox-static + memverify + init (cpio newc, gzip)
#   build/guest/memverify      the static workload (also runs on the host)
#   build/guest/initramfs-ssh.gz  the same plus an SSH server (Debian's dropbear
#                              and the libraries ldd lists, a host key made here,
#                              the virtio-net modules of the kernel package);
#                              built only when /usr/sbin/dropbear exists
#                              (package dropbear-bin). The kernel appends the
#                              second archive of the concatenation, so the
#                              plain guest is not touched by it.
# Idempotent: the kernel is fetched once; the initramfs is rebuilt only when
# one of its inputs (busybox, memverify.c, init.sh, this script) changes.
# Needs: apt-get (package lists present), dpkg-deb, gcc, busybox-static;
# dropbear-bin for the SSH variant.
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

# --- kernel ----------------------------------------------------------------
# The modules virtio-net needs in the order they must be loaded
# (testing/guest/init.sh loads them in this order too).
NET_MODULES="failover net_failover virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_net"

# Downloads the cloud kernel's versioned image package into the current
# directory and prints its file name.
kernel_deb() {
  # The metapackage only depends on the versioned image that holds vmlinuz.
  apt-get download linux-image-cloud-amd64 >&2 || {
    say "apt-get download failed; run 'apt-get update' first"
    exit 1
  }
  dep=$(dpkg-deb -f linux-image-cloud-amd64_*.deb Depends | sed 's/[ ,|(].*//')
  say "kernel package: $dep"
  apt-get download "$dep" >&2
  echo "$dep"_*.deb
}

if [ ! -s "$OUT/vmlinuz" ] || [ ! -s "$OUT/modules/virtio_net.ko" ]; then
  tmp=$(mktemp -d)
  (
    cd "$tmp"
    deb=$(kernel_deb)
    # Only ./boot and eight modules are needed: skip the ~100 MB a full
    # dpkg -x writes.
    dpkg-deb --fsys-tarfile "$deb" |
      tar -xf - --wildcards './boot/vmlinuz-*' './lib/modules/*/failover.ko' \
        './lib/modules/*/net_failover.ko' './lib/modules/*/virtio*.ko'
    mkdir -p "$OUT/modules"
    for m in $NET_MODULES; do
      find lib/modules -name "$m.ko" -exec cp {} "$OUT/modules/" \;
      [ -s "$OUT/modules/$m.ko" ] || {
        say "module $m.ko not in $deb"
        exit 1
      }
    done
    # A kernel already cached stays: its modules come from the same package
    # version unless the archive moved on, which the version check catches.
    if [ ! -s "$OUT/vmlinuz" ]; then
      cp boot/vmlinuz-* "$OUT/vmlinuz.tmp"
      basename boot/vmlinuz-* | sed 's/^vmlinuz-//' >"$OUT/kernel-version"
      mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
    elif [ "$(basename boot/vmlinuz-* | sed 's/^vmlinuz-//')" != "$(cat "$OUT/kernel-version")" ]; then
      say "kernel package moved on: remove $OUT and build again"
      rm -rf "$OUT/modules"
      exit 1
    fi
  )
  rm -rf "$tmp"
  tmp=""
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

# Writes a newc cpio of directory $1, gzipped, to file $2 (atomically).
pack() {
  (cd "$1" && find . | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc -R 0:0 2>/dev/null) |
    gzip -9 >"$2.tmp"
  mv "$2.tmp" "$2"
}

build_base() {
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
  pack "$root" "$OUT/initramfs.gz"
  rm -rf "$root"
  root=""
  say "initramfs: $(wc -c <"$OUT/initramfs.gz") bytes"
}

# The SSH layer: dropbear with its libraries (at the paths ldd gives, and the
# ELF interpreter), a host key made now, the virtio-net modules, and the
# account files dropbear reads. The authorized key is not here: init writes
# the one the kernel command line carries (remora_ssh_key=), so each test
# brings its own.
build_ssh() {
  root=$(mktemp -d)
  mkdir -p "$root/usr/sbin" "$root/etc/dropbear" "$root/lib/remora-modules"
  cp "$DROPBEAR" "$root/usr/sbin/dropbear"
  for lib in $(ldd "$DROPBEAR" | sed -nE 's@^[[:space:]]*([^ ]+ => )?(/[^ ]+) \(0x.*@\2@p'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  for m in $NET_MODULES; do cp "$OUT/modules/$m.ko" "$root/lib/remora-modules/"; done
  dropbearkey -t ed25519 -f "$root/etc/dropbear/dropbear_ed25519_host_key" >/dev/null 2>&1
  echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
  echo "root:x:0:" >"$root/etc/group"
  echo "/bin/sh" >"$root/etc/shells"
  pack "$root" "$OUT/ssh-layer.gz"
  rm -rf "$root"
  root=""
  # Concatenated gzipped cpio archives are unpacked one after the other.
  cat "$OUT/initramfs.gz" "$OUT/ssh-layer.gz" >"$OUT/initramfs-ssh.gz.tmp"
  mv "$OUT/initramfs-ssh.gz.tmp" "$OUT/initramfs-ssh.gz"
  say "initramfs-ssh: $(wc -c <"$OUT/initramfs-ssh.gz") bytes"
}

inputs=$(cat "$BUSYBOX" "$HERE/memverify.c" "$HERE/init.sh" "$HERE/build.sh" | sha256sum | cut -d' ' -f1)
if [ ! -s "$OUT/initramfs.gz" ] || [ "$(cat "$OUT/initramfs.inputs" 2>/dev/null)" != "$inputs" ]; then
  rm -f "$OUT/initramfs-ssh.gz"
  build_base
  echo "$inputs" >"$OUT/initramfs.inputs"
fi

DROPBEAR=${DROPBEAR:-/usr/sbin/dropbear}
if [ ! -x "$DROPBEAR" ]; then
  say "no $DROPBEAR: the SSH guest is not built (apt-get install dropbear-bin)"
  exit 0
fi
ssh_inputs=$(cat "$OUT/initramfs.gz" "$DROPBEAR" | sha256sum | cut -d' ' -f1)
if [ ! -s "$OUT/initramfs-ssh.gz" ] || [ "$(cat "$OUT/initramfs-ssh.inputs" 2>/dev/null)" != "$ssh_inputs" ]; then
  build_ssh
  echo "$ssh_inputs" >"$OUT/initramfs-ssh.inputs"
fi
