//! The method's per-step decisions: mini-batch selection (spec 4.5.1) and the query-set scores
//! of iterative mining (spec 4.5.3), with the same arithmetic on every backend so the integer
//! choices match exactly. Kernels in `kernels/mining.cu`.

use super::{check_dtypes, check_len, not_implemented, Backend, Buf, Checked, DType, Op};
use anyhow::{bail, Result};

/// Most neighbours per anchor the selection kernel handles (`SELECT_MAX_K`).
pub const SELECT_MAX_K: usize = 256;

/// Shape of a mini-batch selection over a batch's no-DA features (`rows x dim`): `anchors`
/// anchors with `k` neighbours each, kept when their similarity to the anchor is `>= thresh`
/// (or, `dynamic`, when its ratio to the anchor's best neighbour is).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchSelect {
    pub anchors: usize,
    pub k: usize,
    pub dim: usize,
    pub dynamic: bool,
    pub thresh: f32,
}

impl BatchSelect {
    fn check(
        self,
        g: &Buf,
        anchor_pos: &[usize],
        neighbor_pos: &[usize],
        keep: &Buf,
    ) -> Result<Checked<Self>> {
        if self.dim == 0 || g.len() % self.dim != 0 {
            bail!(
                "{self:?}: features of {} values are not whole rows",
                g.len()
            );
        }
        if self.k > SELECT_MAX_K {
            bail!(
                "mini-batch selection: {} neighbours per anchor, at most {SELECT_MAX_K}",
                self.k
            );
        }
        if anchor_pos.len() != self.anchors || neighbor_pos.len() != self.anchors * self.k {
            bail!(
                "{self:?}: {} anchor and {} neighbour positions",
                anchor_pos.len(),
                neighbor_pos.len()
            );
        }
        let rows = g.len() / self.dim;
        if let Some(&p) = anchor_pos.iter().chain(neighbor_pos).find(|&&p| p >= rows) {
            bail!("mini-batch selection: batch position {p} outside the {rows} feature rows");
        }
        check_len(&self, self.anchors * self.k, &[keep])?;
        check_dtypes(&self, &[(g, DType::F32), (keep, DType::I32)])?;
        Ok(Checked(self))
    }
}

/// Shape of the query-set scores of `nc` candidates from their `nc x nq` similarities to the
/// query set: the mean of the similarities `>= th` (`use_max`: the largest, below-`th` ones
/// counting 0), and how many passed; chosen candidates score 0 with count 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MiningScore {
    pub nc: usize,
    pub nq: usize,
    pub use_max: bool,
    pub th: f32,
}

impl MiningScore {
    fn check(self, s: &Buf, chosen: &[bool], score: &Buf, num: &Buf) -> Result<Checked<Self>> {
        check_len(&self, self.nc * self.nq, &[s])?;
        check_len(&self, self.nc, &[score, num])?;
        if chosen.len() != self.nc {
            bail!("{self:?}: {} chosen flags", chosen.len());
        }
        check_dtypes(
            &self,
            &[(s, DType::F32), (score, DType::F32), (num, DType::I32)],
        )?;
        Ok(Checked(self))
    }
}

/// What a backend implements for this family.
pub trait MiningOps {
    /// See [`BatchSelect`].
    fn batch_select(
        &self,
        _g: &Buf,
        _anchor_pos: &[usize],
        _neighbor_pos: &[usize],
        _keep: &mut Buf,
        _s: Checked<BatchSelect>,
    ) -> Result<()> {
        Err(not_implemented(Op::BatchSelect))
    }
    /// See [`MiningScore`].
    fn mining_score(
        &self,
        _s: &Buf,
        _chosen: &[bool],
        _score: &mut Buf,
        _num: &mut Buf,
        _shape: Checked<MiningScore>,
    ) -> Result<()> {
        Err(not_implemented(Op::MiningScore))
    }
}

impl dyn Backend + '_ {
    /// Keep flags (1 / 0, `anchors x k` i32) of every anchor's neighbours.
    pub fn batch_select(
        &self,
        g: &Buf,
        anchor_pos: &[usize],
        neighbor_pos: &[usize],
        keep: &mut Buf,
        s: BatchSelect,
    ) -> Result<()> {
        let s = s.check(g, anchor_pos, neighbor_pos, keep)?;
        self.require(Op::BatchSelect, g.dtype())?;
        self.mining_ops()
            .batch_select(g, anchor_pos, neighbor_pos, keep, s)
    }

    /// Query-set scores (f32) and passing counts (i32) of every candidate.
    pub fn mining_score(
        &self,
        s: &Buf,
        chosen: &[bool],
        score: &mut Buf,
        num: &mut Buf,
        shape: MiningScore,
    ) -> Result<()> {
        let shape = shape.check(s, chosen, score, num)?;
        self.require(Op::MiningScore, s.dtype())?;
        self.mining_ops().mining_score(s, chosen, score, num, shape)
    }
}
