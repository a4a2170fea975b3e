//! GeM and max pooling on the CPU: the twins of `kernels/pool.cu` (formulas there).

use super::{widen, with_f32_out};
use crate::backend::{Buf, Checked, Gem, MaxPool};
use anyhow::Result;
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

/// Input positions `lo..hi` under window `o` along one axis of length `len`, padding removed
/// (never empty: `pad < k`).
#[inline]
fn window(o: usize, s: &MaxPool, len: usize) -> (usize, usize) {
    let start = o * s.stride;
    (start.saturating_sub(s.pad), (start + s.k - s.pad).min(len))
}

/// Flat index (within a plane) of the first maximum of output `(oy, ox)`'s window, with its value.
#[inline]
fn window_argmax(plane: &[f32], oy: usize, ox: usize, s: &MaxPool) -> (usize, f32) {
    let ((y0, y1), (x0, x1)) = (window(oy, s, s.h), window(ox, s, s.w));
    let mut at = y0 * s.w + x0;
    let mut best = plane[at];
    for iy in y0..y1 {
        for (ix, &v) in plane[iy * s.w..][x0..x1].iter().enumerate() {
            // A NaN wins and stays, as PyTorch propagates it.
            if v > best || (v.is_nan() && !best.is_nan()) {
                best = v;
                at = iy * s.w + x0 + ix;
            }
        }
    }
    (at, best)
}

/// `y = max over each k x k window` (padding never wins: pad < k keeps a real value in every
/// window).
pub fn maxpool_fwd_f32(x: &[f32], y: &mut [f32], s: MaxPool) {
    let (hw, ohw) = (s.h * s.w, s.oh * s.ow);
    y.par_chunks_mut(ohw).enumerate().for_each(|(p, out)| {
        let plane = &x[p * hw..(p + 1) * hw];
        for oy in 0..s.oh {
            for ox in 0..s.ow {
                out[oy * s.ow + ox] = window_argmax(plane, oy, ox, &s).1;
            }
        }
    });
}

/// `dx` = each `dy` routed to the first maximum of its window (recomputed from `x`), summed
/// where windows overlap.
pub fn maxpool_bwd_f32(x: &[f32], dy: &[f32], dx: &mut [f32], s: MaxPool) {
    let (hw, ohw) = (s.h * s.w, s.oh * s.ow);
    dx.par_chunks_mut(hw).enumerate().for_each(|(p, out)| {
        let (plane, g) = (&x[p * hw..(p + 1) * hw], &dy[p * ohw..(p + 1) * ohw]);
        out.fill(0.0);
        for oy in 0..s.oh {
            for ox in 0..s.ow {
                let (at, _) = window_argmax(plane, oy, ox, &s);
                out[at] += g[oy * s.ow + ox];
            }
        }
    });
}

impl crate::backend::PoolOps for super::CpuBackend {
    fn gem_fwd(&self, x: &Buf, y: &mut Buf, s: Checked<Gem>) -> Result<()> {
        let x = widen(x)?;
        with_f32_out(y, false, |y| gem_fwd_f32(&x, y, *s))
    }

    fn gem_bwd(&self, x: &Buf, y: &Buf, dy: &Buf, dx: &mut Buf, s: Checked<Gem>) -> Result<()> {
        let (x, y, dy) = (widen(x)?, widen(y)?, widen(dy)?);
        with_f32_out(dx, false, |dx| gem_bwd_f32(&x, &y, &dy, dx, *s))
    }

    fn maxpool_fwd(&self, x: &Buf, y: &mut Buf, s: Checked<MaxPool>) -> Result<()> {
        let x = widen(x)?;
        with_f32_out(y, false, |y| maxpool_fwd_f32(&x, y, *s))
    }

    fn maxpool_bwd(
        &self,
        x: &Buf,
        _y: &Buf,
        dy: &Buf,
        dx: &mut Buf,
        s: Checked<MaxPool>,
    ) -> Result<()> {
        // The twin recomputes each window's argmax from x; y is for kernels that compare.
        let (x, dy) = (widen(x)?, widen(dy)?);
        with_f32_out(dx, false, |dx| maxpool_bwd_f32(&x, &dy, dx, *s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_pool_3x3_stride2_pad1_by_hand() {
        // 4x4 plane 0..15: windows centred on even rows / columns.
        let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let s = MaxPool::new(1, 1, 4, 4, 3, 2, 1).unwrap();
        assert_eq!((s.oh, s.ow), (2, 2));
        let mut y = [0.0; 4];
        maxpool_fwd_f32(&x, &mut y, s);
        assert_eq!(y, [5.0, 7.0, 13.0, 15.0]);
        let mut dx = vec![f32::NAN; 16];
        maxpool_bwd_f32(&x, &[1.0, 2.0, 3.0, 4.0], &mut dx, s);
        let mut want = vec![0.0; 16];
        (want[5], want[7], want[13], want[15]) = (1.0, 2.0, 3.0, 4.0);
        assert_eq!(dx, want);
    }

    #[test]
    fn max_pool_ties_go_to_the_first_maximum_and_overlaps_sum() {
        let x = [1.0f32; 9];
        let s = MaxPool::new(1, 1, 3, 3, 3, 2, 1).unwrap();
        let mut dx = vec![0.0; 9];
        maxpool_bwd_f32(&x, &[1.0, 1.0, 1.0, 1.0], &mut dx, s);
        // Windows start at (-1,-1), (-1,1), (1,-1), (1,1): first real cells 0, 1, 3, 4.
        assert_eq!(dx, [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    }
}
