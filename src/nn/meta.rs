//! What a model file written by `train` records about its use, in the safetensors metadata:
//! the pixel normalisation it was trained with, its input sizes, its backbone and its
//! descriptor. `extract` and `eval` read it back, so a model is described the way it was
//! trained without the user repeating the config.
//!
//! Keys and formats (every value is a string, as safetensors metadata must be):
//! - `insclr.pixel_mean`, `insclr.pixel_std`: three comma-separated floats (`0.485,0.456,0.406`);
//! - `insclr.train_img_size`, `insclr.noaug_img_size`: `h,w` (the no-DA size only when the stage
//!   extracts no-DA features, XBM v2);
//! - `insclr.backbone`: [`super::Backbone::name`] (`resnet50`, `resnet-custom[1, 1, 1, 1]x8`);
//! - `insclr.descriptor`: JSON `{"kind":"head","head":"norm_linear_norm","dim":128}`.

use super::head::HeadKind;
use crate::data::image::PixelNorm;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Metadata key of the pixel mean.
pub const PIXEL_MEAN: &str = "insclr.pixel_mean";
/// Metadata key of the pixel std.
pub const PIXEL_STD: &str = "insclr.pixel_std";
/// Metadata key of `INPUT.TRAIN_IMG_SIZE`.
pub const TRAIN_IMG_SIZE: &str = "insclr.train_img_size";
/// Metadata key of `INPUT.NOAUG_IMG_SIZE`.
pub const NOAUG_IMG_SIZE: &str = "insclr.noaug_img_size";
/// Metadata key of the backbone name.
pub const BACKBONE: &str = "insclr.backbone";
/// Metadata key of the descriptor (JSON of [`DescriptorMeta`]).
pub const DESCRIPTOR: &str = "insclr.descriptor";

/// The descriptor a file's network produces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorMeta {
    /// `head` (backbone -> GeM -> head) or `gem` (raw GeM).
    pub kind: String,
    /// The head's kind (`norm_linear_norm`, `linear_norm`) when `kind` is `head`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    /// Descriptor length.
    pub dim: usize,
}

/// What a model file records about how to use it; every field is optional (ImageNet files and
/// files of older versions record nothing).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelMeta {
    /// The normalisation of the training inputs.
    pub pixel_norm: Option<PixelNorm>,
    /// `INPUT.TRAIN_IMG_SIZE` as `[h, w]`.
    pub train_img_size: Option<[usize; 2]>,
    /// `INPUT.NOAUG_IMG_SIZE` as `[h, w]`, when the stage used it.
    pub noaug_img_size: Option<[usize; 2]>,
    /// [`super::Backbone::name`] of the network.
    pub backbone: Option<String>,
    /// The descriptor the network produces.
    pub descriptor: Option<DescriptorMeta>,
}

/// The config name of a head kind.
pub fn head_kind_name(kind: HeadKind) -> &'static str {
    match kind {
        HeadKind::NormLinearNorm => "norm_linear_norm",
        HeadKind::LinearNorm => "linear_norm",
        HeadKind::L2Only => "none",
    }
}

fn join<T: std::fmt::Display>(v: &[T]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn floats3(key: &str, s: &str) -> Result<[f32; 3]> {
    let v: Vec<f32> = s
        .split(',')
        .map(|x| x.trim().parse::<f32>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| anyhow!("{key} = {s:?} is not three comma-separated numbers"))?;
    <[f32; 3]>::try_from(v).map_err(|_| anyhow!("{key} = {s:?} is not three numbers"))
}

fn size2(key: &str, s: &str) -> Result<[usize; 2]> {
    let v: Vec<usize> = s
        .split(',')
        .map(|x| x.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| anyhow!("{key} = {s:?} is not 'h,w'"))?;
    <[usize; 2]>::try_from(v).map_err(|_| anyhow!("{key} = {s:?} is not 'h,w'"))
}

/// Parses `imagenet`, `lite` or `m1,m2,m3/s1,s2,s3` (mean / std of `v / 255`).
pub fn parse_pixel_norm(s: &str) -> Result<PixelNorm> {
    match s.trim().to_ascii_lowercase().as_str() {
        "imagenet" => return Ok(PixelNorm::IMAGENET),
        "lite" => return Ok(PixelNorm::LITE),
        _ => {}
    }
    let (m, sd) = s.split_once('/').ok_or_else(|| {
        anyhow!("pixel normalisation {s:?}: use imagenet, lite or MEAN/STD like 0.485,0.456,0.406/0.229,0.224,0.225")
    })?;
    let norm = PixelNorm {
        mean: floats3("mean", m)?,
        std: floats3("std", sd)?,
    };
    if norm.std.iter().any(|&x| !(x.is_finite() && x > 0.0))
        || norm.mean.iter().any(|x| !x.is_finite())
    {
        bail!("pixel normalisation {s:?}: the std must be positive and every value finite");
    }
    Ok(norm)
}

/// `mean m1,m2,m3 std s1,s2,s3`, for messages.
pub fn pixel_norm_text(n: &PixelNorm) -> String {
    format!("mean {} std {}", join(&n.mean), join(&n.std))
}

impl ModelMeta {
    /// The metadata entries of the recorded fields.
    pub fn to_map(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        if let Some(n) = &self.pixel_norm {
            m.insert(PIXEL_MEAN.into(), join(&n.mean));
            m.insert(PIXEL_STD.into(), join(&n.std));
        }
        if let Some(s) = &self.train_img_size {
            m.insert(TRAIN_IMG_SIZE.into(), join(s));
        }
        if let Some(s) = &self.noaug_img_size {
            m.insert(NOAUG_IMG_SIZE.into(), join(s));
        }
        if let Some(b) = &self.backbone {
            m.insert(BACKBONE.into(), b.clone());
        }
        if let Some(d) = &self.descriptor {
            // A struct of strings and a number always serialises.
            m.insert(
                DESCRIPTOR.into(),
                serde_json::to_string(d).unwrap_or_default(),
            );
        }
        m
    }

    /// The fields recorded in metadata entries `m` (unknown keys are ignored).
    pub fn from_map(m: &HashMap<String, String>) -> Result<Self> {
        let pixel_norm = match (m.get(PIXEL_MEAN), m.get(PIXEL_STD)) {
            (Some(mean), Some(std)) => Some(PixelNorm {
                mean: floats3(PIXEL_MEAN, mean)?,
                std: floats3(PIXEL_STD, std)?,
            }),
            (None, None) => None,
            _ => bail!("{PIXEL_MEAN} and {PIXEL_STD} must be recorded together"),
        };
        let size = |k: &str| m.get(k).map(|s| size2(k, s)).transpose();
        let descriptor = m
            .get(DESCRIPTOR)
            .map(|s| {
                serde_json::from_str::<DescriptorMeta>(s)
                    .map_err(|e| anyhow!("{DESCRIPTOR} = {s:?} is not a descriptor record: {e}"))
            })
            .transpose()?;
        Ok(ModelMeta {
            pixel_norm,
            train_img_size: size(TRAIN_IMG_SIZE)?,
            noaug_img_size: size(NOAUG_IMG_SIZE)?,
            backbone: m.get(BACKBONE).cloned(),
            descriptor,
        })
    }

    /// The record of a weight file: a `.safetensors` header's metadata; nothing for other
    /// formats (`.pth` files record none).
    pub fn read(path: &Path) -> Result<Self> {
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            return Ok(ModelMeta::default());
        }
        let m = crate::io::safetensors::read_metadata(path)?;
        ModelMeta::from_map(&m).with_context(|| format!("metadata of {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_metadata_strings() {
        let meta = ModelMeta {
            pixel_norm: Some(PixelNorm {
                mean: [0.1, 0.2, 0.3],
                std: [0.229, 0.5, 1.0 / 3.0],
            }),
            train_img_size: Some([224, 160]),
            noaug_img_size: None,
            backbone: Some("resnet-custom[1, 2, 1, 1]x8".into()),
            descriptor: Some(DescriptorMeta {
                kind: "head".into(),
                head: Some("linear_norm".into()),
                dim: 64,
            }),
        };
        let m = meta.to_map();
        assert_eq!(m[TRAIN_IMG_SIZE], "224,160");
        assert!(!m.contains_key(NOAUG_IMG_SIZE));
        assert_eq!(ModelMeta::from_map(&m).unwrap(), meta);
        assert_eq!(
            ModelMeta::from_map(&HashMap::new()).unwrap(),
            ModelMeta::default()
        );
    }

    #[test]
    fn pixel_norm_flags_parse() {
        assert_eq!(parse_pixel_norm("imagenet").unwrap(), PixelNorm::IMAGENET);
        assert_eq!(parse_pixel_norm("LITE").unwrap(), PixelNorm::LITE);
        let n = parse_pixel_norm("0.5,0.5,0.5/0.25, 0.25,0.25").unwrap();
        assert_eq!((n.mean, n.std), ([0.5; 3], [0.25; 3]));
        assert!(parse_pixel_norm("0.5,0.5/1,1,1").is_err());
        assert!(parse_pixel_norm("0,0,0/1,0,1").is_err());
        assert!(parse_pixel_norm("vgg").is_err());
    }
}
