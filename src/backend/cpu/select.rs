//! Top-k on the CPU: the twins of `kernels/select.cu`. A running top-k is a bounded heap whose
//! root is the worst kept candidate; candidates arrive in ascending index, so a later one enters
//! only with a strictly greater score than the root, which is exactly the (score desc, index
//! asc) rule. The streamed search scores `tile` database rows at a time with the CPU GEMM and
//! offers each block to the queries' heaps.

use super::gemm::matmul_f32;
use super::widen;
use crate::backend::{Buf, Checked, Knn, MatMul, TopK};
use anyhow::Result;
use rayon::prelude::*;

/// Scores tested together before any is looked at one by one (see [`Heap::offer`]).
const SCAN_CHUNK: usize = 64;

/// The order every backend ranks scores in (`score_key` in kernels/select.cu): IEEE total order
/// as an unsigned key, so -0 ranks below +0 and a NaN at the end its sign bit says.
#[inline]
fn key(f: f32) -> u32 {
    let u = f.to_bits();
    if u & 0x8000_0000 != 0 {
        !u
    } else {
        u | 0x8000_0000
    }
}

/// A running top-k of one query in a flat slice: a binary heap whose root is the worst kept
/// candidate (lowest score; on equal scores the highest index, which is the latest arrival).
pub(crate) struct Heap<'a> {
    s: &'a mut [f32],
    j: &'a mut [u32],
    len: &'a mut usize,
}

impl Heap<'_> {
    /// True when candidate `a` ranks worse than candidate `b`.
    #[inline]
    fn worse(sa: f32, ja: u32, sb: f32, jb: u32) -> bool {
        let (ka, kb) = (key(sa), key(sb));
        ka < kb || (ka == kb && ja > jb)
    }

    /// Offers rows `j0..j0+row.len()` with scores `row`, in ascending index.
    pub(crate) fn offer(&mut self, row: &[f32], j0: usize) {
        let fill = (self.s.len() - *self.len).min(row.len());
        for (jj, &v) in row[..fill].iter().enumerate() {
            self.push(v, (j0 + jj) as u32);
        }
        if fill == row.len() {
            return;
        }
        let mut thr = key(self.s[0]);
        let base = j0 + fill;
        for (c, chunk) in row[fill..].chunks(SCAN_CHUNK).enumerate() {
            // Past the first few tiles almost no chunk holds a score above the k-th best: a
            // branch-free (vectorised) count rejects the chunk without a branch per score.
            let hits = chunk.iter().fold(0u32, |n, &v| n + u32::from(key(v) > thr));
            if hits == 0 {
                continue;
            }
            for (jj, &v) in chunk.iter().enumerate() {
                // An equal score arrives with a larger index than every kept one: it never enters.
                if key(v) > thr {
                    self.replace_root(v, (base + c * SCAN_CHUNK + jj) as u32);
                    thr = key(self.s[0]);
                }
            }
        }
    }

    fn push(&mut self, v: f32, j: u32) {
        let mut c = *self.len;
        *self.len += 1;
        while c > 0 {
            let p = (c - 1) / 2;
            if !Self::worse(v, j, self.s[p], self.j[p]) {
                break;
            }
            self.s[c] = self.s[p];
            self.j[c] = self.j[p];
            c = p;
        }
        self.s[c] = v;
        self.j[c] = j;
    }

    fn replace_root(&mut self, v: f32, j: u32) {
        let n = *self.len;
        let mut c = 0;
        loop {
            let l = 2 * c + 1;
            if l >= n {
                break;
            }
            let r = l + 1;
            let w = if r < n && Self::worse(self.s[r], self.j[r], self.s[l], self.j[l]) {
                r
            } else {
                l
            };
            if !Self::worse(self.s[w], self.j[w], v, j) {
                break;
            }
            self.s[c] = self.s[w];
            self.j[c] = self.j[w];
            c = w;
        }
        self.s[c] = v;
        self.j[c] = j;
    }

    /// Sorts the kept candidates best first (score desc, index asc), in place.
    pub(crate) fn into_sorted(self) {
        let n = *self.len;
        let mut pairs: Vec<(f32, u32)> = self.s[..n]
            .iter()
            .copied()
            .zip(self.j[..n].iter().copied())
            .collect();
        pairs.sort_unstable_by(|a, b| key(b.0).cmp(&key(a.0)).then(a.1.cmp(&b.1)));
        for (p, (v, j)) in pairs.into_iter().enumerate() {
            self.s[p] = v;
            self.j[p] = j;
        }
    }
}

/// Writes each row's sorted heap out as `k` slots, `-inf` / `u32::MAX` past its length.
fn finish(val: &mut [f32], idx: &mut [u32], len: &mut [usize], k: usize) {
    val.par_chunks_mut(k)
        .zip(idx.par_chunks_mut(k))
        .zip(len.par_iter_mut())
        .for_each(|((s, j), len)| {
            let n = *len;
            Heap { s, j, len }.into_sorted();
            s[n..].fill(f32::NEG_INFINITY);
            j[n..].fill(u32::MAX);
        });
}

/// The `k` best of each `n`-long row of `scores` into `val` / `idx` (`rows x k`).
pub fn topk_f32(scores: &[f32], val: &mut [f32], idx: &mut [u32], s: TopK) {
    let mut len = vec![0usize; s.rows];
    val.par_chunks_mut(s.k)
        .zip(idx.par_chunks_mut(s.k))
        .zip(len.par_iter_mut())
        .zip(scores.par_chunks(s.n.max(1)))
        .for_each(|(((v, j), len), row)| Heap { s: v, j, len }.offer(row, 0));
    finish(val, idx, &mut len, s.k);
}

/// The `k` highest inner products of each query (`q`, `nq x dim`) among the database rows (`db`,
/// `ndb x dim`), skipping `exclude[q]` when it is non-negative.
pub fn knn_f32(
    q: &[f32],
    db: &[f32],
    exclude: Option<&[i64]>,
    val: &mut [f32],
    idx: &mut [u32],
    s: Knn,
) {
    let (nq, d, k) = (s.nq, s.dim, s.k);
    let mut len = vec![0usize; nq];
    let mut block = Vec::new();
    for j0 in (0..s.ndb).step_by(s.tile) {
        let nt = s.tile.min(s.ndb - j0);
        block.resize(nq * nt, 0.0);
        matmul_f32(
            q,
            &db[j0 * d..(j0 + nt) * d],
            &mut block,
            MatMul::new(nq, nt, d).tb(),
        );
        val.par_chunks_mut(k)
            .zip(idx.par_chunks_mut(k))
            .zip(len.par_iter_mut())
            .zip(block.par_chunks(nt))
            .enumerate()
            .for_each(|(r, (((v, j), len), row))| {
                let mut heap = Heap { s: v, j, len };
                // Splitting the row around the excluded column keeps the scan loop branch-free.
                match exclude.map(|x| x[r]).and_then(|x| usize::try_from(x).ok()) {
                    Some(x) if (j0..j0 + nt).contains(&x) => {
                        heap.offer(&row[..x - j0], j0);
                        heap.offer(&row[x - j0 + 1..], x + 1);
                    }
                    _ => heap.offer(row, j0),
                }
            });
    }
    finish(val, idx, &mut len, k);
}

impl crate::backend::SelectOps for super::CpuBackend {
    fn topk(&self, scores: &Buf, val: &mut Buf, idx: &mut Buf, s: Checked<TopK>) -> Result<()> {
        topk_f32(scores.host()?, val.host_mut()?, idx.host_mut()?, *s);
        Ok(())
    }

    fn knn(
        &self,
        q: &Buf,
        db: &Buf,
        exclude: Option<&Buf>,
        val: &mut Buf,
        idx: &mut Buf,
        s: Checked<Knn>,
    ) -> Result<()> {
        let exclude = exclude.map(|x| x.host::<i64>()).transpose()?;
        // bf16 descriptors score as their f32 values (the tensor cores' products are exact
        // too); only the order of the sums differs between backends.
        let (q, db) = (widen(q)?, widen(db)?);
        knn_f32(&q, &db, exclude, val.host_mut()?, idx.host_mut()?, *s);
        Ok(())
    }
}
