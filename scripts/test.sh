#!/usr/bin/env bash
# Runs every check and test of the repository: the one test command of README.md, and what
# CI runs (.ci/run). Installs what the tests need on a fresh machine.
#
#   scripts/test.sh            everything
#
# Dev-profile builds only (release is for benchmarks), one cargo build shared by all test
# binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
START=$(date +%s)
step() { echo; echo "==> [$(( $(date +%s) - START ))s] $*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "services: PostgreSQL with PostGIS, NATS with JetStream (the cluster suites need them)"
# Never skipped: if a service cannot be brought up, this fails here, saying which one.
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port, name
  for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 0.5; done
  echo "error: $2 is not reachable on 127.0.0.1:$1" >&2; return 1
}
PG_VERSION="$(ls /etc/postgresql 2>/dev/null | sort -n | tail -1)"
if [ -z "$PG_VERSION" ]; then
  echo "error: PostgreSQL is not installed (no /etc/postgresql); see the machine notes" >&2; exit 1
fi
if [ ! -f "/usr/share/postgresql/$PG_VERSION/extension/postgis.control" ]; then
  echo "installing PostGIS for PostgreSQL $PG_VERSION"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "postgresql-$PG_VERSION-postgis-3"
fi
if ! port_open 5432; then
  echo "starting PostgreSQL $PG_VERSION"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main start
fi
wait_port 5432 PostgreSQL
if ! port_open 4222; then
  echo "starting NATS (JetStream on)"
  $SUDO start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
fi
wait_port 4222 NATS

step "Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  echo "cargo-nextest not found; using cargo test"
  cargo test --workspace --locked --no-fail-fast
fi

step "Rust doc tests"
cargo test --workspace --locked --doc

step "TypeScript client and demo page: npm ci, build, type checks"
scripts/npm-web.sh
(cd clients/js && npx tsc -p tsconfig.json --noEmit)
(cd web && npx tsc -p tsconfig.json --noEmit)

step "TypeScript client: unit tests and integration tests against geostream serve"
cargo build --locked -p geostream-server --bin geostream
export GS_TEST_SERVER_BIN="$PWD/target/debug/geostream"
(cd clients/js && npm test)

step "demo page in headless Chromium (playwright-core, Debian's chromium)"
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing Debian's chromium"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
fi
(cd web && CHROMIUM="$(command -v chromium)" npm test)

step "all tests passed in $(( $(date +%s) - START ))s"
