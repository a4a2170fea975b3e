//! Row-major f32 matrix product on the CPU through `matrixmultiply` (packed, SIMD,
//! multi-threaded), reading transposes through strides instead of copying.

use super::{widen, with_f32_out};
use crate::backend::{Buf, Checked, MatMul};
use anyhow::Result;

/// `C = alpha * op(A) op(B) + beta * C`; sizes are checked by the caller.
pub fn matmul_f32(a: &[f32], b: &[f32], c: &mut [f32], s: MatMul) {
    let (m, n, k) = (s.m, s.n, s.k);
    if m == 0 || n == 0 {
        return;
    }
    // Strides (row, column) of op(A) and op(B) as stored.
    let (rsa, csa) = if s.trans_a {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    let (rsb, csb) = if s.trans_b {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    if k == 0 {
        // matrixmultiply leaves C untouched for k = 0; the product is an empty sum, and beta = 0
        // overwrites C without reading it (it may hold NaN).
        c.iter_mut()
            .for_each(|v| *v = if s.beta == 0.0 { 0.0 } else { *v * s.beta });
        return;
    }
    // SAFETY: the caller checked that a, b, c hold m*k, k*n and m*n elements; the strides
    // above address exactly those elements.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            s.alpha,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            s.beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// The textbook triple loop, f64 accumulation: the oracle for every GEMM, CPU or GPU.
pub fn matmul_naive(a: &[f32], b: &[f32], c: &mut [f32], s: MatMul) {
    for i in 0..s.m {
        for j in 0..s.n {
            let mut acc = 0.0f64;
            for p in 0..s.k {
                let av = if s.trans_a {
                    a[p * s.m + i]
                } else {
                    a[i * s.k + p]
                };
                let bv = if s.trans_b {
                    b[j * s.k + p]
                } else {
                    b[p * s.n + j]
                };
                acc += av as f64 * bv as f64;
            }
            let prev = if s.beta == 0.0 {
                0.0
            } else {
                s.beta as f64 * c[i * s.n + j] as f64
            };
            c[i * s.n + j] = (s.alpha as f64 * acc + prev) as f32;
        }
    }
}

impl crate::backend::GemmOps for super::CpuBackend {
    fn matmul(&self, a: &Buf, b: &Buf, c: &mut Buf, s: Checked<MatMul>) -> Result<()> {
        let (a, b) = (widen(a)?, widen(b)?);
        // beta != 0 reads C: a bf16 C is widened first.
        with_f32_out(c, s.beta != 0.0, |c| matmul_f32(&a, &b, c, *s))
    }
}
