//! The `[MODEL]` section of a stage config (the original YAML's `MODEL` keys; the training
//! config embeds it as its `model` field): which network to build and where its weights come
//! from. [`super::model::load_model`] builds the network it describes.

use serde::{Deserialize, Serialize};

/// `MODEL`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct Model {
    /// `imagenet` (backbone from `IMAGENET_WEIGHTS`), `random`, or a previous stage's weights
    /// file (`.safetensors` or `.pth`), loaded non-strictly into the whole model.
    pub pretrain: String,
    /// The ImageNet `.pth` / `.safetensors` that `PRETRAIN = "imagenet"` loads.
    pub imagenet_weights: String,
    pub backbone: Backbone,
    pub pool: Pool,
    pub head: Head,
    /// BatchNorm statistics over this many contiguous chunks of the batch (G13: 4 reproduces
    /// the original's 4-GPU DataParallel); 1 is plain BatchNorm.
    pub bn_ghost_groups: usize,
}

/// `MODEL.BACKBONE`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct Backbone {
    /// `resnet50`, `resnet101`, `efficientnet-lite0`, or `resnet-custom`.
    pub name: String,
    /// Bottlenecks per stage of `resnet-custom`.
    pub stages: [usize; 4],
    /// Stem width of `resnet-custom` (torchvision's is 64).
    pub base_width: usize,
    /// Keep every BatchNorm's running statistics during training (eval-mode normalisation;
    /// gamma and beta still train). Not in the paper; off by default.
    pub freeze_bn: bool,
    /// Train the head only: the backbone runs in eval mode (running statistics), gets no
    /// backward pass and no optimiser state. Not in the paper; off by default.
    pub frozen: bool,
}

/// `MODEL.POOL`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct Pool {
    pub name: String,
    pub output_size: usize,
    pub gmp: Gmp,
}

/// `MODEL.POOL.GMP`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct Gmp {
    pub p: f32,
}

/// `MODEL.HEAD`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct Head {
    /// `false` drops the linear layer (not in the paper): the descriptor is the L2-normalised
    /// GeM vector and training reaches the backbone through GeM + L2; OUT_DIM is then unused.
    pub enable: bool,
    pub name: String,
    /// Checked against the backbone's channels when given.
    pub in_dim: Option<usize>,
    pub out_dim: usize,
    /// `random` (the original's), `identity` (square heads: weight = I) or `pca`
    /// (PCA-whitening of `INIT_FEATS`). Used only when the head is not loaded from a file.
    pub init: String,
    /// The `N x C` f32 `.npy` of stage-0 descriptors that `INIT = "pca"` learns from.
    pub init_feats: String,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            pretrain: "imagenet".into(),
            imagenet_weights: String::new(),
            backbone: Backbone::default(),
            pool: Pool::default(),
            head: Head::default(),
            bn_ghost_groups: 1,
        }
    }
}

impl Default for Backbone {
    fn default() -> Self {
        Backbone {
            name: "resnet101".into(),
            stages: [1, 1, 1, 1],
            base_width: 64,
            freeze_bn: false,
            frozen: false,
        }
    }
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            name: "gem".into(),
            output_size: 1,
            gmp: Gmp { p: 3.0 },
        }
    }
}

impl Default for Gmp {
    fn default() -> Self {
        Gmp { p: 3.0 }
    }
}

impl Default for Head {
    fn default() -> Self {
        Head {
            enable: true,
            name: "norm_linear_norm".into(),
            in_dim: None,
            out_dim: 2048,
            init: "random".into(),
            init_feats: String::new(),
        }
    }
}
