//! Re-ranking by spatial verification: each image's top `T` neighbours (a candidate pool's row,
//! a query's results) are verified against it on the backend (`backend::verify`), and the ones
//! with at least `min_inliers` inliers move to the front, most inliers first; the rest keep
//! their global order behind them. Ties in inliers keep the global order, so the global
//! similarity breaks them, and a list where nothing verifies is unchanged.

use crate::backend::verify::PairResult;
use crate::backend::{Backend, Buf, DType, Verify, VerifyFeatures, VerifyOut};
use crate::eval::local::LocalFeatures;
use crate::mining::pool::CandidatePool;
use anyhow::{bail, Result};

/// Pairs per kernel launch: enough blocks to fill a GPU many times over, few enough that the
/// results of one call are a small buffer and progress moves.
pub const PAIRS_PER_CALL: usize = 8192;

/// How lists are re-ranked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rerank {
    /// Neighbours verified per list.
    pub top: usize,
    /// Inliers a neighbour needs to move up (fewer are chance agreements of random matches).
    pub min_inliers: i32,
    pub verify: Verify,
}

impl Rerank {
    /// The defaults (docs/verify.md says how they were chosen), for descriptors of `dim`.
    pub fn new(top: usize, dim: usize) -> Rerank {
        Rerank {
            top,
            min_inliers: DEFAULT_MIN_INLIERS,
            verify: Verify {
                dim,
                ..Verify::default()
            },
        }
    }
}

/// Inliers a neighbour needs by default.
pub const DEFAULT_MIN_INLIERS: i32 = 8;

/// Local features uploaded to a backend once, for many calls of [`OnBackend::verify`].
pub struct OnBackend<'a> {
    local: &'a LocalFeatures,
    desc: Buf,
    desc_scale: Buf,
    xy: Buf,
}

impl<'a> OnBackend<'a> {
    pub fn new(be: &dyn Backend, local: &'a LocalFeatures) -> Result<Self> {
        let xy: Vec<f32> = local.xy.iter().flatten().copied().collect();
        Ok(OnBackend {
            local,
            desc: be.upload(&local.desc)?,
            desc_scale: be.upload(&local.desc_scale)?,
            xy: be.upload(&xy)?,
        })
    }

    /// Verifies `pairs` (image indices) on `be`, [`PAIRS_PER_CALL`] at a time, calling
    /// `done(k)` after each call with the pairs it finished.
    pub fn verify(
        &self,
        be: &dyn Backend,
        pairs: &[[u32; 2]],
        s: Verify,
        done: &mut dyn FnMut(usize),
    ) -> Result<Vec<PairResult>> {
        if s.dim != self.local.dim {
            bail!(
                "verification settings for {}-d descriptors, local features of {}",
                s.dim,
                self.local.dim
            );
        }
        let feats = VerifyFeatures {
            desc: &self.desc,
            desc_scale: &self.desc_scale,
            xy: &self.xy,
            offsets: &self.local.offsets,
        };
        let mut out = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunks(PAIRS_PER_CALL) {
            let n = chunk.len();
            let mut matches = be.zeros(DType::I32, n)?;
            let mut inliers = be.zeros(DType::I32, n)?;
            let mut model = be.zeros(DType::F32, 4 * n)?;
            be.verify(
                &feats,
                chunk,
                &mut VerifyOut {
                    matches: &mut matches,
                    inliers: &mut inliers,
                    model: &mut model,
                },
                s,
            )?;
            let (m, i, md): (Vec<i32>, Vec<i32>, Vec<f32>) = (
                be.download(&matches)?,
                be.download(&inliers)?,
                be.download(&model)?,
            );
            out.extend((0..n).map(|p| PairResult {
                matches: m[p],
                inliers: i[p],
                model: [md[4 * p], md[4 * p + 1], md[4 * p + 2], md[4 * p + 3]],
            }));
            done(n);
        }
        Ok(out)
    }
}

/// Verifies `pairs` (image indices of `l`) on `be` ([`OnBackend::verify`]).
pub fn verify_pairs(
    be: &dyn Backend,
    l: &LocalFeatures,
    pairs: &[[u32; 2]],
    s: Verify,
    done: &mut dyn FnMut(usize),
) -> Result<Vec<PairResult>> {
    OnBackend::new(be, l)?.verify(be, pairs, s, done)
}

/// The new order of a list whose entries have `inliers` (in the list's global order): the
/// positions of the entries with at least `min_inliers`, most first, then the others; ties in
/// global order.
pub fn reorder(inliers: &[i32], min_inliers: i32) -> Vec<usize> {
    let key = |i: usize| {
        if inliers[i] >= min_inliers {
            inliers[i]
        } else {
            0
        }
    };
    let mut order: Vec<usize> = (0..inliers.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(key(i)), i));
    order
}

/// `pool` with each row's first `t` neighbours in the [`reorder`] of their `inliers`
/// (`pool.n x t`, row-major; similarities move with their neighbours); also how many rows
/// changed order and how many have a first neighbour with `min_inliers`.
pub fn rerank_pool(
    pool: &CandidatePool,
    inliers: &[i32],
    t: usize,
    min_inliers: i32,
) -> (CandidatePool, usize, usize) {
    let mut out = pool.clone();
    let (mut reordered, mut first_verified) = (0, 0);
    for i in 0..pool.n {
        let order = reorder(&inliers[i * t..(i + 1) * t], min_inliers);
        reordered += order.iter().enumerate().any(|(a, &b)| a != b) as usize;
        first_verified += order
            .first()
            .is_some_and(|&f| inliers[i * t + f] >= min_inliers) as usize;
        for (dst, &src) in order.iter().enumerate() {
            out.neighbor[i * pool.k + dst] = pool.neighbor[i * pool.k + src];
            out.similarity[i * pool.k + dst] = pool.similarity[i * pool.k + src];
        }
    }
    (out, reordered, first_verified)
}

/// Re-ranks each query's list `lists[q]` (database indices, best first): its first `r.top`
/// entries are verified against the query (`queries` image q, `db` image j) and reordered; the
/// rest stay. Returns the new lists and the pairs verified.
pub fn rerank_lists(
    be: &dyn Backend,
    queries: &LocalFeatures,
    db: &LocalFeatures,
    lists: &[Vec<usize>],
    r: &Rerank,
    done: &mut dyn FnMut(usize),
) -> Result<Vec<Vec<usize>>> {
    if lists.len() != queries.images() {
        bail!(
            "{} result lists but local features of {} queries",
            lists.len(),
            queries.images()
        );
    }
    let mut both = queries.clone();
    both.append(db)?;
    let nq = queries.images();
    let mut pairs = Vec::new();
    for (q, list) in lists.iter().enumerate() {
        for &j in list.iter().take(r.top) {
            if j >= db.images() {
                bail!(
                    "result {j} of query {q} has no local features (the database's file holds {})",
                    db.images()
                );
            }
            pairs.push([q as u32, (nq + j) as u32]);
        }
    }
    let found = verify_pairs(be, &both, &pairs, r.verify, done)?;
    let mut at = 0;
    Ok(lists
        .iter()
        .map(|list| {
            let t = list.len().min(r.top);
            let inliers: Vec<i32> = found[at..at + t].iter().map(|f| f.inliers).collect();
            at += t;
            reorder(&inliers, r.min_inliers)
                .into_iter()
                .map(|p| list[p])
                .chain(list[t..].iter().copied())
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_neighbours_move_up_and_the_rest_keep_their_order() {
        assert_eq!(reorder(&[0, 9, 3, 20, 9], 8), vec![3, 1, 4, 0, 2]);
        assert_eq!(
            reorder(&[5, 4, 3], 8),
            vec![0, 1, 2],
            "nothing verified: unchanged"
        );
        assert_eq!(reorder(&[], 8), Vec::<usize>::new());
    }
}
