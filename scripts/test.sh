#!/usr/bin/env bash
# The test command (README, second line; `.ci/run` calls exactly this).
#
#   1. buf lint of the contract proto (when npm is present; pinned buf version);
#   2. rustfmt and clippy (warnings are errors);
#   3. the throwaway PostgreSQL/Redis helpers start, answer and stop;
#   4. every crate's tests against real services: the simulator over real HTTP, and (from the
#      coordinator issue on) the coordinator over real gRPC with PostgreSQL and Redis found or
#      started here (DATABASE_URL_BASE, REDIS_URL are exported to the tests); the web console's
#      browser tests drive headless Chromium through chromedriver (installed with apt-get when
#      run as root; otherwise they skip, saying so);
#   5. bounded runs of the fuzz targets, when nightly Rust and cargo-fuzz are installed.
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
ensure_chromium

say "cargo test"
# tests/tests/crash.rs runs the real coordinator binary (kill -9, SIGSTOP), tests/tests/payctl.rs
# the real payctl binary, tests/tests/checker.rs and secrets.rs the real booking-sim binary,
# tests/tests/console_http.rs and console_browser.rs the real console binary:
# build them first (also when only some tests are asked for).
cargo build --quiet -p coordinator -p payctl -p booking-sim -p console --bins
cargo test --workspace "$@"

# Bounded runs of the three cargo-fuzz targets (fuzz/README.md), when nightly Rust and cargo-fuzz
# are installed. New inputs go to a temporary directory listed first (libFuzzer writes to the
# first corpus directory only), so the committed corpus is read, never grown, here. FUZZ_SECONDS
# per target (0: skip); skipped when only some tests were asked for.
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
if [ "$#" -gt 0 ] || [ "$FUZZ_SECONDS" = 0 ]; then
  warn "fuzz runs skipped (only some tests asked for, or FUZZ_SECONDS=0)"
elif cargo +nightly fuzz --version >/dev/null 2>&1; then
  say "cargo +nightly fuzz: each target for ${FUZZ_SECONDS} s on a copy of its corpus"
  fuzz_start=$SECONDS
  fuzz_tmp=$(mktemp -d)
  on_exit "rm -rf '$fuzz_tmp'"
  # The first build (release, AddressSanitizer, into fuzz/target) takes many minutes; later ones
  # only recompile what changed.
  (cd fuzz && cargo +nightly fuzz build) || die "the fuzz targets do not build (cd fuzz && cargo +nightly fuzz build)"
  echo "  fuzz targets built in $((SECONDS - fuzz_start)) s"
  for target in request_validation gateway_response journal_record; do
    mkdir -p "$fuzz_tmp/$target"
    if (cd fuzz && cargo +nightly fuzz run "$target" "$fuzz_tmp/$target" "corpus/$target" -- \
        -max_total_time="$FUZZ_SECONDS" -print_final_stats=1) >"$fuzz_tmp/$target.log" 2>&1; then
      runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$fuzz_tmp/$target.log" | tail -n 1)
      echo "  $target: ${runs:-?} inputs, no failure"
    else
      tail -n 60 "$fuzz_tmp/$target.log" >&2
      die "fuzz target $target failed: the input is in fuzz/artifacts/$target/ (fuzz/README.md: reproduce, shrink, commit it)"
    fi
  done
  echo "  fuzz step took $((SECONDS - fuzz_start)) s"
else
  warn "cargo-fuzz or nightly Rust missing: the fuzz runs are skipped (the corpus replays and property tests above ran). To enable them: rustup toolchain install nightly && cargo install cargo-fuzz --locked"
fi

say "all tests passed in $((SECONDS - start)) s"
