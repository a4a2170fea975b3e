#!/usr/bin/env bash
# Mutation-fuzzes every file reader (tests/fuzz_readers.rs) with a million inputs each, in release; args go to the test binary, INSCLR_FUZZ_SEED picks another input stream.
set -euo pipefail
cd "$(dirname "$0")/.."
INSCLR_FUZZ_ITERS="${INSCLR_FUZZ_ITERS:-1000000}" exec cargo test --release --test fuzz_readers -- --nocapture "$@"
