//! Fully connected layer `y = x W^T (+ b)`, weight `out x in` (PyTorch layout), on the GEMM.

use super::{empty, ensure_len, Param, ParamKind};
use crate::backend::{Backend, Buf, MatMul};
use crate::rng::Rng;
use anyhow::{anyhow, Context, Result};

/// A linear layer over rows: `x` is `n x in`, `y` is `n x out`.
pub struct Linear {
    pub weight: Param,
    pub bias: Option<Param>,
    pub d_in: usize,
    pub d_out: usize,
    n: Option<usize>,
    /// A column of ones: the bias is added and reduced through the GEMM (`k = 1` / `m = 1`).
    ones: Buf,
    /// Output of the last forward.
    pub y: Buf,
    /// Input gradient of the last backward.
    pub dx: Buf,
}

impl Linear {
    /// PyTorch's default init: weight and bias U(-1/sqrt(in), 1/sqrt(in)) (kaiming-uniform
    /// with a = sqrt(5) reduces to this bound).
    pub fn new(
        be: &dyn Backend,
        rng: &mut Rng,
        name: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Self> {
        let bound = 1.0 / (d_in as f32).sqrt();
        let w = rng.vec_f32(d_out * d_in, -bound, bound);
        let weight = Param::new(
            be,
            format!("{name}.weight"),
            &[d_out, d_in],
            ParamKind::Weight,
            &w,
        )?;
        let bias = if bias {
            let b = rng.vec_f32(d_out, -bound, bound);
            Some(Param::new(
                be,
                format!("{name}.bias"),
                &[d_out],
                ParamKind::Bias,
                &b,
            )?)
        } else {
            None
        };
        Ok(Linear {
            weight,
            bias,
            d_in,
            d_out,
            n: None,
            ones: empty(),
            y: empty(),
            dx: empty(),
        })
    }

    /// `y = x W^T + b` for `n` rows.
    pub fn forward(&mut self, be: &dyn Backend, x: &Buf, n: usize) -> Result<()> {
        let name = &self.weight.name;
        ensure_len(be, &mut self.y, n * self.d_out)?;
        be.matmul(
            x,
            &self.weight.value,
            &mut self.y,
            MatMul::new(n, self.d_out, self.d_in).tb(),
        )
        .with_context(|| format!("forward of {name}"))?;
        if let Some(b) = &self.bias {
            if self.ones.len() != n {
                self.ones = be.upload(&vec![1.0; n])?;
            }
            be.matmul(
                &self.ones,
                &b.value,
                &mut self.y,
                MatMul::new(n, self.d_out, 1).accumulate(),
            )
            .with_context(|| format!("bias of {name}"))?;
        }
        self.n = Some(n);
        Ok(())
    }

    /// `dx = dy W`, `dW += dy^T x`, `db += sum_rows dy`.
    pub fn backward(&mut self, be: &dyn Backend, x: &Buf, dy: &Buf) -> Result<()> {
        let name = self.weight.name.clone();
        let n = self
            .n
            .ok_or_else(|| anyhow!("backward of {name} before its forward"))?;
        ensure_len(be, &mut self.dx, n * self.d_in)?;
        be.matmul(
            dy,
            &self.weight.value,
            &mut self.dx,
            MatMul::new(n, self.d_in, self.d_out),
        )
        .with_context(|| format!("input gradient of {name}"))?;
        be.matmul(
            dy,
            x,
            self.weight.grad_mut()?,
            MatMul::new(self.d_out, self.d_in, n).ta().accumulate(),
        )
        .with_context(|| format!("weight gradient of {name}"))?;
        if let Some(b) = self.bias.as_mut() {
            be.matmul(
                &self.ones,
                dy,
                b.grad_mut()?,
                MatMul::new(1, self.d_out, n).accumulate(),
            )
            .with_context(|| format!("bias gradient of {name}"))?;
        }
        Ok(())
    }

    /// weight (and bias) in state_dict order.
    pub fn params(&self) -> Vec<&Param> {
        let mut v = vec![&self.weight];
        v.extend(self.bias.as_ref());
        v
    }

    /// Mutable twin of [`Linear::params`].
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = vec![&mut self.weight];
        v.extend(self.bias.as_mut());
        v
    }
}
