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
#   BIN (default bin), BENCH_DURATION (default 8s), ROUNDS (default 6),
#   OUT (JSON results dir)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
BASE_BIN=${BASE_BIN:-}
DUR=${BENCH_DURATION:-8s}
ROUNDS=${ROUNDS:-6}
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
  gname=$name
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
  local admins=()
  for i in 1 2 3; do
    for _ in $(seq 1 100); do grep -q "quiverd ready" "$work/$name$i.out" 2>/dev/null && break; sleep 0.1; done
    grep -q "quiverd ready" "$work/$name$i.out" || { echo "quiverd $name$i did not start:"; cat "$work/$name$i.err"; exit 1; }
    admins+=("$(sed -n 's/.*admin \([^,]*\),.*/\1/p' "$work/$name$i.out")")
  done
  first=${a[0]} # the SDK learns the others from it
  # Measure a settled group: a leader with both followers in sync
  # (in_sync counts followers, here and in older versions); a group under
  # the controller first elects a leader, then fills the set.
  for _ in $(seq 1 150); do
    for ad in "${admins[@]}"; do
      curl -s "http://$ad/status" | python3 -c 'import json,sys; r=json.load(sys.stdin)["replication"]; sys.exit(0 if r["role"]=="leader" and r.get("in_sync",0)==2 else 1)' 2>/dev/null && return
    done
    sleep 0.1
  done
  echo "group $name did not settle"; exit 1
}
# stopgroup stops the group and removes its directories: each broker
# preallocates a 1 GiB segment, and ROUNDS x 2 x 3 groups of three would
# fill a small disk.
stopgroup() {
  kill -TERM "${gpids[@]}" 2>/dev/null || true; wait "${gpids[@]}" 2>/dev/null || true
  rm -rf "$work/$gname"1 "$work/$gname"2 "$work/$gname"3
  sync # so that the next measurement does not pay for this one's writes
}

row() {
  python3 - "$1" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[2]))
print(f"| {sys.argv[1]} | {d['producers']} | {int(d['msgs_per_sec']):,} | {int(d['p50_us']):,} | {int(d['p99_us']):,} | {int(d['p999_us']):,} | {d['errors']} |")
PY
}

echo "| setup | producers | msgs/s | p50 µs | p99 µs | p99.9 µs | errors |"
echo "|---|---:|---:|---:|---:|---:|---:|"
# One measurement: run SETUP N ROUND, SETUP one of controller,
# single:TAG:BIN, hand:TAG:BIN.
run() {
  local setup=$1 n=$2 r=$3 kind tag bin
  kind=${setup%%:*}
  case $kind in
  controller)
    group "$BIN" "c$n$r" controller
    "$BIN/quiver-bench" --broker "$first" --ca "$work/c$n$r.pem" --producers "$n" --size 1024 --duration "$DUR" \
      --json > "$OUT/controller-p$n-r$r.json"
    row "3 brokers under the controller, min-insync 1" "$OUT/controller-p$n-r$r.json"
    stopgroup ;;
  single)
    tag=${setup#single:}; bin=${tag#*:}; tag=${tag%%:*}
    "$bin/quiver-bench" --quiverd "$bin/quiverd" --producers "$n" --size 1024 --duration "$DUR" --json > "$OUT/single-$tag-p$n-r$r.json"
    row "single broker ($tag)" "$OUT/single-$tag-p$n-r$r.json"
    sync ;;
  hand)
    tag=${setup#hand:}; bin=${tag#*:}; tag=${tag%%:*}
    group "$bin" "h$tag$n$r" hand
    "$bin/quiver-bench" --broker "$first" --ca "$work/h$tag$n$r.pem" --producers "$n" --size 1024 --duration "$DUR" \
      --json > "$OUT/hand-$tag-p$n-r$r.json"
    row "3 brokers by hand, min-insync 1 ($tag)" "$OUT/hand-$tag-p$n-r$r.json"
    stopgroup ;;
  esac
}

# The comparison that matters, the same three brokers by hand and under the
# controller, runs as a back-to-back pair (in alternating order), so that
# the VM's drift hits both alike; the rest follows, rotated.
others=("single:new:$BIN")
[ -n "$BASE_BIN" ] && others+=("single:base:$BASE_BIN" "hand:base:$BASE_BIN")
for r in $(seq 1 "$ROUNDS"); do
  for n in 16 1; do
    if [ $((r % 2)) = 1 ]; then pair=(controller "hand:new:$BIN"); else pair=("hand:new:$BIN" controller); fi
    for s in "${pair[@]}"; do run "$s" "$n" "$r"; done
    k=${#others[@]}
    for i in $(seq 0 $((k - 1))); do run "${others[$(( (i + r) % k ))]}" "$n" "$r"; done
  done
done

# Medians over the rounds, and the controller's cost as the median of the
# paired ratios.
python3 - "$OUT" "$ROUNDS" <<'PY'
import glob, json, os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(name):
    p = os.path.join(out, name)
    return json.load(open(p)) if os.path.exists(p) else None
print()
print(f"medians over {rounds} rounds")
print()
print("| setup | producers | msgs/s (median) | min - max | p99 µs (median) |")
print("|---|---:|---:|---:|---:|")
for n in (16, 1):
    for setup, label in (("single-new", "single broker (new)"), ("single-base", "single broker (base)"),
                         ("hand-new", "3 by hand (new)"), ("hand-base", "3 by hand (base)"),
                         ("controller", "3 under the controller")):
        rs = [load(f"{setup}-p{n}-r{r}.json") for r in range(1, rounds + 1)]
        rs = [d for d in rs if d]
        if not rs:
            continue
        m = [d["msgs_per_sec"] for d in rs]
        print(f"| {label} | {n} | {int(statistics.median(m)):,} | {int(min(m)):,} - {int(max(m)):,} | {int(statistics.median(d['p99_us'] for d in rs)):,} |")
print()
for n in (16, 1):
    ratios = []
    for r in range(1, rounds + 1):
        c, h = load(f"controller-p{n}-r{r}.json"), load(f"hand-new-p{n}-r{r}.json")
        if c and h:
            ratios.append(c["msgs_per_sec"] / h["msgs_per_sec"])
    if ratios:
        print(f"{n} producers: under the controller / by hand, per round: " + ", ".join(f"{x:.2f}" for x in ratios)
              + f"; median {statistics.median(ratios):.3f}")
PY
