#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 30), one after another.
# Needs the nightly toolchain (libFuzzer's sanitizer flags); installs cargo-fuzz if missing.
# Usage: fuzz/run.sh [SECONDS]      e.g. fuzz/run.sh 300 for a longer session
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz: the nightly toolchain is not installed; skipping (rustup toolchain install nightly)"
    exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
cargo +nightly fuzz build
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in $(cargo +nightly fuzz list); do
    # -timeout: one input taking over 10 s is a hang, reported as a failure.
    if ! cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -timeout=10 >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz: $target failed; the input is under fuzz/artifacts/$target/"
        exit 1
    fi
    echo "fuzz: $target: $(grep -E '^Done [0-9]+ runs' "$log")"
done
