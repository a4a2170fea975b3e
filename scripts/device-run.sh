#!/usr/bin/env bash
# Runs on the GPU machine (copied to .device/run.sh by scripts/device-check.sh): every test binary
# with INSCLR_REQUIRE_GPU=1 (a skipped GPU test is a failure here), then the GPU benchmarks.
# Writes tests.log, bench.log, bench.md and summary.md under $OUT (or ./device-out).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$PWD/device-out}
mkdir -p "$out"
# shellcheck disable=SC1091
source <(sed 's/^/export /' "$here/BUILD")
# The binaries travel compressed (scripts/device-check.sh).
for f in "$here"/bin/*.gz; do
  [ -e "$f" ] || continue
  gunzip -f "$f" && chmod +x "${f%.gz}"
done

# Tests that locate repository files through the build machine's path find them through a link.
if [ ! -e "$build_root" ]; then
  mkdir -p "$(dirname "$build_root")" && ln -s "$(cd "$here/.." && pwd)" "$build_root" 2>/dev/null || true
fi
mkdir -p "$build_root/target/release" && ln -sf "$here/bin/insclr-cu" "$build_root/target/release/insclr-cu"

# cuBLAS may live only in the CUDA toolkit or in PyTorch's wheels: find it before anything runs.
dirs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda-*/lib64 /usr/lib/x86_64-linux-gnu \
         $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null | tr ' ' '\n' | sed 's#$#/nvidia/*/lib#'); do
  for lib in $d/libcublas.so*; do
    [ -e "$lib" ] && dirs="$dirs:$(dirname "$lib")"
  done
done
if [ -z "$dirs" ]; then
  found=$(find / -xdev -name 'libcublas.so*' 2>/dev/null | head -n 1)
  [ -n "$found" ] && dirs=":$(dirname "$found")"
fi
dirs=$(echo "$dirs" | tr ':' '\n' | awk 'NF && !seen[$0]++' | paste -sd:)
export LD_LIBRARY_PATH="$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "cuBLAS directories: ${dirs:-none found}"

{
  echo "# insclr-cu device check"
  echo
  echo "- commit: $commit (built $built, sm_$archs)"
  echo "- run: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'nvidia-smi unavailable')"
  echo "- cuBLAS from: ${dirs:-not found}"
  echo
} > "$out/summary.md"

export INSCLR_REQUIRE_GPU=1
failed=0
echo "## Tests (INSCLR_REQUIRE_GPU=1)" >> "$out/summary.md"
echo >> "$out/summary.md"
for t in "$here"/bin/test-*; do
  name=$(basename "$t")
  echo "=== $name" | tee -a "$out/tests.log"
  if "$t" --test-threads=4 >> "$out/tests.log" 2>&1; then status=pass; else status=FAIL; failed=1; fi
  line=$(grep -E '^test result:' "$out/tests.log" | tail -n 1)
  echo "- $name: $status ($line)" | tee -a "$out/summary.md"
done
grep -E '^test .* FAILED$|panicked' "$out/tests.log" | head -n 40 | sed 's/^/    /' >> "$out/summary.md"
# Kernel tests log where they ran ("RAN <test> on cuda (...)"); none may have fallen back to emu.
echo "- kernel tests run on the GPU: $(grep -c '^RAN .* on cuda' "$out/tests.log"), on the emulator: $(grep -c '^RAN .* on emu' "$out/tests.log")" >> "$out/summary.md"

echo >> "$out/summary.md"
echo "## Benchmarks (median per call; floor = bytes / peak bandwidth or flops / peak FP32)" >> "$out/summary.md"
echo >> "$out/summary.md"
export INSCLR_BENCH_TABLE="$out/bench.md"
for b in "$here"/bin/bench-*; do
  echo "=== $(basename "$b")" | tee -a "$out/bench.log"
  "$b" --bench cuda >> "$out/bench.log" 2>&1 || { echo "- $(basename "$b"): FAILED" >> "$out/summary.md"; failed=1; }
done
if [ -f "$out/bench.md" ]; then
  cat "$out/bench.md" >> "$out/summary.md"
else
  echo "No GPU benchmark ran (see bench.log): $(grep -m1 SKIPPED "$out/bench.log" || echo 'no table written')" >> "$out/summary.md"
fi
# PyTorch on the same GPU (cuDNN per conv shape, the original's training step), when it is there.
echo >> "$out/summary.md"
echo "## PyTorch on the same GPU (scripts/torch-baseline.py)" >> "$out/summary.md"
echo >> "$out/summary.md"
timeout 300 python3 "$here/../scripts/torch-baseline.py" >> "$out/summary.md" 2>> "$out/bench.log" \
  || echo "- torch-baseline.py failed or timed out (see bench.log)" >> "$out/summary.md"
cat "$out/summary.md"
exit $failed
