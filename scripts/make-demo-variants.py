"""Copydays-style variants of real demo photos, the demo ground truth's hard part.

ImageNet features already match the demo's multi-view pairs perfectly, so on its own that ground
truth cannot show what training changes. For each source photo this writes, with a fixed seed:
  DEMO/variants/<stem>_rot.jpg     rotated a quarter turn, then cropped to 70% of its area
  DEMO/variants/<stem>_photo.jpg   washed-out colour, more contrast, darker, blurred, JPEG q12
  QUERIES/<stem>_zoom.jpg          a 35% off-centre crop: the evaluation query
The originals stay where they are (database images, as the variants). The queries go to their
own folder so that training, which reads every image under DEMO, never sees them.

  python3 make-demo-variants.py DEMO QUERIES      # needs Pillow
"""
import os
import random
import sys

from PIL import Image, ImageEnhance, ImageFilter

# Photos (not drawings or test charts) of varied content, larger than 300 px.
SOURCES = [
    "skimage/astronaut.png", "skimage/chelsea.png", "skimage/coffee.png", "skimage/rocket.jpg",
    "sklearn/china.jpg", "sklearn/flower.jpg", "opencv/fruits.jpg", "opencv/baboon.jpg",
    "opencv/building.jpg", "opencv/orange.jpg", "opencv/messi5.jpg", "opencv/home.jpg",
    "opencv/butterfly.jpg", "opencv/HappyFish.jpg", "opencv/squirrel_cls.jpg", "opencv/smarties.png",
]

# Photos whose variants are distractors only: the same edits on other content, so that the
# edit's look alone does not find the positives.
DISTRACTORS = ["opencv/starry_night.jpg", "opencv/apple.jpg", "opencv/stuff.jpg",
    "opencv/board.jpg", "skimage/camera.png", "skimage/coins.png"] + [
    f"foolbox/{n}" for n in sorted(os.listdir(os.path.join(sys.argv[1], "foolbox")))
    if n.startswith("imagenet_")] if len(sys.argv) > 1 else []


def crop_area(im, frac, rng):
    """A crop of `frac` of the area with the image's aspect ratio, at a random offset."""
    w, h = im.size
    cw, ch = max(1, round(w * frac ** 0.5)), max(1, round(h * frac ** 0.5))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return im.crop((left, top, left + cw, top + ch))


def fit(im, side=480):
    w, h = im.size
    s = side / max(w, h)
    return im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)


def main(demo, queries):
    os.makedirs(os.path.join(demo, "variants"), exist_ok=True)
    os.makedirs(queries, exist_ok=True)
    for rel in SOURCES + DISTRACTORS:
        stem = os.path.splitext(os.path.basename(rel))[0]
        rng = random.Random(stem)
        im = Image.open(os.path.join(demo, rel)).convert("RGB")
        rot = crop_area(im.rotate(rng.uniform(35, 55), Image.BICUBIC, expand=True), 0.3, rng)
        fit(rot).save(os.path.join(demo, "variants", f"{stem}_rot.jpg"), quality=90)
        photo = ImageEnhance.Color(crop_area(im, 0.5, rng)).enhance(0.0)
        photo = ImageEnhance.Contrast(photo).enhance(1.6)
        photo = ImageEnhance.Brightness(photo).enhance(0.75)
        photo = fit(photo).filter(ImageFilter.GaussianBlur(3.0))
        photo.save(os.path.join(demo, "variants", f"{stem}_photo.jpg"), quality=6)
        if rel in SOURCES:
            zoom = fit(crop_area(im, 0.15, rng))
            zoom.save(os.path.join(queries, f"{stem}_zoom.jpg"), quality=90)
    print(f"{len(SOURCES)} photos: 2 database variants each under {demo}/variants, a query each in {queries}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
