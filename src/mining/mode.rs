//! The candidate-mode string (`XBM.CANDIDATE_MODE`, spec 4.5.3):
//! `<init>_tr<T>_<scorefns>_<selectors>`, e.g. `b+i_tr4_avg0.60_k05`.
//!
//! Stricter than the original on purpose: a score token must be exactly 7 characters (the
//! original would read `avg0.6` as 0.6 by slicing), and more tokens than iterations is an error
//! (the original silently ignores the extra ones). Both are typos worth a clear message.

use anyhow::{bail, Context, Result};
use std::fmt;

/// Which features seed a tuple's query set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitQuery {
    /// `b+i`: the tuple's accepted batch members and its init positives (shipped).
    BatchAndInit,
    /// `b+0`: the tuple's accepted batch members only.
    BatchOnly,
    /// `a+i`: the anchor and the anchor's own init positives.
    AnchorAndInit,
}

/// How a candidate is scored against the query set in one iteration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScoreFn {
    /// Mean of the query similarities `>= th` (divided by `num + 1e-6`, trap G22).
    Avg(f32),
    /// Max of the query similarities `>= th`, 0 when none qualifies.
    Max(f32),
}

/// Which candidates one iteration picks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Selector {
    /// The best `k` eligible candidates.
    TopK(usize),
    /// Every candidate whose score is `>= t`.
    Thresh(f32),
}

/// A parsed candidate mode; `score` and `select` are already padded to `iters` entries.
#[derive(Clone, Debug, PartialEq)]
pub struct Mode {
    /// Query-set seed.
    pub init: InitQuery,
    /// Iterations T.
    pub iters: usize,
    /// Score function per iteration.
    pub score: Vec<ScoreFn>,
    /// Selector per iteration.
    pub select: Vec<Selector>,
    text: String,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

const EXAMPLE: &str = "e.g. b+i_tr4_avg0.60_k05";
/// Mining iterations accepted (the paper uses up to 4); a larger T is a typo, and the
/// per-iteration tables are sized by it.
const MAX_ITERS: usize = 100;

fn parse_f32(s: &str, mode: &str, what: &str) -> Result<f32> {
    s.parse::<f32>()
        .ok()
        .filter(|v| v.is_finite())
        .with_context(|| format!("candidate mode '{mode}': {what} '{s}' is not a number"))
}

fn pad<T: Clone>(mut v: Vec<T>, t: usize, mode: &str, what: &str) -> Result<Vec<T>> {
    if v.len() > t {
        bail!(
            "candidate mode '{mode}': {} {what} tokens for tr{t}; give at most {t} (the last one repeats)",
            v.len()
        );
    }
    while v.len() < t {
        let last = v[v.len() - 1].clone();
        v.push(last);
    }
    Ok(v)
}

impl Mode {
    /// Parses a mode string; errors name the bad part and show a valid example.
    pub fn parse(s: &str) -> Result<Mode> {
        let parts: Vec<&str> = s.split('_').collect();
        let [init, tr, scores, sels] = parts[..] else {
            bail!(
                "candidate mode '{s}': expected 4 parts <init>_tr<T>_<scorefns>_<selectors>, {EXAMPLE}"
            );
        };
        let init = match init {
            "b+i" => InitQuery::BatchAndInit,
            "b+0" => InitQuery::BatchOnly,
            "a+i" => InitQuery::AnchorAndInit,
            o => bail!("candidate mode '{s}': init '{o}' must be one of b+i, b+0, a+i"),
        };
        let iters: usize = tr
            .strip_prefix("tr")
            .and_then(|t| t.parse().ok())
            .filter(|&t| (1..=MAX_ITERS).contains(&t))
            .with_context(|| {
                format!(
                    "candidate mode '{s}': iterations '{tr}' must be tr<T> with 1 <= T <= {MAX_ITERS}, e.g. tr4"
                )
            })?;
        if scores.is_empty() || scores.len() % 7 != 0 || !scores.is_ascii() {
            bail!(
                "candidate mode '{s}': score token must be 3 letters + 4 characters, e.g. avg0.60 (got '{scores}')"
            );
        }
        let mut score = Vec::new();
        for i in (0..scores.len()).step_by(7) {
            let th = parse_f32(&scores[i + 3..i + 7], s, "score threshold")?;
            score.push(match &scores[i..i + 3] {
                "avg" => ScoreFn::Avg(th),
                "max" => ScoreFn::Max(th),
                o => bail!("candidate mode '{s}': score function '{o}' must be avg or max"),
            });
        }
        if sels.is_empty() || !sels.is_ascii() {
            bail!("candidate mode '{s}': selectors must be kNN or tX.XX tokens, e.g. k05 or t0.70");
        }
        let mut select = Vec::new();
        let mut rest = sels;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('k') {
                let k = r
                    .get(..2)
                    .filter(|d| d.bytes().all(|c| c.is_ascii_digit()))
                    .and_then(|d| d.parse().ok())
                    .with_context(|| {
                        format!("candidate mode '{s}': top-k selector must be k + 2 digits, e.g. k05 (got '{rest}')")
                    })?;
                select.push(Selector::TopK(k));
                rest = &r[2..];
            } else if let Some(r) = rest.strip_prefix('t') {
                let t = r.get(..4).with_context(|| {
                    format!("candidate mode '{s}': threshold selector must be t + 4 characters, e.g. t0.70 (got '{rest}')")
                })?;
                select.push(Selector::Thresh(parse_f32(t, s, "selector threshold")?));
                rest = &r[4..];
            } else {
                bail!("candidate mode '{s}': selector '{rest}' must start with k (top-k, e.g. k05) or t (threshold, e.g. t0.70)");
            }
        }
        Ok(Mode {
            init,
            iters,
            score: pad(score, iters, s, "score")?,
            select: pad(select, iters, s, "selector")?,
            text: s.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_iteration_counts_are_errors_not_allocations() {
        let e = Mode::parse("b+i_tr2147483648_avg0.60_k05")
            .unwrap_err()
            .to_string();
        assert!(e.contains("T <= 100"), "{e}");
    }

    #[test]
    fn shipped_modes_parse_and_pad() {
        let m = Mode::parse("b+i_tr4_avg0.60_k05").unwrap();
        assert_eq!(m.init, InitQuery::BatchAndInit);
        assert_eq!(m.iters, 4);
        assert_eq!(m.score, vec![ScoreFn::Avg(0.6); 4]);
        assert_eq!(m.select, vec![Selector::TopK(5); 4]);
        assert_eq!(m.to_string(), "b+i_tr4_avg0.60_k05");
        let m = Mode::parse("a+i_tr3_max0.70avg0.65_t0.80k20").unwrap();
        assert_eq!(m.init, InitQuery::AnchorAndInit);
        assert_eq!(
            m.score,
            vec![ScoreFn::Max(0.7), ScoreFn::Avg(0.65), ScoreFn::Avg(0.65)]
        );
        assert_eq!(
            m.select,
            vec![
                Selector::Thresh(0.8),
                Selector::TopK(20),
                Selector::TopK(20)
            ]
        );
        assert_eq!(
            Mode::parse("b+0_tr2_avg0.60_k20").unwrap().init,
            InitQuery::BatchOnly
        );
    }

    #[test]
    fn bad_modes_give_clear_errors() {
        let err = |s: &str| format!("{:#}", Mode::parse(s).unwrap_err());
        assert!(err("b+i_tr4_avg0.6_k05")
            .contains("score token must be 3 letters + 4 characters, e.g. avg0.60"));
        assert!(err("b+i_tr4_avg0.60").contains("expected 4 parts"));
        assert!(err("x+i_tr4_avg0.60_k05").contains("init 'x+i'"));
        assert!(err("b+i_t4_avg0.60_k05").contains("tr<T>"));
        assert!(err("b+i_tr0_avg0.60_k05").contains("tr<T>"));
        assert!(err("b+i_tr4_med0.60_k05").contains("avg or max"));
        assert!(err("b+i_tr4_avg0.x0_k05").contains("not a number"));
        assert!(err("b+i_tr4_avg0.60_k5").contains("k + 2 digits"));
        assert!(err("b+i_tr4_avg0.60_x05").contains("must start with k"));
        assert!(err("b+i_tr4_avg0.60_t0.7").contains("t + 4 characters"));
        assert!(err("b+i_tr1_avg0.60_k05k06").contains("2 selector tokens for tr1"));
    }
}
