//! A stage in progress: the state one training step ([`super::step`]) works on (model,
//! optimiser and schedule, data set and loader, candidate pool, memory banks, sampler, step
//! count), how it is set up, how XBM v2's banks are initialised, and how it is checkpointed and
//! resumed. The run loop around it is [`super::run`](mod@super::run).
//!
//! Images that do not decode are skipped ([`crate::data::dataset`]): they are never anchors,
//! and they are removed from every candidate-pool row ([`CandidatePool::without`]) so they
//! never enter a tuple or mining.

use super::checkpoint;
use super::config::Config;
use super::loader::{self, Inputs, Loader};
use super::optim::{Optimizer, Schedule};
use super::streams::{stream, AUG, INIT_AUG, TRACE};
use crate::backend::Backend;
use crate::data::dataset::Dataset;
use crate::data::image::{resize_bilinear, Chw};
use crate::dist::{all_gather, shard, Collective};
use crate::memory::IndexedBank;
use crate::mining::{AnchorSampler, Batch, CandidatePool, MineConfig, Miner, Mode};
use crate::nn::{DescriptorNet, Images, RetrievalNet};
use anyhow::{bail, Context, Result};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    pub(super) be: &'b dyn Backend,
    /// The ranks this stage is split over ([`crate::dist`]): each describes and
    /// back-propagates its share of every batch, the rest is whole and the same on every rank.
    pub(super) comm: &'b dyn Collective,
    pub net: RetrievalNet,
    pub opt: Optimizer,
    pub(super) sched: Schedule,
    data: Arc<Dataset>,
    spec: loader::Spec,
    /// The loader thread (DATALOADER.PREFETCH > 0), started at the first step.
    loader: Option<Loader>,
    /// The batches whose inputs are queued in the loader, oldest first.
    queued: VecDeque<Batch>,
    pub(super) pool: CandidatePool,
    pub(super) miner: Option<Miner>,
    pub da: IndexedBank,
    pub noda: Option<IndexedBank>,
    sampler: AnchorSampler,
    pub(super) good: Vec<usize>,
    /// `traced[i]`: image `i`'s tuples go to the decision log.
    pub(super) traced: Vec<bool>,
    /// Steps completed.
    pub step: usize,
    /// The run record (JSON) every checkpoint carries; see [`super::run_dir`].
    pub run: Option<String>,
    pub(super) n: usize,
    pub(super) d: usize,
}

impl<'b> Stage<'b> {
    /// A fresh stage at step 0 (no bank initialisation yet; see [`Stage::init_banks`]), as
    /// rank `comm.rank()` of `comm.world()`.
    pub fn new(
        cfg: Config,
        be: &'b dyn Backend,
        comm: &'b dyn Collective,
        net: RetrievalNet,
        data: Dataset,
        pool: &CandidatePool,
    ) -> Result<Stage<'b>> {
        let n = data.len();
        let batch_rows = cfg.solver.ims_per_batch * (1 + cfg.neighbor.k);
        if batch_rows < comm.world() {
            bail!(
                "a batch of {batch_rows} images (SOLVER.IMS_PER_BATCH x (1 + NEIGHBOR.K)) cannot be split over {} ranks; use at most {batch_rows}",
                comm.world()
            );
        }
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
        let pool = pool.without(&data.bad);
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
        let (ghost, world) = (cfg.model.bn_ghost_groups, comm.world());
        if world > 1 && ghost > 1 {
            // A rank's rows are 1/world of the batch, contiguous: split into `ghost / world`
            // groups they are the very groups one rank makes of the whole batch (spec G13).
            if ghost % world != 0 {
                bail!("MODEL.BN_GHOST_GROUPS = {ghost} cannot be split over {world} ranks: give a multiple of {world} (each rank then normalises {ghost}/{world} groups, as one GPU does) or 1 (statistics per rank, as DataParallel's)");
            }
            net.set_bn_ghost_groups(ghost / world);
        }
        let opt = Optimizer::new(&cfg.solver, be, &mut net)?;
        let sched = Schedule::from_config(&cfg.solver);
        let bank_rows = if cfg.xbm.enable { n } else { 0 };
        Ok(Stage {
            be,
            comm,
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

    /// This rank's rows of `batch` (all of them on one rank).
    pub(super) fn rows_of(&self, batch: &Batch) -> std::ops::Range<usize> {
        shard(batch.indices.len(), self.comm.rank(), self.comm.world())
    }

    /// Step `t`'s batch and this rank's inputs of it, and the seconds the step waited for
    /// them: loaded here without prefetch, else taken from the loader, which is topped up to
    /// PREFETCH steps ahead first.
    pub(super) fn next_inputs(&mut self, t: usize) -> Result<(Batch, Inputs, f64)> {
        let t0 = std::time::Instant::now();
        let depth = self.cfg.dataloader.prefetch;
        if depth == 0 {
            let batch = self.next_batch()?;
            let rows = self.rows_of(&batch);
            let mine = &batch.indices[rows.clone()];
            let inputs = loader::load(&self.data, &self.spec, mine, rows.start, t, AUG)?;
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
            let rows = self.rows_of(&batch);
            if let Some(l) = &self.loader {
                l.push(step, batch.indices[rows.clone()].to_vec(), rows.start)?;
            }
            self.queued.push_back(batch);
        }
        let inputs = self.loader.as_ref().context("loader")?.next(t)?;
        let batch = self.queued.pop_front().context("no batch queued")?;
        Ok((batch, inputs, t0.elapsed().as_secs_f64()))
    }

    /// `bytes` from [`loader::views`] as the network's input, with the config's
    /// normalisation.
    pub(super) fn rgb<'a>(&self, bytes: &'a [u8]) -> Images<'a> {
        Images::Rgb {
            bytes,
            mean: self.cfg.input.pixel_mean,
            std: self.cfg.input.pixel_std,
        }
    }

    /// No-DA descriptors of the tensors `base` ([`super::loader::noaug`]): described at every
    /// `NOAUG.SCALES` in eval mode, averaged and L2-normalised (the original's
    /// `extract_batch_feature`).
    pub(super) fn noaug_features(&mut self, base: &[Chw]) -> Result<Vec<f32>> {
        let (n, d) = (base.len(), self.d);
        let mut acc = vec![0f32; n * d];
        if n == 0 {
            return Ok(acc);
        }
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

    /// XBMv2's initialisation (4.5.0, G27): both banks filled for every image in eval mode, the
    /// DA bank from one random training view, the no-DA bank from the no-DA view. Over several
    /// ranks each describes its share of every chunk of 32 and every rank writes all of it.
    pub fn init_banks(&mut self, progress: &mut dyn FnMut(usize)) -> Result<()> {
        if self.noda.is_none() {
            return Ok(());
        }
        let [h, w] = self.cfg.input.train_img_size;
        let good = self.good.clone();
        let (rank, world) = (self.comm.rank(), self.comm.world());
        for chunk in good.chunks(32) {
            let rows = shard(chunk.len(), rank, world);
            let mine = &chunk[rows.clone()];
            let f = if mine.is_empty() {
                Vec::new()
            } else {
                let x =
                    loader::views(&self.data, &self.spec, mine, rows.start, chunk[0], INIT_AUG)?;
                let x = self.rgb(&x);
                self.net.describe_images(self.be, x, mine.len(), h, w)?
            };
            let f = all_gather(self.comm, &f)?;
            let size = self.cfg.input.noaug_img_size;
            let base = loader::noaug(&self.data, &self.spec, size, mine)?;
            let g = all_gather(self.comm, &self.noaug_features(&base)?)?;
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
        self.cfg.model_meta(&self.net, self.noda.is_some())
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
    pub(super) fn not_saved(&self) -> String {
        let last = match checkpoint::latest(&self.checkpoint_dir()) {
            Ok(Some((step, path))) => {
                format!("the last checkpoint is step {step}, {}", path.display())
            }
            _ => "there is no checkpoint yet".to_string(),
        };
        format!("the step's update was not applied and nothing of it was saved; {last}. Lower SOLVER.BASE_LR (or set SOLVER.GRAD_MAX_NORM) or check the data, then continue with --resume")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::RgbImage;

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
