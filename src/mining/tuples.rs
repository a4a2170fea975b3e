//! Training tuples, the anchor sampler and the batch layout (spec 4.2).
//!
//! A tuple is an anchor `a` and its top-K pool neighbours, all labelled `a + 1`. A batch of B
//! anchors is laid out anchors first, then each anchor's K neighbours in anchor order, as the
//! original's collate + concatenation does. No deduplication (trap G5): an image may appear
//! several times in a batch, under different labels.
//!
//! Randomness (trap G25): the original shuffles with Python's `random.shuffle` (seed 42); the
//! shuffle here is a seeded Fisher-Yates on [`Rng`], reproducible but not bit-identical.

use super::pool::CandidatePool;
use crate::rng::Rng;
use anyhow::{bail, Result};

/// Neighbours per tuple in every shipped config (`NEIGHBOR.K`).
pub const NEIGHBOR_K: usize = 3;

/// The label of every member of anchor `a`'s tuple (labels start at 1; <= 0 means rejected).
pub fn tuple_label(a: usize) -> i64 {
    a as i64 + 1
}

/// One step's images: dataset indices and pseudo-labels in the original's batch order.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Anchors (B).
    pub anchors: Vec<usize>,
    /// Neighbours per anchor (K).
    pub k: usize,
    /// `B * (1 + K)` dataset indices: anchors, then `nbr(0,1..K), nbr(1,1..K), ...`.
    pub indices: Vec<usize>,
    /// Labels in the same order; all members of anchor `a`'s tuple start as `a + 1`.
    pub labels: Vec<i64>,
}

impl Batch {
    /// Lays out the tuples of `anchors` with their top-`k` neighbours from `pool`.
    pub fn new(pool: &CandidatePool, anchors: &[usize], k: usize) -> Result<Batch> {
        if k > pool.k {
            bail!(
                "tuples need K = {k} neighbours but the candidate pool has only {} per image; recompute it with a larger --k",
                pool.k
            );
        }
        if let Some(&a) = anchors.iter().find(|&&a| a >= pool.n) {
            bail!(
                "anchor {a} is outside the candidate pool's {} images",
                pool.n
            );
        }
        let b = anchors.len();
        let mut indices = Vec::with_capacity(b * (1 + k));
        let mut labels = Vec::with_capacity(b * (1 + k));
        indices.extend_from_slice(anchors);
        labels.extend(anchors.iter().map(|&a| tuple_label(a)));
        for &a in anchors {
            indices.extend(pool.neighbors(a)[..k].iter().map(|&j| j as usize));
            labels.extend(std::iter::repeat_n(tuple_label(a), k));
        }
        Ok(Batch {
            anchors: anchors.to_vec(),
            k,
            indices,
            labels,
        })
    }

    /// Position in the batch of neighbour `j` (0-based, < K) of anchor slot `b`.
    pub fn neighbor_pos(&self, b: usize, j: usize) -> usize {
        self.anchors.len() + self.k * b + j
    }
}

/// The original's `RandomSampler`: shuffle `0..n`, cut into `floor(n / batch)` chunks (the
/// remainder is dropped), yield them in order, reshuffle when a pass is exhausted.
#[derive(Clone, Debug)]
pub struct AnchorSampler {
    batch: usize,
    order: Vec<usize>,
    next_chunk: usize,
    rng: Rng,
}

impl AnchorSampler {
    /// A sampler over `n` anchors, `batch` per step, seeded.
    pub fn new(n: usize, batch: usize, seed: u64) -> Result<AnchorSampler> {
        if batch == 0 || batch > n {
            bail!("sampler: batch of {batch} anchors needs 1 <= batch <= dataset size {n}");
        }
        let mut s = AnchorSampler {
            batch,
            order: (0..n).collect(),
            next_chunk: 0,
            rng: Rng::new(seed),
        };
        s.rng.shuffle(&mut s.order);
        Ok(s)
    }

    /// Batches per pass over the anchors.
    pub fn per_pass(&self) -> usize {
        self.order.len() / self.batch
    }

    /// The next batch of anchors.
    pub fn next_batch(&mut self) -> Vec<usize> {
        if self.next_chunk == self.per_pass() {
            self.rng.shuffle(&mut self.order);
            self.next_chunk = 0;
        }
        let s = self.next_chunk * self.batch;
        self.next_chunk += 1;
        self.order[s..s + self.batch].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy_pool() -> CandidatePool {
        // 6 images, 4 neighbours each; neighbour lists are (i+1, i+2, ...) mod 6.
        let (n, k) = (6, 4);
        let neighbor = (0..n)
            .flat_map(|i| (1..=k).map(move |j| ((i + j) % n) as u32))
            .collect();
        CandidatePool {
            n,
            k,
            neighbor,
            similarity: vec![0.5; n * k],
        }
    }

    #[test]
    fn batch_layout_matches_the_original() {
        let b = Batch::new(&toy_pool(), &[4, 1], 3).unwrap();
        assert_eq!(b.indices, vec![4, 1, 5, 0, 1, 2, 3, 4]);
        assert_eq!(b.labels, vec![5, 2, 5, 5, 5, 2, 2, 2]);
        assert_eq!(b.neighbor_pos(1, 2), 7);
        let e = Batch::new(&toy_pool(), &[0], 5).unwrap_err().to_string();
        assert!(e.contains("K = 5"), "{e}");
    }

    #[test]
    fn sampler_passes_are_permutations_and_seeded() {
        let mut s = AnchorSampler::new(10, 3, 42).unwrap();
        assert_eq!(s.per_pass(), 3);
        let pass: Vec<usize> = (0..3).flat_map(|_| s.next_batch()).collect();
        let mut sorted = pass.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 9, "anchors within a pass are distinct");
        let next = s.next_batch();
        assert_eq!(next.len(), 3);
        let mut t = AnchorSampler::new(10, 3, 42).unwrap();
        let again: Vec<usize> = (0..3).flat_map(|_| t.next_batch()).collect();
        assert_eq!(pass, again);
        let mut u = AnchorSampler::new(10, 3, 43).unwrap();
        let other: Vec<usize> = (0..3).flat_map(|_| u.next_batch()).collect();
        assert_ne!(pass, other);
        assert!(AnchorSampler::new(2, 3, 0).is_err());
    }
}
