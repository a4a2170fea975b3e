//! `insclr-cu search`: describes query images as `extract` does and prints the most similar
//! images of a descriptor index (text, JSON, or an HTML page of thumbnails).

use super::extract::{load_choice, model_name, model_ops, DescriptorArg};
use anyhow::{bail, Context, Result};
use insclr::backend::{self, DeviceChoice, Op};
use insclr::eval::extract::{self, ExtractConfig, ImageItem};
use insclr::eval::load_model;
use insclr::eval::search::{self, PageInfo};
use insclr::io::{self, npy};
use insclr::knn::Tiling;
use insclr::mining::pool::count_non_unit;
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
    /// Descriptor model, as for `extract` (it must be the one that built the index):
    /// resnet50, resnet101, efficientnet-lite0, resnet-custom, auto, or tiny-gem
    /// [default: auto with --weights, else tiny-gem].
    #[arg(long)]
    model: Option<String>,
    /// Weights of --model (.safetensors or .pth), as given to `extract`.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// head or gem, as given to `extract`.
    #[arg(long, value_enum)]
    descriptor: Option<DescriptorArg>,
    /// Pixel normalisation, as given to `extract` [default: the one the weights file records,
    /// else the backbone's].
    #[arg(long)]
    pixel_norm: Option<String>,
    /// Resize factors, as given to `extract`.
    #[arg(long, value_delimiter = ',', default_values_t = extract::REVISITED_SCALES)]
    scales: Vec<f64>,
    /// Longest image side after the thumbnail, as given to `extract`.
    #[arg(long, default_value_t = extract::IMG_SIZE)]
    img_size: u32,
    /// Average the raw per-scale descriptors, as `extract --raw-scales`.
    #[arg(long)]
    raw_scales: bool,
    /// Query images decoded and described together.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Longest side a scaled image may have.
    #[arg(long, env = "INSCLR_MAX_SIDE", default_value_t = extract::MAX_SIDE)]
    max_side: usize,
    /// Print the results as JSON on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// Also write an HTML page of thumbnails here (images linked by paths relative to it).
    #[arg(long)]
    html: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: Args, device: DeviceChoice) -> Result<()> {
    if args.k == 0 {
        bail!("--k 0 asks for no results; give at least 1");
    }
    if let Some(path) = &args.html {
        io::check_writable(path)?;
    }
    // The index is checked before the model loads: a wrong list fails in a moment.
    let index = search::read_index(&args.index, &args.images)?;
    let n = index.images.len();
    let off = count_non_unit(&index.feats, index.dim, 1e-3);
    if off > 0 {
        eprintln!(
            "warning: {off} of {n} descriptors in {} are not unit norm; scores are raw inner products",
            args.index.display()
        );
    }
    let model = model_name(args.model.as_deref(), args.weights.as_deref());
    let mut ops = vec![Op::Knn];
    ops.extend_from_slice(model_ops(model));
    let (be, chosen) = backend::select_f32(device, &ops)?;
    eprintln!("backend: {chosen}");
    let choice = load_choice(args.descriptor, args.pixel_norm.as_deref())?;
    let (mut net, what) = load_model(
        be.as_ref(),
        args.model.as_deref(),
        args.weights.as_deref(),
        choice,
    )?;
    eprintln!("model: {what}");
    if net.out_dim() != index.dim {
        bail!(
            "{} holds {}-d descriptors but {what} gives {}-d ones; search with the --model/--weights that extract used for this index",
            args.index.display(),
            index.dim,
            net.out_dim()
        );
    }
    let items: Vec<ImageItem> = args
        .queries
        .iter()
        .map(|p| ImageItem {
            path: p.clone(),
            bbx: None,
        })
        .collect();
    let cfg = ExtractConfig {
        img_size: args.img_size,
        scales: args.scales.clone(),
        batch: args.batch,
        normalize_each_scale: !args.raw_scales,
        progress: !args.quiet,
        max_side: args.max_side,
        skip_bad: false,
    };
    let q = extract::extract(be.as_ref(), net.as_mut(), &items, &cfg, "queries")
        .context("query images: fix or drop the ones listed")?;
    if q.dim != index.dim {
        bail!(
            "{} holds {}-d descriptors but the queries came out {}-d; search with the model that built the index",
            args.index.display(),
            index.dim,
            q.dim
        );
    }
    let names: Vec<String> = args
        .queries
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let results = search::search(
        be.as_ref(),
        &index,
        &q.feats,
        &names,
        args.k,
        Tiling::default(),
    )?;
    let scales: Vec<String> = args.scales.iter().map(|s| format!("{s}")).collect();
    let how = format!(
        "{what} at {} px, scales {}{}",
        args.img_size,
        scales.join(","),
        if args.raw_scales { " (raw)" } else { "" }
    );
    if args.json {
        let doc = serde_json::json!({
            "index": args.index.display().to_string(),
            "images": args.images.display().to_string(),
            "model": model,
            "weights": args.weights.as_ref().map(|p| p.display().to_string()),
            "descriptor": what,
            "img_size": args.img_size,
            "scales": args.scales,
            "raw_scales": args.raw_scales,
            "k": args.k,
            "dim": index.dim,
            "database_size": n,
            "queries": results,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", search::format_text(&results));
    }
    if let Some(path) = &args.html {
        let page = search::render_html(
            &results,
            &args.queries,
            &index.paths,
            path,
            &PageInfo {
                index: &args.index,
                how: &how,
            },
        )?;
        npy::write_atomic(path, |w| {
            use std::io::Write;
            w.write_all(page.as_bytes())?;
            Ok(())
        })?;
        eprintln!("wrote {}", path.display());
        // The list holds the paths extract was given, relative to the folder it ran in: from
        // elsewhere the page's links would be broken, so say so rather than leave it to a look.
        let missing: Vec<&str> = results
            .iter()
            .flat_map(|q| &q.results)
            .filter(|h| !index.paths[h.row].exists())
            .map(|h| h.image.as_str())
            .collect();
        if let Some(first) = missing.first() {
            eprintln!(
                "warning: {} result image(s) of the page are not found (first: {first}); \
                 relative paths in {} are read from the current folder or the list's folder, \
                 so run search from the folder extract ran in",
                missing.len(),
                args.images.display()
            );
        }
    }
    Ok(())
}
