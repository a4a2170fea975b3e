//! `insclr-cu extract`: multi-scale descriptors of a list or folder of images, written as `.npy`.

use anyhow::{bail, Context, Result};
use insclr::backend::{self, DeviceChoice, Op};
use insclr::data::image::list_images;
use insclr::eval::extract::{self, ExtractConfig, ImageItem};
use insclr::eval::model_by_name;
use insclr::io::npy;
use std::path::{Path, PathBuf};

/// Arguments of `insclr-cu extract`.
#[derive(clap::Args)]
pub struct Args {
    /// Descriptor model: resnet50, resnet101, efficientnet-lite0, resnet-custom (with --weights;
    /// resnet-custom reads its layout from them), or tiny-gem
    /// (a baseline that GeM-pools the input pixels).
    #[arg(long, default_value = "tiny-gem")]
    model: String,
    /// Weights of --model (.safetensors or .pth): ImageNet weights give raw GeM descriptors,
    /// an insclr-cu checkpoint its trained head.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// A folder (every image under it, sorted) or a text file with one image path per line.
    #[arg(long)]
    images: PathBuf,
    /// Prefix for relative paths in the --images list [default: the list's folder].
    #[arg(long)]
    root: Option<PathBuf>,
    /// Output descriptors (.npy, N x D float32); the image order is written beside it as .txt.
    #[arg(long)]
    out: PathBuf,
    /// Resize factors of the normalised image.
    #[arg(long, value_delimiter = ',', default_values_t = extract::REVISITED_SCALES)]
    scales: Vec<f64>,
    /// Longest image side after the thumbnail (only downscales).
    #[arg(long, default_value_t = extract::IMG_SIZE)]
    img_size: u32,
    /// Images decoded and described together.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Average the raw per-scale descriptors (no per-scale L2), as the original's stage-0
    /// candidate-pool features (spec G2); the mean is still L2-normalised.
    #[arg(long)]
    raw_scales: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn read_list(list: &Path, root: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(list)
        .with_context(|| format!("reading image list {}", list.display()))?;
    let paths: Vec<PathBuf> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| root.join(l))
        .collect();
    if paths.is_empty() {
        bail!("{}: no image paths (one per line expected)", list.display());
    }
    Ok(paths)
}

pub fn run(args: Args, device: DeviceChoice) -> Result<()> {
    let (be, chosen) = backend::select_f32(device, model_ops(&args.model))?;
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
        read_list(&args.images, &root)?
    };
    let items: Vec<ImageItem> = paths
        .iter()
        .map(|p| ImageItem {
            path: p.clone(),
            bbx: None,
        })
        .collect();
    let (mut net, what) = model_by_name(be.as_ref(), &args.model, args.weights.as_deref())?;
    eprintln!("model: {what}");
    let cfg = ExtractConfig {
        img_size: args.img_size,
        scales: args.scales.clone(),
        batch: args.batch,
        normalize_each_scale: !args.raw_scales,
        progress: !args.quiet,
    };
    let t0 = std::time::Instant::now();
    let out = extract::extract(be.as_ref(), net.as_mut(), &items, &cfg, "extract")?;
    let secs = t0.elapsed().as_secs_f64();
    let arr = npy::Array::new(vec![items.len(), out.dim], out.feats)?;
    npy::write(&args.out, &arr)?;
    let order = args.out.with_extension("txt");
    npy::write_atomic(&order, |w| {
        use std::io::Write;
        for p in &paths {
            writeln!(w, "{}", p.display())?;
        }
        Ok(())
    })?;
    if !out.skipped.is_empty() {
        eprintln!("warning: {} (their rows are zero)", out.skipped.summary(20));
    }
    println!(
        "wrote {} ({} x {}, {}) and {}: {:.1} images/s",
        args.out.display(),
        items.len(),
        out.dim,
        args.model,
        order.display(),
        items.len() as f64 / secs.max(1e-9)
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
