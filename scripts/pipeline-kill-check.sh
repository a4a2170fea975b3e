#!/usr/bin/env bash
# Kills `insclr-cu pipeline` with SIGKILL in the middle of a stage's training, starts it again,
# and checks that it ends with the same final model (crc32) as an uninterrupted run of the
# same plan. Usage: scripts/pipeline-kill-check.sh PLAN.toml STAGE [BIN]
#   PLAN.toml  a pipeline plan (its OUTPUT_DIR is replaced by two folders under /tmp)
#   STAGE      the stage to kill in (its NAME, e.g. s2): killed once it has a checkpoint
#   BIN        the insclr-cu binary [default: what scripts/demo.sh builds]
set -euo pipefail
cd "$(dirname "$0")/.."
plan=$1 stage=$2
bin=${3:-$(bash scripts/demo.sh --print-binary)}
work=$(mktemp -d /tmp/pipeline-kill.XXXXXX)
for run in whole killed; do
  sed "s|^OUTPUT_DIR = .*|OUTPUT_DIR = \"$work/$run\"|" "$plan" > "$work/$run.toml"
done

echo "== uninterrupted run ($work/whole)"
"$bin" pipeline --config "$work/whole.toml" --quiet > "$work/whole.log" 2>&1
whole=$(grep -o 'crc32 [0-9a-f]*' "$work/whole.log")

echo "== run killed in $stage once it has a checkpoint ($work/killed)"
"$bin" pipeline --config "$work/killed.toml" --quiet > "$work/killed-1.log" 2>&1 &
pid=$!
ckpt="$work/killed/$stage/train/checkpoints"
until compgen -G "$ckpt/*.safetensors" > /dev/null; do
  kill -0 $pid 2> /dev/null || { echo "error: the run ended before $stage wrote a checkpoint"; exit 1; }
  sleep 0.2
done
kill -9 $pid
wait $pid 2> /dev/null || true
echo "killed during: $(grep -o "pipeline \[[0-9/]*\] [^ ]*" "$work/killed-1.log" | tail -1)," \
  "checkpoints: $(ls "$ckpt" | tr '\n' ' ')"
if grep -q "steps done" "$work/killed-1.log"; then echo "error: it had finished"; exit 1; fi

echo "== started again"
"$bin" pipeline --config "$work/killed.toml" --quiet > "$work/killed-2.log" 2>&1
grep -E "resumed|done before" "$work/killed-2.log" | head -20
killed=$(grep -o 'crc32 [0-9a-f]*' "$work/killed-2.log")
echo "final model: uninterrupted $whole, killed and continued $killed"
[ "$whole" = "$killed" ] || { echo "error: the final models differ"; exit 1; }
echo "same final model"
