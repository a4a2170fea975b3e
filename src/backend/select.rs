//! Exact top-k: the `k` best of each row of a score matrix, and the streamed nearest-neighbour
//! search behind candidate pools and ranking (similarity tiles and a running top-k per query,
//! the `nq x ndb` matrix never written). Order everywhere: score descending in IEEE total order
//! (+0 above -0; a NaN at the end its sign says), then index ascending; slots past the
//! candidates a row has hold `-inf` and `u32::MAX`. Kernels in
//! `kernels/select.cu`.

use super::{
    check_dtypes, check_len, not_implemented, same_dtype, Backend, Buf, Checked, DType, Op,
};
use anyhow::{bail, Result};

/// Most neighbours a GPU top-k keeps per row (`TOPK_MAX` in kernels/select.cu).
pub const TOPK_MAX: usize = 1024;

/// Shape of a row-wise top-k: `rows x n` f32 scores in, `rows x k` scores (f32) and column
/// indices (u32) out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopK {
    pub rows: usize,
    pub n: usize,
    pub k: usize,
}

impl TopK {
    pub(crate) fn check(self, scores: &Buf, val: &Buf, idx: &Buf) -> Result<Checked<Self>> {
        if self.k == 0 {
            bail!("top-k: k must be at least 1");
        }
        check_len(&self, self.rows * self.n, &[scores])?;
        check_len(&self, self.rows * self.k, &[val, idx])?;
        check_dtypes(
            &self,
            &[(scores, DType::F32), (val, DType::F32), (idx, DType::U32)],
        )?;
        Ok(Checked(self))
    }
}

/// Shape of a streamed exact inner-product search: the `k` best of `ndb` database rows for each
/// of `nq` queries, all of `dim`, scored `tile` database rows at a time. An optional i64 per
/// query names a database row to skip (negative: none), as a set searched against itself needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Knn {
    pub nq: usize,
    pub ndb: usize,
    pub dim: usize,
    pub k: usize,
    pub tile: usize,
}

impl Knn {
    fn check(
        self,
        q: &Buf,
        db: &Buf,
        exclude: Option<&Buf>,
        val: &Buf,
        idx: &Buf,
    ) -> Result<Checked<Self>> {
        if self.k == 0 || self.tile == 0 || self.dim == 0 {
            bail!("nearest neighbours {self:?}: k, tile and dim must be at least 1");
        }
        if self.ndb > u32::MAX as usize {
            bail!("nearest neighbours: {} database rows exceed the u32 index range; split the database", self.ndb);
        }
        check_len(&self, self.nq * self.dim, &[q])?;
        check_len(&self, self.ndb * self.dim, &[db])?;
        check_len(&self, self.nq * self.k, &[val, idx])?;
        same_dtype(&self, &[q, db])?;
        check_dtypes(&self, &[(val, DType::F32), (idx, DType::U32)])?;
        if let Some(x) = exclude {
            check_len(&self, self.nq, &[x])?;
            check_dtypes(&self, &[(x, DType::I64)])?;
        }
        Ok(Checked(self))
    }
}

/// What a backend implements for this family.
pub trait SelectOps {
    /// See [`TopK`].
    fn topk(&self, _scores: &Buf, _val: &mut Buf, _idx: &mut Buf, _s: Checked<TopK>) -> Result<()> {
        Err(not_implemented(Op::Topk))
    }
    /// See [`Knn`].
    fn knn(
        &self,
        _q: &Buf,
        _db: &Buf,
        _exclude: Option<&Buf>,
        _val: &mut Buf,
        _idx: &mut Buf,
        _s: Checked<Knn>,
    ) -> Result<()> {
        Err(not_implemented(Op::Knn))
    }
}

impl dyn Backend + '_ {
    /// The `k` best scores of each row, best first, with their column indices.
    pub fn topk(&self, scores: &Buf, val: &mut Buf, idx: &mut Buf, s: TopK) -> Result<()> {
        let s = s.check(scores, val, idx)?;
        self.require(Op::Topk, scores.dtype())?;
        self.select_ops().topk(scores, val, idx, s)
    }

    /// The `k` highest inner products of each query among the database rows, best first, with
    /// their row indices, skipping each query's `exclude` row.
    pub fn knn(
        &self,
        q: &Buf,
        db: &Buf,
        exclude: Option<&Buf>,
        val: &mut Buf,
        idx: &mut Buf,
        s: Knn,
    ) -> Result<()> {
        let s = s.check(q, db, exclude, val, idx)?;
        self.require(Op::Knn, q.dtype())?;
        self.select_ops().knn(q, db, exclude, val, idx, s)
    }
}
