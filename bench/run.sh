#!/usr/bin/env bash
# geostream's benchmark suite: one command, about 10-11 minutes (plus the release build) on the project's 2-core machine.
#
#   bench/run.sh                 everything; writes docs/BENCHMARKS.md
#   QUICK=1 bench/run.sh         a smoke run (small counts, short phases, ~6 min; writes to $OUT only)
#   SKIP_PEERS=1 bench/run.sh    geostream's own scenarios only (the report then has no peer figures)
#   bench/run.sh cluster         the cluster comparison instead (see "cluster mode" below): the
#                                spatial and edits scenarios against one SQLite node, one
#                                PostgreSQL node and three PostgreSQL/NATS nodes, edits on one
#                                layer and on eight (and on eight with an owner of writes per
#                                layer); prints a table and writes
#                                $OUT/cluster/RESULTS.md (about 2 minutes plus the build)
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
#   ONLY="a b"         run only these of geostream's scenarios (keys as in the SCEN list below);
#                      into the $OUT of a full run, then REPORT_ONLY=1 with that run's knobs,
#                      this reruns disturbed phases and the report lists them as rerun
#   PORT=9200          geostream's port for its own scenarios
#   NO_BUILD=1         use the existing release binaries (target/release, or GS_BIN and
#                      GS_LOADGEN_BIN)
#   REPORT_ONLY=1      only rewrite the report from $OUT
#   cluster mode:      CL_SUBS (viewport subscribers, default 10000), CL_EDITORS (50),
#                      CL_DURATION (seconds per phase, 8), CL_CONFIGS ("sqlite1 pg1 pg3 pg3l"),
#                      PG_URL (postgres://postgres@127.0.0.1:5432, database geostream is
#                      created if missing), NATS_URL (nats://127.0.0.1:4222)
set -euo pipefail

MODE="${1:-all}"
case "$MODE" in
  all|cluster) ;;
  *) echo "usage: bench/run.sh [cluster]" >&2; exit 2 ;;
esac

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
      env -u CARGO_TARGET_DIR cargo build --release -p geostream-loadgen &&
      env -u CARGO_TARGET_DIR cargo bench --no-run -p geostream-fence --bench fences &&
      env -u CARGO_TARGET_DIR cargo bench --no-run -p geostream-server --bench webhooks) ||
      die "release build failed"
  fi
  mkdir -p "$OUT/bin"
  # Under fixed names: GS_BIN and GS_LOADGEN_BIN may name copies called anything.
  cp "${GS_BIN:-$TDIR/release/geostream}" "$OUT/bin/geostream"
  cp "${GS_LOADGEN_BIN:-$TDIR/release/gs-loadgen}" "$OUT/bin/gs-loadgen"
  {
    echo "commit: $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "binary sha256: $(sha256sum "$OUT/bin/geostream" | cut -c1-16), built $(stat -c '%y' "${GS_BIN:-$TDIR/release/geostream}")"
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

# --- cluster mode ---------------------------------------------------------------------------
# Each configuration is started afresh for each scenario (a schema of its own on PostgreSQL,
# a NATS prefix of its own for three nodes), and stopped by PID:
#   sqlite1  one node, SQLite store, in-process broker (the default deployment);
#   pg1      one node, PostgreSQL store, in-process broker;
#   pg3      three nodes on consecutive ports, PostgreSQL store, NATS broker; the load
#            generator spreads its connections round-robin over them (--nodes), so the
#            replay of `spatial` runs on node 1 and its viewports on all three;
#   pg3l     pg3 with an owner of writes per layer (`broker.write_owner = "layer"`), for
#            `edits-8layers` only: the other scenarios write one layer, where it is pg3.
# Scenarios: `spatial` (AIS replay as feature.batch of 500 into one layer, CL_SUBS viewport
# subscribers), `edits-1layer` and `edits-8layers` (CL_EDITORS editors patching their own
# feature, one edit in flight each, on one layer or spread over eight).
if [ "$MODE" = cluster ]; then
  PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432}"
  NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
  if [ "$QUICK" = 1 ]; then CL_SUBS="${CL_SUBS:-1000}"; CL_DURATION="${CL_DURATION:-2}"; fi
  CL_SUBS="${CL_SUBS:-10000}"
  CL_EDITORS="${CL_EDITORS:-50}"
  CL_DURATION="${CL_DURATION:-8}"
  CL_CONFIGS="${CL_CONFIGS:-sqlite1 pg1 pg3 pg3l}"
  CL_TRACK="$DATA/trajectories/ais_us_coastal_2020-06-30.csv.zst"
  mkdir -p "$OUT/cluster"
  cl_psql() { psql "$PG_URL/$1" -X -q -v ON_ERROR_STOP=1 "${@:2}"; }
  if ! cl_psql postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'geostream'" | grep -q 1; then
    cl_psql postgres -c "CREATE DATABASE geostream" || die "cannot create the database geostream at $PG_URL"
  fi
  CL_PIDS=()
  CL_SCHEMA=""
  cl_stop() {
    local pid
    for pid in "${CL_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${CL_PIDS[@]}"; do
      for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -KILL "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    done
    CL_PIDS=()
    if [ -n "$CL_SCHEMA" ]; then
      cl_psql geostream -c "DROP SCHEMA IF EXISTS \"$CL_SCHEMA\" CASCADE" >/dev/null 2>&1 || true
      CL_SCHEMA=""
    fi
    rm -rf "$OUT/cluster/data"
  }
  trap cl_stop EXIT
  # cl_start CONFIG: starts the configuration's node(s) and waits until each answers.
  cl_start() {
    local config="$1" n=1 i
    # No demo basemap: nothing here draws it, and each fresh schema would load it again.
    local env=("${GS_ENV[@]}" GEOSTREAM_WEB__BASEMAP= GEOSTREAM_SHUTDOWN__UNREADY_SECS=0 RUST_LOG=warn)
    case "$config" in
      sqlite1) ;;
      pg1|pg3|pg3l)
        CL_SCHEMA="gsbench_$(date +%H%M%S)_$$_$config"
        env+=(GEOSTREAM_STORE__TYPE=postgres "GEOSTREAM_STORE__URL=$PG_URL/geostream" "GEOSTREAM_STORE__SCHEMA=$CL_SCHEMA")
        if [ "$config" != pg1 ]; then
          n=3
          env+=(GEOSTREAM_BROKER__TYPE=nats "GEOSTREAM_BROKER__URL=$NATS_URL" "GEOSTREAM_BROKER__PREFIX=$CL_SCHEMA")
        fi
        if [ "$config" = pg3l ]; then env+=(GEOSTREAM_BROKER__WRITE_OWNER=layer); fi ;;
      *) die "unknown cluster configuration $config (sqlite1, pg1, pg3, pg3l)" ;;
    esac
    for i in $(seq 0 $((n - 1))); do
      mkdir -p "$OUT/cluster/data/node-$i"
      env "${env[@]}" "$BIN" serve --listen "127.0.0.1:$((PORT + i))" --data-dir "$OUT/cluster/data/node-$i" \
        >>"$OUT/cluster/$config-node-$((i + 1)).log" 2>&1 &
      CL_PIDS+=("$!")
    done
    for i in $(seq 0 $((n - 1))); do
      for _ in $(seq 1 300); do
        if curl -sf "http://127.0.0.1:$((PORT + i))/healthz" >/dev/null 2>&1; then break; fi
        kill -0 "${CL_PIDS[$i]}" 2>/dev/null || die "$config node $((i + 1)) exited during start-up (see $OUT/cluster/$config-node-$((i + 1)).log)"
        sleep 0.1
      done
      curl -sf "http://127.0.0.1:$((PORT + i))/healthz" >/dev/null 2>&1 || die "$config node $((i + 1)) did not answer within 30 s"
    done
  }
  # cl_scenario CONFIG KEY LOADGEN-ARGS...: fresh node(s), one loadgen run, its JSON line kept
  # as $OUT/cluster/CONFIG-KEY.json.
  cl_scenario() {
    local config="$1" key="$2" rc=0 nodes=()
    shift 2
    cl_start "$config"
    if [ "${#CL_PIDS[@]}" -gt 1 ]; then
      nodes=(--nodes "127.0.0.1:$((PORT + 1)),127.0.0.1:$((PORT + 2))")
    fi
    log "$config $key: gs-loadgen ${nodes[*]} $*"
    timeout -k 5 300 "$LG" --addr "127.0.0.1:$PORT" "${nodes[@]}" --server-pid "${CL_PIDS[0]}" \
      --label "$config-$key" "$@" >"$OUT/cluster/$config-$key.json.tmp" 2>"$OUT/cluster/$config-$key.err" || rc=$?
    cl_stop
    tail -n 1 "$OUT/cluster/$config-$key.json.tmp" >"$OUT/cluster/$config-$key.json"
    rm -f "$OUT/cluster/$config-$key.json.tmp"
    [ "$rc" = 0 ] || log "$config $key: loadgen exit $rc: $(head -c 300 "$OUT/cluster/$config-$key.json")"
  }
  for config in $CL_CONFIGS; do
    if [ "$config" != pg3l ]; then
      cl_scenario "$config" spatial --enc msgpack spatial --track "$CL_TRACK" --subs "$CL_SUBS" \
        --box-deg 0.05 --duration "$CL_DURATION"
      cl_scenario "$config" edits-1layer --enc msgpack edits --editors "$CL_EDITORS" --layers 1 --duration "$CL_DURATION"
    fi
    cl_scenario "$config" edits-8layers --enc msgpack edits --editors "$CL_EDITORS" --layers 8 --duration "$CL_DURATION"
  done
  python3 - "$OUT/cluster" "$CL_CONFIGS" >"$OUT/cluster/RESULTS.md" <<'PY'
import json, os, sys
out, configs = sys.argv[1], sys.argv[2].split()
names = {"sqlite1": "1 node, SQLite", "pg1": "1 node, PostgreSQL", "pg3": "3 nodes, PostgreSQL + NATS",
         "pg3l": "3 nodes, an owner of writes per layer"}
def load(config, key):
    try:
        with open(os.path.join(out, f"{config}-{key}.json")) as f:
            return json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return {}
def ms(v):
    return "-" if v is None else f"{v:g}"
def rate(v):
    return "-" if v is None else f"{v:,.0f}"
rows = ["| configuration | scenario | updates/s | edits/s | p50 ms | p99 ms | note |", "|---|---|---:|---:|---:|---:|---|"]
for c in configs:
    for key in ("spatial", "edits-1layer", "edits-8layers"):
        if c == "pg3l" and key != "edits-8layers":
            continue
        r = load(c, key)
        lat = r.get("latency_ms") or {}
        note = r.get("error", "")
        if key == "spatial" and "expected" in r:
            want = sum(r["expected"].values())
            got = sum(r["received"][k] for k in ("enter", "update", "exit"))
            note = note or f"{r['subs']} viewports; pushes {got} of {want} expected"
        elif "edits" in r:
            note = note or f"{r['editors']} editors on {r['layers']} layer(s); {r['failed']} failed"
        rows.append("| {} | {} | {} | {} | {} | {} | {} |".format(
            names.get(c, c), key,
            rate(r.get("updates_per_s")) if key == "spatial" else "-",
            rate(r.get("edits_per_s")) if key != "spatial" else "-",
            ms(lat.get("p50")), ms(lat.get("p99")), note))
print("\n".join(rows))
# The issue's targets, as ratios within this run (a ratio holds on a noisy machine; absolute
# figures from two runs do not compare).
def fig(c, key):
    r = load(c, key)
    return r.get("updates_per_s" if key == "spatial" else "edits_per_s")
def ratio(a, b):
    return None if not a or not b else a / b
checks = []
for key, what in (("spatial", "spatial"), ("edits-1layer", "edits, 1 layer")):
    checks.append((f"1 PostgreSQL node / 1 SQLite node, {what}", ratio(fig("pg1", key), fig("sqlite1", key)), 0.5))
for key, what in (("spatial", "spatial"), ("edits-1layer", "edits, 1 layer"), ("edits-8layers", "edits, 8 layers")):
    checks.append((f"3 nodes / 1 PostgreSQL node, {what}", ratio(fig("pg3", key), fig("pg1", key)), 1.0))
rows = ["", "| target (this run) | figure | needed | met |", "|---|---:|---:|---|"]
for name, v, need in checks:
    if v is not None:
        rows.append(f"| {name} | {v:.2f}x | {need:.1f}x | {'yes' if v >= need else 'no'} |")
r = load("pg3", "edits-1layer")
if "edits_per_s" in r:
    p99 = (r.get("latency_ms") or {}).get("p99")
    ok = r["edits_per_s"] >= 5000 and p99 is not None and p99 < 50
    rows.append(f"| 3 nodes, 1 layer, {r.get('editors')} editors: edits/s, p99 | {r['edits_per_s']:,.0f}/s, {ms(p99)} ms | 5,000/s, < 50 ms | {'yes' if ok else 'no'} |")
if len(rows) > 3:
    print("\n".join(rows))
PY
  cat "$OUT/cluster/RESULTS.md"
  log "cluster mode done in $(( $(date +%s) - T_START )) s; raw JSON and node logs: $OUT/cluster"
  exit 0
fi

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
  # Rerun into a full run's $OUT (say, a phase another process disturbed): the report says so.
  if [ -n "${ONLY:-}" ]; then echo "$key $(date -u +%H:%M)" >>"$OUT/gs/reruns.txt"; fi
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
  # One connection with 64 edits in flight: its server allows 64 (the default,
  # websocket.max_inflight_requests, is 16).
  GEOSTREAM_WEBSOCKET__MAX_INFLIGHT_REQUESTS=64 \
    scenario "edits-pipelined" --enc msgpack edits --editors 1 --inflight 64 --duration "$D"
  scenario "tiles" --enc msgpack tiles --geojson "$GEOJSON" --clients 32 --zoom 3 --duration "$D" --open-rate 100
  # Geofences: the engine replaying the AIS day against 100,000 fences on one layer, and
  # webhook deliveries to local receivers (in-process benchmarks, built in step 1).
  if [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" geofences "* ]]; then
    if [ "$QUICK" = 1 ]; then NF=10000; NE=2000; else NF=100000; NE=20000; fi
    log "geofences: $NF fences"
    (cd "$REPO" && FENCES=$NF env -u CARGO_TARGET_DIR cargo bench -q -p geostream-fence --bench fences) \
      >"$OUT/gs/geofences.txt" 2>"$OUT/gs/geofences.err" || log "geofences: failed"
    log "webhooks: $NE events to 4 endpoints"
    (cd "$REPO" && EVENTS=$NE env -u CARGO_TARGET_DIR cargo bench -q -p geostream-server --bench webhooks) \
      >"$OUT/gs/webhooks.txt" 2>"$OUT/gs/webhooks.err" || log "webhooks: failed"
  fi
fi

# --- report ---------------------------------------------------------------------------------
[ "${REPORT_ONLY:-0}" = 1 ] || echo "$(( $(date +%s) - T_START ))" >"$OUT/elapsed_s"
mkdir -p "$(dirname "$MD")"
python3 "$HERE/report.py" "$OUT" "$REPO" >"$MD.tmp" && mv "$MD.tmp" "$MD"
log "done in $(( $(date +%s) - T_START )) s; report: $MD; raw JSON: $OUT"
