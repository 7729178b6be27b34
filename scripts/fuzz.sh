#!/usr/bin/env bash
# A longer mutation-fuzzing campaign over every input format qforge reads (tests/it/fuzz/:
# safetensors header and layout, config.json, recipe YAML, shard index, tokenizer and chat
# template files). Stable Rust, proptest; no nightly or cargo-fuzz needed.
#
#   scripts/fuzz.sh [CASES]      # CASES per fuzz test (default 2000; CI runs the small default)
#
# Slow targets (tokenizer.json parses, model loads) run CASES divided by their cost.
# A failure prints the minimal failing input proptest shrank it to; add it as a fixed test.
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${1:-2000}"
case "$cases" in
    '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [CASES]  (CASES: a positive number)" >&2; exit 2 ;;
esac
export QFORGE_FUZZ_CASES="$cases"
export QFORGE_SHARED="${QFORGE_SHARED:-$(cd .. && pwd)/shared}"
start=$(date +%s)
cargo test --release --test it -- fuzz:: --test-threads="${FUZZ_THREADS:-2}"
echo "fuzz.sh: ${cases} cases per fuzz test, all passed in $(( $(date +%s) - start ))s"
