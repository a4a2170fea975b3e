//! Layers with hand-written forward and backward on the [`Backend`](crate::backend::Backend),
//! the backbones built from them, and weight import / export.

use crate::backend::Backend;
use anyhow::Result;

/// A network that maps a batch of images to descriptors in eval mode (BatchNorm with running
/// statistics, no gradient). Extraction, evaluation and candidate pools use only this.
pub trait DescriptorNet {
    /// Length of one descriptor.
    fn out_dim(&self) -> usize;
    /// `x` is an `n x 3 x h x w` normalised image batch (NCHW, f32); returns `n x out_dim`.
    fn describe(
        &mut self,
        be: &dyn Backend,
        x: &[f32],
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<Vec<f32>>;
}
