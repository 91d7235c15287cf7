#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script).
#  1. make sure Redis and RabbitMQ are installed and running
#  2. formatting, clippy with every feature, warnings denied
#  3. every test with every feature: unit, integration against the real
#     services, examples; then the `outage_*` tests (which stop and restart
#     the services) one at a time; then the doc tests
#  4. the docs, warnings denied
#  5. a bounded, deterministic fuzz run of the flag JSON loader (scripts/fuzz.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

step() { printf '\n== %s\n' "$*"; }

step "services"
scripts/services.sh

step "cargo fmt --all --check"
cargo fmt --all --check
cargo fmt --manifest-path finsight-flags/fuzz/Cargo.toml --check

step "cargo clippy --workspace --all-targets --all-features -- -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

# Tests named `outage_*` stop Redis or RabbitMQ; they run after the others,
# one at a time, so that no other test sees the outage.
if cargo nextest --version >/dev/null 2>&1; then
  step "cargo nextest run (all but outage tests)"
  cargo nextest run --workspace --all-features --no-tests=pass \
    -E 'not test(/(^|::)outage_/)'
  step "cargo nextest run (outage tests, one at a time)"
  cargo nextest run --workspace --all-features --no-tests=pass \
    --test-threads 1 -E 'test(/(^|::)outage_/)'
else
  step "cargo test (all but outage tests)"
  cargo test --workspace --all-features --lib --bins --tests --examples -- --skip outage_
  step "cargo test (outage tests, one at a time)"
  cargo test --workspace --all-features --lib --bins --tests --examples -- outage_ --test-threads 1
fi

step "cargo test --doc"
cargo test --workspace --all-features --doc

step "cargo doc --workspace --no-deps --all-features (RUSTDOCFLAGS=-D warnings)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features

export FUZZ_RUNS="${FUZZ_RUNS:-300000}"
step "fuzz the flag JSON loader (seed 1, $FUZZ_RUNS inputs)"
fuzz_log=$(mktemp)
if ! scripts/fuzz.sh >"$fuzz_log" 2>&1; then
  tail -n 80 "$fuzz_log"
  echo "fuzzing found a failing input: see finsight-flags/fuzz/artifacts/flag_json" >&2
  exit 1
fi
grep -E '^(Done|stat::)' "$fuzz_log"
rm -f "$fuzz_log"

step "all checks passed"
