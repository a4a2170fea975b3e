//! Memory banks of past features (spec 4.4, 4.5).
//!
//! [`IndexedBank`] is InsCLR's scheme: one row per dataset image, overwritten whenever the
//! image is in a batch, with a per-row write counter (`counter >= 1` means the row holds a real
//! feature). [`RingBank`] is XBM's FIFO queue of (feature, label), kept for comparison.
//!
//! Order inside a step (trap G11): the trainer writes this step's features *before* mining or
//! sampling reads the bank, so the current batch is already in memory when the memory loss is
//! computed (its self-pairs add about 1 to the value and nothing to the gradient, G9).
//!
//! Rows live in host memory for now: gathers and scatters of bank rows are the job of
//! `kernels/bank.cu`, which the backend does not expose yet.

use anyhow::{bail, Result};

/// One feature row per dataset index, with a write counter per row.
#[derive(Clone, Debug)]
pub struct IndexedBank {
    dim: usize,
    data: Vec<f32>,
    counter: Vec<u32>,
}

impl IndexedBank {
    /// An empty bank of `n` rows of `dim` (all counters 0).
    pub fn new(n: usize, dim: usize) -> IndexedBank {
        IndexedBank {
            dim,
            data: vec![0.0; n * dim],
            counter: vec![0; n],
        }
    }

    /// Number of rows (dataset size).
    pub fn len(&self) -> usize {
        self.counter.len()
    }

    /// True when the bank has no row.
    pub fn is_empty(&self) -> bool {
        self.counter.is_empty()
    }

    /// Feature length.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Writes `feats` (`idx.len() x dim`) into rows `idx` and bumps their counters. Repeated
    /// indices are written in order, so the last occurrence wins (as torch index assignment on
    /// CPU does) and the counter is bumped once per occurrence.
    pub fn write(&mut self, idx: &[usize], feats: &[f32]) -> Result<()> {
        let d = self.dim;
        if feats.len() != idx.len() * d {
            bail!(
                "memory bank write: {} values for {} rows of {d}",
                feats.len(),
                idx.len()
            );
        }
        if let Some(&bad) = idx.iter().find(|&&i| i >= self.len()) {
            bail!(
                "memory bank write: index {bad} outside the bank's {} rows",
                self.len()
            );
        }
        for (r, &i) in idx.iter().enumerate() {
            self.data[i * d..(i + 1) * d].copy_from_slice(&feats[r * d..(r + 1) * d]);
            self.counter[i] += 1;
        }
        Ok(())
    }

    /// Rows `idx`, concatenated (`idx.len() x dim`).
    pub fn gather(&self, idx: &[usize]) -> Result<Vec<f32>> {
        let d = self.dim;
        let mut out = Vec::with_capacity(idx.len() * d);
        for &i in idx {
            if i >= self.len() {
                bail!(
                    "memory bank read: index {i} outside the bank's {} rows",
                    self.len()
                );
            }
            out.extend_from_slice(&self.data[i * d..(i + 1) * d]);
        }
        Ok(out)
    }

    /// How many times row `i` was written.
    pub fn counter(&self, i: usize) -> u32 {
        self.counter[i]
    }

    /// Ascending indices of rows written at least once.
    pub fn filled(&self) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.counter[i] >= 1).collect()
    }

    /// All rows (`len() x dim`, row-major) and the write counters, for checkpoints.
    pub fn parts(&self) -> (&[f32], &[u32]) {
        (&self.data, &self.counter)
    }

    /// A bank restored from [`IndexedBank::parts`] (a checkpoint), checked for consistent sizes.
    pub fn from_parts(dim: usize, data: Vec<f32>, counter: Vec<u32>) -> Result<IndexedBank> {
        if data.len() != counter.len() * dim {
            bail!(
                "memory bank: {} values for {} rows of {dim}; the checkpoint is corrupt",
                data.len(),
                counter.len()
            );
        }
        Ok(IndexedBank { dim, data, counter })
    }
}

/// XBM's FIFO memory: `size` slots of (feature, label) and a write pointer.
#[derive(Clone, Debug)]
pub struct RingBank {
    dim: usize,
    feats: Vec<f32>,
    labels: Vec<i64>,
    ptr: usize,
    full: bool,
}

impl RingBank {
    /// An empty ring of `size` slots of `dim`.
    pub fn new(size: usize, dim: usize) -> RingBank {
        RingBank {
            dim,
            feats: vec![0.0; size * dim],
            labels: vec![0; size],
            ptr: 0,
            full: false,
        }
    }

    /// Number of slots.
    pub fn size(&self) -> usize {
        self.labels.len()
    }

    /// Enqueues a batch. As XBM's `enqueue_dequeue`: when the batch does not fit before the
    /// end, it overwrites the *last* `q` slots and the pointer restarts at 0.
    pub fn enqueue(&mut self, feats: &[f32], labels: &[i64]) -> Result<()> {
        let (q, d, k) = (labels.len(), self.dim, self.size());
        if feats.len() != q * d {
            bail!("ring memory: {} values for {q} rows of {d}", feats.len());
        }
        if q > k {
            bail!("ring memory: a batch of {q} does not fit {k} slots; enlarge the memory");
        }
        let at = if self.ptr + q > k {
            self.ptr = 0;
            k - q
        } else {
            let at = self.ptr;
            self.ptr += q;
            at
        };
        self.feats[at * d..(at + q) * d].copy_from_slice(feats);
        self.labels[at..at + q].copy_from_slice(labels);
        // XBM calls the queue full once its last slot has been written.
        if at + q == k {
            self.full = true;
        }
        Ok(())
    }

    /// The valid part: every slot once full, else the slots before the pointer.
    pub fn get(&self) -> (&[f32], &[i64]) {
        let n = if self.full { self.size() } else { self.ptr };
        (&self.feats[..n * self.dim], &self.labels[..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexed_bank_writes_by_index_and_counts() {
        let mut b = IndexedBank::new(5, 2);
        assert!(b.filled().is_empty());
        b.write(&[3, 1, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
            .unwrap();
        assert_eq!(b.gather(&[3, 1]).unwrap(), vec![5.0, 6.0, 3.0, 4.0]);
        assert_eq!((b.counter(3), b.counter(1), b.counter(0)), (2, 1, 0));
        assert_eq!(b.filled(), vec![1, 3]);
        assert!(b.write(&[5], &[0.0, 0.0]).is_err());
        assert!(b.gather(&[7]).is_err());
    }

    #[test]
    fn ring_bank_follows_xbm_wraparound() {
        let mut r = RingBank::new(5, 1);
        r.enqueue(&[1.0, 2.0], &[1, 2]).unwrap();
        assert_eq!(r.get().1, &[1, 2]);
        r.enqueue(&[3.0, 4.0], &[3, 4]).unwrap();
        // 4 + 2 > 5: the last two slots are overwritten and the pointer restarts.
        r.enqueue(&[5.0, 6.0], &[5, 6]).unwrap();
        assert_eq!(r.get().1, &[1, 2, 3, 5, 6]);
        assert_eq!(r.get().0, &[1.0, 2.0, 3.0, 5.0, 6.0]);
        r.enqueue(&[7.0], &[7]).unwrap();
        assert_eq!(r.get().1, &[7, 2, 3, 5, 6]);
        assert!(r.enqueue(&[0.0; 6], &[0; 6]).is_err());
    }
}
