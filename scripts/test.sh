#!/usr/bin/env bash
# Runs every check and test of the repository: the one test command of README.md, and what
# CI runs (.ci/run). On a fresh Debian machine with Rust it installs and starts what the
# tests need, saying what it installed: PostgreSQL 15 with PostGIS and NATS with JetStream
# (apt, started on 127.0.0.1:5432 and :4222 when not running), Node.js and npm (apt, when
# absent), the npm packages of clients/js and web/ (npm ci), and Chromium for the demo
# page's browser test (apt). Nothing is skipped: a missing piece fails the run, saying which.
# At the end it prints how many tests ran.
#
#   scripts/test.sh            everything
#
# Dev-profile builds only (release is for benchmarks), one cargo build shared by all test
# binaries. The demo page is built first: the geostream binary embeds web/dist.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
START=$(date +%s)
step() { echo; echo "==> [$(( $(date +%s) - START ))s] $*"; }
LOGS="$(mktemp -d "${TMPDIR:-/tmp}/geostream-test.XXXXXX")"
INSTALLED=()

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
APT_UPDATED=0
apt_install() { # packages...
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: need $* and there is no apt-get to install them with; install them and run again" >&2
    exit 1
  fi
  if [ "$APT_UPDATED" = 0 ]; then $SUDO apt-get update -qq; APT_UPDATED=1; fi
  echo "installing with apt: $*"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
  INSTALLED+=("$@")
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port, name
  for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 0.5; done
  echo "error: $2 is not reachable on 127.0.0.1:$1" >&2; return 1
}

step "services: PostgreSQL with PostGIS, NATS with JetStream (the cluster suites need them)"
PG_VERSION="$(ls /etc/postgresql 2>/dev/null | sort -n | tail -1)"
if [ -z "$PG_VERSION" ]; then
  PG_VERSION=15
  apt_install "postgresql-$PG_VERSION" "postgresql-$PG_VERSION-postgis-3" postgresql-client
  # A cluster made here: let local TCP connections in as in the tests' URLs
  # (postgres://postgres@127.0.0.1:5432/postgres), which an existing setup is left to grant.
  HBA="/etc/postgresql/$PG_VERSION/main/pg_hba.conf"
  if [ -f "$HBA" ] && ! grep -q '^host all all 127.0.0.1/32 trust' "$HBA"; then
    echo "host all all 127.0.0.1/32 trust" | $SUDO tee "$HBA.geostream" >/dev/null
    $SUDO sh -c "cat '$HBA' >> '$HBA.geostream' && mv '$HBA.geostream' '$HBA'"
  fi
fi
if [ ! -f "/usr/share/postgresql/$PG_VERSION/extension/postgis.control" ]; then
  apt_install "postgresql-$PG_VERSION-postgis-3"
fi
if ! port_open 5432; then
  echo "starting PostgreSQL $PG_VERSION"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main start
fi
wait_port 5432 PostgreSQL
NATS_BIN="$(command -v nats-server || true)"
if [ -z "$NATS_BIN" ] && [ -x /usr/sbin/nats-server ]; then NATS_BIN=/usr/sbin/nats-server; fi
if [ -z "$NATS_BIN" ]; then
  apt_install nats-server
  NATS_BIN="$(command -v nats-server || echo /usr/bin/nats-server)"
fi
if ! port_open 4222; then
  echo "starting NATS (JetStream on) from $NATS_BIN"
  $SUDO mkdir -p /var/lib/nats-server
  $SUDO start-stop-daemon --start --oknodo --background --exec "$NATS_BIN" -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
fi
wait_port 4222 NATS

step "Node.js and the npm packages; the demo page, built into web/dist before geostream embeds it"
if ! command -v npm >/dev/null 2>&1; then
  apt_install nodejs npm
fi
NODE_MAJOR="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$NODE_MAJOR" -lt 20 ]; then
  echo "error: Node.js $NODE_MAJOR is too old for the demo page and the TypeScript client (20 or later)" >&2
  exit 1
fi
scripts/npm-web.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast 2>&1 | tee "$LOGS/rust.log"
  RUST_TESTS="$(grep -Eo '[0-9]+ tests? run' "$LOGS/rust.log" | tail -1 | grep -Eo '^[0-9]+' || echo 0)"
else
  echo "cargo-nextest not found; using cargo test"
  cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$LOGS/rust.log"
  RUST_TESTS="$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed; [0-9]+ failed' "$LOGS/rust.log" |
    awk '{ s += $4 + $6 } END { print s + 0 }')"
fi

step "Rust doc tests"
cargo test --workspace --locked --doc 2>&1 | tee "$LOGS/doc.log"
DOC_TESTS="$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed; [0-9]+ failed' "$LOGS/doc.log" |
  awk '{ s += $4 + $6 } END { print s + 0 }')"

step "TypeScript client and demo page: type checks"
(cd clients/js && npx tsc -p tsconfig.json --noEmit)
(cd web && npx tsc -p tsconfig.json --noEmit)

step "TypeScript client: unit tests and integration tests against geostream serve"
cargo build --locked -p geostream-server --bin geostream
export GS_TEST_SERVER_BIN="$PWD/target/debug/geostream"
(cd clients/js && npm test) 2>&1 | tee "$LOGS/js.log"
JS_TESTS="$(grep -Eo '^# tests [0-9]+' "$LOGS/js.log" | awk '{ s += $3 } END { print s + 0 }')"

step "demo page in headless Chromium (playwright-core, Debian's chromium)"
if ! command -v chromium >/dev/null 2>&1; then
  apt_install chromium
fi
(cd web && CHROMIUM="$(command -v chromium)" npm test) 2>&1 | tee "$LOGS/web.log"
WEB_TESTS="$(grep -Eo '^# tests [0-9]+' "$LOGS/web.log" | awk '{ s += $3 } END { print s + 0 }')"

TOTAL=$(( RUST_TESTS + DOC_TESTS + JS_TESTS + WEB_TESTS ))
if [ "${#INSTALLED[@]}" -gt 0 ]; then
  echo; echo "installed with apt for this run: ${INSTALLED[*]}"
fi
step "all tests passed in $(( $(date +%s) - START ))s: $TOTAL tests ($RUST_TESTS Rust, $DOC_TESTS Rust doc, $JS_TESTS TypeScript client, $WEB_TESTS demo page)"
rm -rf "$LOGS"
