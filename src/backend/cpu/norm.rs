//! Row-wise L2 normalisation and BatchNorm (+ fused activation) on the CPU: the twins of
//! `kernels/norm.cu` (formulas there).
//!
//! BatchNorm over NCHW: channel `c` of image `i` is the plane `i*C + c` of `hw` values.
//! Statistics are per (ghost group, channel) over `n/ghost * hw` values, accumulated in f64.

use super::{transpose_images, wide, widen, with_f32_out};
use crate::backend::{Act, ActMask, BatchNorm, Buf, Checked, DType, L2Norm};
use anyhow::Result;
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

/// `act(z)`.
#[inline]
pub fn act_apply(act: Act, z: f32) -> f32 {
    match act {
        Act::Identity => z,
        Act::Relu => z.max(0.0),
        Act::Relu6 => z.clamp(0.0, 6.0),
    }
}

/// `act'` read from the activation's output `y` (1 where the activation passed its input).
#[inline]
pub fn act_grad(act: Act, y: f32) -> f32 {
    match act {
        Act::Identity => 1.0,
        Act::Relu => (y > 0.0) as u8 as f32,
        Act::Relu6 => (y > 0.0 && y < 6.0) as u8 as f32,
    }
}

const LANES: usize = 8;

/// `sum f(v)` over `x` in f64, in eight interleaved lanes: one accumulator chain per lane lets
/// neighbouring elements' adds overlap (and vectorise) instead of each waiting for the last.
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    let mut acc = [0.0f64; LANES];
    for c in chunks {
        for l in 0..LANES {
            acc[l] += f(c[l]);
        }
    }
    acc.iter().sum::<f64>() + tail.iter().map(|&v| f(v)).sum::<f64>()
}

/// `(sum a, sum b)` of `(a, b) = f(x, y, dy)` over three equal-length slices, in f64 lanes as
/// [`lane_sum`].
#[inline(always)]
fn lane_sums3(
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    f: impl Fn(f32, f32, f32) -> (f64, f64),
) -> (f64, f64) {
    let (xc, yc, gc) = (
        x.chunks_exact(LANES),
        y.chunks_exact(LANES),
        dy.chunks_exact(LANES),
    );
    let (xt, yt, gt) = (xc.remainder(), yc.remainder(), gc.remainder());
    let (mut a, mut b) = ([0.0f64; LANES], [0.0f64; LANES]);
    for ((xv, yv), gv) in xc.zip(yc).zip(gc) {
        for l in 0..LANES {
            let (u, v) = f(xv[l], yv[l], gv[l]);
            a[l] += u;
            b[l] += v;
        }
    }
    for ((&xv, &yv), &gv) in xt.iter().zip(yt).zip(gt) {
        let (u, v) = f(xv, yv, gv);
        a[0] += u;
        b[0] += v;
    }
    (a.iter().sum(), b.iter().sum())
}

/// One item per plane of an `n x c` NCHW tensor, in order, grouped by statistics group
/// `g * c + channel` in image order: each group's planes are one task's, read and written
/// together while they are still in cache.
fn planes_by_group<T>(planes: impl Iterator<Item = T>, s: &BatchNorm) -> Vec<Vec<T>> {
    let per = s.n / s.ghost;
    let mut groups: Vec<Vec<T>> = (0..s.ghost * s.c)
        .map(|_| Vec::with_capacity(per))
        .collect();
    for (p, plane) in planes.enumerate() {
        let (i, c) = (p / s.c, p % s.c);
        groups[(i / per) * s.c + c].push(plane);
    }
    groups
}

/// `1 / sqrt(var + eps)`, as saved for the backward.
fn invstd(var: f64, eps: f32) -> f32 {
    (1.0 / (var + eps as f64).sqrt()) as f32
}

/// Plane `p` (of `hw` values) of an NCHW tensor.
fn plane(v: &[f32], p: usize, hw: usize) -> &[f32] {
    &v[p * hw..(p + 1) * hw]
}

/// `act(x * scale + shift [+ residual])` over one plane (`res` is the residual's same plane).
#[inline(always)]
fn affine_plane(out: &mut [f32], x: &[f32], res: Option<&[f32]>, scale: f32, shift: f32, act: Act) {
    match res {
        None => {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = act_apply(act, v * scale + shift);
            }
        }
        Some(res) => {
            for (o, (&v, &r)) in out.iter_mut().zip(x.iter().zip(res)) {
                *o = act_apply(act, v * scale + shift + r);
            }
        }
    }
}

/// Forward with batch statistics: writes `y = act(bn(x) [+ res])`, `save_mean` /
/// `save_invstd` (`ghost x c`), and moves the running mean / unbiased variance towards chunk
/// 0's statistics by `momentum`. One task per statistics group: its statistics, then its
/// output planes, while its input planes are still in cache.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_fwd_train_f32(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    save_mean: &mut [f32],
    save_invstd: &mut [f32],
    res: Option<&[f32]>,
    y: &mut [f32],
    s: BatchNorm,
) {
    let count = (s.n / s.ghost * s.hw) as f64;
    let outs = planes_by_group(y.chunks_mut(s.hw).enumerate(), &s);
    let stats: Vec<(f64, f64)> = outs
        .into_par_iter()
        .map(|outs| {
            wide(
                #[inline(always)]
                || {
                    let xs = || outs.iter().map(|(p, _)| plane(x, *p, s.hw));
                    // Two passes (mean, then squared deviations) keep the variance accurate for
                    // large means.
                    let mean = xs().map(|v| lane_sum(v, |v| v as f64)).sum::<f64>() / count;
                    let ss: f64 = xs()
                        .map(|v| lane_sum(v, |v| (v as f64 - mean).powi(2)))
                        .sum();
                    let var = ss / count;
                    let c = outs[0].0 % s.c;
                    let scale = gamma[c] * invstd(var, s.eps);
                    let shift = beta[c] - mean as f32 * scale;
                    for (p, out) in outs {
                        affine_plane(
                            out,
                            plane(x, p, s.hw),
                            res.map(|r| plane(r, p, s.hw)),
                            scale,
                            shift,
                            s.act,
                        );
                    }
                    (mean, var)
                },
            )
        })
        .collect();
    for (gc, &(mean, var)) in stats.iter().enumerate() {
        save_mean[gc] = mean as f32;
        save_invstd[gc] = invstd(var, s.eps);
    }
    let m = s.momentum as f64;
    for c in 0..s.c {
        let (mean, var) = stats[c];
        let unbiased = var * count / (count - 1.0);
        running_mean[c] = ((1.0 - m) * running_mean[c] as f64 + m * mean) as f32;
        running_var[c] = ((1.0 - m) * running_var[c] as f64 + m * unbiased) as f32;
    }
}

/// Forward with the running statistics (eval mode), `y = act(bn(x) [+ res])`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_fwd_eval_f32(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    res: Option<&[f32]>,
    y: &mut [f32],
    s: BatchNorm,
) {
    y.par_chunks_mut(s.hw).enumerate().for_each(|(p, out)| {
        wide(
            #[inline(always)]
            || {
                let c = p % s.c;
                let scale = gamma[c] / (running_var[c] + s.eps).sqrt();
                let shift = beta[c] - running_mean[c] * scale;
                let r = p * s.hw..(p + 1) * s.hw;
                affine_plane(out, &x[r.clone()], res.map(|v| &v[r]), scale, shift, s.act);
            },
        )
    });
}

/// Backward of the training-mode forward. With `dz = dy * act'(y)`, `xh` the normalised input
/// and `M` values per statistics group:
/// `dx = gamma * invstd * (dz - mean(dz) - xh * mean(dz * xh))`, `dgamma += sum(dz * xh)`,
/// `dbeta += sum(dz)`; the residual's gradient, when asked, is `dres = dz`. One task per
/// statistics group, its sums then its gradient planes, as in the forward.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_bwd_f32(
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    gamma: &[f32],
    save_mean: &[f32],
    save_invstd: &[f32],
    dx: &mut [f32],
    dres: Option<&mut [f32]>,
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    s: BatchNorm,
) {
    let count = (s.n / s.ghost * s.hw) as f64;
    let dres_planes = dres.map(|d| d.chunks_mut(s.hw).map(Some).collect::<Vec<_>>());
    let outs = match dres_planes {
        Some(d) => planes_by_group(dx.chunks_mut(s.hw).zip(d).enumerate(), &s),
        None => planes_by_group(dx.chunks_mut(s.hw).map(|p| (p, None)).enumerate(), &s),
    };
    let sums: Vec<(f64, f64)> = outs
        .into_par_iter()
        .enumerate()
        .map(|(gc, outs)| {
            wide(
                #[inline(always)]
                || {
                    let (c, mean, inv) = (gc % s.c, save_mean[gc], save_invstd[gc]);
                    let (mut sdz, mut sdzx) = (0.0f64, 0.0f64);
                    for (p, _) in &outs {
                        let (a, b) = lane_sums3(
                            plane(x, *p, s.hw),
                            plane(y, *p, s.hw),
                            plane(dy, *p, s.hw),
                            |xv, yv, g| {
                                let dz = (g * act_grad(s.act, yv)) as f64;
                                (dz, dz * ((xv - mean) * inv) as f64)
                            },
                        );
                        sdz += a;
                        sdzx += b;
                    }
                    let (mdz, mdzx) = ((sdz / count) as f32, (sdzx / count) as f32);
                    let k = gamma[c] * inv;
                    let dx_of = |dz: f32, xv: f32| k * (dz - mdz - (xv - mean) * inv * mdzx);
                    for (p, (out, dres)) in outs {
                        let (x, y, dy) = (plane(x, p, s.hw), plane(y, p, s.hw), plane(dy, p, s.hw));
                        let dzs = y.iter().zip(dy).map(|(&yv, &g)| g * act_grad(s.act, yv));
                        match dres {
                            None => {
                                for ((o, &xv), dz) in out.iter_mut().zip(x).zip(dzs) {
                                    *o = dx_of(dz, xv);
                                }
                            }
                            // The residual's gradient is dz itself: one pass writes both.
                            Some(dres) => {
                                let outs = out.iter_mut().zip(dres.iter_mut());
                                for (((o, r), &xv), dz) in outs.zip(x).zip(dzs) {
                                    (*o, *r) = (dx_of(dz, xv), dz);
                                }
                            }
                        }
                    }
                    (sdz, sdzx)
                },
            )
        })
        .collect();
    for (gc, &(sdz, sdzx)) in sums.iter().enumerate() {
        dbeta[gc % s.c] += sdz as f32;
        dgamma[gc % s.c] += sdzx as f32;
    }
}

/// Backward of the eval-mode forward (frozen statistics): with `dz = dy * act'(y)` and
/// `invstd = 1/sqrt(running_var + eps)`, `dx = gamma * invstd * dz`, `dgamma += sum(dz * xh)`
/// with `xh = (x - running_mean) * invstd`, `dbeta += sum(dz)`; `dres = dz` when asked. The
/// statistics are constants here, so none of the batch-mean terms of the training backward.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_bwd_eval_f32(
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    gamma: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    dx: &mut [f32],
    dres: Option<&mut [f32]>,
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    s: BatchNorm,
) {
    let invstd = |c: usize| 1.0 / (running_var[c] as f64 + s.eps as f64).sqrt();
    let sums: Vec<(f64, f64)> = (0..s.c)
        .into_par_iter()
        .map(|c| {
            let (mean, inv) = (running_mean[c] as f64, invstd(c));
            let (mut sdz, mut sdzx) = (0.0f64, 0.0f64);
            for i in 0..s.n {
                let r = (i * s.c + c) * s.hw..(i * s.c + c + 1) * s.hw;
                let (a, b) = lane_sums3(&x[r.clone()], &y[r.clone()], &dy[r], |xv, yv, g| {
                    let dz = (g * act_grad(s.act, yv)) as f64;
                    (dz, dz * (xv as f64 - mean) * inv)
                });
                sdz += a;
                sdzx += b;
            }
            (sdz, sdzx)
        })
        .collect();
    for (c, &(sdz, sdzx)) in sums.iter().enumerate() {
        dbeta[c] += sdz as f32;
        dgamma[c] += sdzx as f32;
    }
    dx.par_chunks_mut(s.hw).enumerate().for_each(|(p, out)| {
        let c = p % s.c;
        let k = (gamma[c] as f64 * invstd(c)) as f32;
        let r = p * s.hw..(p + 1) * s.hw;
        for (o, (&yv, &g)) in out.iter_mut().zip(y[r.clone()].iter().zip(&dy[r])) {
            *o = k * g * act_grad(s.act, yv);
        }
    });
    if let Some(dres) = dres {
        dres.par_iter_mut()
            .zip(y.par_iter().zip(dy))
            .for_each(|(o, (&yv, &g))| *o = g * act_grad(s.act, yv));
    }
}

impl crate::backend::NormOps for super::CpuBackend {
    fn l2norm_fwd(&self, x: &Buf, y: &mut Buf, s: Checked<L2Norm>) -> Result<()> {
        let x = widen(x)?;
        with_f32_out(y, false, |y| l2norm_fwd_f32(&x, y, *s))
    }

    fn l2norm_bwd(&self, x: &Buf, dy: &Buf, dx: &mut Buf, s: Checked<L2Norm>) -> Result<()> {
        let (x, dy) = (widen(x)?, widen(dy)?);
        with_f32_out(dx, false, |dx| l2norm_bwd_f32(&x, &dy, dx, *s))
    }

    fn batchnorm_fwd_train(
        &self,
        x: &Buf,
        gamma: &Buf,
        beta: &Buf,
        running: (&mut Buf, &mut Buf),
        saved: (&mut Buf, &mut Buf),
        residual: Option<&Buf>,
        y: &mut Buf,
        _mask: Option<&mut ActMask>,
        s: Checked<BatchNorm>,
    ) -> Result<()> {
        let (x, res) = (widen(x)?, residual.map(widen).transpose()?);
        let (gamma, beta) = (gamma.host()?, beta.host()?);
        let (rm, rv) = (running.0.host_mut()?, running.1.host_mut()?);
        let (sm, si) = (saved.0.host_mut()?, saved.1.host_mut()?);
        let dims = (s.n, s.c, s.hw);
        with_f32_out(y, false, |y| {
            if s.y_nhwc {
                let mut nchw = vec![0.0f32; y.len()];
                batchnorm_fwd_train_f32(&x, gamma, beta, rm, rv, sm, si, None, &mut nchw, *s);
                y.copy_from_slice(&transpose_images(&nchw, dims, true));
            } else {
                batchnorm_fwd_train_f32(&x, gamma, beta, rm, rv, sm, si, res.as_deref(), y, *s)
            }
        })
    }

    fn batchnorm_fwd_eval(
        &self,
        x: &Buf,
        gamma: &Buf,
        beta: &Buf,
        running_mean: &Buf,
        running_var: &Buf,
        residual: Option<&Buf>,
        y: &mut Buf,
        s: Checked<BatchNorm>,
    ) -> Result<()> {
        let (x, res) = (widen(x)?, residual.map(widen).transpose()?);
        let (gamma, beta) = (gamma.host()?, beta.host()?);
        let (rm, rv) = (running_mean.host()?, running_var.host()?);
        with_f32_out(y, false, |y| {
            batchnorm_fwd_eval_f32(&x, gamma, beta, rm, rv, res.as_deref(), y, *s)
        })
    }

    fn batchnorm_bwd(
        &self,
        x: &Buf,
        y: &Buf,
        dy: &Buf,
        (gamma, _beta): (&Buf, &Buf),
        saved: (&Buf, &Buf),
        _mask: Option<&ActMask>,
        dx: &mut Buf,
        dres: Option<&mut Buf>,
        dparams: (&mut Buf, &mut Buf),
        s: Checked<BatchNorm>,
    ) -> Result<()> {
        let (x, mut y, dy) = (widen(x)?, widen(y)?, widen(dy)?);
        if s.y_nhwc {
            y = transpose_images(&y, (s.n, s.c, s.hw), false).into();
        }
        let (gamma, sm, si) = (gamma.host()?, saved.0.host()?, saved.1.host()?);
        let (dg, db) = (dparams.0.host_mut()?, dparams.1.host_mut()?);
        // The residual's gradient is written in place when f32; a bf16 one goes through an f32
        // copy, rounded once as the kernel does.
        let (dres_f32, mut dres_bf16) = match dres {
            Some(r) if r.dtype() == DType::BF16 => (None, Some((vec![0f32; r.len()], r))),
            Some(r) => (Some(r.host_mut::<f32>()?), None),
            None => (None, None),
        };
        with_f32_out(dx, false, |dx| {
            let dres = match dres_bf16.as_mut() {
                Some((tmp, _)) => Some(tmp.as_mut_slice()),
                None => dres_f32,
            };
            if s.dx_nhwc {
                let mut nchw = vec![0.0f32; dx.len()];
                batchnorm_bwd_f32(&x, &y, &dy, gamma, sm, si, &mut nchw, dres, dg, db, *s);
                dx.copy_from_slice(&transpose_images(&nchw, (s.n, s.c, s.hw), true));
            } else {
                batchnorm_bwd_f32(&x, &y, &dy, gamma, sm, si, dx, dres, dg, db, *s)
            }
        })?;
        if let Some((tmp, out)) = dres_bf16 {
            with_f32_out(out, false, |o| o.copy_from_slice(&tmp))?;
        }
        Ok(())
    }

    fn batchnorm_bwd_eval(
        &self,
        x: &Buf,
        y: &Buf,
        dy: &Buf,
        gamma: &Buf,
        running: (&Buf, &Buf),
        dx: &mut Buf,
        dres: Option<&mut Buf>,
        dparams: (&mut Buf, &mut Buf),
        s: Checked<BatchNorm>,
    ) -> Result<()> {
        let (x, y, dy) = (widen(x)?, widen(y)?, widen(dy)?);
        let (gamma, rm, rv) = (gamma.host()?, running.0.host()?, running.1.host()?);
        let (dg, db) = (dparams.0.host_mut()?, dparams.1.host_mut()?);
        let (dres_f32, mut dres_bf16) = match dres {
            Some(r) if r.dtype() == DType::BF16 => (None, Some((vec![0f32; r.len()], r))),
            Some(r) => (Some(r.host_mut::<f32>()?), None),
            None => (None, None),
        };
        with_f32_out(dx, false, |dx| {
            let dres = match dres_bf16.as_mut() {
                Some((tmp, _)) => Some(tmp.as_mut_slice()),
                None => dres_f32,
            };
            batchnorm_bwd_eval_f32(&x, &y, &dy, gamma, rm, rv, dx, dres, dg, db, *s)
        })?;
        if let Some((tmp, out)) = dres_bf16 {
            with_f32_out(out, false, |o| o.copy_from_slice(&tmp))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-computed: one channel, values 1, 2, 3, 6 (mean 3, biased var 3.5, unbiased 14/3).
    #[test]
    fn batch_statistics_and_running_averages_follow_pytorch() {
        let x = [1.0f32, 2.0, 3.0, 6.0];
        let s = BatchNorm::new(2, 1, 2, 1e-5, Act::Identity);
        let (mut rm, mut rv) = ([0.0f32], [1.0f32]);
        let (mut sm, mut si) = ([0.0f32], [0.0f32]);
        let mut y = [0.0f32; 4];
        batchnorm_fwd_train_f32(
            &x,
            &[2.0],
            &[1.0],
            &mut rm,
            &mut rv,
            &mut sm,
            &mut si,
            None,
            &mut y,
            s,
        );
        let inv = 1.0 / (3.5f32 + 1e-5).sqrt();
        assert!((sm[0] - 3.0).abs() < 1e-6 && (si[0] - inv).abs() < 1e-6);
        for (o, v) in y.iter().zip(x) {
            assert!((o - (2.0 * (v - 3.0) * inv + 1.0)).abs() < 1e-5);
        }
        assert!((rm[0] - 0.3).abs() < 1e-6, "running mean {}", rm[0]);
        assert!(
            (rv[0] - (0.9 + 0.1 * 14.0 / 3.0)).abs() < 1e-6,
            "running var {}",
            rv[0]
        );
    }

    #[test]
    fn ghost_groups_normalise_each_chunk_and_track_chunk_zero() {
        // Two images, one channel, one value each per group of 2 positions.
        let x = [1.0f32, 3.0, 10.0, 30.0];
        let s = BatchNorm {
            ghost: 2,
            ..BatchNorm::new(2, 1, 2, 0.0, Act::Identity)
        };
        let (mut rm, mut rv) = ([0.0f32], [1.0f32]);
        let (mut sm, mut si) = ([0.0f32; 2], [0.0f32; 2]);
        let mut y = [0.0f32; 4];
        batchnorm_fwd_train_f32(
            &x,
            &[1.0],
            &[0.0],
            &mut rm,
            &mut rv,
            &mut sm,
            &mut si,
            None,
            &mut y,
            s,
        );
        assert_eq!(sm, [2.0, 20.0]);
        for v in y {
            assert!((v.abs() - 1.0).abs() < 1e-6, "{y:?}");
        }
        assert!(
            (rm[0] - 0.2).abs() < 1e-6,
            "running mean from chunk 0 only: {}",
            rm[0]
        );
    }

    #[test]
    fn eval_mode_uses_running_statistics_and_clamps_relu6() {
        let x = [-1.0f32, 0.5, 20.0];
        let s = BatchNorm::new(1, 1, 3, 0.0, Act::Relu6);
        let mut y = [0.0f32; 3];
        batchnorm_fwd_eval_f32(&x, &[1.0], &[0.0], &[0.5], &[0.25], None, &mut y, s);
        assert_eq!(y, [0.0, 0.0, 6.0]);
        let s = BatchNorm::new(1, 1, 3, 0.0, Act::Identity);
        batchnorm_fwd_eval_f32(&x, &[1.0], &[0.0], &[0.5], &[0.25], None, &mut y, s);
        assert_eq!(y, [-3.0, 0.0, 39.0]);
        // The residual goes in before the activation.
        let s = BatchNorm::new(1, 1, 3, 0.0, Act::Relu6);
        let res = [4.0f32, 1.0, -40.0];
        batchnorm_fwd_eval_f32(&x, &[1.0], &[0.0], &[0.5], &[0.25], Some(&res), &mut y, s);
        assert_eq!(y, [1.0, 1.0, 0.0]);
    }
}
