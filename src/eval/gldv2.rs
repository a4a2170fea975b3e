//! GLDv2 retrieval mAP@100 (spec 6.3, trap G21), as the DELF tools compute it: the solution CSV
//! `retrieval_solution_v2.1.csv` (`id,images,Usage`, Ignored rows dropped) is split into Public
//! and Private; each query's AP@100 divides by `min(#ground truth, 100)`; duplicated predictions
//! are skipped but use up a rank; queries without predictions score 0 and still count.

use anyhow::{bail, Context, Result};
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::path::Path;

/// Predictions per query that count (the challenge's 100).
pub const MAX_PREDICTIONS: usize = 100;

/// The ground truth of one split: test image id -> relevant index image ids, in file order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Solution {
    /// Test image ids of this split, in file order.
    pub queries: Vec<String>,
    /// Relevant index ids of each test id.
    pub relevant: HashMap<String, Vec<String>>,
}

/// Public and Private splits of a retrieval solution file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Solutions {
    /// Rows with Usage "Public".
    pub public: Solution,
    /// Rows with Usage "Private".
    pub private: Solution,
    /// Every Public and Private test id in file order: the row order of query descriptors.
    pub queries: Vec<String>,
}

/// Parses the text of `retrieval_solution_v2.1.csv`; `name` is used in errors.
pub fn parse_solution(text: &str, name: &str) -> Result<Solutions> {
    let mut out = Solutions::default();
    for (ln, line) in text.lines().enumerate().skip(1) {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split(',').collect();
        if cols.len() != 3 {
            bail!(
                "{name}:{}: expected 3 columns `id,images,Usage`, got {}: '{line}'",
                ln + 1,
                cols.len()
            );
        }
        let (id, images, usage) = (cols[0].trim(), cols[1], cols[2].trim());
        let split = match usage {
            "Public" => &mut out.public,
            "Private" => &mut out.private,
            "Ignored" => continue,
            other => bail!(
                "{name}:{}: Usage '{other}' is none of Public, Private, Ignored",
                ln + 1
            ),
        };
        let ids: Vec<String> = images.split_whitespace().map(str::to_string).collect();
        if split.relevant.insert(id.to_string(), ids).is_some() {
            bail!("{name}:{}: test id {id} is listed twice", ln + 1);
        }
        split.queries.push(id.to_string());
        out.queries.push(id.to_string());
    }
    if out.public.queries.is_empty() && out.private.queries.is_empty() {
        bail!("{name}: no Public or Private rows; is this retrieval_solution_v2.1.csv?");
    }
    Ok(out)
}

/// Reads `retrieval_solution_v2.1.csv`.
pub fn read_solution(path: &Path) -> Result<Solutions> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading GLDv2 solution {}", path.display()))?;
    parse_solution(&text, &path.display().to_string())
}

/// Reads the first column (ids) of a CSV with a header, e.g. `index_image_to_landmark.csv`
/// or `index.csv`.
pub fn read_ids(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading image ids from {}", path.display()))?;
    let ids: Vec<String> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').next())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if ids.is_empty() {
        bail!("{}: no ids after the header line", path.display());
    }
    Ok(ids)
}

pub use crate::data::gldv2::image_path;

/// AP@`max_predictions` of one query (DELF's loop): a duplicated id is skipped but uses a rank.
pub fn average_precision<T: Eq + Hash>(
    predictions: &[T],
    relevant: &HashSet<T>,
    max_predictions: usize,
) -> f64 {
    let expected = relevant.len().min(max_predictions);
    if expected == 0 {
        return 0.0;
    }
    let mut seen = HashSet::new();
    let (mut correct, mut ap) = (0usize, 0.0f64);
    for (i, p) in predictions.iter().take(max_predictions).enumerate() {
        if seen.insert(p) && relevant.contains(p) {
            correct += 1;
            ap += correct as f64 / (i + 1) as f64;
        }
    }
    ap / expected as f64
}

/// mAP@`max_predictions` over every query of `solution`; a query missing from `predictions`
/// scores 0. Errors when a prediction names a query outside the solution (DELF does too).
pub fn mean_average_precision(
    predictions: &HashMap<String, Vec<String>>,
    solution: &Solution,
    max_predictions: usize,
) -> Result<f64> {
    if let Some(q) = predictions
        .keys()
        .find(|q| !solution.relevant.contains_key(*q))
    {
        bail!("prediction for test image {q}, which is not a query of this solution split");
    }
    if solution.queries.is_empty() {
        return Ok(0.0);
    }
    let total: f64 = solution
        .queries
        .iter()
        .filter_map(|q| {
            let preds = predictions.get(q)?;
            let rel: HashSet<&String> = solution.relevant[q].iter().collect();
            let preds: Vec<&String> = preds.iter().collect();
            Some(average_precision(&preds, &rel, max_predictions))
        })
        .sum();
    Ok(total / solution.queries.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&'static str]) -> HashSet<&'static str> {
        v.iter().copied().collect()
    }

    #[test]
    fn spec_test_vectors() {
        let ap = average_precision(&["a", "x", "b", "y", "c"], &set(&["a", "b", "c", "d"]), 100);
        assert!((ap - 0.566667).abs() < 1e-6, "{ap}");
        let dup = average_precision(&["a", "a", "b"], &set(&["a", "b"]), 100);
        assert!((dup - 0.833333).abs() < 1e-6, "{dup}");
        // Cut at max_predictions, and the divisor is min(#gt, max).
        assert_eq!(average_precision(&["x", "a"], &set(&["a"]), 1), 0.0);
        let many: Vec<String> = (0..150).map(|i| i.to_string()).collect();
        let rel: HashSet<String> = many.iter().cloned().collect();
        assert!((average_precision(&many, &rel, 100) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn solution_splits_and_missing_predictions_score_zero() {
        let csv = "id,images,Usage\nq1,a b,Public\nq2,c,Private\nq3,d,Ignored\nq4,e f g,Public\n";
        let s = parse_solution(csv, "sol.csv").unwrap();
        assert_eq!(s.public.queries, vec!["q1", "q4"]);
        assert_eq!(s.private.queries, vec!["q2"]);
        assert_eq!(s.queries, vec!["q1", "q2", "q4"]);
        let mut preds = HashMap::new();
        preds.insert("q1".to_string(), vec!["a".to_string(), "b".to_string()]);
        // q4 has no prediction: counts as 0 in the mean.
        let m = mean_average_precision(&preds, &s.public, 100).unwrap();
        assert!((m - 0.5).abs() < 1e-12, "{m}");
        preds.insert("q3".to_string(), vec!["d".to_string()]);
        assert!(mean_average_precision(&preds, &s.public, 100).is_err());
        assert!(parse_solution("id,images,Usage\nq1,a,Secret\n", "s.csv").is_err());
    }
}
