//! Layers with hand-written forward and backward on the [`Backend`](crate::backend::Backend),
//! the backbones built from them, and weight import / export.

pub mod weights;

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

use crate::backend::Buf;

/// What a tensor of a model is, which decides whether the optimiser updates it and with what
/// weight decay (the original: biases and BN betas get none; running statistics are buffers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// Conv / linear weight: trained, weight decay.
    Weight,
    /// Conv / linear bias: trained, no weight decay.
    Bias,
    /// BatchNorm gamma (`.weight`): trained, weight decay (as the original).
    BnWeight,
    /// BatchNorm beta (`.bias`): trained, no weight decay.
    BnBias,
    /// BatchNorm running mean / variance: a buffer, not trained.
    Running,
}

impl ParamKind {
    /// True for tensors the optimiser updates.
    pub fn trainable(self) -> bool {
        self != ParamKind::Running
    }
    /// True for tensors that get weight decay.
    pub fn decays(self) -> bool {
        matches!(self, ParamKind::Weight | ParamKind::BnWeight)
    }
}

/// A parameter or buffer of a model, under its torchvision name (e.g. `layer1.0.conv1.weight`),
/// with its gradient when it is trainable.
pub struct Param {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
    pub value: Buf<f32>,
    pub grad: Option<Buf<f32>>,
}

impl Param {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Anything with named parameters: weight I/O, optimisers and summaries go through this.
pub trait Module {
    /// Every parameter and buffer, in a fixed order.
    fn params(&self) -> Vec<&Param>;
    /// The same, mutable (loading weights, optimiser steps, zeroing gradients).
    fn params_mut(&mut self) -> Vec<&mut Param>;
}
