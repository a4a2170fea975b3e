//! `insclr-cu pool`: the flags of [`insclr::jobs::pool()`].

use anyhow::Result;
use insclr::backend::{DType, DeviceChoice};
use insclr::jobs::{self, PoolOptions};
use std::path::PathBuf;

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
    #[arg(long, default_value = "f32", value_parser = super::parse_precision)]
    precision: DType,
    #[command(flatten)]
    ranks: super::Ranks,
}

pub fn run(args: Args, device: DeviceChoice) -> Result<()> {
    if args.ranks.started_processes(device)? {
        return Ok(());
    }
    let opts = PoolOptions {
        feats: args.feats,
        k: args.k,
        out: args.out,
        tile: args.tile,
        precision: args.precision,
        gpus: args.ranks.gpus,
    };
    let r = jobs::pool(&opts, device)?;
    if !super::prints_results()? {
        return Ok(());
    }
    println!(
        "pool: wrote {} ({} x {} neighbours) in {:.1} s",
        opts.out.display(),
        r.n,
        r.k,
        r.seconds
    );
    Ok(())
}
