#!/usr/bin/env bash
# The demo end to end on the CPU: photos -> stage-0 descriptors -> candidate pool -> one
# training stage (configs/demo.toml, or the config given).
#   scripts/demo-train.sh [CONFIG] [extra train args, e.g. --resume]
set -euo pipefail
CONFIG="${1:-configs/demo.toml}"
shift || true
BIN="${INSCLR_BIN:-target/release/insclr-cu}"
[ -x "$BIN" ] || cargo build --release
[ -d data/demo ] || scripts/fetch-demo-data.sh
mkdir -p data/demo-work
if [ ! -f data/demo-work/s0_neighbor.npz ]; then
  "$BIN" extract --images data/demo --scales 1 --out data/demo-work/s0_feature.npy --cpu --quiet
  "$BIN" pool --feats data/demo-work/s0_feature.npy --k 50 --out data/demo-work/s0_neighbor.npz
fi
"$BIN" train --config "$CONFIG" --cpu "$@"
