//! The optimiser over a parameter arena (spec 4.7, G14): Adam with coupled weight decay, SGD
//! with momentum, and the global gradient norm and scale of `clip_grad_norm_`. Kernels in
//! `kernels/optim.cu`; one launch covers every tensor because values, gradients and moments
//! are each one buffer, weights (and BN gammas) in `[0, split)`, biases (and BN betas) after.

use super::{check_len, not_implemented, Backend, Buf, Checked, DType, Op};
use anyhow::{bail, Result};

/// Adam's first-moment decay (torch default).
pub const BETA1: f64 = 0.9;
/// Adam's second-moment decay (torch default).
pub const BETA2: f64 = 0.999;
/// Adam's denominator epsilon (torch default).
pub const EPS: f64 = 1e-8;

/// One update over `len` elements: learning rate and weight decay for the weights (`[0,
/// split)`, index 0) and the biases (index 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimStep {
    pub len: usize,
    pub split: usize,
    pub lr: [f64; 2],
    pub wd: [f64; 2],
}

impl OptimStep {
    fn check(self, bufs: &[&Buf]) -> Result<Checked<Self>> {
        if self.split > self.len {
            bail!("{self:?}: split past the end");
        }
        check_len(&self, self.len, bufs)?;
        if let Some(b) = bufs.iter().find(|b| b.dtype() != DType::F32) {
            bail!(
                "{self:?}: optimiser buffers are f32 (master weights), got {}",
                b.dtype()
            );
        }
        Ok(Checked(self))
    }

    /// The group (0 weights, 1 biases) of element `i`.
    pub fn group(&self, i: usize) -> usize {
        usize::from(i >= self.split)
    }
}

/// The f32 scalars of Adam's step `t` (1-based) as torch 1.x forms them: bias corrections in
/// f64, then rounded; `1 - beta` formed in f64 ((1 - 0.999f32) would be off by 1.3e-5).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamScalars {
    /// `lr / (1 - beta1^t)` per group.
    pub step: [f32; 2],
    pub wd: [f32; 2],
    pub beta1: f32,
    pub beta2: f32,
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
    /// `sqrt(1 - beta2^t)`.
    pub sqrt_bc2: f32,
    pub eps: f32,
}

impl AdamScalars {
    pub fn new(s: &OptimStep, t: u64) -> AdamScalars {
        let bc1 = 1.0 - BETA1.powi(t as i32);
        let bc2 = 1.0 - BETA2.powi(t as i32);
        AdamScalars {
            step: s.lr.map(|lr| (lr / bc1) as f32),
            wd: s.wd.map(|w| w as f32),
            beta1: BETA1 as f32,
            beta2: BETA2 as f32,
            one_minus_beta1: (1.0 - BETA1) as f32,
            one_minus_beta2: (1.0 - BETA2) as f32,
            sqrt_bc2: bc2.sqrt() as f32,
            eps: EPS as f32,
        }
    }
}

/// What a backend implements for this family.
pub trait OptimOps {
    /// One Adam step in place on `p`, `m`, `v`.
    #[allow(clippy::too_many_arguments)]
    fn adam(
        &self,
        _p: &mut Buf,
        _g: &Buf,
        _m: &mut Buf,
        _v: &mut Buf,
        _s: Checked<OptimStep>,
        _k: AdamScalars,
    ) -> Result<()> {
        Err(not_implemented(Op::Adam))
    }
    /// One SGD-with-momentum step in place on `p` and the momentum buffer.
    fn sgd(
        &self,
        _p: &mut Buf,
        _g: &Buf,
        _buf: &mut Buf,
        _s: Checked<OptimStep>,
        _momentum: f32,
    ) -> Result<()> {
        Err(not_implemented(Op::Sgd))
    }
    /// `sum(x^2)` in f64.
    fn sum_squares(&self, _x: &Buf) -> Result<f64> {
        Err(not_implemented(Op::SumSquares))
    }
    /// `x *= s`.
    fn scale(&self, _x: &mut Buf, _s: f32) -> Result<()> {
        Err(not_implemented(Op::Scale))
    }
}

impl dyn Backend + '_ {
    /// Adam's step `t` (1-based) with coupled weight decay over an arena.
    pub fn adam(
        &self,
        p: &mut Buf,
        g: &Buf,
        m: &mut Buf,
        v: &mut Buf,
        s: OptimStep,
        t: u64,
    ) -> Result<()> {
        let s = s.check(&[p, g, m, v])?;
        if t == 0 {
            bail!("Adam steps count from 1");
        }
        self.require(Op::Adam, DType::F32)?;
        let k = AdamScalars::new(&s, t);
        self.optim_ops().adam(p, g, m, v, s, k)
    }

    /// SGD with momentum over an arena (the momentum buffer starts at zero, which gives torch's
    /// first step `buf = d`).
    pub fn sgd(
        &self,
        p: &mut Buf,
        g: &Buf,
        momentum_buf: &mut Buf,
        s: OptimStep,
        momentum: f64,
    ) -> Result<()> {
        let s = s.check(&[p, g, momentum_buf])?;
        self.require(Op::Sgd, DType::F32)?;
        self.optim_ops().sgd(p, g, momentum_buf, s, momentum as f32)
    }

    /// `sum(x^2)` of an f32 buffer, accumulated in f64.
    pub fn sum_squares(&self, x: &Buf) -> Result<f64> {
        if x.dtype() != DType::F32 {
            bail!("sum_squares of a {} buffer (f32 only)", x.dtype());
        }
        self.require(Op::SumSquares, DType::F32)?;
        self.optim_ops().sum_squares(x)
    }

    /// `x *= s` on an f32 buffer.
    pub fn scale(&self, x: &mut Buf, s: f32) -> Result<()> {
        if x.dtype() != DType::F32 {
            bail!("scale of a {} buffer (f32 only)", x.dtype());
        }
        self.require(Op::Scale, DType::F32)?;
        self.optim_ops().scale(x, s)
    }
}
