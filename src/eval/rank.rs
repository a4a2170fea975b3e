//! Retrieval ranking by dot-product similarity, on the streaming search of [`crate::knn`]:
//! the database is visited in tiles, each `queries x tile` score block is one
//! `Backend::matmul`, and only per-query state survives a tile (a top-k, or counters). No
//! `N_q x N_db` matrix is ever held, so a million-image database ranks in the memory of one tile.
//!
//! Ties are broken by the lower database index (the original sorts with numpy's unstable
//! quicksort, so its tie order is arbitrary; spec 6.1, G25).

use crate::backend::Backend;
use crate::knn::{self, for_each_tile, Exclude};
use anyhow::{bail, Result};

pub use crate::knn::{Pair, Tiling};

/// True when database row `a` with score `sa` ranks before row `b` with score `sb`.
#[inline]
fn before(sa: f32, a: usize, sb: f32, b: usize) -> bool {
    sa > sb || (sa == sb && a < b)
}

/// The `k` most similar database rows of each query, best first: `(db index, score)`.
pub fn top_k(
    be: &dyn Backend,
    pair: Pair,
    k: usize,
    tiling: Tiling,
) -> Result<Vec<Vec<(usize, f32)>>> {
    let (nq, _) = pair.sizes()?;
    let nb = knn::top_k(be, pair, k, Exclude::Nothing, tiling, &mut |_| {})?;
    Ok((0..nq)
        .map(|q| {
            nb.indices(q)
                .iter()
                .zip(nb.scores(q))
                .map(|(&j, &s)| (j as usize, s))
                .collect()
        })
        .collect())
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
        let be = crate::backend::cpu();
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
            ..Tiling::default()
        };
        let top = top_k(be, pair, 25, tiling).unwrap();
        let mut targets = Vec::new();
        for qi in 0..nq {
            let full = full_ranking(&q[qi * d..(qi + 1) * d], &db, d);
            let got: Vec<usize> = top[qi].iter().map(|x| x.0).collect();
            assert_eq!(got, full[..25].to_vec(), "query {qi}");
            let t = vec![3, 100, 17, full[0], full[202], 50];
            targets.push(t);
        }
        let pos = positions(be, pair, &targets, tiling).unwrap();
        for qi in 0..nq {
            let full = full_ranking(&q[qi * d..(qi + 1) * d], &db, d);
            for (k, &t) in targets[qi].iter().enumerate() {
                let want = full.iter().position(|&i| i == t).unwrap();
                assert_eq!(pos[qi][k], want, "query {qi} target {t}");
            }
        }
        assert!(positions(be, pair, &vec![vec![999]; 7], tiling).is_err());
    }
}
