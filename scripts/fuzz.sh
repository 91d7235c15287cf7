#!/usr/bin/env bash
# Fuzzes the flag JSON loader and evaluator (finsight-flags/fuzz) with
# cargo-fuzz/libFuzzer on the stable toolchain (`--sanitizer none`: no
# AddressSanitizer, which needs nightly; the target itself asserts the
# loader's results against serde's, and any panic is a finding).
#
#   scripts/fuzz.sh                 # a bounded, deterministic run (seed 1, FUZZ_RUNS inputs)
#   FUZZ_RUNS=-1 FUZZ_SECONDS=600 scripts/fuzz.sh   # fuzz for ten minutes
#
# Installs cargo-fuzz if missing. New inputs go to finsight-flags/fuzz/corpus
# (not committed); a crash is written to finsight-flags/fuzz/artifacts and
# fails the run. Commit a crashing input into fuzz/seeds/flag_json once
# fixed: the loader tests replay every seed (tests/load_equivalence.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${FUZZ_RUNS:-200000}"
SECONDS_MAX="${FUZZ_SECONDS:-0}"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi

mkdir -p finsight-flags/fuzz/corpus/flag_json
cd finsight-flags
# Own target dir: coverage-instrumented builds never mix with the workspace's.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-../target}/fuzz}"
cargo fuzz run --sanitizer none flag_json \
    fuzz/corpus/flag_json fuzz/seeds/flag_json -- \
    -seed=1 -runs="$RUNS" -max_total_time="$SECONDS_MAX" -max_len=8192 \
    -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
