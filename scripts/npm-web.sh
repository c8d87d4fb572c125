#!/usr/bin/env bash
# Installs the pinned npm packages of the TypeScript client (clients/js) and the demo page
# (web/) when their lock files changed, and builds the page into web/dist, which the geostream
# binary embeds when it is compiled next. Used by scripts/serve.sh and scripts/test.sh; needs
# Node.js 20+ and npm (installed with apt when absent).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v npm >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "installing Node.js and npm with apt (needed to build the demo page)"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "error: npm is needed to build the demo page (install Node.js 20 or later)" >&2
  exit 1
fi
for dir in clients/js web; do
  # npm ci only when node_modules is missing or older than the lock file (it starts from scratch).
  if [ ! -f "$dir/node_modules/.package-lock.json" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
done
(cd web && npm run --silent build)
