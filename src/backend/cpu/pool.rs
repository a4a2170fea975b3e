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

/// The first maximum of output `(oy, ox)`'s window: its place in the window, `(iy - y0) k +
/// (ix - x0)` with the window's unclamped corner (y0, x0), and its value.
#[inline]
fn window_max(plane: &[f32], oy: usize, ox: usize, s: &MaxPool) -> (usize, f32) {
    let ((y0, y1), (x0, x1)) = (window(oy, s, s.h), window(ox, s, s.w));
    let place =
        |iy: usize, ix: usize| (iy + s.pad - oy * s.stride) * s.k + ix + s.pad - ox * s.stride;
    let (mut at, mut best) = (place(y0, x0), plane[y0 * s.w + x0]);
    for iy in y0..y1 {
        for (ix, &v) in plane[iy * s.w..][x0..x1].iter().enumerate() {
            // A NaN wins and stays, as PyTorch propagates it.
            if v > best || (v.is_nan() && !best.is_nan()) {
                best = v;
                at = place(iy, x0 + ix);
            }
        }
    }
    (at, best)
}

/// `y = max over each k x k window` (padding never wins: pad < k keeps a real value in every
/// window); with `argmax`, each window's first maximum's place in it, `(iy - y0) k + (ix - x0)`
/// with the window's unclamped corner (y0, x0).
pub fn maxpool_fwd_f32(x: &[f32], y: &mut [f32], argmax: Option<&mut [u8]>, s: MaxPool) {
    let (hw, ohw) = (s.h * s.w, s.oh * s.ow);
    let pool_plane = |p: usize, out: &mut [f32], mut places: Option<&mut [u8]>| {
        let plane = &x[p * hw..(p + 1) * hw];
        for oy in 0..s.oh {
            for ox in 0..s.ow {
                let (place, v) = window_max(plane, oy, ox, &s);
                out[oy * s.ow + ox] = v;
                if let Some(places) = places.as_deref_mut() {
                    places[oy * s.ow + ox] = place as u8;
                }
            }
        }
    };
    match argmax {
        Some(a) => y
            .par_chunks_mut(ohw)
            .zip(a.par_chunks_mut(ohw))
            .enumerate()
            .for_each(|(p, (out, a))| pool_plane(p, out, Some(a))),
        None => y
            .par_chunks_mut(ohw)
            .enumerate()
            .for_each(|(p, out)| pool_plane(p, out, None)),
    }
}

/// `dx` = each `dy` routed to its window's maximum as `argmax` placed it, summed where windows
/// overlap (in row-major window order, as the kernel's gather adds them).
pub fn maxpool_bwd_f32(argmax: &[u8], dy: &[f32], dx: &mut [f32], s: MaxPool) {
    let (hw, ohw) = (s.h * s.w, s.oh * s.ow);
    dx.par_chunks_mut(hw).enumerate().for_each(|(p, out)| {
        let (a, g) = (&argmax[p * ohw..(p + 1) * ohw], &dy[p * ohw..(p + 1) * ohw]);
        out.fill(0.0);
        for oy in 0..s.oh {
            for ox in 0..s.ow {
                let place = a[oy * s.ow + ox] as usize;
                let iy = oy * s.stride + place / s.k - s.pad;
                let ix = ox * s.stride + place % s.k - s.pad;
                out[iy * s.w + ix] += g[oy * s.ow + ox];
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

    fn maxpool_fwd(
        &self,
        x: &Buf,
        y: &mut Buf,
        argmax: Option<&mut Buf>,
        s: Checked<MaxPool>,
    ) -> Result<()> {
        let x = widen(x)?;
        let argmax = argmax.map(|a| a.host_mut::<u8>()).transpose()?;
        with_f32_out(y, false, |y| maxpool_fwd_f32(&x, y, argmax, *s))
    }

    fn maxpool_bwd(&self, argmax: &Buf, dy: &Buf, dx: &mut Buf, s: Checked<MaxPool>) -> Result<()> {
        let dy = widen(dy)?;
        let argmax = argmax.host::<u8>()?;
        with_f32_out(dx, false, |dx| maxpool_bwd_f32(argmax, &dy, dx, *s))
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
        let mut argmax = [0u8; 4];
        maxpool_fwd_f32(&x, &mut y, Some(&mut argmax), s);
        assert_eq!(y, [5.0, 7.0, 13.0, 15.0]);
        // Windows start at (-1,-1), (-1,1), (1,-1), (1,1): each maximum at its window's (2, 2).
        assert_eq!(argmax, [8, 8, 8, 8]);
        let mut dx = vec![f32::NAN; 16];
        maxpool_bwd_f32(&argmax, &[1.0, 2.0, 3.0, 4.0], &mut dx, s);
        let mut want = vec![0.0; 16];
        (want[5], want[7], want[13], want[15]) = (1.0, 2.0, 3.0, 4.0);
        assert_eq!(dx, want);
    }

    #[test]
    fn max_pool_ties_go_to_the_first_maximum_and_overlaps_sum() {
        let x = [1.0f32; 9];
        let s = MaxPool::new(1, 1, 3, 3, 3, 2, 1).unwrap();
        let (mut y, mut argmax) = ([0.0f32; 4], [0u8; 4]);
        maxpool_fwd_f32(&x, &mut y, Some(&mut argmax), s);
        // Each window's first real cell: (1, 1), (1, 0), (0, 1) and (0, 0) of its 3 x 3.
        assert_eq!(argmax, [4, 3, 1, 0]);
        let mut dx = vec![0.0; 9];
        maxpool_bwd_f32(&argmax, &[1.0, 1.0, 1.0, 1.0], &mut dx, s);
        // Windows start at (-1,-1), (-1,1), (1,-1), (1,1): first real cells 0, 1, 3, 4.
        assert_eq!(dx, [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    }
}
