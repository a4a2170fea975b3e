//! Elementwise ops on the CPU (residual add, standalone activations): the twins of
//! `kernels/eltwise.cu`.

use super::norm::{act_apply, act_grad};
use super::{widen, with_f32_out};
use crate::backend::{Act, Buf, Checked, DType, Eltwise, ImageToTensor};
use anyhow::Result;
use half::bf16;
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

/// `y = a + b`.
pub fn add_fwd_f32(a: &[f32], b: &[f32], y: &mut [f32]) {
    y.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(yc, (ac, bc))| {
            for ((o, &u), &v) in yc.iter_mut().zip(ac).zip(bc) {
                *o = u + v;
            }
        });
}

/// `y = act(x)`.
pub fn act_fwd_f32(x: &[f32], y: &mut [f32], act: Act) {
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(yc, xc)| {
            for (o, &v) in yc.iter_mut().zip(xc) {
                *o = act_apply(act, v);
            }
        });
}

/// `dx = dy * act'(y)`, the mask read from the forward output.
pub fn act_bwd_f32(y: &[f32], dy: &[f32], dx: &mut [f32], act: Act) {
    dx.par_chunks_mut(CHUNK)
        .zip(y.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(dc, (yc, gc))| {
            for ((o, &v), &g) in dc.iter_mut().zip(yc).zip(gc) {
                *o = g * act_grad(act, v);
            }
        });
}

/// `out[i][c][p] = (rgb[i][p][c] / 255 - mean[c]) / std[c]`: torchvision's ToTensor +
/// Normalize, rounded as it rounds in f32.
pub fn image_to_tensor_u8(rgb: &[u8], out: &mut [f32], s: ImageToTensor) {
    let hw = s.h * s.w;
    out.par_chunks_mut(hw).enumerate().for_each(|(plane, o)| {
        let (img, c) = (plane / 3, plane % 3);
        let px = &rgb[img * hw * 3..(img + 1) * hw * 3];
        for (p, v) in o.iter_mut().enumerate() {
            *v = (px[p * 3 + c] as f32 / 255.0 - s.mean[c]) / s.std[c];
        }
    });
}

/// f32 to bf16, rounded to nearest even (`half` keeps NaN a NaN, as the kernel does).
pub fn cast_f32(x: &[f32], y: &mut [bf16]) {
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(yc, xc)| {
            for (o, &v) in yc.iter_mut().zip(xc) {
                *o = bf16::from_f32(v);
            }
        });
}

/// bf16 to f32 (exact).
pub fn cast_bf16(x: &[bf16], y: &mut [f32]) {
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(yc, xc)| {
            for (o, &v) in yc.iter_mut().zip(xc) {
                *o = v.to_f32();
            }
        });
}

impl crate::backend::EltwiseOps for super::CpuBackend {
    fn add_fwd(&self, a: &Buf, b: &Buf, y: &mut Buf, _s: Checked<Eltwise>) -> Result<()> {
        let (a, b) = (widen(a)?, widen(b)?);
        with_f32_out(y, false, |y| add_fwd_f32(&a, &b, y))
    }

    fn act_fwd(&self, x: &Buf, y: &mut Buf, s: Checked<Eltwise>) -> Result<()> {
        let x = widen(x)?;
        with_f32_out(y, false, |y| act_fwd_f32(&x, y, s.act))
    }

    fn act_bwd(&self, y: &Buf, dy: &Buf, dx: &mut Buf, s: Checked<Eltwise>) -> Result<()> {
        let (y, dy) = (widen(y)?, widen(dy)?);
        with_f32_out(dx, false, |dx| act_bwd_f32(&y, &dy, dx, s.act))
    }

    fn image_to_tensor(&self, rgb: &Buf, out: &mut Buf, s: Checked<ImageToTensor>) -> Result<()> {
        let rgb = rgb.host()?;
        with_f32_out(out, false, |o| image_to_tensor_u8(rgb, o, *s))
    }

    fn cast(&self, x: &Buf, y: &mut Buf, _s: Checked<Eltwise>) -> Result<()> {
        match x.dtype() {
            DType::F32 => cast_f32(x.host()?, y.host_mut()?),
            _ => cast_bf16(x.host()?, y.host_mut()?),
        }
        Ok(())
    }
}
