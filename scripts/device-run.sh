#!/usr/bin/env bash
# Runs on the GPU machine (copied to .device/run.sh by scripts/device-check.sh), from the
# repository root, and writes its results under $OUT (or ./device-out):
#
#   bash .device/run.sh [full|perf] [--dry-run]
#
# full (the default): every test binary with INSCLR_REQUIRE_GPU=1 (a skipped GPU test is a
#   failure here), the whole kernel table, the training steps, PyTorch's f32 baseline.
# perf: one call of about nine minutes that calibrates the performance work: the kernel tests
#   of the touched families, the ResNet-101 448 px and ResNet-50 224 px convolutions beside
#   cuBLAS (bf16 and SGEMM, same binary) and cuDNN (bf16 channels-last, through PyTorch), the
#   training steps beside PyTorch's with a per-kernel breakdown of one step (CUDA events),
#   Nsight Compute on a fixed metric list for a few launches, the SM clock before and after.
#
# The device tool gives one call at most 600 s: every phase has a time limit (INSCLR_DEVICE_*_S),
# and the limits, the unpacking, each phase's grace to die and a margin add up to at most
# INSCLR_DEVICE_BUDGET_S (540). --dry-run (or INSCLR_DEVICE_DRY_RUN=1) walks the phases without
# running them, prints each one's limit and the total, and fails when the total is over the
# budget; tests/scripts.rs runs it for both profiles. A real run also stops each phase at the
# budget's deadline, so the call ends in time even when one phase was given more.
#
# Each phase streams its results into files under $OUT as it goes, so a phase stopped at its
# limit still reports what it measured; a missing tool (nvidia-smi, python3, PyTorch, ncu) is
# said in summary.md and the next phase runs.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

profile=full
dry=${INSCLR_DEVICE_DRY_RUN:-0}
list_tests=0
for arg in "$@"; do
  case "$arg" in
    full | perf) profile=$arg ;;
    --dry-run) dry=1 ;;
    # (for scripts/device-check.sh: the test binaries the profile runs)
    --tests) list_tests=1 ;;
    -h | --help)
      sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "usage: bash .device/run.sh [full|perf] [--dry-run]" >&2
      exit 2
      ;;
  esac
done
budget=${INSCLR_DEVICE_BUDGET_S:-540}
# A phase that runs out gets SIGTERM, then SIGKILL this many seconds later.
grace=5
# Unaccounted time: starting the shell, nvidia-smi, cat; what a phase's limit does not cover.
margin=15

# The phases of each profile: name, default limit (s), the variable that overrides it.
case "$profile" in
  full)
    phases=(
      "unpack 20 INSCLR_DEVICE_UNPACK_S"
      "clocks 5 -"
      "tests 120 INSCLR_DEVICE_TESTS_S"
      "bench 180 INSCLR_DEVICE_BENCH_S"
      "step 80 INSCLR_DEVICE_STEP_S"
      "torch 70 INSCLR_DEVICE_TORCH_S"
      "sanitize 0 INSCLR_DEVICE_SANITIZE_S"
      "ncu 0 INSCLR_DEVICE_NCU_S"
      "clocks 5 -"
      "summary 5 -"
    )
    ;;
  perf)
    phases=(
      "unpack 20 INSCLR_DEVICE_UNPACK_S"
      "clocks 5 -"
      "tests 40 INSCLR_DEVICE_TESTS_S"
      "bench 130 INSCLR_DEVICE_BENCH_S"
      "torch 110 INSCLR_DEVICE_TORCH_S"
      "step 80 INSCLR_DEVICE_STEP_S"
      "ncu 75 INSCLR_DEVICE_NCU_S"
      "sanitize 0 INSCLR_DEVICE_SANITIZE_S"
      "clocks 5 -"
      "summary 5 -"
    )
    ;;
esac

# What each phase does, for the plan.
describe() {
  case "$1" in
    unpack) echo "unpack the binaries this profile runs, find cuBLAS" ;;
    clocks) echo "nvidia-smi: SM and memory clocks, temperature, power" ;;
    tests) echo "test binaries (INSCLR_REQUIRE_GPU=1): $(test_list | paste -sd' ' - | grep . || echo 'every test-* staged but test-scripts')" ;;
    bench) echo "bench-kernels, filter '$(kernels_filter)'" ;;
    step) echo "bench-train_step$([ "$profile" = perf ] && echo ', per-kernel breakdown (INSCLR_PROFILE=1)')" ;;
    torch) echo "scripts/torch-baseline.py $(torch_args)" ;;
    sanitize) echo "compute-sanitizer memcheck over the kernel tests" ;;
    ncu) echo "Nsight Compute, fixed metrics, $(ncu_selections | wc -l) selections" ;;
    summary) echo "join the tables into summary.md" ;;
  esac
}

test_list() {
  local names
  if [ -n "${INSCLR_DEVICE_TESTS:-}" ]; then
    names=$INSCLR_DEVICE_TESTS
  elif [ "$profile" = perf ]; then
    # The kernel families of the performance work (gemm in kernels, conv in layers), the
    # networks on the device, and the emulator's self-tests against the hardware.
    names="kernels layers nn_device emu"
  else
    # Every test binary but test-scripts, which runs scripts/demo.sh and needs cargo.
    names=$(ls "$here"/bin/ 2>/dev/null | sed -n 's/^test-\(.*\)/\1/p' | sed 's/\.gz$//' | grep -vx scripts)
  fi
  echo "$names" | tr ' ' '\n' | sed '/^$/d'
}

kernels_filter() {
  if [ -n "${INSCLR_DEVICE_KERNELS_FILTER:-}" ]; then
    echo "$INSCLR_DEVICE_KERNELS_FILTER"
  elif [ "$profile" = perf ]; then
    # The convolutions beside cuDNN / cuBLAS, and BatchNorm's passes against their DRAM floor.
    echo '(conv/cuda/(conv2d|sgemm_cublas|gemm_cublas_bf16)|layers/cuda/batchnorm)_'
  else
    echo cuda
  fi
}

torch_args() {
  if [ -n "${INSCLR_DEVICE_TORCH_ARGS:-}" ]; then
    echo "$INSCLR_DEVICE_TORCH_ARGS"
  elif [ "$profile" = perf ]; then
    echo "--convs bf16 --nets resnet101,resnet50"
  else
    echo "--convs f32 --nets resnet50,lite0"
  fi
}

# One benchmark filter per Nsight Compute run (a run per shape, so one that runs out loses
# only its own): our bf16 passes and cuBLAS's bf16 forward on the step's heaviest shapes, and
# our f32 forward on the heaviest.
ncu_selections() {
  if [ -n "${INSCLR_DEVICE_NCU_SELECT:-}" ]; then
    echo "$INSCLR_DEVICE_NCU_SELECT" | tr ';' '\n' | sed '/^$/d'
    return
  fi
  cat <<'SEL'
conv/cuda/(conv2d_[a-z_]+_bf16|gemm_cublas_bf16_fwd|conv2d_fwd_f32)/resnet101 64x256x28x28 -> 256 k3 s1$
conv/cuda/(conv2d_[a-z_]+_bf16|gemm_cublas_bf16_fwd)/resnet101 64x1024x28x28 -> 256 k1 s1$
conv/cuda/conv2d_[a-z_]+_bf16/resnet101 64x64x112x112 -> 64 k3 s1$
SEL
}

# The limit of a phase: its variable when set, else the profile's default.
limit_of() {
  local name=$1 default=$2 var=$3
  if [ "$var" != - ] && [ -n "${!var:-}" ]; then
    echo "${!var}"
  else
    echo "$default"
  fi
}

# The plan: each phase's limit, the grace of each timed phase, the margin, and the total.
plan_total=0
plan() {
  local total=0 timed=0 entry name default var limit
  printf '| phase | limit (s) | what |\n|---|---|---|\n'
  for entry in "${phases[@]}"; do
    read -r name default var <<< "$entry"
    limit=$(limit_of "$name" "$default" "$var")
    printf '| %s | %s | %s |\n' "$name" "$limit" "$(describe "$name")"
    total=$((total + limit))
    case "$name" in tests | bench | step | torch | sanitize | ncu) [ "$limit" -gt 0 ] && timed=$((timed + 1)) ;; esac
  done
  printf '| grace | %s | %s s for each of %s timed phases to die after SIGTERM |\n' "$((timed * grace))" "$grace" "$timed"
  printf '| margin | %s | shell, nvidia-smi, what no limit covers |\n' "$margin"
  total=$((total + timed * grace + margin))
  printf '| **total** | **%s** | profile %s, budget %s s (one device call: at most 600 s) |\n' "$total" "$profile" "$budget"
  plan_total=$total
}

if [ "$list_tests" = 1 ]; then
  test_list
  exit 0
fi

if [ "$dry" = 1 ]; then
  echo "# dry run of bash .device/run.sh $profile"
  echo
  plan
  if [ "$plan_total" -gt "$budget" ]; then
    echo
    echo "over budget: $plan_total s > $budget s; lower a limit (INSCLR_DEVICE_*_S)" >&2
    exit 1
  fi
  echo
  echo "fits: $plan_total s <= $budget s"
  exit 0
fi

start=$(date +%s)
out=${OUT:-$PWD/device-out}
mkdir -p "$out"
summary="$out/summary.md"
failed=0
if [ ! -f "$here/BUILD" ]; then
  echo "error: $here/BUILD is missing: stage with scripts/device-check.sh first" >&2
  exit 2
fi
# BUILD's lines are key=value, read as text: a value may hold a ';' (archs=90;90a).
while IFS='=' read -r key value; do
  case "$key" in
    commit | build_root | built | archs | staging_s | unpack_ms_here | profile) printf -v "staged_$key" '%s' "$value" ;;
  esac
done < "$here/BUILD"

# Seconds left before the budget's deadline, keeping `reserve` for what must still run.
left() {
  echo $((start + budget - margin - ${1:-0} - $(date +%s)))
}

# Runs a phase's command under its limit, cut to the deadline. Returns the command's status;
# 124 when it ran out of time.
timed() {
  local limit=$1
  shift
  local room
  room=$(left 15)
  if [ "$room" -lt 5 ]; then
    echo "- no time left in the call's budget" >> "$summary"
    return 124
  fi
  if [ "$room" -lt "$limit" ]; then
    echo "- (limit cut from $limit s to $room s: the call's deadline)" >> "$summary"
    limit=$room
  fi
  timeout -k "$grace" "$limit" "$@"
}

# A stamp for every table: the commit and which summary of the binary's machine code.
stamp_file=$here/sass.txt
[ -s "$stamp_file" ] || stamp_file=$here/resources.txt
stamp() {
  local what=none sum=""
  if [ -s "$stamp_file" ]; then
    what=$(basename "$stamp_file")
    sum=" sha256 $(sha256sum "$stamp_file" | cut -c1-12)"
  fi
  echo "_binary: commit ${staged_commit:-unknown}, ${what}${sum} (end of this file)_"
}

# nvidia-smi's clocks, one CSV line appended to clocks.csv, and a line for the summary.
clocks() {
  local when=$1 q="timestamp,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw"
  local line
  if ! command -v nvidia-smi > /dev/null; then
    echo "- clocks $when: nvidia-smi not found" >> "$summary"
    return
  fi
  # clocks_event_reasons (why the clock is held down) is newer than some drivers.
  line=$(timeout 5 nvidia-smi --query-gpu="$q,clocks_event_reasons.active" --format=csv,noheader 2> /dev/null) ||
    line=$(timeout 5 nvidia-smi --query-gpu="$q" --format=csv,noheader 2> /dev/null) ||
    line="nvidia-smi failed"
  [ -s "$out/clocks.csv" ] || echo "when, $q, clocks_event_reasons.active" > "$out/clocks.csv"
  echo "$when, $line" >> "$out/clocks.csv"
  echo "- clocks $when (SM, max SM, memory, temperature, power, reasons): $line" >> "$summary"
}

phase_unpack() {
  local limit=$1 name f t0
  t0=$(date +%s)
  # The binaries travel compressed (scripts/device-check.sh); only this profile's are unpacked.
  for f in "$here"/bin/*.gz; do
    [ -e "$f" ] || continue
    name=$(basename "${f%.gz}")
    case "$profile:$name" in
      full:* | perf:insclr-cu | perf:bench-kernels | perf:bench-train_step) ;;
      perf:test-*) grep -qx "${name#test-}" <<< "$(test_list)" || continue ;;
      *) continue ;;
    esac
    local room=$((t0 + limit - $(date +%s)))
    # (timeout 0 would mean no limit at all)
    if [ "$room" -lt 1 ] || ! timeout "$room" gunzip -f "$f"; then
      echo "unpacking $name failed or ran out of the phase's $limit s" >&2
      continue
    fi
    chmod +x "${f%.gz}"
  done
  # Tests that locate repository files through the build machine's path find them through a link.
  if [ -n "${staged_build_root:-}" ] && [ ! -e "$staged_build_root" ]; then
    mkdir -p "$(dirname "$staged_build_root")" && ln -s "$root" "$staged_build_root" 2> /dev/null || true
  fi
  if [ -n "${staged_build_root:-}" ] && [ -e "$here/bin/insclr-cu" ]; then
    mkdir -p "$staged_build_root/target/release" && ln -sf "$here/bin/insclr-cu" "$staged_build_root/target/release/insclr-cu"
  fi
  # cuBLAS may live only in the CUDA toolkit or in PyTorch's wheels: find it before anything runs.
  local dirs="" d lib found
  for d in /usr/local/cuda/lib64 /usr/local/cuda-*/lib64 /usr/lib/x86_64-linux-gnu \
    $(timeout 10 python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2> /dev/null | tr ' ' '\n' | sed 's#$#/nvidia/*/lib#'); do
    # libnccl too: the NCCL test (tests/ranks.rs) trains through it with a world of one.
    for lib in $d/libcublas.so* $d/libnccl.so*; do
      [ -e "$lib" ] && dirs="$dirs:$(dirname "$lib")"
    done
  done
  if [ -z "$dirs" ]; then
    found=$(timeout 10 find / -xdev -name 'libcublas.so*' 2> /dev/null | head -n 1)
    [ -n "$found" ] && dirs=":$(dirname "$found")"
  fi
  dirs=$(echo "$dirs" | tr ':' '\n' | awk 'NF && !seen[$0]++' | paste -sd:)
  export LD_LIBRARY_PATH="$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "cuBLAS directories: ${dirs:-none found}"
  local gpu
  gpu=$(timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2> /dev/null || echo 'nvidia-smi unavailable')
  {
    echo "# insclr-cu device run, profile $profile"
    echo
    echo "- commit: ${staged_commit:-unknown} (built ${staged_built:-?}, archs ${staged_archs:-?}; staged in ${staged_staging_s:-?} s)"
    if [ "${staged_profile:-full}" != full ] && [ "${staged_profile:-full}" != "$profile" ]; then
      echo "- staged for the ${staged_profile} profile only: this ${profile} run lacks the other binaries"
    fi
    echo "- run: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "- GPU: $gpu"
    echo "- cuBLAS from: ${dirs:-not found}"
    echo "- binary: $(basename "$stamp_file") at the end of this file$([ "$stamp_file" = "$here/resources.txt" ] && echo ' (ptxas resources: scripts/sass-check.py or cuobjdump was not there at staging)')"
    echo "- unpacked in $(($(date +%s) - t0)) s; phases and limits:"
    echo
    plan
    echo
  } > "$summary"
}

phase_tests() {
  local limit=$1 logs="$out/test-logs" name t rc status line list
  echo "## Tests (INSCLR_REQUIRE_GPU=1)" >> "$summary"
  echo >> "$summary"
  stamp >> "$summary"
  echo >> "$summary"
  mkdir -p "$logs"
  list=$(test_list)
  # Four binaries at a time (they share the GPU; each has its own context), each into its own
  # log, joined into tests.log afterwards.
  export INSCLR_REQUIRE_GPU=1
  echo "$list" | sed "s#^#$here/bin/test-#" | timed "$limit" xargs -P 4 -I{} sh -c \
    'n=$(basename "$1"); if [ -x "$1" ]; then "$1" --test-threads=4 > "$2/$n.log" 2>&1; echo $? > "$2/$n.rc"; else echo "missing binary $1" > "$2/$n.log"; fi' _ {} "$logs"
  [ $? -eq 124 ] && echo "- the tests ran out of their time" | tee -a "$summary" && failed=1
  [ "$profile" = full ] && echo "- test-scripts: not run here (it needs cargo; CI runs it)" >> "$summary"
  for name in $list; do
    t=test-$name
    { echo "=== $t"; cat "$logs/$t.log" 2> /dev/null; } >> "$out/tests.log"
    rc=$(cat "$logs/$t.rc" 2> /dev/null || echo "none (did not finish)")
    if [ "$rc" = 0 ]; then status=pass; else status="FAIL (exit $rc)" failed=1; fi
    line=$(grep -E '^test result:' "$logs/$t.log" 2> /dev/null | tail -n 1)
    echo "- $t: $status ($line)" | tee -a "$summary"
  done
  rm -rf "$logs"
  grep -E '^test .* FAILED$|panicked' "$out/tests.log" 2> /dev/null | head -n 40 | sed 's/^/    /' >> "$summary"
  # Kernel tests log where they ran ("RAN <test> on cuda (...)"); none may have fallen back to emu.
  echo "- kernel tests run on the GPU: $(grep -c '^RAN .* on cuda' "$out/tests.log" 2> /dev/null), on the emulator: $(grep -c '^RAN .* on emu' "$out/tests.log" 2> /dev/null)" >> "$summary"
  echo >> "$summary"
}

# Runs benchmark binary $1 with filter $2 under limit $3 (extra environment in $4...), its
# table into bench-<name>.md.
run_bench() {
  local name=$1 filter=$2 limit=$3 rc
  shift 3
  echo "=== $name ($filter)" | tee -a "$out/bench.log"
  if [ ! -x "$here/bin/$name" ]; then
    echo "- $name: not staged" >> "$summary"
    return
  fi
  timed "$limit" env INSCLR_BENCH_GPU_ONLY=1 INSCLR_BENCH_TABLE="$out/$name.md" "$@" \
    "$here/bin/$name" --bench "$filter" > "$out/$name.log" 2>&1
  rc=$?
  cat "$out/$name.log" >> "$out/bench.log"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    echo "- $name: ran out of its ${limit} s (the table holds what it measured)" >> "$summary"
    failed=1
  elif [ $rc -ne 0 ]; then
    echo "- $name: FAILED (exit $rc; see bench.log)" >> "$summary"
    failed=1
  fi
  if [ -s "$out/$name.md" ]; then
    cat "$out/$name.md" >> "$out/bench.md"
    cat "$out/$name.md" >> "$summary"
    rm "$out/$name.md"
  else
    echo "- $name: no table ($(grep -m1 SKIPPED "$out/$name.log" || echo 'see bench.log'))" >> "$summary"
  fi
  echo >> "$summary"
}

# The runner times with the benches' fast mode (five batches of at least 5 ms per kernel, no
# criterion statistics): criterion's --quick took 0.2-0.6 s a kernel, over a thousand of them.
# INSCLR_DEVICE_CRITERION=1 goes back to it.
bench_mode() {
  if [ "${INSCLR_DEVICE_CRITERION:-0}" = 1 ]; then echo "INSCLR_BENCH_FAST=0"; else echo "INSCLR_BENCH_FAST=1"; fi
}

phase_bench() {
  local limit=$1
  echo "## Kernels (median per call; floor = bytes / peak bandwidth or flops / peak)" >> "$summary"
  echo >> "$summary"
  stamp >> "$summary"
  echo >> "$summary"
  if [ "$profile" = perf ]; then
    run_bench bench-kernels "$(kernels_filter)" "$limit" "$(bench_mode)" \
      INSCLR_BENCH_FAMILIES="${INSCLR_BENCH_FAMILIES:-conv,layers}" \
      INSCLR_BENCH_CONV_NETS="${INSCLR_BENCH_CONV_NETS:-resnet101,resnet50}"
  else
    run_bench bench-kernels "$(kernels_filter)" "$limit" "$(bench_mode)"
  fi
}

phase_step() {
  local limit=$1
  echo "## Training steps (ours)" >> "$summary"
  echo >> "$summary"
  stamp >> "$summary"
  echo >> "$summary"
  # perf adds the per-kernel breakdown of one step; elsewhere INSCLR_PROFILE passes through.
  local extra=("$(bench_mode)")
  [ "$profile" = perf ] && extra+=(INSCLR_PROFILE=1)
  run_bench bench-train_step cuda "$limit" "${extra[@]}"
}

phase_torch() {
  local limit=$1
  echo "## PyTorch on the same GPU (scripts/torch-baseline.py $(torch_args))" >> "$summary"
  echo >> "$summary"
  stamp >> "$summary"
  echo >> "$summary"
  if ! command -v python3 > /dev/null; then
    echo "- not run: no python3 on this machine" >> "$summary"
    return
  fi
  # shellcheck disable=SC2046
  timed "$limit" python3 "$root/scripts/torch-baseline.py" $(torch_args) > "$out/torch.md" 2>> "$out/torch.log"
  local rc=$?
  cat "$out/torch.md" >> "$summary"
  case $rc in
    0) ;;
    124 | 137) echo "- torch-baseline.py ran out of its time (the tables hold what it measured)" >> "$summary" ;;
    *) echo "- torch-baseline.py failed (exit $rc; see torch.log)" >> "$summary" ;;
  esac
  echo >> "$summary"
}

phase_sanitize() {
  local limit=$1 sanitizer t0 room name rc st
  sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2> /dev/null | head -n 1)
  echo "## compute-sanitizer memcheck (kernel tests)" >> "$summary"
  echo >> "$summary"
  if [ -z "$sanitizer" ]; then
    echo "- not run: compute-sanitizer not found" >> "$summary"
    return
  fi
  t0=$(date +%s)
  for name in layers kernels select contrastive bank mining method optim; do
    room=$((limit - ($(date +%s) - t0)))
    [ -x "$here/bin/test-$name" ] || { echo "- test-$name: not unpacked in this profile" >> "$summary"; continue; }
    [ "$room" -gt 5 ] || { echo "- test-$name: no time left" >> "$summary"; continue; }
    echo "=== test-$name" >> "$out/sanitize.log"
    timed "$room" "$sanitizer" --tool memcheck --error-exitcode 99 "$here/bin/test-$name" --test-threads=1 \
      >> "$out/sanitize.log" 2>&1
    rc=$?
    case $rc in 0) st=clean ;; 99) st="MEMCHECK ERRORS" failed=1 ;; 124 | 137) st="ran out of time" ;; *) st="exit $rc" failed=1 ;; esac
    echo "- test-$name: $st ($(grep -E 'ERROR SUMMARY' "$out/sanitize.log" | tail -n 1))" >> "$summary"
  done
  echo >> "$summary"
}

# The metrics every Nsight Compute run collects, fixed so that runs compare: the tensor pipe,
# instructions, shared-memory bank conflicts against wavefronts, global sectors per request,
# warp stall reasons, occupancy, DRAM and SM throughput, time and clock.
NCU_METRICS="gpu__time_duration.sum
sm__cycles_elapsed.avg.per_second
sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active
sm__inst_executed_pipe_tensor_op_hmma.sum
smsp__inst_executed.sum
smsp__inst_issued.sum
l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum
l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum
l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum
l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum
l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum
l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum
l1tex__t_sectors_pipe_lsu_mem_global_op_st.sum
l1tex__t_requests_pipe_lsu_mem_global_op_st.sum
smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio
smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio
smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio
smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio
smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio
smsp__average_warps_issue_stalled_lg_throttle_per_issue_active.ratio
smsp__average_warps_issue_stalled_wait_per_issue_active.ratio
smsp__average_warps_issue_stalled_not_selected_per_issue_active.ratio
smsp__average_warps_issue_stalled_no_instruction_per_issue_active.ratio
smsp__average_warps_issue_stalled_dispatch_stall_per_issue_active.ratio
smsp__average_warps_issue_stalled_selected_per_issue_active.ratio
sm__warps_active.avg.pct_of_peak_sustained_active
dram__throughput.avg.pct_of_peak_sustained_elapsed
sm__throughput.avg.pct_of_peak_sustained_elapsed
launch__registers_per_thread
launch__occupancy_limit_registers
launch__waves_per_multiprocessor"

find_ncu() {
  command -v ncu 2> /dev/null && return
  ls -d /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu /usr/local/NVIDIA-Nsight-Compute*/ncu 2> /dev/null | head -n 1
}

phase_ncu() {
  local limit=$1 ncu t0 metrics known dropped sel i=0 room rc
  echo "## Nsight Compute (fixed metrics; ncu.md, ncu-*.csv, ncu-*.ncu-rep)" >> "$summary"
  echo >> "$summary"
  stamp >> "$summary"
  echo >> "$summary"
  ncu=$(find_ncu)
  if [ -z "$ncu" ]; then
    echo "- not run: ncu not found (PATH, /usr/local/cuda*/bin, /opt/nvidia/nsight-compute/*)" >> "$summary"
    return
  fi
  echo "- $("$ncu" --version 2> /dev/null | tail -n 1) at $ncu" >> "$summary"
  t0=$(date +%s)
  # Only the metrics this ncu knows for this GPU: one unknown name fails a whole run.
  metrics=$(echo "$NCU_METRICS" | paste -sd, -)
  known=$(timeout 30 "$ncu" --query-metrics 2> /dev/null | awk '{print $1}' | grep '__' || true)
  if [ -n "$known" ]; then
    # launch__* are launch statistics, which the query may not list.
    # (grep reads a here-string: under pipefail, `echo | grep -q` fails when grep stops early.)
    dropped=$(echo "$NCU_METRICS" | grep -v '^launch__' | while read -r m; do grep -qx "${m%%.*}" <<< "$known" || echo "$m"; done)
    metrics=$(echo "$NCU_METRICS" | while read -r m; do
      case "$m" in launch__*) echo "$m" ;; *) grep -qx "${m%%.*}" <<< "$known" && echo "$m" ;; esac
    done | paste -sd, -)
    [ -n "$dropped" ] && echo "- metrics this ncu does not know (left out): $(echo "$dropped" | paste -sd' ' -)" >> "$summary"
  else
    echo "- ncu --query-metrics said nothing: asking for the whole list unchecked" >> "$summary"
  fi
  while IFS= read -r sel; do
    i=$((i + 1))
    room=$((limit - ($(date +%s) - t0)))
    if [ "$room" -lt 10 ]; then
      echo "- selection $i: no time left ($sel)" >> "$summary"
      continue
    fi
    echo "=== ncu $i: $sel" >> "$out/ncu.log"
    # Each selected benchmark's work runs once, untimed (INSCLR_BENCH_LAUNCHES=1); ncu
    # profiles the first launches of the process, which are theirs (setup only copies).
    timed "$room" env INSCLR_BENCH_LAUNCHES=1 INSCLR_BENCH_GPU_ONLY=1 \
      INSCLR_BENCH_FAMILIES="${INSCLR_DEVICE_NCU_FAMILIES:-conv}" \
      "$ncu" --metrics "$metrics" --clock-control none --launch-count 12 \
      --target-processes all -f -o "$out/ncu-$i" "$here/bin/bench-kernels" --bench "$sel" >> "$out/ncu.log" 2>&1
    rc=$?
    if [ -s "$out/ncu-$i.ncu-rep" ]; then
      # Base units (ns, Hz, counts) when this ncu can print them; the table reads the units
      # row either way.
      timeout 30 "$ncu" --import "$out/ncu-$i.ncu-rep" --page raw --csv --print-units base \
        > "$out/ncu-$i.csv" 2>> "$out/ncu.log" ||
        timeout 30 "$ncu" --import "$out/ncu-$i.ncu-rep" --page raw --csv > "$out/ncu-$i.csv" 2>> "$out/ncu.log"
    fi
    echo "- selection $i: exit $rc, $(grep -c '^LAUNCH' "$out/ncu.log") benchmarks launched so far: \`$sel\`" >> "$summary"
  done < <(ncu_selections)
  if ! ls "$out"/ncu-*.csv > /dev/null 2>&1; then
    echo "- no report (see ncu.log: $(grep -m1 -iE 'error|ERR_' "$out/ncu.log" || echo 'no error line'))" >> "$summary"
    return
  fi
  if command -v python3 > /dev/null; then
    python3 - "$out"/ncu-*.csv > "$out/ncu.md" 2>> "$out/ncu.log" <<'PY'
import csv, sys
# One row per profiled launch from ncu's raw CSV pages (a header, a units row, then launches).
stalls = ("long_scoreboard", "short_scoreboard", "barrier", "mio_throttle", "math_pipe_throttle",
          "lg_throttle", "wait", "not_selected", "no_instruction", "dispatch_stall", "selected")
# Scale to ns for times and to Hz for rates, from the units row (ncu may print scaled units).
TIME = {"nsecond": 1.0, "usecond": 1e3, "msecond": 1e6, "second": 1e9}
PER = {"second": 1.0, "msecond": 1e3, "usecond": 1e6, "nsecond": 1e9}
def scale(unit):
    unit = unit.strip()
    if unit in TIME:
        return TIME[unit]
    if "/" in unit:
        return PER.get(unit.split("/")[-1], 1.0)
    return {"hz": 1.0, "khz": 1e3, "mhz": 1e6, "ghz": 1e9}.get(unit.lower(), 1.0)
units = {}
def num(row, key):
    try:
        return float(row.get(key, "").replace(",", "")) * scale(units.get(key, ""))
    except ValueError:
        return None
def fmt(v, f="{:.1f}"):
    return "n/a" if v is None else f.format(v)
def per(a, b):
    return None if a is None or not b else a / b
print("| launch | kernel | grid / block | regs | time (us) | SM GHz | tensor pipe % | inst issued (M) "
      "| smem conflicts / wavefronts ld, st | global sectors / request ld, st | occupancy % | DRAM % "
      "| SM % | top stalls (warps per issue) |")
print("|" + "---|" * 14)
for path in sys.argv[1:]:
    rows = list(csv.DictReader(open(path)))
    for r in rows:
        if not r.get("ID", "").strip().isdigit():
            units = r  # the units row, before the launches
            continue
        g = lambda k: num(r, k)
        top = sorted(((g(f"smsp__average_warps_issue_stalled_{s}_per_issue_active.ratio"), s) for s in stalls),
                     key=lambda t: -(t[0] or 0))[:3]
        name = r.get("Kernel Name", "?").replace("|", "/")
        name = name if len(name) <= 48 else name[:45] + "..."
        print(f"| {path.rsplit('/', 1)[-1][:-4]}#{r['ID']} | {name} | {r.get('Grid Size', '?')} / {r.get('Block Size', '?')} "
              f"| {fmt(g('launch__registers_per_thread'), '{:.0f}')} "
              f"| {fmt(per(g('gpu__time_duration.sum'), 1e3))} | {fmt(per(g('sm__cycles_elapsed.avg.per_second'), 1e9), '{:.2f}')} "
              f"| {fmt(g('sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active'))} "
              f"| {fmt(per(g('smsp__inst_issued.sum'), 1e6), '{:.2f}')} "
              f"| {fmt(per(g('l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum'), g('l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum')), '{:.2f}')}, "
              f"{fmt(per(g('l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum'), g('l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum')), '{:.2f}')} "
              f"| {fmt(per(g('l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum'), g('l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum')), '{:.2f}')}, "
              f"{fmt(per(g('l1tex__t_sectors_pipe_lsu_mem_global_op_st.sum'), g('l1tex__t_requests_pipe_lsu_mem_global_op_st.sum')), '{:.2f}')} "
              f"| {fmt(g('sm__warps_active.avg.pct_of_peak_sustained_active'))} "
              f"| {fmt(g('dram__throughput.avg.pct_of_peak_sustained_elapsed'))} "
              f"| {fmt(g('sm__throughput.avg.pct_of_peak_sustained_elapsed'))} "
              f"| {', '.join(f'{s} {v:.2f}' for v, s in top if v)} |")
print("\nThe time is ncu's (caches flushed, one launch); the benchmark tables' times are the ones to compare with peers.")
PY
    cat "$out/ncu.md" >> "$summary"
  else
    echo "- python3 missing: the metrics are in ncu-*.csv" >> "$summary"
  fi
  echo >> "$summary"
}

phase_summary() {
  {
    echo "## The binary"
    echo
    echo "<details><summary>$(basename "$stamp_file") (taken at staging, commit ${staged_commit:-unknown})</summary>"
    echo
    echo '```'
    cat "$stamp_file" 2> /dev/null || echo "(no stamp staged)"
    echo '```'
    echo
    echo "</details>"
    echo
    echo "- the call's phases took $(($(date +%s) - start)) s of its ${budget} s budget; exit status $failed"
  } >> "$summary"
  cat "$summary"
}

# The run: phases in the profile's order, each under its limit.
clock_reads=0
for entry in "${phases[@]}"; do
  read -r name default var <<< "$entry"
  limit=$(limit_of "$name" "$default" "$var")
  case "$name" in
    unpack) phase_unpack "$limit" ;;
    clocks)
      clocks "$([ $clock_reads = 0 ] && echo before || echo after)"
      clock_reads=$((clock_reads + 1))
      ;;
    summary) phase_summary ;;
    *)
      [ "$limit" -gt 0 ] || continue
      echo "[$(($(date +%s) - start)) s] phase $name (limit $limit s)"
      "phase_$name" "$limit"
      ;;
  esac
done
exit $failed
