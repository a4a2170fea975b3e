#!/usr/bin/env python3
"""Candidate pool on the CPU: insclr-cu beside the libraries users already have, on the same
random unit descriptors and the same thread count, runs interleaved (ours, numpy, FAISS, ours,
...). Prints one markdown row per job: the median and range of each tool's wall times.

  cpu-peers.py pool BIN N D K [--runs R] [--threads T] [--work DIR] [--before OLD_BIN]

--before adds an older insclr-cu binary to the interleaving (a before / after of a change).

Peers, each skipped with a note when not importable:
  numpy  X @ X.T in blocks of 2048 rows (OpenBLAS), self masked, argpartition + sort of the top k
  faiss  IndexFlatIP, search of k + 1 neighbours, self dropped
Install them outside the project, e.g. `pip install --target /tmp/py numpy faiss-cpu` and
PYTHONPATH=/tmp/py. The thread count is fixed before numpy / FAISS load (OPENBLAS / OMP).
"""
import argparse
import os
import statistics
import subprocess
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("job", choices=["pool"])
    ap.add_argument("bin")
    ap.add_argument("n", type=int)
    ap.add_argument("d", type=int)
    ap.add_argument("k", type=int)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/insclr-peers")
    ap.add_argument("--before")
    a = ap.parse_args()
    t = str(a.threads)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ[var] = t
    import numpy as np

    os.makedirs(a.work, exist_ok=True)
    feats = os.path.join(a.work, f"feats_{a.n}x{a.d}.npy")
    if not os.path.exists(feats):
        x = np.random.default_rng(0).standard_normal((a.n, a.d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        np.save(feats, x)
    x = np.load(feats)

    def ours(binary):
        out = os.path.join(a.work, "pool.npz")
        return lambda: subprocess.run(
            [binary, "--device", "cpu", "pool", "--feats", feats, "--k", str(a.k), "--out", out],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def numpy_pool():
        n, k, blk = len(x), a.k, 2048
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

    jobs = [("insclr-cu", ours(a.bin))]
    if a.before:
        jobs.append(("insclr-cu before", ours(a.before)))
    jobs.append(("numpy GEMM + argpartition", numpy_pool))
    try:
        import faiss

        faiss.omp_set_num_threads(a.threads)

        def faiss_pool():
            index = faiss.IndexFlatIP(a.d)
            index.add(x)
            _, i = index.search(x, a.k + 1)
            return i[:, 1:]

        jobs.append(("FAISS IndexFlatIP", faiss_pool))
    except ImportError:
        print("note: faiss not importable, skipped", file=sys.stderr)
    times = {name: [] for name, _ in jobs}
    for r in range(a.runs):
        for name, fn in jobs:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            print(f"run {r + 1}: {name} {times[name][-1]:.1f} s", file=sys.stderr)
    ours_med = statistics.median(times["insclr-cu"])
    cells = []
    for name, ts in times.items():
        med = statistics.median(ts)
        cells.append(f"{name} {med:.1f} s ({min(ts):.1f}-{max(ts):.1f})"
                     + ("" if name == "insclr-cu" else f", {med / ours_med:.2f}x our time"))
    print(f"| pool {a.n} x {a.d}, k={a.k}, {a.threads} threads, {a.runs} runs | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
