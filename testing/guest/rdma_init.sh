#!/bin/sh
# /init of remora's soft-RoCE guest (busybox ash). It loads the modules, makes
# the host's root (9p, read-only) writable through an overlay on tmpfs, brings
# up eth0 and rxe0, runs one command inside that root and powers off.
#
# Kernel command line knobs (unknown `key=value` parameters reach init as
# environment variables):
#   remora_run=PATH   script to run inside the host's root (default: a shell
#                     on the console)
#   remora_arg=WORD   one argument passed to it
# The last console line is `remora-rdma-guest: exit rc=N`.

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1

say() { echo "remora-rdma-guest: $*"; }
die() {
  say "$*"
  say "exit rc=125"
  poweroff -f
}

# rxe computes its ICRC with the kernel crypto API's "crc32", a module here:
# without it `rdma link add` fails with ENOENT.
for m in virtio_pci virtio_net 9pnet_virtio 9p overlay crc32_generic ib_uverbs rdma_rxe; do
  modprobe "$m" || die "modprobe $m failed"
done

mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 host /host ||
  die "mounting the host's root over 9p failed"
# The overlay gives Deno, its caches and the tests a writable root; every
# write stays in guest RAM.
mount -t tmpfs -o size=70% upper /upper
mkdir -p /upper/u /upper/w
mount -t overlay -o lowerdir=/host,upperdir=/upper/u,workdir=/upper/w overlay /newroot ||
  die "overlay over the 9p root failed"
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/shm /newroot/dev/pts
mount -t tmpfs shm /newroot/dev/shm
# /tmp stays the overlay's (writes land in guest RAM): a tmpfs over it would hide
# a checkout that lives under the host's /tmp, such as a CI clone.
mount -t tmpfs run /newroot/run

# QEMU user networking: the guest is 10.0.2.15, and nothing here needs more.
ip link set lo up
ip link set eth0 up || die "no eth0"
ip addr add 10.0.2.15/24 dev eth0
chroot /newroot rdma link add rxe0 type rxe netdev eth0 || die "rdma link add rxe0 failed"
say "up $(cut -d' ' -f1 /proc/uptime)s, rxe0 on eth0"

if [ -n "${remora_run:-}" ]; then
  chroot /newroot /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
    TERM=dumb NO_COLOR=1 /bin/sh "$remora_run" ${remora_arg:+"$remora_arg"}
  rc=$?
else
  chroot /newroot /bin/sh -i
  rc=$?
fi
sync
say "exit rc=$rc"
poweroff -f
