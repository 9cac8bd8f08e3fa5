#!/bin/sh
# Runs inside the soft-RoCE guest (rdma_init.sh, in the host's root over an
# overlay): remora's one-sided RDMA data path against a real verbs provider.
# Prints one `rdma-check NAME ok` or `rdma-check NAME FAIL: why` per check and
# `rdma-evidence ...` lines with the counters; test/rdma_guest_test.ts reads
# them from the serial console. Exit status: the number of failed checks.
#
# usage: rdma_scenario.sh REPO_DIR
# Deadlines are generous (TCG is slow); nothing here measures speed.
REPO=${1:-/work/main}
cd "$REPO" || exit 99
T=$(mktemp -d /tmp/remora-rdma.XXXXXX) || exit 98
MEMCHECK=$REPO/build/rdma-guest/memcheck
failed=0
pids=""

ok() { echo "rdma-check $1 ok"; }
fail() {
  echo "rdma-check $1 FAIL: $2"
  failed=$((failed + 1))
}
# wait_for FILE REGEX SECONDS: true once FILE matches.
wait_for() {
  i=0
  while [ "$i" -lt $(($3 * 4)) ]; do
    grep -Eq "$2" "$1" 2>/dev/null && return 0
    sleep 0.25
    i=$((i + 1))
  done
  return 1
}
# rounds FILE: verified rounds so far.
rounds() { grep -c 'round [0-9]* ok' "$1" 2>/dev/null || echo 0; }
show() {
  echo "--- $1"
  tail -n "${2:-15}" "$1"
}
peer() { # peer NAME PORT: a peer daemon lending slabs on rxe0
  deno run -A --quiet transport/peer/main.ts --listen "127.0.0.1:$2" --capacity 256M \
    --slab-size 16M --token-file "$T/token" --rdma rxe0 >"$T/$1.log" 2>&1 &
  echo $! >"$T/$1.pid"
  pids="$pids $!"
  wait_for "$T/$1.log" 'listening on' 300 || {
    show "$T/$1.log"
    return 1
  }
}
pager() { # pager LOG ARGS...: in the background, pid in $T/LOG.pid
  log=$1
  shift
  deno run -A --quiet pager.ts --token-file "$T/token" "$@" >"$T/$log" 2>&1 &
  echo $! >"$T/$log.pid"
  pids="$pids $!"
}
cleanup() { for p in $pids; do kill -9 "$p" 2>/dev/null; done; }
trap cleanup EXIT

# ulimit -l: registered memory is pinned. The daemons lend 16 MiB slabs.
ulimit -l unlimited
(umask 077 && head -c 32 /dev/urandom | base64 >"$T/token")

# --- sanity: the provider ------------------------------------------------------
if ibv_devinfo -d rxe0 >"$T/devinfo" 2>&1 && grep -q PORT_ACTIVE "$T/devinfo"; then
  ok devinfo
  echo "rdma-evidence $(grep -E 'hca_id|link_layer|active_mtu' "$T/devinfo" | tr -s ' \t' ' ' | tr '\n' ';')"
else
  fail devinfo "$(tr '\n' ' ' <"$T/devinfo")"
fi

# --- one-sided data path: attach by pid, verify, detach ------------------------
peer a 7070 || fail peer-a "did not start"
"$MEMCHECK" 40 0 1 0 100 >"$T/target.log" 2>&1 &
target=$!
pids="$pids $target"
wait_for "$T/target.log" '^ready' 120 || fail target "not ready"
pager pager.log --pid "$target" --local 16M --backend rdma://127.0.0.1:7070
wait_for "$T/pager.log" 'attached to pid' 300 || fail attach "$(tail -3 "$T/pager.log")"
start=$(rounds "$T/target.log")
# Three full rounds under the pager: 40 MiB through a 16 MiB budget, so every
# round sends 24+ MiB out and fetches it back.
i=0
while [ "$(rounds "$T/target.log")" -lt $((start + 3)) ] && [ $i -lt 2400 ]; do
  sleep 0.25
  i=$((i + 1))
done
kill -TERM "$(cat "$T/pager.log.pid")"
wait "$(cat "$T/pager.log.pid")"
prc=$?
after=$(rounds "$T/target.log")
# After the detach the target keeps running on its own, every page in it.
wait_for "$T/target.log" "round $((after + 1)) ok" 120
rss=$(sed -n 's/^VmRSS:[^0-9]*\([0-9]*\).*/\1/p' "/proc/$target/status")
kill "$target"
kill -TERM "$(cat "$T/a.pid")"
wait "$(cat "$T/a.pid")"
fetched=$(sed -n 's/.*pages fetched \([0-9]*\).*/\1/p' "$T/pager.log")
written=$(sed -n 's/.*written \([0-9]*\).*/\1/p' "$T/pager.log")
counters=$(grep 'remora peer counters' "$T/a.log")
requests=$(echo "$counters" | sed -n 's/.*requests \([0-9]*\).*/\1/p')
echo "rdma-evidence pager: $(grep -E 'pages fetched|resident .* remote' "$T/pager.log" | tr -s ' ' | tr '\n' ';')"
echo "rdma-evidence peer: $counters"
echo "rdma-evidence target: $(rounds "$T/target.log") rounds verified, VmRSS ${rss} kB after detach"
if [ "$prc" -ne 0 ] || grep -q MISMATCH "$T/target.log"; then
  fail one-sided "pager rc=$prc"
  show "$T/pager.log"
  show "$T/target.log" 5
elif [ "${fetched:-0}" -le 0 ] || [ "${written:-0}" -le 0 ]; then
  fail one-sided "no pages moved (fetched ${fetched:-?}, written ${written:-?})"
  show "$T/pager.log"
elif [ "${requests:-x}" != 0 ]; then
  fail one-sided "the peer answered ${requests:-?} TCP requests: $counters"
elif ! grep -q 'remote 0 pages' "$T/pager.log" || [ "${rss:-0}" -lt 40960 ]; then
  fail one-sided "pages not all back after detach (VmRSS ${rss:-?} kB)"
  show "$T/pager.log"
else
  ok one-sided
fi

# --- a peer killed mid-run: replicas 2 over two peers ----------------------------
peer b 7071 || fail peer-b "did not start"
peer c 7072 || fail peer-c "did not start"
# REMORA_AWAIT_PAGER: the target waits until the pager registered its memory,
# so that it is paged from its first touch however slow the pager starts.
export REMORA_AWAIT_PAGER=1
pager replicas.log --local 16M --replicas 2 \
  --backend rdma://127.0.0.1:7071,rdma://127.0.0.1:7072 -- "$MEMCHECK" 40 4 1 0 0
unset REMORA_AWAIT_PAGER
wait_for "$T/replicas.log" 'round 1 ok' 900 || fail replicas "no round 1"
kill -9 "$(cat "$T/c.pid")"
wait "$(cat "$T/replicas.log.pid")"
rrc=$?
rfetched=$(sed -n 's/.*pages fetched \([0-9]*\).*/\1/p' "$T/replicas.log")
echo "rdma-evidence replicas: $(grep -E 'RDMA peer .* failed|pages fetched' "$T/replicas.log" | tr -s ' ' | tr '\n' ';')"
if [ "$rrc" -eq 0 ] && grep -q 'parent done' "$T/replicas.log" && [ "${rfetched:-0}" -gt 0 ] &&
  ! grep -q MISMATCH "$T/replicas.log" && grep -q 'RDMA peer .*7072 failed' "$T/replicas.log"; then
  ok peer-killed
else
  fail peer-killed "pager rc=$rrc"
  show "$T/replicas.log" 25
fi
kill -TERM "$(cat "$T/b.pid")"
wait "$(cat "$T/b.pid")"

# --- ulimit -l too low: one clear line -------------------------------------------
# Root's CAP_IPC_LOCK lifts the limit: drop it from the bounding set, so that
# the pager runs as an ordinary user would.
peer d 7073 || fail peer-d "did not start"
(
  ulimit -l 64
  setpriv --bounding-set -ipc_lock -- deno run -A --quiet pager.ts --token-file "$T/token" \
    --local 16M --backend rdma://127.0.0.1:7073 -- "$MEMCHECK" 4 1 >"$T/memlock.log" 2>&1
  echo "rc=$?" >"$T/memlock.rc"
)
echo "rdma-evidence memlock: $(cat "$T/memlock.rc") $(cat "$T/memlock.log")"
if grep -q 'rc=1' "$T/memlock.rc" && [ "$(wc -l <"$T/memlock.log")" -eq 1 ] &&
  grep -q 'ulimit -l' "$T/memlock.log"; then
  ok memlock
else
  fail memlock "expected one line naming ulimit -l and exit 1"
fi
kill -TERM "$(cat "$T/d.pid")"
wait "$(cat "$T/d.pid")"

echo "rdma-scenario: $failed failed"
exit "$failed"
