#!/usr/bin/env bash
# Starts a geostream cluster on this machine: N `geostream serve` processes on consecutive
# ports, sharing the local PostgreSQL (database `geostream`, a schema of this run) and NATS
# (a subject prefix of this run). Prints the nodes' URLs, then waits; Ctrl-C (or SIGTERM)
# stops every node it started, by PID.
#
#   scripts/cluster.sh [N] [--port P] [--keep] [--debug]
#
#   N          number of nodes (default 3)
#   --port P   port of the first node (default 8081; node i listens on P+i-1)
#   --keep     keep the run's schema after stopping (default: drop it; channel history in
#              JetStream streams named <prefix>_... expires by channels.history_ttl_secs)
#   --debug    use the debug build (default: release, built if needed)
#
# PostgreSQL (127.0.0.1:5432, trust auth) and NATS with JetStream (127.0.0.1:4222) must run;
# `scripts/test.sh` installs and starts both. Each node gets the same settings through the
# environment, exactly as docs/DEPLOY.md describes, and its own data directory under the
# run's directory (printed), which also holds the nodes' logs.
set -euo pipefail
cd "$(dirname "$0")/.."

nodes=3
port=8081
keep=0
profile=release
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    --debug) profile=debug; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) nodes="$1"; shift ;;
  esac
done
case "$nodes" in ''|*[!0-9]*) echo "error: N must be a number" >&2; exit 2 ;; esac
[ "$nodes" -ge 1 ] || { echo "error: N must be at least 1" >&2; exit 2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port_open 5432 || { echo "error: PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1; }
port_open 4222 || { echo "error: NATS is not reachable on 127.0.0.1:4222" >&2; exit 1; }
for i in $(seq 0 $((nodes - 1))); do
  if port_open $((port + i)); then
    echo "error: port $((port + i)) is taken; choose another with --port" >&2
    exit 1
  fi
done

if [ "$profile" = release ]; then
  scripts/npm-web.sh >/dev/null
  cargo build --release --locked -p geostream-server --bin geostream
else
  cargo build --locked -p geostream-server --bin geostream
fi
bin="$PWD/target/$profile/geostream"

# The database (once), and a schema and NATS prefix of this run.
psql_() { psql -h 127.0.0.1 -U postgres -X -q -v ON_ERROR_STOP=1 "$@"; }
if ! psql_ -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'geostream'" | grep -q 1; then
  psql_ -d postgres -c "CREATE DATABASE geostream"
  echo "created the database geostream"
fi
run="gs_$(date +%Y%m%d_%H%M%S)_$$"
dir="$(mktemp -d "${TMPDIR:-/tmp}/geostream-cluster.XXXXXX")"

export GEOSTREAM_STORE__TYPE=postgres
export GEOSTREAM_STORE__URL="postgres://postgres@127.0.0.1:5432/geostream"
export GEOSTREAM_STORE__SCHEMA="$run"
export GEOSTREAM_BROKER__TYPE=nats
export GEOSTREAM_BROKER__URL="nats://127.0.0.1:4222"
export GEOSTREAM_BROKER__PREFIX="$run"

pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "stopping ${#pids[@]} node(s)"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ "$keep" = 0 ]; then
    psql_ -d geostream -c "DROP SCHEMA IF EXISTS \"$run\" CASCADE" >/dev/null 2>&1 || true
    echo "dropped the schema $run (logs kept in $dir)"
  else
    echo "kept the schema $run; logs in $dir"
  fi
}
trap stop INT TERM EXIT

for i in $(seq 1 "$nodes"); do
  p=$((port + i - 1))
  mkdir -p "$dir/node-$i"
  # The first node seeds the demo basemap; the others find it there.
  "$bin" serve --listen "127.0.0.1:$p" --data-dir "$dir/node-$i" >"$dir/node-$i.log" 2>&1 &
  pids+=("$!")
done

for i in $(seq 1 "$nodes"); do
  p=$((port + i - 1))
  for _ in $(seq 1 300); do
    if ! kill -0 "${pids[$((i - 1))]}" 2>/dev/null; then
      echo "error: node $i exited; its log ($dir/node-$i.log) ends with:" >&2
      tail -n 20 "$dir/node-$i.log" >&2
      exit 1
    fi
    port_open "$p" && break
    sleep 0.1
  done
  port_open "$p" || { echo "error: node $i did not listen on $p within 30 s" >&2; exit 1; }
done

echo
echo "geostream cluster of $nodes node(s): schema $run in database geostream, NATS prefix $run"
for i in $(seq 1 "$nodes"); do
  p=$((port + i - 1))
  echo "  node $i: http://127.0.0.1:$p  (ws://127.0.0.1:$p/v1/ws)  pid ${pids[$((i - 1))]}  log $dir/node-$i.log"
done
echo "Ctrl-C stops them."
wait
