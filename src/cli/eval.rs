//! `insclr-cu eval`: the flags of [`insclr::jobs::evaluate()`]; prints one table.

use super::extract::{descriptor_choice, DescriptorArg};
use anyhow::Result;
use clap::ValueEnum;
use insclr::backend::DeviceChoice;
use insclr::eval::extract;
use insclr::eval::rank::Tiling;
use insclr::jobs::{self, Benchmark, EvalOptions};
use std::path::PathBuf;

/// Which benchmark protocol to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Dataset {
    /// Revisited Oxford5k: ROOT/gnd_roxford5k.pkl (or .json), images ROOT/jpg/<name>.jpg.
    Roxford5k,
    /// Revisited Paris6k: ROOT/gnd_rparis6k.pkl (or .json), images ROOT/jpg/<name>.jpg.
    Rparis6k,
    /// GLDv2 retrieval: ROOT/test/retrieval_solution_v2.1.csv, ROOT/index/index_image_to_landmark.csv.
    Gldv2,
    /// Any folder: ROOT/gnd.json (or --gnd) = {imlist, qimlist, gnd: [{ok, junk, bbx?}]}.
    List,
}

/// Arguments of `insclr-cu eval`.
#[derive(clap::Args)]
pub struct Args {
    /// Benchmark protocol.
    #[arg(long, value_enum)]
    dataset: Dataset,
    /// Dataset folder.
    #[arg(long)]
    root: PathBuf,
    /// Descriptor model: resnet50, resnet101, efficientnet-lite0, resnet-custom (with --weights;
    /// resnet-custom reads its layout from them), auto (the backbone a model file of
    /// insclr-cu train records), or tiny-gem (a baseline that GeM-pools the input pixels)
    /// [default: auto with --weights, else tiny-gem].
    #[arg(long)]
    model: Option<String>,
    /// Weights of --model (.safetensors or .pth): ImageNet weights give raw GeM descriptors,
    /// an insclr-cu model or checkpoint its trained head (optimiser tensors are skipped).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// head: the trained head (the default for files that have one; an error for files
    /// without); gem: the backbone's raw GeM, ignoring any head.
    #[arg(long, value_enum)]
    descriptor: Option<DescriptorArg>,
    /// Pixel normalisation: imagenet, lite, or MEAN/STD of v/255 like
    /// 0.485,0.456,0.406/0.229,0.224,0.225 [default: the one the weights file records, else
    /// the backbone's]. A value that differs from the recorded one is warned about.
    #[arg(long)]
    pixel_norm: Option<String>,
    /// Ground-truth file instead of the dataset's default (revisitop .pkl or .json; list .json).
    #[arg(long)]
    gnd: Option<PathBuf>,
    /// Database descriptors (.npy, N_db x D float32, rows in imlist / index order): skips extraction.
    #[arg(long, requires = "query_feats")]
    db_feats: Option<PathBuf>,
    /// Query descriptors (.npy, N_q x D float32, rows in qimlist / solution-file order).
    #[arg(long, requires = "db_feats")]
    query_feats: Option<PathBuf>,
    /// Extraction scales [default: 1,0.7071,0.5; gldv2: 1.414,1,0.7].
    #[arg(long, value_delimiter = ',')]
    scales: Option<Vec<f64>>,
    /// Longest image side after the thumbnail. It only downscales: smaller images keep their
    /// size, so a collection of mixed resolutions is described at mixed scales (warned about
    /// when the longest sides differ over 2x; a smaller --img-size brings them to one size).
    #[arg(long, default_value_t = extract::IMG_SIZE)]
    img_size: u32,
    /// Images decoded and described together.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Longest side a scaled image may have (a guard against --scales typos that would
    /// exhaust memory).
    #[arg(long, env = "INSCLR_MAX_SIDE", default_value_t = extract::MAX_SIDE)]
    max_side: usize,
    /// Write the extracted descriptors to DIR/db.npy and DIR/query.npy.
    #[arg(long)]
    save_feats: Option<PathBuf>,
    /// Write the numbers as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Database rows per similarity tile (memory: queries x tile floats).
    #[arg(long, default_value_t = Tiling::default().db_tile)]
    tile: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    expansion: super::ExpansionArgs,
    #[command(flatten)]
    rerank: super::verify::RerankArgs,
    /// The feature map local features come from (--rerank): last or mid (see extract).
    #[arg(long, default_value = "last")]
    local_layer: insclr::nn::LocalLayer,
}

pub fn run(args: Args, device: DeviceChoice) -> Result<()> {
    let (rerank, local) = args.rerank.rerank();
    let opts = EvalOptions {
        dataset: match args.dataset {
            Dataset::Roxford5k => Benchmark::Roxford5k,
            Dataset::Rparis6k => Benchmark::Rparis6k,
            Dataset::Gldv2 => Benchmark::Gldv2,
            Dataset::List => Benchmark::List,
        },
        root: args.root,
        model: args.model,
        weights: args.weights,
        descriptor: descriptor_choice(args.descriptor),
        pixel_norm: args.pixel_norm,
        gnd: args.gnd,
        db_feats: args.db_feats,
        query_feats: args.query_feats,
        scales: args.scales,
        img_size: args.img_size,
        batch: args.batch,
        max_side: args.max_side,
        save_feats: args.save_feats,
        json: args.json,
        tile: args.tile,
        qe: args.expansion.qe,
        dba: args.expansion.dba,
        rerank,
        local,
        local_layer: args.local_layer,
        quiet: args.quiet,
    };
    let r = jobs::evaluate(&opts, device)?;
    println!("{}", r.header);
    print!("{}", r.table);
    Ok(())
}
