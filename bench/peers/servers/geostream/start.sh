#!/usr/bin/env bash
# Starts geostream on 127.0.0.1:$1 for the peer harness, in the foreground: `exec`, so the PID
# the harness holds is the server's own (it reads RSS/CPU from it and stops it by that PID).
#
# The binary is the repository's target/release/geostream, built by bench/peers/run.sh before
# the harness starts (not here: a build inside a measured start-up would time out the port wait
# and compete with the measurement). run.sh exports GS_PEERS_REPO, and GS_PEERS_BIN = a copy of
# that binary taken at the start of the run, so every scenario runs the same build even when
# target/release is rebuilt meanwhile. Without GS_PEERS_BIN the repo's binary is used. These
# names deliberately do not start with GEOSTREAM_: the server reads every GEOSTREAM_* variable
# as configuration and refuses unknown keys.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PORT="${1:?usage: start.sh PORT}"
if [ -n "${GS_PEERS_BIN:-}" ]; then
  BIN="$GS_PEERS_BIN"
else
  BIN="${GS_PEERS_REPO:?GS_PEERS_REPO (the geostream repository) is not set; run bench/peers/run.sh}/target/release/geostream"
fi
[ -x "$BIN" ] || { echo "geostream binary missing at $BIN (build it: cargo build --release -p geostream-server --bin geostream)" >&2; exit 3; }
# Quiet logs (stderr goes to the run's $OUT/<peer>.server.log); warnings and errors stay.
export RUST_LOG="${GS_PEERS_RUST_LOG:-warn}"
# A fresh, empty data directory per start, so every scenario measures a server without
# state left over from the previous one (the harness deletes this copy of servers/ at the end).
DATA="$(mktemp -d "$HERE/data.XXXXXX")"
exec "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$DATA"
