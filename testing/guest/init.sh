#!/bin/sh
# /init of remora's test guest (busybox ash). It must never exit: the kernel
# panics when init dies, and with panic=-1 and QEMU's -no-reboot that ends QEMU,
# which the host side reports as a dead guest.
#
# Kernel command line knobs (unknown `key=value` parameters reach init as
# environment variables):
#   remora_verify=MIB    size of the background memverify (default 2; 0 = none)
#   remora_period=MS     sleep between its rounds (default 1000)
#   remora_ssh_key=B64   (SSH variant, initramfs-ssh.gz) the base64 blob of an
#                        ssh-ed25519 public key: init brings up virtio-net with
#                        QEMU user networking's address, writes the key as
#                        root's only authorized key and starts dropbear on
#                        port 22 (key-only logins)
#
# Command channel on ttyS1, one line per request, one line per answer. A
# request may start with a numeric tag that the answer repeats, so the host
# can match answers to requests and drop stale ones:
#   [TAG] ping            -> [TAG] pong
#   [TAG] status          -> [TAG] <last line of the background memverify>
#   [TAG] run-verify MIB  -> [TAG] <last line of a one-shot `memverify MIB 1 0`>
#   [TAG] meminfo         -> [TAG] MemTotal:... MemFree:... MemAvailable:...
#   [TAG] uptime          -> [TAG] <contents of /proc/uptime>

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /tmp
exec </dev/console >/dev/console 2>&1

verify=${remora_verify:-2}
period=${remora_period:-1000}
echo "remora-guest: up $(cut -d' ' -f1 /proc/uptime)s verify=${verify}MiB period=${period}ms"

if [ "$verify" -gt 0 ] 2>/dev/null; then
  # A subshell so that the exit line lands in the status file: `status` then
  # tells a dead verifier (e.g. killed by the OOM killer) from a live one.
  # Its stdout is dropped: the status file holds the last line, and a growing
  # log would only add guest page-cache pages to the paged working set.
  (
    /bin/memverify "$verify" 0 "$period" /tmp/bg.status >/dev/null 2>&1
    echo "bg exited rc=$?" >/tmp/bg.status
  ) &
else
  echo "bg disabled" >/tmp/bg.status
fi

# QEMU user-mode networking: the guest is 10.0.2.15/24, the gateway 10.0.2.2.
# Module order matters: each needs the symbols of the ones before it.
start_ssh() {
  for m in failover net_failover virtio_ring virtio virtio_pci_legacy_dev \
    virtio_pci_modern_dev virtio_pci virtio_net; do
    insmod "/lib/remora-modules/$m.ko" || echo "remora-guest: insmod $m failed"
  done
  ip link set lo up
  ip link set eth0 up
  ip addr add 10.0.2.15/24 dev eth0
  ip route add default via 10.0.2.2
  mkdir -p /root/.ssh
  echo "ssh-ed25519 $remora_ssh_key remora-test" >/root/.ssh/authorized_keys
  chmod 700 /root/.ssh
  chmod 600 /root/.ssh/authorized_keys
  # -s: no password logins at all; -F -E: foreground, log to the console.
  /usr/sbin/dropbear -F -E -s -p 22 -P /tmp/dropbear.pid \
    -r /etc/dropbear/dropbear_ed25519_host_key &
  echo "remora-guest: dropbear started"
}
if [ -n "${remora_ssh_key:-}" ]; then
  if [ -x /usr/sbin/dropbear ]; then
    start_ssh
  else
    echo "remora-guest: remora_ssh_key given but no dropbear (boot initramfs-ssh.gz)"
  fi
fi

# Answers use shell builtins only (read, printf, case) wherever possible: each
# fork+exec touches a few hundred guest pages, which is slow when the pager
# keeps the whole guest in 180 resident pages.
answer() {
  set -f
  # shellcheck disable=SC2086 # word splitting of the request is the point
  set -- $1
  set +f
  tag=""
  case "$1" in [0-9]*)
    tag="$1 "
    shift
    ;;
  esac
  cmd="${1:-}"
  [ $# -gt 0 ] && shift
  case "$cmd" in
  ping) out=pong ;;
  status)
    out="no-status"
    read -r out </tmp/bg.status
    ;;
  run-verify)
    rm -f /tmp/rv.status
    /bin/memverify "${1:-4}" 1 0 /tmp/rv.status >/dev/null 2>&1
    rc=$?
    out="error memverify died (rc=$rc) without output"
    read -r out </tmp/rv.status
    ;;
  meminfo) out=$(grep -E '^(MemTotal|MemFree|MemAvailable):' /proc/meminfo | tr -s ' ' | tr '\n' ' ') ;;
  uptime) out=$(cat /proc/uptime) ;;
  "") return ;;
  *) out="error unknown command: $cmd" ;;
  esac
  printf '%s%s\n' "$tag" "$out"
}

# raw: no echo, no CR/LF translation either way, no signals from ^C;
# clocal: do not wait for a carrier that the emulated UART may never raise.
stty -F /dev/ttyS1 115200 raw -echo clocal
echo "remora-guest: serving ttyS1"
while :; do
  while IFS= read -r line; do answer "$line"; done </dev/ttyS1 >/dev/ttyS1
  sleep 1
done
