//! `insclr-cu extract`: multi-scale descriptors of a list or folder of images, written as `.npy`.

use anyhow::{bail, Context, Result};
use insclr::backend::{self, Backend, DeviceChoice, Op};
use insclr::data::image::list_images;
use insclr::data::image::Skipped;
use insclr::eval::extract::{self, BadImages, ExtractConfig, ImageItem};
use insclr::eval::load_model;
use insclr::io::paths::{check_outputs, Named};
use insclr::io::{self, npy};
use insclr::nn::net::{DescriptorChoice, LoadChoice};
use insclr::nn::DescriptorNet;
use std::path::{Path, PathBuf};

/// How images become descriptors: the flags `extract` and `search` share, so that `search`
/// can describe its queries exactly as `extract` described the index.
#[derive(clap::Args)]
pub struct DescribeArgs {
    /// Descriptor model: resnet50, resnet101, efficientnet-lite0, resnet-custom (with --weights;
    /// resnet-custom reads its layout from them), auto (the backbone a model file of
    /// insclr-cu train records), or tiny-gem (a baseline that GeM-pools the input pixels)
    /// [default: auto with --weights, else tiny-gem].
    #[arg(long)]
    pub model: Option<String>,
    /// Weights of --model (.safetensors or .pth): ImageNet weights give raw GeM descriptors,
    /// an insclr-cu model or checkpoint its trained head (optimiser tensors are skipped).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// head: the trained head (the default for files that have one; an error for files
    /// without); gem: the backbone's raw GeM, ignoring any head.
    #[arg(long, value_enum)]
    pub descriptor: Option<DescriptorArg>,
    /// Pixel normalisation: imagenet, lite, or MEAN/STD of v/255 like
    /// 0.485,0.456,0.406/0.229,0.224,0.225 [default: the one the weights file records, else
    /// the backbone's]. A value that differs from the recorded one is warned about.
    #[arg(long)]
    pub pixel_norm: Option<String>,
    /// Longest side a scaled image may have (a guard against --scales typos that would
    /// exhaust memory).
    #[arg(long, env = "INSCLR_MAX_SIDE", default_value_t = extract::MAX_SIDE)]
    pub max_side: usize,
    /// Resize factors of the normalised image.
    #[arg(long, value_delimiter = ',', default_values_t = extract::REVISITED_SCALES)]
    pub scales: Vec<f64>,
    /// Longest image side after the thumbnail. It only downscales: smaller images keep their
    /// size, so a collection of mixed resolutions is described at mixed scales (warned about
    /// when the longest sides differ over 2x; a smaller --img-size brings them to one size).
    #[arg(long, default_value_t = extract::IMG_SIZE)]
    pub img_size: u32,
    /// Resize every image to exactly H,W pixels (aspect ratio not kept) instead of the
    /// thumbnail: the original's candidate-pool features (512,512; spec G4).
    #[arg(long, value_name = "H,W", value_parser = parse_hw)]
    pub exact_size: Option<[usize; 2]>,
    /// Images decoded and described together (in order of size, largest first; same-size images
    /// share a network call).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Average the raw per-scale descriptors (no per-scale L2), as the original's stage-0
    /// candidate-pool features (spec G2); the mean is still L2-normalised.
    #[arg(long)]
    pub raw_scales: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl DescribeArgs {
    /// The model `--model` / `--weights` name.
    pub fn model_name(&self) -> &str {
        model_name(self.model.as_deref(), self.weights.as_deref())
    }

    /// Loads the descriptor network on `be`, with what it is (also printed).
    pub fn load(&self, be: &dyn Backend) -> Result<(Box<dyn DescriptorNet>, String)> {
        let choice = load_choice(self.descriptor, self.pixel_norm.as_deref())?;
        let (net, what) = load_model(be, self.model.as_deref(), self.weights.as_deref(), choice)?;
        eprintln!("model: {what}");
        Ok((net, what))
    }

    /// The extraction settings of these flags.
    pub fn config(&self, skip_bad: bool) -> ExtractConfig {
        ExtractConfig {
            img_size: self.img_size,
            scales: self.scales.clone(),
            batch: self.batch,
            normalize_each_scale: !self.raw_scales,
            progress: !self.quiet,
            max_side: self.max_side,
            skip_bad,
            exact_size: self.exact_size,
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

/// `<out>.bad.txt`: one `path<TAB>reason` line per unusable image.
fn write_bad_list(path: &Path, bad: &Skipped) -> Result<()> {
    npy::write_atomic(path, |w| {
        use std::io::Write;
        for (_, p, why) in &bad.items {
            writeln!(w, "{}\t{}", p.display(), why.replace(['\n', '\t'], " "))?;
        }
        Ok(())
    })
}

pub fn run(args: Args, device: DeviceChoice) -> Result<()> {
    io::check_writable(&args.out)?;
    let model = args.describe.model_name();
    let (be, chosen) = backend::select_f32(device, model_ops(model))?;
    eprintln!("backend: {chosen}");
    let paths = if args.images.is_dir() {
        list_images(&args.images)?
    } else {
        let root = args.root.clone().unwrap_or_else(|| {
            args.images
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default()
        });
        insclr::data::image_paths(&root, Some(&args.images))?
    };
    let bad_list = args.out.with_extension("bad.txt");
    let order = args.out.with_extension("txt");
    let mut inputs = vec![Named::new("--images", &args.images)];
    inputs.extend(
        args.describe
            .weights
            .iter()
            .map(|w| Named::new("--weights", w)),
    );
    inputs.extend(paths.iter().map(|p| Named::new("the image", p)));
    check_outputs(
        &inputs,
        &[
            Named::new("--out", &args.out),
            Named::new("its row list", &order),
            Named::new("its list of unusable images", &bad_list),
        ],
    )?;
    let items: Vec<ImageItem> = paths
        .iter()
        .map(|p| ImageItem {
            path: p.clone(),
            bbx: None,
        })
        .collect();
    let (mut net, _) = args.describe.load(be.as_ref())?;
    let cfg = args.describe.config(args.skip_bad);
    let t0 = std::time::Instant::now();
    let out = match extract::extract(be.as_ref(), net.as_mut(), &items, &cfg, "extract") {
        Ok(out) => out,
        Err(e) => {
            let Some(BadImages(bad)) = e.downcast_ref::<BadImages>() else {
                return Err(e);
            };
            eprintln!("{}", extract::list_bad(bad, 50));
            write_bad_list(&bad_list, bad)?;
            bail!(
                "{} unusable image(s), listed in {}; nothing written to {}. Fix or remove them, or pass --skip-bad to leave them out",
                bad.len(),
                bad_list.display(),
                args.out.display()
            );
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    let n = out.rows.len();
    let arr = npy::Array::new(vec![n, out.dim], out.feats)?;
    npy::write(&args.out, &arr)?;
    npy::write_atomic(&order, |w| {
        use std::io::Write;
        for &i in &out.rows {
            writeln!(w, "{}", paths[i].display())?;
        }
        Ok(())
    })?;
    if args.skip_bad {
        // Written even when empty, so the files beside the matrix always describe this run.
        write_bad_list(&bad_list, &out.skipped)?;
    } else if bad_list.exists() {
        std::fs::remove_file(&bad_list)
            .with_context(|| format!("removing the stale {}", bad_list.display()))?;
    }
    if !out.skipped.is_empty() {
        eprintln!(
            "warning: {}\nleft out of {} (listed in {})",
            extract::list_bad(&out.skipped, 50),
            args.out.display(),
            bad_list.display()
        );
    }
    println!(
        "wrote {} ({n} x {}, {}) and {}: {:.1} images/s",
        args.out.display(),
        out.dim,
        model,
        order.display(),
        n as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// The ops describing images with `model` needs: tiny-gem pools pixels, a backbone runs every
/// eval-mode layer.
pub fn model_ops(model: &str) -> &'static [Op] {
    if model == "tiny-gem" {
        &[Op::GemFwd, Op::L2normFwd]
    } else {
        insclr::nn::EVAL_OPS
    }
}

/// `--descriptor` of `extract` and `eval`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DescriptorArg {
    /// The trained head.
    Head,
    /// The backbone's raw GeM.
    Gem,
}

/// The load choices of `--descriptor` and `--pixel-norm`.
pub fn load_choice(
    descriptor: Option<DescriptorArg>,
    pixel_norm: Option<&str>,
) -> Result<LoadChoice> {
    Ok(LoadChoice {
        descriptor: match descriptor {
            None => DescriptorChoice::Auto,
            Some(DescriptorArg::Head) => DescriptorChoice::Head,
            Some(DescriptorArg::Gem) => DescriptorChoice::Gem,
        },
        pixel_norm: pixel_norm
            .map(insclr::nn::meta::parse_pixel_norm)
            .transpose()
            .context("--pixel-norm")?,
    })
}

/// The model `--model` names, with its default: `auto` with weights, else `tiny-gem`.
pub fn model_name<'a>(model: Option<&'a str>, weights: Option<&Path>) -> &'a str {
    match (model, weights) {
        (Some(m), _) => m,
        (None, Some(_)) => "auto",
        (None, None) => "tiny-gem",
    }
}
