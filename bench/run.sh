#!/usr/bin/env bash
# geostream's benchmark suite: one command, about 10-11 minutes (plus the release build) on the project's 2-core machine.
#
#   bench/run.sh                 everything; writes docs/BENCHMARKS.md
#   QUICK=1 bench/run.sh         a smoke run (small counts, short phases, ~6 min; writes to $OUT only)
#   SKIP_PEERS=1 bench/run.sh    geostream's own scenarios only (the report then has no peer figures)
#
# 1. builds geostream and the load generator (bench/loadgen) in release, once, and measures
#    copies of both binaries (other engineers may rebuild target/release meanwhile);
# 2. runs the shared peer harness (bench/peers/run.sh: Socket.IO, Node ws, NATS over
#    WebSocket, the minimal Rust server, and geostream through the same harness loadgen);
# 3. runs geostream's own scenarios with bench/loadgen (all three encodings, 19,000 idle
#    connections over worker processes, viewport routing with a real AIS replay, durable
#    edits, tiles, a stalled subscriber), each against a freshly started server;
# 4. writes docs/BENCHMARKS.md (bench/report.py) from the raw JSON of this run only.
#
# Everything targets 127.0.0.1 (sources 127.0.0.2-127.0.0.41); every server this script starts
# is stopped by its PID; every load generator run is bounded in count and time.
#
# Knobs (environment):
#   OUT=<dir>          raw results (default $TMPDIR/geostream-bench/<time>)
#   MD=<file>          the report (default docs/BENCHMARKS.md; QUICK=1: $OUT/BENCHMARKS.md)
#   PEERS="..."        peers for the harness (default: geostream geostream-msgpack rust-raw nats ws socketio)
#   ONLY="a b"         run only these of geostream's scenarios (keys as in the SCEN list below)
#   PORT=9200          geostream's port for its own scenarios
#   NO_BUILD=1         use the existing release binaries (target/release, or GS_BIN and
#                      GS_LOADGEN_BIN)
#   REPORT_ONLY=1      only rewrite the report from $OUT
set -euo pipefail

log() { echo "[bench $(date +%H:%M:%S)] $*" >&2; }
die() { log "error: $*"; exit 1; }

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
. "$HERE/data.sh"
TMP="${TMPDIR:-/tmp}"
OUT="${OUT:-$TMP/geostream-bench/$(date +%Y%m%d-%H%M%S)}"
QUICK="${QUICK:-0}"
if [ "$QUICK" = 1 ]; then MD="${MD:-$OUT/BENCHMARKS.md}"; else MD="${MD:-$REPO/docs/BENCHMARKS.md}"; fi
PORT="${PORT:-9200}"
PEERS="${PEERS:-geostream geostream-msgpack rust-raw nats ws socketio}"
mkdir -p "$OUT/gs"
T_START=$(date +%s)

for v in $(compgen -e | grep '^GEOSTREAM_' || true); do
  log "note: $v is set and will configure the servers under test"
done

# The hard limit on open files is the real one (20,000 here); take all of it, for the servers
# and the load generator's worker processes alike.
ulimit -n "$(ulimit -Hn)"

# --- build (release, benchmarks only) -----------------------------------------------------
TDIR="$(cd "$REPO" && env -u CARGO_TARGET_DIR cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
if [ "${REPORT_ONLY:-0}" != 1 ]; then
  if [ "${NO_BUILD:-0}" != 1 ]; then
    log "building geostream and gs-loadgen (release)"
    # Two builds, not one: built together, cargo would unify the two packages' dependency
    # features and produce a server binary that differs from the one everybody else builds.
    (cd "$REPO" && env -u CARGO_TARGET_DIR cargo build --release -p geostream-server --bin geostream &&
      env -u CARGO_TARGET_DIR cargo build --release -p geostream-loadgen) ||
      die "release build failed"
  fi
  mkdir -p "$OUT/bin"
  cp "${GS_BIN:-$TDIR/release/geostream}" "${GS_LOADGEN_BIN:-$TDIR/release/gs-loadgen}" "$OUT/bin/"
  {
    echo "commit: $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "binary sha256: $(sha256sum "$OUT/bin/geostream" | cut -c1-16), built $(stat -c '%y' "$TDIR/release/geostream")"
    echo "uncommitted changes outside bench/ and docs/BENCHMARKS.md:"
    git -C "$REPO" status --short 2>/dev/null | grep -v -e ' bench/' -e 'docs/BENCHMARKS.md' -e '^?? bench' -e ' Cargo.toml$' | sed 's/^/  /' || true
  } >"$OUT/build.txt"
fi
BIN="$OUT/bin/geostream"
LG="$OUT/bin/gs-loadgen"

# The server runs at its defaults except for the per-connection request rate limit
# (limits.requests_per_sec 2,000, burst 4,000): the benchmark's publishers and ping clients
# send more than that on purpose, and none of the peers limits them. Both the harness's
# geostream servers and the scenarios below get this.
GS_ENV=(GEOSTREAM_LIMITS__REQUESTS_PER_SEC=100000000 GEOSTREAM_LIMITS__REQUEST_BURST=100000000)

# --- the peer harness ---------------------------------------------------------------------
if [ "${REPORT_ONLY:-0}" != 1 ] && [ "${SKIP_PEERS:-0}" != 1 ]; then
  log "peer harness: $PEERS"
  if [ "$QUICK" = 1 ]; then
    pe=(IDLE_CONNS=1000 FAN_SUBS=200 FAN_DURATION=2 RTT_DURATION=2)
  else
    pe=(IDLE_CONNS=10000 FAN_SUBS=1000 FAN_DURATION=5 RTT_DURATION=5)
  fi
  # NO_BUILD=1 GS_PEERS_BIN: the harness measures the same binary as the scenarios below.
  env "${pe[@]}" "${GS_ENV[@]}" NO_BUILD=1 GS_PEERS_BIN="$BIN" QUIET_WAIT="${QUIET_WAIT:-2}" RETRIES="${RETRIES:-0}" PEERS="$PEERS" \
    OUT="$OUT/peers" OUT_MD="$OUT/peers/RESULTS.md" "$HERE/peers/run.sh" >"$OUT/peers.log" 2>&1 ||
    log "the peer harness failed (see $OUT/peers.log); the report will say which figures are missing"
fi

# --- geostream's own scenarios -----------------------------------------------------------------
SERVER_PID=""
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.25; done
  if kill -0 "$SERVER_PID" 2>/dev/null; then kill -KILL "$SERVER_PID" 2>/dev/null || true; fi
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  rm -rf "$OUT/data"
}
trap stop_server EXIT

start_server() {
  rm -rf "$OUT/data" && mkdir -p "$OUT/data"
  env "${GS_ENV[@]}" RUST_LOG=warn "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$OUT/data" >>"$OUT/gs/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    if curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || die "geostream exited during start-up (see $OUT/gs/server.log)"
    sleep 0.1
  done
  die "geostream did not answer on 127.0.0.1:$PORT within 10 s"
}

# One scenario: fresh server, one loadgen run (bounded by the loadgen's own limits, and by
# `timeout` as a last resort), its JSON line kept as $OUT/gs/<key>.json.
scenario() {
  local key="$1"; shift
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $key "* ]]; then return 0; fi
  start_server
  log "$key: gs-loadgen $*"
  local rc=0
  timeout -k 5 240 "$LG" --addr "127.0.0.1:$PORT" --server-pid "$SERVER_PID" --label "$key" "$@" \
    >"$OUT/gs/$key.json.tmp" 2>"$OUT/gs/$key.err" || rc=$?
  stop_server
  tail -n 1 "$OUT/gs/$key.json.tmp" >"$OUT/gs/$key.json" && rm -f "$OUT/gs/$key.json.tmp"
  [ "$rc" = 0 ] || log "$key: loadgen exit $rc: $(head -c 300 "$OUT/gs/$key.json")"
}

if [ "$QUICK" = 1 ]; then
  D=2; LAT_D=3; SUBS=200; BIG=1000; IDLE=2000; SP1=2000; SP2=10000; SP_D=3
else
  D=5; LAT_D=10; SUBS=1000; BIG=5000; IDLE=19000; SP1=10000; SP2=100000; SP_D=8
fi
TRACK="$(data_file trajectories/ais_us_coastal_2020-06-30.csv.zst)"
GEOJSON="$(data_file polygons/world_countries_50m.geojson.zst)"

if [ "${REPORT_ONLY:-0}" != 1 ]; then
  for enc in json msgpack msgpack-zstd; do
    scenario "fanout64-$enc" --enc "$enc" fanout --subs "$SUBS" --size 64 --window 64 --duration "$D" --drain 10
    scenario "fanout1k-$enc" --enc "$enc" fanout --subs "$SUBS" --size 1024 --window 64 --duration "$D" --drain 10
    scenario "latency-$enc" --enc "$enc" fanout --subs "$SUBS" --size 64 --rate 20 --duration "$LAT_D" --drain 5
    scenario "rtt-$enc" --enc "$enc" rtt --clients 50 --duration "$D"
  done
  scenario "fanout64-big" --enc msgpack fanout --subs "$BIG" --size 64 --window 64 --duration "$D" --drain 10
  scenario "slow-baseline" --enc msgpack fanout --subs 200 --size 1024 --rate 500 --duration 8 --drain 5
  scenario "slow-stalled" --enc msgpack fanout --subs 200 --stalled 1 --size 1024 --rate 500 --duration 8 --drain 5
  scenario "idle" --enc msgpack idle --conns "$IDLE" --procs 4 --settle 3 --hold 3
  scenario "spatial-small" --enc msgpack spatial --track "$TRACK" --subs "$SP1" --box-deg 0.05 --duration "$SP_D"
  scenario "spatial-large" --enc msgpack spatial --track "$TRACK" --subs "$SP2" --box-deg 0.02 --duration "$SP_D"
  for n in 1 10 50; do
    scenario "edits-$n" --enc msgpack edits --editors "$n" --duration "$D"
  done
  scenario "tiles" --enc msgpack tiles --geojson "$GEOJSON" --clients 32 --zoom 3 --duration "$D"
fi

# --- report ---------------------------------------------------------------------------------
[ "${REPORT_ONLY:-0}" = 1 ] || echo "$(( $(date +%s) - T_START ))" >"$OUT/elapsed_s"
mkdir -p "$(dirname "$MD")"
python3 "$HERE/report.py" "$OUT" "$REPO" >"$MD.tmp" && mv "$MD.tmp" "$MD"
log "done in $(( $(date +%s) - T_START )) s; report: $MD; raw JSON: $OUT"
