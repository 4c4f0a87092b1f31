#!/usr/bin/env bash
# Sync sends with one follower and min-insync = 1, next to a single broker,
# in one run (`make bench-replication`). Each row is one quiver-bench run;
# the single broker is started by quiver-bench itself, the group here.
#   BIN (default bin), BENCH_DURATION (default 8s), OUT (JSON results dir)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
DUR=${BENCH_DURATION:-8s}
OUT=${OUT:-benchmarks/results/replication}
mkdir -p "$OUT"
work=$(mktemp -d "${TMPDIR:-/tmp}/quiver-repl-XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
L=127.0.0.1:$(free_port); F=127.0.0.1:$(free_port)
"$BIN/quiverd" certificate --data "$work/l" >/dev/null
"$BIN/quiverd" certificate --data "$work/f" >/dev/null
cat "$work/l/tls/cert.pem" "$work/f/tls/cert.pem" > "$work/group.pem"

start() { # name, flags...
  local name=$1; shift
  "$BIN/quiverd" --data "$work/$name" --admin 127.0.0.1:0 --peer-ca "$work/group.pem" --peers "$L,$F" "$@" \
    > "$work/$name.out" 2> "$work/$name.err" &
  pids+=($!)
  for _ in $(seq 1 100); do grep -q "quiverd ready" "$work/$name.out" 2>/dev/null && return; sleep 0.1; done
  echo "quiverd $name did not start:"; cat "$work/$name.err"; exit 1
}
start l --listen "$L" --broker-id l --min-insync 1
start f --listen "$F" --broker-id f --role follower --leader "$L"

run() { # label, output, flags...
  local label=$1 out=$2; shift 2
  "$BIN/quiver-bench" "$@" --size 1024 --duration "$DUR" --json > "$OUT/$out.json"
  python3 - "$label" "$OUT/$out.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[2]))
print(f"| {sys.argv[1]} | {d['producers']} | {int(d['msgs_per_sec']):,} | {int(d['p50_us']):,} | {int(d['p99_us']):,} | {int(d['p999_us']):,} | {d['errors']} |")
PY
}
echo "| setup | producers | msgs/s | p50 µs | p99 µs | p99.9 µs | errors |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for n in 1 16; do
  run "single broker, sync" "single-p$n" --producers "$n"
  run "leader + 1 follower, min-insync 1" "repl-p$n" --producers "$n" --broker "$L" --ca "$work/group.pem"
done
