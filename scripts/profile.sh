#!/usr/bin/env bash
# Profiles a few training steps on the GPU with Nsight Systems and prints the top kernels and
# the time per step phase (the NVTX ranges of src/train/stage.rs: load, no-DA forward, forward,
# selection, batch loss, bank update, mining, memory loss, backward, optimiser). With NCU=1 it
# also runs Nsight Compute on 20 kernel launches of a later step.
#   scripts/profile.sh CONFIG.toml [STEPS=20] [BIN]
# The ranges need libnvToolsExt at run time (found like any shared library; CUDA toolkits up
# to 12 ship it, and `pip install nvidia-nvtx-cu12` does too: add its lib/ folder to
# LD_LIBRARY_PATH). Without it the kernels are still profiled, without phases.
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:?usage: scripts/profile.sh CONFIG.toml [STEPS] [BIN]}
steps=${2:-20}
bin=${3:-$(bash scripts/demo.sh --print-binary)}
if ! command -v nsys > /dev/null; then
  echo "error: nsys (Nsight Systems) is not on PATH; install it from NVIDIA, or add its bin/ folder to PATH" >&2
  exit 1
fi
out=$(mktemp -d /tmp/insclr-profile.XXXXXX)
run=(--device cuda train --config "$config" --set "SOLVER.MAX_STEP=$steps" --set "OUTPUT_DIR=$out/run" --quiet)
nsys profile --trace=cuda,nvtx,osrt --force-overwrite=true -o "$out/steps" "$bin" "${run[@]}"
for report in cuda_gpu_kern_sum nvtx_sum; do
  echo "== $report"
  nsys stats --report "$report" --format table "$out/steps.nsys-rep" | head -40
done
if [ "${NCU:-0}" = 1 ]; then
  if ! command -v ncu > /dev/null; then
    echo "error: NCU=1 but ncu (Nsight Compute) is not on PATH" >&2
    exit 1
  fi
  rm -rf "$out/run"
  ncu --set full --launch-skip 500 --launch-count 20 -o "$out/kernels" "$bin" "${run[@]}"
  ncu --import "$out/kernels.ncu-rep" --page details | head -200
fi
echo "reports in $out"
