#!/usr/bin/env bash
# The server's instructions per message, counted by callgrind (they do not move with the
# machine's load, as rates do): docs/perf/2026-12-06-callgrind-669b243.md has the method.
#
#   crates/bench/callgrind.sh SERVER GENERATOR OUTDIR LABEL WORKLOAD MESSAGES [bench args...]
#   e.g. crates/bench/callgrind.sh old/parley target/release/parley /tmp/cg old-1 dm 50000 --window 64
#
# SERVER (a release build with debug info) runs under valgrind on a fresh data directory
# with the bench's limits off (as crates/bench/src/spawn.rs sets them); GENERATOR runs
# `bench WORKLOAD --addr` against it: a 2,000-message warm-up, counters zeroed, MESSAGES
# messages, a dump. Prints the server's instructions (every thread) per message and what
# the run found lost, duplicated or reordered. Alternate the builds compared, run after run,
# with one generator for all; `callgrind_annotate OUTDIR/LABEL.cg.1` shows where they went.
set -euo pipefail
[ $# -ge 6 ] || { sed -n '2,15p' "$0"; exit 2; }
exe=$1 gen=$2 out=$3 label=$4 workload=$5 messages=$6
shift 6
mkdir -p "$out"
data=$(mktemp -d)
log="$out/$label.log"
env -u PARLEY_CONFIG PARLEY_LOG=info PARLEY_COMMANDS_PER_SECOND=0 \
    PARLEY_MESSAGES_PER_SECOND=0 PARLEY_MAX_CONNECTIONS_PER_IP=0 PARLEY_IDLE_TIMEOUT_MS=0 \
    PARLEY_JSON_IDLE_TIMEOUT_MS=0 \
    valgrind --tool=callgrind --callgrind-out-file="$out/$label.cg" \
    "$exe" serve --listen 127.0.0.1:0 --data-dir "$data" 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$data"' EXIT
addr=
for _ in $(seq 600); do
    addr=$(grep -o 'addr=127.0.0.1:[0-9]*' "$log" | head -1 | cut -d= -f2 || true)
    [ -n "$addr" ] && break
    kill -0 $pid 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.5
done
[ -n "$addr" ] || { echo "callgrind.sh: the server never listened" >&2; exit 1; }
bench() { "$gen" bench "$workload" --addr "$addr" --timeout 1800 --messages "$@"; }
bench 2000 "$@" >"$out/$label.warm" 2>&1
callgrind_control -z $pid >/dev/null 2>&1
bench "$messages" "$@" >"$out/$label.run" 2>&1
callgrind_control -d $pid >/dev/null 2>&1
kill $pid
wait $pid 2>/dev/null || true
total=$(grep -h '^summary:\|^totals:' "$out/$label.cg.1" | head -1 | awk '{print $2}')
found=$(grep -E '^ +(delivered|lost|duplicated|reordered|timed_out) ' "$out/$label.run" |
    awk '{printf "%s=%s ", $1, $2}')
echo "$label $workload $messages $*: $((total / messages)) instructions a message; $found"
