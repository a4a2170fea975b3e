"""The quality benchmark: strong Copydays-style variants of real photos, plus true multi-view sets.

The demo's ground truth is solved by ImageNet features, so it cannot show what training changes.
Here each source photo appears in the database only as 5 strongly edited copies (no original),
and its query is a sixth, different edit. The same edits are applied to distractor photos, so
that an edit's look (grey, blurred, warped, tinted) does not by itself point to the positives.
A few real camera sequences and scene pairs add queries whose positives are other views.

  python3 make-bench-variants.py SRC BENCH QUERIES [GND.json]     # needs Pillow

SRC holds the fetched photos (see scripts/fetch-bench-data.sh), BENCH receives the database
images (everything under it may be used for training), QUERIES the query images (kept outside
BENCH). Every random choice comes from a generator seeded by the photo's name, so the output is
the same on every machine with the same Pillow. GND.json receives the ground truth
(configs/bench-list-gnd.json is this file, committed).
"""
import io
import json
import os
import random
import sys

from PIL import Image, ImageEnhance, ImageFilter, ImageOps

# Photos (not charts, drawings or renders): each gives a query and 5 database positives.
SOURCES = [
    "skimage/astronaut.png", "skimage/chelsea.png", "skimage/coffee.png", "skimage/rocket.jpg",
    "skimage/camera.png", "skimage/coins.png", "skimage/hubble_deep_field.jpg",
    "skimage/retina.jpg", "skimage/moon.png",
    "sklearn/china.jpg", "sklearn/flower.jpg",
    "opencv/fruits.jpg", "opencv/baboon.jpg", "opencv/building.jpg", "opencv/orange.jpg",
    "opencv/messi5.jpg", "opencv/home.jpg", "opencv/butterfly.jpg", "opencv/HappyFish.jpg",
    "opencv/squirrel_cls.jpg", "opencv/smarties.png", "opencv/starry_night.jpg",
    "opencv/apple.jpg", "opencv/stuff.jpg", "opencv/board.jpg", "opencv/ela_original.jpg",
    "darknet/dog.jpg", "darknet/eagle.jpg", "darknet/giraffe.jpg", "darknet/horses.jpg",
    "darknet/kite.jpg", "darknet/person.jpg", "darknet/scream.jpg",
    "visp/Klimt.png", "visp/Solvay.png",
] + [f"foolbox/imagenet_{i:02d}" for i in range(10)]

# Photos that appear only as edited distractors: similar content and textures.
DISTRACTORS = [f"foolbox/imagenet_{i:02d}" for i in range(10, 20)] + [
    "skimage/brick.png", "skimage/grass.png", "skimage/gravel.png", "skimage/ihc.png",
    "opencv/licenseplate_motion.jpg", "visp/AprilTag.png",
]

# Multi-view sets: (name, query view, database views of the same scene). Camera sequences are
# sampled far apart; the pairs are OpenCV's, vlfeat's and scikit-image's overlapping views.
VIEWS = [
    ("mbtcube", "visp/mbt-cube/0000.png", ["visp/mbt-cube/0070.png", "visp/mbt-cube/0140.png", "visp/mbt-cube/0217.png"]),
    ("dice", "visp/cube/0001.png", ["visp/cube/0040.png", "visp/cube/0079.png"]),
    ("mire", "visp/mire-2/0001.png", ["visp/mire-2/0125.png", "visp/mire-2/0250.png", "visp/mire-2/0375.png", "visp/mire-2/0501.png"]),
    ("castel", "visp/castel/0000.png", ["visp/castel/0015.png", "visp/castel/0029.png"]),
    ("roofs", "vlfeat/roofs1.jpg", ["vlfeat/roofs2.jpg"]),
    ("river", "vlfeat/river1.jpg", ["vlfeat/river2.jpg"]),
    ("graf", "opencv/graf1.png", ["opencv/graf3.png"]),
    ("leuven", "opencv/leuvenA.jpg", ["opencv/leuvenB.jpg"]),
    ("aloe", "opencv/aloeL.jpg", ["opencv/aloeR.jpg"]),
    ("aero", "opencv/aero1.jpg", ["opencv/aero3.jpg"]),
    ("box", "opencv/box.png", ["opencv/box_in_scene.png"]),
    ("rubberwhale", "opencv/rubberwhale1.png", ["opencv/rubberwhale2.png"]),
    ("basketball", "opencv/basketball1.png", ["opencv/basketball2.png"]),
    ("motorcycle", "skimage/motorcycle_left.png", ["skimage/motorcycle_right.png"]),
]

SIDE = 512  # longest side of every written image: CPU extraction stays quick


def fit(im, side=SIDE, up=False):
    """Downscales to `side` on the longest side; with `up`, small images are enlarged to it too."""
    w, h = im.size
    s = side / max(w, h) if up else min(1.0, side / max(w, h))
    return im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)


def crop_area(im, frac, rng):
    """A crop of `frac` of the area with the image's aspect ratio, at a random offset."""
    w, h = im.size
    cw, ch = max(1, round(w * frac ** 0.5)), max(1, round(h * frac ** 0.5))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return im.crop((left, top, left + cw, top + ch))


def jpeg(im, q):
    """Re-encodes at quality q, so the artefacts stay when the image is saved again."""
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=q)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def rotated(im, rng):
    # A tilted crop: the rotation's black corners stay partly in, as in Copydays' "strong" set.
    a = rng.choice([-1, 1]) * rng.uniform(25, 65)
    return crop_area(im.rotate(a, Image.BICUBIC, expand=True), rng.uniform(0.25, 0.4), rng)


def perspective(im, rng):
    # The source quad's corners move inwards by up to 35% of each side: a strong oblique view.
    w, h = im.size
    d = lambda n: rng.uniform(0, 0.35) * n
    quad = (d(w), d(h), d(w), h - d(h), w - d(w), h - d(h), w - d(w), d(h))
    out = im.transform((w, h), Image.QUAD, quad, Image.BICUBIC)
    out = out.resize((w, round(h * rng.uniform(0.5, 0.8))), Image.BICUBIC)  # squashed
    return crop_area(out, rng.uniform(0.4, 0.6), rng)


def grey(im, rng, crop=True):
    if crop:
        im = crop_area(im, rng.uniform(0.3, 0.5), rng)
    out = ImageOps.grayscale(im).convert("RGB")
    out = fit(out).filter(ImageFilter.GaussianBlur(rng.uniform(2.5, 4.0)))
    return jpeg(ImageEnhance.Contrast(out).enhance(rng.uniform(0.5, 1.8)), rng.randint(4, 8))


def tinted(im, rng):
    # Hue turned by a third to two thirds of the circle, saturation and brightness changed.
    h, s, v = crop_area(im, rng.uniform(0.2, 0.35), rng).convert("HSV").split()
    shift, gain = rng.randint(80, 170), rng.uniform(1.2, 1.8)
    h = h.point(lambda x: (x + shift) % 256)
    s = s.point(lambda x: min(255, int(x * gain) + 40))
    out = Image.merge("HSV", (h, s, v)).convert("RGB")
    return jpeg(fit(ImageEnhance.Brightness(out).enhance(rng.uniform(0.6, 1.4)), up=True), rng.randint(8, 15))


def mirrored(im, rng):
    out = ImageOps.mirror(crop_area(im, rng.uniform(0.12, 0.25), rng))
    out = out.rotate(rng.uniform(-12, 12), Image.BICUBIC)
    out = fit(ImageEnhance.Contrast(out).enhance(rng.uniform(0.4, 0.7)), up=True)
    return jpeg(out.filter(ImageFilter.GaussianBlur(rng.uniform(1.5, 2.5))), rng.randint(10, 20))


def zoom(im, rng):
    # A small off-centre detail, upscaled: little of the photo's layout survives.
    return fit(crop_area(im, rng.uniform(0.12, 0.2), rng).filter(ImageFilter.GaussianBlur(1.0)))


def combo(im, rng):
    # Cropped once only: two crops would often leave a patch of plain background.
    return grey(perspective(ImageOps.mirror(im), rng), rng, crop=False)


EDITS = {"rot": rotated, "persp": perspective, "grey": grey, "tint": tinted, "mirror": mirrored,
         "zoom": zoom, "combo": combo}


def load(src, rel):
    return Image.open(os.path.join(src, rel)).convert("RGB")


def find(src, rel):
    # foolbox names carry the label after the index; the lists above name the index only.
    d, stem = os.path.split(rel)
    if os.path.exists(os.path.join(src, rel)):
        return rel
    return os.path.join(d, next(n for n in sorted(os.listdir(os.path.join(src, d))) if n.startswith(stem + "_")))


def main(src, bench, queries, gnd_out=None):
    os.makedirs(os.path.join(bench, "var"), exist_ok=True)
    os.makedirs(os.path.join(bench, "views"), exist_ok=True)
    os.makedirs(queries, exist_ok=True)
    qname = "../" + os.path.basename(os.path.normpath(queries))
    imlist, qimlist, gnd, part = [], [], [], []

    def add_db(name, im, up=True):
        # Edited copies are brought to one size (small crops enlarged, as a zoomed copy would
        # be), so every database image is described at the same scale.
        fit(im, up=up).save(os.path.join(bench, name), quality=90)
        imlist.append(name)
        return len(imlist) - 1

    for rel in SOURCES + DISTRACTORS:
        rel = find(src, rel)
        stem = os.path.splitext(os.path.basename(rel))[0]
        rng = random.Random(stem)
        im = load(src, rel)
        kinds = sorted(EDITS)
        rng.shuffle(kinds)
        # Distractors get 5 edits too, so an edit's look is as common among negatives.
        ok = [add_db(f"var/{stem}_{k}.jpg", EDITS[k](im, rng)) for k in kinds[1:6]]
        if rel in [find(src, s) for s in SOURCES]:
            fit(EDITS[kinds[0]](im, rng), up=True).save(os.path.join(queries, f"{stem}_{kinds[0]}.jpg"), quality=90)
            qimlist.append(f"{qname}/{stem}_{kinds[0]}.jpg")
            gnd.append({"ok": ok, "junk": []})
            part.append("variants")

    for name, q, views in VIEWS:
        ext = ".png" if q.startswith("visp/") else ".jpg"
        ok = [add_db(f"views/{name}_{os.path.splitext(os.path.basename(v))[0]}{ext}", load(src, v), up=False) for v in views]
        qfile = f"{name}_{os.path.splitext(os.path.basename(q))[0]}{ext}"
        fit(load(src, q)).save(os.path.join(queries, qfile), quality=90)
        qimlist.append(f"{qname}/{qfile}")
        gnd.append({"ok": ok, "junk": []})
        part.append("views")

    print(f"{len(imlist)} database images under {bench}, {len(qimlist)} queries in {queries} "
          f"({part.count('variants')} edited photos, {part.count('views')} multi-view)")
    if gnd_out:
        about = (
            "Quality benchmark (root data/bench, queries data/bench-queries), made by "
            "scripts/fetch-bench-data.sh + scripts/make-bench-variants.py from real photos in PyPI and "
            f"Debian packages. Queries 0..{part.count('variants') - 1}: a strongly edited copy of a "
            "photo (one of: tilted 25-40% crop, oblique perspective warp, grey + blur + JPEG q4-8, "
            "hue-turned 20-35% crop in JPEG q8-15, mirrored low-contrast blurred 12-25% crop in JPEG q10-20, blurred 12-20% detail, mirror + "
            "warp + grey); ok = 5 other edits of the same photo (the original is not in the "
            f"database); {len(DISTRACTORS)} distractor photos get the same 5 kinds of edits. Queries "
            f"{part.count('variants')}.. are one view of a real scene (ViSP camera sequences sampled far "
            "apart, vlfeat, OpenCV and scikit-image pairs); ok = the other views.")
        with open(gnd_out, "w") as f:
            json.dump({"about": about, "imlist": imlist, "qimlist": qimlist, "gnd": gnd,
                       "parts": part}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:5])
