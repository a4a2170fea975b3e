//! One training step (spec 4.4 base / XBM v1, 4.5 impr / XBM v2), its parts in the original's
//! order inside an iteration (G11), each a method of [`Stage`] named after what it does:
//!
//! ```text
//! Stage::next_inputs             sampler -> tuples (anchor + K neighbours) -> their views
//! describe_without_augmentation  [no-DA views, eval-mode forward -> G]         (G12, v2)
//! describe_with_augmentation     DA views (RandomResizedCrop + flip), train-mode forward -> F
//! select_in_minibatch            [mini-batch selection on G (or F)]
//! trace_selection                the traced tuples' decisions so far (the decision log)
//! batch_loss                     contrastive loss within the batch, and its gradient
//! update_banks                   bank write: F -> DA bank, G -> no-DA bank
//! mine_pseudo_positives          v2 mining on the no-DA bank | v1 memory sample
//! memory_loss                    contrastive loss against the DA bank's rows, and its gradient
//! backward                       one backward pass of both losses' gradients
//! sum_gradients_over_ranks       [several ranks: all-reduce the parameter gradients]
//! optimiser_step                 clip -> Adam / SGD step
//! share_running_statistics       [several ranks: rank 0's BatchNorm running statistics]
//! ```
//!
//! The bank is written before it is read, so the current batch's features are in the bank
//! when mining or sampling (G11).
//!
//! Over several ranks ([`crate::dist`]) each rank loads, describes and back-propagates its
//! share of the batch; F and G are all-gathered, so selection, both losses, the banks and
//! mining see the whole batch on every rank, computed alike from the same inputs (the batch,
//! its labels and the random streams are derived on every rank, not sent).
//!
//! Randomness: the augmentations and the memory sample draw from the streams of
//! [`super::streams`]. The step works on a [`Stage`]'s state and calls nothing of the run loop
//! ([`super::run`](mod@super::run)), which calls it.

use super::loader::Inputs;
use super::stage::Stage;
use super::streams::{stream, MEM};
use crate::backend::profile::range;
use crate::backend::{Buf, DType};
use crate::dist::all_gather;
use crate::loss::{contrastive_batch, contrastive_memory, LossOut, Memory};
use crate::mining::{sample_v1, select_in_batch, Batch, Mined, Miner, SelectionRule};
use crate::nn::{Module, ParamKind};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

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

/// The descriptors F of the augmented views, on the host and on the device.
struct Described {
    host: Vec<f32>,
    dev: Buf,
}

/// The memory rows the memory loss reads (of the DA bank), with their labels.
struct MemorySample {
    indices: Vec<usize>,
    labels: Vec<i64>,
}

/// A loss that was not computed (no memory read this step).
const NO_LOSS: LossOut = LossOut {
    value: 0.0,
    rows: 0,
    avg_pos: 0.0,
    avg_neg: 0.0,
};

impl Stage<'_> {
    /// Runs one training step (the module doc's order) and returns its log line and the
    /// decisions of its traced tuples.
    pub fn step_once(&mut self) -> Result<(StepLog, Vec<Decision>)> {
        let t0 = std::time::Instant::now();
        let t = self.step + 1;
        let _step_range = range("step");
        let r = range("load");
        let (mut batch, inputs, load_wait) = self.next_inputs(t)?;
        drop(r);
        let mut log = StepLog {
            step: t,
            images: batch.indices.len(),
            load_wait,
            ..StepLog::default()
        };

        let rows = self.rows_of(&batch);
        let g = self.describe_without_augmentation(&inputs)?;
        let f = self.describe_with_augmentation(&inputs, rows.len())?;
        log.rejected = self.select_in_minibatch(&mut batch, g.as_deref(), &f)?;
        let mut decisions = self.trace_selection(t, &batch);
        let (lb, mut grad) = self.batch_loss(&f, &batch)?;
        self.update_banks(t, &batch, &f, g.as_deref())?;
        let lm = match self.mine_pseudo_positives(t, &batch, &mut log, &mut decisions)? {
            Some(sample) => self.memory_loss(&f, &batch, &sample, &mut grad)?,
            None => NO_LOSS,
        };

        log.batch_loss = lb.value;
        log.memory_loss = lm.value;
        log.loss = lb.value + self.cfg.xbm.memory_loss_weight * lm.value;
        if !log.loss.is_finite() {
            bail!(
                "step {t}: the loss is {} (batch {}, memory {}); {}",
                log.loss,
                lb.value,
                lm.value,
                self.not_saved()
            );
        }
        self.backward(&grad[rows.start * self.d..rows.end * self.d])?;
        self.sum_gradients_over_ranks()?;
        self.optimiser_step(t, &mut log)?;
        self.share_running_statistics()?;

        (log.batch_pos, log.batch_neg) = (lb.avg_pos, lb.avg_neg);
        (log.memory_pos, log.memory_neg) = (lm.avg_pos, lm.avg_neg);
        log.seconds = t0.elapsed().as_secs_f64();
        Ok((log, decisions))
    }

    /// G, the no-DA descriptors of the step's no-DA views (XBM v2; `None` without
    /// `NOAUG.ENABLE`), in eval mode: BatchNorm normalises with its running statistics (G12).
    /// Each rank describes its rows; every rank gets the whole batch's.
    fn describe_without_augmentation(&mut self, inputs: &Inputs) -> Result<Option<Vec<f32>>> {
        let _r = range("no-DA forward");
        match &inputs.noaug {
            Some(base) => Ok(Some(all_gather(self.comm, &self.noaug_features(base)?)?)),
            None => Ok(None),
        }
    }

    /// F, the descriptors of the augmented views, in train mode: BatchNorm normalises with
    /// the batch's statistics and updates its running ones (G12); the forward keeps what
    /// [`Stage::backward`] needs. Each rank describes its `nimg` rows (BatchNorm's statistics
    /// are its own, as on DataParallel's replicas); every rank gets the whole batch's F.
    fn describe_with_augmentation(&mut self, inputs: &Inputs, nimg: usize) -> Result<Described> {
        let _r = range("forward");
        let be = self.be;
        let [h, w] = self.cfg.input.train_img_size;
        let x = self.rgb(&inputs.views);
        let mine = be.download::<f32>(self.net.forward_train_images(be, x, nimg, h, w)?)?;
        let host = all_gather(self.comm, &mine)?;
        let dev = be.upload(&host)?;
        Ok(Described { host, dev })
    }

    /// Mini-batch selection (`SELECTION`, spec 4.5.1) on G (`USE_NOAUG_SIMILARITY`) or F:
    /// rejected neighbours get the negated label; the first `ALWAYS_TRUE` neighbours of every
    /// tuple stay positives. Returns how many were rejected (0 without selection).
    fn select_in_minibatch(
        &self,
        batch: &mut Batch,
        g: Option<&[f32]>,
        f: &Described,
    ) -> Result<usize> {
        let _r = range("selection");
        let sel = &self.cfg.selection;
        if !sel.enable {
            return Ok(0);
        }
        let be = self.be;
        let feats = match (g, sel.use_noaug_similarity) {
            (Some(g), true) => g,
            _ => &f.host,
        };
        let rule = if sel.kind == "dynamic" {
            SelectionRule::Dynamic(sel.thresh)
        } else {
            SelectionRule::Fixed(sel.thresh)
        };
        select_in_batch(be, batch, &be.upload(feats)?, self.d, rule)?;
        for b in 0..batch.anchors.len() {
            for j in 0..sel.always_true.min(batch.k) {
                let p = batch.neighbor_pos(b, j);
                batch.labels[p] = batch.labels[b];
            }
        }
        Ok(batch.labels.iter().filter(|&&l| l <= 0).count())
    }

    /// The decisions of the batch's traced tuples so far: their neighbours and which ones
    /// selection kept ([`trace_mining`] adds what mining decides).
    fn trace_selection(&self, t: usize, batch: &Batch) -> Vec<Decision> {
        let anchors = &batch.anchors;
        (0..anchors.len())
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
            .collect()
    }

    /// The contrastive loss among the batch's descriptors F (spec 4.6), and its gradient with
    /// respect to F (on the host, where the memory loss's is added).
    fn batch_loss(&self, f: &Described, batch: &Batch) -> Result<(LossOut, Vec<f32>)> {
        let _r = range("batch loss");
        let (be, d) = (self.be, self.d);
        let margin = self.cfg.loss.contrastive_loss.margin;
        let mut d_batch = be.zeros(DType::F32, batch.indices.len() * d)?;
        let lb = contrastive_batch(be, &f.dev, &batch.labels, d, margin, Some(&mut d_batch))?;
        let grad = be.download::<f32>(&d_batch)?;
        Ok((lb, grad))
    }

    /// Writes the batch's descriptors into the memory banks (after `XBM.START_STEP`): F into
    /// the DA bank, G into the no-DA bank (XBM v2).
    fn update_banks(
        &mut self,
        t: usize,
        batch: &Batch,
        f: &Described,
        g: Option<&[f32]>,
    ) -> Result<()> {
        let _r = range("bank update");
        let be = self.be;
        if self.cfg.xbm.enable && t > self.cfg.xbm.start_step {
            self.da.write(be, &batch.indices, &f.dev)?;
            if let (Some(nb), Some(g)) = (self.noda.as_mut(), g) {
                nb.write(be, &batch.indices, &be.upload(g)?)?;
            }
        }
        Ok(())
    }

    /// The memory rows the memory loss reads (after `XBM.GET_STEP`; `None` before): XBM v2's
    /// pseudo-positive mining on the no-DA bank (init and selected positives, hard and random
    /// negatives; spec 4.5.2-4.5.4), or XBM v1's random sample of negatives. Fills the log's
    /// counts and the traced tuples' mining decisions.
    fn mine_pseudo_positives(
        &self,
        t: usize,
        batch: &Batch,
        log: &mut StepLog,
        decisions: &mut [Decision],
    ) -> Result<Option<MemorySample>> {
        let x = &self.cfg.xbm;
        if !(x.enable && t > x.get_step) {
            return Ok(None);
        }
        let _r = range("mining");
        let mut rng = stream(self.cfg.seed, t, MEM, 0);
        let (indices, labels) = match (&self.miner, &self.noda) {
            (Some(miner), Some(noda)) => {
                let m = miner.mine(self.be, noda, &batch.indices, &batch.labels, &mut rng)?;
                trace_mining(decisions, &m, miner);
                (log.init_pos, log.selected_pos) = (m.init, m.selected);
                (log.hard_neg, log.random_neg) = (m.hard, m.random);
                (m.indices, m.labels)
            }
            _ => {
                let mi = sample_v1(
                    &self.pool,
                    &self.da,
                    &batch.indices,
                    x.potential_positive,
                    x.get_size,
                    &mut rng,
                )?;
                log.random_neg = mi.len();
                let ml = vec![self.n as i64 + 1; mi.len()];
                (mi, ml)
            }
        };
        log.memory_size = indices.len();
        Ok(Some(MemorySample { indices, labels }))
    }

    /// The contrastive loss of F against the sampled DA-bank rows (memory mode, spec 4.6);
    /// adds its gradient, weighted by `XBM.MEMORY_LOSS_WEIGHT`, to `grad`.
    fn memory_loss(
        &self,
        f: &Described,
        batch: &Batch,
        sample: &MemorySample,
        grad: &mut [f32],
    ) -> Result<LossOut> {
        let _r = range("memory loss");
        if sample.indices.is_empty() {
            return Ok(NO_LOSS);
        }
        let (be, d) = (self.be, self.d);
        let mem = self.da.gather(be, &sample.indices)?;
        let mut d_mem = be.zeros(DType::F32, batch.indices.len() * d)?;
        let lm = contrastive_memory(
            be,
            &f.dev,
            &batch.labels,
            Memory {
                x: &mem,
                y: &sample.labels,
            },
            d,
            self.cfg.loss.contrastive_loss.margin,
            Some(&mut d_mem),
        )?;
        let wgt = self.cfg.xbm.memory_loss_weight;
        for (a, b) in grad.iter_mut().zip(be.download::<f32>(&d_mem)?) {
            *a += wgt * b;
        }
        Ok(lm)
    }

    /// One backward pass of `grad` (the gradient of the step's loss with respect to this
    /// rank's rows of F) through the network, into freshly zeroed parameter gradients.
    fn backward(&mut self, grad: &[f32]) -> Result<()> {
        let _r = range("backward");
        let be = self.be;
        self.opt.zero_grads(be, &mut self.net)?;
        let gb = be.upload(grad)?;
        self.net.backward(be, &gb)
    }

    /// Sums the parameter gradients over the ranks (each back-propagated its rows of one loss,
    /// so the sum is the whole batch's gradient), before the clip reads their norm.
    fn sum_gradients_over_ranks(&mut self) -> Result<()> {
        let _r = range("all-reduce");
        let mut grads: Vec<&mut Buf> = self
            .net
            .params_mut()
            .into_iter()
            .filter_map(|p| p.grad.as_mut())
            .collect();
        self.comm.all_reduce_bufs(self.be, &mut grads)
    }

    /// Rank 0's BatchNorm running statistics on every rank: only they were updated from the
    /// batch's first chunk, as DataParallel keeps its first replica's (spec G13).
    fn share_running_statistics(&mut self) -> Result<()> {
        let mut running: Vec<&mut Buf> = self
            .net
            .params_mut()
            .into_iter()
            .filter(|p| p.kind == ParamKind::Running)
            .map(|p| &mut p.value)
            .collect();
        self.comm.broadcast_bufs(self.be, &mut running, 0)
    }

    /// Clips the gradients (`SOLVER.GRAD_MAX_NORM`) and takes the optimiser's step at step
    /// `t`'s learning rate; the step counts as done from here.
    fn optimiser_step(&mut self, t: usize, log: &mut StepLog) -> Result<()> {
        let _r = range("optimiser");
        let be = self.be;
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
        Ok(())
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
