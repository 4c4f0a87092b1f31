#!/usr/bin/env bash
# `make bench-replication`, in one run:
#  1. sync sends with one follower and min-insync = 1, next to a single
#     broker (started by quiver-bench itself);
#  2. a follower catching up from disk: a leader holding CATCHUP_MSGS 1 KiB
#     messages (default 2,000,000: about 2.3 GB with headers), 16 sync
#     producers on it alone, then while an empty follower catches up, with
#     the catch-up rate unlimited and at the default 64 MiB/s.
#   BIN (default bin), BENCH_DURATION (default 8s), OUT (JSON results dir),
#   CATCHUP_MSGS (0 skips part 2)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
DUR=${BENCH_DURATION:-8s}
OUT=${OUT:-benchmarks/results/replication}
CATCHUP_MSGS=${CATCHUP_MSGS:-2000000}
mkdir -p "$OUT"
work=$(mktemp -d "${TMPDIR:-/tmp}/quiver-repl-XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
L=127.0.0.1:$(free_port); F=127.0.0.1:$(free_port)     # part 1
C=127.0.0.1:$(free_port); D=127.0.0.1:$(free_port)     # part 2
CADMIN=127.0.0.1:$(free_port)
for b in l f c d; do "$BIN/quiverd" certificate --data "$work/$b" >/dev/null; done
cat "$work"/{l,f,c,d}/tls/cert.pem > "$work/group.pem"

# start NAME PEERS flags...: starts quiverd with DATA=$work/NAME; its pid in $last.
start() {
  local name=$1 peers=$2; shift 2
  rm -f "$work/$name.out"
  "$BIN/quiverd" --data "$work/$name" --broker-id "$name" --peer-ca "$work/group.pem" --peers "$peers" "$@" \
    > "$work/$name.out" 2> "$work/$name.err" &
  last=$!
  pids+=("$last")
  for _ in $(seq 1 100); do grep -q "quiverd ready" "$work/$name.out" 2>/dev/null && return; sleep 0.1; done
  echo "quiverd $name did not start:"; cat "$work/$name.err"; exit 1
}
stop() { kill -TERM "$@" 2>/dev/null || true; wait "$@" 2>/dev/null || true; }

# row LABEL JSON [EXTRA]: one table row from a quiver-bench --json result.
row() {
  python3 - "$1" "$2" "${3:-}" <<'PY'
import json, sys
d = json.load(open(sys.argv[2]))
extra = f" {sys.argv[3]} |" if sys.argv[3] else ""
print(f"| {sys.argv[1]} | {d['producers']} | {int(d['msgs_per_sec']):,} | {int(d['p50_us']):,} | {int(d['p99_us']):,} | {int(d['p999_us']):,} | {d['errors']} |{extra}")
PY
}
bench() { # output, flags...
  local out=$1; shift
  "$BIN/quiver-bench" "$@" --size 1024 --duration "$DUR" --json > "$OUT/$out.json"
}

start l "$L,$F" --listen "$L" --admin 127.0.0.1:0 --min-insync 1
start f "$L,$F" --listen "$F" --admin 127.0.0.1:0 --role follower --leader "$L"
echo "| setup | producers | msgs/s | p50 µs | p99 µs | p99.9 µs | errors |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for n in 1 16; do
  bench "single-p$n" --producers "$n"
  row "single broker, sync" "$OUT/single-p$n.json"
  bench "repl-p$n" --producers "$n" --broker "$L" --ca "$work/group.pem"
  row "leader + 1 follower, min-insync 1" "$OUT/repl-p$n.json"
done

[ "$CATCHUP_MSGS" -gt 0 ] || exit 0
echo
start c "$C,$D" --listen "$C" --admin "$CADMIN"
echo "filling the leader with $CATCHUP_MSGS messages (pipelined, async)..." >&2
"$BIN/quiver-bench" --broker "$C" --ca "$work/group.pem" --producers 4 --window 256 --size 1024 \
  --count "$CATCHUP_MSGS" --durability async --json > "$OUT/catchup-fill.json"
backlog=$(curl -s "http://$CADMIN/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["positions"]["dispatched"])')
stop "$last"
echo "| 16 sync producers on the leader | producers | msgs/s | p50 µs | p99 µs | p99.9 µs | errors | follower copied MB/s |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for r in 0 64; do
  label="$r MiB/s"; [ "$r" = 0 ] && label="unlimited"
  start c "$C,$D" --listen "$C" --admin "$CADMIN" --replica-catchup-mib "$r"
  cpid=$last
  bench "catchup-r$r-alone" --producers 16 --broker "$C" --ca "$work/group.pem"
  row "no follower (reference)" "$OUT/catchup-r$r-alone.json" "-"
  find "$work/d" -mindepth 1 -maxdepth 1 ! -name tls -exec rm -rf {} +   # empty but for its certificate
  t0=$(date +%s.%N)
  start d "$C,$D" --listen "$D" --admin 127.0.0.1:0 --role follower --leader "$C"
  dpid=$last
  bench "catchup-r$r" --producers 16 --broker "$C" --ca "$work/group.pem"
  copied=$(curl -s "http://$CADMIN/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["replication"]["followers"][0]["acked"])')
  mbs=$(python3 -c "import time; print(f'{$copied/(time.time()-$t0)/1e6:,.0f}')")
  row "a follower catching up, $label" "$OUT/catchup-r$r.json" "$mbs"
  stop "$dpid" "$cpid"
done
echo "(the follower started empty; the leader's log held $((backlog >> 20)) MiB)"
