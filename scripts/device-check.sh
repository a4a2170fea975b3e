#!/usr/bin/env bash
# Builds release test and bench binaries here and stages them, with a runner, in .device/
# (git-ignored), so that one command on a GPU machine (no Rust toolchain there) runs the GPU
# tests and benchmarks and writes logs and results tables under $OUT.
#
#   scripts/device-check.sh [full|perf]   # here: build and stage
#   bash .device/run.sh [full|perf]       # there (device tool: carry [".device"]); results in $OUT
#
# full (the default) stages every test and GPU bench binary but test-scripts and bench-cpu,
# which never run there; perf only what `run.sh perf` runs (its tests, bench-kernels,
# bench-train_step), and builds only those. The device tool carries 64 MiB in all.
#
# It also stamps the build for every results table: scripts/sass-check.py's static SASS
# table of the staged fatbins into .device/sass.txt when cuobjdump is here, and always the
# ptxas resource report (`insclr-cu info --kernels`) into .device/resources.txt.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
started=$SECONDS
profile=${1:-full}
case "$profile" in
  full | perf) ;;
  *) echo "usage: scripts/device-check.sh [full|perf]" >&2; exit 2 ;;
esac
bash scripts/install-cuda-tools.sh >/dev/null
export INSCLR_REQUIRE_NVCC=1
target=${CARGO_TARGET_DIR:-$root/target}
case "$target" in /*) ;; *) target=$root/$target ;; esac
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
if [ "$profile" = perf ]; then
  # The runner's own list (INSCLR_DEVICE_TESTS, or its default), as --test flags.
  tests=()
  for t in $(bash scripts/device-run.sh perf --tests); do tests+=(--test "$t"); done
  benches=(--bench kernels --bench train_step)
else
  tests=(--tests --lib --bins)
  benches=(--benches)
fi
{
  cargo test --release --no-run --message-format=json "${tests[@]}"
  cargo bench --no-run --message-format=json "${benches[@]}"
} 2>"$stage/build.log" | list_executables | sort -u > "$stage/executables.txt" || {
  cat "$stage/build.log" >&2
  exit 1
}
while read -r kind name exe; do
  # test-scripts runs scripts/demo.sh, which needs cargo; bench-cpu has no GPU group.
  case "$kind:$name" in test:scripts | bench:cpu) continue ;; esac
  case "$kind" in
    bench) dest="$stage/bin/bench-$name" ;;
    lib) dest="$stage/bin/test-lib" ;;
    *) dest="$stage/bin/test-$name" ;;
  esac
  cp "$exe" "$dest"
done < "$stage/executables.txt"
# Integration tests run the command line from the build machine's path (CARGO_BIN_EXE_insclr-cu);
# run.sh links this copy there.
cp "$target/release/insclr-cu" "$stage/bin/insclr-cu"

# The stamp: the resource report always (registers, shared memory, spills per kernel)...
"$target/release/insclr-cu" info --kernels > "$stage/info.txt"
awk '/^ptxas.s resource report/ { on = 1 } on && /^$/ { exit } on' "$stage/info.txt" > "$stage/resources.txt"
# (a report printed some other way: all of `info --kernels`, which holds it)
[ -s "$stage/resources.txt" ] || cp "$stage/info.txt" "$stage/resources.txt"
rm "$stage/info.txt"
[ -s "$stage/resources.txt" ] || { echo "error: insclr-cu info --kernels printed nothing" >&2; exit 1; }
# ...and scripts/sass-check.py's static SASS table of these very fatbins (the OUT_DIR of this
# release build) where cuobjdump is here (scripts/install-cuda-tools.sh installs it). Its exit
# status 1 means a kernel breaks its declaration in kernels/sass.toml: the table is still the
# stamp, with that said under it.
cuobjdump=${CUOBJDUMP:-}
[ -n "$cuobjdump" ] || cuobjdump=$(command -v cuobjdump || ls "$root"/.cuda-tools/bin/cuobjdump 2>/dev/null || true)
# (|| true: the loop stops reading early, and pipefail would count ls's broken pipe.)
fatbins=$(ls -td "$target"/release/build/insclr-cu-*/out 2>/dev/null | while read -r d; do
  [ -e "$d/conv.fatbin" ] && echo "$d" && break
done || true)
if [ -f scripts/sass-check.py ] && [ -n "$cuobjdump" ] && [ -n "$fatbins" ]; then
  rc=0
  CUOBJDUMP="$cuobjdump" timeout 300 python3 scripts/sass-check.py --dir "$fatbins" --markdown \
    > "$stage/sass.txt" 2>> "$stage/build.log" || rc=$?
  if [ ! -s "$stage/sass.txt" ]; then
    echo "note: scripts/sass-check.py printed nothing (exit $rc; see $stage/build.log): the stamp is the resource report" >&2
    rm -f "$stage/sass.txt"
  elif [ "$rc" -ne 0 ]; then
    echo "note: scripts/sass-check.py exit $rc: a kernel breaks its kernels/sass.toml declaration (see $stage/build.log)" >&2
    printf '\nscripts/sass-check.py exit %s: a kernel breaks its declaration in kernels/sass.toml\n' "$rc" >> "$stage/sass.txt"
  fi
else
  echo "note: no SASS summary (scripts/sass-check.py: $([ -f scripts/sass-check.py ] && echo here || echo absent), cuobjdump: ${cuobjdump:-absent}): the stamp is the resource report"
fi
# Debug info makes each binary ~60 MB and the device tool carries 64 MiB in all: strip and
# compress them here, run.sh unpacks them there.
for f in "$stage"/bin/*; do
  strip --strip-all "$f" 2>/dev/null || true
  gzip -9 "$f"
done
# What unpacking costs the runner (its unpack phase has 20 s), measured on this machine.
unpack_start=$(date +%s%N)
for f in "$stage"/bin/*.gz; do gunzip -c "$f" > /dev/null; done
unpack_ms=$((($(date +%s%N) - unpack_start) / 1000000))
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
  echo "profile=$profile"
  echo "staging_s=$((SECONDS - started))"
  echo "unpack_ms_here=$unpack_ms"
} > "$stage/BUILD"
cp scripts/device-run.sh "$stage/run.sh"
du -sh "$stage" | sed 's/^/staged: /'
ls "$stage/bin" | sed 's/^/  /'
echo "staged in $((SECONDS - started)) s; unpacking every binary took $unpack_ms ms here"
echo
bash "$stage/run.sh" perf --dry-run | tail -n 4
cat <<'MSG'

On the GPU machine (device tool, carry [".device"], timeout_s 600), from the repository root:
  bash .device/run.sh perf     the performance profile (about nine minutes), or
  bash .device/run.sh          every test, the whole kernel table, the steps
It writes summary.md (and the logs and tables it joins) under $OUT; commit summary.md as
bench_results/<date>-<gpu>.md.
MSG
