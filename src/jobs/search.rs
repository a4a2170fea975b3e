//! Search: describe query images as `extract` described an index, and find their most similar
//! index images (`insclr-cu search`; text, JSON or an HTML page of thumbnails).

use super::extract::DescribeOptions;
use crate::backend::Verify;
use crate::backend::{self, DeviceChoice, Op};
use crate::eval::expand::{self, Expansion};
use crate::eval::extract::{self, ExtractConfig, ImageItem};
use crate::eval::search::Hit;
use crate::eval::search::{self as index_search, PageInfo, QueryResults};
use crate::eval::verify::{rerank_lists, Rerank};
use crate::io::paths::{check_outputs, Named};
use crate::io::{self, npy};
use crate::knn::Tiling;
use crate::mining::pool::count_non_unit;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// What [`search`] looks for, where, and how the queries are described.
#[derive(Clone, Debug)]
pub struct SearchOptions {
    /// Index descriptors written by [`super::extract()`] (.npy, N x D float32).
    pub index: PathBuf,
    /// The image of each index row: the .txt `extract` writes beside the .npy.
    pub images: PathBuf,
    /// Query images.
    pub queries: Vec<PathBuf>,
    /// Results per query.
    pub k: usize,
    /// The model and extraction settings the index was described with.
    pub describe: DescribeOptions,
    /// Also write an HTML page of thumbnails here (images linked by paths relative to it).
    pub html: Option<PathBuf>,
    /// α-weighted query expansion before ranking ([`crate::eval::expand`]).
    pub qe: Option<Expansion>,
    /// α-weighted database-side augmentation of the index before ranking (and before αQE).
    pub dba: Option<Expansion>,
    /// Re-rank each query's first results by spatial verification against the index's local
    /// features (the `.local.npz` `extract --local` wrote beside `index`).
    pub rerank: Option<Rerank>,
    /// Local features per query image for `rerank`.
    pub local: usize,
}

impl Default for SearchOptions {
    /// The command line's defaults: 10 results per query, described as `extract` describes.
    fn default() -> Self {
        SearchOptions {
            index: PathBuf::new(),
            images: PathBuf::new(),
            queries: Vec::new(),
            k: 10,
            describe: DescribeOptions::default(),
            html: None,
            qe: None,
            dba: None,
            rerank: None,
            local: 128,
        }
    }
}

/// What [`search`] found.
#[derive(Clone, Debug)]
pub struct SearchReport {
    /// Per query, its best `k` index images.
    pub results: Vec<QueryResults>,
    /// The settings and results as one JSON document (`insclr-cu search --json`).
    pub json: serde_json::Value,
}

/// Describes `opts.queries` and ranks the index against them; with `html`, writes the page.
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// use insclr::jobs::{extract, search, DescribeOptions, ExtractOptions, SearchOptions};
/// let cpu = insclr::backend::DeviceChoice::Cpu;
/// let dir = std::env::temp_dir().join(format!("insclr-doc-search-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let describe = DescribeOptions { img_size: 64, quiet: true, ..Default::default() };
/// let index = ExtractOptions {
///     images: "tests/data/gldv2/index".into(),
///     out: dir.join("index.npy"),
///     describe: describe.clone(),
///     ..Default::default()
/// };
/// extract(&index, cpu)?;
/// let query = insclr::data::image::list_images("tests/data/gldv2/test".as_ref())?[0].clone();
/// let found = search(
///     &SearchOptions {
///         index: dir.join("index.npy"),
///         images: dir.join("index.txt"),
///         queries: vec![query.clone()],
///         k: 3,
///         describe,
///         ..Default::default()
///     },
///     cpu,
/// )?;
/// assert_eq!(found.results[0].results.len(), 3);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
pub fn search(opts: &SearchOptions, device: DeviceChoice) -> Result<SearchReport> {
    if opts.k == 0 {
        bail!("--k 0 asks for no results; give at least 1");
    }
    if let Some(path) = &opts.html {
        io::check_writable(path)?;
    }
    // The index is checked before the model loads: a wrong list fails in a moment.
    let index = index_search::read_index(&opts.index, &opts.images)?;
    if let Some(path) = &opts.html {
        // `--html q.jpg` with the page's name forgotten makes the query the page: caught here.
        let mut inputs = vec![
            Named::new("--index", &opts.index),
            Named::new("--images", &opts.images),
        ];
        inputs.extend(
            opts.describe
                .weights
                .iter()
                .map(|w| Named::new("--weights", w)),
        );
        inputs.extend(opts.queries.iter().map(|q| Named::new("the query", q)));
        inputs.extend(index.paths.iter().map(|p| Named::new("the index image", p)));
        check_outputs(&inputs, &[Named::new("--html", path)])?;
    }
    let n = index.images.len();
    let off = count_non_unit(&index.feats, index.dim, 1e-3);
    if off > 0 {
        eprintln!(
            "warning: {off} of {n} descriptors in {} are not unit norm; scores are raw inner products",
            opts.index.display()
        );
    }
    let model = opts.describe.model_name();
    let mut ops = vec![Op::Knn];
    let index_local = match opts.rerank {
        Some(_) => {
            ops.push(Op::Verify);
            Some(super::extract::read_local_beside(&opts.index, n).context("--rerank")?)
        }
        None => None,
    };
    let mut needs = backend::f32_needs(&ops);
    needs.extend(opts.describe.needs());
    let (be, chosen) = backend::select(device, &needs)?;
    eprintln!("backend: {chosen}");
    let (mut net, what) = opts.describe.load(be.as_ref())?;
    if net.out_dim() != index.dim {
        bail!(
            "{} holds {}-d descriptors but {what} gives {}-d ones; search with the --model/--weights that extract used for this index",
            opts.index.display(),
            index.dim,
            net.out_dim()
        );
    }
    let items: Vec<ImageItem> = opts
        .queries
        .iter()
        .map(|p| ImageItem {
            path: p.clone(),
            bbx: None,
        })
        .collect();
    let cfg = ExtractConfig {
        local: if opts.rerank.is_some() { opts.local } else { 0 },
        ..opts.describe.config(false)
    };
    let q = extract::extract(be.as_ref(), net.as_mut(), &items, &cfg, "queries")
        .context("query images: fix or drop the ones listed")?;
    if q.dim != index.dim {
        bail!(
            "{} holds {}-d descriptors but the queries came out {}-d; search with the model that built the index",
            opts.index.display(),
            index.dim,
            q.dim
        );
    }
    let names: Vec<String> = opts
        .queries
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let mut index = index;
    let (queries, feats, expanded) = expand::apply(
        be.as_ref(),
        q.feats,
        std::mem::take(&mut index.feats),
        index.dim,
        opts.qe,
        opts.dba,
        Tiling::default(),
    )?;
    index.feats = feats;
    let top = opts.rerank.map_or(opts.k, |r| r.top.max(opts.k));
    let mut results = index_search::search(
        be.as_ref(),
        &index,
        &queries,
        &names,
        top,
        Tiling::default(),
    )?;
    let mut expanded = expanded;
    if let (Some(r), Some(il), Some(ql)) = (opts.rerank, &index_local, &q.local) {
        let r = Rerank {
            verify: Verify {
                dim: il.dim,
                ..r.verify
            },
            ..r
        };
        let lists: Vec<Vec<usize>> = results
            .iter()
            .map(|q| q.results.iter().map(|h| h.row).collect())
            .collect();
        let head = rerank_lists(be.as_ref(), ql, il, &lists, &r, &mut |_| {})?;
        for (q, order) in results.iter_mut().zip(head) {
            let by_row: std::collections::HashMap<usize, Hit> =
                q.results.drain(..).map(|h| (h.row, h)).collect();
            q.results = order
                .iter()
                .enumerate()
                .map(|(i, row)| Hit {
                    rank: i + 1,
                    ..by_row[row].clone()
                })
                .collect();
        }
        expanded += &format!(", top {} re-ranked by spatial verification", r.top);
    }
    for q in &mut results {
        q.results.truncate(opts.k);
    }
    let d = &opts.describe;
    let json = serde_json::json!({
        "index": opts.index.display().to_string(),
        "images": opts.images.display().to_string(),
        "model": model,
        "weights": d.weights.as_ref().map(|p| p.display().to_string()),
        "descriptor": what,
        "img_size": d.img_size,
        "scales": d.scales,
        "raw_scales": d.raw_scales,
        "k": opts.k,
        "expansion": expanded.trim_start_matches(", "),
        "dim": index.dim,
        "database_size": n,
        "queries": results,
    });
    if let Some(path) = &opts.html {
        let scales: Vec<String> = d.scales.iter().map(|s| format!("{s}")).collect();
        let how = format!(
            "{what} at {} px, scales {}{}{expanded}",
            d.img_size,
            scales.join(","),
            if d.raw_scales { " (raw)" } else { "" }
        );
        let page = index_search::render_html(
            &results,
            &opts.queries,
            &index.paths,
            path,
            &PageInfo {
                index: &opts.index,
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
                opts.images.display()
            );
        }
    }
    Ok(SearchReport { results, json })
}
