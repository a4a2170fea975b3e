//! Revisited Oxford / Paris evaluation (spec 6.2, traps G20): the Easy / Medium / Hard protocols
//! with junk removal, revisitop's trapezoidal AP, mAP over queries with positives, and mP@k with
//! revisitop's `min(last positive rank, k)` quirk. Works on the 0-based positions of the
//! positives and junk images in each query's ranking, so the full ranking never has to exist
//! (see [`crate::eval::rank::positions`]).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The k of revisitop's mP@k.
pub const PRECISION_KS: [usize; 3] = [1, 5, 10];

/// Ground truth of one query, as in revisitop's `gnd[i]`: 0-based indices into `imlist`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QueryGnd {
    #[serde(default)]
    /// Easy positives.
    pub easy: Vec<usize>,
    #[serde(default)]
    /// Hard positives.
    pub hard: Vec<usize>,
    #[serde(default)]
    /// Images ignored by every protocol.
    pub junk: Vec<usize>,
    /// Query crop box (x1, y1, x2, y2) in pixels of the full query image.
    #[serde(default)]
    pub bbx: Option<[f64; 4]>,
}

/// A revisitop ground truth: database names, query names and one [`QueryGnd`] per query.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Gnd {
    /// Database image names (`jpg/<name>.jpg`).
    pub imlist: Vec<String>,
    /// Query image names.
    pub qimlist: Vec<String>,
    /// One entry per query.
    pub gnd: Vec<QueryGnd>,
}

impl Gnd {
    /// Checks that every index points into `imlist` and that there is one entry per query.
    pub fn validate(&self, name: &str) -> Result<()> {
        if self.gnd.len() != self.qimlist.len() {
            bail!(
                "{name}: {} gnd entries for {} queries; the file is damaged or not a revisitop ground truth",
                self.gnd.len(),
                self.qimlist.len()
            );
        }
        if !self.gnd.is_empty()
            && self
                .gnd
                .iter()
                .all(|g| g.easy.is_empty() && g.hard.is_empty())
        {
            bail!(
                "{name}: none of its {} queries has a positive (every ok / easy and hard list is empty), so there is nothing to score: a mean over no query is undefined; fill in each query's positives",
                self.gnd.len()
            );
        }
        for (q, g) in self.gnd.iter().enumerate() {
            for &i in g.easy.iter().chain(&g.hard).chain(&g.junk) {
                if i >= self.imlist.len() {
                    bail!(
                        "{name}: query {q} ({}) refers to database image {i}, but imlist has {} images",
                        self.qimlist[q],
                        self.imlist.len()
                    );
                }
            }
        }
        Ok(())
    }

    /// Reads a ground truth in JSON with the same keys as the pickle (`imlist`, `qimlist`, `gnd`
    /// with `easy`/`hard`/`junk`/`bbx`).
    pub fn read_json(path: &Path) -> Result<Gnd> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading ground truth {}", path.display()))?;
        let g: Gnd = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not a revisitop ground truth in JSON ({{imlist, qimlist, gnd: [{{easy, hard, junk, bbx}}]}})",
                path.display()
            )
        })?;
        g.validate(&path.display().to_string())?;
        Ok(g)
    }
}

/// One of revisitop's three protocols.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Positives: easy; ignored: junk and hard.
    Easy,
    /// Positives: easy and hard; ignored: junk.
    Medium,
    /// Positives: hard; ignored: junk and easy.
    Hard,
}

impl Protocol {
    /// All three, in the order revisitop prints them.
    pub const ALL: [Protocol; 3] = [Protocol::Easy, Protocol::Medium, Protocol::Hard];

    /// "Easy", "Medium" or "Hard".
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Easy => "Easy",
            Protocol::Medium => "Medium",
            Protocol::Hard => "Hard",
        }
    }

    /// The positives ("ok") and ignored ("junk") images of a query under this protocol.
    pub fn split(self, g: &QueryGnd) -> (Vec<usize>, Vec<usize>) {
        let cat = |a: &[usize], b: &[usize]| a.iter().chain(b).copied().collect::<Vec<_>>();
        match self {
            Protocol::Easy => (g.easy.clone(), cat(&g.junk, &g.hard)),
            Protocol::Medium => (cat(&g.easy, &g.hard), g.junk.clone()),
            Protocol::Hard => (g.hard.clone(), cat(&g.junk, &g.easy)),
        }
    }
}

/// revisitop's `compute_ap`: trapezoidal AP from the ascending 0-based ranks of the positives,
/// already shifted down by the junk images ranked before them. `nres` is the number of
/// positives (all are ranked: the full database is ranked).
pub fn average_precision(pos: &[usize], nres: usize) -> f64 {
    let recall_step = 1.0 / nres as f64;
    pos.iter()
        .enumerate()
        .map(|(t, &r)| {
            let p0 = if r == 0 { 1.0 } else { t as f64 / r as f64 };
            let p1 = (t + 1) as f64 / (r + 1) as f64;
            (p0 + p1) * recall_step / 2.0
        })
        .sum()
}

/// Removes junk from the ranking: each positive's rank drops by the number of junk ranked above
/// it. Both inputs are 0-based ranks; the output is sorted ascending.
pub fn remove_junk(ok_ranks: &[usize], junk_ranks: &[usize]) -> Vec<usize> {
    let mut pos = ok_ranks.to_vec();
    pos.sort_unstable();
    let mut junk = junk_ranks.to_vec();
    junk.sort_unstable();
    pos.iter()
        .map(|&p| p - junk.partition_point(|&j| j < p))
        .collect()
}

/// The 0-based ranks of `items` in `ranking` (a permutation or prefix of the database); items
/// absent from the ranking are left out.
pub fn ranks_in(ranking: &[usize], items: &[usize]) -> Vec<usize> {
    let want: std::collections::HashSet<usize> = items.iter().copied().collect();
    ranking
        .iter()
        .enumerate()
        .filter(|(_, i)| want.contains(i))
        .map(|(r, _)| r)
        .collect()
}

/// Scores of one query under one protocol; `None` when it has no positive (excluded from mAP).
#[derive(Clone, Debug, PartialEq)]
pub struct QueryScore {
    /// Average precision in [0, 1].
    pub ap: f64,
    /// Precision at each k of [`PRECISION_KS`].
    pub prec: [f64; 3],
}

/// AP and P@k of one query from the ranks of its positives and junk (0-based, any order).
pub fn score_query(ok_ranks: &[usize], junk_ranks: &[usize]) -> Option<QueryScore> {
    if ok_ranks.is_empty() {
        return None;
    }
    let pos = remove_junk(ok_ranks, junk_ranks);
    let ap = average_precision(&pos, pos.len());
    let last = pos[pos.len() - 1] + 1;
    let mut prec = [0.0; 3];
    for (p, &k) in prec.iter_mut().zip(&PRECISION_KS) {
        // revisitop: kq = min(max(pos) + 1, k); P@k = #{pos + 1 <= kq} / kq.
        let kq = last.min(k);
        *p = pos.iter().filter(|&&r| r < kq).count() as f64 / kq as f64;
    }
    Some(QueryScore { ap, prec })
}

/// Mean scores of a protocol over the queries that have positives.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// mAP in [0, 1].
    pub map: f64,
    /// mP@[1, 5, 10] in [0, 1].
    pub mp: [f64; 3],
    /// Queries counted (with at least one positive).
    pub queries: usize,
    /// Queries left out for having no positive.
    pub empty: usize,
    /// Per-query AP, NaN for queries without positives (as revisitop's `aps`).
    #[serde(skip)]
    pub aps: Vec<f64>,
}

/// revisitop's `compute_map` over per-query scores (`None` = no positive: NaN AP, not averaged).
pub fn summarize(scores: &[Option<QueryScore>]) -> Summary {
    let kept: Vec<&QueryScore> = scores.iter().flatten().collect();
    let n = kept.len().max(1) as f64;
    let mut mp = [0.0; 3];
    for s in &kept {
        for (m, p) in mp.iter_mut().zip(&s.prec) {
            *m += p / n;
        }
    }
    Summary {
        map: kept.iter().map(|s| s.ap).sum::<f64>() / n,
        mp,
        queries: kept.len(),
        empty: scores.len() - kept.len(),
        aps: scores
            .iter()
            .map(|s| s.as_ref().map_or(f64::NAN, |s| s.ap))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANKING: [usize; 10] = [3, 7, 1, 0, 5, 2, 9, 4, 6, 8];

    #[test]
    fn spec_test_vectors() {
        let ok = [7, 0, 4];
        let ok_r = ranks_in(&RANKING, &ok);
        assert_eq!(ok_r, vec![1, 3, 7]);
        let junk_r = ranks_in(&RANKING, &[1]);
        assert_eq!(remove_junk(&ok_r, &junk_r), vec![1, 2, 6]);
        let with_junk = score_query(&ok_r, &junk_r).unwrap();
        assert!((with_junk.ap - 0.404762).abs() < 1e-6, "{}", with_junk.ap);
        let no_junk = score_query(&ok_r, &[]).unwrap();
        assert!((no_junk.ap - 0.332341).abs() < 1e-6, "{}", no_junk.ap);
        let expect = [0.0, 0.4, 3.0 / 7.0];
        for (got, want) in with_junk.prec.iter().zip(expect) {
            assert!((got - want).abs() < 1e-12, "{:?}", with_junk.prec);
        }
        let perfect = score_query(&[0, 1, 2], &[]).unwrap();
        assert_eq!(perfect.ap, 1.0);
        assert_eq!(perfect.prec, [1.0, 1.0, 1.0]);
    }

    #[test]
    fn empty_queries_are_excluded_from_the_mean() {
        let a = score_query(&[0], &[]);
        let b = score_query(&[], &[3]);
        assert!(b.is_none());
        let c = score_query(&[1], &[]); // AP = (0/1 + 1/2) / 2 = 0.25
        let s = summarize(&[a, b, c]);
        assert_eq!((s.queries, s.empty), (2, 1));
        assert!((s.map - (1.0 + 0.25) / 2.0).abs() < 1e-12);
        assert!(s.aps[1].is_nan());
        // P@1 of query c: kq = min(2, 1) = 1, no positive at rank 0 -> 0.
        assert!((s.mp[0] - 0.5).abs() < 1e-12);
    }

    #[test]
    fn protocols_move_hard_and_easy_to_junk() {
        let g = QueryGnd {
            easy: vec![1, 2],
            hard: vec![3],
            junk: vec![4],
            bbx: None,
        };
        assert_eq!(Protocol::Easy.split(&g), (vec![1, 2], vec![4, 3]));
        assert_eq!(Protocol::Medium.split(&g), (vec![1, 2, 3], vec![4]));
        assert_eq!(Protocol::Hard.split(&g), (vec![3], vec![4, 1, 2]));
    }

    #[test]
    fn validate_catches_bad_indices() {
        let g = Gnd {
            imlist: vec!["a".into(), "b".into()],
            qimlist: vec!["q".into()],
            gnd: vec![QueryGnd {
                easy: vec![5],
                ..Default::default()
            }],
        };
        let err = g.validate("x.pkl").unwrap_err().to_string();
        assert!(err.contains("database image 5"), "{err}");
    }

    /// Queries that all lack positives score nothing (the mean of no AP printed -0.00).
    #[test]
    fn a_ground_truth_without_any_positive_is_refused() {
        let g = Gnd {
            imlist: vec!["a".into()],
            qimlist: vec!["q".into(), "r".into()],
            gnd: vec![
                QueryGnd {
                    junk: vec![0],
                    ..Default::default()
                },
                QueryGnd::default(),
            ],
        };
        let err = g.validate("g.json").unwrap_err().to_string();
        assert!(
            err.contains("g.json: none of its 2 queries has a positive"),
            "{err}"
        );
    }
}
