#!/usr/bin/env bash
# The three-node chaos run: the soak's load and oracle (bench/soak/src/main.rs, `--cluster`)
# on NODES (default 3) `geostream serve` nodes sharing PostgreSQL/PostGIS and NATS JetStream,
# each started as docs/DEPLOY.md says an operator does (one configuration file, written into
# the run's directory as node.toml, plus --listen, --data-dir and environment overrides),
# for DURATION seconds (default 600, at most 14400), while:
#
#   - every KILL_MIN-KILL_MAX seconds (default 20-40) a random node is killed with SIGKILL
#     and restarted on the same port;
#   - the last node reaches NATS through a TCP proxy owned by gs-soak, which every
#     CUT_MIN-CUT_MAX seconds (default 20-40) is cut (connections dropped, new ones refused)
#     for 2 to CUT_FOR_MAX seconds (default 10), then restored;
#   - a client sends a malformed frame every 1-3 s, and one client at a time stalls.
#
# Clients are spread over the nodes and move to the next node on every reconnection (so a
# client of a killed node finds a live one, and resumes cross nodes). At the end: no
# acknowledged edit is missing or applied twice (read back through every node from the
# store), every viewport equals a fresh snapshot taken on another node, every channel kept
# one epoch (JetStream history outlives the nodes) and every channel subscriber got every
# acknowledged message after its start, in order, none twice.
#
#   bench/chaos-cluster.sh [DURATION]          release build; docs/reliability/chaos-cluster.*
#   PROFILE=dev bench/chaos-cluster.sh 120     debug build, a quick check (docs/ untouched)
#
# Needs PostgreSQL with PostGIS (PG, default postgres://postgres@127.0.0.1:5432, a role that
# may create databases and PostGIS) and NATS with JetStream (NATS, default
# nats://127.0.0.1:4222). Loopback only. Each run creates a database of its own (named
# after the run) and uses a NATS prefix of the same name; it drops both at the end. It
# starts and stops every process it uses, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-600}"
if ! [[ "$DURATION" =~ ^[0-9]+$ ]] || [ "$DURATION" -gt 14400 ] || [ "$DURATION" -lt 30 ]; then
  echo "error: DURATION is 30 to 14400 seconds" >&2; exit 2
fi
PROFILE="${PROFILE:-release}"
NODES="${NODES:-3}"
PG="${PG:-postgres://postgres@127.0.0.1:5432}"
PG="${PG%/}"
NATS="${NATS:-nats://127.0.0.1:4222}"
OUT="${OUT:-${TMPDIR:-/tmp}/geostream-chaos-cluster/$(date +%Y%m%d-%H%M%S)}"
. "$PWD/bench/data.sh"
TRACK="$(data_file trajectories/ais_ny_harbor_2020-06-30_first_hour.csv.zst)" || exit 2

host_port() { local hp="${1#*://}"; hp="${hp##*@}"; hp="${hp%%/*}"; hp="${hp%%,*}"; echo "${hp%:*} ${hp##*:}"; }
read -r pg_host pg_port <<<"$(host_port "$PG")"
read -r nats_host nats_port <<<"$(host_port "$NATS")"
(exec 3<>"/dev/tcp/$pg_host/$pg_port") 2>/dev/null || { echo "error: PostgreSQL is not reachable at $pg_host:$pg_port" >&2; exit 1; }
(exec 3<>"/dev/tcp/$nats_host/$nats_port") 2>/dev/null || { echo "error: NATS is not reachable at $nats_host:$nats_port" >&2; exit 1; }

ulimit -n "$(ulimit -Hn)"
# Both binaries in one cargo run: built separately, gs-soak's tokio features (process)
# differ from the server's, and every crate that depends on tokio is compiled twice.
if [ "$PROFILE" = release ]; then
  cargo build --locked --release -p geostream-server -p geostream-soak --bin geostream --bin gs-soak
  DIR=target/release
else
  cargo build --locked -p geostream-server -p geostream-soak --bin geostream --bin gs-soak
  DIR=target/debug
fi
mkdir -p "$OUT" docs/reliability

# The run's database and NATS prefix (letters, digits and _ suit both).
RUN="gs_chaos_$(date +%Y%m%d_%H%M%S)_$$"
psql "$PG/postgres" -X -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$RUN\""

# Deletes the run's JetStream streams (named <prefix>_...), speaking the NATS protocol.
delete_streams() {
  python3 - "$RUN" "$nats_host" "$nats_port" <<'PY'
import json, socket, sys
prefix = sys.argv[1] + "_"
s = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=10)
f = s.makefile("rb")
f.readline()  # INFO
s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB _INBOX.chaos_cluster 1\r\n')
def request(subject, payload=b""):
    s.sendall(b"PUB %s _INBOX.chaos_cluster %d\r\n%s\r\n" % (subject.encode(), len(payload), payload))
    while True:
        line = f.readline()
        if not line:
            raise SystemExit("NATS closed the connection")
        if line.startswith(b"PING"):
            s.sendall(b"PONG\r\n")
        elif line.startswith(b"MSG"):
            return json.loads(f.read(int(line.split()[-1]) + 2)[:-2])
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

SOAK_PID=""
cleanup() {
  trap - EXIT INT TERM
  # gs-soak kills its nodes when it ends; if it is still running (interrupted), stop it.
  if [ -n "$SOAK_PID" ] && kill -0 "$SOAK_PID" 2>/dev/null; then
    kill -TERM "$SOAK_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$SOAK_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SOAK_PID" 2>/dev/null || true
  fi
  # Nodes left behind by an interrupted gs-soak (it writes each node's PID): only
  # processes whose command line names this run's directory.
  for f in "$OUT"/node-*.pid; do
    [ -f "$f" ] || continue
    pid="$(cat "$f")"
    if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$OUT"; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  psql "$PG/postgres" -X -q -c "DROP DATABASE IF EXISTS \"$RUN\" WITH (FORCE)" >/dev/null 2>&1 \
    || echo "warning: could not drop the database $RUN" >&2
  streams="$(delete_streams 2>/dev/null || echo "?")"
  echo "dropped the database $RUN and $streams JetStream stream(s)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The nodes' file, as in docs/DEPLOY.md; gs-soak adds --listen and --data-dir per node, and
# for the proxied node GEOSTREAM_BROKER__URL (the proxy), through the environment.
cat >"$OUT/node.toml" <<TOML
listen = "127.0.0.1:8080"

[store]
type = "postgres"
url = "$PG/$RUN"
schema = "geostream"
pool_size = 8
change_retention = 100000

[broker]
type = "nats"
url = "$NATS"
prefix = "$RUN"
replicas = 1
heartbeat_ms = 2000

[channels]
history_size = 5000
history_ttl_secs = 1200
TOML
echo "run $RUN: $NODES nodes, database $RUN, NATS prefix $RUN, output $OUT"

set +e
timeout $((DURATION + 900)) "$DIR/gs-soak" --chaos --cluster "$NODES" --config "$OUT/node.toml" \
  --nats "$nats_host:$nats_port" --bin "$DIR/geostream" --duration "$DURATION" \
  --out "$OUT" --track "$TRACK" --viewports "${VIEWPORTS:-300}" --channels "${CHANNELS:-4}" \
  --channel-subscribers "${CHANNEL_SUBSCRIBERS:-5}" --publish-rate "${PUBLISH_RATE:-20}" \
  --editors "${EDITORS:-4}" --edit-rate "${EDIT_RATE:-5}" --replay-speed "${REPLAY_SPEED:-30}" \
  --kill-min "${KILL_MIN:-20}" --kill-max "${KILL_MAX:-40}" \
  --cut-min "${CUT_MIN:-20}" --cut-max "${CUT_MAX:-40}" --cut-for-max "${CUT_FOR_MAX:-10}" &
SOAK_PID=$!
wait "$SOAK_PID"
STATUS=$?
set -e
if [ -f "$OUT/verdict.json" ]; then
  if [ "$PROFILE" = release ]; then
    python3 bench/soak_report.py "$OUT" docs/reliability/chaos-cluster.svg docs/reliability/chaos-cluster.md "chaos (three nodes)"
    echo "wrote docs/reliability/chaos-cluster.svg and chaos-cluster.md (raw: $OUT)"
  else
    python3 bench/soak_report.py "$OUT" "$OUT/chaos-cluster.svg" "$OUT/chaos-cluster.md" "chaos (three nodes)"
    echo "wrote $OUT/chaos-cluster.svg and chaos-cluster.md (debug build: docs/ not touched)"
  fi
fi
exit "$STATUS"
