#!/usr/bin/env python3
# The 1x1 and channels-last forwards and stride-1 data gradients of an `insclr-cu plan` listing (H200:
# 132 SMs, 989 TFLOP/s bf16, 495 TF32; model output, no GPU): their tensor work as the tiles
# compute it (useful FLOPs x the pixel columns the grid covers / the useful ones), and a wave model
# in which every block takes one tile's time at its multiprocessor's share of the peak:
# ceil(blocks / slots) x slots x tile FLOPs / peak. Beside it the same with one product per image
# (ceil(hw / 128) tiles an image, the grid before 2026-12-08's pixel tiles across images).
#   insclr-cu plan --model resnet101 --img-size 448 --batch 64 --precision bf16 | python3 scripts/plan-tiles.py
import sys, re, math

peak = {"bf16": 989e12, "tf32": 495e12}
SMS = 132
u = t_old = t_now = 0.0
slot = {"old": 0.0, "now": 0.0}  # a wave of every resident block, each at its slot's share of the peak
sm = {"old": 0.0, "now": 0.0}  # a block alone on its multiprocessor at the multiprocessor's share
for line in sys.stdin:
    f = line.split()
    if len(f) < 15 or not f[0].isdigit(): continue
    k = f[1]
    if not re.match(r"conv2d_(nhwc|1x1)_(fwd|bwd_data)", k) or "phase" in k: continue
    grid = [int(v) for v in f[2].split("x")] + [1, 1]
    blk_sm = int(f[6]); gflop = float(f[10]) * 1e9
    m = re.search(r"(\d+)x(\d+)x(\d+)x(\d+) -> (\d+) k(\d+) s(\d+)", line)
    n, c, h, w, co, kk, st = map(int, m.groups())
    hw = math.ceil(h / st) * math.ceil(w / st) if "fwd" in k else h * w
    p = peak[k.rsplit("_", 1)[1]]
    slots = SMS * blk_sm
    for (gx, gz, when) in [(grid[0], grid[2], "now"), (math.ceil(hw / 128), n, "old")]:
        blocks = gx * grid[1] * gz
        work = gflop * gx * 128 * gz / (n * hw)
        tile = work / blocks
        slot[when] += math.ceil(blocks / slots) * slots * tile / p
        # blocks share a multiprocessor's peak: the busiest one holds ceil(blocks / SMS)
        sm[when] += math.ceil(blocks / SMS) * tile / (p / SMS)
        if when == "now": t_now += work
        else: t_old += work
    u += gflop
print(f"tensor work: useful {u/1e12:.3f} TFLOP; tiles per image {t_old/1e12:.3f} ({t_old/u:.3f}x), spanning {t_now/1e12:.3f} ({t_now/u:.3f}x)")
print(f"  waves of slots (each block its slot's share of the peak): {slot['old']*1e3:.3f} -> {slot['now']*1e3:.3f} ms")
print(f"  busiest multiprocessor (its blocks share its peak): {sm['old']*1e3:.3f} -> {sm['now']*1e3:.3f} ms")
