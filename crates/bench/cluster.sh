#!/usr/bin/env bash
# A parley cluster measured beside one node, in the same run: a private PostgreSQL (durable:
# fsync on, as the single node's log) and nats-server on loopback ports, NODES nodes of
# `parley serve --cluster`, then ROUNDS alternating runs of the workload: one node on SQLite
# (spawned by the bench), then the cluster (`--addr` of every node: each receiver on
# another node than its sender). After each cluster run, what PostgreSQL did for it:
# statements (pg_stat_statements), commits, rows and WAL bytes (pg_stat_database,
# pg_current_wal_lsn), and the nodes' and PostgreSQL's CPU, per message delivered.
#
# Usage (from the repository, after `cargo build --release`):
#   crates/bench/cluster.sh dm --pairs 50 --messages 100000 --window 64
#   NODES=3 ROUNDS=3 crates/bench/cluster.sh fanout --members 300 --messages 1000
# Needs Debian's postgresql (with its contrib pg_stat_statements) and nats-server; as root,
# PostgreSQL runs as the `postgres` user. Everything it starts is stopped at exit.
set -euo pipefail

PARLEY=${PARLEY:-$PWD/target/release/parley}
NODES=${NODES:-3}
# Session threads per node (`worker_threads`): the nodes share this machine's cores with
# each other, PostgreSQL, NATS and the generator; one each wakes fewer threads for the same
# work (0: one per core, as on a machine of their own).
NODE_THREADS=${NODE_THREADS:-1}
ROUNDS=${ROUNDS:-2}
workload=${1:?usage: cluster.sh dm|fanout [bench arguments]}
shift

pgbin() { command -v "$1" 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/"$1" | sort -V | tail -1; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

work=$(mktemp -d /tmp/parley-cluster-bench.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

as_pg=()
if [ "$(id -u)" = 0 ]; then
  as_pg=(runuser -u postgres --)
  chown postgres "$work"
fi
"${as_pg[@]}" "$(pgbin initdb)" --auth=trust --username=postgres --encoding=UTF8 --locale=C \
  -D "$work/pg" >/dev/null
pg_port=$(port)
"${as_pg[@]}" "$(pgbin postgres)" -D "$work/pg" -p "$pg_port" -c listen_addresses=127.0.0.1 \
  -c unix_socket_directories="$work" -c max_connections=200 \
  -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all \
  >"$work/pg.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  "$(pgbin pg_isready)" -q -h 127.0.0.1 -p "$pg_port" && break
  sleep 0.1
done
sql() { "$(pgbin psql)" -h 127.0.0.1 -p "$pg_port" -U postgres -X -q -A -t -v ON_ERROR_STOP=1 "$@"; }
sql -d postgres -c "CREATE DATABASE parley"
sql -d parley -c "CREATE EXTENSION pg_stat_statements"
url="postgres://postgres@127.0.0.1:$pg_port/parley"

nats_port=$(port)
nats-server -a 127.0.0.1 -p "$nats_port" >"$work/nats.log" 2>&1 &
nats_pid=$!
pids+=($!)

addrs=()
node_pids=()
for n in $(seq 1 "$NODES"); do
  p=$(port)
  mkdir -p "$work/node$n"
  PARLEY_WORKER_THREADS=$NODE_THREADS PARLEY_LOG=info PARLEY_COMMANDS_PER_SECOND=0 PARLEY_MESSAGES_PER_SECOND=0 \
    PARLEY_MAX_CONNECTIONS_PER_IP=0 PARLEY_IDLE_TIMEOUT_MS=0 PARLEY_JSON_IDLE_TIMEOUT_MS=0 \
    "$PARLEY" serve --cluster --postgres "$url" --nats "nats://127.0.0.1:$nats_port" \
    --node-id "node$n" --listen "127.0.0.1:$p" --data-dir "$work/node$n" \
    >"$work/node$n.log" 2>&1 &
  pids+=($!)
  node_pids+=($!)
  addrs+=(--addr "127.0.0.1:$p")
  for _ in $(seq 1 300); do
    grep -q "parley started" "$work/node$n.log" && break
    sleep 0.1
  done
  grep -q "parley started" "$work/node$n.log" || { cat "$work/node$n.log"; exit 1; }
done

# CPU ticks (user + system) of the given PIDs, of this PostgreSQL's processes and of
# nats-server, as "nodes postgres nats".
cpu() {
  local nodes=0 pg=0 t postmaster
  postmaster=$(head -1 "$work/pg/postmaster.pid")
  for pid in "$@"; do
    t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    nodes=$((nodes + t))
  done
  for pid in "$postmaster" $(pgrep -P "$postmaster"); do
    t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    pg=$((pg + t))
  done
  t=$(awk '{print $14 + $15}' "/proc/$nats_pid/stat" 2>/dev/null || echo 0)
  echo "$nodes $pg $t"
}
hz=$(getconf CLK_TCK)
stats() {
  sql -d parley -F ' ' -c "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted,
      pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint,
      (SELECT coalesce(sum(calls), 0) FROM pg_stat_statements)
    FROM pg_stat_database WHERE datname = 'parley'"
}

for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round: one node (SQLite)"
  "$PARLEY" bench "$workload" --target parley "$@" | tee "$work/one.out"
  echo "== round $round: $NODES nodes (PostgreSQL + NATS)"
  read -r c0 r0 w0 s0 < <(stats)
  read -r n0 p0 q0 < <(cpu "${node_pids[@]}")
  "$PARLEY" bench "$workload" "${addrs[@]}" "$@" | tee "$work/cluster.out"
  read -r n1 p1 q1 < <(cpu "${node_pids[@]}")
  read -r c1 r1 w1 s1 < <(stats)
  tail -1 "$work/one.out" >"$work/one.json"
  tail -1 "$work/cluster.out" >"$work/cluster.json"
  python3 - "$work/one.json" "$work/cluster.json" <<EOF
import json, sys
one = json.load(open(sys.argv[1])); cl = json.load(open(sys.argv[2]))
key = "delivered_per_sec"
a, b = one.get(key), cl.get(key)
# Messages stored: a direct message is delivered once; a room message once per member.
msgs = cl["delivered"] if "$workload" == "dm" else cl["messages"]
print(f"== round $round: $NODES nodes / one node, {key}: {b} / {a} = {b / a:.3f}")
print(f"   p50/p99 latency us: one node {one.get('p50_us')}/{one.get('p99_us')}, "
      f"$NODES nodes {cl.get('p50_us')}/{cl.get('p99_us')}")
print(f"   PostgreSQL per message stored ({msgs}): statements {($s1 - $s0 - 1) / msgs:.3f}, "
      f"commits {($c1 - $c0 - 1) / msgs:.4f}, rows written {($r1 - $r0) / msgs:.2f}, "
      f"WAL bytes {($w1 - $w0) / msgs:.0f}")
us = lambda ticks: ticks / $hz / msgs * 1e6
nodes, pg, nats = us($n1 - $n0), us($p1 - $p0), us($q1 - $q0)
print(f"   CPU per message: {nodes + pg + nats:.1f} us (nodes {nodes:.1f}, PostgreSQL {pg:.1f}, "
      f"NATS {nats:.1f})")
EOF
done
