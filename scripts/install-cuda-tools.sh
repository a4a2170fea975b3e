#!/usr/bin/env bash
# Installs a pinned nvcc (CUDA 13.0) from PyPI wheels into .cuda-tools/ so kernels compile on
# machines without a CUDA toolkit, and cuobjdump + nvdisasm for scripts/sass-check.py.
# Idempotent: a matching install is left alone.
# Unpinned wheels pull 13.x headers that do not match this nvcc, hence the exact pins.
# cuobjdump and nvdisasm have no 13.0 wheels on PyPI (the oldest is 13.2.51); 13.2 reads
# nvcc 13.0's sm_90/sm_90a cubins, and a newer disassembler may print SASS differently, so it is
# pinned as well.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.cuda-tools"
pins=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-cuobjdump==13.2.86
  nvidia-cuda-nvdisasm==13.2.86
)
stamp="$dest/.installed"
want=$(printf '%s\n' "${pins[@]}")
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$dest/bin/nvcc" ] && [ -x "$dest/bin/cuobjdump" ]; then
  echo "cuda tools: already installed in $dest"
  "$dest/bin/nvcc" --version | tail -n 2
  exit 0
fi
command -v gcc >/dev/null || { echo "error: gcc is not on PATH; nvcc needs it as host compiler (apt-get install gcc g++)" >&2; exit 1; }
rm -rf "$dest"
python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dest/site" "${pins[@]}"
# The wheels spread the toolkit over nvidia/cu13/{bin,include,lib,nvvm}; nvcc finds its
# siblings relative to itself, so a bin/ symlink tree at the top is enough.
cuda="$dest/site/nvidia/cu13"
[ -d "$cuda" ] || cuda=$(dirname "$(dirname "$(find "$dest/site" -name nvcc -type f | head -n 1)")")
for tool in nvcc cuobjdump nvdisasm; do
  [ -f "$cuda/bin/$tool" ] || { echo "error: $tool not found in the installed wheels under $cuda/bin" >&2; exit 1; }
done
chmod +x "$cuda"/bin/* "$cuda"/nvvm/bin/* 2>/dev/null || true
ln -sfn "$cuda/bin" "$dest/bin"
ln -sfn "$cuda" "$dest/cuda"
printf '%s\n' "$want" > "$stamp"
# cargo reruns build.rs when the nvcc it used changes, not when one appears where none was
# (it does not watch PATH): a build made before this install would otherwise stay without kernels.
touch "$root/build.rs"
"$dest/bin/nvcc" --version | tail -n 2
echo "cuda tools: installed in $dest"
