//! One training stage (spec 4.4 base / XBM v1, 4.5 impr / XBM v2), in the original's order
//! inside a step (G11, G12):
//!
//! ```text
//! sampler -> tuples (anchor + K neighbours) -> [no-DA views, eval-mode forward -> G]
//!   -> DA views (RandomResizedCrop + flip), train-mode forward -> F
//!   -> [mini-batch selection on G] -> batch loss -> bank write (F, G)
//!   -> v1 memory sample | v2 mining -> memory loss -> backward -> clip -> Adam / SGD step
//! ```
//!
//! Randomness: each step's augmentations and memory sample draw from streams derived from
//! `(SEED, step, image slot)`, so a run is reproducible on any number of threads and a resumed
//! run continues exactly where the interrupted one was (the sampler is replayed from `SEED`).
//!
//! Images that do not decode are skipped, counted and listed: they are never anchors, and they
//! are removed from every candidate-pool row (the row is shifted left and padded with the
//! image itself at similarity -1, below every threshold) so they never enter a tuple or mining.

use super::checkpoint;
use super::config::Config;
use super::loader::{self, Inputs, Loader};
use super::optim::{Optimizer, Schedule};
use crate::backend::profile::range;
use crate::backend::Backend;
use crate::backend::DType;
use crate::data::image::{decode_all, decode_rgb, resize_bilinear, Chw, Skipped};
use crate::data::image_paths;
use crate::io::paths::{check_outputs, Named};
use crate::loss::{contrastive_batch, contrastive_memory, LossOut, Memory};
use crate::memory::IndexedBank;
use crate::mining::pool::NO_NEIGHBOR;
use crate::mining::{
    sample_v1, select_in_batch, AnchorSampler, Batch, CandidatePool, MineConfig, Mined, Miner,
    Mode, SelectionRule,
};
use crate::nn::head::HeadKind;
use crate::nn::head_init::{identity, pca_whitening, HeadInit};
use crate::nn::weights::{load_into, read_any, LoadOptions};
use crate::nn::{zero_grads, Arch, DescriptorNet, Images, Module, RetrievalNet};
use crate::rng::Rng;
use anyhow::{bail, Context, Result};
use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Stream ids of [`stream`].
pub const AUG: u64 = 1;
const MEM: u64 = 2;
const INIT_AUG: u64 = 3;
const TRACE: u64 = 4;

/// An independent generator for `(seed, step, purpose, slot)`.
pub fn stream(seed: u64, step: usize, purpose: u64, slot: usize) -> Rng {
    let mut r = Rng::new(seed);
    let a = r.next_u64() ^ (step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let b = a
        ^ purpose.wrapping_mul(0xd1b5_4a32_d192_ed03)
        ^ (slot as u64).wrapping_mul(0x8cb9_2ba7_2f3d_8dd7);
    Rng::new(b)
}

/// The training images: paths (dataset index = position), decoded copies when cached, and
/// which ones could not be decoded.
pub struct Dataset {
    pub paths: Vec<PathBuf>,
    cache: Vec<Option<RgbImage>>,
    /// `bad[i]`: image `i` did not decode and is never used.
    pub bad: Vec<bool>,
    pub skipped: Skipped,
}

impl Dataset {
    /// Lists `root` (every image, sorted) or the list file `list` (paths relative to `root`),
    /// decodes everything once (to find corrupt files) and keeps the images when `cache`
    /// (otherwise each step decodes its images again, as the original's data loader).
    pub fn open(root: &Path, list: Option<&Path>, cache: bool) -> Result<Dataset> {
        let paths = image_paths(root, list)?;
        let mut bad = vec![true; paths.len()];
        let mut imgs: Vec<Option<RgbImage>> = vec![None; paths.len()];
        let skipped = if cache {
            let (ok, mut skipped) = decode_all(&paths);
            for (i, img) in ok {
                if let Err(e) = non_empty(&img) {
                    skipped.push(i, &paths[i], &e);
                    continue;
                }
                bad[i] = false;
                imgs[i] = Some(img);
            }
            skipped
        } else {
            // One decode per image to find the corrupt ones, keeping nothing (GLDv2-sized
            // lists do not fit in memory decoded).
            let errs: Vec<Option<anyhow::Error>> = paths
                .par_iter()
                .map(|p| decode_rgb(p).and_then(|img| non_empty(&img)).err())
                .collect();
            let mut skipped = Skipped::default();
            for (i, e) in errs.into_iter().enumerate() {
                match e {
                    None => bad[i] = false,
                    Some(e) => skipped.push(i, &paths[i], &e),
                }
            }
            skipped
        };
        Ok(Dataset {
            paths,
            cache: imgs,
            bad,
            skipped,
        })
    }

    /// A dataset of in-memory images (tests, generated data).
    pub fn from_images(images: Vec<RgbImage>) -> Dataset {
        let n = images.len();
        Dataset {
            paths: (0..n)
                .map(|i| PathBuf::from(format!("<image {i}>")))
                .collect(),
            cache: images.into_iter().map(Some).collect(),
            bad: vec![false; n],
            skipped: Skipped::default(),
        }
    }

    /// Number of images (dataset size N, bad ones included).
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// True when there is no image.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    pub fn image(&self, i: usize) -> Result<std::borrow::Cow<'_, RgbImage>> {
        match &self.cache[i] {
            Some(img) => Ok(std::borrow::Cow::Borrowed(img)),
            None => Ok(std::borrow::Cow::Owned(decode_rgb(&self.paths[i])?)),
        }
    }
}

/// A 0-pixel image cannot be cropped; it is skipped like a corrupt one.
fn non_empty(img: &RgbImage) -> Result<()> {
    if img.width() == 0 || img.height() == 0 {
        bail!("image has no pixels ({}x{})", img.width(), img.height());
    }
    Ok(())
}

/// Removes `bad` images from every pool row (see the module doc).
pub fn filter_pool(pool: &CandidatePool, bad: &[bool]) -> CandidatePool {
    if !bad.iter().any(|&b| b) {
        return pool.clone();
    }
    let mut out = pool.clone();
    for i in 0..pool.n {
        let row: Vec<(u32, f32)> = pool
            .neighbors(i)
            .iter()
            .zip(pool.similarities(i))
            .filter(|(&j, _)| !bad[j as usize])
            .map(|(&j, &s)| (j, s))
            .collect();
        for c in 0..pool.k {
            let (j, s) = row.get(c).copied().unwrap_or((i as u32, NO_NEIGHBOR));
            out.neighbor[i * pool.k + c] = j;
            out.similarity[i * pool.k + c] = s;
        }
    }
    out
}

/// A freshly built model: the network, a one-line note of what was loaded, and the names of
/// the tensors no weights file provided (left at their seeded initialisation).
pub struct Built {
    pub net: RetrievalNet,
    pub note: String,
    pub random_init: Vec<String>,
}

/// Builds the configured network and loads `MODEL.PRETRAIN`; returns it with a one-line note
/// of what was loaded.
pub fn build_model(cfg: &Config, be: &dyn Backend) -> Result<(RetrievalNet, String)> {
    let b = load_model(cfg, be)?;
    Ok((b.net, b.note))
}

/// [`build_model`], also naming the tensors left at random initialisation.
pub fn load_model(cfg: &Config, be: &dyn Backend) -> Result<Built> {
    let m = &cfg.model;
    let mut rng = Rng::new(cfg.seed);
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
    net.set_precision(cfg.precision())?;
    let (note, random_init) = match m.pretrain.as_str() {
        "random" => {
            let all = net.params().iter().map(|p| p.name.clone()).collect();
            ("random initialisation (seeded)".to_string(), all)
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
                "ImageNet backbone from {}: {} tensors ({} left random)",
                p.display(),
                r.loaded.len(),
                r.missing.len()
            );
            (note, r.missing)
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
            (note, r.missing)
        }
    };
    net.set_bn_frozen(m.backbone.freeze_bn);
    if m.backbone.frozen {
        net.freeze_backbone();
    }
    let (note, random_init) = if random_init.iter().any(|n| n == "head.fc.weight") {
        match init_head(cfg, &mut net, be)? {
            Some(how) => {
                let left = random_init
                    .into_iter()
                    .filter(|n| !n.starts_with("head.fc."))
                    .collect();
                (format!("{note}; {how}"), left)
            }
            None => (note, random_init),
        }
    } else {
        (note, random_init)
    };
    Ok(Built {
        net,
        note,
        random_init,
    })
}

/// Sets `head.fc` as `MODEL.HEAD.INIT` asks (when the head was not loaded from a file);
/// returns what it did, or `None` for the random init.
fn init_head(cfg: &Config, net: &mut RetrievalNet, be: &dyn Backend) -> Result<Option<String>> {
    let h = &cfg.model.head;
    let (c, d) = (net.head.in_dim(), net.head.out_dim());
    let init = match HeadInit::parse(&h.init)? {
        HeadInit::Random => return Ok(None),
        HeadInit::Identity => {
            if c != d {
                bail!(
                    "MODEL.HEAD.INIT = \"identity\" needs a square head, but {} outputs {c} channels and MODEL.HEAD.OUT_DIM = {d}; set OUT_DIM = {c} or use INIT = \"pca\" / \"random\"",
                    cfg.model.backbone.name
                );
            }
            (identity(c), "head.fc = identity".to_string())
        }
        HeadInit::Pca => {
            if h.init_feats.is_empty() {
                bail!("MODEL.HEAD.INIT = \"pca\" needs MODEL.HEAD.INIT_FEATS = the stage-0 descriptors (.npy, N x C f32)");
            }
            if d > c {
                bail!("MODEL.HEAD.INIT = \"pca\" keeps at most {c} directions ({} channels), but MODEL.HEAD.OUT_DIM = {d}; set OUT_DIM <= {c}", cfg.model.backbone.name);
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
                    cfg.model.backbone.name
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

/// One line of the JSON-lines log.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct StepLog {
    pub step: usize,
    pub lr: f64,
    pub loss: f32,
    pub batch_loss: f32,
    pub memory_loss: f32,
    /// Active positive / negative pairs per row (the original's `avg_pos`, `avg_neg`).
    pub batch_pos: f32,
    pub batch_neg: f32,
    pub memory_pos: f32,
    pub memory_neg: f32,
    /// Neighbours rejected by mini-batch selection.
    pub rejected: usize,
    /// Memory rows read, and (v2) how many are init / selected positives, hard / random negatives.
    pub memory_size: usize,
    pub init_pos: usize,
    pub selected_pos: usize,
    pub hard_neg: usize,
    pub random_neg: usize,
    pub grad_norm: f64,
    pub seconds: f64,
    /// Images the step described with augmentation (anchors and their neighbours).
    pub images: usize,
    /// Seconds the step waited for its decoded and augmented images (all of the loading
    /// without DATALOADER.PREFETCH).
    pub load_wait: f64,
}

/// One traced tuple of one step: what mini-batch selection and mining decided for it. A line
/// of `OUTPUT_DIR/decisions.jsonl` (dataset indices throughout); `insclr-cu report` reads them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Decision {
    pub step: usize,
    pub anchor: usize,
    /// The tuple's neighbours (the anchor's pool columns `0..NEIGHBOR.K`), in order.
    pub neighbors: Vec<usize>,
    /// Whether each neighbour stayed a positive after mini-batch selection (all true without
    /// selection; `SELECTION.ALWAYS_TRUE` columns always).
    pub kept: Vec<bool>,
    /// Init positives the memory loss credited to this tuple (ascending; XBM v2).
    pub init: Vec<usize>,
    /// Pseudo-positives mining credited to this tuple: `(image, iteration (1-based), score
    /// when picked)`, ascending by image (XBM v2).
    pub mined: Vec<(usize, usize, f32)>,
    /// The anchor's own hard negatives (its pool row past the negative boundary) that this
    /// step's memory sample holds, in pool order, at most [`TRACED_HARD`].
    pub hard: Vec<usize>,
}

/// Hard negatives a [`Decision`] lists.
pub const TRACED_HARD: usize = 12;

/// The anchors whose decisions are logged: `SOLVER.TRACE_ANCHORS` of the usable images in a
/// seeded order, and every image `SOLVER.TRACE_IMAGES` names.
fn traced_anchors(cfg: &Config, data: &Dataset, good: &[usize]) -> Result<Vec<bool>> {
    let mut traced = vec![false; data.len()];
    let mut order = good.to_vec();
    stream(cfg.seed, 0, TRACE, 0).shuffle(&mut order);
    for &i in order.iter().take(cfg.solver.trace_anchors) {
        traced[i] = true;
    }
    let root = Path::new(&cfg.data.root);
    for name in &cfg.solver.trace_images {
        let path = root.join(name);
        let i = data.paths.iter().position(|p| *p == path).with_context(|| {
            format!(
                "SOLVER.TRACE_IMAGES: {} is not a training image; give its path as listed, relative to DATA.ROOT",
                path.display()
            )
        })?;
        if data.bad[i] {
            bail!("SOLVER.TRACE_IMAGES: {} did not decode, so it is never an anchor; remove it from the list", path.display());
        }
        traced[i] = true;
    }
    Ok(traced)
}

/// A stage in progress: model, optimiser, data, pool, banks, sampler, step.
pub struct Stage<'b> {
    pub cfg: Config,
    be: &'b dyn Backend,
    pub net: RetrievalNet,
    pub opt: Optimizer,
    sched: Schedule,
    data: Arc<Dataset>,
    spec: loader::Spec,
    /// The loader thread (DATALOADER.PREFETCH > 0), started at the first step.
    loader: Option<Loader>,
    /// The batches whose inputs are queued in the loader, oldest first.
    queued: VecDeque<Batch>,
    pool: CandidatePool,
    miner: Option<Miner>,
    pub da: IndexedBank,
    pub noda: Option<IndexedBank>,
    sampler: AnchorSampler,
    good: Vec<usize>,
    /// `traced[i]`: image `i`'s tuples go to the decision log.
    traced: Vec<bool>,
    /// Steps completed.
    pub step: usize,
    /// The run record (JSON) every checkpoint carries; see [`super::run_dir`].
    pub run: Option<String>,
    n: usize,
    d: usize,
}

impl<'b> Stage<'b> {
    /// A fresh stage at step 0 (no bank initialisation yet; see [`Stage::init_banks`]).
    pub fn new(
        cfg: Config,
        be: &'b dyn Backend,
        net: RetrievalNet,
        data: Dataset,
        pool: &CandidatePool,
    ) -> Result<Stage<'b>> {
        let n = data.len();
        if cfg.xbm.enable && cfg.xbm.feature_dim != net.out_dim() {
            bail!(
                "XBM.FEATURE_DIM = {} but the descriptors are {}-d; set XBM.FEATURE_DIM = {}",
                cfg.xbm.feature_dim,
                net.out_dim(),
                net.out_dim()
            );
        }
        if cfg.xbm.size != 0 && cfg.xbm.size != n {
            bail!(
                "XBM.SIZE = {} but the dataset has {n} images; set XBM.SIZE = {n} (or 0 for the dataset's size)",
                cfg.xbm.size
            );
        }
        if pool.n != n {
            bail!("candidate pool has {} rows but the dataset has {n} images; recompute it on this image list", pool.n);
        }
        let pool = filter_pool(pool, &data.bad);
        let d = net.out_dim();
        let good: Vec<usize> = (0..n).filter(|&i| !data.bad[i]).collect();
        let sampler = AnchorSampler::new(good.len(), cfg.solver.ims_per_batch, cfg.seed)
            .context("SOLVER.IMS_PER_BATCH")?;
        let traced = traced_anchors(&cfg, &data, &good)?;
        let v2 = cfg.xbm.enable && cfg.xbm.version == "v2";
        let miner = if v2 {
            Some(Miner::new(
                pool.clone(),
                cfg.xbm.positive_thresh,
                cfg.xbm.negative_thresh,
                MineConfig {
                    mode: Mode::parse(&cfg.xbm.candidate_mode)?,
                    get_size: cfg.xbm.get_size,
                    use_negative: cfg.xbm.use_negative,
                },
            ))
        } else {
            None
        };
        let mut net = net;
        let opt = Optimizer::new(&cfg.solver, be, &mut net)?;
        let sched = Schedule::from_config(&cfg.solver);
        let bank_rows = if cfg.xbm.enable { n } else { 0 };
        Ok(Stage {
            be,
            opt,
            sched,
            pool,
            miner,
            da: IndexedBank::with_dtype(be, bank_rows, d, cfg.precision())?,
            noda: v2
                .then(|| IndexedBank::with_dtype(be, n, d, cfg.precision()))
                .transpose()?,
            sampler,
            good,
            traced,
            step: 0,
            run: None,
            n,
            d,
            net,
            data: Arc::new(data),
            spec: loader::Spec::of(&cfg),
            loader: None,
            queued: VecDeque::new(),
            cfg,
        })
    }

    /// `OUTPUT_DIR/checkpoints`.
    pub fn checkpoint_dir(&self) -> PathBuf {
        Path::new(&self.cfg.output_dir).join("checkpoints")
    }

    /// No-DA descriptors of the tensors `base` ([`loader::noaug`]): described at every
    /// `NOAUG.SCALES` in eval mode, averaged and L2-normalised (the original's
    /// `extract_batch_feature`).
    fn noaug_features(&mut self, base: &[Chw]) -> Result<Vec<f32>> {
        let (n, d) = (base.len(), self.d);
        let mut acc = vec![0f32; n * d];
        let scales = self.cfg.noaug.scales.clone();
        for &s in &scales {
            let xs: Vec<Chw> = base
                .iter()
                .map(|x| resize_bilinear(x, s))
                .collect::<Result<_>>()?;
            let (sh, sw) = (xs[0].h, xs[0].w);
            let flat: Vec<f32> = xs.into_iter().flat_map(|x| x.data).collect();
            let y = self.net.describe(self.be, &flat, n, sh, sw)?;
            acc.iter_mut().zip(&y).for_each(|(a, b)| *a += b);
        }
        if scales.len() > 1 {
            acc.iter_mut().for_each(|a| *a /= scales.len() as f32);
        }
        for row in acc.chunks_mut(d) {
            let nrm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            row.iter_mut().for_each(|v| *v /= nrm);
        }
        Ok(acc)
    }

    /// The next sampler batch with its tuples.
    fn next_batch(&mut self) -> Result<Batch> {
        let anchors: Vec<usize> = self
            .sampler
            .next_batch()
            .iter()
            .map(|&i| self.good[i])
            .collect();
        Batch::new(&self.pool, &anchors, self.cfg.neighbor.k)
    }

    /// Step `t`'s batch and inputs, and the seconds the step waited for them: loaded here
    /// without prefetch, else taken from the loader, which is topped up to PREFETCH steps
    /// ahead first.
    fn next_inputs(&mut self, t: usize) -> Result<(Batch, Inputs, f64)> {
        let t0 = std::time::Instant::now();
        let depth = self.cfg.dataloader.prefetch;
        if depth == 0 {
            let batch = self.next_batch()?;
            let inputs = loader::load(&self.data, &self.spec, &batch.indices, t, AUG)?;
            return Ok((batch, inputs, t0.elapsed().as_secs_f64()));
        }
        if self.loader.is_none() {
            self.loader = Some(Loader::start(
                self.data.clone(),
                self.spec.clone(),
                self.cfg.dataloader.num_workers,
                AUG,
            )?);
        }
        let last = self.cfg.solver.max_step.max(t);
        while self.queued.len() <= depth && t + self.queued.len() <= last {
            let batch = self.next_batch()?;
            let step = t + self.queued.len();
            if let Some(l) = &self.loader {
                l.push(step, batch.indices.clone())?;
            }
            self.queued.push_back(batch);
        }
        let inputs = self.loader.as_ref().context("loader")?.next(t)?;
        let batch = self.queued.pop_front().context("no batch queued")?;
        Ok((batch, inputs, t0.elapsed().as_secs_f64()))
    }

    /// `bytes` from [`loader::views`] as the network's input, with the config's
    /// normalisation.
    fn rgb<'a>(&self, bytes: &'a [u8]) -> Images<'a> {
        Images::Rgb {
            bytes,
            mean: self.cfg.input.pixel_mean,
            std: self.cfg.input.pixel_std,
        }
    }

    /// XBMv2's initialisation (4.5.0, G27): both banks filled for every image in eval mode, the
    /// DA bank from one random training view, the no-DA bank from the no-DA view.
    pub fn init_banks(&mut self, progress: &mut dyn FnMut(usize)) -> Result<()> {
        if self.noda.is_none() {
            return Ok(());
        }
        let [h, w] = self.cfg.input.train_img_size;
        let good = self.good.clone();
        for chunk in good.chunks(32) {
            let x = loader::views(&self.data, &self.spec, chunk, chunk[0], INIT_AUG)?;
            let x = self.rgb(&x);
            let f = self.net.describe_images(self.be, x, chunk.len(), h, w)?;
            let size = self.cfg.input.noaug_img_size;
            let base = loader::noaug(&self.data, &self.spec, size, chunk)?;
            let g = self.noaug_features(&base)?;
            self.da.write(self.be, chunk, &self.be.upload(&f)?)?;
            if let Some(nb) = self.noda.as_mut() {
                nb.write(self.be, chunk, &self.be.upload(&g)?)?;
            }
            progress(chunk.len());
        }
        Ok(())
    }

    /// Restores the latest checkpoint of `OUTPUT_DIR/checkpoints`; returns its step (None when
    /// there is none).
    pub fn resume(&mut self) -> Result<Option<usize>> {
        let Some((_, path)) = checkpoint::latest(&self.checkpoint_dir())? else {
            return Ok(None);
        };
        let r = checkpoint::load(
            &path,
            self.be,
            &mut self.net,
            &mut self.opt,
            self.da.dtype(),
        )?;
        if r.seed != self.cfg.seed {
            bail!(
                "{} was written with SEED = {} but the config has SEED = {}; resuming would not continue the same run",
                path.display(),
                r.seed,
                self.cfg.seed
            );
        }
        for (name, bank) in r.banks {
            let slot = match name.as_str() {
                "da" => &mut self.da,
                "noda" => self
                    .noda
                    .as_mut()
                    .context("checkpoint has a no-DA bank but XBM.VERSION is not v2")?,
                other => bail!("{}: unknown memory bank {other}", path.display()),
            };
            if bank.len() != slot.len() || bank.dim() != slot.dim() {
                bail!(
                    "{}: bank {name} is {}x{} but this config needs {}x{}",
                    path.display(),
                    bank.len(),
                    bank.dim(),
                    slot.len(),
                    slot.dim()
                );
            }
            *slot = bank;
        }
        self.sampler = AnchorSampler::new(
            self.good.len(),
            self.cfg.solver.ims_per_batch,
            self.cfg.seed,
        )?;
        for _ in 0..r.step {
            self.sampler.next_batch();
        }
        self.loader = None;
        self.queued.clear();
        self.step = r.step;
        Ok(Some(r.step))
    }

    /// What the model files of this stage record about the model ([`crate::nn::meta`]).
    pub fn model_meta(&self) -> crate::nn::meta::ModelMeta {
        crate::nn::meta::ModelMeta::of_training(&self.cfg, &self.net, self.noda.is_some())
    }

    /// Writes a checkpoint of the current step; returns its path.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let mut banks: Vec<(&str, &IndexedBank)> = Vec::new();
        if self.cfg.xbm.enable {
            banks.push(("da", &self.da));
        }
        if let Some(nb) = &self.noda {
            banks.push(("noda", nb));
        }
        checkpoint::save(
            &self.checkpoint_dir(),
            self.step,
            self.cfg.seed,
            self.run.as_deref(),
            &self.model_meta().to_map(),
            self.be,
            &self.net,
            &self.opt,
            &banks,
        )
    }

    /// What a run stopped by a non-finite step keeps, and how to go on.
    fn not_saved(&self) -> String {
        let last = match checkpoint::latest(&self.checkpoint_dir()) {
            Ok(Some((step, path))) => {
                format!("the last checkpoint is step {step}, {}", path.display())
            }
            _ => "there is no checkpoint yet".to_string(),
        };
        format!("the step's update was not applied and nothing of it was saved; {last}. Lower SOLVER.BASE_LR (or set SOLVER.GRAD_MAX_NORM) or check the data, then continue with --resume")
    }

    /// Runs one training step (the module doc's order) and returns its log line and the
    /// decisions of its traced tuples.
    pub fn step_once(&mut self) -> Result<(StepLog, Vec<Decision>)> {
        let t0 = std::time::Instant::now();
        let t = self.step + 1;
        let (be, d) = (self.be, self.d);
        let _step_range = range("step");
        let r = range("load");
        let (mut batch, inputs, load_wait) = self.next_inputs(t)?;
        drop(r);
        let anchors = batch.anchors.clone();
        let nimg = batch.indices.len();

        // G12: no-DA forward in eval mode first, then the DA forward in train mode.
        let r = range("no-DA forward");
        let g = match &inputs.noaug {
            Some(base) => Some(self.noaug_features(base)?),
            None => None,
        };
        drop(r);
        let r = range("forward");
        let [h, w] = self.cfg.input.train_img_size;
        let x = self.rgb(&inputs.views);
        let f = be.download::<f32>(self.net.forward_train_images(be, x, nimg, h, w)?)?;
        let fb = be.upload(&f)?;
        drop(r);

        let mut log = StepLog {
            step: t,
            images: nimg,
            load_wait,
            ..StepLog::default()
        };
        let sel = &self.cfg.selection;
        let r = range("selection");
        if sel.enable {
            let feats = match (&g, sel.use_noaug_similarity) {
                (Some(g), true) => g,
                _ => &f,
            };
            let rule = if sel.kind == "dynamic" {
                SelectionRule::Dynamic(sel.thresh)
            } else {
                SelectionRule::Fixed(sel.thresh)
            };
            select_in_batch(be, &mut batch, &be.upload(feats)?, d, rule)?;
            for b in 0..anchors.len() {
                for j in 0..sel.always_true.min(batch.k) {
                    let p = batch.neighbor_pos(b, j);
                    batch.labels[p] = batch.labels[b];
                }
            }
            log.rejected = batch.labels.iter().filter(|&&l| l <= 0).count();
        }

        drop(r);
        let r = range("batch loss");
        let margin = self.cfg.loss.contrastive_loss.margin;
        let mut d_batch = be.zeros(DType::F32, nimg * d)?;
        let lb = contrastive_batch(be, &fb, &batch.labels, d, margin, Some(&mut d_batch))?;
        let mut grad = be.download::<f32>(&d_batch)?;
        drop(r);
        let r = range("bank update");
        let x_cfg = self.cfg.xbm.clone();
        if x_cfg.enable && t > x_cfg.start_step {
            self.da.write(be, &batch.indices, &fb)?;
            if let (Some(nb), Some(g)) = (self.noda.as_mut(), &g) {
                nb.write(be, &batch.indices, &be.upload(g)?)?;
            }
        }
        let mut lm = LossOut {
            value: 0.0,
            rows: 0,
            avg_pos: 0.0,
            avg_neg: 0.0,
        };
        let mut decisions: Vec<Decision> = (0..anchors.len())
            .filter(|&b| self.traced[anchors[b]])
            .map(|b| Decision {
                step: t,
                anchor: anchors[b],
                neighbors: (0..batch.k)
                    .map(|j| batch.indices[batch.neighbor_pos(b, j)])
                    .collect(),
                kept: (0..batch.k)
                    .map(|j| batch.labels[batch.neighbor_pos(b, j)] > 0)
                    .collect(),
                ..Decision::default()
            })
            .collect();
        drop(r);
        if x_cfg.enable && t > x_cfg.get_step {
            let r = range("mining");
            let mut rng = stream(self.cfg.seed, t, MEM, 0);
            let (mi, ml) = match (&self.miner, &self.noda) {
                (Some(miner), Some(noda)) => {
                    let m = miner.mine(be, noda, &batch.indices, &batch.labels, &mut rng)?;
                    trace_mining(&mut decisions, &m, miner);
                    (log.init_pos, log.selected_pos) = (m.init, m.selected);
                    (log.hard_neg, log.random_neg) = (m.hard, m.random);
                    (m.indices, m.labels)
                }
                _ => {
                    let mi = sample_v1(
                        &self.pool,
                        &self.da,
                        &batch.indices,
                        x_cfg.potential_positive,
                        x_cfg.get_size,
                        &mut rng,
                    )?;
                    log.random_neg = mi.len();
                    let ml = vec![self.n as i64 + 1; mi.len()];
                    (mi, ml)
                }
            };
            log.memory_size = mi.len();
            drop(r);
            let _r = range("memory loss");
            if !mi.is_empty() {
                let mem = self.da.gather(be, &mi)?;
                let mut d_mem = be.zeros(DType::F32, nimg * d)?;
                lm = contrastive_memory(
                    be,
                    &fb,
                    &batch.labels,
                    Memory { x: &mem, y: &ml },
                    d,
                    margin,
                    Some(&mut d_mem),
                )?;
                let wgt = x_cfg.memory_loss_weight;
                for (a, b) in grad.iter_mut().zip(be.download::<f32>(&d_mem)?) {
                    *a += wgt * b;
                }
            }
        }

        log.batch_loss = lb.value;
        log.memory_loss = lm.value;
        log.loss = lb.value + x_cfg.memory_loss_weight * lm.value;
        if !log.loss.is_finite() {
            bail!(
                "step {t}: the loss is {} (batch {}, memory {}); {}",
                log.loss,
                lb.value,
                lm.value,
                self.not_saved()
            );
        }
        let r = range("backward");
        zero_grads(be, &mut self.net)?;
        let gb = be.upload(&grad)?;
        self.net.backward(be, &gb)?;
        drop(r);
        let _r = range("optimiser");
        log.grad_norm =
            self.opt
                .clip_grad_norm(be, &mut self.net, self.cfg.solver.grad_max_norm)?;
        if !log.grad_norm.is_finite() {
            bail!(
                "step {t}: the gradient norm is {} (loss {}); {}",
                log.grad_norm,
                log.loss,
                self.not_saved()
            );
        }
        let factor = self.sched.factor(t);
        self.opt.step(be, &mut self.net, factor)?;
        self.step = t;

        log.lr = self.cfg.solver.base_lr * factor;
        (log.batch_pos, log.batch_neg) = (lb.avg_pos, lb.avg_neg);
        (log.memory_pos, log.memory_neg) = (lm.avg_pos, lm.avg_neg);
        log.seconds = t0.elapsed().as_secs_f64();
        Ok((log, decisions))
    }
}

/// Fills the traced tuples' init positives, mined positives and hard negatives from one
/// mining result (positives carry their tuple's label, `anchor + 1`).
fn trace_mining(decisions: &mut [Decision], m: &Mined, miner: &Miner) {
    if decisions.is_empty() {
        return;
    }
    let (ni, ns) = (m.init, m.selected);
    let hard: std::collections::HashSet<usize> = m.indices[ni + ns..ni + ns + m.hard]
        .iter()
        .copied()
        .collect();
    for dec in decisions {
        let label = crate::mining::tuples::tuple_label(dec.anchor);
        let with_label = |r: std::ops::Range<usize>| {
            r.filter(move |&p| m.labels[p] == label)
                .map(|p| m.indices[p])
        };
        dec.init = with_label(0..ni).collect();
        dec.mined = (ni..ni + ns)
            .filter(|&p| m.labels[p] == label)
            .map(|p| {
                let (round, score) = m.selected_picks[p - ni];
                (m.indices[p], round, score)
            })
            .collect();
        dec.hard = miner
            .bounds
            .hard_negatives(&miner.pool, dec.anchor)
            .iter()
            .map(|&j| j as usize)
            .filter(|j| hard.contains(j))
            .take(TRACED_HARD)
            .collect();
    }
}

/// Options of [`run`].
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Continue from the latest checkpoint in `OUTPUT_DIR/checkpoints` (the same run only).
    pub resume: bool,
    /// Delete the files an earlier run wrote in OUTPUT_DIR and start over (a fresh run refuses
    /// a non-empty one).
    pub overwrite: bool,
    /// No progress bar.
    pub quiet: bool,
    /// Files the caller read to make the config (the config file, a pipeline's plan): no
    /// output may replace them and `--overwrite` may not delete them.
    pub inputs: Vec<Named>,
}

/// What a finished stage reports.
#[derive(Clone, Debug)]
pub struct Summary {
    pub steps_run: usize,
    pub resumed_from: Option<usize>,
    pub first_loss: Option<f32>,
    pub last_loss: Option<f32>,
    pub seconds: f64,
    pub final_model: PathBuf,
    pub skipped: usize,
    /// Model tensors no weights file provided (empty when resumed: the checkpoint has all).
    pub random_init: Vec<String>,
    /// Files removed at the start: stale files of a failed write (on resume), or the files an
    /// earlier run wrote (with `--overwrite`).
    pub removed: Vec<PathBuf>,
}

/// The lines of `dir/log.jsonl` (an unreadable line is an error naming it).
pub fn read_log(dir: &Path) -> Result<Vec<serde_json::Value>> {
    let path = dir.join("log.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

/// The curves of log lines, their steps shifted by `offset` (a pipeline's earlier stages):
/// loss, learning rate, pseudo-positives mined per step (when any were) and images/s.
pub fn log_panels(runs: &[(f64, Vec<serde_json::Value>)]) -> Vec<crate::io::plot::Panel> {
    let series = |f: &dyn Fn(&serde_json::Value) -> Option<f64>| -> Vec<(f64, f64)> {
        runs.iter()
            .flat_map(|(offset, rows)| {
                rows.iter()
                    .filter_map(move |r| Some((offset + r["step"].as_f64()?, f(r)?)))
            })
            .collect()
    };
    let panel = |title: &str, points| crate::io::plot::Panel {
        title: title.into(),
        points,
        dots: false,
    };
    let mined = series(&|r| r["selected_pos"].as_f64());
    let mut panels = vec![
        panel("loss (batch + memory)", series(&|r| r["loss"].as_f64())),
        panel("learning rate", series(&|r| r["lr"].as_f64())),
    ];
    if mined.iter().any(|p| p.1 > 0.0) {
        panels.push(panel("pseudo-positives mined per step", mined));
    }
    panels.push(panel(
        "images/s",
        series(&|r| Some(r["images"].as_f64()? / r["seconds"].as_f64()?.max(1e-9))),
    ));
    panels
}

/// `dir/plot.svg` from `dir/log.jsonl`.
pub fn plot_run(dir: &Path) -> Result<()> {
    let rows = read_log(dir)?;
    if rows.is_empty() {
        return Ok(());
    }
    let title = format!("{}", dir.display());
    crate::io::plot::write(
        &dir.join("plot.svg"),
        &title,
        "step",
        &log_panels(&[(0.0, rows)]),
    )
}

/// The decision log's file name in OUTPUT_DIR (see [`Decision`]).
pub const DECISIONS_FILE: &str = "decisions.jsonl";

/// Keeps the log lines of steps `<= step` (a resumed run rewrites what came after).
fn truncate_log(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s as usize <= step)
        })
        .collect();
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    std::fs::write(path, body).with_context(|| format!("rewriting {}", path.display()))
}

/// Runs a whole stage from a config: data, pool, model, [bank init], steps with a progress
/// bar and a JSON-lines log (`OUTPUT_DIR/log.jsonl`), checkpoints every `CHECKPOINT_PERIOD`
/// and at the end, and the final model as `OUTPUT_DIR/model_final.safetensors`. OUTPUT_DIR
/// must be empty, or hold this same run when resuming ([`super::run_dir`]). Every check runs
/// before OUTPUT_DIR is touched, and a fresh run that fails before its first checkpoint
/// removes what it wrote.
pub fn run(cfg: Config, be: &dyn Backend, opts: &RunOptions) -> Result<Summary> {
    let start = std::time::Instant::now();
    if cfg.output_dir.is_empty() {
        bail!("OUTPUT_DIR is empty: say where checkpoints and logs go");
    }
    let out = PathBuf::from(&cfg.output_dir);
    let record = super::run_dir::RunRecord::new(&cfg)?;
    let mut inputs = opts.inputs.clone();
    inputs.extend(super::run_dir::inputs(&cfg));
    let outputs: Vec<Named> = [
        super::run_dir::RUN_FILE,
        "log.jsonl",
        DECISIONS_FILE,
        "skipped.txt",
        "plot.svg",
        FINAL_MODEL,
    ]
    .iter()
    .map(|n| Named::new("the run's", out.join(n)))
    .collect();
    check_outputs(&inputs, &outputs)?;
    super::run_dir::precheck(&out, &record, opts.resume, opts.overwrite, &inputs)?;
    let root = PathBuf::from(&cfg.data.root);
    let list = (!cfg.data.train_filename.is_empty()).then(|| root.join(&cfg.data.train_filename));
    let data = Dataset::open(&root, list.as_deref(), cfg.data.cache_images)?;
    let n = data.len();
    super::memory::check(&cfg, n, be.device() == crate::backend::Device::Cpu)?;
    let pool = CandidatePool::load(Path::new(&cfg.neighbor.src), n).context("NEIGHBOR.SRC")?;
    let Built {
        net,
        note,
        random_init,
    } = load_model(&cfg, be)?;
    let skipped = data.skipped.clone();
    eprintln!(
        "train: {n} images ({} skipped), pool k = {}, model {} -> {} ({note}), backend {}, {}",
        skipped.len(),
        pool.k,
        cfg.model.backbone.name,
        net.out_dim(),
        be.name(),
        match cfg.precision() {
            DType::F32 => "f32",
            _ => "bf16 activations and banks, f32 weights",
        }
    );
    if cfg.test.test_period <= cfg.solver.max_step {
        eprintln!("note: periodic evaluation (TEST.TEST_PERIOD) is not run by train; evaluate checkpoints with `insclr-cu eval`");
    }
    let mut stage = Stage::new(cfg, be, net, data, &pool)?;
    stage.run = Some(record.to_json()?);
    // Only now, with every setting and input checked, is OUTPUT_DIR locked and written.
    let mut dir = super::run_dir::prepare(&out, &record, opts.resume, opts.overwrite, &inputs)?;
    let mut saved = false;
    let done = steps(&mut stage, &mut dir, &skipped, opts, &mut saved);
    let Ran {
        resumed_from,
        first_loss,
        last_loss,
        steps: ran,
    } = match done {
        Ok(r) => r,
        Err(e) => {
            if !saved {
                dir.undo();
            }
            return Err(e);
        }
    };
    let final_model = out.join(FINAL_MODEL);
    let tensors = crate::nn::weights::export(&stage.net, be)?;
    let meta = stage.model_meta().to_map();
    dir.manifest.add(&final_model)?;
    crate::io::safetensors::write(&final_model, &tensors, Some(meta))?;
    Ok(Summary {
        steps_run: ran,
        resumed_from,
        first_loss,
        last_loss,
        seconds: start.elapsed().as_secs_f64(),
        final_model,
        skipped: skipped.len(),
        random_init: if resumed_from.is_some() {
            Vec::new()
        } else {
            random_init
        },
        removed: dir.removed.clone(),
    })
}

/// The final model's file name in OUTPUT_DIR.
pub const FINAL_MODEL: &str = "model_final.safetensors";

/// What [`steps`] did.
struct Ran {
    resumed_from: Option<usize>,
    first_loss: Option<f32>,
    last_loss: Option<f32>,
    steps: usize,
}

/// Resumes or starts the stage in the prepared `dir` and runs its steps. `saved` turns true
/// once a checkpoint is on disk (from then on a failure keeps the folder: `--resume`
/// continues it).
fn steps(
    stage: &mut Stage,
    dir: &mut super::run_dir::Prepared,
    skipped: &Skipped,
    opts: &RunOptions,
    saved: &mut bool,
) -> Result<Ran> {
    let out = PathBuf::from(&stage.cfg.output_dir);
    if !skipped.is_empty() {
        eprintln!("{}", skipped.summary(20));
        let listing: String = skipped
            .items
            .iter()
            .map(|(i, p, why)| format!("{i}\t{}\t{why}\n", p.display()))
            .collect();
        let path = out.join("skipped.txt");
        dir.manifest.add(&path)?;
        std::fs::write(&path, listing).with_context(|| format!("writing {}", path.display()))?;
    }
    let quiet = opts.quiet;
    let log_path = out.join("log.jsonl");
    let decisions_path = out.join(DECISIONS_FILE);
    let resumed_from = if opts.resume { stage.resume()? } else { None };
    *saved = resumed_from.is_some();
    match resumed_from {
        Some(s) => {
            eprintln!("resumed from step {s}");
            truncate_log(&log_path, s)?;
            truncate_log(&decisions_path, s)?;
        }
        None => {
            for p in [&log_path, &decisions_path] {
                dir.manifest.add(p)?;
                std::fs::write(p, "").with_context(|| format!("creating {}", p.display()))?;
            }
            if stage.noda.is_some() {
                let bar = bar(quiet, stage.good.len() as u64, "bank init");
                stage.init_banks(&mut |k| bar.inc(k as u64))?;
                bar.finish_and_clear();
            }
        }
    }
    let max = stage.cfg.solver.max_step;
    let period = stage.cfg.solver.checkpoint_period;
    let log_every = stage.cfg.solver.log_period.max(1);
    let append = |p: &Path| {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(p)
            .with_context(|| format!("opening {}", p.display()))
    };
    for p in [&log_path, &decisions_path] {
        dir.manifest.add(p)?;
    }
    let (mut logf, mut decf) = (append(&log_path)?, append(&decisions_path)?);
    let pb = bar(quiet, max as u64, "train");
    pb.set_position(stage.step as u64);
    pb.reset_eta();
    let (mut first, mut last, mut ran) = (None, None, 0);
    while stage.step < max {
        let (l, decisions) = stage.step_once()?;
        ran += 1;
        first.get_or_insert(l.loss);
        last = Some(l.loss);
        writeln!(logf, "{}", serde_json::to_string(&l)?)?;
        for d in &decisions {
            writeln!(decf, "{}", serde_json::to_string(d)?)?;
        }
        pb.set_message(format!(
            "loss {:.4} (batch {:.4} mem {:.4}) lr {:.1e} {:.1} img/s, waited {:.0} ms for images",
            l.loss,
            l.batch_loss,
            l.memory_loss,
            l.lr,
            l.images as f64 / l.seconds.max(1e-9),
            1e3 * l.load_wait
        ));
        pb.inc(1);
        if quiet && (l.step % log_every == 0 || l.step == max) {
            eprintln!(
                "step {}/{max} loss {:.4} batch {:.4} memory {:.4} lr {:.1e} {:.2}s/step {:.1} img/s, waited {:.0} ms for images",
                l.step,
                l.loss,
                l.batch_loss,
                l.memory_loss,
                l.lr,
                l.seconds,
                l.images as f64 / l.seconds.max(1e-9),
                1e3 * l.load_wait
            );
        }
        if stage.step % period == 0 || stage.step == max {
            let ck = stage.checkpoint_dir();
            dir.manifest
                .add(&checkpoint::checkpoint_path(&ck, stage.step))?;
            dir.manifest
                .add(&checkpoint::memory_path(&ck, stage.step))?;
            stage.save_checkpoint()?;
            *saved = true;
            logf.flush()?;
            dir.manifest.add(&out.join("plot.svg"))?;
            plot_run(&out)?;
        }
    }
    pb.finish_and_clear();
    Ok(Ran {
        resumed_from,
        first_loss: first,
        last_loss: last,
        steps: ran,
    })
}

fn bar(quiet: bool, len: u64, what: &str) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}, {per_sec}] {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_prefix(what.to_string());
    pb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traced_anchors_are_a_seeded_sample_plus_the_named_images() {
        let img = || RgbImage::new(2, 2);
        let mut data = Dataset::from_images((0..6).map(|_| img()).collect());
        data.bad[5] = true;
        let good: Vec<usize> = (0..5).collect();
        let mut cfg = Config::default();
        cfg.solver.trace_anchors = 2;
        cfg.solver.trace_images = vec!["<image 4>".into()];
        let t = traced_anchors(&cfg, &data, &good).unwrap();
        assert!(t[4] && !t[5]);
        assert!((2..=3).contains(&t.iter().filter(|&&x| x).count()));
        assert_eq!(t, traced_anchors(&cfg, &data, &good).unwrap(), "seeded");
        cfg.solver.trace_anchors = 100;
        assert_eq!(traced_anchors(&cfg, &data, &good).unwrap()[..5], [true; 5]);
        cfg.solver.trace_images = vec!["nope.jpg".into()];
        let e = traced_anchors(&cfg, &data, &good).unwrap_err().to_string();
        assert!(e.contains("nope.jpg is not a training image"), "{e}");
        cfg.solver.trace_images = vec!["<image 5>".into()];
        let e = traced_anchors(&cfg, &data, &good).unwrap_err().to_string();
        assert!(e.contains("did not decode"), "{e}");
    }
}
