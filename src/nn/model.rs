//! Building a stage's model from the `[MODEL]` section ([`super::config::Model`]): the
//! backbone and head at their seeded initialisation, the weights `MODEL.PRETRAIN` names
//! loaded into them, BatchNorm and backbone freezing, and the head's initialisation
//! (`MODEL.HEAD.INIT`) when no file provided it.

use super::config::Model;
use super::head::HeadKind;
use super::head_init::{identity, pca_whitening, HeadInit};
use super::weights::{load_into, read_any, LoadOptions};
use super::{Arch, Module, RetrievalNet};
use crate::backend::{Backend, DType};
use crate::rng::Rng;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// A freshly built model: the network, a one-line note of what was loaded, and the names of
/// the tensors no weights file provided (left at their seeded initialisation).
pub struct Built {
    pub net: RetrievalNet,
    pub note: String,
    pub random_init: Vec<String>,
}

/// Builds the network `m` describes and loads `MODEL.PRETRAIN`; returns it with a one-line
/// note of what was loaded. `seed` seeds the initialisation, `precision` is what the backbone
/// computes in (a stage's `SOLVER.PRECISION`).
pub fn build_model(
    m: &Model,
    seed: u64,
    precision: DType,
    be: &dyn Backend,
) -> Result<(RetrievalNet, String)> {
    let b = load_model(m, seed, precision, be)?;
    Ok((b.net, b.note))
}

/// [`build_model`], also naming the tensors left at random initialisation.
pub fn load_model(m: &Model, seed: u64, precision: DType, be: &dyn Backend) -> Result<Built> {
    let mut rng = Rng::new(seed);
    let arch = match Arch::parse(&m.backbone.name).context("MODEL.BACKBONE.NAME")? {
        Arch::ResNetCustom { .. } => Arch::ResNetCustom {
            stages: m.backbone.stages,
            base: m.backbone.base_width,
        },
        arch => arch,
    };
    let backbone = arch.build(be, &mut rng, false)?;
    if let Some(c) = m.head.in_dim {
        if c != backbone.out_channels() {
            bail!(
                "MODEL.HEAD.IN_DIM = {c} but {} outputs {} channels",
                m.backbone.name,
                backbone.out_channels()
            );
        }
    }
    let kind = match m.head.enable {
        true => HeadKind::parse(&m.head.name).context("MODEL.HEAD.NAME")?,
        false => HeadKind::L2Only,
    };
    let mut net = RetrievalNet::new(be, &mut rng, backbone, kind, m.head.out_dim)?;
    net.set_bn_ghost_groups(m.bn_ghost_groups);
    net.set_precision(precision)?;
    // What the weights files gave; whether to count the tensors left random in the note
    // (counted below, after the head's initialisation, so the note and the run's summary of
    // what stayed random agree).
    let (note, count_random, random_init) = match m.pretrain.as_str() {
        "random" => {
            let all = net.params().iter().map(|p| p.name.clone()).collect();
            ("random initialisation (seeded)".to_string(), false, all)
        }
        "imagenet" => {
            if m.imagenet_weights.is_empty() {
                bail!("MODEL.PRETRAIN = \"imagenet\" needs MODEL.IMAGENET_WEIGHTS = the backbone's ImageNet .pth / .safetensors (or PRETRAIN = \"random\")");
            }
            let p = Path::new(&m.imagenet_weights);
            let t =
                read_any(p).with_context(|| format!("MODEL.IMAGENET_WEIGHTS {}", p.display()))?;
            let r = load_into(&mut net, be, &t, &LoadOptions::backbone())
                .with_context(|| format!("loading {}", p.display()))?;
            let note = format!(
                "ImageNet backbone from {}: {} tensors",
                p.display(),
                r.loaded.len()
            );
            (note, true, r.missing)
        }
        path => {
            let p = Path::new(path);
            let t = read_any(p).with_context(|| format!("MODEL.PRETRAIN {}", p.display()))?;
            let opts = LoadOptions {
                strict: false,
                skip_prefixes: vec!["optimizer.".into()],
            };
            let r = load_into(&mut net, be, &t, &opts)
                .with_context(|| format!("loading {}", p.display()))?;
            if !r.missing.is_empty() {
                eprintln!("note: {}: {r}", p.display());
            }
            let note = format!("previous stage {}: {} tensors", p.display(), r.loaded.len());
            (note, false, r.missing)
        }
    };
    net.set_bn_frozen(m.backbone.freeze_bn);
    if m.backbone.frozen {
        net.freeze_backbone();
    }
    let (head, random_init) = if random_init.iter().any(|n| n == "head.fc.weight") {
        match init_head(m, &mut net, be)? {
            Some(how) => {
                let left = random_init
                    .into_iter()
                    .filter(|n| !n.starts_with("head.fc."))
                    .collect();
                (Some(how), left)
            }
            None => (None, random_init),
        }
    } else {
        (None, random_init)
    };
    let mut note = note;
    if count_random {
        note = format!("{note} ({} left random)", random_init.len());
    }
    if let Some(how) = head {
        note = format!("{note}; {how}");
    }
    Ok(Built {
        net,
        note,
        random_init,
    })
}

/// Sets `head.fc` as `MODEL.HEAD.INIT` asks (when the head was not loaded from a file);
/// returns what it did, or `None` for the random init.
fn init_head(m: &Model, net: &mut RetrievalNet, be: &dyn Backend) -> Result<Option<String>> {
    let h = &m.head;
    let (c, d) = (net.head.in_dim(), net.head.out_dim());
    let init = match HeadInit::parse(&h.init)? {
        HeadInit::Random => return Ok(None),
        HeadInit::Identity => {
            if c != d {
                bail!(
                    "MODEL.HEAD.INIT = \"identity\" needs a square head, but {} outputs {c} channels and MODEL.HEAD.OUT_DIM = {d}; set OUT_DIM = {c} or use INIT = \"pca\" / \"random\"",
                    m.backbone.name
                );
            }
            (identity(c), "head.fc = identity".to_string())
        }
        HeadInit::Pca => {
            if h.init_feats.is_empty() {
                bail!("MODEL.HEAD.INIT = \"pca\" needs MODEL.HEAD.INIT_FEATS = the stage-0 descriptors (.npy, N x C f32)");
            }
            if d > c {
                bail!("MODEL.HEAD.INIT = \"pca\" keeps at most {c} directions ({} channels), but MODEL.HEAD.OUT_DIM = {d}; set OUT_DIM <= {c}", m.backbone.name);
            }
            let p = Path::new(&h.init_feats);
            let a = crate::io::npy::read::<f32>(p)
                .with_context(|| format!("MODEL.HEAD.INIT_FEATS {}", p.display()))?;
            let (n, w) = a
                .dims2("descriptors")
                .with_context(|| format!("MODEL.HEAD.INIT_FEATS {}", p.display()))?;
            if w != c {
                bail!(
                    "MODEL.HEAD.INIT_FEATS {} holds {w}-d descriptors but {} outputs {c} channels; give the stage-0 descriptors of this backbone (GeM, {c}-d)",
                    p.display(),
                    m.backbone.name
                );
            }
            let mut x = a.data;
            if net.head.kind == HeadKind::NormLinearNorm {
                // head.fc sees L2-normalised GeM vectors: learn the PCA on those.
                for row in x.chunks_mut(c) {
                    let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                    row.iter_mut().for_each(|v| *v /= norm);
                }
            }
            let how = format!("head.fc = PCA-whitening of {} ({n} x {c})", p.display());
            let init = pca_whitening(&x, n, c, d)
                .with_context(|| format!("MODEL.HEAD.INIT_FEATS {}", p.display()))?;
            (init, how)
        }
    };
    net.head.set_fc(be, &init.0)?;
    Ok(Some(init.1))
}

/// What `insclr-cu info --model` prints of a retrieval network: its layers and sizes.
#[derive(Clone, Debug)]
pub struct Summary {
    /// "resnet101 + GeM + norm_linear_norm".
    pub name: String,
    /// One line per layer group.
    pub layers: Vec<String>,
    /// Trainable parameters: all, and the backbone's.
    pub trainable: usize,
    pub backbone_trainable: usize,
    /// Trainable tensors, and BatchNorm's running statistics (elements).
    pub tensors: usize,
    pub running: usize,
    /// The backbone's output channels and the descriptor's dimension.
    pub channels: usize,
    pub dim: usize,
}

/// The retrieval network of backbone `model` and head `head` (descriptor `dim`, default the
/// backbone's channels), built on the CPU with seeded random weights, summarised.
pub fn summary(model: &str, head: &str, dim: Option<usize>) -> Result<Summary> {
    let arch = Arch::parse(model)?;
    let kind = HeadKind::parse(head)?;
    let be = crate::backend::cpu();
    let mut rng = Rng::new(0);
    let backbone = arch.build(be, &mut rng, false)?;
    let channels = backbone.out_channels();
    let backbone_trainable = super::count_trainable(&*backbone);
    let net = RetrievalNet::new(be, &mut rng, backbone, kind, dim.unwrap_or(channels))?;
    let tensors = net.params();
    Ok(Summary {
        name: format!("{} + GeM + {head}", net.backbone.name()),
        layers: net.summary(),
        trainable: super::count_trainable(&net),
        backbone_trainable,
        tensors: tensors.iter().filter(|p| p.kind.trainable()).count(),
        running: tensors
            .iter()
            .filter(|p| !p.kind.trainable())
            .map(|p| p.numel())
            .sum(),
        channels,
        dim: net.head.out_dim(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_summary_counts_lite0s_parameters_by_part() {
        let s = super::summary("efficientnet-lite0", "norm_linear_norm", None).unwrap();
        assert_eq!(s.name, "efficientnet-lite0 + GeM + norm_linear_norm");
        // The head is one 1280 x 1280 matrix without bias; the backbone is Lite0 without its
        // 1000-class classifier (4.65M - 1.28M).
        assert_eq!((s.channels, s.dim), (1280, 1280));
        assert_eq!(s.trainable - s.backbone_trainable, 1280 * 1280);
        assert_eq!((s.backbone_trainable, s.tensors), (3_371_008, 148));
        assert!(super::summary("resnet7", "norm_linear_norm", None).is_err());
    }
}
