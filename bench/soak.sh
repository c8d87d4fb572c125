#!/usr/bin/env bash
# The soak run: one geostream process under steady mixed load for DURATION seconds (default
# 600, at most 14400), with an oracle checked at the end (bench/soak/src/main.rs says what
# runs and what is checked). Samples RSS, open fds, outbox depth, connections and p99 every
# 10 s; fails on any lost or duplicated message, any viewport that differs from the server,
# any acknowledged edit missing, an RSS slope over the second half above MAX_RSS_SLOPE MiB/min
# (default 1), or fd growth above MAX_FD_GROWTH (default 8).
#
#   bench/soak.sh [DURATION]            release build; writes docs/reliability/soak.svg and
#                                       soak.md (raw samples and verdict under $OUT)
#   PROFILE=dev bench/soak.sh 60        debug build, a quick check that it runs
#   VIEWPORTS=200 bench/soak.sh 120     a lighter load (also CHANNELS, CHANNEL_SUBSCRIBERS,
#                                       PUBLISH_RATE, EDITORS, EDIT_RATE, REPLAY_SPEED)
#
# Loopback only; the server and every client are started and stopped by the run.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-600}"
if ! [[ "$DURATION" =~ ^[0-9]+$ ]] || [ "$DURATION" -gt 14400 ] || [ "$DURATION" -lt 30 ]; then
  echo "error: DURATION is 30 to 14400 seconds" >&2; exit 2
fi
PROFILE="${PROFILE:-release}"
OUT="${OUT:-${TMPDIR:-/tmp}/geostream-soak/$(date +%Y%m%d-%H%M%S)}"
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
# The whole run is bounded: the load for DURATION, then the checks (a few minutes at most).
timeout $((DURATION + 900)) "$DIR/gs-soak" --bin "$DIR/geostream" --duration "$DURATION" --out "$OUT" \
  --track "$TRACK" --viewports "${VIEWPORTS:-1000}" --channels "${CHANNELS:-4}" \
  --channel-subscribers "${CHANNEL_SUBSCRIBERS:-5}" --publish-rate "${PUBLISH_RATE:-20}" \
  --editors "${EDITORS:-4}" --edit-rate "${EDIT_RATE:-5}" --replay-speed "${REPLAY_SPEED:-30}" \
  --max-rss-slope "${MAX_RSS_SLOPE:-1}" --max-fd-growth "${MAX_FD_GROWTH:-8}"
STATUS=$?
set -e
if [ -f "$OUT/verdict.json" ]; then
  if [ "$PROFILE" = release ]; then
    python3 bench/soak_report.py "$OUT" docs/reliability/soak.svg docs/reliability/soak.md soak
    echo "wrote docs/reliability/soak.svg and soak.md (raw: $OUT)"
  else
    python3 bench/soak_report.py "$OUT" "$OUT/soak.svg" "$OUT/soak.md" soak
    echo "wrote $OUT/soak.svg and soak.md (debug build: docs/ not touched)"
  fi
fi
exit "$STATUS"
