#!/usr/bin/env python3
"""The CPU backend beside the libraries users already have, same shapes and thread count.

  cpu-peers.py bench [--out target/cpu-peers.json] [--threads T] [--no-pools]
  cpu-peers.py pool BIN N D K [--runs R] [--threads T] [--work DIR] [--before OLD_BIN]
  cpu-peers.py extract BIN IMAGES WEIGHTS [--size S] [--runs R] [--threads T]

bench: times the peers on the shapes of `cargo bench --bench cpu` and writes their median
seconds as {"<group>/<id>": {"<peer>": seconds}}; the bench prints them beside ours:
  gemm/*      numpy A @ B (or B.T), OpenBLAS
  pool/*      numpy GEMM + argpartition, FAISS IndexFlatIP (random unit rows, one run each)
  lite0/*     PyTorch CPU, timm's tf_efficientnet_lite0 (TF SAME padding, as ours), eval
  resnet50/*  PyTorch CPU, torchvision ResNet-50 + GeM + linear 2048, train mode, f + b

pool: the whole `insclr-cu pool` command on random unit descriptors against numpy and FAISS
at full size, runs interleaved (ours, numpy, FAISS, ours, ...); prints one markdown row with
each tool's median and range. --before adds an older insclr-cu binary (a before / after).

extract: the whole `insclr-cu extract` of a folder of photos with EfficientNet-Lite0 (one scale,
thumbnail to S px, GeM, L2) against Pillow decode + thumbnail and timm's tf_efficientnet_lite0
on the same files, one image per forward, runs interleaved; prints one markdown row.

Each peer is skipped with a note when it does not import. Install them outside the project:
  pip install --target /tmp/py numpy faiss-cpu
  pip install --target /tmp/torch torch torchvision timm   (plus Pillow for torchvision)
and put those folders on PYTHONPATH. Thread counts are fixed before the libraries load.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# benches/cpu.rs: GEMMS and POOLS.
GEMMS = [(512, 2048, 2048, True), (512, 2048, 128, True), (64, 3136, 576, False), (512, 49, 4608, False)]
POOLS = [(20000, 2048, 500), (100000, 128, 100)]


def median_time(fn, runs, warmup=1):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def unit_rows(np, n, d, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_pool(np, x, k, blk=2048):
    n = len(x)
    idx = np.empty((n, k), np.int64)
    for s in range(0, n, blk):
        sims = x[s:s + blk] @ x.T
        rows = np.arange(sims.shape[0])
        sims[rows, s + rows] = -np.inf
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        top = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        idx[s:s + blk] = np.take_along_axis(part, order, axis=1)
    return idx


def faiss_module(threads):
    try:
        import faiss
    except ImportError:
        print("note: faiss not importable, skipped", file=sys.stderr)
        return None
    faiss.omp_set_num_threads(threads)
    return faiss


def faiss_pool(faiss, x, k):
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, i = index.search(x, k + 1)
    return i[:, 1:]


def torch_peers(threads, out):
    try:
        import torch
        import torchvision
    except ImportError as e:
        print(f"note: PyTorch not importable ({e}), skipped", file=sys.stderr)
        return
    torch.set_num_threads(threads)
    try:
        import timm

        lite0 = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
        lite0.reset_classifier(0, global_pool="")
        x = torch.randn(1, 3, 512, 512)
        with torch.no_grad():
            out["lite0/forward_eval_1x512"] = {"PyTorch CPU (timm)": median_time(lambda: lite0(x), 15, 3)}
    except ImportError:
        print("note: timm not importable, Lite0 skipped", file=sys.stderr)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(*list(torchvision.models.resnet50().children())[:-2])
            self.fc = torch.nn.Linear(2048, 2048)

        def forward(self, x):
            f = self.body(x).clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3)
            f = torch.nn.functional.normalize(f)
            return torch.nn.functional.normalize(self.fc(f))

    net = Net().train()
    x, g = torch.randn(2, 3, 224, 224), torch.randn(2, 2048) * 1e-3

    def step():
        net.zero_grad(set_to_none=False)
        (net(x) * g).sum().backward()

    out["resnet50/forward_backward_2x224"] = {"PyTorch CPU": median_time(step, 10, 3)}


def bench(a):
    import numpy as np

    out = {}
    rng = np.random.default_rng(0)
    for m, n, k, tb in GEMMS:
        A = rng.uniform(-1, 1, (m, k)).astype(np.float32)
        B = rng.uniform(-1, 1, (n, k) if tb else (k, n)).astype(np.float32)
        fn = (lambda: A @ B.T) if tb else (lambda: A @ B)
        reps = max(1, int(2e9 / (2 * m * n * k)))  # ~2 GFLOP per timing
        t = median_time(lambda: [fn() for _ in range(reps)], 7) / reps
        out[f"gemm/{m}x{n}x{k}{' bt' if tb else ''}"] = {"numpy (OpenBLAS)": t}
    faiss = faiss_module(a.threads)
    for n, d, k in [] if a.no_pools else POOLS:
        x = unit_rows(np, n, d)
        # One run each: a pool takes 20-170 s.
        row = {"numpy GEMM + argpartition": median_time(lambda: numpy_pool(np, x, k), 1, 0)}
        if faiss:
            row["FAISS IndexFlatIP"] = median_time(lambda: faiss_pool(faiss, x, k), 1, 0)
        out[f"pool/{n}x{d} k{k}"] = row
    torch_peers(a.threads, out)
    if a.no_pools and os.path.exists(a.out):
        with open(a.out) as f:
            out = {**{j: p for j, p in json.load(f).items() if j.startswith("pool/")}, **out}
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    for job, peers in out.items():
        for name, t in peers.items():
            print(f"{job}: {name} {t * 1e3:.2f} ms")
    print(f"wrote {a.out}")


def pool(a):
    import numpy as np

    os.makedirs(a.work, exist_ok=True)
    feats = os.path.join(a.work, f"feats_{a.n}x{a.d}.npy")
    if not os.path.exists(feats):
        np.save(feats, unit_rows(np, a.n, a.d))
    x = np.load(feats)

    def ours(binary):
        out = os.path.join(a.work, "pool.npz")
        return lambda: subprocess.run(
            [binary, "--device", "cpu", "pool", "--feats", feats, "--k", str(a.k), "--out", out],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    jobs = [("insclr-cu", ours(a.bin))]
    if a.before:
        jobs.append(("insclr-cu before", ours(a.before)))
    jobs.append(("numpy GEMM + argpartition", lambda: numpy_pool(np, x, a.k)))
    faiss = faiss_module(a.threads)
    if faiss:
        jobs.append(("FAISS IndexFlatIP", lambda: faiss_pool(faiss, x, a.k)))
    label = f"pool {a.n} x {a.d}, k={a.k}, {a.threads} threads, {a.runs} runs"
    print(markdown_row(label, interleaved(jobs, a.runs)))


def interleaved(jobs, runs):
    """Runs the (name, fn) jobs in turn, `runs` times; returns each job's times (s) by name."""
    times = {name: [] for name, _ in jobs}
    for r in range(runs):
        for name, fn in jobs:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            print(f"run {r + 1}: {name} {times[name][-1]:.1f} s", file=sys.stderr)
    return times


def markdown_row(label, times):
    """Each job's median and range, and every other job's median against insclr-cu's."""
    ours = statistics.median(times["insclr-cu"])
    cells = []
    for name, ts in times.items():
        med = statistics.median(ts)
        cells.append(f"{name} {med:.1f} s ({min(ts):.1f}-{max(ts):.1f})"
                     + ("" if name == "insclr-cu" else f", {med / ours:.2f}x our time"))
    return f"| {label} | " + " | ".join(cells) + " |"


def extract(a):
    import numpy as np
    import torch
    import timm
    from PIL import Image

    torch.set_num_threads(a.threads)
    lite0 = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    lite0.reset_classifier(0, global_pool="")
    files = sorted(os.path.join(a.images, f) for f in os.listdir(a.images) if f.lower().endswith(".jpg"))
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)

    def peer():
        out = []
        with torch.no_grad():
            for f in files:
                im = Image.open(f).convert("RGB")
                im.thumbnail((a.size, a.size), Image.LANCZOS)
                x = (np.asarray(im, np.float32) / 255 - mean) / std
                fmap = lite0(torch.from_numpy(x).permute(2, 0, 1)[None])
                d = fmap.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3)
                out.append(torch.nn.functional.normalize(d))
        return out

    cmd = [a.bin, "--device", "cpu", "extract", "--images", a.images, "--out", "/tmp/insclr-peer-extract.npy",
           "--model", "efficientnet-lite0", "--weights", a.weights, "--img-size", str(a.size), "--scales", "1"]
    jobs = [("insclr-cu", lambda: subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.DEVNULL)),
            ("Pillow + PyTorch CPU (timm)", peer)]
    label = f"extract {len(files)} photos, Lite0 at {a.size} px, {a.threads} threads, {a.runs} runs"
    print(markdown_row(label, interleaved(jobs, a.runs)))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="job", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--out", default="target/cpu-peers.json")
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--no-pools", action="store_true", help="skip the pools (about 6 minutes)")
    p = sub.add_parser("pool")
    p.add_argument("bin")
    p.add_argument("n", type=int)
    p.add_argument("d", type=int)
    p.add_argument("k", type=int)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default="/tmp/insclr-peers")
    p.add_argument("--before")
    e = sub.add_parser("extract")
    e.add_argument("bin")
    e.add_argument("images")
    e.add_argument("weights")
    e.add_argument("--size", type=int, default=512)
    e.add_argument("--runs", type=int, default=3)
    e.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ[var] = str(a.threads)
    {"bench": bench, "pool": pool, "extract": extract}[a.job](a)


if __name__ == "__main__":
    main()
