//! The candidate pool (spec 4.1): for every descriptor, its exact top-k neighbours by inner
//! product over the whole set, with their similarities.
//!
//! The search is [`crate::knn::top_k`] with self exclusion: the backend's streamed search
//! (`be.knn`: GEMM tiles and a running top-k per query, on the device on CUDA). Memory is
//! O(tile * db_tile + N * k): the N x N similarity matrix never exists. Neighbours are chosen on
//! the search's scores; the similarities written are recomputed in f64 (see `dot`).
//!
//! Deliberate difference from the original (trap G3): the original searches top-(k+1) with
//! faiss and drops column 0 blindly, assuming it is the query itself. With exact duplicate
//! images the query may not be in column 0, so it can stay in its own list while a duplicate is
//! dropped. Here the query's own index is removed explicitly and ties are broken by
//! (score descending, index ascending), so the result is deterministic and never contains self.

use crate::backend::{Backend, DType};
use crate::dist::{all_gather, shard, Collective};
use crate::io::npy::{self, Array, NpzEntry};
use crate::knn::{self, Exclude, Pair, Tiling};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::path::Path;

/// About how many bytes of neighbour lists the ranks of [`CandidatePool::compute_on_ranks`]
/// gather per block of queries (8 bytes a neighbour: index and score).
pub const MERGE_BYTES: usize = 256 << 20;

/// Exact top-k neighbours of every descriptor: `neighbor[i*k + j]` is the j-th most similar
/// other descriptor of `i` and `similarity[i*k + j]` the dot product of the two.
#[derive(Clone, Debug, PartialEq)]
pub struct CandidatePool {
    /// Number of descriptors (dataset size).
    pub n: usize,
    /// Neighbours per descriptor.
    pub k: usize,
    /// `n x k` dataset indices, best first (u32 halves the 1.2M x 500 table against i64).
    pub neighbor: Vec<u32>,
    /// `n x k` similarities, `dot(F[i], F[neighbor[i, j]])`.
    pub similarity: Vec<f32>,
}

/// The recomputed similarity of the output: f32 inputs, f64 accumulation (the original uses a
/// float32 numpy dot; this is at least as accurate and independent of the GEMM's rounding).
/// `b` may also be a row already widened to f64: the same products in the same order, so the
/// same bits, with half the conversions when one row meets many others.
fn dot<B: Copy + Into<f64>>(a: &[f32], b: &[B]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { dot_avx2(a, b) };
    }
    dot_lanes(a, b)
}

/// [`dot_lanes`] compiled for AVX2 (four f64 per instruction instead of SSE2's two). No FMA:
/// each lane adds the same rounded products in the same order, so both give the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2<B: Copy + Into<f64>>(a: &[f32], b: &[B]) -> f32 {
    dot_lanes(a, b)
}

/// The dot product in 16 independent running sums: one sum is a chain of dependent f64 adds,
/// which runs at the adder's latency and cannot be vectorised (the compiler may not reorder
/// float adds); 16 are vectorised and keep the adders busy. It differs from one sequential
/// sum by f64 rounding only (~1e-16 relative), far below the f32 it is rounded to.
#[inline(always)]
fn dot_lanes<B: Copy + Into<f64>>(a: &[f32], b: &[B]) -> f32 {
    const LANES: usize = 16;
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| x as f64 * y.into())
        .sum();
    let mut acc = [0f64; LANES];
    for (x, y) in ca.zip(cb) {
        for ((s, &p), &q) in acc.iter_mut().zip(x).zip(y) {
            *s += p as f64 * q.into();
        }
    }
    (acc.iter().sum::<f64>() + tail) as f32
}

/// Queries whose pairs [`rescore`] visits together.
const RESCORE_BLOCK: usize = 1024;
/// Pairs one task scores.
const RESCORE_TASK: usize = 1024;

/// Recomputes every kept similarity with [`dot`]. The neighbours of a query are rows from
/// anywhere in the matrix, so scoring pair by pair reads a row from memory per pair (at
/// 20k x 2048, k = 500: 80 GB, and the memory bus was the limit). Here a block of queries'
/// pairs is sorted by neighbour, so each neighbour row is read once per block, widened to f64
/// once per run of its pairs, and meets the block's queries, which stay in cache.
fn rescore(feats: &[f32], d: usize, k: usize, neighbor: &[u32], similarity: &mut [f32]) {
    let n = neighbor.len() / k.max(1);
    let row = |i: usize| &feats[i * d..(i + 1) * d];
    for q0 in (0..n).step_by(RESCORE_BLOCK) {
        let (lo, hi) = (q0 * k, (q0 + RESCORE_BLOCK).min(n) * k);
        // (neighbour, position in the block) in one u64, so a plain sort groups by neighbour.
        let mut pairs: Vec<u64> = (lo..hi)
            .map(|p| (neighbor[p] as u64) << 32 | (p - lo) as u64)
            .collect();
        pairs.par_sort_unstable();
        let mut scores = vec![0f32; pairs.len()];
        pairs
            .par_chunks(RESCORE_TASK)
            .zip(scores.par_chunks_mut(RESCORE_TASK))
            .for_each(|(pairs, scores)| {
                let mut wide = Vec::with_capacity(d);
                let mut widened = None;
                for (&e, s) in pairs.iter().zip(scores) {
                    let (j, p) = ((e >> 32) as usize, lo + (e & 0xffff_ffff) as usize);
                    if widened != Some(j) {
                        wide.clear();
                        wide.extend(row(j).iter().map(|&v| v as f64));
                        widened = Some(j);
                    }
                    *s = dot(row(p / k), &wide);
                }
            });
        for (&e, s) in pairs.iter().zip(scores) {
            similarity[lo + (e & 0xffff_ffff) as usize] = s;
        }
    }
}

/// The similarity that pads a row with no (more) usable neighbour, the image itself: below
/// every threshold, so it never becomes a positive.
pub const NO_NEIGHBOR: f32 = -1.0;

/// The default query-block height of [`CandidatePool::compute`].
pub fn default_tile(n: usize) -> usize {
    Tiling::default().query_block.clamp(1, n.max(1))
}

impl CandidatePool {
    /// Computes the pool of `feats` (`n x d`, row-major) with `k` neighbours per row, scoring
    /// `tile` queries against one database tile at a time; `progress` is told how many rows'
    /// worth of scoring each finished block holds (the counts sum to `n`).
    pub fn compute(
        be: &dyn Backend,
        feats: &[f32],
        n: usize,
        d: usize,
        k: usize,
        tile: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<CandidatePool> {
        Self::compute_as(be, feats, n, d, k, tile, DType::F32, progress)
    }

    /// [`CandidatePool::compute`] with the search's descriptors stored as `dtype` (f32 or bf16);
    /// the similarities kept are recomputed from `feats` either way.
    #[allow(clippy::too_many_arguments)]
    pub fn compute_as(
        be: &dyn Backend,
        feats: &[f32],
        n: usize,
        d: usize,
        k: usize,
        tile: usize,
        dtype: DType,
        progress: &mut dyn FnMut(usize),
    ) -> Result<CandidatePool> {
        if feats.len() != n * d {
            bail!(
                "candidate pool: features hold {} values, expected n*d = {n}*{d}",
                feats.len()
            );
        }
        if k == 0 || k >= n {
            bail!(
                "candidate pool: k = {k} neighbours needs 1 <= k <= n-1 = {}; lower --k",
                n.saturating_sub(1)
            );
        }
        let pair = Pair {
            queries: feats,
            db: feats,
            dim: d,
        };
        let tiling = Tiling {
            query_block: tile,
            dtype,
            ..Tiling::default()
        };
        let found = knn::top_k(be, pair, k, Exclude::Diagonal, tiling, progress)
            .context("candidate pool search")?;
        Ok(Self::rescored(feats, d, n, k, found.index, found.score))
    }

    /// [`CandidatePool::compute_as`] split over the ranks of `comm`: each searches the queries
    /// against its [`shard`] of the database rows, and the lists are merged by score, then
    /// index ([`knn::merge`]): the same pool as one rank's, on every rank. Queries go in blocks
    /// whose gathered lists hold about `merge_bytes` ([`MERGE_BYTES`]). A database too small
    /// to split (a shard of at most `k` rows) is searched whole by every rank.
    #[allow(clippy::too_many_arguments)]
    pub fn compute_on_ranks(
        be: &dyn Backend,
        comm: &dyn Collective,
        feats: &[f32],
        n: usize,
        d: usize,
        k: usize,
        tile: usize,
        dtype: DType,
        merge_bytes: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<CandidatePool> {
        let world = comm.world();
        // (compute_as checks the shapes too.)
        if world == 1 || n / world <= k || feats.len() != n * d {
            return Self::compute_as(be, feats, n, d, k, tile, dtype, progress);
        }
        let rows = shard(n, comm.rank(), world);
        let db = &feats[rows.start * d..rows.end * d];
        let tiling = Tiling {
            query_block: tile,
            dtype,
            ..Tiling::default()
        };
        let block = (merge_bytes / (8 * k * world)).max(1);
        let (mut neighbor, mut similarity) = (Vec::with_capacity(n * k), Vec::with_capacity(n * k));
        for q0 in (0..n).step_by(block) {
            let nq = block.min(n - q0);
            let pair = Pair {
                queries: &feats[q0 * d..(q0 + nq) * d],
                db,
                dim: d,
            };
            let shift = q0 as isize - rows.start as isize;
            let mut mine = knn::top_k(
                be,
                pair,
                k,
                Exclude::ShiftedDiagonal(shift),
                tiling,
                progress,
            )
            .context("candidate pool search")?;
            mine.index.iter_mut().for_each(|j| *j += rows.start as u32);
            let index = all_gather(comm, &mine.index)?;
            let score = all_gather(comm, &mine.score)?;
            let found = knn::merge(&index, &score, nq, k);
            neighbor.extend(found.index);
            similarity.extend(found.score);
        }
        Ok(Self::rescored(feats, d, n, k, neighbor, similarity))
    }

    /// The pool of the neighbours the search chose, with their similarities recomputed from
    /// `feats` (see [`rescore`]).
    fn rescored(
        feats: &[f32],
        d: usize,
        n: usize,
        k: usize,
        neighbor: Vec<u32>,
        mut similarity: Vec<f32>,
    ) -> CandidatePool {
        rescore(feats, d, k, &neighbor, &mut similarity);
        CandidatePool {
            n,
            k,
            neighbor,
            similarity,
        }
    }

    /// This pool of a subset of a dataset of `n` images (row r is image `at[r]`) as the
    /// dataset's pool: rows and neighbours mapped through `at`, and every image outside the
    /// subset (one that could not be described) a row of itself at [`NO_NEIGHBOR`].
    pub fn spread(&self, at: &[usize], n: usize) -> Result<CandidatePool> {
        if at.len() != self.n {
            bail!("{} rows placed for a pool of {} rows", at.len(), self.n);
        }
        if let Some(&i) = at.iter().find(|&&i| i >= n) {
            bail!("row placed at image {i} of a dataset of {n}");
        }
        let mut out = CandidatePool {
            n,
            k: self.k,
            neighbor: (0..n)
                .flat_map(|i| std::iter::repeat_n(i as u32, self.k))
                .collect(),
            similarity: vec![NO_NEIGHBOR; n * self.k],
        };
        for (r, &i) in at.iter().enumerate() {
            for c in 0..self.k {
                out.neighbor[i * self.k + c] = at[self.neighbor[r * self.k + c] as usize] as u32;
                out.similarity[i * self.k + c] = self.similarity[r * self.k + c];
            }
        }
        Ok(out)
    }

    /// This pool with the images `bad` marks removed from every row (training's images that
    /// did not decode): the row is shifted left and padded with the image itself at
    /// [`NO_NEIGHBOR`], below every threshold, so a removed image never enters a tuple or
    /// mining. The pool itself when nothing is removed.
    pub fn without(&self, bad: &[bool]) -> CandidatePool {
        if !bad.iter().any(|&b| b) {
            return self.clone();
        }
        let mut out = self.clone();
        for i in 0..self.n {
            let row: Vec<(u32, f32)> = self
                .neighbors(i)
                .iter()
                .zip(self.similarities(i))
                .filter(|(&j, _)| !bad[j as usize])
                .map(|(&j, &s)| (j, s))
                .collect();
            for c in 0..self.k {
                let (j, s) = row.get(c).copied().unwrap_or((i as u32, NO_NEIGHBOR));
                out.neighbor[i * self.k + c] = j;
                out.similarity[i * self.k + c] = s;
            }
        }
        out
    }

    /// Neighbours of `i`, best first.
    pub fn neighbors(&self, i: usize) -> &[u32] {
        &self.neighbor[i * self.k..(i + 1) * self.k]
    }

    /// Similarities of `i` to its neighbours.
    pub fn similarities(&self, i: usize) -> &[f32] {
        &self.similarity[i * self.k..(i + 1) * self.k]
    }

    /// Writes `neighbor` (int64 n x k) and `similarity` (f32 n x k) to an `.npz`, the names and
    /// types of the original's `<name>_neighbor.npz`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let nb = Array::new(
            vec![self.n, self.k],
            self.neighbor.iter().map(|&v| v as i64).collect(),
        )?;
        let sim = Array::new(vec![self.n, self.k], self.similarity.clone())?;
        npy::write_npz(
            path,
            &[
                NpzEntry::I64("neighbor", &nb),
                NpzEntry::F32("similarity", &sim),
            ],
        )
    }

    /// Reads a pool `.npz` and checks it against a dataset of `expected_n` images.
    pub fn load(path: &Path, expected_n: usize) -> Result<CandidatePool> {
        let name = path.display();
        let nb = npy::read_npz::<i64>(path, "neighbor")?;
        let sim = npy::read_npz::<f32>(path, "similarity")?;
        let (n, k) = nb.dims2(&format!("{name}[neighbor]"))?;
        let (ns, ks) = sim.dims2(&format!("{name}[similarity]"))?;
        if (n, k) != (ns, ks) {
            bail!("{name}: neighbor is {n}x{k} but similarity is {ns}x{ks}; the file is corrupt, recompute it with `insclr-cu pool`");
        }
        if n != expected_n {
            bail!(
                "{name}: candidate pool has {n} rows but the dataset has {expected_n} images; \
                 recompute the pool on this dataset's descriptors (`insclr-cu pool`)"
            );
        }
        let neighbor = nb
            .data
            .iter()
            .enumerate()
            .map(|(p, &v)| {
                if v < 0 || v as usize >= n {
                    bail!(
                        "{name}: neighbor[{}, {}] = {v} is outside 0..{n}; the pool belongs to another dataset",
                        p / k,
                        p % k
                    );
                }
                Ok(v as u32)
            })
            .collect::<Result<Vec<u32>>>()
            .with_context(|| format!("validating {name}"))?;
        Ok(CandidatePool {
            n,
            k,
            neighbor,
            similarity: sim.data,
        })
    }
}

/// Rows whose L2 norm is off 1 by more than `tol` (the pool assumes unit descriptors).
pub fn count_non_unit(feats: &[f32], d: usize, tol: f32) -> usize {
    feats
        .chunks(d.max(1))
        .filter(|r| ((dot(r, r) as f64).sqrt() - 1.0).abs() > tol as f64)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mining::testutil::clustered;

    #[test]
    fn a_subset_pool_spreads_over_the_dataset_with_empty_rows_for_the_rest() {
        // Images 0, 2, 3 of 4 were described; image 1 was not.
        let sub = CandidatePool {
            n: 3,
            k: 2,
            neighbor: vec![1, 2, 0, 2, 1, 0],
            similarity: vec![0.9, 0.5, 0.9, 0.4, 0.4, 0.5],
        };
        let p = sub.spread(&[0, 2, 3], 4).unwrap();
        assert_eq!(p.neighbors(0), [2, 3]);
        assert_eq!(p.neighbors(1), [1, 1]);
        assert_eq!(p.similarities(1), [NO_NEIGHBOR; 2]);
        assert_eq!(p.neighbors(2), [0, 3]);
        assert_eq!(p.similarities(2), [0.9, 0.4]);
        assert_eq!(p.neighbors(3), [2, 0]);
        assert!(sub.spread(&[0, 2], 4).is_err());
        assert!(sub.spread(&[0, 2, 4], 4).is_err());
    }

    #[test]
    fn removed_images_leave_every_row_and_pad_it_with_the_image_itself() {
        let pool = CandidatePool {
            n: 3,
            k: 2,
            neighbor: vec![1, 2, 0, 2, 1, 0],
            similarity: vec![0.9, 0.5, 0.9, 0.4, 0.4, 0.5],
        };
        assert_eq!(pool.without(&[false; 3]), pool);
        let p = pool.without(&[false, true, false]);
        assert_eq!(p.neighbors(0), [2, 0]);
        assert_eq!(p.similarities(0), [0.5, NO_NEIGHBOR]);
        assert_eq!(p.neighbors(1), [0, 2], "a removed image's own row is kept");
        assert_eq!(p.neighbors(2), [0, 2]);
        assert_eq!(p.similarities(2), [0.5, NO_NEIGHBOR]);
    }

    #[test]
    fn sixteen_running_sums_give_the_sequential_f64_dot_within_f32_rounding() {
        let mut r = crate::rng::Rng::new(11);
        for len in [0, 1, 7, 8, 9, 63, 128, 2048, 2051] {
            let a: Vec<f32> = (0..len).map(|_| r.normal()).collect();
            let b: Vec<f32> = (0..len).map(|_| r.normal()).collect();
            let seq: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let scale: f64 = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| (x as f64 * y as f64).abs())
                .sum();
            let got = dot(&a, &b) as f64;
            assert!(
                (got - seq).abs() <= 1e-7 * scale.max(1e-30),
                "len {len}: {got} vs {seq}"
            );
            // The AVX2 build and the portable one give the same bits, and so does a row widened
            // to f64 first.
            let wide: Vec<f64> = b.iter().map(|&v| v as f64).collect();
            assert_eq!(
                dot(&a, &b).to_bits(),
                dot_lanes(&a, &b).to_bits(),
                "len {len}"
            );
            assert_eq!(dot(&a, &b).to_bits(), dot(&a, &wide).to_bits(), "len {len}");
        }
    }

    /// The brute-force reference: full f64 scores, sort by (score desc, index asc), drop self.
    fn brute(x: &[f32], n: usize, d: usize, k: usize) -> Vec<Vec<(f64, usize)>> {
        (0..n)
            .map(|i| {
                let mut row: Vec<(f64, usize)> = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| {
                        let s = (0..d)
                            .map(|t| x[i * d + t] as f64 * x[j * d + t] as f64)
                            .sum();
                        (s, j)
                    })
                    .collect();
                row.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                row.truncate(k);
                row
            })
            .collect()
    }

    #[test]
    fn pool_equals_brute_force_on_clustered_data() {
        let (n, d, k) = (300, 16, 20);
        let x = clustered(n, d, 12, 0.3, 11);
        let be = crate::backend::cpu();
        let mut seen = 0;
        // A tile that does not divide n exercises the short last tile.
        let p = CandidatePool::compute(be, &x, n, d, k, 37, &mut |t| seen += t).unwrap();
        assert_eq!(seen, n);
        let b = brute(&x, n, d, k);
        for (i, bi) in b.iter().enumerate() {
            assert!(!p.neighbors(i).contains(&(i as u32)), "self in row {i}");
            for (j, &(bs, bj)) in bi.iter().enumerate() {
                let got = p.neighbors(i)[j] as usize;
                assert!(
                    (p.similarities(i)[j] as f64 - bs).abs() < 1e-5,
                    "row {i} col {j}"
                );
                if got != bj {
                    // Indices may differ only where scores tie within rounding (STYLE.md).
                    let gs: f64 = (0..d)
                        .map(|t| x[i * d + t] as f64 * x[got * d + t] as f64)
                        .sum();
                    assert!((gs - bs).abs() < 1e-6, "row {i} col {j}: {got} vs {bj}");
                }
            }
        }
    }

    #[test]
    fn ties_break_by_index_and_self_is_removed_explicitly() {
        // Exact duplicates (integer features: the GEMM is exact): rows 0, 2, 3 are identical.
        let x = vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.5, 0.5];
        let be = crate::backend::cpu();
        let p = CandidatePool::compute(be, &x, 5, 2, 4, 2, &mut |_| {}).unwrap();
        assert_eq!(p.neighbors(0), &[2, 3, 4, 1]);
        assert_eq!(p.neighbors(3), &[0, 2, 4, 1]);
        assert_eq!(p.neighbors(1), &[4, 0, 2, 3]);
        assert_eq!(p.similarities(0), &[1.0, 1.0, 0.5, 0.0]);
    }

    #[test]
    fn save_load_round_trip_and_size_mismatch_is_a_clear_error() {
        let x = clustered(40, 8, 4, 0.2, 5);
        let be = crate::backend::cpu();
        let p = CandidatePool::compute(be, &x, 40, 8, 6, 16, &mut |_| {}).unwrap();
        let dir = std::env::temp_dir().join(format!("insclr-pool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pool.npz");
        p.save(&f).unwrap();
        assert_eq!(CandidatePool::load(&f, 40).unwrap(), p);
        let e = format!("{:#}", CandidatePool::load(&f, 41).unwrap_err());
        assert!(e.contains("40 rows but the dataset has 41"), "{e}");
        let e = format!(
            "{:#}",
            CandidatePool::compute(be, &x, 40, 8, 40, 16, &mut |_| {}).unwrap_err()
        );
        assert!(e.contains("k = 40"), "{e}");
        // An index outside the dataset (a pool of another dataset) is refused on load.
        let mut q = p.clone();
        q.neighbor[13] = 40;
        q.save(&f).unwrap();
        let e = format!("{:#}", CandidatePool::load(&f, 40).unwrap_err());
        assert!(e.contains("neighbor[2, 1] = 40 is outside 0..40"), "{e}");
        let mut nan = x.clone();
        nan[8 * 3] = f32::NAN;
        let e = format!(
            "{:#}",
            CandidatePool::compute(be, &nan, 40, 8, 6, 16, &mut |_| {}).unwrap_err()
        );
        assert!(e.contains("row 3 has a non-finite value"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn non_unit_rows_are_counted() {
        let mut x = clustered(10, 4, 2, 0.1, 1);
        x[0] *= 1.5;
        x[9 * 4 + 1] += 0.01;
        assert_eq!(count_non_unit(&x, 4, 1e-3), 2);
    }
}
