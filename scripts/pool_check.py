#!/usr/bin/env python3
"""Make random unit descriptors, or check a candidate pool against brute force on sampled rows.

  pool_check.py make  FEATS.npy N D [--seed S]
  pool_check.py check FEATS.npy POOL.npz [--rows R] [--seed S]

check: for R random rows, exact float64 scores against all rows, self removed, sorted by
(score desc, index asc); the pool's similarities must match within 1e-5 and its indices may
differ only where the two scores tie within 1e-6. Exit status 1 on any mismatch.
"""
import argparse
import sys

import numpy as np


def make(a):
    rng = np.random.default_rng(a.seed)
    x = rng.standard_normal((a.n, a.d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.save(a.feats, x.astype(np.float32))
    print(f"wrote {a.feats}: {a.n} x {a.d} unit float32 rows (seed {a.seed})")


def check(a):
    f = np.load(a.feats)
    p = np.load(a.pool)
    nb, sim = p["neighbor"], p["similarity"]
    n, k = nb.shape
    assert nb.dtype == np.int64 and sim.dtype == np.float32, (nb.dtype, sim.dtype)
    assert n == f.shape[0], f"pool has {n} rows, features {f.shape[0]}"
    rows = np.random.default_rng(a.seed).choice(n, size=min(a.rows, n), replace=False)
    f64 = f.astype(np.float64)
    bad = 0
    max_sim_err = 0.0
    idx_diff = 0
    for i in rows:
        s = f64 @ f64[i]
        s[i] = -np.inf
        order = np.lexsort((np.arange(n), -s))[:k]
        if i in nb[i]:
            print(f"row {i}: contains itself")
            bad += 1
        err = np.abs(sim[i].astype(np.float64) - s[order]).max()
        max_sim_err = max(max_sim_err, err)
        diff = nb[i] != order
        idx_diff += int(diff.sum())
        ties_ok = np.all(np.abs(s[nb[i][diff]] - s[order][diff]) < 1e-6)
        if err > 1e-5 or not ties_ok:
            print(f"row {i}: max similarity error {err:.3g}, {diff.sum()} index differences")
            bad += 1
    print(
        f"checked {len(rows)} rows x k={k}: max |similarity - brute| = {max_sim_err:.3g}, "
        f"{idx_diff} index differences (ties only), {bad} bad rows"
    )
    return 1 if bad else 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("feats")
    m.add_argument("n", type=int)
    m.add_argument("d", type=int)
    m.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("check")
    c.add_argument("feats")
    c.add_argument("pool")
    c.add_argument("--rows", type=int, default=200)
    c.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.cmd == "make":
        make(a)
        return 0
    return check(a)


if __name__ == "__main__":
    sys.exit(main())
