# Writes tests/data/revisited-numpy/: a revisitop-structured ground truth pickled by real numpy
# (protocols 2, 4, 5; numpy int64 arrays, bbx as array or list), random unit descriptors, and
# expected.txt, the table of an independent numpy re-implementation of revisitop compute_map.
#   PYTHONPATH=<numpy> python3 scripts/gen-revisited-fixture.py   (run inside that folder)
import numpy as np, pickle, sys
rng = np.random.default_rng(0)
ndb, nq, d = 300, 12, 16
imlist = [f"db{i:04d}" for i in range(ndb)]
qimlist = [f"q{i:02d}" for i in range(nq)]
X = rng.standard_normal((ndb, d)).astype(np.float32); X /= np.linalg.norm(X, axis=1, keepdims=True)
Q = rng.standard_normal((nq, d)).astype(np.float32); Q /= np.linalg.norm(Q, axis=1, keepdims=True)
gnd = []
for i in range(nq):
    perm = rng.permutation(ndb)
    ne, nh, nj = rng.integers(0, 6), rng.integers(0, 6), rng.integers(0, 4)
    if i == 0: ne = 0  # a query empty under Easy
    # make positives somewhat similar to the query
    for j in perm[:ne+nh]:
        X[j] = Q[i] + 0.9 * X[j]; X[j] /= np.linalg.norm(X[j])
    gnd.append({"bbx": np.array([1.5, 2.5, 100.0, 80.0]) if i % 2 else [3.0, 4.0, 50.5, 60.0],
                "easy": perm[:ne].astype(np.int64), "hard": perm[ne:ne+nh].astype(np.int64),
                "junk": perm[ne+nh:ne+nh+nj].astype(np.int64)})
g = {"imlist": imlist, "qimlist": qimlist, "gnd": gnd}
for proto in (2, 4, 5):
    pickle.dump(g, open(f"gnd_p{proto}.pkl", "wb"), protocol=proto)
np.save("db.npy", np.ascontiguousarray(X))
np.save("query.npy", Q)

# Independent revisitop-style scoring (full argsort, stable tie order irrelevant for random data).
def compute_ap(ranks, nres):
    ap = 0.0; rs = 1.0 / nres
    for j, r in enumerate(ranks):
        p0 = 1.0 if r == 0 else j / r
        p1 = (j + 1) / (r + 1)
        ap += (p0 + p1) * rs / 2.0
    return ap
def compute_map(ranks, gnd, kappas=(1, 5, 10)):
    m = 0.0; nq = len(gnd); aps = np.zeros(nq); pr = np.zeros(len(kappas)); nempty = 0
    for i in range(nq):
        qg = np.array(gnd[i]["ok"])
        if qg.shape[0] == 0:
            aps[i] = np.nan; nempty += 1; continue
        qj = np.array(gnd[i]["junk"])
        pos = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qg)]
        junk = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qj)]
        k = 0; ij = 0
        if len(junk):
            ip = 0
            while ip < len(pos):
                while ij < len(junk) and pos[ip] > junk[ij]:
                    k += 1; ij += 1
                pos[ip] -= k; ip += 1
        ap = compute_ap(pos, len(qg)); m += ap; aps[i] = ap
        pos = pos + 1
        for j, kk in enumerate(kappas):
            kq = min(max(pos), kk); pr[j] += (pos <= kq).sum() / kq
    return m / (nq - nempty), pr / (nq - nempty)
ranks = np.argsort(-(X @ Q.T), axis=0)
for name, f in [("Easy", lambda g: (g["easy"], np.concatenate([g["junk"], g["hard"]]))),
                ("Medium", lambda g: (np.concatenate([g["easy"], g["hard"]]), g["junk"])),
                ("Hard", lambda g: (g["hard"], np.concatenate([g["junk"], g["easy"]])))]:
    gg = [dict(zip(("ok", "junk"), f(x))) for x in gnd]
    mAP, mP = compute_map(ranks, gg)
    print(f"{name:<8} {100*mAP:7.2f} {100*mP[0]:7.2f} {100*mP[1]:7.2f} {100*mP[2]:7.2f}")
