//! Layers with hand-written forward and backward on the [`Backend`],
//! the backbones built from them, and weight import / export.
//!
//! Conventions (llm.c style): a layer owns its output `y` and its input gradient `dx`, sized on
//! the first call for a batch shape and reused after; the caller passes the layer's input again
//! to `backward` (it is the previous layer's `y`, still alive), so nothing is copied. `backward`
//! writes `dx` with `=` and accumulates parameter gradients with `+=`. An eval-mode forward,
//! which no backward follows, writes into a few reused maps instead (`maps.rs`).

pub mod act;
pub mod backbone;
pub mod batchnorm;
pub mod config;
pub mod conv;
pub mod efficientnet;
pub mod head;
pub mod head_init;
pub mod linear;
pub(crate) mod maps;
pub mod meta;
pub mod model;
pub mod net;
pub mod pool;
pub mod resnet;
pub mod trained;

pub use backbone::Backbone;
pub use net::{Arch, Images, RetrievalNet};

pub mod weights;

use crate::backend::DType;
use crate::backend::{Backend, Op};
use anyhow::{anyhow, Result};

/// The backend ops a backbone with GeM and a head runs in eval mode (extraction, evaluation).
/// Training runs every op of the seam ([`Op::ALL`]).
pub const EVAL_OPS: &[Op] = &[
    Op::Conv2dFwd,
    Op::BatchnormFwdEval,
    Op::MaxpoolFwd,
    Op::AddFwd,
    Op::ActFwd,
    Op::GemFwd,
    Op::L2normFwd,
    Op::Matmul,
];

/// The ops a network in bf16 (`RetrievalNet::set_precision`) runs on bf16 buffers: the
/// backbone's and GeM's, forward and backward, the casts, and the memory banks' row copies.
pub const LOW_PRECISION_OPS: &[Op] = &[
    Op::Conv2dFwd,
    Op::Conv2dBwdData,
    Op::Conv2dBwdWeight,
    Op::BatchnormFwdTrain,
    Op::BatchnormFwdEval,
    Op::BatchnormBwd,
    Op::MaxpoolFwd,
    Op::MaxpoolBwd,
    Op::AddFwd,
    Op::ActFwd,
    Op::ActBwd,
    Op::GemFwd,
    Op::GemBwd,
    Op::Cast,
    Op::CopyRows,
];

/// A network that maps a batch of images to descriptors in eval mode (BatchNorm with running
/// statistics, no gradient). Extraction, evaluation and candidate pools use only this.
/// Which feature map local features come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LocalLayer {
    /// The backbone's output (stride 32: ResNet layer4, Lite0's head conv): what GeM pools.
    #[default]
    Last,
    /// The last stride-16 stage (ResNet layer3, Lite0's 112-channel stage): cells of half the
    /// size, lower-level descriptors.
    Mid,
}

impl std::str::FromStr for LocalLayer {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "last" => Ok(LocalLayer::Last),
            "mid" => Ok(LocalLayer::Mid),
            _ => Err(anyhow!("local feature layer '{s}': use last or mid")),
        }
    }
}

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
    /// The pixel normalisation the weights expect (ImageNet statistics unless overridden).
    fn input_norm(&self) -> crate::data::image::PixelNorm {
        crate::data::image::PixelNorm::IMAGENET
    }
    /// The backbone's `layer` map of the last [`DescriptorNet::describe`] call, as f32 on the
    /// host with its shape `[n, c, fh, fw]` (NCHW): what local features are chosen from.
    /// `None` for a network without a backbone (`tiny-gem` pools the pixels).
    fn feature_map(
        &self,
        be: &dyn Backend,
        layer: LocalLayer,
    ) -> Result<Option<(Vec<f32>, [usize; 4])>> {
        let _ = (be, layer);
        Ok(None)
    }
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
    pub value: Buf,
    pub grad: Option<Buf>,
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

impl Param {
    /// A tensor on `be` holding `value`, with a zero gradient when `kind` is trainable.
    pub fn new(
        be: &dyn Backend,
        name: impl Into<String>,
        shape: &[usize],
        kind: ParamKind,
        value: &[f32],
    ) -> Result<Self> {
        let grad = if kind.trainable() {
            Some(be.zeros(DType::F32, value.len())?)
        } else {
            None
        };
        Ok(Param {
            name: name.into(),
            shape: shape.to_vec(),
            kind,
            value: be.upload(value)?,
            grad,
        })
    }

    /// The gradient buffer, or an error naming the tensor when it has none.
    pub fn grad_mut(&mut self) -> Result<&mut Buf> {
        let name = &self.name;
        self.grad
            .as_mut()
            .ok_or_else(|| anyhow!("{name} has no gradient buffer (it is not trainable)"))
    }
}

/// Zeroes every gradient of `m` (before a step's backward, since backward accumulates).
pub fn zero_grads(be: &dyn Backend, m: &mut dyn Module) -> Result<()> {
    for p in m.params_mut() {
        if let Some(g) = p.grad.as_mut() {
            be.zero(g)?;
        }
    }
    Ok(())
}

/// Drops every gradient buffer of `m`: a network that only describes (extraction, evaluation,
/// search) never computes one, and ResNet-101's would hold 170 MB.
pub fn drop_grads(m: &mut dyn Module) {
    for p in m.params_mut() {
        p.grad = None;
    }
}

/// Total elements of the trainable tensors (what torchvision's parameter counts count).
pub fn count_trainable(m: &dyn Module) -> usize {
    m.params()
        .iter()
        .filter(|p| p.kind.trainable())
        .map(|p| p.numel())
        .sum()
}

/// An empty placeholder buffer, replaced on first use by [`ensure_len`].
pub(crate) fn empty() -> Buf {
    Buf::empty(DType::F32)
}

/// Makes `buf` hold `len` elements on `be`, reallocating only when the length changes, so a
/// repeated batch shape reuses its buffers.
pub(crate) fn ensure_len(be: &dyn Backend, buf: &mut Buf, len: usize) -> Result<()> {
    ensure(be, buf, DType::F32, len)
}

/// [`ensure`] with the dtype of `like`: a layer's output takes the type of its input and its
/// input gradient the type of the output gradient, so one network runs in f32 or in bf16.
pub(crate) fn ensure_like(be: &dyn Backend, buf: &mut Buf, like: &Buf, len: usize) -> Result<()> {
    ensure(be, buf, like.dtype(), len)
}

/// [`ensure_len`] for a buffer of any dtype.
pub(crate) fn ensure(be: &dyn Backend, buf: &mut Buf, dtype: DType, len: usize) -> Result<()> {
    be.ensure(buf, dtype, len)
}
