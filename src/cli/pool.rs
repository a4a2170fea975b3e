//! `insclr-cu pool`: the candidate pool of a descriptor file (exact top-k neighbours by inner
//! product), written as the original's `<name>_neighbor.npz`.

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use insclr::backend::{self, DType, DeviceChoice, Op};
use insclr::io::npy;
use insclr::io::paths::{check_outputs, Named};
use insclr::mining::pool::{count_non_unit, default_tile, CandidatePool};
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `insclr-cu pool`.
#[derive(clap::Args)]
pub struct Args {
    /// Descriptors, `.npy` float32 N x D (unit rows expected).
    #[arg(long)]
    feats: PathBuf,
    /// Neighbours per image (the original: 500).
    #[arg(long, default_value_t = 500)]
    k: usize,
    /// Output `.npz` with `neighbor` (int64 N x k) and `similarity` (float32 N x k).
    #[arg(long)]
    out: PathBuf,
    /// Queries per score block (memory: tile x 2048 floats per block; default 512).
    #[arg(long)]
    tile: Option<usize>,
    /// Descriptor storage for the search: f32, or bf16 (half the memory and tensor cores on a
    /// GPU; neighbours whose scores differ by less than bf16 rounding may swap places). The
    /// similarities written are recomputed from the f32 descriptors either way.
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    precision: String,
}

/// Computes and writes the pool.
pub fn run(args: Args, device: DeviceChoice) -> Result<()> {
    insclr::io::check_writable(&args.out)?;
    check_outputs(
        &[Named::new("--feats", &args.feats)],
        &[Named::new("--out", &args.out)],
    )?;
    let feats = npy::read::<f32>(&args.feats)?;
    let (n, d) = feats.dims2(&args.feats.display().to_string())?;
    let tile = args.tile.unwrap_or_else(|| default_tile(n));
    check_pool_memory(n, args.k, tile, &args.precision)?;
    let off = count_non_unit(&feats.data, d, 1e-3);
    if off > 0 {
        eprintln!(
            "warning: {off} of {n} descriptors in {} are not unit norm (|norm - 1| > 1e-3); \
             similarities are raw inner products, L2-normalise the rows for cosine neighbours",
            args.feats.display()
        );
    }
    let dtype = if args.precision == "bf16" {
        DType::BF16
    } else {
        DType::F32
    };
    let t0 = Instant::now();
    let pool = compute(
        &feats.data,
        n,
        d,
        args.k,
        tile,
        dtype,
        device,
        &args.precision,
    )
    .with_context(|| format!("candidate pool of {}", args.feats.display()))?;
    let secs = t0.elapsed().as_secs_f64();
    pool.save(&args.out)?;
    println!(
        "pool: wrote {} ({n} x {} neighbours) in {secs:.1} s",
        args.out.display(),
        args.k
    );
    Ok(())
}

/// Refuses a pool whose result and score blocks cannot fit in memory: `n x k` neighbours
/// (i64) and similarities (f32), and a block of `tile x n` scores (with its top-k candidates),
/// beside the descriptors already read.
pub fn check_pool_memory(n: usize, k: usize, tile: usize, precision: &str) -> Result<()> {
    let (n, k, tile) = (n as f64, k.min(n.max(1)) as f64, tile as f64);
    let need = 12.0 * n * k + 4.0 * tile * n + 8.0 * tile * k;
    insclr::io::check_memory(
        need,
        &format!("a pool of {n} x {k} neighbours with blocks of {tile} queries ({precision})"),
        "lower --k or --tile",
    )
}

/// The pool of `feats` (`n x d`) on the backend `device` picks, with a progress bar.
#[allow(clippy::too_many_arguments)]
pub fn compute(
    feats: &[f32],
    n: usize,
    d: usize,
    k: usize,
    tile: usize,
    dtype: DType,
    device: DeviceChoice,
    precision: &str,
) -> Result<CandidatePool> {
    let (be, chosen) = backend::select(device, &[(Op::Knn, dtype)])?;
    println!(
        "pool: {n} descriptors of {d} ({precision}), k = {k}, tile = {tile}, backend {chosen}"
    );
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} rows  {per_sec}  elapsed {elapsed_precise}  eta {eta}",
        )
        .context("progress bar template")?,
    );
    let pool = CandidatePool::compute_as(be.as_ref(), feats, n, d, k, tile, dtype, &mut |t| {
        bar.inc(t as u64)
    })?;
    bar.finish();
    Ok(pool)
}
