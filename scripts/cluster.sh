#!/usr/bin/env bash
# Starts a geostream cluster on this machine: N `geostream serve` processes on consecutive
# ports, sharing the local PostgreSQL (database `geostream`, a schema of this run) and NATS
# (a subject prefix of this run). Prints the nodes' URLs, then waits; Ctrl-C (or SIGTERM)
# stops every node it started, by PID.
#
#   scripts/cluster.sh [N] [--port P] [--pg URL] [--nats URL] [--keep] [--debug]
#
#   N          number of nodes (default 3)
#   --port P   port of the first node (default 8081; node i listens on P+i-1)
#   --pg URL   the PostgreSQL server, without a database (default
#              postgres://postgres@127.0.0.1:5432; add :PASSWORD after the user if it asks)
#   --nats URL the NATS server (default nats://127.0.0.1:4222)
#   --keep     keep the run's schema and JetStream streams after stopping (default: drop
#              both)
#   --debug    use the debug build (default: release, built if needed)
#
# PostgreSQL 15+ with PostGIS 3 and NATS with JetStream must run (docs/DEPLOY.md, "Try a
# cluster on one machine", says how); the role needs the right to create a database the first
# time (it creates `geostream`) and PostGIS in it. Each node gets the same settings through the
# environment, exactly as docs/DEPLOY.md describes (other GEOSTREAM_* variables you export
# reach every node too), and its own data directory under the run's directory (printed),
# which also holds the nodes' logs.
set -euo pipefail
cd "$(dirname "$0")/.."

nodes=3
port=8081
pg="postgres://postgres@127.0.0.1:5432"
nats="nats://127.0.0.1:4222"
keep=0
profile=release
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --pg) pg="${2%/}"; shift 2 ;;
    --nats) nats="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    --debug) profile=debug; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) nodes="$1"; shift ;;
  esac
done
case "$nodes" in ''|*[!0-9]*) echo "error: N must be a number" >&2; exit 2 ;; esac
[ "$nodes" -ge 1 ] || { echo "error: N must be at least 1" >&2; exit 2; }

port_open() { (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null; }
# host and port of a URL such as postgres://user:pw@host:5432/db or nats://host:4222
host_port() { local hp="${1#*://}"; hp="${hp##*@}"; hp="${hp%%/*}"; hp="${hp%%,*}"; echo "${hp%:*} ${hp##*:}"; }
read -r pg_host pg_port <<<"$(host_port "$pg")"
read -r nats_host nats_port <<<"$(host_port "$nats")"
port_open "$pg_port" "$pg_host" || { echo "error: PostgreSQL is not reachable at $pg_host:$pg_port" >&2; exit 1; }
port_open "$nats_port" "$nats_host" || { echo "error: NATS is not reachable at $nats_host:$nats_port" >&2; exit 1; }
for i in $(seq 0 $((nodes - 1))); do
  if port_open $((port + i)); then
    echo "error: port $((port + i)) is taken; choose another with --port" >&2
    exit 1
  fi
done

# The demo page, when npm is there to build it (the nodes serve the API without it).
if command -v npm >/dev/null 2>&1; then
  scripts/npm-web.sh >/dev/null || echo "note: the demo page did not build; the nodes serve the API only" >&2
else
  echo "note: npm is not installed; the nodes serve the API without the demo page" >&2
fi
if [ "$profile" = release ]; then
  cargo build --release --locked -p geostream-server --bin geostream
else
  cargo build --locked -p geostream-server --bin geostream
fi
bin="$PWD/target/$profile/geostream"

# The database (once), and a schema and NATS prefix of this run.
psql_() { local db="$1"; shift; psql "$pg/$db" -X -q -v ON_ERROR_STOP=1 "$@"; }
if ! psql_ postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'geostream'" | grep -q 1; then
  psql_ postgres -c "CREATE DATABASE geostream"
  echo "created the database geostream"
fi
run="gs_$(date +%Y%m%d_%H%M%S)_$$"
dir="$(mktemp -d "${TMPDIR:-/tmp}/geostream-cluster.XXXXXX")"

export GEOSTREAM_STORE__TYPE=postgres
export GEOSTREAM_STORE__URL="$pg/geostream"
export GEOSTREAM_STORE__SCHEMA="$run"
export GEOSTREAM_BROKER__TYPE=nats
export GEOSTREAM_BROKER__URL="$nats"
export GEOSTREAM_BROKER__PREFIX="$run"

# Deletes the JetStream streams of this run (named <prefix>_...), speaking the NATS protocol.
delete_streams() {
  python3 - "$run" "$nats_host" "$nats_port" <<'PY'
import json, socket, sys
prefix = sys.argv[1] + "_"
s = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=10)
f = s.makefile("rb")
f.readline()  # INFO
s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB _INBOX.cluster_sh 1\r\n')
def request(subject, payload=b""):
    s.sendall(b"PUB %s _INBOX.cluster_sh %d\r\n%s\r\n" % (subject.encode(), len(payload), payload))
    while True:
        line = f.readline()
        if not line:
            raise SystemExit("NATS closed the connection")
        if line.startswith(b"PING"):
            s.sendall(b"PONG\r\n")
        elif line.startswith(b"MSG"):
            body = f.read(int(line.split()[-1]) + 2)[:-2]
            return json.loads(body)
        elif line.startswith(b"-ERR"):
            raise SystemExit(line.decode().strip())
names, offset = [], 0
while True:
    r = request("$JS.API.STREAM.NAMES", json.dumps({"offset": offset}).encode())
    page = r.get("streams") or []
    names += [n for n in page if n.startswith(prefix)]
    offset += len(page)
    if not page or offset >= r.get("total", 0):
        break
for n in names:
    request("$JS.API.STREAM.DELETE." + n)
print(len(names))
PY
}

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
    psql_ geostream -c "DROP SCHEMA IF EXISTS \"$run\" CASCADE" >/dev/null 2>&1 || true
    streams="$(delete_streams 2>/dev/null || echo "?")"
    echo "dropped the schema $run and $streams JetStream stream(s) (logs kept in $dir)"
  else
    echo "kept the schema $run and the JetStream streams ${run}_*; logs in $dir"
  fi
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

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
echo "(every node: GEOSTREAM_STORE__TYPE=postgres GEOSTREAM_STORE__SCHEMA=$run GEOSTREAM_BROKER__TYPE=nats GEOSTREAM_BROKER__PREFIX=$run)"
for i in $(seq 1 "$nodes"); do
  p=$((port + i - 1))
  echo "  node $i: http://127.0.0.1:$p  (ws://127.0.0.1:$p/v1/ws)  pid ${pids[$((i - 1))]}  log $dir/node-$i.log"
done
echo "Ctrl-C stops them."
wait
