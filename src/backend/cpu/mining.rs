//! The method's per-step decisions on the CPU: the twins of `kernels/mining.cu` (formulas and
//! the order of every sum there), which is what makes the choices match exactly.

use crate::backend::{BatchSelect, Buf, Checked, MiningScore};
use anyhow::Result;

/// Keep flags of every anchor's neighbours; `g` rows by batch position.
pub fn batch_select_f32(
    g: &[f32],
    anchor_pos: &[usize],
    neighbor_pos: &[usize],
    keep: &mut [i32],
    s: BatchSelect,
) {
    let (d, k) = (s.dim, s.k);
    let row = |p: usize| &g[p * d..(p + 1) * d];
    for (a, &pa) in anchor_pos.iter().enumerate() {
        let sims: Vec<f32> = neighbor_pos[a * k..(a + 1) * k]
            .iter()
            .map(|&pj| {
                row(pa)
                    .iter()
                    .zip(row(pj))
                    .fold(0.0f32, |acc, (x, y)| acc + x * y)
            })
            .collect();
        let best = sims.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for (j, &sj) in sims.iter().enumerate() {
            let ok = if s.dynamic {
                sj / best >= s.thresh
            } else {
                sj >= s.thresh
            };
            keep[a * k + j] = ok as i32;
        }
    }
}

/// Query-set scores and passing counts of every candidate row of `sim` (`nc x nq`).
pub fn mining_score_f32(
    sim: &[f32],
    chosen: &[bool],
    score: &mut [f32],
    num: &mut [i32],
    s: MiningScore,
) {
    for r in 0..s.nc {
        let row = &sim[r * s.nq..(r + 1) * s.nq];
        let (mut acc, mut cnt) = (0f32, 0i32);
        for &v in row {
            let pass = v >= s.th;
            cnt += pass as i32;
            if s.use_max {
                acc = acc.max(if pass { v } else { 0.0 });
            } else if pass {
                acc += v;
            }
        }
        (score[r], num[r]) = if chosen[r] {
            (0.0, 0)
        } else if s.use_max {
            (acc, cnt)
        } else {
            // The original divides by num + 1e-6 (trap G22): 0 when nothing qualifies.
            (acc / (cnt as f32 + 1e-6), cnt)
        };
    }
}

impl crate::backend::MiningOps for super::CpuBackend {
    fn batch_select(
        &self,
        g: &Buf,
        anchor_pos: &[usize],
        neighbor_pos: &[usize],
        keep: &mut Buf,
        s: Checked<BatchSelect>,
    ) -> Result<()> {
        batch_select_f32(g.host()?, anchor_pos, neighbor_pos, keep.host_mut()?, *s);
        Ok(())
    }

    fn mining_score(
        &self,
        s: &Buf,
        chosen: &[bool],
        score: &mut Buf,
        num: &mut Buf,
        shape: Checked<MiningScore>,
    ) -> Result<()> {
        mining_score_f32(
            s.host()?,
            chosen,
            score.host_mut()?,
            num.host_mut()?,
            *shape,
        );
        Ok(())
    }
}
