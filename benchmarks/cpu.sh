#!/bin/bash
# CPU per message of a broker and of quiver-bench, from /proc, over the
# middle of one run: utime+stime of both processes are read 2 s after
# quiver-bench starts (inside its warm-up, which should be the default 1 s
# plus the run's first second) and 6 s later, and divided by the messages
# that window carried (at the run's reported rate). Give --duration of at
# least 8s so that quiver-bench is still running at the second reading.
#
#   benchmarks/cpu.sh <quiverd pid> --broker HOST:PORT --producers 16 --duration 8s
#
# QB overrides the quiver-bench binary (default bin/quiver-bench), e.g. to
# compare two builds side by side against one quiverd.
set -euo pipefail
bp=$1; shift
tick=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"${QB:-$(dirname "$0")/../bin/quiver-bench}" "$@" > "$out" 2>&1 &
cp=$!
sleep 2
b0=$(cpu "$bp"); c0=$(cpu "$cp"); t0=$(date +%s.%N)
sleep 6
b1=$(cpu "$bp"); c1=$(cpu "$cp"); t1=$(date +%s.%N)
wait "$cp"
rate=$(grep -A1 "msgs/s" "$out" | tail -1 | awk '{gsub(",","",$1); print $1}')
tail -3 "$out"
python3 -c "
dt=$t1-$t0; r=$rate
b=($b1-$b0)/$tick; c=($c1-$c0)/$tick
print('broker %.1f us/msg (%.2f cores), client %.1f us/msg (%.2f cores), total %.1f us/msg' % (b/dt/r*1e6, b/dt, c/dt/r*1e6, c/dt, (b+c)/dt/r*1e6))"
