//! What a network trained by `train` records in its weight file: [`ModelMeta::of_training`].
//! Apart from `meta.rs` (the record and its format), which `net.rs` reads when it loads a file:
//! this needs the network itself, and `meta` -> `net` -> `meta` was a circle. It also reads the
//! training config, the one use of a layer above `nn` (`tests/module_graph.rs` lists it); its
//! place is beside the training step, where callers would find it unchanged
//! (`ModelMeta::of_training`).

use super::head::HeadKind;
use super::meta::{head_kind_name, DescriptorMeta, ModelMeta};
use super::{DescriptorNet, RetrievalNet};
use crate::data::image::PixelNorm;

impl ModelMeta {
    /// What a training run records about `net`, trained with `cfg`.
    pub fn of_training(cfg: &crate::train::Config, net: &RetrievalNet, noaug: bool) -> Self {
        ModelMeta {
            pixel_norm: Some(PixelNorm {
                mean: cfg.input.pixel_mean,
                std: cfg.input.pixel_std,
            }),
            train_img_size: Some(cfg.input.train_img_size),
            noaug_img_size: noaug.then_some(cfg.input.noaug_img_size),
            backbone: Some(net.backbone.name()),
            // A network without a linear head (MODEL.HEAD.ENABLE = false) describes with its
            // L2-normalised GeM, which is what a loader builds for a file without head tensors.
            descriptor: Some(match net.head.kind {
                HeadKind::L2Only => DescriptorMeta {
                    kind: "gem".into(),
                    head: None,
                    dim: net.out_dim(),
                },
                kind => DescriptorMeta {
                    kind: "head".into(),
                    head: Some(head_kind_name(kind).into()),
                    dim: net.out_dim(),
                },
            }),
        }
    }
}
