//! What a network trained by `train` records in its weight file: [`ModelMeta::of_training`].
//! Apart from `meta.rs` (the record and its format), which `net.rs` reads when it loads a file:
//! this needs the network itself, and `meta` -> `net` -> `meta` was a circle. The training
//! config's side is `train::Config::model_meta`.

use super::head::HeadKind;
use super::meta::{head_kind_name, DescriptorMeta, ModelMeta};
use super::{DescriptorNet, RetrievalNet};
use crate::data::image::PixelNorm;

impl ModelMeta {
    /// What a training run records about `net`, trained on inputs normalised with
    /// `pixel_norm` at `train_img_size` (and, when the stage extracts no-DA features, at
    /// `noaug_img_size`).
    pub fn of_training(
        net: &RetrievalNet,
        pixel_norm: PixelNorm,
        train_img_size: [usize; 2],
        noaug_img_size: Option<[usize; 2]>,
    ) -> Self {
        ModelMeta {
            pixel_norm: Some(pixel_norm),
            train_img_size: Some(train_img_size),
            noaug_img_size,
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
