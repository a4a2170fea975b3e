//! 2-D convolution on the CPU: the twin of `kernels/conv.cu`.
//!
//! Dense and grouped convolutions go through im2col + the CPU GEMM, one group at a time and
//! one image at a time, or several side by side when the output map is small
//! (`images_per_gemm`); a 1x1 stride-1 unpadded convolution of one image skips im2col (the
//! input already is the column matrix). Depthwise convolutions are not GEMMs (one input
//! channel per output channel), so they use direct loops, parallel over planes, compiled for
//! AVX2 where the CPU has it (`wide`).
//!
//! Layouts: x `n x c_in x h x w`, w `c_out x c_in/g x kh x kw`, y `n x c_out x oh x ow`.
//! The column matrix of a group is `K x (oh*ow)` with `K = c_in/g * kh * kw`, row
//! `(ci*kh + ki)*kw + kj`, so `y_g = W_g col` with `W_g` read as `c_out/g x K`.

use super::gemm::matmul_f32;
use super::{transpose_images, wide, widen, with_f32_out};
use crate::backend::{Buf, Checked, Conv, DType, MatMul};
use anyhow::Result;
use half::bf16;
use rayon::prelude::*;
use std::borrow::Cow;
use std::cell::RefCell;

thread_local! {
    /// im2col scratch, grown to the largest column matrix seen and reused: a training step
    /// allocates nothing once the first step has run.
    static COLS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The first `len` elements of a thread's scratch buffer, grown when short and kept.
#[inline(always)]
fn with_scratch<R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() < len {
            c.resize(len, 0.0);
        }
        f(&mut c[..len])
    })
}

fn with_cols<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_scratch(&COLS, len, f)
}

thread_local! {
    /// A product over several images before it is dealt out (forward), or their gathered
    /// output gradients (data gradient), reused.
    static BATCH_OUT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// True when the column matrix is the input itself.
fn is_pointwise(s: &Conv) -> bool {
    s.kh == 1 && s.kw == 1 && s.stride == 1 && s.pad_top == 0 && s.pad_left == 0
}

/// Input row / column read by output position `o` and kernel tap `k`, if inside the image.
#[inline]
fn src(o: usize, k: usize, stride: usize, pad: usize, len: usize) -> Option<usize> {
    let i = (o * stride + k).checked_sub(pad)?;
    (i < len).then_some(i)
}

/// Fills `col` (`K x images*oh*ow`: each image's columns side by side in every row) from
/// `xs`, the input channels of one group of `images` consecutive images (`images x c_in/g x h
/// x w`; more than one image only when there is one group). Each row is one (channel, tap):
/// per output row, the columns `tap_range` keeps are a copy (stride 1) or a strided gather,
/// and the padding around them is zero.
fn im2col(xs: &[f32], images: usize, col: &mut [f32], s: &Conv) {
    let (cig, _, _, ohw) = group_dims(s);
    let hw = s.h * s.w;
    let taps = s.kh * s.kw;
    col.par_chunks_mut(images * ohw)
        .enumerate()
        .for_each(|(r, row)| {
            let (ci, t) = (r / taps, r % taps);
            let (ki, kj) = (t / s.kw, t % s.kw);
            let (lo, hi) = tap_range(kj, s.stride, s.pad_left, s.w, s.ow);
            for (j, part) in row.chunks_exact_mut(ohw).enumerate() {
                let plane = &xs[(j * cig + ci) * hw..][..hw];
                for (oy, out) in part.chunks_exact_mut(s.ow).enumerate() {
                    let Some(iy) = src_row(oy, ki, s).filter(|_| lo < hi) else {
                        out.fill(0.0);
                        continue;
                    };
                    out[..lo].fill(0.0);
                    out[hi..].fill(0.0);
                    let line = &plane[iy * s.w + lo * s.stride + kj - s.pad_left..(iy + 1) * s.w];
                    if s.stride == 1 {
                        out[lo..hi].copy_from_slice(&line[..hi - lo]);
                    } else {
                        for (o, &v) in out[lo..hi].iter_mut().zip(line.iter().step_by(s.stride)) {
                            *o = v;
                        }
                    }
                }
            }
        });
}

/// The adjoint of [`im2col`]: adds `col`'s entries back into `dxs` (the same images' input
/// gradient planes), which it overwrites.
fn col2im(col: &[f32], images: usize, dxs: &mut [f32], s: &Conv) {
    let (cig, _, _, ohw) = group_dims(s);
    let hw = s.h * s.w;
    let taps = s.kh * s.kw;
    dxs.par_chunks_mut(hw).enumerate().for_each(|(p, plane)| {
        let (j, ci) = (p / cig, p % cig);
        plane.fill(0.0);
        for t in 0..taps {
            let (ki, kj) = (t / s.kw, t % s.kw);
            let (lo, hi) = tap_range(kj, s.stride, s.pad_left, s.w, s.ow);
            if lo == hi {
                continue;
            }
            let row = &col[((ci * taps + t) * images + j) * ohw..][..ohw];
            for (oy, g) in row.chunks_exact(s.ow).enumerate() {
                let Some(iy) = src_row(oy, ki, s) else {
                    continue;
                };
                let line = &mut plane[iy * s.w + lo * s.stride + kj - s.pad_left..(iy + 1) * s.w];
                if s.stride == 1 {
                    for (d, &v) in line.iter_mut().zip(&g[lo..hi]) {
                        *d += v;
                    }
                } else {
                    for (d, &v) in line.iter_mut().step_by(s.stride).zip(&g[lo..hi]) {
                        *d += v;
                    }
                }
            }
        }
    });
}

/// Per-group sizes: (c_in/g, c_out/g, K, oh*ow).
fn group_dims(s: &Conv) -> (usize, usize, usize, usize) {
    let cig = s.c_in / s.groups;
    (cig, s.c_out / s.groups, cig * s.kh * s.kw, s.oh * s.ow)
}

/// Images per GEMM in the forward and data-gradient passes. A small output map makes a thin
/// product (ResNet-50's last stage at 224 px: 49 columns against 512-4608 rows), dominated by
/// packing the weights and by the partial last register tile; side by side, up to 1024
/// columns, the images share one packing. Measured on 512x49x4608 and 4608x49x512 at batch 2:
/// 1.3-1.9x faster; at 196 columns 1.1-1.2x; the weight gradient (the map is its reduction
/// axis) gained nothing and stays per image. Larger maps are wide enough alone.
fn images_per_gemm(s: &Conv) -> usize {
    let ohw = s.oh * s.ow;
    if s.groups == 1 && ohw <= 256 {
        (1024 / ohw).clamp(1, s.n)
    } else {
        1
    }
}

/// Image batches `first..first + count` of at most `per` images.
fn image_batches(n: usize, per: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n)
        .step_by(per)
        .map(move |first| (first, per.min(n - first)))
}

/// `y = conv(x, w)`; sizes are checked by the caller.
pub fn conv2d_fwd_f32(x: &[f32], w: &[f32], y: &mut [f32], s: Conv) {
    if s.is_depthwise() {
        return depthwise_fwd(x, w, y, &s);
    }
    let (cig, cog, k, ohw) = group_dims(&s);
    let hw = s.h * s.w;
    for (first, images) in image_batches(s.n, images_per_gemm(&s)) {
        let gemm = MatMul::new(cog, images * ohw, k);
        for g in 0..s.groups {
            let xs = &x[(first * s.c_in + g * cig) * hw..][..images * cig * hw];
            let wg = &w[g * cog * k..][..cog * k];
            let yg = &mut y[(first * s.c_out + g * cog) * ohw..];
            if images == 1 && is_pointwise(&s) {
                matmul_f32(wg, xs, &mut yg[..cog * ohw], gemm);
                continue;
            }
            with_cols(k * images * ohw, |col| {
                im2col(xs, images, col, &s);
                if images == 1 {
                    return matmul_f32(wg, col, &mut yg[..cog * ohw], gemm);
                }
                // The product's rows hold the images side by side: deal them out.
                with_scratch(&BATCH_OUT, cog * images * ohw, |out| {
                    matmul_f32(wg, col, out, gemm);
                    let planes = yg[..images * s.c_out * ohw].par_chunks_mut(ohw);
                    planes.enumerate().for_each(|(p, plane)| {
                        let (j, co) = (p / s.c_out, p % s.c_out);
                        plane.copy_from_slice(&out[(co * images + j) * ohw..][..ohw]);
                    });
                });
            });
        }
    }
}

/// `dx = conv^T(dy, w)` (overwrites `dx`).
pub fn conv2d_bwd_data_f32(dy: &[f32], w: &[f32], dx: &mut [f32], s: Conv) {
    if s.is_depthwise() {
        return depthwise_bwd_data(dy, w, dx, &s);
    }
    let (cig, cog, k, ohw) = group_dims(&s);
    let hw = s.h * s.w;
    for (first, images) in image_batches(s.n, images_per_gemm(&s)) {
        // dcol = W_g^T dy_g, W_g stored c_out/g x K.
        let gemm = MatMul::new(k, images * ohw, cog).ta();
        for g in 0..s.groups {
            let dyg = &dy[(first * s.c_out + g * cog) * ohw..];
            let wg = &w[g * cog * k..][..cog * k];
            let dxs = &mut dx[(first * s.c_in + g * cig) * hw..][..images * cig * hw];
            if images == 1 && is_pointwise(&s) {
                matmul_f32(wg, &dyg[..cog * ohw], dxs, gemm);
                continue;
            }
            with_cols(k * images * ohw, |col| {
                if images == 1 {
                    matmul_f32(wg, &dyg[..cog * ohw], col, gemm);
                } else {
                    // Gather the images' gradients side by side in each row, as the forward.
                    with_scratch(&BATCH_OUT, cog * images * ohw, |gathered| {
                        let parts = gathered.par_chunks_mut(ohw).enumerate();
                        parts.for_each(|(q, part)| {
                            let (co, j) = (q / images, q % images);
                            part.copy_from_slice(&dyg[(j * s.c_out + co) * ohw..][..ohw]);
                        });
                        matmul_f32(wg, gathered, col, gemm);
                    });
                }
                col2im(col, images, dxs, &s);
            });
        }
    }
}

/// `dw += dy (*) x` summed over the batch.
pub fn conv2d_bwd_weight_f32(x: &[f32], dy: &[f32], dw: &mut [f32], s: Conv) {
    if s.is_depthwise() {
        return depthwise_bwd_weight(x, dy, dw, &s);
    }
    let (cig, cog, k, ohw) = group_dims(&s);
    let hw = s.h * s.w;
    // dW_g += dy_g col^T, col stored K x oh*ow.
    let gemm = MatMul::new(cog, k, ohw).tb().accumulate();
    for i in 0..s.n {
        for g in 0..s.groups {
            let xg = &x[(i * s.c_in + g * cig) * hw..][..cig * hw];
            let dyg = &dy[(i * s.c_out + g * cog) * ohw..][..cog * ohw];
            let dwg = &mut dw[g * cog * k..][..cog * k];
            if is_pointwise(&s) {
                matmul_f32(dyg, xg, dwg, gemm);
            } else {
                with_cols(k * ohw, |col| {
                    im2col(xg, 1, col, &s);
                    matmul_f32(dyg, col, dwg, gemm);
                });
            }
        }
    }
}

// Depthwise convolutions, one plane per task. The loops run over a kernel tap outside and a
// run of output columns inside: `tap_range` clips that run to the columns whose input lies in
// the image, so the zero padding costs nothing and the inner loop is a bounds-test-free
// multiply-add over two contiguous slices, which the compiler vectorises. A stride above 1
// would make the input side strided; `split_phases` first deals the input columns into
// `stride` planes by column phase, after which every tap reads one of them contiguously.

thread_local! {
    /// Phase planes of one strided depthwise plane (input or input gradient), reused.
    static PHASES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

#[inline(always)]
fn with_phases<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_scratch(&PHASES, len, f)
}

/// Outputs `lo..hi` (of `out_len`) whose tap at offset `k` reads input `o * stride + k - pad`
/// inside `0..len`.
#[inline]
fn tap_range(k: usize, stride: usize, pad: usize, len: usize, out_len: usize) -> (usize, usize) {
    let lo = pad.saturating_sub(k).div_ceil(stride).min(out_len);
    let hi = if len + pad > k {
        ((len - 1 + pad - k) / stride + 1).min(out_len)
    } else {
        0
    };
    (lo, hi.max(lo))
}

/// Where a tap reads in the phase planes: input column `o * stride + kj - pad` is column
/// `o + offset` of phase plane `phase`.
#[inline]
fn tap_phase(kj: usize, s: &Conv) -> (usize, isize) {
    let d = kj as isize - s.pad_left as isize;
    let st = s.stride as isize;
    (d.rem_euclid(st) as usize, d.div_euclid(st))
}

/// Width of one phase plane.
fn phase_width(s: &Conv) -> usize {
    s.w.div_ceil(s.stride)
}

/// Deals the columns of `plane` (`h x w`) into `stride` planes (`h x phase_width`), column
/// `j * stride + r` going to column `j` of plane `r`; unused tail columns are zeroed.
#[inline(always)]
fn split_phases(plane: &[f32], phases: &mut [f32], s: &Conv) {
    let wp = phase_width(s);
    if s.stride == 2 {
        // Lite0's only stride: pairs of columns, which the compiler turns into shuffles.
        let (even, odd) = phases.split_at_mut(s.h * wp);
        let rows = even.chunks_exact_mut(wp).zip(odd.chunks_exact_mut(wp));
        for (line, (e, o)) in plane.chunks_exact(s.w).zip(rows) {
            for (p, (a, b)) in line.chunks_exact(2).zip(e.iter_mut().zip(o.iter_mut())) {
                *a = p[0];
                *b = p[1];
            }
            if s.w % 2 == 1 {
                (e[wp - 1], o[wp - 1]) = (line[s.w - 1], 0.0);
            }
        }
        return;
    }
    for r in 0..s.stride {
        let dst = &mut phases[r * s.h * wp..(r + 1) * s.h * wp];
        for (line, out) in plane.chunks_exact(s.w).zip(dst.chunks_exact_mut(wp)) {
            let mut cols = line[r.min(s.w)..].iter().step_by(s.stride);
            for o in out.iter_mut() {
                *o = cols.next().copied().unwrap_or(0.0);
            }
        }
    }
}

/// The inverse of [`split_phases`].
#[inline(always)]
fn merge_phases(phases: &[f32], plane: &mut [f32], s: &Conv) {
    let wp = phase_width(s);
    if s.stride == 2 {
        let (even, odd) = phases.split_at(s.h * wp);
        let rows = even.chunks_exact(wp).zip(odd.chunks_exact(wp));
        for (line, (e, o)) in plane.chunks_exact_mut(s.w).zip(rows) {
            for (p, (&a, &b)) in line.chunks_exact_mut(2).zip(e.iter().zip(o)) {
                (p[0], p[1]) = (a, b);
            }
            if s.w % 2 == 1 {
                line[s.w - 1] = e[wp - 1];
            }
        }
        return;
    }
    for r in 0..s.stride {
        let src = &phases[r * s.h * wp..(r + 1) * s.h * wp];
        for (line, from) in plane.chunks_exact_mut(s.w).zip(src.chunks_exact(wp)) {
            for (o, &v) in line[r.min(s.w)..].iter_mut().step_by(s.stride).zip(from) {
                *o = v;
            }
        }
    }
}

/// The input columns `lo..hi` of a tap read in a phase line.
#[inline]
fn tap_cols(line: &[f32], off: isize, lo: usize, hi: usize) -> &[f32] {
    &line[(lo as isize + off) as usize..(hi as isize + off) as usize]
}

/// One output plane from one input plane (`src` holds the input, split into phases when
/// strided, each of `h` rows of `line` values).
#[inline(always)]
fn depthwise_plane_fwd(src: &[f32], line: usize, wc: &[f32], out: &mut [f32], s: &Conv) {
    let plane_len = s.h * line;
    for (oy, row) in out.chunks_exact_mut(s.ow).enumerate() {
        row.fill(0.0);
        for ki in 0..s.kh {
            let Some(iy) = src_row(oy, ki, s) else {
                continue;
            };
            for kj in 0..s.kw {
                let (lo, hi) = tap_range(kj, s.stride, s.pad_left, s.w, s.ow);
                if lo == hi {
                    continue;
                }
                let (phase, off) = tap_phase(kj, s);
                let input = &src[phase * plane_len + iy * line..][..line];
                let wv = wc[ki * s.kw + kj];
                for (o, &v) in row[lo..hi].iter_mut().zip(tap_cols(input, off, lo, hi)) {
                    *o += wv * v;
                }
            }
        }
    }
}

/// Input row read by output row `oy` and kernel row `ki`, if inside the image.
#[inline]
fn src_row(oy: usize, ki: usize, s: &Conv) -> Option<usize> {
    src(oy, ki, s.stride, s.pad_top, s.h)
}

/// Runs `f(src, line)` on an input plane as the tap loops read it: the plane itself (rows of
/// `w`) at stride 1, else its phase planes (rows of `phase_width`).
#[inline(always)]
fn with_tap_source(plane: &[f32], s: &Conv, f: impl FnOnce(&[f32], usize)) {
    if s.stride == 1 {
        return f(plane, s.w);
    }
    let wp = phase_width(s);
    with_phases(
        s.stride * s.h * wp,
        #[inline(always)]
        |ph| {
            split_phases(plane, ph, s);
            f(ph, wp)
        },
    );
}

/// Depthwise forward, one (image, channel) plane per task.
fn depthwise_fwd(x: &[f32], w: &[f32], y: &mut [f32], s: &Conv) {
    let (hw, ohw, taps) = (s.h * s.w, s.oh * s.ow, s.kh * s.kw);
    y.par_chunks_mut(ohw).enumerate().for_each(|(p, out)| {
        wide(
            #[inline(always)]
            || {
                let c = p % s.c_out;
                let (plane, wc) = (&x[p * hw..(p + 1) * hw], &w[c * taps..(c + 1) * taps]);
                with_tap_source(
                    plane,
                    s,
                    #[inline(always)]
                    |src, line| depthwise_plane_fwd(src, line, wc, out, s),
                );
            },
        )
    });
}

/// Scatters one output-gradient plane `g` back through the windows into `dst` (zeroed by the
/// caller; split into phases when strided, like the forward's `src`).
#[inline(always)]
fn depthwise_plane_bwd_data(g: &[f32], wc: &[f32], dst: &mut [f32], line: usize, s: &Conv) {
    let plane_len = s.h * line;
    for (oy, grow) in g.chunks_exact(s.ow).enumerate() {
        for ki in 0..s.kh {
            let Some(iy) = src_row(oy, ki, s) else {
                continue;
            };
            for kj in 0..s.kw {
                let (lo, hi) = tap_range(kj, s.stride, s.pad_left, s.w, s.ow);
                if lo == hi {
                    continue;
                }
                let (phase, off) = tap_phase(kj, s);
                let input = &mut dst[phase * plane_len + iy * line..][..line];
                let wv = wc[ki * s.kw + kj];
                let at = (lo as isize + off) as usize;
                for (d, &v) in input[at..at + (hi - lo)].iter_mut().zip(&grow[lo..hi]) {
                    *d += wv * v;
                }
            }
        }
    }
}

/// Depthwise data gradient, one (image, channel) plane per task.
fn depthwise_bwd_data(dy: &[f32], w: &[f32], dx: &mut [f32], s: &Conv) {
    let (hw, ohw, taps) = (s.h * s.w, s.oh * s.ow, s.kh * s.kw);
    dx.par_chunks_mut(hw).enumerate().for_each(|(p, plane)| {
        wide(
            #[inline(always)]
            || {
                let c = p % s.c_in;
                let (g, wc) = (&dy[p * ohw..(p + 1) * ohw], &w[c * taps..(c + 1) * taps]);
                if s.stride == 1 {
                    plane.fill(0.0);
                    depthwise_plane_bwd_data(g, wc, plane, s.w, s);
                } else {
                    let wp = phase_width(s);
                    with_phases(s.stride * s.h * wp, |ph| {
                        ph.fill(0.0);
                        depthwise_plane_bwd_data(g, wc, ph, wp, s);
                        merge_phases(ph, plane, s);
                    });
                }
            },
        )
    });
}

/// Adds one plane's products into `sums` (`kh*kw x ow`): entry `(tap, ox)` collects, in f32,
/// the products of output column `ox` down the plane, so the inner loop is the forward's
/// vectorised multiply-add instead of a reduction; the caller sums the columns in f64.
#[inline(always)]
fn depthwise_plane_bwd_weight(src: &[f32], line: usize, g: &[f32], sums: &mut [f32], s: &Conv) {
    let plane_len = s.h * line;
    for (oy, grow) in g.chunks_exact(s.ow).enumerate() {
        for ki in 0..s.kh {
            let Some(iy) = src_row(oy, ki, s) else {
                continue;
            };
            for kj in 0..s.kw {
                let (lo, hi) = tap_range(kj, s.stride, s.pad_left, s.w, s.ow);
                if lo == hi {
                    continue;
                }
                let (phase, off) = tap_phase(kj, s);
                let input = &src[phase * plane_len + iy * line..][..line];
                let cols = &mut sums[(ki * s.kw + kj) * s.ow..][lo..hi];
                for (o, (&d, &v)) in cols
                    .iter_mut()
                    .zip(grow[lo..hi].iter().zip(tap_cols(input, off, lo, hi)))
                {
                    *o += d * v;
                }
            }
        }
    }
}

thread_local! {
    /// Per-tap column sums of the depthwise weight gradient, reused.
    static TAP_SUMS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Depthwise weight gradient, one channel per task, summed over the batch in f64 (each
/// image's per-column f32 sums are added in f64).
fn depthwise_bwd_weight(x: &[f32], dy: &[f32], dw: &mut [f32], s: &Conv) {
    let (hw, ohw, taps) = (s.h * s.w, s.oh * s.ow, s.kh * s.kw);
    dw.par_chunks_mut(taps).enumerate().for_each(|(c, wc)| {
        wide(
            #[inline(always)]
            || {
                TAP_SUMS.with(|sums| {
                    let mut sums = sums.borrow_mut();
                    if sums.len() < taps * s.ow {
                        sums.resize(taps * s.ow, 0.0);
                    }
                    let sums = &mut sums[..taps * s.ow];
                    let mut acc = vec![0.0f64; taps];
                    for i in 0..s.n {
                        let p = i * s.c_in + c;
                        let (plane, g) = (&x[p * hw..(p + 1) * hw], &dy[p * ohw..(p + 1) * ohw]);
                        sums.fill(0.0);
                        with_tap_source(
                            plane,
                            s,
                            #[inline(always)]
                            |src, line| depthwise_plane_bwd_weight(src, line, g, sums, s),
                        );
                        for (a, cols) in acc.iter_mut().zip(sums.chunks_exact(s.ow)) {
                            *a += cols.iter().map(|&v| v as f64).sum::<f64>();
                        }
                    }
                    for (o, a) in wc.iter_mut().zip(acc) {
                        *o += a as f32;
                    }
                })
            },
        )
    });
}

/// The definition, seven nested loops in f64: the oracle for the GEMM and depthwise paths.
pub fn conv2d_naive(x: &[f32], w: &[f32], y: &mut [f32], s: Conv) {
    let (cig, cog, _, _) = group_dims(&s);
    for i in 0..s.n {
        for co in 0..s.c_out {
            let g = co / cog;
            for oy in 0..s.oh {
                for ox in 0..s.ow {
                    let mut acc = 0.0f64;
                    for cl in 0..cig {
                        let ci = g * cig + cl;
                        for ki in 0..s.kh {
                            for kj in 0..s.kw {
                                let iy = (oy * s.stride + ki) as isize - s.pad_top as isize;
                                let ix = (ox * s.stride + kj) as isize - s.pad_left as isize;
                                if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                    continue;
                                }
                                let xv =
                                    x[((i * s.c_in + ci) * s.h + iy as usize) * s.w + ix as usize];
                                let wv = w[((co * cig + cl) * s.kh + ki) * s.kw + kj];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    y[((i * s.c_out + co) * s.oh + oy) * s.ow + ox] = acc as f32;
                }
            }
        }
    }
}

/// The input of `s` as f32 NCHW values.
fn input<'a>(x: &'a Buf, s: &Conv) -> Result<Cow<'a, [f32]>> {
    nchw(x, s.x_nhwc, (s.n, s.c_in, s.h * s.w))
}

/// The output's gradient of `s` as f32 NCHW values.
fn grad<'a>(dy: &'a Buf, s: &Conv) -> Result<Cow<'a, [f32]>> {
    nchw(dy, s.dy_nhwc, (s.n, s.c_out, s.oh * s.ow))
}

fn nchw(b: &Buf, nhwc: bool, dims: (usize, usize, usize)) -> Result<Cow<'_, [f32]>> {
    let v = widen(b)?;
    Ok(if nhwc {
        Cow::Owned(transpose_images(&v, dims, false))
    } else {
        v
    })
}

impl crate::backend::ConvOps for super::CpuBackend {
    /// A channels-last input or output gradient (`Conv::x_nhwc`, `dy_nhwc`) is read back into
    /// NCHW first: the same values.
    fn conv2d_fwd(&self, x: &Buf, w: &Buf, y: &mut Buf, s: Checked<Conv>) -> Result<()> {
        let (x, w) = (input(x, &s)?, widen(w)?);
        with_f32_out(y, false, |y| conv2d_fwd_f32(&x, &w, y, *s))
    }

    fn conv2d_bwd_data(&self, dy: &Buf, w: &Buf, dx: &mut Buf, s: Checked<Conv>) -> Result<()> {
        let (dy, w) = (grad(dy, &s)?, widen(w)?);
        with_f32_out(dx, false, |dx| conv2d_bwd_data_f32(&dy, &w, dx, *s))
    }

    fn conv2d_bwd_data_add(&self, dy: &Buf, w: &Buf, dx: &mut Buf, s: Checked<Conv>) -> Result<()> {
        let (dy, w) = (grad(dy, &s)?, widen(w)?);
        let mut grad = vec![0.0f32; dx.len()];
        conv2d_bwd_data_f32(&dy, &w, &mut grad, *s);
        // As if stored into a buffer of dx's dtype first, then added.
        let rounded = dx.dtype() == DType::BF16;
        with_f32_out(dx, true, |dx| {
            for (d, g) in dx.iter_mut().zip(&grad) {
                *d += if rounded {
                    bf16::from_f32(*g).to_f32()
                } else {
                    *g
                };
            }
        })
    }

    fn conv2d_bwd_weight(&self, x: &Buf, dy: &Buf, dw: &mut Buf, s: Checked<Conv>) -> Result<()> {
        let (x, dy) = (input(x, &s)?, grad(dy, &s)?);
        conv2d_bwd_weight_f32(&x, &dy, dw.host_mut()?, *s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Padding;
    use crate::rng::Rng;

    fn rel_err(a: &[f32], b: &[f32]) -> f64 {
        let num: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
            .sum();
        let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        (num / den.max(1e-30)).sqrt()
    }

    /// (n, c_in, h, w, c_out, k, stride, padding, groups): every path of the CPU conv.
    type Case = (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        Padding,
        usize,
    );

    /// Small maps run several images per GEMM (`images_per_gemm`): the two 16x16 cases split
    /// five images into a batch of four and one alone, pointwise and 3x3.
    const CASES: [Case; 10] = [
        (5, 3, 16, 16, 4, 1, 1, Padding::Sym(0), 1),
        (5, 3, 16, 16, 4, 3, 1, Padding::Sym(1), 1),
        (2, 3, 9, 7, 5, 3, 1, Padding::Sym(1), 1),
        (2, 3, 11, 10, 4, 7, 2, Padding::Sym(3), 1),
        (1, 6, 5, 5, 8, 1, 1, Padding::Sym(0), 1),
        (2, 6, 7, 6, 8, 1, 2, Padding::Sym(0), 1),
        (2, 4, 8, 9, 6, 3, 2, Padding::Same, 2),
        (2, 5, 9, 8, 5, 5, 2, Padding::Same, 5),
        (1, 4, 6, 6, 4, 3, 1, Padding::Same, 4),
        (2, 3, 10, 10, 2, 3, 2, Padding::Same, 1),
    ];

    #[test]
    fn gemm_and_depthwise_paths_match_the_definition() {
        let mut rng = Rng::new(7);
        for (n, ci, h, w, co, k, st, pad, g) in CASES {
            let s = Conv::new(n, ci, h, w, co, k, st, pad, g).unwrap();
            let (lx, lw, ly) = s.sizes();
            let x = rng.vec_f32(lx, -1.0, 1.0);
            let wt = rng.vec_f32(lw, -1.0, 1.0);
            let mut want = vec![f32::NAN; ly];
            let mut got = vec![f32::NAN; ly];
            conv2d_naive(&x, &wt, &mut want, s);
            conv2d_fwd_f32(&x, &wt, &mut got, s);
            assert!(
                rel_err(&got, &want) < 1e-5,
                "{s:?}: {}",
                rel_err(&got, &want)
            );
        }
    }

    /// The adjoint identities <dy, conv(x)> = <conv^T(dy), x> = <dW(x, dy), w> tie the two
    /// backward passes to the forward exactly (no finite differences needed).
    #[test]
    fn backward_passes_are_the_adjoints_of_the_forward() {
        let mut rng = Rng::new(8);
        for (n, ci, h, w, co, k, st, pad, g) in CASES {
            let s = Conv::new(n, ci, h, w, co, k, st, pad, g).unwrap();
            let (lx, lw, ly) = s.sizes();
            let x = rng.vec_f32(lx, -1.0, 1.0);
            let wt = rng.vec_f32(lw, -1.0, 1.0);
            let dy = rng.vec_f32(ly, -1.0, 1.0);
            let mut y = vec![0.0; ly];
            conv2d_naive(&x, &wt, &mut y, s);
            let dot = |a: &[f32], b: &[f32]| -> f64 {
                a.iter().zip(b).map(|(p, q)| *p as f64 * *q as f64).sum()
            };
            let lhs = dot(&dy, &y);
            let mut dx = vec![f32::NAN; lx];
            conv2d_bwd_data_f32(&dy, &wt, &mut dx, s);
            // dW accumulates: start from a known offset and subtract it.
            let mut dw = vec![0.5; lw];
            conv2d_bwd_weight_f32(&x, &dy, &mut dw, s);
            dw.iter_mut().for_each(|v| *v -= 0.5);
            let (via_dx, via_dw) = (dot(&dx, &x), dot(&dw, &wt));
            let tol = 1e-4 * lhs.abs().max(1.0);
            assert!((via_dx - lhs).abs() < tol, "{s:?}: dx {via_dx} vs {lhs}");
            assert!((via_dw - lhs).abs() < tol, "{s:?}: dw {via_dw} vs {lhs}");
        }
    }

    /// Depthwise shapes the fast path clips differently: stride 3, padding wider than the
    /// kernel (rows and columns that read only zeros), 1x1 maps under a 5x5 kernel, one-column
    /// images, odd widths.
    #[test]
    fn depthwise_edge_shapes_match_the_definition_and_stay_adjoint() {
        let mut rng = Rng::new(9);
        let cases: [(usize, usize, usize, usize, usize, Padding); 7] = [
            (2, 2, 1, 1, 5, Padding::Same),
            (2, 3, 13, 11, 3, Padding::Same),
            (1, 2, 2, 2, 3, Padding::Sym(4)),
            (2, 2, 9, 1, 3, Padding::Sym(1)),
            (1, 3, 7, 9, 5, Padding::Sym(2)),
            (1, 2, 15, 17, 7, Padding::Same),
            (2, 4, 6, 5, 1, Padding::Sym(0)),
        ];
        for (n, ch, h, w, k, pad) in cases {
            for st in [1, 2, 3] {
                let Ok(s) = Conv::new(n, ch, h, w, ch, k, st, pad, ch) else {
                    continue;
                };
                let (lx, lw, ly) = s.sizes();
                let x = rng.vec_f32(lx, -1.0, 1.0);
                let wt = rng.vec_f32(lw, -1.0, 1.0);
                let dy = rng.vec_f32(ly, -1.0, 1.0);
                let mut want = vec![f32::NAN; ly];
                let mut got = vec![f32::NAN; ly];
                conv2d_naive(&x, &wt, &mut want, s);
                conv2d_fwd_f32(&x, &wt, &mut got, s);
                assert!(rel_err(&got, &want) < 1e-5, "{s:?}");
                let dot = |a: &[f32], b: &[f32]| -> f64 {
                    a.iter().zip(b).map(|(p, q)| *p as f64 * *q as f64).sum()
                };
                let lhs = dot(&dy, &want);
                let mut dx = vec![f32::NAN; lx];
                conv2d_bwd_data_f32(&dy, &wt, &mut dx, s);
                let mut dw = vec![0.0; lw];
                conv2d_bwd_weight_f32(&x, &dy, &mut dw, s);
                let tol = 1e-4 * lhs.abs().max(1.0);
                assert!((dot(&dx, &x) - lhs).abs() < tol, "{s:?}: dx");
                assert!((dot(&dw, &wt) - lhs).abs() < tol, "{s:?}: dw");
            }
        }
    }

    #[test]
    fn tf_same_padding_puts_the_extra_row_at_the_bottom() {
        // 224 / 2 with k = 3: out 112, total pad 1 -> top 0 (bottom 1).
        let s = Conv::new(1, 3, 224, 224, 32, 3, 2, Padding::Same, 1).unwrap();
        assert_eq!((s.oh, s.ow, s.pad_top, s.pad_left), (112, 112, 0, 0));
        // 5x5 stride 2 on 28: out 14, total pad 3 -> top 1.
        let s = Conv::new(1, 8, 28, 27, 8, 5, 2, Padding::Same, 8).unwrap();
        assert_eq!((s.oh, s.ow, s.pad_top, s.pad_left), (14, 14, 1, 2));
        // stride 1: out = in, pad (k-1)/2 on top.
        let s = Conv::new(1, 8, 7, 7, 8, 5, 1, Padding::Same, 8).unwrap();
        assert_eq!((s.oh, s.ow, s.pad_top), (7, 7, 2));
        assert!(Conv::new(1, 3, 2, 2, 4, 7, 1, Padding::Sym(0), 1).is_err());
        assert!(Conv::new(1, 3, 8, 8, 4, 3, 1, Padding::Sym(1), 2).is_err());
    }

    #[test]
    fn wrong_buffer_sizes_are_errors_not_panics() {
        use crate::backend::{Act, BatchNorm, MaxPool};
        let be = crate::backend::cpu();
        let host = |v: Vec<f32>| be.upload(&v).unwrap();
        let s = Conv::new(1, 2, 4, 4, 3, 3, 1, Padding::Sym(1), 1).unwrap();
        let (x, w) = (host(vec![0.0; 32]), host(vec![0.0; 54]));
        let mut y = host(vec![0.0; 47]);
        let err = be.conv2d_fwd(&x, &w, &mut y, s).unwrap_err().to_string();
        assert!(
            err.contains("holds 47") && err.contains("expected 48"),
            "{err}"
        );
        let bn = BatchNorm::new(1, 3, 1, 1e-5, Act::Relu);
        let (g, b) = (host(vec![1.0; 3]), host(vec![0.0; 3]));
        let (mut rm, mut rv) = (host(vec![0.0; 3]), host(vec![1.0; 3]));
        let (mut sm, mut si) = (host(vec![0.0; 3]), host(vec![0.0; 3]));
        let (bx, mut by) = (host(vec![0.0; 3]), host(vec![0.0; 3]));
        // One value per channel: PyTorch refuses to train on it, and so do we.
        let err = be
            .batchnorm_fwd_train(
                &bx,
                &g,
                &b,
                (&mut rm, &mut rv),
                (&mut sm, &mut si),
                None,
                &mut by,
                None,
                bn,
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than 1 value"), "{err}");
        let mp = MaxPool::new(1, 1, 4, 4, 3, 2, 1).unwrap();
        let mut out = host(vec![0.0; 3]);
        assert!(be
            .maxpool_fwd(&host(vec![0.0; 16]), &mut out, None, mp)
            .is_err());
        assert!(be
            .add_fwd(&host(vec![0.0; 2]), &host(vec![0.0; 3]), &mut out)
            .is_err());
    }
}
