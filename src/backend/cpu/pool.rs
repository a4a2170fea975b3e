//! GeM pooling on the CPU: the twin of `kernels/pool.cu` (formulas there).

use crate::backend::Gem;
use rayon::prelude::*;

fn pow_int_fast(x: f32, p: f32) -> f32 {
    if p == 3.0 {
        x * x * x
    } else {
        x.powf(p)
    }
}

/// `y[r] = (mean_hw max(x[r], eps)^p)^(1/p)`, one row per (n, c).
pub fn gem_fwd_f32(x: &[f32], y: &mut [f32], s: Gem) {
    y.par_iter_mut()
        .zip(x.par_chunks(s.hw))
        .for_each(|(yr, xr)| {
            let acc: f64 = xr
                .iter()
                .map(|&v| pow_int_fast(v.max(s.eps), s.p) as f64)
                .sum();
            *yr = ((acc / s.hw as f64) as f32).powf(1.0 / s.p);
        });
}

/// `dx = dy * y^(1-p) * max(x,eps)^(p-1) / hw` where `x >= eps`, else 0.
pub fn gem_bwd_f32(x: &[f32], y: &[f32], dy: &[f32], dx: &mut [f32], s: Gem) {
    dx.par_chunks_mut(s.hw)
        .zip(x.par_chunks(s.hw))
        .enumerate()
        .for_each(|(r, (dxr, xr))| {
            let coef = dy[r] * y[r].powf(1.0 - s.p) / s.hw as f32;
            for (d, &v) in dxr.iter_mut().zip(xr) {
                *d = if v >= s.eps {
                    coef * v.powf(s.p - 1.0)
                } else {
                    0.0
                };
            }
        });
}
