//! Build a candidate pool: the exact top-k inner-product neighbours of a descriptor file,
//! written as the original's `<name>_neighbor.npz` (`insclr-cu pool`).

use crate::backend::{self, DType, DeviceChoice, Op};
use crate::io::npy;
use crate::io::paths::{check_outputs, Named};
use crate::mining::pool::{count_non_unit, default_tile, CandidatePool};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;

/// What [`pool`] reads and writes.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// Descriptors, `.npy` float32 N x D (unit rows expected).
    pub feats: PathBuf,
    /// Neighbours per image (the original: 500).
    pub k: usize,
    /// `.npz` with `neighbor` (int64 N x k) and `similarity` (float32 N x k).
    pub out: PathBuf,
    /// Queries per score block; `None`: [`default_tile`].
    pub tile: Option<usize>,
    /// Descriptor storage for the search: f32, or bf16 (neighbours whose scores differ by less
    /// than bf16 rounding may swap places; the similarities written are f32 either way).
    pub precision: DType,
    /// Ranks to split the database over (0 or 1: one): GPUs with `--device cuda`, threads with
    /// cpu / emu ([`crate::dist::launch`]). The pool is the same as one rank's.
    pub gpus: usize,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            feats: PathBuf::new(),
            k: 500,
            out: PathBuf::new(),
            tile: None,
            precision: DType::F32,
            gpus: 1,
        }
    }
}

/// What [`pool`] wrote.
#[derive(Clone, Debug)]
pub struct PoolReport {
    /// Images (rows) and neighbours per image.
    pub n: usize,
    pub k: usize,
    pub seconds: f64,
}

/// Computes the candidate pool of `opts.feats` and writes it to `opts.out`.
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// use insclr::jobs::{pool, PoolOptions};
/// let dir = std::env::temp_dir().join(format!("insclr-doc-pool-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let feats = insclr::io::npy::Array::new(vec![3, 2], vec![1.0, 0.0, 0.8, 0.6, 0.0, 1.0])?;
/// insclr::io::npy::write(&dir.join("feats.npy"), &feats)?;
/// let opts = PoolOptions { feats: dir.join("feats.npy"), k: 2, out: dir.join("pool.npz"), ..Default::default() };
/// pool(&opts, insclr::backend::DeviceChoice::Cpu)?;
/// let p = insclr::mining::CandidatePool::load(&dir.join("pool.npz"), 3)?;
/// assert_eq!(p.neighbors(0), [1, 2]); // the others, nearest first (never the image itself)
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
pub fn pool(opts: &PoolOptions, device: DeviceChoice) -> Result<PoolReport> {
    crate::io::check_writable(&opts.out)?;
    check_outputs(
        &[Named::new("--feats", &opts.feats)],
        &[Named::new("--out", &opts.out)],
    )?;
    let feats = npy::read::<f32>(&opts.feats)?;
    let (n, d) = feats.dims2(&opts.feats.display().to_string())?;
    let tile = opts.tile.unwrap_or_else(|| default_tile(n));
    check_pool_memory(n, opts.k, tile, opts.precision)?;
    let off = count_non_unit(&feats.data, d, 1e-3);
    if off > 0 {
        eprintln!(
            "warning: {off} of {n} descriptors in {} are not unit norm (|norm - 1| > 1e-3); \
             similarities are raw inner products, L2-normalise the rows for cosine neighbours",
            opts.feats.display()
        );
    }
    let t0 = Instant::now();
    let pool = compute_on_ranks(
        opts.gpus,
        &feats.data,
        n,
        d,
        opts.k,
        tile,
        opts.precision,
        device,
    )
    .with_context(|| format!("candidate pool of {}", opts.feats.display()))?;
    let seconds = t0.elapsed().as_secs_f64();
    if crate::dist::launch::is_rank_zero()? {
        pool.save(&opts.out)?;
    }
    Ok(PoolReport {
        n,
        k: opts.k,
        seconds,
    })
}

/// Refuses a pool whose result and score blocks cannot fit in memory: `n x k` neighbours
/// (i64) and similarities (f32), and a block of `tile x n` scores (with its top-k candidates),
/// beside the descriptors already read.
pub fn check_pool_memory(n: usize, k: usize, tile: usize, precision: DType) -> Result<()> {
    let (n, k, tile) = (n as f64, k.min(n.max(1)) as f64, tile as f64);
    let need = 12.0 * n * k + 4.0 * tile * n + 8.0 * tile * k;
    crate::io::check_memory(
        need,
        &format!("a pool of {n} x {k} neighbours with blocks of {tile} queries ({precision})"),
        "lower --k or --tile",
    )
}

/// The pool of `feats` (`n x d`) on the backend `device` picks, with a progress bar (rank
/// 0's), its database split over `gpus` ranks ([`CandidatePool::compute_on_ranks`]).
#[allow(clippy::too_many_arguments)]
pub fn compute_on_ranks(
    gpus: usize,
    feats: &[f32],
    n: usize,
    d: usize,
    k: usize,
    tile: usize,
    dtype: DType,
    device: DeviceChoice,
) -> Result<CandidatePool> {
    crate::dist::launch::on_ranks(gpus, device, |comm, gpu| {
        let (be, chosen) = backend::select_on(device, &[(Op::Knn, dtype)], gpu)?;
        let bar = if comm.rank() == 0 {
            println!(
                "pool: {n} descriptors of {d} ({dtype}), k = {k}, tile = {tile}, backend {chosen}{}",
                crate::dist::launch::ranks_note(comm)
            );
            ProgressBar::new(n as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:40} {pos}/{len} rows  {per_sec}  elapsed {elapsed_precise}  eta {eta}",
            )
            .context("progress bar template")?,
        );
        let pool = CandidatePool::compute_on_ranks(
            be.as_ref(),
            comm,
            feats,
            n,
            d,
            k,
            tile,
            dtype,
            crate::mining::pool::MERGE_BYTES,
            &mut |t| bar.inc(t as u64),
        )?;
        bar.finish();
        Ok(pool)
    })
}
