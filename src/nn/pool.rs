//! Pooling layers: max pool (ResNet stem), GeM (the retrieval descriptor, p = 3 fixed, spec
//! G15) and global average pooling (the ImageNet classifiers).

use super::maps::Out;
use super::{empty, ensure_like};
use crate::backend::{Backend, Buf, DType, Gem, MaxPool};
use anyhow::{anyhow, Context, Result};

/// `k x k` max pooling with stride and symmetric padding.
pub struct MaxPool2d {
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    shape: Option<MaxPool>,
    /// Output of the last forward.
    pub y: Buf,
    /// Where each output's maximum was in its window, kept by [`MaxPool2d::forward`] for the
    /// backward (a byte an output; the backward reads neither x nor y).
    argmax: Buf,
    /// Input gradient of the last backward.
    pub dx: Buf,
}

impl MaxPool2d {
    /// A max pool with unallocated buffers.
    pub fn new(k: usize, stride: usize, pad: usize) -> Self {
        MaxPool2d {
            k,
            stride,
            pad,
            shape: None,
            y: empty(),
            argmax: Buf::empty(DType::U8),
            dx: empty(),
        }
    }

    /// Pools an `n x c x h x w` map, keeping each window's argmax for the backward; returns
    /// `(oh, ow)`.
    pub fn forward(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        (n, c, h, w): (usize, usize, usize, usize),
    ) -> Result<(usize, usize)> {
        let s = MaxPool::new(n, c, h, w, self.k, self.stride, self.pad)?;
        be.ensure(&mut self.y, x.dtype(), n * c * s.oh * s.ow)?;
        be.maxpool_fwd(x, &mut self.y, Some(&mut self.argmax), s)
            .context("max pool forward")?;
        self.shape = Some(s);
        Ok((s.oh, s.ow))
    }

    /// [`MaxPool2d::forward`] into `y` instead of [`MaxPool2d::y`], for inference: no argmax
    /// kept, no backward after it.
    pub(crate) fn forward_into(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        (n, c, h, w): (usize, usize, usize, usize),
        y: &mut dyn Out,
    ) -> Result<(usize, usize)> {
        let s = MaxPool::new(n, c, h, w, self.k, self.stride, self.pad)?;
        let y = y.sized(be, x.dtype(), n * c * s.oh * s.ow)?;
        be.maxpool_fwd(x, y, None, s).context("max pool forward")?;
        self.shape = None;
        Ok((s.oh, s.ow))
    }

    /// `dx` from `dy` and the last [`MaxPool2d::forward`]'s argmax.
    pub fn backward(&mut self, be: &dyn Backend, dy: &Buf) -> Result<()> {
        let s = self
            .shape
            .ok_or_else(|| anyhow!("max pool backward without a training forward before it"))?;
        ensure_like(be, &mut self.dx, dy, s.n * s.c * s.h * s.w)?;
        be.maxpool_bwd(&self.argmax, dy, &mut self.dx, s)
            .context("max pool backward")
    }
}

/// Global GeM pooling `n x c x h x w -> n x c`; with p = 1 and no clamp it is average pooling.
pub struct GemPool {
    pub p: f32,
    pub eps: f32,
    shape: Option<Gem>,
    /// Output of the last forward, `n x c`.
    pub y: Buf,
    /// Input gradient of the last backward.
    pub dx: Buf,
}

impl GemPool {
    /// InsCLR's GeM: p = 3 (fixed, not learnable), eps = 1e-6.
    pub fn gem() -> Self {
        let g = Gem::new(1, 1, 1, 1);
        Self::with(g.p, g.eps)
    }

    /// Global average pooling as GeM with p = 1 and clamp 0: exact for the non-negative maps
    /// (after ReLU / ReLU6) the classifiers pool.
    pub fn avg() -> Self {
        Self::with(1.0, 0.0)
    }

    fn with(p: f32, eps: f32) -> Self {
        GemPool {
            p,
            eps,
            shape: None,
            y: empty(),
            dx: empty(),
        }
    }

    /// Pools an `n x c x h x w` map into `n x c`.
    pub fn forward(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        (n, c, h, w): (usize, usize, usize, usize),
    ) -> Result<()> {
        let s = Gem {
            p: self.p,
            eps: self.eps,
            ..Gem::new(n, c, h, w)
        };
        ensure_like(be, &mut self.y, x, n * c)?;
        be.gem_fwd(x, &mut self.y, s).context("GeM forward")?;
        self.shape = Some(s);
        Ok(())
    }

    /// `dx` from the forward's input and `dy` (`n x c`).
    pub fn backward(&mut self, be: &dyn Backend, x: &Buf, dy: &Buf) -> Result<()> {
        let s = self
            .shape
            .ok_or_else(|| anyhow!("GeM backward before its forward"))?;
        ensure_like(be, &mut self.dx, dy, s.rows * s.hw)?;
        be.gem_bwd(x, &self.y, dy, &mut self.dx, s)
            .context("GeM backward")
    }
}
