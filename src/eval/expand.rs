//! The cheap post-processing of global descriptors before ranking (issue 29): α-weighted query
//! expansion (αQE) and α-weighted database-side augmentation (αDBA), as Radenović, Tolias and
//! Chum define them ("Fine-tuning CNN image retrieval with no human annotation", TPAMI 2018):
//!
//! - αQE: each query `q` becomes `normalise(q + Σ_i w_i x_i)` over its `n` most similar
//!   database rows `x_i`, with `w_i = (qᵀx_i)^α` (0 where `qᵀx_i <= 0`);
//! - αDBA: each database row `x` becomes `normalise(x + Σ_i w_i y_i)` over its `n` most similar
//!   *other* database rows, with the same weights; queries are then searched (and expanded)
//!   against the augmented database.
//!
//! The neighbours come from the streamed exact search ([`crate::knn::top_k`], on the backend);
//! the weighted sums are `n x dim` per row on the host. With α = 0 the weights are 1 and the
//! result is the plain mean of the original average query expansion. cirtorch's code, which
//! issue 29 names, ships neither (its evaluation is whitening and multi-scale only). The
//! defaults are α = 3 (the paper's) and `n` = 2 for both, chosen on our two benchmarks, where
//! every place has only 2 to 4 photos: more neighbours than a place has photos pull in other
//! places (αDBA with `n` = 10 costs the demo 4 points; docs/quality.md has the sweep).

use crate::backend::Backend;
use crate::knn::{self, Exclude, Neighbors, Pair, Tiling};
use anyhow::{bail, Result};

/// One expansion's settings: `n` neighbours, weights `max(0, similarity)^alpha`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Expansion {
    pub n: usize,
    pub alpha: f32,
}

impl Expansion {
    /// αQE's defaults: the 2 best database rows, α = 3.
    pub const QE: Expansion = Expansion { n: 2, alpha: 3.0 };
    /// αDBA's defaults: the 2 most similar other rows, α = 3.
    pub const DBA: Expansion = Expansion { n: 2, alpha: 3.0 };

    /// `N` or `N,ALPHA` (the flags' values), with `default`'s α when only `N` is given.
    pub fn parse(s: &str, default: Expansion) -> Result<Expansion, String> {
        let bad = || format!("'{s}' is not N or N,ALPHA (like 2 or 2,3)");
        let mut parts = s.split(',').map(str::trim);
        let n = parts
            .next()
            .and_then(|v| v.parse::<usize>().ok())
            .ok_or_else(bad)?;
        let alpha = match parts.next() {
            Some(a) => a
                .parse::<f32>()
                .ok()
                .filter(|a| a.is_finite() && *a >= 0.0)
                .ok_or_else(bad)?,
            None => default.alpha,
        };
        if parts.next().is_some() || n == 0 {
            return Err(bad());
        }
        Ok(Expansion { n, alpha })
    }

    /// "n 2, α 3" for headers.
    pub fn describe(&self) -> String {
        format!("n {}, α {}", self.n, self.alpha)
    }
}

/// The queries (`nq x dim`) expanded by αQE against `db` (`ndb x dim`).
pub fn expand_queries(
    be: &dyn Backend,
    queries: &[f32],
    db: &[f32],
    dim: usize,
    e: Expansion,
    tiling: Tiling,
) -> Result<Vec<f32>> {
    let pair = Pair { queries, db, dim };
    let nb = knn::top_k(be, pair, e.n, Exclude::Nothing, tiling, &mut |_| {})?;
    weighted_sums(queries, db, dim, &nb, e.alpha)
}

/// The database (`ndb x dim`) augmented by αDBA: every row with its `n` most similar others.
pub fn augment_database(
    be: &dyn Backend,
    db: &[f32],
    dim: usize,
    e: Expansion,
    tiling: Tiling,
) -> Result<Vec<f32>> {
    let pair = Pair {
        queries: db,
        db,
        dim,
    };
    let nb = knn::top_k(be, pair, e.n, Exclude::Diagonal, tiling, &mut |_| {})?;
    weighted_sums(db, db, dim, &nb, e.alpha)
}

/// The database and queries after αDBA (first, when asked) and αQE (against the augmented
/// database), with the words for a header: ", αDBA (n 2, α 3), αQE (n 2, α 3)".
pub fn apply(
    be: &dyn Backend,
    queries: Vec<f32>,
    db: Vec<f32>,
    dim: usize,
    qe: Option<Expansion>,
    dba: Option<Expansion>,
    tiling: Tiling,
) -> Result<(Vec<f32>, Vec<f32>, String)> {
    let mut how = String::new();
    let db = match dba {
        Some(e) => {
            how += &format!(", αDBA ({})", e.describe());
            augment_database(be, &db, dim, e, tiling)?
        }
        None => db,
    };
    let queries = match qe {
        Some(e) => {
            how += &format!(", αQE ({})", e.describe());
            expand_queries(be, &queries, &db, dim, e, tiling)?
        }
        None => queries,
    };
    Ok((queries, db, how))
}

/// Row `r` of `own` plus its neighbours' rows of `rows` weighted by `score^alpha` (0 for a
/// score at or below 0), L2-normalised.
fn weighted_sums(
    own: &[f32],
    rows: &[f32],
    dim: usize,
    nb: &Neighbors,
    alpha: f32,
) -> Result<Vec<f32>> {
    let mut out = own.to_vec();
    for (r, v) in out.chunks_mut(dim).enumerate() {
        for (&j, &s) in nb.indices(r).iter().zip(nb.scores(r)) {
            // (A row at or below zero similarity adds nothing, whatever α: 0^0 would be 1.)
            let w = if s > 0.0 { s.powf(alpha) } else { 0.0 };
            let x = &rows[j as usize * dim..(j as usize + 1) * dim];
            v.iter_mut().zip(x).for_each(|(a, b)| *a += w * b);
        }
        let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        if norm <= 0.0 || !norm.is_finite() {
            bail!("descriptor row {r} is zero or not finite after expansion; re-extract it");
        }
        v.iter_mut().for_each(|a| *a /= norm);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        v.iter().map(|a| a / n).collect()
    }

    #[test]
    fn query_expansion_adds_the_best_rows_by_similarity_to_the_power_alpha() {
        let be = crate::backend::cpu();
        // Database: e0, a row at 60 degrees from e0, e1, and -e0 (negative similarity).
        let h = 0.5f32;
        let s = 0.75f32.sqrt();
        let db = [1.0, 0.0, h, s, 0.0, 1.0, -1.0, 0.0];
        let q = unit(&[1.0, 0.1]);
        let e = Expansion { n: 2, alpha: 3.0 };
        let got = expand_queries(be, &q, &db, 2, e, Tiling::default()).unwrap();
        // Its two best: e0 (score q0) and the 60-degree row (score 0.5 q0 + s q1).
        let (s0, s1) = (q[0], h * q[0] + s * q[1]);
        let want = unit(&[q[0] + s0.powi(3) + s1.powi(3) * h, q[1] + s1.powi(3) * s]);
        assert!(
            (got[0] - want[0]).abs() < 1e-6 && (got[1] - want[1]).abs() < 1e-6,
            "{got:?} {want:?}"
        );
        // With every row, -e0 scores below zero and weighs nothing; α = 0 weighs the rest 1.
        let all = expand_queries(
            be,
            &q,
            &db,
            2,
            Expansion { n: 4, alpha: 0.0 },
            Tiling::default(),
        )
        .unwrap();
        let want = unit(&[q[0] + 1.0 + h, q[1] + s + 1.0]);
        assert!(
            (all[0] - want[0]).abs() < 1e-6 && (all[1] - want[1]).abs() < 1e-6,
            "{all:?} {want:?}"
        );
    }

    #[test]
    fn database_augmentation_never_counts_a_row_as_its_own_neighbour() {
        let be = crate::backend::cpu();
        let db: Vec<f32> = [[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]].concat();
        let got = augment_database(
            be,
            &db,
            2,
            Expansion { n: 1, alpha: 1.0 },
            Tiling::default(),
        )
        .unwrap();
        // Row 0's best other row is row 1 (0.8), row 1's is row 0 (0.8), row 2's is row 1 (0.6).
        let want = [
            unit(&[1.0 + 0.8 * 0.8, 0.8 * 0.6]),
            unit(&[0.8 + 0.8, 0.6]),
            unit(&[0.6 * 0.8, 1.0 + 0.6 * 0.6]),
        ]
        .concat();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6, "{got:?} {want:?}");
        }
    }

    #[test]
    fn settings_parse_from_the_flags() {
        assert_eq!(
            Expansion::parse("5", Expansion::QE),
            Ok(Expansion { n: 5, alpha: 3.0 })
        );
        assert_eq!(
            Expansion::parse("5,0.5", Expansion::QE),
            Ok(Expansion { n: 5, alpha: 0.5 })
        );
        for bad in ["", "0", "x", "2,-1", "2,3,4", "2,nan"] {
            assert!(Expansion::parse(bad, Expansion::QE).is_err(), "{bad}");
        }
    }
}
