//! `insclr-cu search`: the database images most similar to a few query images, from the
//! descriptor index `extract` writes (`feats.npy` and the image list `feats.txt` beside it).
//!
//! The ranking is the streaming top-k of the candidate pool and the evaluators
//! ([`crate::knn::top_k`]), so a search agrees with `pool` and `eval` on scores and ties (score
//! descending, then database row ascending). This module reads and checks the index, ranks, and
//! writes the results as text, JSON or a self-contained HTML page.

use crate::backend::Backend;
use crate::eval::extract::first_non_finite;
use crate::io::html::{href, html_escape};
use crate::io::npy;
use crate::knn::{self, Exclude, Pair, Tiling};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A descriptor index: the rows of `feats.npy` and the image of each row.
#[derive(Debug)]
pub struct Index {
    /// Row-major `images.len() x dim` descriptors.
    pub feats: Vec<f32>,
    /// Descriptor length.
    pub dim: usize,
    /// The image of each row as the list writes it.
    pub images: Vec<String>,
    /// Where each image is on disk (see [`resolve_listed`]).
    pub paths: Vec<PathBuf>,
}

/// Where a listed image is: `extract` writes the paths it read, which are relative to the folder
/// it ran in (or absolute). A relative entry is taken from the current folder when it exists
/// there, else from the list's folder (an index moved together with its images).
pub fn resolve_listed(entry: &str, list_dir: &Path) -> PathBuf {
    let p = PathBuf::from(entry);
    if p.is_absolute() || p.exists() {
        return p;
    }
    let beside = list_dir.join(&p);
    if beside.exists() {
        beside
    } else {
        p
    }
}

/// Reads `index` (`.npy`, N x D float32) and `list` (one image per line, row order, as `extract`
/// writes it beside the matrix), refusing a list whose length differs from the rows and
/// descriptors holding NaN or infinity.
pub fn read_index(index: &Path, list: &Path) -> Result<Index> {
    let a = npy::read::<f32>(index)?;
    let (n, dim) = a.dims2(&index.display().to_string())?;
    if n == 0 || dim == 0 {
        bail!(
            "{}: the index is empty ({n} x {dim}); extract descriptors of the database first",
            index.display()
        );
    }
    if let Some((r, c)) = first_non_finite(&a.data, dim) {
        bail!(
            "{}: row {r} of {n} has a non-finite value ({}) in column {c}; descriptors must be finite, extract them again",
            index.display(),
            a.data[r * dim + c]
        );
    }
    let text = std::fs::read_to_string(list)
        .with_context(|| format!("reading image list {}", list.display()))?;
    // The format `extract` writes: one path per line; blank lines carry no row.
    let images: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if images.len() != n {
        bail!(
            "{} lists {} images but {} has {n} rows; pass the .txt that extract wrote beside this .npy (row r of the matrix is line r of the list)",
            list.display(),
            images.len(),
            index.display()
        );
    }
    let list_dir = list.parent().unwrap_or(Path::new(""));
    let paths = images.iter().map(|e| resolve_listed(e, list_dir)).collect();
    Ok(Index {
        feats: a.data,
        dim,
        images,
        paths,
    })
}

/// One database image of a query's results.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hit {
    /// 1 for the most similar.
    pub rank: usize,
    /// The image as the index list names it.
    pub image: String,
    /// Its row in the index.
    pub row: usize,
    /// Inner product of the two descriptors (cosine for unit descriptors).
    pub score: f32,
}

/// The results of one query image.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueryResults {
    /// The query image as given.
    pub query: String,
    /// Best first.
    pub results: Vec<Hit>,
}

/// The `k` most similar index rows of each query (`nq x index.dim`, row-major), best first.
pub fn search(
    be: &dyn Backend,
    index: &Index,
    queries: &[f32],
    names: &[String],
    k: usize,
    tiling: Tiling,
) -> Result<Vec<QueryResults>> {
    let pair = Pair {
        queries,
        db: &index.feats,
        dim: index.dim,
    };
    let (nq, _) = pair.sizes()?;
    if nq != names.len() {
        bail!("search: {nq} query descriptors for {} names", names.len());
    }
    let nb = knn::top_k(be, pair, k, Exclude::Nothing, tiling, &mut |_| {})?;
    Ok(names
        .iter()
        .enumerate()
        .map(|(q, name)| QueryResults {
            query: name.clone(),
            results: nb
                .indices(q)
                .iter()
                .zip(nb.scores(q))
                .enumerate()
                .map(|(r, (&j, &s))| Hit {
                    rank: r + 1,
                    image: index.images[j as usize].clone(),
                    row: j as usize,
                    score: s,
                })
                .collect(),
        })
        .collect())
}

/// Per query: its name, then one `rank  score  image` line per result.
pub fn format_text(results: &[QueryResults]) -> String {
    let mut s = String::new();
    for q in results {
        let _ = writeln!(s, "query {}", q.query);
        for h in &q.results {
            let _ = writeln!(s, "{:>4}  {:.4}  {}", h.rank, h.score, h.image);
        }
    }
    s
}

/// Settings shown at the top of the page.
pub struct PageInfo<'a> {
    /// The index file.
    pub index: &'a Path,
    /// How the queries were described (model, size, scales).
    pub how: &'a str,
}

/// A self-contained HTML page of the results, to be written at `out`: each query and its
/// results as thumbnails, images referenced by paths relative to `out`'s folder (no network,
/// no script). `query_paths[q]` is where query `q` is; `db_paths[row]` where index row `row` is.
pub fn render_html(
    results: &[QueryResults],
    query_paths: &[PathBuf],
    db_paths: &[PathBuf],
    out: &Path,
    info: &PageInfo,
) -> Result<String> {
    let src = |p: &Path| href(p, out);
    let mut s = String::new();
    s.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>insclr-cu search</title>\n<style>\n\
         body{font-family:sans-serif;margin:1.5em;color:#222}\n\
         .query{margin-bottom:2em;border-top:1px solid #ccc;padding-top:1em}\n\
         .row{display:flex;flex-wrap:wrap;gap:10px}\n\
         figure{margin:0;width:170px;font-size:12px;word-break:break-all}\n\
         figure img{max-width:160px;max-height:160px;display:block;border:1px solid #ddd}\n\
         figure.q img{border:3px solid #36c}\n\
         .meta{color:#666}\n\
         </style>\n</head>\n<body>\n<h1>insclr-cu search</h1>\n",
    );
    let _ = writeln!(
        s,
        "<p class=\"meta\">index {}; queries described with {}</p>",
        html_escape(&info.index.display().to_string()),
        html_escape(info.how)
    );
    for (q, qp) in results.iter().zip(query_paths) {
        let _ = writeln!(s, "<section class=\"query\">\n<div class=\"row\">");
        let _ = writeln!(
            s,
            "<figure class=\"q\"><img src=\"{}\" alt=\"query\" loading=\"lazy\"><figcaption>query<br>{}</figcaption></figure>",
            src(qp)?,
            html_escape(&q.query)
        );
        for h in &q.results {
            let _ = writeln!(
                s,
                "<figure><img src=\"{}\" alt=\"rank {}\" loading=\"lazy\"><figcaption>{}. {:.4}<br>{}</figcaption></figure>",
                src(&db_paths[h.row])?,
                h.rank,
                h.rank,
                h.score,
                html_escape(&h.image)
            );
        }
        s.push_str("</div>\n</section>\n");
    }
    s.push_str("</body>\n</html>\n");
    Ok(s)
}
