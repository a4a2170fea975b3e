//! Evaluate: retrieval scores of a model (or of precomputed `.npy` descriptors) on revisited
//! Oxford / Paris, GLDv2 retrieval or a plain image list (`insclr-cu eval`).

use super::extract::{load_choice, model_name, model_ops, read_local_beside};
use crate::backend::{self, Backend, DType, DeviceChoice, Op, Verify};
use crate::eval::expand::{self, Expansion};
use crate::eval::extract::{self, ExtractConfig, ImageItem};
use crate::eval::local::LocalFeatures;
use crate::eval::rank::{Pair, Tiling};
use crate::eval::revisited::{Gnd, Protocol};
use crate::eval::verify::Rerank;
use crate::eval::{self as ev, gldv2, gnd_pickle, list::ListGnd};
use crate::io::paths::{check_outputs, Named};
use crate::io::{self, npy};
use crate::nn::net::DescriptorChoice;
use crate::nn::LocalLayer;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Which benchmark protocol to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Benchmark {
    /// Revisited Oxford5k: ROOT/gnd_roxford5k.pkl (or .json), images `ROOT/jpg/<name>.jpg`.
    Roxford5k,
    /// Revisited Paris6k: ROOT/gnd_rparis6k.pkl (or .json), images `ROOT/jpg/<name>.jpg`.
    Rparis6k,
    /// GLDv2 retrieval: ROOT/test/retrieval_solution_v2.1.csv, ROOT/index/index_image_to_landmark.csv.
    Gldv2,
    /// Any folder: ROOT/gnd.json (or `gnd`) = {imlist, qimlist, gnd: [{ok, junk, bbx?}]}.
    List,
}

impl Benchmark {
    /// Its name on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Benchmark::Roxford5k => "roxford5k",
            Benchmark::Rparis6k => "rparis6k",
            Benchmark::Gldv2 => "gldv2",
            Benchmark::List => "list",
        }
    }
}

impl std::str::FromStr for Benchmark {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Benchmark> {
        [
            Benchmark::Roxford5k,
            Benchmark::Rparis6k,
            Benchmark::Gldv2,
            Benchmark::List,
        ]
        .into_iter()
        .find(|b| b.name() == s)
        .with_context(|| format!("'{s}' is none of list, roxford5k, rparis6k, gldv2"))
    }
}

/// What [`evaluate`] scores, and how. Field names follow `insclr-cu eval`'s flags.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub dataset: Benchmark,
    /// The dataset's folder.
    pub root: PathBuf,
    /// The descriptor model (see [`super::DescribeOptions::model`]).
    pub model: Option<String>,
    pub weights: Option<PathBuf>,
    pub descriptor: DescriptorChoice,
    pub pixel_norm: Option<String>,
    /// A ground-truth file instead of the dataset's default.
    pub gnd: Option<PathBuf>,
    /// Precomputed database and query descriptors (both or neither): no extraction.
    pub db_feats: Option<PathBuf>,
    pub query_feats: Option<PathBuf>,
    /// Extraction scales; `None`: 1, 0.7071, 0.5 (GLDv2: 1.414, 1, 0.7).
    pub scales: Option<Vec<f64>>,
    pub img_size: u32,
    pub batch: usize,
    pub max_side: usize,
    /// Write the extracted descriptors to DIR/db.npy and DIR/query.npy.
    pub save_feats: Option<PathBuf>,
    /// Write the numbers (and each query's top 10) as JSON here.
    pub json: Option<PathBuf>,
    /// Database rows per similarity tile.
    pub tile: usize,
    /// α-weighted query expansion before ranking ([`crate::eval::expand`]).
    pub qe: Option<Expansion>,
    /// α-weighted database-side augmentation before ranking (and before αQE).
    pub dba: Option<Expansion>,
    /// Re-rank each query's first results by spatial verification ([`crate::eval::verify`]):
    /// local features are extracted with the descriptors (`local` per image), or read from
    /// the `.local.npz` beside `--db-feats` / `--query-feats`.
    pub rerank: Option<Rerank>,
    /// Local features per image when extracting for `rerank`, and their map.
    pub local: usize,
    pub local_layer: LocalLayer,
    pub quiet: bool,
}

impl EvalOptions {
    /// The command line's defaults for `dataset` in `root`.
    pub fn new(dataset: Benchmark, root: impl Into<PathBuf>) -> EvalOptions {
        EvalOptions {
            dataset,
            root: root.into(),
            model: None,
            weights: None,
            descriptor: DescriptorChoice::Auto,
            pixel_norm: None,
            gnd: None,
            db_feats: None,
            query_feats: None,
            scales: None,
            img_size: extract::IMG_SIZE,
            batch: 16,
            max_side: extract::MAX_SIDE,
            save_feats: None,
            json: None,
            tile: Tiling::default().db_tile,
            qe: None,
            dba: None,
            rerank: None,
            local: 128,
            local_layer: LocalLayer::Last,
            quiet: false,
        }
    }
}

/// What [`evaluate`] found.
#[derive(Clone, Debug)]
pub struct EvalReport {
    /// "roxford5k: 70 queries, 4993 database images, 2048-d descriptors (...)".
    pub header: String,
    /// The score table, as printed.
    pub table: String,
    /// The document `json` is written from: dataset, descriptors, results (and top hits).
    pub json: serde_json::Value,
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
fn resolve(opts: &EvalOptions) -> Result<(Resolved, Vec<Named>)> {
    let root = &opts.root;
    let mut read = Vec::new();
    let r = match opts.dataset {
        Benchmark::Roxford5k | Benchmark::Rparis6k => {
            let name = opts.dataset.name();
            let path = match &opts.gnd {
                Some(p) => p.clone(),
                None => first_existing(&[
                    root.join(format!("gnd_{name}.pkl")),
                    root.join(format!("gnd_{name}.json")),
                ])?,
            };
            read.push(Named::new("the ground truth", &path));
            Resolved::Revisited(read_gnd(&path)?)
        }
        Benchmark::List => {
            let path = opts.gnd.clone().unwrap_or_else(|| root.join("gnd.json"));
            read.push(Named::new("the ground truth", &path));
            Resolved::List(ListGnd::read(&path)?.as_revisited())
        }
        Benchmark::Gldv2 => {
            let sol_path = opts
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
fn items(opts: &EvalOptions, r: &Resolved) -> (Vec<ImageItem>, Vec<ImageItem>) {
    let root = &opts.root;
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

/// Database and query descriptors, their length, how they were made, and (for `--rerank`)
/// the database's and the queries' local features.
type Described = (
    Vec<f32>,
    Vec<f32>,
    usize,
    String,
    Option<[LocalFeatures; 2]>,
);

/// Descriptors of both sides: loaded from `.npy` or extracted with the model.
fn descriptors(be: &dyn Backend, opts: &EvalOptions, r: &Resolved) -> Result<Described> {
    if let (Some(dbp), Some(qp)) = (&opts.db_feats, &opts.query_feats) {
        let (db, d1) = read_feats(dbp)?;
        let (q, d2) = read_feats(qp)?;
        if d1 != d2 {
            bail!(
                "{} has {d1}-d descriptors but {} has {d2}-d; both must come from the same model",
                dbp.display(),
                qp.display()
            );
        }
        let local = match opts.rerank {
            Some(_) => Some([
                read_local_beside(dbp, db.len() / d1).context("--rerank")?,
                read_local_beside(qp, q.len() / d2).context("--rerank")?,
            ]),
            None => None,
        };
        return Ok((
            db,
            q,
            d1,
            format!("descriptors from {}", dbp.display()),
            local,
        ));
    }
    let choice = load_choice(opts.descriptor, opts.pixel_norm.as_deref(), DType::F32)?;
    let (mut net, what) =
        ev::load_model(be, opts.model.as_deref(), opts.weights.as_deref(), choice)?;
    eprintln!("model: {what}");
    let scales = opts.scales.clone().unwrap_or_else(|| match opts.dataset {
        Benchmark::Gldv2 => extract::GLDV2_SCALES.to_vec(),
        _ => extract::REVISITED_SCALES.to_vec(),
    });
    let cfg = ExtractConfig {
        img_size: opts.img_size,
        scales: scales.clone(),
        batch: opts.batch,
        normalize_each_scale: true,
        progress: !opts.quiet,
        max_side: opts.max_side,
        skip_bad: false,
        exact_size: None,
        local: if opts.rerank.is_some() { opts.local } else { 0 },
        local_layer: opts.local_layer,
    };
    // The ground truth counts every listed image, so an unusable one cannot be left out (or
    // scored as a zero descriptor): the run stops naming it.
    let (db_items, q_items) = items(opts, r);
    let db = extract::extract(be, net.as_mut(), &db_items, &cfg, "database")
        .context("database images: every image of the ground truth must be usable; fix or fetch the ones listed")?;
    let q = extract::extract(be, net.as_mut(), &q_items, &cfg, "queries ")
        .context("query images: every image of the ground truth must be usable; fix or fetch the ones listed")?;
    if let Some(dir) = &opts.save_feats {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, e, n) in [
            ("db.npy", &db, db_items.len()),
            ("query.npy", &q, q_items.len()),
        ] {
            let a = npy::Array::new(vec![n, e.dim], e.feats.clone())?;
            npy::write(&dir.join(name), &a)?;
            if let Some(l) = &e.local {
                l.save(&super::extract::local_path(&dir.join(name)))?;
            }
        }
        eprintln!("wrote {0}/db.npy and {0}/query.npy", dir.display());
    }
    let scales_s: Vec<String> = scales.iter().map(|s| format!("{s:.4}")).collect();
    let how = format!(
        "{} at {} px, scales {}",
        model_name(opts.model.as_deref(), opts.weights.as_deref()),
        opts.img_size,
        scales_s.join(",")
    );
    let local = match (db.local, q.local) {
        (Some(d), Some(q)) => Some([d, q]),
        _ => None,
    };
    Ok((db.feats, q.feats, db.dim, how, local))
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
    head: Option<&[Vec<usize>]>,
) -> Result<Vec<serde_json::Value>> {
    let want = TOP_HITS.max(head.map_or(0, |h| h.iter().map(Vec::len).max().unwrap_or(0)));
    let mut top = ev::rank::top_k(be, pair, want, tiling)?;
    for (q, t) in top.iter_mut().enumerate() {
        if let Some(h) = head {
            *t = ev::with_head(t, &h[q]);
        }
        t.truncate(TOP_HITS);
    }
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

/// Describes the dataset's images (or reads their descriptors), scores the queries and, with
/// `json`, writes the numbers.
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// use insclr::jobs::{evaluate, Benchmark, EvalOptions};
/// let mut opts = EvalOptions::new(Benchmark::Gldv2, "tests/data/gldv2");
/// (opts.img_size, opts.quiet) = (64, true);
/// let report = evaluate(&opts, insclr::backend::DeviceChoice::Cpu)?;
/// println!("{}\n{}", report.header, report.table);
/// assert!(report.json["results"][0]["map_at_100"].as_f64().is_some());
/// # Ok(())
/// # }
/// ```
pub fn evaluate(opts: &EvalOptions, device: DeviceChoice) -> Result<EvalReport> {
    if opts.db_feats.is_some() != opts.query_feats.is_some() {
        bail!("--db-feats and --query-feats go together: give both descriptor files, or neither to extract them");
    }
    let mut ops = vec![Op::Matmul, Op::Knn];
    if opts.rerank.is_some() {
        ops.push(Op::Verify);
    }
    if opts.db_feats.is_none() {
        let model = model_name(opts.model.as_deref(), opts.weights.as_deref());
        ops.extend_from_slice(model_ops(model));
    }
    // Unwritable outputs, and outputs that would replace an input, are found before the
    // work, not after it.
    if let Some(path) = &opts.json {
        io::check_writable(path)?;
    }
    let (r, mut inputs) = resolve(opts)?;
    let mut outputs: Vec<Named> = opts.json.iter().map(|p| Named::new("--json", p)).collect();
    if let Some(dir) = &opts.save_feats {
        for f in ["db.npy", "query.npy"] {
            outputs.push(Named::new("--save-feats", dir.join(f)));
        }
    }
    for (flag, p) in [
        ("--weights", &opts.weights),
        ("--db-feats", &opts.db_feats),
        ("--query-feats", &opts.query_feats),
    ] {
        inputs.extend(p.iter().map(|p| Named::new(flag, p)));
    }
    let (db_items, q_items) = items(opts, &r);
    for it in db_items.iter().chain(&q_items) {
        inputs.push(Named::new("the image", &it.path));
    }
    check_outputs(&inputs, &outputs)?;
    if let Some(dir) = &opts.save_feats {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        io::check_writable(&dir.join("db.npy"))?;
    }
    let (be, chosen) = backend::select_f32(device, &ops)?;
    eprintln!("backend: {chosen}");
    let (db, q, dim, how, local) = descriptors(be.as_ref(), opts, &r)?;
    let tiling = Tiling {
        db_tile: opts.tile.max(1),
        ..Tiling::default()
    };
    let (q, db, expanded) = expand::apply(be.as_ref(), q, db, dim, opts.qe, opts.dba, tiling)?;
    let mut how = how + &expanded;
    let pair = Pair {
        queries: &q,
        db: &db,
        dim,
    };
    let head = match (opts.rerank, &local) {
        (Some(rr), Some([dbl, ql])) => {
            let rr = Rerank {
                verify: Verify {
                    dim: dbl.dim,
                    ..rr.verify
                },
                ..rr
            };
            let lists: Vec<Vec<usize>> = ev::rank::top_k(be.as_ref(), pair, rr.top, tiling)?
                .into_iter()
                .map(|t| t.into_iter().map(|(j, _)| j).collect())
                .collect();
            let t0 = std::time::Instant::now();
            let pairs: usize = lists.iter().map(Vec::len).sum();
            let head = ev::verify::rerank_lists(be.as_ref(), ql, dbl, &lists, &rr, &mut |_| {})?;
            let secs = t0.elapsed().as_secs_f64();
            eprintln!(
                "rerank: {pairs} pairs verified in {secs:.1} s ({:.0} pairs/s)",
                pairs as f64 / secs.max(1e-9)
            );
            how += &format!(
                ", top {} re-ranked by spatial verification (>= {} inliers)",
                rr.top, rr.min_inliers
            );
            Some(head)
        }
        _ => None,
    };
    let head = head.as_deref();
    let nq = q.len() / dim.max(1);
    let ndb = db.len() / dim.max(1);
    let name = opts.dataset.name();
    let header =
        format!("{name}: {nq} queries, {ndb} database images, {dim}-d descriptors ({how})");
    let (table, json) = match &r {
        Resolved::Revisited(g) | Resolved::List(g) => {
            let protocols: &[Protocol] = if matches!(r, Resolved::List(_)) {
                &[Protocol::Medium]
            } else {
                &Protocol::ALL
            };
            let mut res = ev::evaluate_revisited(be.as_ref(), g, pair, protocols, tiling, head)?;
            if matches!(r, Resolved::List(_)) {
                res[0].protocol = "ok/junk".into();
            }
            let top = top_hits(be.as_ref(), g, &(db_items, q_items), pair, tiling, head)?;
            (
                ev::format_revisited(&res),
                serde_json::json!({"dataset": name, "descriptors": how, "results": res, "queries": top}),
            )
        }
        Resolved::Gld { sol, index_ids } => {
            let res = ev::evaluate_gldv2(
                be.as_ref(),
                sol,
                index_ids,
                &sol.queries,
                pair,
                tiling,
                head,
            )?;
            (
                ev::format_gldv2(&res),
                serde_json::json!({"dataset": name, "descriptors": how, "results": res}),
            )
        }
    };
    if let Some(path) = &opts.json {
        npy::write_atomic(path, |w| {
            serde_json::to_writer_pretty(&mut *w, &json)?;
            Ok(())
        })?;
        eprintln!("wrote {}", path.display());
    }
    Ok(EvalReport {
        header,
        table,
        json,
    })
}
