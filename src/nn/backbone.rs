//! The trait every backbone implements ([`Backbone`]), and what backbones share. Below both the
//! backbones (`resnet.rs`, `efficientnet.rs`) and the network built on them (`net.rs`).

use super::batchnorm::BatchNorm2d;
use super::linear::Linear;
use super::pool::GemPool;
use super::Module;
use crate::backend::{Backend, Buf};
use anyhow::Result;

/// A convolutional backbone: NCHW images in, an `n x out_channels x fh x fw` map out.
pub trait Backbone: Module + Send {
    /// `resnet50`, `resnet101`, `efficientnet-lite0`.
    fn name(&self) -> String;
    /// Channels of the output map.
    fn out_channels(&self) -> usize;
    /// Forward in training (batch statistics) or eval mode; returns the map's `(fh, fw)`.
    fn forward(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        nhw: (usize, usize, usize),
        train: bool,
    ) -> Result<(usize, usize)>;
    /// The output map of the last forward.
    fn output(&self) -> &Buf;
    /// The output of the last stride-16 stage of the last forward (ResNet layer3, Lite0's
    /// 112-channel stage), `ceil(h/16) x ceil(w/16)`, and its channels; `None` for a backbone
    /// without one.
    fn mid_output(&self) -> Option<(&Buf, usize)> {
        None
    }
    /// Backward from the output map's gradient to every parameter (`x` is the forward's
    /// input; no gradient is computed for the images).
    fn backward(&mut self, be: &dyn Backend, x: &Buf, dy: &Buf) -> Result<()>;
    /// Every BatchNorm (to set ghost groups or momentum).
    fn batchnorms_mut(&mut self) -> Vec<&mut BatchNorm2d>;
    /// ImageNet logits `n x 1000` (eval mode, average pool, classifier); errors when the
    /// backbone was built without its classifier.
    fn logits(&mut self, be: &dyn Backend, x: &Buf, nhw: (usize, usize, usize))
        -> Result<Vec<f32>>;
    /// One line per layer group, for `insclr-cu info --model`.
    fn summary(&self) -> Vec<String>;
    /// The pixel normalisation its ImageNet weights were trained with.
    fn input_norm(&self) -> crate::data::image::PixelNorm {
        crate::data::image::PixelNorm::IMAGENET
    }
}

/// Average pool + linear classifier over a backbone's map.
pub(crate) fn classify(
    be: &dyn Backend,
    feat: &Buf,
    (n, c, h, w): (usize, usize, usize, usize),
    avg: &mut GemPool,
    fc: &mut Linear,
) -> Result<Vec<f32>> {
    avg.forward(be, feat, (n, c, h, w))?;
    fc.forward(be, &avg.y, n)?;
    be.download::<f32>(&fc.y)
}
