#!/usr/bin/env bash
# `make bench-controller`: what automatic failover costs the send path.
# Sync sends (1 KiB, closed loop, 1 and 16 producers) against, side by
# side and interleaved ROUNDS times (this VM's speed drifts):
#   - a single broker;
#   - a group of three run by hand (--role leader / follower), min-insync 1;
#   - the same three brokers under the controller (no role), min-insync 1.
# With BASE_BIN (a bin/ built from an older commit, e.g. with
#   git worktree add /tmp/base <commit> && make -C /tmp/base build
# ) the single broker and the group run by hand are measured with those
# binaries too, in the same rounds.
#   BIN (default bin), BENCH_DURATION (default 8s), ROUNDS (default 3),
#   OUT (JSON results dir)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
BASE_BIN=${BASE_BIN:-}
DUR=${BENCH_DURATION:-8s}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-benchmarks/results/controller}
mkdir -p "$OUT"
work=$(mktemp -d "${TMPDIR:-/tmp}/quiver-ctl-XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# group BIN NAME MODE: starts three brokers (MODE: hand or controller) in
# fresh directories; their addresses in $addrs (the first, the leader by
# hand, in $first), pids in $gpids, the bundle in $work/NAME.pem.
group() {
  local bin=$1 name=$2 mode=$3 a=() i
  for i in 1 2 3; do a+=("127.0.0.1:$(free_port)"); "$bin/quiverd" certificate --data "$work/$name$i" >/dev/null; done
  cat "$work/$name"{1,2,3}/tls/cert.pem > "$work/$name.pem"
  addrs=$(IFS=,; echo "${a[*]}")
  gpids=()
  for i in 1 2 3; do
    local role=()
    if [ "$mode" = hand ]; then
      if [ "$i" = 1 ]; then role=(--role leader); else role=(--role follower --leader "${a[0]}"); fi
    fi
    "$bin/quiverd" --data "$work/$name$i" --broker-id "$name$i" --listen "${a[$((i-1))]}" --admin 127.0.0.1:0 \
      --peer-ca "$work/$name.pem" --peers "$addrs" --min-insync 1 "${role[@]}" > "$work/$name$i.out" 2> "$work/$name$i.err" &
    gpids+=("$!"); pids+=("$!")
  done
  for i in 1 2 3; do
    for _ in $(seq 1 100); do grep -q "quiverd ready" "$work/$name$i.out" 2>/dev/null && break; sleep 0.1; done
  done
  first=${a[0]} # the SDK learns the others from it
}
stopgroup() { kill -TERM "${gpids[@]}" 2>/dev/null || true; wait "${gpids[@]}" 2>/dev/null || true; }

row() {
  python3 - "$1" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[2]))
print(f"| {sys.argv[1]} | {d['producers']} | {int(d['msgs_per_sec']):,} | {int(d['p50_us']):,} | {int(d['p99_us']):,} | {int(d['p999_us']):,} | {d['errors']} |")
PY
}

echo "| setup | producers | msgs/s | p50 µs | p99 µs | p99.9 µs | errors |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for r in $(seq 1 "$ROUNDS"); do
  for n in 16 1; do
    for bin in $BIN $BASE_BIN; do
      tag=new; [ "$bin" = "$BIN" ] || tag=base
      "$bin/quiver-bench" --quiverd "$bin/quiverd" --producers "$n" --size 1024 --duration "$DUR" --json > "$OUT/single-$tag-p$n-r$r.json"
      row "single broker ($tag)" "$OUT/single-$tag-p$n-r$r.json"
      group "$bin" "h$tag$n$r" hand
      "$bin/quiver-bench" --broker "$first" --ca "$work/h$tag$n$r.pem" --producers "$n" --size 1024 --duration "$DUR" \
        --json > "$OUT/hand-$tag-p$n-r$r.json"
      row "3 brokers by hand, min-insync 1 ($tag)" "$OUT/hand-$tag-p$n-r$r.json"
      stopgroup
    done
    group "$BIN" "c$n$r" controller
    "$BIN/quiver-bench" --broker "$first" --ca "$work/c$n$r.pem" --producers "$n" --size 1024 --duration "$DUR" \
      --json > "$OUT/controller-p$n-r$r.json"
    row "3 brokers under the controller, min-insync 1" "$OUT/controller-p$n-r$r.json"
    stopgroup
  done
done
