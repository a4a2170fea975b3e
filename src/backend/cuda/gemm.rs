//! GEMM: cuBLAS on a GPU (the baseline our own kernel will be measured against), the CPU twin
//! on the emulator until `kernels/gemm.cu` exists.

use super::device::Layer;
use super::CudaBackend;
use crate::backend::{cpu, Buf, Checked, GemmOps, MatMul};
use anyhow::{anyhow, Result};
use cudarc::cublas::sys::cublasOperation_t as Op;

impl GemmOps for CudaBackend {
    fn matmul(&self, a: &Buf, b: &Buf, c: &mut Buf, s: Checked<MatMul>) -> Result<()> {
        if s.m == 0 || s.n == 0 {
            return Ok(());
        }
        match self.layer() {
            Layer::Gpu(gpu) => sgemm_cublas(gpu, a, b, c, *s),
            Layer::Emu(_) => {
                let (a, b) = (a.dev()?.emu_bytes()?, b.dev()?.emu_bytes()?);
                let c = c.dev_mut()?.emu_bytes_mut()?;
                cpu::gemm::matmul_f32(
                    bytemuck::cast_slice(a),
                    bytemuck::cast_slice(b),
                    bytemuck::cast_slice_mut(c),
                    *s,
                );
                Ok(())
            }
        }
    }
}

/// Row-major `C = alpha op(A) op(B) + beta C` as the column-major `C^T = op(B)^T op(A)^T`.
fn sgemm_cublas(gpu: &super::driver::Gpu, a: &Buf, b: &Buf, c: &mut Buf, s: MatMul) -> Result<()> {
    let int = |v: usize| {
        i32::try_from(v).map_err(|_| anyhow!("sgemm: size {v} exceeds cuBLAS's int range"))
    };
    let op = |t: bool| if t { Op::CUBLAS_OP_T } else { Op::CUBLAS_OP_N };
    let (m, n, k) = (int(s.n)?, int(s.m)?, int(s.k)?);
    let lda = int(if s.trans_b { s.k } else { s.n }.max(1))?;
    let ldb = int(if s.trans_a { s.m } else { s.k }.max(1))?;
    let ldc = int(s.n)?;
    let (pa, pb, pc) = (a.dev()?.ptr(), b.dev()?.ptr(), c.dev_mut()?.ptr());
    gpu.bind()?;
    // SAFETY: the shape was checked: a, b, c hold m*k, k*n and m*n f32, which is what these
    // leading dimensions address; the handle's stream is the backend's stream.
    unsafe {
        cudarc::cublas::result::sgemm(
            *gpu.blas.handle(),
            op(s.trans_b),
            op(s.trans_a),
            m,
            n,
            k,
            &s.alpha,
            pb as *const f32,
            lda,
            pa as *const f32,
            ldb,
            &s.beta,
            pc as *mut f32,
            ldc,
        )
    }
    .map_err(|e| anyhow!("cublasSgemm m={} n={} k={}: {e}", s.m, s.n, s.k))
}
