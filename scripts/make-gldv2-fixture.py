"""A GLDv2-layout fixture made of real demo photos (what tests/pipeline.rs trains and evaluates).

GLDv2 keeps an image with id `abc...` at `<split>/a/b/c/abc....jpg`, lists the training set in
train/train_clean.csv (`landmark_id,images`; landmarks with fewer than 15 images are dropped),
the index in index/index_image_to_landmark.csv and the retrieval ground truth in
test/retrieval_solution_v2.1.csv (`id,images,Usage`). This writes the same files at a small
scale, every image shrunk to at most 96 px (JPEG q80):
  train: landmark 27, 15 views of OpenCV's calibration chessboard scene (kept);
         landmark 31, 14 images (dropped by the 15-image filter);
         landmark 44, 15 unrelated photos (kept);
  index: 12 photos; test: 4 queries, a crop or another view of an index photo, 2 Public,
         1 Private, 1 Ignored.
Ids are the first 16 hex characters of the SHA-1 of the source's path, so the output is the
same on every machine.

  python3 make-gldv2-fixture.py DEMO OUT     # DEMO = data/demo; needs Pillow (11.0.0)
"""
import hashlib
import os
import sys

from PIL import Image

TRAIN = [
    ("27", [f"opencv/left{i:02d}.jpg" for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14)]
     + ["opencv/right01.jpg", "opencv/right02.jpg"]),
    ("31", [f"opencv/right{i:02d}.jpg" for i in (3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14)]
     + ["opencv/graf1.png", "opencv/graf3.png", "opencv/box.png"]),
    ("44", ["opencv/aero1.jpg", "opencv/aero3.jpg", "opencv/aloeL.jpg", "opencv/aloeR.jpg",
            "opencv/baboon.jpg", "opencv/building.jpg", "opencv/butterfly.jpg",
            "opencv/fruits.jpg", "opencv/home.jpg", "opencv/leuvenA.jpg", "opencv/leuvenB.jpg",
            "opencv/messi5.jpg", "opencv/orange.jpg", "opencv/squirrel_cls.jpg",
            "opencv/starry_night.jpg"]),
]
INDEX = ["skimage/astronaut.png", "skimage/chelsea.png", "skimage/coffee.png",
         "skimage/rocket.jpg", "sklearn/china.jpg", "sklearn/flower.jpg",
         "skimage/motorcycle_left.png", "skimage/camera.png", "skimage/coins.png",
         "skimage/grass.png", "skimage/brick.png", "skimage/moon.png"]
# (source, crop box as fractions or None, usage, the index photo it shows)
TEST = [("skimage/astronaut.png", (0.1, 0.0, 0.7, 0.6), "Public", "skimage/astronaut.png"),
        ("skimage/motorcycle_right.png", None, "Public", "skimage/motorcycle_left.png"),
        ("sklearn/china.jpg", (0.3, 0.2, 1.0, 0.9), "Private", "sklearn/china.jpg"),
        ("skimage/coffee.png", (0.0, 0.2, 0.6, 1.0), "Ignored", "skimage/coffee.png")]


def image_id(rel, salt=""):
    return hashlib.sha1((salt + rel).encode()).hexdigest()[:16]


def save(demo, rel, split_dir, ident, box=None):
    im = Image.open(os.path.join(demo, rel)).convert("RGB")
    if box:
        w, h = im.size
        im = im.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))
    im.thumbnail((96, 96), Image.LANCZOS)
    path = os.path.join(split_dir, ident[0], ident[1], ident[2], f"{ident}.jpg")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im.save(path, quality=80)


def main(demo, out):
    rows = ["landmark_id,images"]
    for landmark, sources in TRAIN:
        ids = [image_id(r) for r in sources]
        for r, i in zip(sources, ids):
            save(demo, r, os.path.join(out, "train"), i)
        rows.append(f"{landmark}," + " ".join(ids))
    os.makedirs(os.path.join(out, "train"), exist_ok=True)
    open(os.path.join(out, "train", "train_clean.csv"), "w").write("\n".join(rows) + "\n")
    index_rows = ["id,landmark_id"]
    for n, r in enumerate(INDEX):
        save(demo, r, os.path.join(out, "index"), image_id(r))
        index_rows.append(f"{image_id(r)},{100 + n}")
    open(os.path.join(out, "index", "index_image_to_landmark.csv"), "w").write(
        "\n".join(index_rows) + "\n")
    sol = ["id,images,Usage"]
    for src, box, usage, shows in TEST:
        q = image_id(src, "query:")
        save(demo, src, os.path.join(out, "test"), q, box)
        sol.append(f"{q},{image_id(shows) if usage != 'Ignored' else 'None'},{usage}")
    open(os.path.join(out, "test", "retrieval_solution_v2.1.csv"), "w").write("\n".join(sol) + "\n")
    open(os.path.join(out, "SOURCES"), "w").write(
        "Made by scripts/make-gldv2-fixture.py from the demo photos (scripts/fetch-demo-data.sh):\n"
        "opencv/: Debian opencv-doc, usr/share/doc/opencv-doc/examples/data/\n"
        "skimage/: PyPI scikit-image==0.26.0, skimage/data/ (BSD-3; per-image credits in its data/README.txt)\n"
        "sklearn/: PyPI scikit-learn, sklearn/datasets/images/ (china.jpg, flower.jpg: CC-BY-2.0)\n")
    print(f"wrote {out}: 44 training images (30 kept by the 15-image filter), "
          f"{len(INDEX)} index images, {len(TEST)} queries")


if __name__ == "__main__":
    main(*sys.argv[1:3])
