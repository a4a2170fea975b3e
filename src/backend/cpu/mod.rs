//! The CPU backend: plain Rust, one file per kernel family with the same names as
//! `kernels/*.cu`. It is the oracle every CUDA kernel is tested against, and a real backend
//! for small runs (rayon over rows, matrixmultiply for GEMM). Every op runs on f32; the ops in
//! [`BF16_OPS`] also on bf16 buffers, computing in f32 and rounding what they store, as the
//! kernels do.

pub mod bank;
pub mod contrastive;
pub mod conv;
pub mod eltwise;
pub mod gemm;
pub mod mining;
pub mod norm;
pub mod optim;
pub mod pool;
pub mod select;
pub mod selftest;
pub mod verify;

use super::{Backend, Buf, DType, Device, Op};
use anyhow::{bail, Result};
use half::bf16;
use rayon::prelude::*;
use std::borrow::Cow;

/// Ops whose twin also takes bf16 buffers.
pub const BF16_OPS: &[Op] = &[
    Op::Matmul,
    Op::CopyRows,
    Op::GemFwd,
    Op::GemBwd,
    Op::MaxpoolFwd,
    Op::MaxpoolBwd,
    Op::L2normFwd,
    Op::L2normBwd,
    Op::Knn,
    Op::AddFwd,
    Op::ActFwd,
    Op::ActBwd,
    Op::Conv2dFwd,
    Op::Conv2dBwdData,
    Op::Conv2dBwdWeight,
    Op::BatchnormFwdTrain,
    Op::BatchnormFwdEval,
    Op::BatchnormBwd,
    Op::Cast,
];

/// Runs `f` inside a function compiled with AVX2 when the CPU has it, so the loops inlined
/// into it vectorise eight floats wide instead of the baseline's four (the crate is built for
/// any x86-64). The same operations in the same order: results are identical either way.
/// Callers mark the closure `#[inline(always)]`: only inlined does it compile with AVX2.
#[inline(always)]
pub fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        fn run<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { run(f) };
        }
    }
    f()
}

/// A buffer's elements as f32: borrowed for f32, widened from bf16.
fn widen(b: &Buf) -> Result<Cow<'_, [f32]>> {
    Ok(match b.dtype() {
        DType::BF16 => Cow::Owned(b.host::<bf16>()?.iter().map(|v| v.to_f32()).collect()),
        _ => Cow::Borrowed(b.host::<f32>()?),
    })
}

/// Runs `f` on an f32 view of `out`: in place for f32; for bf16 through a temporary (holding
/// the current values widened when `keep`, else zeros) rounded back to nearest even.
fn with_f32_out(out: &mut Buf, keep: bool, f: impl FnOnce(&mut [f32])) -> Result<()> {
    if out.dtype() != DType::BF16 {
        f(out.host_mut::<f32>()?);
        return Ok(());
    }
    let mut tmp = if keep {
        widen(out)?.into_owned()
    } else {
        vec![0.0f32; out.len()]
    };
    f(&mut tmp);
    for (o, v) in out.host_mut::<bf16>()?.iter_mut().zip(&tmp) {
        *o = bf16::from_f32(*v);
    }
    Ok(())
}

/// `n` images of `c x hw` values (NCHW) as `hw x c` each (NHWC), or from NHWC back to NCHW when
/// `!to_nhwc`: the layout a channels-last BatchNorm output and convolution input use
/// (`BatchNorm::y_nhwc`, `Conv::x_nhwc`).
fn transpose_images(src: &[f32], (n, c, hw): (usize, usize, usize), to_nhwc: bool) -> Vec<f32> {
    let mut dst = vec![0.0f32; src.len()];
    for i in 0..n {
        for ch in 0..c {
            for p in 0..hw {
                let (nchw, nhwc) = ((i * c + ch) * hw + p, (i * hw + p) * c + ch);
                if to_nhwc {
                    dst[nhwc] = src[nchw];
                } else {
                    dst[nchw] = src[nhwc];
                }
            }
        }
    }
    dst
}

/// The CPU backend; stateless.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl CpuBackend {
    /// A CPU backend using all cores rayon sees.
    pub fn new() -> Self {
        CpuBackend
    }
}

impl Backend for CpuBackend {
    fn device(&self) -> Device {
        Device::Cpu
    }

    fn describe(&self) -> String {
        format!("CPU, {} threads", rayon::current_num_threads())
    }

    fn supports(&self, op: Op, dtype: DType) -> bool {
        match dtype {
            DType::F32 => !matches!(op, Op::ImageToTensor | Op::Verify),
            DType::BF16 => BF16_OPS.contains(&op),
            DType::U8 => op == Op::ImageToTensor,
            DType::I8 => op == Op::Verify,
            _ => false,
        }
    }

    fn zeros(&self, dtype: DType, len: usize) -> Result<Buf> {
        Buf::host_zeroed(dtype, len)
    }

    fn write_bytes(&self, src: &[u8], dst: &mut Buf) -> Result<()> {
        let Some(d) = dst.host_bytes_mut() else {
            bail!("the CPU backend was given a device buffer; download it first")
        };
        if d.len() != src.len() {
            bail!("copy of {} bytes into a buffer of {}", src.len(), d.len());
        }
        d.copy_from_slice(src);
        Ok(())
    }

    fn read_bytes(&self, src: &Buf, dst: &mut [u8]) -> Result<()> {
        let Some(s) = src.host_bytes() else {
            bail!("the CPU backend was given a device buffer")
        };
        if s.len() != dst.len() {
            bail!("copy of a {}-byte buffer into {} bytes", s.len(), dst.len());
        }
        dst.copy_from_slice(s);
        Ok(())
    }

    fn zero(&self, buf: &mut Buf) -> Result<()> {
        let Some(d) = buf.host_bytes_mut() else {
            bail!("the CPU backend was given a device buffer")
        };
        // Gradients are zeroed each step (ResNet-50's are 100 MB): large buffers on every
        // core, small ones here (a pool job costs more than zeroing a few pages).
        const CHUNK: usize = 1 << 20;
        if d.len() > CHUNK {
            d.par_chunks_mut(CHUNK).for_each(|c| c.fill(0));
        } else {
            d.fill(0);
        }
        Ok(())
    }

    super::family_accessors!();

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}
