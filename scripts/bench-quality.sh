#!/usr/bin/env bash
# The quality benchmark (docs/quality.md, "The quality benchmark"): does a training recipe beat the
# ImageNet descriptor on photos nobody labelled? On the CPU, from a fresh clone:
#   ImageNet EfficientNet-Lite0 GeM of every benchmark photo -> candidate pool -> a training
#   stage -> mAP; with STAGES=2 (or more) the next stage starts from the trained model's
#   descriptors and pool, as the paper chains its base stages.
# Prints mAP before / after each stage, for each seed, with the settings.
#
#   scripts/bench-quality.sh [CONFIG [SEED...]]      # defaults: configs/small-collection.toml 42
#   STAGES=2 scripts/bench-quality.sh configs/small-collection.toml 1 2 3
#
# Env: STAGES (default 1), BENCH_IMG_SIZE (evaluation and stage-0 descriptors, default 320,
# one scale), BENCH_OUT (default data/bench-work). CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:-configs/small-collection.toml}
seeds=("${@:2}")
[ ${#seeds[@]} -gt 0 ] || seeds=(42)
stages=${STAGES:-1}
img=${BENCH_IMG_SIZE:-320}
work=${BENCH_OUT:-data/bench-work}
step() { printf '\n== %s\n' "$*"; }

target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
bin=$target_dir/release/insclr-cu

step "release build, benchmark photos, ImageNet weights"
cargo build --release --locked
bash scripts/fetch-bench-data.sh data/bench
bash scripts/fetch-weights.sh
weights=data/weights/efficientnet-lite0.safetensors
[ -s "$weights" ] || $bin import-weights data/weights/efficientnet-lite0-57934424.pth "$weights"

mkdir -p "$work"
started=$(date +%s)
gnd=(--dataset list --root data/bench --gnd configs/bench-list-gnd.json --img-size "$img" --scales 1 --quiet)
# Descriptors of every training photo (all of data/bench, sorted as training reads them) and
# their exact top-50 neighbours: what the next stage trains from.
describe() { # WEIGHTS OUT_PREFIX
  $bin extract --model efficientnet-lite0 --weights "$1" --images data/bench --img-size "$img" --scales 1 --raw-scales \
    --out "$2_feature.npy"
  $bin pool --feats "$2_feature.npy" --k 50 --out "$2_neighbor.npz"
}

step "stage 0: the ImageNet model's GeM descriptors, pool and mAP"
describe "$weights" "$work/s0"
$bin eval "${gnd[@]}" --model efficientnet-lite0 --weights "$weights" --json "$work/eval-s0.json"

for seed in "${seeds[@]}"; do
  prev=$work/s0
  model=imagenet
  for ((s = 1; s <= stages; s++)); do
    out=$work/seed$seed/s$s
    step "seed $seed, stage $s: train ($config)"
    # What this script wrote beside the run last time: --overwrite deletes only the run's own
    # files and refuses a folder that holds others.
    rm -f "$out/eval.json" "$out"/next_feature.{npy,txt,bad.txt} "$out/next_neighbor.npz"
    $bin train --config "$config" --overwrite --quiet --set SEED="$seed" --set OUTPUT_DIR="$out" \
      --set DATA.ROOT=data/bench --set NEIGHBOR.SRC="${prev}_neighbor.npz" \
      --set MODEL.HEAD.INIT_FEATS="${prev}_feature.npy" --set MODEL.PRETRAIN="$model"
    model=$out/model_final.safetensors
    $bin eval "${gnd[@]}" --weights "$model" --json "$out/eval.json"
    if ((s < stages)); then
      step "seed $seed, stage $s: descriptors and pool for stage $((s + 1))"
      describe "$model" "$out/next"
      prev=$out/next
    fi
  done
done

step "summary"
python3 - "$work" "$config" "$stages" "$img" "$(($(date +%s) - started))" "${seeds[@]}" <<'PY'
import json, statistics, sys
work, config, stages, img, seconds, seeds = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6:]
def mean_ap(path):
    return 100 * json.load(open(path))["results"][0]["map"]
base = mean_ap(f"{work}/eval-s0.json")
run = json.load(open(f"{work}/seed{seeds[0]}/s1/run.json"))
cfg = run.get("config", run)
keys = ["INPUT.TRAIN_IMG_SIZE", "SOLVER.BASE_LR", "SOLVER.MAX_STEP", "SOLVER.IMS_PER_BATCH",
        "MODEL.BACKBONE.FROZEN", "MODEL.BACKBONE.FREEZE_BN", "MODEL.HEAD.INIT", "MODEL.HEAD.OUT_DIM",
        "NEIGHBOR.K", "XBM.ENABLE"]
print(f"config {config}; evaluation {img} px, one scale; seeds {' '.join(seeds)}; {seconds} s")
print("  " + ", ".join(f"{k} = {cfg[k]}" for k in keys if k in cfg))
print(f"\n| descriptor | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | vs ImageNet |")
print("| --- |" + " --- |" * (len(seeds) + 2))
print(f"| ImageNet EfficientNet-Lite0 GeM | " + " | ".join(f"{base:.2f}" for _ in seeds) + f" | {base:.2f} | |")
for s in range(1, stages + 1):
    v = [mean_ap(f"{work}/seed{seed}/s{s}/eval.json") for seed in seeds]
    m = statistics.mean(v)
    spread = max(v) - min(v)
    print(f"| after stage {s} | " + " | ".join(f"{x:.2f}" for x in v) + f" | {m:.2f} | {m - base:+.2f} (spread {spread:.2f}) |")
PY
