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

# Each phase has a time limit (seconds; the device lease is short): a phase that runs out is
# reported as such and the next one still runs.
tests_s=${INSCLR_DEVICE_TESTS_S:-300}
bench_s=${INSCLR_DEVICE_BENCH_S:-240}
step_s=${INSCLR_DEVICE_STEP_S:-150}
torch_s=${INSCLR_DEVICE_TORCH_S:-200}

export INSCLR_REQUIRE_GPU=1
failed=0
echo "## Tests (INSCLR_REQUIRE_GPU=1)" >> "$out/summary.md"
echo >> "$out/summary.md"
# The test binaries run four at a time (they share the GPU; each has its own context), each
# into its own log, joined into tests.log afterwards.
logs="$out/test-logs"
mkdir -p "$logs"
# test-scripts runs scripts/demo.sh, which builds with cargo: the GPU machine has no Rust.
ls "$here"/bin/test-* | grep -v '/test-scripts$' | timeout "$tests_s" xargs -P 4 -I{} sh -c \
  'n=$(basename "$1"); "$1" --test-threads=4 > "$2/$n.log" 2>&1; echo $? > "$2/$n.rc"' _ {} "$logs"
[ $? -eq 124 ] && echo "- the tests ran out of their ${tests_s} s" | tee -a "$out/summary.md" && failed=1
echo "- test-scripts: not run here (it needs cargo; CI runs it)" >> "$out/summary.md"
for t in "$here"/bin/test-*; do
  name=$(basename "$t")
  [ "$name" = test-scripts ] && continue
  { echo "=== $name"; cat "$logs/$name.log" 2>/dev/null; } >> "$out/tests.log"
  rc=$(cat "$logs/$name.rc" 2>/dev/null || echo "none (did not finish)")
  if [ "$rc" = 0 ]; then status=pass; else status="FAIL (exit $rc)"; failed=1; fi
  line=$(grep -E '^test result:' "$logs/$name.log" 2>/dev/null | tail -n 1)
  echo "- $name: $status ($line)" | tee -a "$out/summary.md"
done
rm -rf "$logs"
grep -E '^test .* FAILED$|panicked' "$out/tests.log" | head -n 40 | sed 's/^/    /' >> "$out/summary.md"
# Kernel tests log where they ran ("RAN <test> on cuda (...)"); none may have fallen back to emu.
echo "- kernel tests run on the GPU: $(grep -c '^RAN .* on cuda' "$out/tests.log"), on the emulator: $(grep -c '^RAN .* on emu' "$out/tests.log")" >> "$out/summary.md"

echo >> "$out/summary.md"
echo "## Benchmarks (median per call; floor = bytes / peak bandwidth or flops / peak FP32)" >> "$out/summary.md"
echo >> "$out/summary.md"
# criterion's --quick: each benchmark doubles its iterations until two runs agree within 5%,
# at most the group's measurement time (benches/kernels.rs calls each kernel once first).
# Each benchmark writes its table as it goes (bench-<name>.md), so one stopped at its limit
# still reports what it measured.
for b in "$here"/bin/bench-*; do
  name=$(basename "$b")
  # bench-cpu has no GPU group (its peers' table comes from scripts/cpu-peers.py on a CPU).
  # INSCLR_DEVICE_KERNELS_FILTER narrows bench-kernels to some families (say "conv/cuda").
  filter=cuda
  case "$name" in
    bench-cpu) continue ;;
    bench-train_step) limit=$step_s ;;
    *) limit=$bench_s filter=${INSCLR_DEVICE_KERNELS_FILTER:-cuda} ;;
  esac
  echo "=== $name" | tee -a "$out/bench.log"
  INSCLR_BENCH_GPU_ONLY=1 INSCLR_BENCH_TABLE="$out/$name.md" timeout "$limit" "$b" --bench --quick "$filter" >> "$out/bench.log" 2>&1
  rc=$?
  if [ $rc -eq 124 ]; then
    echo "- $name: ran out of its ${limit} s (the table holds what it measured)" >> "$out/summary.md"; failed=1
  elif [ $rc -ne 0 ]; then
    echo "- $name: FAILED (exit $rc)" >> "$out/summary.md"; failed=1
  fi
done
if ls "$out"/bench-*.md > /dev/null 2>&1; then
  cat "$out"/bench-*.md > "$out/bench.md" && rm "$out"/bench-*.md
  cat "$out/bench.md" >> "$out/summary.md"
else
  echo "No GPU benchmark ran (see bench.log): $(grep -m1 SKIPPED "$out/bench.log" || echo 'no table written')" >> "$out/summary.md"
fi
# PyTorch on the same GPU (cuDNN per conv shape, the original's training step), when it is there.
echo >> "$out/summary.md"
echo "## PyTorch on the same GPU (scripts/torch-baseline.py)" >> "$out/summary.md"
echo >> "$out/summary.md"
if [ "$torch_s" -gt 0 ]; then
  timeout "$torch_s" python3 "$here/../scripts/torch-baseline.py" >> "$out/summary.md" 2>> "$out/bench.log" \
    || echo "- torch-baseline.py failed or timed out (see bench.log)" >> "$out/summary.md"
else
  echo "- not run this time (INSCLR_DEVICE_TORCH_S=0)" >> "$out/summary.md"
fi

# compute-sanitizer's memcheck over the kernel tests (the GPU's counterpart of
# scripts/emu-sanitize.sh), when INSCLR_DEVICE_SANITIZE_S gives it time.
sanitize_s=${INSCLR_DEVICE_SANITIZE_S:-0}
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
if [ "$sanitize_s" -gt 0 ] && [ -n "$sanitizer" ]; then
  echo >> "$out/summary.md"
  echo "## compute-sanitizer memcheck (kernel tests)" >> "$out/summary.md"
  echo >> "$out/summary.md"
  start=$(date +%s)
  for name in layers kernels select contrastive bank mining method optim; do
    left=$((sanitize_s - ($(date +%s) - start)))
    [ "$left" -gt 5 ] || { echo "- test-$name: no time left" >> "$out/summary.md"; continue; }
    echo "=== test-$name" >> "$out/sanitize.log"
    timeout "$left" "$sanitizer" --tool memcheck --error-exitcode 99 "$here/bin/test-$name" --test-threads=1 \
      >> "$out/sanitize.log" 2>&1
    rc=$?
    case $rc in 0) st=clean ;; 99) st="MEMCHECK ERRORS"; failed=1 ;; 124) st="ran out of time" ;; *) st="exit $rc"; failed=1 ;; esac
    echo "- test-$name: $st ($(grep -E 'ERROR SUMMARY' "$out/sanitize.log" | tail -n 1))" >> "$out/summary.md"
  done
fi
cat "$out/summary.md"
exit $failed
