//! `insclr-cu search`: the flags of [`insclr::jobs::search()`]; prints the results as text or
//! JSON.

use super::extract::DescribeArgs;
use anyhow::Result;
use insclr::backend::DeviceChoice;
use insclr::jobs::{self, SearchOptions};
use std::path::PathBuf;

/// Arguments of `insclr-cu search`.
#[derive(clap::Args)]
pub struct Args {
    /// Database descriptors written by `insclr-cu extract --out` (.npy, N x D float32).
    #[arg(long)]
    index: PathBuf,
    /// The image of each index row: the .txt `extract` writes beside the .npy (one path per
    /// line, row order). Relative paths are read from the current folder, else from the list's.
    #[arg(long)]
    images: PathBuf,
    /// Query images.
    #[arg(required = true)]
    queries: Vec<PathBuf>,
    /// Results per query.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// The model and extraction flags, as given to `extract` for the index (the same
    /// defaults).
    #[command(flatten)]
    describe: DescribeArgs,
    /// Print the results as JSON on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// Also write an HTML page of thumbnails here (images linked by paths relative to it).
    #[arg(long)]
    html: Option<PathBuf>,
    #[command(flatten)]
    expansion: super::ExpansionArgs,
    #[command(flatten)]
    rerank: super::verify::RerankArgs,
}

pub fn run(args: Args, device: DeviceChoice) -> Result<()> {
    let (rerank, local) = args.rerank.rerank();
    let r = jobs::search(
        &SearchOptions {
            index: args.index,
            images: args.images,
            queries: args.queries,
            k: args.k,
            describe: args.describe.options(),
            html: args.html,
            qe: args.expansion.qe,
            dba: args.expansion.dba,
            rerank,
            local,
        },
        device,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r.json)?);
    } else {
        print!("{}", insclr::eval::search::format_text(&r.results));
    }
    Ok(())
}
