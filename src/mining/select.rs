//! `select(mode, Q, C)` (spec 4.5.3): iterative query-set expansion. Each iteration scores
//! every candidate against the current query set, picks some, and appends the picked
//! candidates to the query set, so positives can be reached transitively.
//!
//! Similarities `C Q^T` come from `be.matmul` (`trans_b`) on the backend, the query set grown
//! there by row copies, the scores from `be.mining_score`; the candidates' scores and counts
//! come back and the picks (top-k or threshold over a few hundred candidates) are made here.
//! Deterministic tie rule (the original's `torch.sort` is not stable): equal scores are picked
//! in ascending candidate position, i.e. ascending dataset index since candidate lists are
//! sorted.

use super::mode::{Mode, ScoreFn, Selector};
use crate::backend::{Backend, Buf, CopyRows, DType, MatMul, MiningScore};
use anyhow::{bail, Result};

/// The result of one `select`: chosen candidate positions (ascending) with the iteration that
/// picked each and, for tests and logs, the score vector of every iteration (chosen candidates
/// already zeroed).
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    /// Chosen candidate positions, ascending.
    pub chosen: Vec<usize>,
    /// The iteration (1-based) that picked `chosen[i]`.
    pub rounds: Vec<usize>,
    /// Per iteration, the score of every candidate.
    pub scores: Vec<Vec<f32>>,
}

/// Runs `mode`'s iterations: `q` is the initial query set (`nq x d`), `c` the candidates
/// (`nc x d`); both are unit rows of the no-DA bank, on the backend.
pub fn select(be: &dyn Backend, mode: &Mode, q: &Buf, c: &Buf, d: usize) -> Result<Selection> {
    if d == 0 || q.len() % d != 0 || c.len() % d != 0 {
        bail!(
            "select: query ({}) and candidate ({}) buffers must be whole rows of {d}",
            q.len(),
            c.len()
        );
    }
    let (nq0, nc) = (q.len() / d, c.len() / d);
    let mut chosen = vec![false; nc];
    let mut round = vec![0usize; nc];
    let mut scores_log = Vec::with_capacity(mode.iters);
    if nc == 0 {
        return Ok(Selection {
            chosen: vec![],
            rounds: vec![],
            scores: vec![vec![]; mode.iters],
        });
    }
    // The query set grows by the picked candidates, appended in pick order.
    let mut picked: Vec<usize> = Vec::new();
    for it in 0..mode.iters {
        let nq = nq0 + picked.len();
        let mut query = be.zeros(DType::F32, nq * d)?;
        let rows = CopyRows { dim: d };
        let first: Vec<usize> = (0..nq0).collect();
        be.copy_rows(q, &mut query, &first, &first, rows)?;
        let appended: Vec<usize> = (nq0..nq).collect();
        be.copy_rows(c, &mut query, &picked, &appended, rows)?;
        let mut sb = be.zeros(DType::F32, nc * nq)?;
        be.matmul(c, &query, &mut sb, MatMul::new(nc, nq, d).tb())?;
        let (use_max, th) = match mode.score[it] {
            ScoreFn::Avg(th) => (false, th),
            ScoreFn::Max(th) => (true, th),
        };
        let (mut score_b, mut num_b) = (be.zeros(DType::F32, nc)?, be.zeros(DType::I32, nc)?);
        let shape = MiningScore {
            nc,
            nq,
            use_max,
            th,
        };
        be.mining_score(&sb, &chosen, &mut score_b, &mut num_b, shape)?;
        let score = be.download::<f32>(&score_b)?;
        let num = be.download::<i32>(&num_b)?;
        let pick: Vec<usize> = match mode.select[it] {
            Selector::TopK(k) => {
                let eligible = num.iter().filter(|&&v| v > 0).count();
                let kk = k.min(eligible);
                let mut order: Vec<usize> = (0..nc).collect();
                // Stable sort on ascending positions: ties go to the smaller position.
                order.sort_by(|&a, &b| score[b].total_cmp(&score[a]));
                order.truncate(kk);
                order
            }
            Selector::Thresh(t) => (0..nc).filter(|&r| score[r] >= t).collect(),
        };
        for &r in &pick {
            picked.push(r);
            chosen[r] = true;
            round[r] = it + 1;
        }
        scores_log.push(score);
    }
    let chosen: Vec<usize> = (0..nc).filter(|&r| chosen[r]).collect();
    Ok(Selection {
        rounds: chosen.iter().map(|&r| round[r]).collect(),
        chosen,
        scores: scores_log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(deg: &[f32]) -> Vec<f32> {
        deg.iter()
            .flat_map(|a| {
                let r = (*a as f64).to_radians();
                [r.cos() as f32, r.sin() as f32]
            })
            .collect()
    }

    /// `select` on the CPU backend from host rows.
    fn on_cpu(m: &Mode, q: &[f32], c: &[f32]) -> Selection {
        let be = crate::backend::cpu();
        let (q, c) = (be.upload(q).unwrap(), be.upload(c).unwrap());
        select(be, m, &q, &c, 2).unwrap()
    }

    /// Spec 4.5.3 worked example: Q = {0, 10} degrees, C = {20, 45, 60, 100} degrees.
    fn run(mode: &str) -> Selection {
        let m = Mode::parse(mode).unwrap();
        on_cpu(&m, &units(&[0.0, 10.0]), &units(&[20.0, 45.0, 60.0, 100.0]))
    }

    fn close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-4, "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn spec_table_avg_k01() {
        let s = run("b+i_tr2_avg0.60_k01");
        close(&s.scores[0], &[0.9622, 0.7631, 0.6428, 0.0]);
        close(&s.scores[1], &[0.0, 0.8109, 0.7044, 0.0]);
        assert_eq!(s.chosen, vec![0, 1]);
    }

    #[test]
    fn spec_table_max_k01() {
        let s = run("b+i_tr2_max0.60_k01");
        close(&s.scores[0], &[0.9848, 0.8192, 0.6428, 0.0]);
        close(&s.scores[1], &[0.0, 0.9063, 0.7660, 0.0]);
        assert_eq!(s.chosen, vec![0, 1]);
    }

    #[test]
    fn spec_table_avg_threshold_selector() {
        let s = run("b+i_tr1_avg0.60_t0.70");
        close(&s.scores[0], &[0.9622, 0.7631, 0.6428, 0.0]);
        assert_eq!(s.chosen, vec![0, 1]);
    }

    #[test]
    fn spec_table_transitive_drift_k05() {
        let s = run("b+i_tr4_avg0.60_k05");
        close(&s.scores[1], &[0.0, 0.0, 0.0, 0.7660]);
        assert_eq!(s.chosen, vec![0, 1, 2, 3]);
        assert_eq!(s.rounds, vec![1, 1, 1, 2]);
    }

    #[test]
    fn spec_table_avg_tr3_k01() {
        let s = run("b+i_tr3_avg0.60_k01");
        close(&s.scores[2], &[0.0, 0.0, 0.7916, 0.0]);
        assert_eq!(s.chosen, vec![0, 1, 2]);
        assert_eq!(s.rounds, vec![1, 2, 3]);
    }

    #[test]
    fn ties_pick_the_smaller_position_and_empty_candidates_select_nothing() {
        // Candidates 1 and 2 are identical (a duplicate image): top-1 takes position 1.
        let m = Mode::parse("b+i_tr1_max0.60_k01").unwrap();
        let s = on_cpu(&m, &units(&[0.0]), &units(&[50.0, 20.0, 20.0]));
        assert_eq!(s.chosen, vec![1]);
        let s = on_cpu(&m, &units(&[0.0]), &[]);
        assert!(s.chosen.is_empty());
    }
}
