//! GEMM through cuBLAS (the baseline our own kernels will be measured against).

use super::CudaBackend;
use crate::backend::MatMul;
use anyhow::{anyhow, Result};
use cudarc::cublas::{sys::cublasOperation_t as Op, Gemm, GemmConfig};
use cudarc::driver::CudaSlice;

/// Row-major `C = alpha op(A) op(B) + beta C` as the column-major `C^T = op(B)^T op(A)^T`.
pub fn sgemm_cublas(
    be: &CudaBackend,
    a: &CudaSlice<f32>,
    b: &CudaSlice<f32>,
    c: &mut CudaSlice<f32>,
    s: MatMul,
) -> Result<()> {
    if s.m == 0 || s.n == 0 {
        return Ok(());
    }
    let int = |v: usize| {
        i32::try_from(v).map_err(|_| anyhow!("sgemm: size {v} exceeds cuBLAS's int range"))
    };
    let cfg = GemmConfig {
        transa: if s.trans_b {
            Op::CUBLAS_OP_T
        } else {
            Op::CUBLAS_OP_N
        },
        transb: if s.trans_a {
            Op::CUBLAS_OP_T
        } else {
            Op::CUBLAS_OP_N
        },
        m: int(s.n)?,
        n: int(s.m)?,
        k: int(s.k)?,
        alpha: s.alpha,
        lda: int(if s.trans_b { s.k } else { s.n }.max(1))?,
        ldb: int(if s.trans_a { s.m } else { s.k }.max(1))?,
        beta: s.beta,
        ldc: int(s.n)?,
    };
    // SAFETY: the backend checked that a, b, c hold m*k, k*n and m*n elements, which is what
    // these leading dimensions address; all three live on the backend's stream.
    unsafe { be.blas.gemm(cfg, b, a, c) }
        .map_err(|e| anyhow!("cublasSgemm m={} n={} k={}: {e}", s.m, s.n, s.k))
}
