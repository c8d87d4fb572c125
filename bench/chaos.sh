#!/usr/bin/env bash
# The chaos run: the soak's load and oracle (bench/soak.sh, bench/soak/src/main.rs) on one
# geostream process for DURATION seconds (default 600, at most 14400), while the process is
# killed with SIGKILL and restarted on the same data and port every KILL_MIN-KILL_MAX seconds
# (default 20-40), a client sends a malformed frame every 1-3 s (unmasked, reserved bit,
# unknown opcode, invalid UTF-8, a 1 TiB length, binary on a JSON connection) and must be
# closed, and one client at a time stalls. Clients reconnect and resume; editors retry with
# their operation ids. At the end: no acknowledged edit is missing or applied twice, every
# viewport equals the server's, and every channel subscriber has every acknowledged message
# of each epoch up to the last it saw (the in-process broker's history does not survive a
# restart: the epoch changes, as documented), in order, none twice.
#
#   bench/chaos.sh [DURATION]          release build; writes docs/reliability/chaos.svg and chaos.md
#   PROFILE=dev bench/chaos.sh 120     debug build, a quick check (docs/ untouched)
#
# Loopback only; the run starts and stops every process it uses. The three-node variant
# (PostgreSQL, NATS, a node's NATS link cut) is bench/chaos-cluster.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-600}"
if ! [[ "$DURATION" =~ ^[0-9]+$ ]] || [ "$DURATION" -gt 14400 ] || [ "$DURATION" -lt 30 ]; then
  echo "error: DURATION is 30 to 14400 seconds" >&2; exit 2
fi
PROFILE="${PROFILE:-release}"
OUT="${OUT:-${TMPDIR:-/tmp}/geostream-chaos/$(date +%Y%m%d-%H%M%S)}"
# The vendored AIS track (datasets/, see bench/data.sh).
. "$PWD/bench/data.sh"
TRACK="$(data_file trajectories/ais_ny_harbor_2020-06-30_first_hour.csv.zst)" || exit 2
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
timeout $((DURATION + 900)) "$DIR/gs-soak" --chaos --bin "$DIR/geostream" --duration "$DURATION" \
  --out "$OUT" --track "$TRACK" --viewports "${VIEWPORTS:-300}" --channels "${CHANNELS:-4}" \
  --channel-subscribers "${CHANNEL_SUBSCRIBERS:-5}" --publish-rate "${PUBLISH_RATE:-20}" \
  --editors "${EDITORS:-4}" --edit-rate "${EDIT_RATE:-5}" --replay-speed "${REPLAY_SPEED:-30}" \
  --kill-min "${KILL_MIN:-20}" --kill-max "${KILL_MAX:-40}"
STATUS=$?
set -e
if [ -f "$OUT/verdict.json" ]; then
  if [ "$PROFILE" = release ]; then
    python3 bench/soak_report.py "$OUT" docs/reliability/chaos.svg docs/reliability/chaos.md chaos
    echo "wrote docs/reliability/chaos.svg and chaos.md (raw: $OUT)"
  else
    python3 bench/soak_report.py "$OUT" "$OUT/chaos.svg" "$OUT/chaos.md" chaos
    echo "wrote $OUT/chaos.svg and chaos.md (debug build: docs/ not touched)"
  fi
fi
exit "$STATUS"
