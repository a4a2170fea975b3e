//! `insclr-cu extract`: the flags of [`insclr::jobs::extract()`].

use anyhow::Result;
use insclr::backend::{DType, DeviceChoice};
use insclr::eval::extract::{IMG_SIZE, MAX_SIDE, REVISITED_SCALES};
use insclr::jobs::{self, DescribeOptions, ExtractOptions};
use insclr::nn::net::DescriptorChoice;
use insclr::nn::LocalLayer;
use std::path::PathBuf;

/// How images become descriptors: the flags `extract` and `search` share, so that `search`
/// can describe its queries exactly as `extract` described the index.
#[derive(clap::Args)]
pub struct DescribeArgs {
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
    /// Longest side a scaled image may have (a guard against --scales typos that would
    /// exhaust memory).
    #[arg(long, env = "INSCLR_MAX_SIDE", default_value_t = MAX_SIDE)]
    max_side: usize,
    /// Resize factors of the normalised image.
    #[arg(long, value_delimiter = ',', default_values_t = REVISITED_SCALES)]
    scales: Vec<f64>,
    /// Longest image side after the thumbnail. It only downscales: smaller images keep their
    /// size, so a collection of mixed resolutions is described at mixed scales (warned about
    /// when the longest sides differ over 2x; a smaller --img-size brings them to one size).
    #[arg(long, default_value_t = IMG_SIZE)]
    img_size: u32,
    /// Resize every image to exactly H,W pixels (aspect ratio not kept) instead of the
    /// thumbnail: the original's candidate-pool features (512,512; spec G4).
    #[arg(long, value_name = "H,W", value_parser = parse_hw)]
    exact_size: Option<[usize; 2]>,
    /// Images decoded and described together (in order of size, largest first; same-size images
    /// share a network call).
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Average the raw per-scale descriptors (no per-scale L2), as the original's stage-0
    /// candidate-pool features (spec G2); the mean is still L2-normalised.
    #[arg(long)]
    raw_scales: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// The feature map local features come from: last (the backbone's output, stride 32, what
    /// GeM pools) or mid (the last stride-16 stage: ResNet layer3, Lite0's 112-channel stage).
    #[arg(long, default_value = "last")]
    local_layer: LocalLayer,
    /// What the backbone and GeM compute in: f32, or bf16 (tensor cores on a GPU, a fraction
    /// of f32's time and memory; the head stays f32). Describe an index and its queries alike.
    #[arg(long, default_value = "f32", value_parser = super::parse_precision)]
    precision: DType,
    /// In f32 on a GPU (or --device emu), run the convolutions on TF32 tensor cores (inputs
    /// rounded to 10 mantissa bits, f32 accumulation: PyTorch's default for f32 convolutions);
    /// `--tf32 false` keeps every convolution exact f32. The CPU is always exact.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    tf32: bool,
}

impl DescribeArgs {
    pub fn options(self) -> DescribeOptions {
        DescribeOptions {
            model: self.model,
            weights: self.weights,
            descriptor: descriptor_choice(self.descriptor),
            pixel_norm: self.pixel_norm,
            max_side: self.max_side,
            scales: self.scales,
            img_size: self.img_size,
            exact_size: self.exact_size,
            batch: self.batch,
            raw_scales: self.raw_scales,
            quiet: self.quiet,
            local_layer: self.local_layer,
            precision: self.precision,
            tf32: self.tf32,
        }
    }
}

/// Arguments of `insclr-cu extract`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    describe: DescribeArgs,
    /// A folder (every image under it, sorted), a text file with one image path per line, or
    /// GLDv2's train_clean.csv (the training set in dataset order, images under --root).
    #[arg(long)]
    images: PathBuf,
    /// Prefix for relative paths in the --images list [default: the list's folder].
    #[arg(long)]
    root: Option<PathBuf>,
    /// Output descriptors (.npy, N x D float32); the image of each row is written beside it as
    /// .txt, and unusable images as .bad.txt (with the reason).
    #[arg(long)]
    out: PathBuf,
    /// Leave unusable images (unreadable, truncated, too small for a scale) out of the matrix
    /// instead of failing; they are listed in <out>.bad.txt.
    #[arg(long)]
    skip_bad: bool,
    /// Also keep the N strongest locations of a feature map (--local-layer) over all scales
    /// (at most 256; 0: none), written to <out stem>.local.npz beside the .npy with the same
    /// rows as the .npy and .txt list: int8 unit descriptors with their (x, y), scale and
    /// strength, about N x dim bytes per image. Needs a backbone (not tiny-gem).
    #[arg(long, value_name = "N", default_value_t = 0)]
    local: usize,
    #[command(flatten)]
    ranks: super::Ranks,
}

/// `H,W` of `--exact-size`: two positive pixel counts.
fn parse_hw(s: &str) -> Result<[usize; 2], String> {
    let v: Vec<usize> = s
        .split(',')
        .map(|x| x.trim().parse::<usize>().ok().filter(|&n| n > 0))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("'{s}' is not H,W in pixels (like 512,512)"))?;
    <[usize; 2]>::try_from(v).map_err(|_| format!("'{s}' is not H,W in pixels (like 512,512)"))
}

pub fn run(args: Args, device: DeviceChoice) -> Result<()> {
    if args.ranks.started_processes(device)? {
        return Ok(());
    }
    let opts = ExtractOptions {
        describe: args.describe.options(),
        images: args.images,
        root: args.root,
        out: args.out,
        skip_bad: args.skip_bad,
        gpus: args.ranks.gpus,
        local: args.local,
    };
    let report = jobs::extract(&opts, device)?;
    if super::prints_results()? {
        println!("{}", report.summary(&opts.out));
        if let Some(line) = report.local_summary() {
            println!("{line}");
        }
    }
    Ok(())
}

/// `--descriptor` of `extract`, `search` and `eval`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DescriptorArg {
    /// The trained head.
    Head,
    /// The backbone's raw GeM.
    Gem,
}

/// The library's choice for `--descriptor` (absent: the head when the file has one).
pub fn descriptor_choice(d: Option<DescriptorArg>) -> DescriptorChoice {
    match d {
        None => DescriptorChoice::Auto,
        Some(DescriptorArg::Head) => DescriptorChoice::Head,
        Some(DescriptorArg::Gem) => DescriptorChoice::Gem,
    }
}
