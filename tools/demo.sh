#!/usr/bin/env bash
# `make run`: start a broker on ./quiver-data and show it working with the
# CLI: create a topic, send lines (each acknowledged after fsync), consume
# them as a group, print the status. The broker keeps running in the
# foreground afterwards; Ctrl-C stops it gracefully.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
DATA=${QUIVER_DATA:-./quiver-data}
ADMIN=127.0.0.1:7421

"$BIN/quiverd" --data "$DATA" &
broker=$!
trap 'kill -TERM $broker 2>/dev/null; wait $broker' INT TERM EXIT

q() { "$BIN/quiver" --ca "$DATA/tls/cert.pem" "$@"; }

# Wait until the broker answers (it prints its fingerprint when ready).
for _ in $(seq 1 100); do
  if [ -f "$DATA/tls/cert.pem" ] && q --timeout 1s topic list >/dev/null 2>&1; then break; fi
  if ! kill -0 $broker 2>/dev/null; then echo "quiverd did not start" >&2; exit 1; fi
  sleep 0.1
done

echo
echo "== quiver topic create demo --queues 2"
q topic create demo --queues 2
echo
echo "== five orders, each acknowledged after fsync (line, queue, offset):"
for i in 1 2 3 4 5; do echo "order-$i $(date +%T.%N)"; done | q produce --topic demo --acks
echo
echo "== quiver consume --topic demo --group demo-readers --count 5"
q consume --topic demo --group demo-readers --count 5
echo
echo "== quiver status"
q status
echo
echo "The broker keeps running: try"
echo "  echo hello | bin/quiver produce --topic demo --acks"
echo "  bin/quiver consume --topic demo --group me"
echo "  curl -s http://$ADMIN/status"
echo "The web console: http://$ADMIN/ui/ (live charts, cluster, topics, groups, a message browser)"
echo "Ctrl-C stops it (gracefully: every accepted message is synced)."
wait $broker
