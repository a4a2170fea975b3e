#!/usr/bin/env bash
# The sanitiser run: rebuilds the emulated kernels with AddressSanitizer and runs the kernel
# tests on the emulated GPU, so an out-of-bounds global or shared access aborts with a report
# naming the kernel and the line, as compute-sanitizer's memcheck would on a GPU.
#
#   scripts/emu-sanitize.sh                 # the kernel tests: tests/{emu,kernels,layers,optim,select,contrastive,bank,mining,method,verify}.rs
#   scripts/emu-sanitize.sh --test kernels  # any cargo test arguments
#
# It builds in target/asan (the normal build is left alone; the first run compiles the
# dependencies once more). The ASan runtime is preloaded into the test binaries only: it must be
# the first library loaded, and rustc and cargo themselves must not run under it.
set -euo pipefail
cd "$(dirname "$0")/.."
asan=$(${CXX:-g++} -print-file-name=libasan.so)
[ -f "$asan" ] || { echo "error: $asan not found; install the compiler's AddressSanitizer runtime (Debian: libasan8)" >&2; exit 1; }
export INSCLR_EMU_SANITIZE=address
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/asan}
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="env LD_PRELOAD=$asan ASAN_OPTIONS=detect_leaks=0:abort_on_error=0"
[ $# -gt 0 ] || set -- --test emu --test kernels --test layers --test optim --test select --test contrastive --test bank --test mining --test method --test verify
exec cargo test --locked "$@"
