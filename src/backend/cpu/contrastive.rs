//! The contrastive loss on the CPU: the twin of `kernels/contrastive.cu` (formula there).

use crate::backend::{Buf, Checked, Contrastive};
use anyhow::Result;
use rayon::prelude::*;

/// Per-row (loss sum, positives, negatives) into `stats`, and `dL/dS` into `grad` when given.
pub fn contrastive_f32(
    s: &[f32],
    y1: &[i64],
    y2: &[i64],
    grad: Option<&mut [f32]>,
    stats: &mut [f32],
    c: Contrastive,
) {
    let n2 = c.n2;
    let row = |i: usize, srow: &[f32], mut grow: Option<&mut [f32]>, st: &mut [f32]| {
        let keep = !c.memory || y1[i] > 0;
        let (mut loss, mut npos, mut nneg) = (0f64, 0u32, 0u32);
        for (j, (&sij, &yj)) in srow.iter().zip(y2).enumerate() {
            let mut g = 0.0;
            if keep {
                if yj == y1[i] {
                    if sij < c.pos_th {
                        loss += 1.0 - sij as f64;
                        npos += 1;
                        g = -c.inv_rows;
                    }
                } else if sij > c.margin {
                    loss += sij as f64;
                    nneg += 1;
                    g = c.inv_rows;
                }
            }
            if let Some(gr) = grow.as_deref_mut() {
                gr[j] = g;
            }
        }
        st.copy_from_slice(&[loss as f32, npos as f32, nneg as f32]);
    };
    if n2 == 0 {
        // No columns: every row sums nothing (and there is no gradient to write).
        stats.fill(0.0);
        return;
    }
    let rows = s.par_chunks(n2).zip(stats.par_chunks_mut(3)).enumerate();
    match grad {
        Some(g) => rows
            .zip(g.par_chunks_mut(n2))
            .for_each(|((i, (sr, st)), gr)| row(i, sr, Some(gr), st)),
        None => rows.for_each(|(i, (sr, st))| row(i, sr, None, st)),
    }
}

impl crate::backend::ContrastiveOps for super::CpuBackend {
    fn contrastive(
        &self,
        s: &Buf,
        y1: &Buf,
        y2: &Buf,
        grad: Option<&mut Buf>,
        stats: &mut Buf,
        shape: Checked<Contrastive>,
    ) -> Result<()> {
        let grad = match grad {
            Some(g) => Some(g.host_mut::<f32>()?),
            None => None,
        };
        contrastive_f32(
            s.host()?,
            y1.host()?,
            y2.host()?,
            grad,
            stats.host_mut()?,
            *shape,
        );
        Ok(())
    }
}
