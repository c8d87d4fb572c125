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

step "Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  echo "cargo-nextest not found; using cargo test"
  cargo test --workspace --locked --no-fail-fast
fi

step "Rust doc tests"
cargo test --workspace --locked --doc

step "all tests passed in $(( $(date +%s) - START ))s"
