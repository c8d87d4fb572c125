#!/usr/bin/env bash
# The chaos run: three geostream nodes on PostgreSQL/PostGIS and NATS (JetStream) under the
# soak's load and oracle for DURATION seconds (default 600, at most 14400), while a random node
# is killed with SIGKILL and restarted every 20-40 s, and node-1's connection to NATS (through
# a proxy this run owns; the shared NATS is never touched) is cut for 5-15 s every 30-60 s.
# Clients reconnect to any node and resume; writers retry with their operation ids. At the
# end: every subscriber's stream equals the oracle's, and no acknowledged edit is missing.
#
#   bench/chaos.sh [DURATION]          writes docs/reliability/chaos.svg and chaos.md
#   PROFILE=dev bench/chaos.sh 180     debug builds
#
# Needs PostgreSQL with PostGIS on 127.0.0.1:5432 (GEOSTREAM_TEST_POSTGRES_URL) and NATS with
# JetStream on 127.0.0.1:4222 (GEOSTREAM_TEST_NATS); scripts/test.sh starts both. The run
# uses a schema and a subject prefix of its own and removes them at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/data.sh
DURATION="${1:-600}"
if [ "$DURATION" -gt 14400 ]; then echo "error: DURATION is at most 14400 s" >&2; exit 2; fi
PROFILE="${PROFILE:-release}"
OUT="${OUT:-${TMPDIR:-/tmp}/geostream-chaos/$(date +%Y%m%d-%H%M%S)}"
PG="${GEOSTREAM_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
NATS="${GEOSTREAM_TEST_NATS:-127.0.0.1:4222}"
TRACK="$(data_file trajectories/ais_us_coastal_2020-06-30.csv.zst)"
port_open() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }
port_open 127.0.0.1:5432 || { echo "error: PostgreSQL is not reachable on 127.0.0.1:5432 (scripts/test.sh starts it)" >&2; exit 2; }
port_open "$NATS" || { echo "error: NATS is not reachable on $NATS (scripts/test.sh starts it)" >&2; exit 2; }
ulimit -n "$(ulimit -Hn)"
if [ "$PROFILE" = release ]; then
  cargo build --locked --release -p geostream-server --bin geostream
  cargo build --locked --release -p geostream-soak
  DIR=target/release
else
  cargo build --locked -p geostream-server --bin geostream
  cargo build --locked -p geostream-soak
  DIR=target/debug
fi
mkdir -p "$OUT" docs/reliability
set +e
# Three nodes, PostgreSQL and NATS share the two cores with the load: a lighter load than the
# soak's (300 viewports, 40 positions/s, 3 channels at 10/s, 3 editors).
"$DIR/gs-soak" chaos --bin "$DIR/geostream" --duration "$DURATION" --out "$OUT" --track "$TRACK" \
  --pg-url "$PG" --nats "$NATS" --viewports 300 --channel-subscribers 10 --channels 3 \
  --publish-rate 10 --ais-rate 40 --editors 3 --edit-rate 3
STATUS=$?
set -e
if [ -f "$OUT/verdict.json" ]; then
  python3 bench/soak_report.py "$OUT" docs/reliability/chaos.svg docs/reliability/chaos.md
  echo "wrote docs/reliability/chaos.svg and chaos.md (raw: $OUT)"
fi
exit "$STATUS"
