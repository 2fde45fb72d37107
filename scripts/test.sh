#!/usr/bin/env bash
# The test command (README, second line; `.ci/run` calls exactly this).
#
#   1. buf lint of the contract proto (when npm is present; pinned buf version);
#   2. rustfmt and clippy (warnings are errors);
#   3. the throwaway PostgreSQL/Redis helpers start, answer and stop;
#   4. every crate's tests against real services: the simulator over real HTTP, and (from the
#      coordinator issue on) the coordinator over real gRPC with PostgreSQL and Redis found or
#      started here (DATABASE_URL_BASE, REDIS_URL are exported to the tests).
#
# Extra arguments go to `cargo test` (e.g. scripts/test.sh -p gateway-client).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh
. scripts/lib/services.sh

command -v cargo >/dev/null || die "cargo not found: install Rust from https://rustup.rs"
start=$SECONDS

BUF_VERSION=1.75.0
if command -v npx >/dev/null; then
  say "buf lint (buf $BUF_VERSION)"
  npx --yes "@bufbuild/buf@$BUF_VERSION" lint 2> >(grep -v 'Unknown user config' >&2) ||
    die "buf lint found problems in proto/"
else
  warn "npm not found: skipping buf lint (apt-get install -y npm to run it)"
fi

if cargo fmt --version >/dev/null 2>&1; then
  say "cargo fmt --check"
  cargo fmt --all -- --check || die "formatting differs: run cargo fmt --all"
else
  warn "rustfmt not installed: skipping the format check (rustup component add rustfmt)"
fi
if cargo clippy --version >/dev/null 2>&1; then
  say "cargo clippy"
  cargo clippy --workspace --all-targets --quiet -- -D warnings
else
  warn "clippy not installed: skipping lints (rustup component add clippy)"
fi

say "throwaway service helpers"
scripts/check-services.sh

ensure_postgres
ensure_redis

say "cargo test"
# tests/tests/crash.rs runs the real coordinator binary (kill -9, SIGSTOP), tests/tests/payctl.rs
# the real payctl binary, tests/tests/checker.rs and secrets.rs the real booking-sim binary:
# build them first (also when only some tests are asked for).
cargo build --quiet -p coordinator -p payctl -p booking-sim --bins
cargo test --workspace "$@"

say "all tests passed in $((SECONDS - start)) s"
