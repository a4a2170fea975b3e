//! `insclr-cu search`: describes query images as `extract` does and prints the most similar
//! images of a descriptor index (text, JSON, or an HTML page of thumbnails).

use super::extract::{model_ops, DescribeArgs};
use anyhow::{bail, Context, Result};
use insclr::backend::{self, DeviceChoice, Op};
use insclr::eval::extract::{self, ImageItem};
use insclr::eval::search::{self, PageInfo};
use insclr::io::paths::{check_outputs, Named};
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
    if let Some(path) = &args.html {
        // `--html q.jpg` with the page's name forgotten makes the query the page: caught here.
        let mut inputs = vec![
            Named::new("--index", &args.index),
            Named::new("--images", &args.images),
        ];
        inputs.extend(
            args.describe
                .weights
                .iter()
                .map(|w| Named::new("--weights", w)),
        );
        inputs.extend(args.queries.iter().map(|q| Named::new("the query", q)));
        inputs.extend(index.paths.iter().map(|p| Named::new("the index image", p)));
        check_outputs(&inputs, &[Named::new("--html", path)])?;
    }
    let n = index.images.len();
    let off = count_non_unit(&index.feats, index.dim, 1e-3);
    if off > 0 {
        eprintln!(
            "warning: {off} of {n} descriptors in {} are not unit norm; scores are raw inner products",
            args.index.display()
        );
    }
    let model = args.describe.model_name();
    let mut ops = vec![Op::Knn];
    ops.extend_from_slice(model_ops(model));
    let (be, chosen) = backend::select_f32(device, &ops)?;
    eprintln!("backend: {chosen}");
    let (mut net, what) = args.describe.load(be.as_ref())?;
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
    let cfg = args.describe.config(false);
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
    let scales: Vec<String> = args
        .describe
        .scales
        .iter()
        .map(|s| format!("{s}"))
        .collect();
    let how = format!(
        "{what} at {} px, scales {}{}",
        args.describe.img_size,
        scales.join(","),
        if args.describe.raw_scales {
            " (raw)"
        } else {
            ""
        }
    );
    if args.json {
        let doc = serde_json::json!({
            "index": args.index.display().to_string(),
            "images": args.images.display().to_string(),
            "model": model,
            "weights": args.describe.weights.as_ref().map(|p| p.display().to_string()),
            "descriptor": what,
            "img_size": args.describe.img_size,
            "scales": args.describe.scales,
            "raw_scales": args.describe.raw_scales,
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
