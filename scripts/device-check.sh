#!/usr/bin/env bash
# Builds release test and bench binaries here and stages them, with a runner, in .device/
# (git-ignored), so that one command on a GPU machine (no Rust toolchain there) runs every GPU
# test and benchmark and writes logs and a results table under $OUT.
#
#   scripts/device-check.sh            # here: build and stage
#   bash .device/run.sh                # there (device tool: carry [".device"]); results in $OUT
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/install-cuda-tools.sh >/dev/null
export INSCLR_REQUIRE_NVCC=1
stage="$root/.device"
rm -rf "$stage"
mkdir -p "$stage/bin"

# Cargo prints one JSON object per artifact; keep the executables of test and bench targets.
list_executables() {
  python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["kind"][0], m["target"]["name"], m["executable"])
'
}
{
  cargo test --release --no-run --message-format=json
  cargo bench --no-run --message-format=json
} 2>"$stage/build.log" | list_executables | sort -u > "$stage/executables.txt" || {
  cat "$stage/build.log" >&2
  exit 1
}
while read -r kind name exe; do
  case "$kind" in
    bench) dest="$stage/bin/bench-$name" ;;
    lib) dest="$stage/bin/test-lib" ;;
    *) dest="$stage/bin/test-$name" ;;
  esac
  cp "$exe" "$dest"
done < "$stage/executables.txt"
# Integration tests run the command line from the build machine's path (CARGO_BIN_EXE_insclr-cu);
# run.sh links this copy there.
cp target/release/insclr-cu "$stage/bin/insclr-cu"
# Debug info makes each binary ~60 MB and the device tool carries 64 MiB in all: strip and
# compress them here, run.sh unpacks them there.
for f in "$stage"/bin/*; do
  strip --strip-all "$f" 2>/dev/null || true
  gzip -9 "$f"
done
size_mib=$(du -sm "$stage" | cut -f1)
if [ "$size_mib" -gt 60 ]; then
  echo "error: $stage is $size_mib MiB; the device tool carries at most 64 MiB with the tree" >&2
  exit 1
fi

{
  echo "commit=$(git rev-parse HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo '+dirty')"
  echo "build_root=$root"
  echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "archs=${INSCLR_CUDA_ARCHS:-90;90a}"
} > "$stage/BUILD"
cp scripts/device-run.sh "$stage/run.sh"
du -sh "$stage" | sed 's/^/staged: /'
ls "$stage/bin" | sed 's/^/  /'
cat <<'MSG'

On the GPU machine (device tool), run from the repository root:
  bash .device/run.sh          with carry: [".device"]
It writes summary.md, tests.log, bench.log and bench.md under $OUT; commit summary.md as
bench_results/<date>-<gpu>.md.
MSG
