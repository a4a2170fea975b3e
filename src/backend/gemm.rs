//! Matrix products: `C = alpha op(A) op(B) + beta C`, row-major (similarities, linear layers,
//! their gradients), f32 or bf16 (f32 accumulation). Kernels in `kernels/gemm.cu`.

use super::{not_implemented, same_dtype, Backend, Buf, Checked, Op};
use anyhow::{bail, Result};

/// Shape of a row-major matrix product `C[m,n] = alpha * op(A) op(B) + beta * C`, where `op(A)`
/// is `m x k` (A stored `k x m` when `trans_a`) and `op(B)` is `k x n` (B stored `n x k` when
/// `trans_b`). All three matrices are dense and row-major.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MatMul {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    pub beta: f32,
}

impl MatMul {
    /// `C = A B` with no transposes.
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        MatMul {
            m,
            n,
            k,
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            beta: 0.0,
        }
    }

    /// Same product with `A` read transposed.
    pub fn ta(self) -> Self {
        MatMul {
            trans_a: true,
            ..self
        }
    }

    /// Same product with `B` read transposed.
    pub fn tb(self) -> Self {
        MatMul {
            trans_b: true,
            ..self
        }
    }

    /// Same product accumulating into C (`beta = 1`), as parameter gradients do.
    pub fn accumulate(self) -> Self {
        MatMul { beta: 1.0, ..self }
    }

    pub(crate) fn check(self, a: &Buf, b: &Buf, c: &Buf) -> Result<Checked<Self>> {
        let (m, n, k) = (self.m, self.n, self.k);
        if a.len() != m * k || b.len() != k * n || c.len() != m * n {
            bail!(
                "matmul m={m} n={n} k={k}: buffers hold A={}, B={}, C={} elements; expected {}, {}, {}",
                a.len(),
                b.len(),
                c.len(),
                m * k,
                k * n,
                m * n
            );
        }
        same_dtype(&self, &[a, b, c])?;
        Ok(Checked(self))
    }
}

/// What a backend implements for this family.
pub trait GemmOps {
    /// See [`MatMul`].
    fn matmul(&self, _a: &Buf, _b: &Buf, _c: &mut Buf, _s: Checked<MatMul>) -> Result<()> {
        Err(not_implemented(Op::Matmul))
    }
}

impl dyn Backend + '_ {
    /// `C = alpha * op(A) op(B) + beta * C`, row-major (see [`MatMul`]).
    pub fn matmul(&self, a: &Buf, b: &Buf, c: &mut Buf, s: MatMul) -> Result<()> {
        let s = s.check(a, b, c)?;
        self.require(Op::Matmul, a.dtype())?;
        self.gemm_ops().matmul(a, b, c, s)
    }
}
