//! Streaming ranking by dot-product similarity: the database is visited in tiles, each tile's
//! `queries x tile` score block is one [`Backend::matmul`], and only per-query state survives a
//! tile (a top-k buffer, or counters). No `N_q x N_db` matrix is ever held, so a million-image
//! database ranks in the memory of one tile.
//!
//! Ties are broken by the lower database index (the original sorts with numpy's unstable
//! quicksort, so its tie order is arbitrary; spec 6.1, G25).

use crate::backend::{Backend, MatMul};
use anyhow::{bail, Result};
use std::cmp::Ordering;

/// Tile sizes of the streaming loops.
#[derive(Clone, Copy, Debug)]
pub struct Tiling {
    /// Queries per matmul.
    pub query_block: usize,
    /// Database rows per matmul.
    pub db_tile: usize,
}

impl Default for Tiling {
    /// 256 queries x 16384 database rows: a 16 MiB score block.
    fn default() -> Self {
        Tiling {
            query_block: 256,
            db_tile: 16384,
        }
    }
}

/// Descriptor matrices of one ranking: `nq x dim` queries and `ndb x dim` database rows.
#[derive(Clone, Copy)]
pub struct Pair<'a> {
    /// Row-major `nq x dim` query descriptors.
    pub queries: &'a [f32],
    /// Row-major `ndb x dim` database descriptors.
    pub db: &'a [f32],
    /// Descriptor length.
    pub dim: usize,
}

impl Pair<'_> {
    fn sizes(&self) -> Result<(usize, usize)> {
        let d = self.dim;
        if d == 0 || self.queries.len() % d != 0 || self.db.len() % d != 0 {
            bail!(
                "descriptors: dim {d} does not divide the query ({}) and database ({}) element counts; both must be N x {d}",
                self.queries.len(),
                self.db.len()
            );
        }
        Ok((self.queries.len() / d, self.db.len() / d))
    }
}

/// True when database row `a` with score `sa` ranks before row `b` with score `sb`.
#[inline]
fn before(sa: f32, a: usize, sb: f32, b: usize) -> bool {
    sa > sb || (sa == sb && a < b)
}

fn cmp_desc(a: &(usize, f32), b: &(usize, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Calls `visit(q0, j0, scores, nqb, nt)` for every tile: `scores` is the row-major
/// `nqb x nt` similarity block of queries `q0..q0+nqb` against database rows `j0..j0+nt`.
pub fn for_each_tile(
    be: &dyn Backend,
    pair: Pair,
    tiling: Tiling,
    mut visit: impl FnMut(usize, usize, &[f32], usize, usize),
) -> Result<()> {
    let (nq, ndb) = pair.sizes()?;
    let d = pair.dim;
    let (qb, tb) = (tiling.query_block.max(1), tiling.db_tile.max(1));
    let qbufs = (0..nq)
        .step_by(qb)
        .map(|q0| {
            let n = qb.min(nq - q0);
            Ok((q0, n, be.upload(&pair.queries[q0 * d..(q0 + n) * d])?))
        })
        .collect::<Result<Vec<_>>>()?;
    for j0 in (0..ndb).step_by(tb) {
        let nt = tb.min(ndb - j0);
        let dbuf = be.upload(&pair.db[j0 * d..(j0 + nt) * d])?;
        for (q0, n, qbuf) in &qbufs {
            let mut s = be.zeros(n * nt)?;
            be.matmul(qbuf, &dbuf, &mut s, MatMul::new(*n, nt, d).tb())?;
            let host = be.download(&s)?;
            visit(*q0, j0, &host, *n, nt);
        }
    }
    Ok(())
}

/// The `k` most similar database rows of each query, best first: `(db index, score)`.
pub fn top_k(
    be: &dyn Backend,
    pair: Pair,
    k: usize,
    tiling: Tiling,
) -> Result<Vec<Vec<(usize, f32)>>> {
    let (nq, ndb) = pair.sizes()?;
    let k = k.min(ndb);
    let mut best: Vec<Vec<(usize, f32)>> = vec![Vec::with_capacity(2 * k + 1); nq];
    if k == 0 {
        return Ok(best);
    }
    for_each_tile(be, pair, tiling, |q0, j0, s, nqb, nt| {
        for qi in 0..nqb {
            let row = &s[qi * nt..(qi + 1) * nt];
            let buf = &mut best[q0 + qi];
            for (jj, &v) in row.iter().enumerate() {
                buf.push((j0 + jj, v));
                if buf.len() >= 2 * k.max(64) {
                    buf.select_nth_unstable_by(k - 1, cmp_desc);
                    buf.truncate(k);
                }
            }
        }
    })?;
    for b in &mut best {
        b.sort_unstable_by(cmp_desc);
        b.truncate(k);
    }
    Ok(best)
}

/// For each query, the 0-based rank in the full ranking of each database row in `targets[q]`,
/// in the same order: how many rows score higher (ties: lower index first). Two streaming
/// passes (gather the targets' scores, then count), so the full ranking is never materialised.
pub fn positions(
    be: &dyn Backend,
    pair: Pair,
    targets: &[Vec<usize>],
    tiling: Tiling,
) -> Result<Vec<Vec<usize>>> {
    let (nq, ndb) = pair.sizes()?;
    if targets.len() != nq {
        bail!("{} target lists for {nq} queries", targets.len());
    }
    if let Some((q, &t)) = targets
        .iter()
        .enumerate()
        .find_map(|(q, t)| t.iter().find(|&&i| i >= ndb).map(|i| (q, i)))
    {
        bail!("query {q}: target database index {t} is out of range (database has {ndb} rows)");
    }
    // Pass 1: the targets' scores, taken from the same matmul tiles as the counting pass so
    // that a target compares equal to itself.
    let mut tscore: Vec<Vec<f32>> = targets.iter().map(|t| vec![0.0; t.len()]).collect();
    let lookup: Vec<Vec<(usize, usize)>> = targets
        .iter()
        .map(|t| {
            let mut v: Vec<(usize, usize)> = t.iter().enumerate().map(|(k, &i)| (i, k)).collect();
            v.sort_unstable();
            v
        })
        .collect();
    for_each_tile(be, pair, tiling, |q0, j0, s, nqb, nt| {
        for qi in 0..nqb {
            let q = q0 + qi;
            let lo = lookup[q].partition_point(|&(i, _)| i < j0);
            for &(i, k) in lookup[q][lo..].iter().take_while(|&&(i, _)| i < j0 + nt) {
                tscore[q][k] = s[qi * nt + (i - j0)];
            }
        }
    })?;
    // Pass 2: every database row adds one to the rank of each target it beats. Targets sorted
    // by score ascending; a row beats a prefix of them (strictly lower scores) plus the tied
    // targets with a larger index.
    let sorted: Vec<Vec<(f32, usize, usize)>> = (0..nq)
        .map(|q| {
            let mut v: Vec<(f32, usize, usize)> = targets[q]
                .iter()
                .enumerate()
                .map(|(k, &i)| (tscore[q][k], i, k))
                .collect();
            v.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            v
        })
        .collect();
    let mut diff: Vec<Vec<i64>> = sorted.iter().map(|v| vec![0; v.len() + 1]).collect();
    let mut tie_hits: Vec<Vec<usize>> = sorted.iter().map(|v| vec![0; v.len()]).collect();
    for_each_tile(be, pair, tiling, |q0, j0, s, nqb, nt| {
        for qi in 0..nqb {
            let q = q0 + qi;
            let ts = &sorted[q];
            if ts.is_empty() {
                continue;
            }
            let (d, ties) = (&mut diff[q], &mut tie_hits[q]);
            for (jj, &v) in s[qi * nt..(qi + 1) * nt].iter().enumerate() {
                let below = ts.partition_point(|t| t.0 < v);
                d[0] += 1;
                d[below] -= 1;
                let mut m = below;
                while m < ts.len() && ts[m].0 == v {
                    if before(v, j0 + jj, ts[m].0, ts[m].1) {
                        ties[m] += 1;
                    }
                    m += 1;
                }
            }
        }
    })?;
    Ok((0..nq)
        .map(|q| {
            let mut out = vec![0usize; targets[q].len()];
            let mut run = 0i64;
            for (m, &(_, _, k)) in sorted[q].iter().enumerate() {
                run += diff[q][m];
                out[k] = run as usize + tie_hits[q][m];
            }
            out
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use crate::rng::Rng;

    fn full_ranking(q: &[f32], db: &[f32], d: usize) -> Vec<usize> {
        let s: Vec<f32> = db
            .chunks(d)
            .map(|r| r.iter().zip(q).map(|(a, b)| a * b).sum())
            .collect();
        let mut idx: Vec<usize> = (0..s.len()).collect();
        idx.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
        idx
    }

    #[test]
    fn streaming_topk_and_positions_match_a_full_sort() {
        let be = CpuBackend::new();
        let mut rng = Rng::new(11);
        let (nq, ndb, d) = (7, 203, 5);
        let q = rng.vec_f32(nq * d, -1.0, 1.0);
        let mut db = rng.vec_f32(ndb * d, -1.0, 1.0);
        // Exact duplicates create ties that must resolve by index.
        let row3 = db[3 * d..4 * d].to_vec();
        db[100 * d..101 * d].copy_from_slice(&row3);
        db[17 * d..18 * d].copy_from_slice(&row3);
        let pair = Pair {
            queries: &q,
            db: &db,
            dim: d,
        };
        let tiling = Tiling {
            query_block: 3,
            db_tile: 19,
        };
        let top = top_k(&be, pair, 25, tiling).unwrap();
        let mut targets = Vec::new();
        for qi in 0..nq {
            let full = full_ranking(&q[qi * d..(qi + 1) * d], &db, d);
            let got: Vec<usize> = top[qi].iter().map(|x| x.0).collect();
            assert_eq!(got, full[..25].to_vec(), "query {qi}");
            let t = vec![3, 100, 17, full[0], full[202], 50];
            targets.push(t);
        }
        let pos = positions(&be, pair, &targets, tiling).unwrap();
        for qi in 0..nq {
            let full = full_ranking(&q[qi * d..(qi + 1) * d], &db, d);
            for (k, &t) in targets[qi].iter().enumerate() {
                let want = full.iter().position(|&i| i == t).unwrap();
                assert_eq!(pos[qi][k], want, "query {qi} target {t}");
            }
        }
        assert!(positions(&be, pair, &vec![vec![999]; 7], tiling).is_err());
    }
}
