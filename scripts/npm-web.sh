#!/usr/bin/env bash
# Installs the pinned npm packages of the TypeScript client (clients/js) and the demo page
# (web/) when their lock files changed, and builds the page into web/dist. Used by
# scripts/serve.sh and scripts/test.sh; needs Node.js 20+ and npm.
set -euo pipefail
cd "$(dirname "$0")/.."
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
