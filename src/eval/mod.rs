//! Retrieval evaluation as the benchmarks define it (spec section 6): multi-scale extraction,
//! streaming ranking, revisited Oxford / Paris (Easy / Medium / Hard), GLDv2 mAP@100, and the
//! plain list protocol. Scoring takes descriptors from anywhere (our models or `.npy` files
//! written by other tools), so results are comparable on the same protocol.

pub mod expand;
pub mod extract;
pub mod gldv2;
pub mod gnd_pickle;
pub mod list;
pub mod local;
pub mod rank;
pub mod revisited;
pub mod search;
pub mod verify;

use crate::backend::Backend;
use crate::nn::net::{DescriptorChoice, LoadChoice};
use crate::nn::DescriptorNet;
use anyhow::{bail, Result};
use rank::{Pair, Tiling};
use revisited::{Gnd, Protocol, Summary};
use serde::Serialize;
use std::collections::HashMap;

/// Names accepted by `--model`.
pub const MODELS: &[&str] = &[
    "tiny-gem",
    "resnet50",
    "resnet101",
    "efficientnet-lite0",
    "resnet-custom",
];

/// The descriptor network called `name`: the built-in `tiny-gem` baseline (no weights), or a
/// backbone with the weights of `weights` (see [`crate::nn::net::load_descriptor_net`]: an
/// ImageNet file gives raw GeM descriptors, an insclr-cu checkpoint its trained head). The
/// string says what was built.
pub fn model_by_name(
    be: &dyn Backend,
    name: &str,
    weights: Option<&std::path::Path>,
) -> Result<(Box<dyn DescriptorNet>, String)> {
    load_model(be, Some(name), weights, LoadChoice::default())
}

/// [`model_by_name`] with the load choices of `extract` / `eval`: `name` None (or `auto`)
/// takes the backbone a model file of `train` records, or `tiny-gem` without `weights`.
pub fn load_model(
    be: &dyn Backend,
    name: Option<&str>,
    weights: Option<&std::path::Path>,
    choice: LoadChoice,
) -> Result<(Box<dyn DescriptorNet>, String)> {
    let name = match (name, weights) {
        (None, None) => "tiny-gem",
        (None, Some(_)) => "auto",
        (Some(n), _) => n,
    };
    if name == "tiny-gem" {
        if weights.is_some() {
            bail!("tiny-gem has no weights; drop --weights or pick a backbone");
        }
        if choice.descriptor != DescriptorChoice::Auto
            || choice.pixel_norm.is_some()
            || choice.precision != crate::backend::DType::F32
        {
            bail!(
                "--descriptor, --pixel-norm and --precision apply to a backbone with --weights, not to tiny-gem"
            );
        }
        return Ok((
            Box::new(extract::TinyGem),
            "tiny-gem (GeM of the input pixels)".into(),
        ));
    }
    let arch = if name == "auto" {
        None
    } else {
        Some(crate::nn::net::Arch::parse(name).map_err(|_| {
            anyhow::anyhow!(
                "unknown model '{name}'; available: {} or auto (or score precomputed descriptors with --db-feats/--query-feats)",
                MODELS.join(", ")
            )
        })?)
    };
    let Some(path) = weights else {
        bail!("--model {name} needs --weights FILE (.safetensors or .pth; ImageNet weights or an insclr-cu checkpoint)");
    };
    crate::nn::net::load_descriptor_net_with(be, arch, path, choice)
}

/// Scores of one protocol, ready to print.
#[derive(Clone, Debug, Serialize)]
pub struct ProtocolResult {
    /// Protocol name as printed.
    pub protocol: String,
    #[serde(flatten)]
    /// Its scores.
    pub summary: Summary,
}

/// Ranks every query against the database once and scores each requested protocol
/// (revisitop's `compute_map` on the ok / junk of each protocol).
///
/// `head`, when given, is each query's re-ranked beginning (its first database rows in a new
/// order, [`verify::rerank_lists`]): rows in it take their place there, the others keep theirs.
pub fn evaluate_revisited(
    be: &dyn Backend,
    gnd: &Gnd,
    pair: Pair,
    protocols: &[Protocol],
    tiling: Tiling,
    head: Option<&[Vec<usize>]>,
) -> Result<Vec<ProtocolResult>> {
    check_counts(pair, gnd.qimlist.len(), gnd.imlist.len())?;
    // Rank each query's easy, hard and junk images once; every protocol is a regrouping.
    let targets: Vec<Vec<usize>> = gnd
        .gnd
        .iter()
        .map(|g| {
            g.easy
                .iter()
                .chain(&g.hard)
                .chain(&g.junk)
                .copied()
                .collect()
        })
        .collect();
    let mut pos = rank::positions(be, pair, &targets, tiling)?;
    if let Some(head) = head {
        for ((p, t), h) in pos.iter_mut().zip(&targets).zip(head) {
            let place: HashMap<usize, usize> = h.iter().enumerate().map(|(r, &j)| (j, r)).collect();
            for (p, j) in p.iter_mut().zip(t) {
                if let Some(&r) = place.get(j) {
                    *p = r;
                }
            }
        }
    }
    let rank_of: Vec<HashMap<usize, usize>> = targets
        .iter()
        .zip(&pos)
        .map(|(t, p)| t.iter().copied().zip(p.iter().copied()).collect())
        .collect();
    Ok(protocols
        .iter()
        .map(|&p| {
            let scores: Vec<_> = gnd
                .gnd
                .iter()
                .zip(&rank_of)
                .map(|(g, r)| {
                    let (ok, junk) = p.split(g);
                    let okr: Vec<usize> = ok.iter().map(|i| r[i]).collect();
                    let junkr: Vec<usize> = junk.iter().map(|i| r[i]).collect();
                    revisited::score_query(&okr, &junkr)
                })
                .collect();
            ProtocolResult {
                protocol: p.name().to_string(),
                summary: revisited::summarize(&scores),
            }
        })
        .collect())
}

fn check_counts(pair: Pair, nq: usize, ndb: usize) -> Result<()> {
    let d = pair.dim.max(1);
    let (gq, gdb) = (pair.queries.len() / d, pair.db.len() / d);
    if gq != nq || gdb != ndb {
        bail!(
            "descriptors hold {gq} queries and {gdb} database images, but the ground truth has {nq} and {ndb}; extract them from the same lists"
        );
    }
    Ok(())
}

/// Public and Private mAP@100 of a GLDv2 retrieval run.
#[derive(Clone, Debug, Serialize)]
pub struct GldResult {
    /// "Public" or "Private".
    pub split: String,
    /// Queries in the split (all count, predicted or not).
    pub queries: usize,
    /// mAP@100 in [0, 1].
    pub map_at_100: f64,
}

/// GLDv2 retrieval: top-100 index images per query (streamed), scored against both splits.
/// `query_ids[i]` names query row i, `index_ids[j]` database row j.
/// `head` as in [`evaluate_revisited`].
pub fn evaluate_gldv2(
    be: &dyn Backend,
    sol: &gldv2::Solutions,
    index_ids: &[String],
    query_ids: &[String],
    pair: Pair,
    tiling: Tiling,
    head: Option<&[Vec<usize>]>,
) -> Result<Vec<GldResult>> {
    check_counts(pair, query_ids.len(), index_ids.len())?;
    let mut top = rank::top_k(be, pair, gldv2::MAX_PREDICTIONS, tiling)?;
    if let Some(head) = head {
        for (t, h) in top.iter_mut().zip(head) {
            *t = with_head(t, h);
        }
    }
    let mut out = Vec::new();
    for (name, split) in [("Public", &sol.public), ("Private", &sol.private)] {
        let preds: HashMap<String, Vec<String>> = query_ids
            .iter()
            .zip(&top)
            .filter(|(q, _)| split.relevant.contains_key(*q))
            .map(|(q, t)| {
                (
                    q.clone(),
                    t.iter().map(|&(j, _)| index_ids[j].clone()).collect(),
                )
            })
            .collect();
        out.push(GldResult {
            split: name.to_string(),
            queries: split.queries.len(),
            map_at_100: gldv2::mean_average_precision(&preds, split, gldv2::MAX_PREDICTIONS)?,
        });
    }
    Ok(out)
}

/// `list` (best first, `(db row, score)`) with `head` (rows in a new order) first and the rest
/// after in their order, the same length.
pub fn with_head(list: &[(usize, f32)], head: &[usize]) -> Vec<(usize, f32)> {
    let score: HashMap<usize, f32> = list.iter().copied().collect();
    let in_head: std::collections::HashSet<usize> = head.iter().copied().collect();
    head.iter()
        .map(|&j| (j, score.get(&j).copied().unwrap_or(f32::NAN)))
        .chain(list.iter().copied().filter(|(j, _)| !in_head.contains(j)))
        .take(list.len())
        .collect()
}

/// The revisitop-style table: percentages with two decimals.
pub fn format_revisited(results: &[ProtocolResult]) -> String {
    let mut s = format!(
        "{:<8} {:>7} {:>7} {:>7} {:>7} {:>8}\n",
        "protocol", "mAP", "mP@1", "mP@5", "mP@10", "queries"
    );
    for r in results {
        let m = &r.summary;
        s.push_str(&format!(
            "{:<8} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>8}\n",
            r.protocol,
            100.0 * m.map,
            100.0 * m.mp[0],
            100.0 * m.mp[1],
            100.0 * m.mp[2],
            m.queries
        ));
    }
    s
}

/// The GLDv2 table: mAP@100 per split, percent with two decimals.
pub fn format_gldv2(results: &[GldResult]) -> String {
    let mut s = format!("{:<8} {:>8} {:>9}\n", "split", "queries", "mAP@100");
    for r in results {
        s.push_str(&format!(
            "{:<8} {:>8} {:>9.2}\n",
            r.split,
            r.queries,
            100.0 * r.map_at_100
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use revisited::QueryGnd;

    #[test]
    fn revisited_from_descriptors_matches_the_spec_vector() {
        // 1-d descriptors whose order reproduces the spec ranking [3,7,1,0,5,2,9,4,6,8].
        let ranking = [3usize, 7, 1, 0, 5, 2, 9, 4, 6, 8];
        let mut db = vec![0.0f32; 10];
        for (r, &i) in ranking.iter().enumerate() {
            db[i] = 1.0 - r as f32 * 0.05;
        }
        let gnd = Gnd {
            imlist: (0..10).map(|i| i.to_string()).collect(),
            qimlist: vec!["q".into()],
            gnd: vec![QueryGnd {
                easy: vec![7, 0],
                hard: vec![4],
                junk: vec![1],
                bbx: None,
            }],
        };
        let pair = Pair {
            queries: &[1.0],
            db: &db,
            dim: 1,
        };
        let res = evaluate_revisited(
            crate::backend::cpu(),
            &gnd,
            pair,
            &Protocol::ALL,
            Tiling::default(),
            None,
        )
        .unwrap();
        // A re-ranked head [7, 1, 3] of the ranking scores as descriptors ranking
        // [7, 1, 3, 0, 5, 2, 9, 4, 6, 8] do.
        let reranked = [7usize, 1, 3, 0, 5, 2, 9, 4, 6, 8];
        let mut db2 = vec![0.0f32; 10];
        for (r, &i) in reranked.iter().enumerate() {
            db2[i] = 1.0 - r as f32 * 0.05;
        }
        let pair2 = Pair {
            queries: &[1.0],
            db: &db2,
            dim: 1,
        };
        let cpu = crate::backend::cpu();
        let head = [vec![7usize, 1, 3]];
        let with = evaluate_revisited(
            cpu,
            &gnd,
            pair,
            &Protocol::ALL,
            Tiling::default(),
            Some(&head),
        )
        .unwrap();
        let want =
            evaluate_revisited(cpu, &gnd, pair2, &Protocol::ALL, Tiling::default(), None).unwrap();
        for (a, b) in with.iter().zip(&want) {
            assert_eq!(a.summary.map, b.summary.map, "{}", a.protocol);
        }
        assert_ne!(with[1].summary.map, res[1].summary.map);
        // Medium: ok {7,0,4}, junk {1} -> 0.404762.
        assert!((res[1].summary.map - 0.404762).abs() < 1e-6);
        // Easy: ok {7,0}, junk {1,4}: adjusted ranks [1,2] -> 1/2·(0+1/2)/2 + 1/2·(1/2+2/3)/2.
        let easy = 0.5 * (0.0 + 0.5) / 2.0 + 0.5 * (0.5 + 2.0 / 3.0) / 2.0;
        assert!(
            (res[0].summary.map - easy).abs() < 1e-9,
            "{}",
            res[0].summary.map
        );
        let table = format_revisited(&res);
        assert!(table.contains("Medium     40.48"), "{table}");
        let short = Pair {
            queries: &[1.0],
            db: &db[..9],
            dim: 1,
        };
        assert!(evaluate_revisited(
            crate::backend::cpu(),
            &gnd,
            short,
            &Protocol::ALL,
            Tiling::default(),
            None
        )
        .is_err());
    }

    #[test]
    fn gldv2_from_descriptors() {
        let sol =
            gldv2::parse_solution("id,images,Usage\nq0,b,Public\nq1,a b,Private\n", "s").unwrap();
        let index_ids: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let query_ids: Vec<String> = ["q0", "q1", "qx"].iter().map(|s| s.to_string()).collect();
        // 2-d: q0 ranks b first; q1 ranks a, c, b with {a, b} relevant -> AP (1 + 2/3)/2; qx is
        // no query of either split and is ignored.
        let db = [1.0, 0.0, 0.0, 1.0, 0.6, 0.8];
        let q = [0.0, 1.0, 1.0, -0.1, 0.5, 0.5];
        let pair = Pair {
            queries: &q,
            db: &db,
            dim: 2,
        };
        let r = evaluate_gldv2(
            crate::backend::cpu(),
            &sol,
            &index_ids,
            &query_ids,
            pair,
            Tiling::default(),
            None,
        )
        .unwrap();
        assert!((r[0].map_at_100 - 1.0).abs() < 1e-12);
        assert!((r[1].map_at_100 - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-9);
        assert!(format_gldv2(&r).contains("Private"));
    }

    #[test]
    fn a_head_goes_first_and_the_rest_keep_their_order() {
        let list = [(4, 0.9), (2, 0.8), (7, 0.7), (1, 0.6)];
        assert_eq!(
            with_head(&list, &[2, 4]),
            vec![(2, 0.8), (4, 0.9), (7, 0.7), (1, 0.6)]
        );
    }
}
