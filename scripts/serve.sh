#!/usr/bin/env bash
# Runs geostream on the embedded defaults (in-process broker, data in ./data), listening on
# http://127.0.0.1:8080. Arguments are passed on to `geostream serve`.
#
# Builds in release mode the first time (a few minutes on 2 cores); later runs start at once.
# Builds the demo page first (npm ci the first time, then an esbuild bundle in seconds): the
# binary embeds web/dist, so target/release/geostream then serves the page from anywhere.
# While working on the page, `--config` a file with `[web] dir = "web/dist"` serves it from
# disk instead (rebuild with `cd web && npm run build`, no cargo build needed).
set -euo pipefail
cd "$(dirname "$0")/.."
# The demo page served at / (TypeScript and MapLibre, bundled from npm packages).
scripts/npm-web.sh
cargo build --release --locked -p geostream-server --bin geostream
exec target/release/geostream serve "$@"
