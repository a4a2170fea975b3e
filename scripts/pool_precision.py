#!/usr/bin/env python3
"""Precision of a candidate pool on the quality benchmark: for every edited copy (data/bench/var,
named PHOTO_EDIT.jpg), the share of its top 1 / 3 / 5 neighbours that are copies of the same
photo, and the mean over those images. No numpy needed.

  pool_precision.py POOL.npz LIST.txt      # LIST: the .txt `insclr-cu extract` wrote
"""
import ast
import struct
import sys
import zipfile
from pathlib import Path


def read_npy(raw):
    assert raw[:6] == b"\x93NUMPY", "not an .npy"
    hlen, at = (struct.unpack("<H", raw[8:10])[0], 10) if raw[6] == 1 else (struct.unpack("<I", raw[8:12])[0], 12)
    head = ast.literal_eval(raw[at:at + hlen].decode())
    assert head["descr"] in ("<i8", "|i8"), head
    shape = head["shape"]
    data = struct.unpack(f"<{shape[0] * shape[1]}q", raw[at + hlen:])
    return [list(data[r * shape[1]:(r + 1) * shape[1]]) for r in range(shape[0])]


def main():
    pool, listing = sys.argv[1], sys.argv[2]
    with zipfile.ZipFile(pool) as z:
        nb = read_npy(z.read("neighbor.npy"))
    paths = [Path(line.strip()) for line in open(listing) if line.strip()]
    assert len(paths) == len(nb), f"{len(paths)} images but the pool has {len(nb)} rows"
    photo = [p.stem.rsplit("_", 1)[0] if p.parent.name == "var" else None for p in paths]
    for k in (1, 3, 5):
        rows = [i for i, ph in enumerate(photo) if ph is not None]
        prec = [sum(photo[j] == photo[i] for j in nb[i][:k]) / k for i in rows]
        print(f"precision@{k}: {100 * sum(prec) / len(prec):.1f}% over {len(rows)} edited copies")


if __name__ == "__main__":
    main()
