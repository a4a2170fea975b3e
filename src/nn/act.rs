//! A standalone activation (ResNet's ReLU after the residual add) and the residual add.

use super::{empty, ensure_like};
use crate::backend::{Act, Backend, Buf};
use anyhow::{Context, Result};

/// `y = act(x)`; backward reads the mask from its own output.
pub struct Activation {
    pub act: Act,
    /// Output of the last forward.
    pub y: Buf,
    /// Input gradient of the last backward.
    pub dx: Buf,
}

impl Activation {
    /// An activation with unallocated buffers.
    pub fn new(act: Act) -> Self {
        Activation {
            act,
            y: empty(),
            dx: empty(),
        }
    }

    /// `y = act(x)`.
    pub fn forward(&mut self, be: &dyn Backend, x: &Buf) -> Result<()> {
        ensure_like(be, &mut self.y, x, x.len())?;
        be.act_fwd(x, &mut self.y, self.act)
            .with_context(|| format!("{:?} forward", self.act))
    }

    /// `dx = dy * act'(y)`.
    pub fn backward(&mut self, be: &dyn Backend, dy: &Buf) -> Result<()> {
        ensure_like(be, &mut self.dx, dy, dy.len())?;
        be.act_bwd(&self.y, dy, &mut self.dx, self.act)
            .with_context(|| format!("{:?} backward", self.act))
    }
}

/// `out = a + b` into a buffer sized on first use (residual sums, merged gradient paths).
pub fn add_into(be: &dyn Backend, a: &Buf, b: &Buf, out: &mut Buf) -> Result<()> {
    ensure_like(be, out, a, a.len())?;
    be.add_fwd(a, b, out).context("residual add")
}
