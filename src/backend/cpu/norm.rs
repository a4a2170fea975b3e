//! Row-wise L2 normalisation on the CPU: the twin of `kernels/norm.cu` (formulas there).

use crate::backend::L2Norm;
use rayon::prelude::*;

/// `y = x / max(||x||, eps)` per row.
pub fn l2norm_fwd_f32(x: &[f32], y: &mut [f32], s: L2Norm) {
    if s.cols == 0 {
        return;
    }
    y.par_chunks_mut(s.cols)
        .zip(x.par_chunks(s.cols))
        .for_each(|(yr, xr)| {
            let ss: f64 = xr.iter().map(|&v| v as f64 * v as f64).sum();
            let inv = 1.0 / (ss.sqrt() as f32).max(s.eps);
            for (o, &v) in yr.iter_mut().zip(xr) {
                *o = v * inv;
            }
        });
}

/// `dx = (dy - x (x.dy)/||x||^2) / ||x||` where `||x|| > eps`, else `dy / eps`.
pub fn l2norm_bwd_f32(x: &[f32], dy: &[f32], dx: &mut [f32], s: L2Norm) {
    if s.cols == 0 {
        return;
    }
    dx.par_chunks_mut(s.cols)
        .zip(x.par_chunks(s.cols).zip(dy.par_chunks(s.cols)))
        .for_each(|(dxr, (xr, dyr))| {
            let (mut ss, mut dot) = (0.0f64, 0.0f64);
            for (&a, &g) in xr.iter().zip(dyr) {
                ss += a as f64 * a as f64;
                dot += a as f64 * g as f64;
            }
            let norm = ss.sqrt() as f32;
            if norm > s.eps {
                let (inv, proj) = (1.0 / norm, (dot / ss) as f32);
                for ((d, &a), &g) in dxr.iter_mut().zip(xr).zip(dyr) {
                    *d = (g - a * proj) * inv;
                }
            } else {
                for (d, &g) in dxr.iter_mut().zip(dyr) {
                    *d = g / s.eps;
                }
            }
        });
}
