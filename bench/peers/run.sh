#!/usr/bin/env bash
# Runs geostream in the shared peer benchmark harness (../shared/peers relative to the repo),
# next to Socket.IO, Node ws, NATS over WebSocket and the minimal Rust server, with the same
# load generator, so every figure is a ratio taken in one run.
#
# The harness is read-only and its code does not belong in this repository, so this script
# copies it to a temporary directory, drops in what lives here (adapter/geostream.rs and
# servers/geostream*), registers the adapter in the copy's loadgen, and runs the copy's run.sh.
#
# Knobs (environment), besides every knob of the harness's run.sh (IDLE_CONNS, FAN_SUBS,
# FAN_DURATION, RTT_DURATION, QUIET_WAIT, RETRIES, OTHER_MAX, SCENARIOS, OUT, MERGE_ONLY,
# RERUN_DISTURBED, CARGO_TARGET_DIR, ...), which pass through unchanged:
#   PEERS="geostream geostream-msgpack rust-raw nats ws socketio"
#   PEERS_HARNESS=<dir>   the harness (default: <repo>/../shared/peers)
#   OUT_MD=<file>         where the table goes (default: bench/peers/RESULTS.md)
#   ADAPTER_TESTS=1       only run the loadgen's unit tests (with the geostream adapter), then stop
#   KEEP_WORK=1           keep the temporary copy of the harness (for debugging)
#   NO_BUILD=1            do not build geostream (use the existing target/release/geostream)
set -euo pipefail

log() { echo "[geostream-peers $(date +%H:%M:%S)] $*" >&2; }
die() { log "error: $*"; exit 1; }

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
[ -f "$REPO/Cargo.toml" ] && [ -d "$REPO/crates/geostream-server" ] ||
  die "$REPO does not look like the geostream repository (no Cargo.toml / crates/geostream-server)"
HARNESS="${PEERS_HARNESS:-$REPO/../shared/peers}"
[ -d "$HARNESS" ] || die "peer harness not found at $HARNESS (expected ../shared/peers next to the repository; set PEERS_HARNESS)"
HARNESS="$(cd "$HARNESS" && pwd)"
for f in run.sh report.py loadgen/Cargo.toml loadgen/src/main.rs loadgen/src/proto/mod.rs; do
  [ -f "$HARNESS/$f" ] || die "the peer harness at $HARNESS has no $f; has its layout changed?"
done

TMP="${TMPDIR:-/tmp}"
# The harness's own default, made explicit: the loadgen and rust-raw builds stay under /tmp
# and are reused by later runs (the copy's path changes every run, the target dir does not).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TMP/peers-target}"
# Fixed here rather than left to the harness, so this script can say where the raw JSON is.
export OUT="${OUT:-$TMP/peers-results/$(date +%Y%m%d-%H%M%S)}"
export PEERS="${PEERS:-geostream geostream-msgpack rust-raw nats ws socketio}"
OUT_MD="${OUT_MD:-$HERE/RESULTS.md}"

for v in $(compgen -e | grep '^GEOSTREAM_' || true); do
  log "note: $v is set and will configure the geostream server under test"
done

# --- geostream release build (in the repository, its normal target dir) ---------------------
# CARGO_TARGET_DIR is the harness's, not the repository's: unset it for this build, and ask
# cargo where the repository's target dir is (honours .cargo/config), so the binary is found.
build_geostream() {
  log "building geostream (release) in $REPO"
  (cd "$REPO" && env -u CARGO_TARGET_DIR cargo build --release -p geostream-server --bin geostream) ||
    die "cargo build of geostream failed (see above)"
  local tdir
  tdir="$(cd "$REPO" && env -u CARGO_TARGET_DIR cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')" ||
    die "cargo metadata failed"
  GS_PEERS_BIN="$tdir/release/geostream"
  [ -x "$GS_PEERS_BIN" ] || die "no binary at $GS_PEERS_BIN after the build"
}
# Records what is measured: the binary's build time and the tree's state (it may hold
# uncommitted work; with NO_BUILD=1 the binary may be older than the tree).
record_build() {
  [ -x "$GS_PEERS_BIN" ] || die "no geostream binary at $GS_PEERS_BIN (build it, or drop NO_BUILD=1)"
  mkdir -p "$OUT"
  {
    echo "binary: $GS_PEERS_BIN, built $(stat -c '%y' "$GS_PEERS_BIN")${NO_BUILD:+ (NO_BUILD=$NO_BUILD: not rebuilt by this run)}"
    echo "recorded: $(date '+%Y-%m-%d %H:%M:%S %z')"
    echo "commit: $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "uncommitted changes in the tree now:"
    git -C "$REPO" status --short 2>/dev/null | grep -v '^?? bench/' || true
  } >>"$OUT/geostream-build.txt"
}
export GS_PEERS_REPO="$REPO"
GS_PEERS_BIN="${GS_PEERS_BIN:-$REPO/target/release/geostream}"
if [ "${ADAPTER_TESTS:-0}" != 1 ] && [ "${MERGE_ONLY:-0}" != 1 ]; then
  [ "${NO_BUILD:-0}" = 1 ] || build_geostream
  record_build
fi
export GS_PEERS_BIN

# --- temporary copy of the harness ---------------------------------------------------------
WORK="$(mktemp -d "$TMP/geostream-peers-XXXX")"
cleanup() {
  if [ "${KEEP_WORK:-0}" = 1 ]; then log "kept the harness copy at $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
# node_modules are not copied from the harness (it has none) but installed by its run.sh;
# keep them between runs, keyed by each server's package-lock.json, so a run needs no network.
NPM_CACHE="$TMP/geostream-peers-node_modules"
cp -a "$HARNESS/." "$WORK/"
# The harness ships its last table; drop it so only this run's table can be copied out.
rm -f "$WORK/RESULTS.md"
for d in "$WORK"/servers/*/; do
  [ -f "$d/package-lock.json" ] && [ ! -d "$d/node_modules" ] || continue
  key="$(basename "$d")-$(sha256sum "$d/package-lock.json" | cut -c1-16)"
  [ -d "$NPM_CACHE/$key/node_modules" ] && cp -a "$NPM_CACHE/$key/node_modules" "$d/"
done

# --- install the adapter and the servers ---------------------------------------------------
cp -p "$HERE/adapter/geostream.rs" "$WORK/loadgen/src/proto/geostream.rs"
for s in "$HERE"/servers/*/; do
  name="$(basename "$s")"
  [ ! -e "$WORK/servers/$name" ] || die "the harness already has a server named $name"
  cp -a "$s" "$WORK/servers/$name"
done

# Registration: `pub mod geostream;` after the last `pub mod` of proto/mod.rs, and two match
# arms before the catch-all arm of dispatch() in main.rs. Each edit checks that its anchor is
# there exactly once and fails loudly otherwise (the harness may have changed).
python3 - "$WORK/loadgen/src/proto/mod.rs" "$WORK/loadgen/src/main.rs" <<'PY'
import re, sys

def die(msg):
    sys.exit(f"registering the geostream adapter: {msg}")

mod_rs, main_rs = sys.argv[1:]

src = open(mod_rs).read()
mods = list(re.finditer(r"^pub mod \w+;\n", src, re.M))
if not mods:
    die(f"no `pub mod x;` line in {mod_rs}")
if re.search(r"^pub mod geostream;", src, re.M):
    die(f"{mod_rs} already declares geostream")
end = mods[-1].end()
open(mod_rs, "w").write(src[:end] + "pub mod geostream;\n" + src[end:])

src = open(main_rs).read()
fn = re.search(r"^async fn dispatch\(", src, re.M)
if not fn:
    die(f"no `async fn dispatch(` in {main_rs}")
arm = re.compile(r'^(?P<indent>[ \t]+)other => Err\(format!\("unknown adapter', re.M)
found = list(arm.finditer(src, fn.end()))
if len(found) != 1:
    die(f"expected one `other => Err(format!(\"unknown adapter` arm in dispatch() of {main_rs}, found {len(found)}")
m = found[0]
ind = m.group("indent")
new = (
    f'{ind}"geostream" => run_with(proto::geostream::Geostream::from_args(&a, proto::geostream::Encoding::Json)?, a, nofile).await,\n'
    f'{ind}"geostream-msgpack" => run_with(proto::geostream::Geostream::from_args(&a, proto::geostream::Encoding::Msgpack)?, a, nofile).await,\n'
)
src = src[:m.start()] + new + src[m.start():]
open(main_rs, "w").write(src)
PY
# The edits above give mod.rs and main.rs a new mtime on every run, which would make cargo
# recompile the loadgen (about a minute of both cores) each time. Date the edited files (and
# the adapter) to the newest of their sources instead: unchanged sources keep the previous
# build fresh, and a changed harness file or adapter is newer than that build, so it rebuilds.
newest="$(stat -c '%Y %n' "$HARNESS/loadgen/src/proto/mod.rs" "$HARNESS/loadgen/src/main.rs" \
  "$HERE/adapter/geostream.rs" | sort -n | tail -1 | cut -d' ' -f2-)"
touch -r "$newest" "$WORK/loadgen/src/proto/mod.rs" "$WORK/loadgen/src/main.rs" \
  "$WORK/loadgen/src/proto/geostream.rs"
log "harness copied to $WORK with the geostream adapter and servers"

# Every scenario must measure the same build, but other engineers rebuild target/release/
# while a run takes 10-20 min: start.sh execs a snapshot of the binary taken now.
if [ "${ADAPTER_TESTS:-0}" != 1 ] && [ "${MERGE_ONLY:-0}" != 1 ]; then
  cp "$GS_PEERS_BIN" "$WORK/geostream"
  echo "snapshot: $WORK/geostream, sha256 $(sha256sum "$WORK/geostream" | cut -c1-16)" >>"$OUT/geostream-build.txt"
  export GS_PEERS_BIN="$WORK/geostream"
fi

# --- adapter unit tests only ----------------------------------------------------------------
if [ "${ADAPTER_TESTS:-0}" = 1 ]; then
  log "running the loadgen's unit tests (including proto::geostream)"
  cargo test --manifest-path "$WORK/loadgen/Cargo.toml" -- --test-threads 2
  exit 0
fi

# --- the benchmark ----------------------------------------------------------------------------
log "peers: $PEERS; raw results in $OUT"
rc=0
"$WORK/run.sh" || rc=$?

# Keep the node_modules the harness installed for the next run.
for d in "$WORK"/servers/*/; do
  [ -f "$d/package-lock.json" ] && [ -d "$d/node_modules" ] || continue
  key="$(basename "$d")-$(sha256sum "$d/package-lock.json" | cut -c1-16)"
  if [ ! -d "$NPM_CACHE/$key/node_modules" ]; then
    mkdir -p "$NPM_CACHE/$key" && cp -a "$d/node_modules" "$NPM_CACHE/$key/"
  fi
done

[ "$rc" = 0 ] || die "the harness's run.sh failed (exit $rc); raw results so far in $OUT"
[ -f "$WORK/RESULTS.md" ] || die "the harness wrote no RESULTS.md"
mkdir -p "$(dirname "$OUT_MD")"
cp "$WORK/RESULTS.md" "$OUT_MD"
# A copy next to the raw JSON, so a results directory is self-describing.
cp "$WORK/RESULTS.md" "$OUT/RESULTS.md"
log "table: $OUT_MD; raw JSON and server logs: $OUT"
