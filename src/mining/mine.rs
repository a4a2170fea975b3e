//! Offline boundaries, pseudo-positive mining (XBM v2, spec 4.5.0 and 4.5.2) and the base
//! stages' negatives-only memory sampling (XBM v1, spec 4.4).
//!
//! Every index set is a sorted, duplicate-free list of dataset indices (numpy's
//! `unique`/`setdiff1d` semantics). Deterministic choices where the original is not:
//! - duplicates across tuples (trap G7): when one index is an init (or selected) positive of
//!   several tuples, the **largest label wins**. The original's index assignment gives this in
//!   practice (tuples are processed in ascending label order, the last write survives); its
//!   comment calls the choice random.
//! - random negatives come from a seeded [`Rng`] (the original: numpy's global RNG; G25).
//! - deduplicated positives are listed in ascending index order (the original's order is
//!   torch-version dependent and not part of the contract).

use super::mode::{InitQuery, Mode};
use super::pool::CandidatePool;
use super::select::select;
use crate::backend::Backend;
use crate::memory::IndexedBank;
use crate::rng::Rng;
use anyhow::{bail, Result};
use std::collections::BTreeMap;

/// `XBM.POSITIVE_THRESH` of the GLDv2 impr config: offline similarity of an init positive.
pub const POSITIVE_THRESH: f32 = 0.75;
/// `XBM.NEGATIVE_THRESH` of the GLDv2 impr config: below it a neighbour is a hard negative.
pub const NEGATIVE_THRESH: f32 = 0.50;
/// `XBM.GET_SIZE`: memory features per step (before positives and hard negatives overflow it).
pub const GET_SIZE: usize = 100_000;
/// `XBM.POTENTIAL_POSITIVE` (v1): top neighbours of batch images kept out of the negatives.
pub const POTENTIAL_POSITIVE: usize = 50;

/// Per-image boundaries in the candidate pool from the **offline** similarities (trap G8):
/// columns `0..pb` are init positives, `pb..nb` candidates, `nb..k` hard negatives.
#[derive(Clone, Debug, PartialEq)]
pub struct Boundaries {
    /// 1 + the largest column with similarity >= the positive threshold (0 if none).
    pub pb: Vec<u32>,
    /// 1 + the largest column with similarity >= the negative threshold (0 if none).
    pub nb: Vec<u32>,
}

impl Boundaries {
    /// Boundaries of every row of `pool`; the *largest* qualifying column, as the original, so
    /// a row that is not exactly sorted still gets every qualifying column before it.
    pub fn new(pool: &CandidatePool, pos_thresh: f32, neg_thresh: f32) -> Boundaries {
        let last = |i: usize, th: f32| {
            pool.similarities(i)
                .iter()
                .rposition(|&s| s >= th)
                .map_or(0, |j| j as u32 + 1)
        };
        Boundaries {
            pb: (0..pool.n).map(|i| last(i, pos_thresh)).collect(),
            nb: (0..pool.n).map(|i| last(i, neg_thresh)).collect(),
        }
    }

    /// Init positives P0(i).
    pub fn init_positives<'p>(&self, pool: &'p CandidatePool, i: usize) -> &'p [u32] {
        &pool.neighbors(i)[..self.pb[i] as usize]
    }

    /// Candidates C(i) (empty when the negative boundary is not past the positive one).
    pub fn candidates<'p>(&self, pool: &'p CandidatePool, i: usize) -> &'p [u32] {
        let (p, n) = (self.pb[i] as usize, self.nb[i] as usize);
        &pool.neighbors(i)[p..n.max(p)]
    }

    /// Hard negatives N0(i).
    pub fn hard_negatives<'p>(&self, pool: &'p CandidatePool, i: usize) -> &'p [u32] {
        &pool.neighbors(i)[self.nb[i] as usize..]
    }
}

/// Settings of one v2 mining call.
#[derive(Clone, Debug)]
pub struct MineConfig {
    /// `XBM.CANDIDATE_MODE`.
    pub mode: Mode,
    /// `XBM.GET_SIZE`.
    pub get_size: usize,
    /// `XBM.USE_NEGATIVE` (false in INSTRE impr: no memory negatives at all).
    pub use_negative: bool,
}

/// What `mine_v2` returns: memory indices with their labels, positives first. The counts
/// split the list: `init`, then `selected` (the positives), then `hard`, then `random`.
#[derive(Clone, Debug, PartialEq)]
pub struct Mined {
    /// Memory rows to gather from the DA bank.
    pub indices: Vec<usize>,
    /// Their labels: a tuple label for positives, `N + 1` for negatives.
    pub labels: Vec<i64>,
    /// Init positives (deduplicated).
    pub init: usize,
    /// Selected pseudo-positives (deduplicated).
    pub selected: usize,
    /// Hard negatives (0 when negatives are off).
    pub hard: usize,
    /// Random negatives (0 when negatives are off).
    pub random: usize,
    /// For each selected pseudo-positive (`indices[init..init + selected]`): the mining
    /// iteration (1-based) that picked it and its score then (the decision log's record).
    pub selected_picks: Vec<(usize, f32)>,
}

impl Mined {
    /// Number of positives (`init + selected`).
    pub fn positives(&self) -> usize {
        self.init + self.selected
    }
}

/// Sorted unique union of lists.
fn union<'a>(lists: impl Iterator<Item = &'a [u32]>) -> Vec<usize> {
    let mut v: Vec<usize> = lists.flatten().map(|&j| j as usize).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// One label per index: the largest label wins (G7); output in ascending index order.
fn dedup_largest_label(pairs: impl Iterator<Item = (usize, i64)>) -> Vec<(usize, i64)> {
    let mut m: BTreeMap<usize, i64> = BTreeMap::new();
    for (j, t) in pairs {
        let e = m.entry(j).or_insert(t);
        *e = (*e).max(t);
    }
    m.into_iter().collect()
}

/// The v2 miner: the offline pool with its boundaries, and the mining settings.
#[derive(Clone, Debug)]
pub struct Miner {
    /// The candidate pool the stage was started with (`NEIGHBOR.SRC`).
    pub pool: CandidatePool,
    /// Its offline boundaries, computed once (G8).
    pub bounds: Boundaries,
    /// Mode, memory size, negatives on/off.
    pub cfg: MineConfig,
}

impl Miner {
    /// A miner over `pool` with boundaries at `pos_thresh` / `neg_thresh`.
    pub fn new(pool: CandidatePool, pos_thresh: f32, neg_thresh: f32, cfg: MineConfig) -> Miner {
        let bounds = Boundaries::new(&pool, pos_thresh, neg_thresh);
        Miner { pool, bounds, cfg }
    }

    /// Pseudo-positive mining of one step (XBMv2.get); see [`mine_v2`].
    pub fn mine(
        &self,
        be: &dyn Backend,
        noda: &IndexedBank,
        idx: &[usize],
        lab: &[i64],
        rng: &mut Rng,
    ) -> Result<Mined> {
        mine_v2(be, self, noda, idx, lab, rng)
    }
}

/// Pseudo-positive mining of one step (XBMv2.get). `idx`/`lab` are the batch's dataset indices
/// and labels after mini-batch selection; `noda` is the no-DA bank (its counter says which rows
/// are filled). The batch must already be written to the banks (trap G11).
pub fn mine_v2(
    be: &dyn Backend,
    miner: &Miner,
    noda: &IndexedBank,
    idx: &[usize],
    lab: &[i64],
    rng: &mut Rng,
) -> Result<Mined> {
    let (pool, bounds, cfg) = (&miner.pool, &miner.bounds, &miner.cfg);
    let n = pool.n;
    if idx.len() != lab.len() {
        bail!("mining: {} indices but {} labels", idx.len(), lab.len());
    }
    if noda.len() != n || bounds.pb.len() != n {
        bail!(
            "mining: candidate pool has {n} rows but the memory bank has {} and the boundaries {}; they must all be the dataset size",
            noda.len(),
            bounds.pb.len()
        );
    }
    if let Some(&bad) = idx.iter().find(|&&i| i >= n) {
        bail!("mining: batch index {bad} outside the dataset's {n} images");
    }
    // Tuples in ascending label order, members in batch order (anchor first).
    let mut tuples: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (&i, &t) in idx.iter().zip(lab) {
        if t > 0 {
            tuples.entry(t).or_default().push(i);
        }
    }
    let kept: Vec<usize> = idx
        .iter()
        .zip(lab)
        .filter(|(_, &t)| t > 0)
        .map(|(&i, _)| i)
        .collect();

    // Init positives: the tuple's P0 lists, minus the tuple's own members.
    let init = dedup_largest_label(tuples.iter().flat_map(|(&t, s)| {
        let mut own = s.clone();
        own.sort_unstable();
        union(s.iter().map(|&i| bounds.init_positives(pool, i)))
            .into_iter()
            .filter(move |j| own.binary_search(j).is_err())
            .map(move |j| (j, t))
    }));
    // Anchor-only init positives (used by `a+i` only), not minus the tuple's members.
    let anchor_init = if cfg.mode.init == InitQuery::AnchorAndInit {
        dedup_largest_label(tuples.iter().flat_map(|(&t, s)| {
            bounds
                .init_positives(pool, s[0])
                .iter()
                .map(move |&j| (j as usize, t))
        }))
    } else {
        Vec::new()
    };
    let mut is_pos = vec![false; n];
    for &(j, _) in &init {
        is_pos[j] = true;
    }

    // Hard negatives of every kept batch image, filled rows only, minus init positives.
    let hard_all: Vec<usize> = union(kept.iter().map(|&i| bounds.hard_negatives(pool, i)))
        .into_iter()
        .filter(|&j| noda.counter(j) >= 1 && !is_pos[j])
        .collect();

    // Selected pseudo-positives: iterative expansion over each tuple's candidates.
    let d = noda.dim();
    // (image, tuple label) -> (iteration, score) of every pick; one tuple picks an image once.
    let mut picks: BTreeMap<(usize, i64), (usize, f32)> = BTreeMap::new();
    for (&t, s) in &tuples {
        let cand: Vec<usize> = union(s.iter().map(|&i| bounds.candidates(pool, i)))
            .into_iter()
            .filter(|&j| !is_pos[j])
            .collect();
        if cand.is_empty() {
            continue;
        }
        let with_label = |list: &[(usize, i64)]| -> Vec<usize> {
            list.iter().filter(|e| e.1 == t).map(|e| e.0).collect()
        };
        let q_idx: Vec<usize> = match cfg.mode.init {
            InitQuery::BatchAndInit => s.iter().copied().chain(with_label(&init)).collect(),
            InitQuery::BatchOnly => s.clone(),
            InitQuery::AnchorAndInit => std::iter::once(s[0])
                .chain(with_label(&anchor_init))
                .collect(),
        };
        let q = noda.gather(be, &q_idx)?;
        let c = noda.gather(be, &cand)?;
        let sel = select(be, &cfg.mode, &q, &c, d)?;
        for (&p, &round) in sel.chosen.iter().zip(&sel.rounds) {
            picks.insert((cand[p], t), (round, sel.scores[round - 1][p]));
        }
    }
    let selected = dedup_largest_label(picks.keys().copied());
    for &(j, _) in &selected {
        is_pos[j] = true;
    }

    let selected_picks = selected.iter().map(|e| picks[e]).collect();
    let hard: Vec<usize> = hard_all.into_iter().filter(|&j| !is_pos[j]).collect();
    let (n_init, n_sel) = (init.len(), selected.len());
    let mut indices: Vec<usize> = init.iter().chain(&selected).map(|e| e.0).collect();
    let mut labels: Vec<i64> = init.iter().chain(&selected).map(|e| e.1).collect();
    let mut taken = is_pos;
    for &j in &hard {
        taken[j] = true;
    }
    let other: Vec<usize> = (0..n)
        .filter(|&j| noda.counter(j) >= 1 && !taken[j])
        .collect();
    let n_rand = cfg
        .get_size
        .saturating_sub(indices.len() + hard.len())
        .min(other.len());
    let (n_hard, n_random) = if cfg.use_negative {
        let rand = rng.sample(&other, n_rand);
        let neg = n as i64 + 1;
        indices.extend(&hard);
        indices.extend(&rand);
        labels.extend(std::iter::repeat_n(neg, hard.len() + rand.len()));
        (hard.len(), rand.len())
    } else {
        (0, 0)
    };
    Ok(Mined {
        indices,
        labels,
        init: n_init,
        selected: n_sel,
        hard: n_hard,
        random: n_random,
        selected_picks,
    })
}

/// The base stages' memory read (XBMv1.get): a random sample of up to `get_size` filled rows,
/// excluding the top-`potential_positive` neighbours of every batch image (not the batch images
/// themselves, G9). All of them are negatives (label `N + 1`).
pub fn sample_v1(
    pool: &CandidatePool,
    bank: &IndexedBank,
    idx: &[usize],
    potential_positive: usize,
    get_size: usize,
    rng: &mut Rng,
) -> Result<Vec<usize>> {
    if bank.len() != pool.n {
        bail!(
            "memory sampling: candidate pool has {} rows but the memory bank has {}",
            pool.n,
            bank.len()
        );
    }
    if let Some(&bad) = idx.iter().find(|&&i| i >= pool.n) {
        bail!(
            "memory sampling: batch index {bad} outside the dataset's {} images",
            pool.n
        );
    }
    let pp = potential_positive.min(pool.k);
    let mut excluded = vec![false; pool.n];
    for &i in idx {
        for &j in &pool.neighbors(i)[..pp] {
            excluded[j as usize] = true;
        }
    }
    let candidates: Vec<usize> = (0..pool.n)
        .filter(|&j| bank.counter(j) >= 1 && !excluded[j])
        .collect();
    Ok(rng.sample(&candidates, get_size))
}
