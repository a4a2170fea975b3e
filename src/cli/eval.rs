//! `insclr-cu eval`: scores a model (or precomputed `.npy` descriptors) on revisited Oxford /
//! Paris, GLDv2 retrieval or a plain image list, and prints one table.

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use insclr::backend::{self, Backend, DeviceChoice, Op};
use insclr::eval::extract::{self, ExtractConfig, ImageItem};
use insclr::eval::rank::{Pair, Tiling};
use insclr::eval::revisited::{Gnd, Protocol};
use insclr::eval::{self as ev, gldv2, gnd_pickle, list::ListGnd};
use insclr::io::paths::{check_outputs, Named};
use insclr::io::{self, npy};
use std::path::{Path, PathBuf};

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
    descriptor: Option<super::extract::DescriptorArg>,
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
}

/// A dataset resolved to files: what to describe and how to score it.
enum Resolved {
    Revisited(Gnd),
    List(Gnd),
    Gld {
        sol: gldv2::Solutions,
        index_ids: Vec<String>,
    },
}

fn first_existing(cands: &[PathBuf]) -> Result<PathBuf> {
    cands.iter().find(|p| p.exists()).cloned().with_context(|| {
        format!(
            "none of {} exists; pass --gnd FILE or fix --root",
            cands
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// Reads a revisitop ground truth: the official `.pkl`, or `.json` with the same keys.
fn read_gnd(path: &Path) -> Result<Gnd> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => Gnd::read_json(path),
        _ => gnd_pickle::read(path),
    }
}

/// The dataset's ground truth and index files, read and checked, with the files read.
fn resolve(args: &Args) -> Result<(Resolved, Vec<Named>)> {
    let root = &args.root;
    let mut read = Vec::new();
    let r = match args.dataset {
        Dataset::Roxford5k | Dataset::Rparis6k => {
            let name = if args.dataset == Dataset::Roxford5k {
                "roxford5k"
            } else {
                "rparis6k"
            };
            let path = match &args.gnd {
                Some(p) => p.clone(),
                None => first_existing(&[
                    root.join(format!("gnd_{name}.pkl")),
                    root.join(format!("gnd_{name}.json")),
                ])?,
            };
            read.push(Named::new("the ground truth", &path));
            Resolved::Revisited(read_gnd(&path)?)
        }
        Dataset::List => {
            let path = args.gnd.clone().unwrap_or_else(|| root.join("gnd.json"));
            read.push(Named::new("the ground truth", &path));
            Resolved::List(ListGnd::read(&path)?.as_revisited())
        }
        Dataset::Gldv2 => {
            let sol_path = args
                .gnd
                .clone()
                .unwrap_or_else(|| root.join("test").join("retrieval_solution_v2.1.csv"));
            read.push(Named::new("the ground truth", &sol_path));
            let sol = gldv2::read_solution(&sol_path)?;
            let index_csv = first_existing(&[
                root.join("index").join("index_image_to_landmark.csv"),
                root.join("index.csv"),
            ])?;
            read.push(Named::new("the index list", &index_csv));
            Resolved::Gld {
                sol,
                index_ids: gldv2::read_ids(&index_csv)?,
            }
        }
    };
    Ok((r, read))
}

/// The database and query images of a resolved dataset, in descriptor row order.
fn items(args: &Args, r: &Resolved) -> (Vec<ImageItem>, Vec<ImageItem>) {
    let root = &args.root;
    let plain = |p: PathBuf| ImageItem { path: p, bbx: None };
    match r {
        Resolved::Revisited(g) => {
            let jpg = |n: &str| root.join("jpg").join(format!("{n}.jpg"));
            (
                g.imlist.iter().map(|n| plain(jpg(n))).collect(),
                g.qimlist
                    .iter()
                    .zip(&g.gnd)
                    .map(|(n, q)| ImageItem {
                        path: jpg(n),
                        bbx: q.bbx,
                    })
                    .collect(),
            )
        }
        Resolved::List(g) => (
            g.imlist.iter().map(|n| plain(root.join(n))).collect(),
            g.qimlist
                .iter()
                .zip(&g.gnd)
                .map(|(n, q)| ImageItem {
                    path: root.join(n),
                    bbx: q.bbx,
                })
                .collect(),
        ),
        // Queries are never cropped on GLDv2 (spec 6.3).
        Resolved::Gld { sol, index_ids } => (
            index_ids
                .iter()
                .map(|id| plain(gldv2::image_path(&root.join("index"), id)))
                .collect(),
            sol.queries
                .iter()
                .map(|id| plain(gldv2::image_path(&root.join("test"), id)))
                .collect(),
        ),
    }
}

/// A descriptor file, refused when it holds NaN or infinities (they would rank anywhere and
/// still print a plausible mAP).
fn read_feats(path: &Path) -> Result<(Vec<f32>, usize)> {
    let a = npy::read::<f32>(path)?;
    let (n, d) = a.dims2(&path.display().to_string())?;
    if let Some((r, c)) = extract::first_non_finite(&a.data, d) {
        bail!(
            "{}: row {r} of {n} has a non-finite value ({}) in column {c}; descriptors must be finite, extract them again",
            path.display(),
            a.data[r * d + c]
        );
    }
    Ok((a.data, d))
}

/// Descriptors of both sides: loaded from `.npy` or extracted with the model.
fn descriptors(
    be: &dyn Backend,
    args: &Args,
    r: &Resolved,
) -> Result<(Vec<f32>, Vec<f32>, usize, String)> {
    if let (Some(dbp), Some(qp)) = (&args.db_feats, &args.query_feats) {
        let (db, d1) = read_feats(dbp)?;
        let (q, d2) = read_feats(qp)?;
        if d1 != d2 {
            bail!(
                "{} has {d1}-d descriptors but {} has {d2}-d; both must come from the same model",
                dbp.display(),
                qp.display()
            );
        }
        return Ok((db, q, d1, format!("descriptors from {}", dbp.display())));
    }
    let choice = super::extract::load_choice(args.descriptor, args.pixel_norm.as_deref())?;
    let (mut net, what) =
        ev::load_model(be, args.model.as_deref(), args.weights.as_deref(), choice)?;
    eprintln!("model: {what}");
    let scales = args.scales.clone().unwrap_or_else(|| match args.dataset {
        Dataset::Gldv2 => extract::GLDV2_SCALES.to_vec(),
        _ => extract::REVISITED_SCALES.to_vec(),
    });
    let cfg = ExtractConfig {
        img_size: args.img_size,
        scales: scales.clone(),
        batch: args.batch,
        normalize_each_scale: true,
        progress: !args.quiet,
        max_side: args.max_side,
        skip_bad: false,
        exact_size: None,
    };
    // The ground truth counts every listed image, so an unusable one cannot be left out (or
    // scored as a zero descriptor): the run stops naming it.
    let (db_items, q_items) = items(args, r);
    let db = extract::extract(be, net.as_mut(), &db_items, &cfg, "database")
        .context("database images: every image of the ground truth must be usable; fix or fetch the ones listed")?;
    let q = extract::extract(be, net.as_mut(), &q_items, &cfg, "queries ")
        .context("query images: every image of the ground truth must be usable; fix or fetch the ones listed")?;
    if let Some(dir) = &args.save_feats {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, e, n) in [
            ("db.npy", &db, db_items.len()),
            ("query.npy", &q, q_items.len()),
        ] {
            let a = npy::Array::new(vec![n, e.dim], e.feats.clone())?;
            npy::write(&dir.join(name), &a)?;
        }
        eprintln!("wrote {0}/db.npy and {0}/query.npy", dir.display());
    }
    let scales_s: Vec<String> = scales.iter().map(|s| format!("{s:.4}")).collect();
    let how = format!(
        "{} at {} px, scales {}",
        super::extract::model_name(args.model.as_deref(), args.weights.as_deref()),
        args.img_size,
        scales_s.join(",")
    );
    Ok((db.feats, q.feats, db.dim, how))
}

/// Results per query kept in the JSON (`insclr-cu report` shows them).
const TOP_HITS: usize = 10;

/// Each query's first [`TOP_HITS`] database images with their score and mark under the Medium
/// protocol (`ok`: easy or hard, `junk`, else `wrong`), paths as described.
fn top_hits(
    be: &dyn Backend,
    g: &Gnd,
    (db, queries): &(Vec<ImageItem>, Vec<ImageItem>),
    pair: Pair,
    tiling: Tiling,
) -> Result<Vec<serde_json::Value>> {
    let top = ev::rank::top_k(be, pair, TOP_HITS, tiling)?;
    Ok(top
        .iter()
        .zip(&g.gnd)
        .zip(queries)
        .map(|((hits, q), item)| {
            let (ok, junk) = Protocol::Medium.split(q);
            let hits: Vec<_> = hits
                .iter()
                .map(|&(j, score)| {
                    let mark = if ok.contains(&j) {
                        "ok"
                    } else if junk.contains(&j) {
                        "junk"
                    } else {
                        "wrong"
                    };
                    serde_json::json!({"path": db[j].path, "score": score, "mark": mark})
                })
                .collect();
            serde_json::json!({"path": item.path, "top": hits})
        })
        .collect())
}

pub fn run(args: Args, device: DeviceChoice) -> Result<()> {
    let mut ops = vec![Op::Matmul, Op::Knn];
    if args.db_feats.is_none() {
        let model = super::extract::model_name(args.model.as_deref(), args.weights.as_deref());
        ops.extend_from_slice(super::extract::model_ops(model));
    }
    // Unwritable outputs, and outputs that would replace an input, are found before the
    // work, not after it.
    if let Some(path) = &args.json {
        io::check_writable(path)?;
    }
    let (r, mut inputs) = resolve(&args)?;
    let mut outputs: Vec<Named> = args.json.iter().map(|p| Named::new("--json", p)).collect();
    if let Some(dir) = &args.save_feats {
        for f in ["db.npy", "query.npy"] {
            outputs.push(Named::new("--save-feats", dir.join(f)));
        }
    }
    for (flag, p) in [
        ("--weights", &args.weights),
        ("--db-feats", &args.db_feats),
        ("--query-feats", &args.query_feats),
    ] {
        inputs.extend(p.iter().map(|p| Named::new(flag, p)));
    }
    let (db_items, q_items) = items(&args, &r);
    for it in db_items.iter().chain(&q_items) {
        inputs.push(Named::new("the image", &it.path));
    }
    check_outputs(&inputs, &outputs)?;
    if let Some(dir) = &args.save_feats {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        io::check_writable(&dir.join("db.npy"))?;
    }
    let (be, chosen) = backend::select_f32(device, &ops)?;
    eprintln!("backend: {chosen}");
    let (db, q, dim, how) = descriptors(be.as_ref(), &args, &r)?;
    let pair = Pair {
        queries: &q,
        db: &db,
        dim,
    };
    let tiling = Tiling {
        db_tile: args.tile.max(1),
        ..Tiling::default()
    };
    let nq = q.len() / dim.max(1);
    let ndb = db.len() / dim.max(1);
    let name = format!("{:?}", args.dataset).to_lowercase();
    println!("{name}: {nq} queries, {ndb} database images, {dim}-d descriptors ({how})");
    let json = match &r {
        Resolved::Revisited(g) | Resolved::List(g) => {
            let protocols: &[Protocol] = if matches!(r, Resolved::List(_)) {
                &[Protocol::Medium]
            } else {
                &Protocol::ALL
            };
            let mut res = ev::evaluate_revisited(be.as_ref(), g, pair, protocols, tiling)?;
            if matches!(r, Resolved::List(_)) {
                res[0].protocol = "ok/junk".into();
            }
            print!("{}", ev::format_revisited(&res));
            let top = top_hits(be.as_ref(), g, &items(&args, &r), pair, tiling)?;
            serde_json::json!({"dataset": name, "descriptors": how, "results": res, "queries": top})
        }
        Resolved::Gld { sol, index_ids } => {
            let res = ev::evaluate_gldv2(be.as_ref(), sol, index_ids, &sol.queries, pair, tiling)?;
            print!("{}", ev::format_gldv2(&res));
            serde_json::json!({"dataset": name, "descriptors": how, "results": res})
        }
    };
    if let Some(path) = &args.json {
        npy::write_atomic(path, |w| {
            serde_json::to_writer_pretty(&mut *w, &json)?;
            Ok(())
        })?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
