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
//! [`IndexedBank`]'s rows live on the backend (on a GPU, in device memory: a step never copies a
//! bank over PCIe); writes and reads are `be.copy_rows` scatters and gathers by index. Its
//! write counters stay on the host: they follow from the index lists alone. A bank stores f32 or
//! bf16 (`SOLVER.PRECISION`: half the memory of a dataset-sized bank); it takes and gives f32
//! either way, rounding what it stores. [`RingBank`] is on
//! the host (the trainer does not use it).

use crate::backend::{Backend, Buf, CopyRows, DType};
use anyhow::{bail, Result};

/// One feature row per dataset index, with a write counter per row.
#[derive(Debug)]
pub struct IndexedBank {
    dim: usize,
    data: Buf,
    counter: Vec<u32>,
}

impl IndexedBank {
    /// An empty f32 bank of `n` rows of `dim` on `be` (all counters 0).
    pub fn new(be: &dyn Backend, n: usize, dim: usize) -> Result<IndexedBank> {
        Self::with_dtype(be, n, dim, DType::F32)
    }

    /// An empty bank storing `dtype` (f32 or bf16).
    pub fn with_dtype(be: &dyn Backend, n: usize, dim: usize, dtype: DType) -> Result<IndexedBank> {
        if !matches!(dtype, DType::F32 | DType::BF16) {
            bail!("memory bank of {dtype}: use f32 or bf16");
        }
        Ok(IndexedBank {
            dim,
            data: be.zeros(dtype, n * dim)?,
            counter: vec![0; n],
        })
    }

    /// What the bank stores.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
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

    /// Writes `feats` (`idx.len() x dim`, f32 on `be`) into rows `idx` and bumps their counters.
    /// Repeated indices: the last occurrence wins (as torch index assignment on CPU does) and
    /// the counter is bumped once per occurrence.
    pub fn write(&mut self, be: &dyn Backend, idx: &[usize], feats: &Buf) -> Result<()> {
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
        // The last source row of every destination.
        let mut last = std::collections::HashMap::with_capacity(idx.len());
        for (r, &i) in idx.iter().enumerate() {
            last.insert(i, r);
            self.counter[i] += 1;
        }
        let mut pairs: Vec<(usize, usize)> = last.into_iter().collect();
        pairs.sort_unstable();
        let (dst, src): (Vec<usize>, Vec<usize>) = pairs.into_iter().unzip();
        let mut rounded = Buf::empty(self.dtype());
        let feats = be.cast_to(feats, self.dtype(), &mut rounded)?;
        be.copy_rows(feats, &mut self.data, &src, &dst, CopyRows { dim: d })
    }

    /// Rows `idx`, concatenated (`idx.len() x dim`), as an f32 buffer on `be`.
    pub fn gather(&self, be: &dyn Backend, idx: &[usize]) -> Result<Buf> {
        if let Some(&i) = idx.iter().find(|&&i| i >= self.len()) {
            bail!(
                "memory bank read: index {i} outside the bank's {} rows",
                self.len()
            );
        }
        let mut out = be.zeros(self.dtype(), idx.len() * self.dim)?;
        let dst: Vec<usize> = (0..idx.len()).collect();
        be.copy_rows(&self.data, &mut out, idx, &dst, CopyRows { dim: self.dim })?;
        be.into_dtype(out, DType::F32)
    }

    /// How many times row `i` was written.
    pub fn counter(&self, i: usize) -> u32 {
        self.counter[i]
    }

    /// Ascending indices of rows written at least once.
    pub fn filled(&self) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.counter[i] >= 1).collect()
    }

    /// All rows (`len() x dim`, row-major, as f32 on the host: exact for a bf16 bank) and the
    /// write counters, for checkpoints.
    pub fn parts(&self, be: &dyn Backend) -> Result<(Vec<f32>, &[u32])> {
        let mut wide = Buf::empty(DType::F32);
        let rows = be.cast_to(&self.data, DType::F32, &mut wide)?;
        Ok((be.download(rows)?, &self.counter))
    }

    /// A bank on `be` storing `dtype`, restored from [`IndexedBank::parts`] (a checkpoint),
    /// checked for consistent sizes.
    pub fn from_parts(
        be: &dyn Backend,
        dim: usize,
        data: &[f32],
        counter: Vec<u32>,
        dtype: DType,
    ) -> Result<IndexedBank> {
        if data.len() != counter.len() * dim {
            bail!(
                "memory bank: {} values for {} rows of {dim}; the checkpoint is corrupt",
                data.len(),
                counter.len()
            );
        }
        // `cast` refuses any dtype but bf16 (f32 is taken as it is).
        let data = be.into_dtype(be.upload(data)?, dtype)?;
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
        let be = crate::backend::cpu();
        let mut b = IndexedBank::new(be, 5, 2).unwrap();
        assert!(b.filled().is_empty());
        let feats = be.upload(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        b.write(be, &[3, 1, 3], &feats).unwrap();
        let got = be.download::<f32>(&b.gather(be, &[3, 1]).unwrap()).unwrap();
        assert_eq!(got, vec![5.0, 6.0, 3.0, 4.0]);
        assert_eq!((b.counter(3), b.counter(1), b.counter(0)), (2, 1, 0));
        assert_eq!(b.filled(), vec![1, 3]);
        assert!(b
            .write(be, &[5], &be.upload(&[0.0f32, 0.0]).unwrap())
            .is_err());
        assert!(b.gather(be, &[7]).is_err());
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
