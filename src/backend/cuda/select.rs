//! Launchers for kernels/select.cu: row-wise top-k, and the streamed search (our GEMM, f32 or
//! bf16 tensor cores, into an f32 `nq x tile` score block, then `topk_merge_f32` folds the block
//! into each query's running top-k, tile after tile; the `nq x ndb` matrix never exists).

use super::device::{Args, Launch};
use super::{int, CudaBackend};
use crate::backend::{Buf, Checked, DType, Knn, MatMul, Op, SelectOps, TopK, TOPK_MAX};
use anyhow::{bail, Result};

const THREADS: u32 = 256;

fn check_k(k: usize) -> Result<()> {
    if k > TOPK_MAX {
        bail!("the GPU top-k keeps at most {TOPK_MAX} per row, {k} requested; use --device cpu");
    }
    Ok(())
}

fn one_block_per_row(rows: usize) -> Result<Launch> {
    Ok(Launch::linear(int(rows, "top-k rows")? as u32, THREADS))
}

/// Longest row the sort-based baseline takes (TOPK_SORT_MAX in kernels/select.cu).
pub const TOPK_SORT_MAX: usize = 4096;

impl CudaBackend {
    /// [`TopK`] by sorting each whole row (rows of at most [`TOPK_SORT_MAX`]): the baseline
    /// `cargo bench` measures `topk` against. Same results.
    pub fn topk_by_sort(&self, scores: &Buf, val: &mut Buf, idx: &mut Buf, s: TopK) -> Result<()> {
        let s = *s.check(scores, val, idx)?;
        if s.n > TOPK_SORT_MAX {
            bail!(
                "the sort baseline takes rows of at most {TOPK_SORT_MAX}, got {}",
                s.n
            );
        }
        check_k(s.k)?;
        if s.rows == 0 {
            return Ok(());
        }
        let args = Args::new()
            .ptr(scores.dev()?)
            .i32(s.n as i32)
            .i32(s.k as i32)
            .ptr(val.dev_mut()?)
            .ptr(idx.dev_mut()?);
        // SAFETY: arguments match topk_sort_f32(scores, n, k, val, idx); the shape was checked:
        // scores rows*n f32 with n <= TOPK_SORT_MAX, val / idx rows*k; one block per row.
        unsafe { self.launch("topk_sort_f32", one_block_per_row(s.rows)?, args) }
    }
}

impl SelectOps for CudaBackend {
    fn topk(&self, scores: &Buf, val: &mut Buf, idx: &mut Buf, s: Checked<TopK>) -> Result<()> {
        check_k(s.k)?;
        if s.rows == 0 {
            return Ok(());
        }
        let len = self.layer().alloc(4 * s.rows)?;
        let args = Args::new()
            .ptr(scores.dev()?)
            .i32(int(s.n, "top-k n")?)
            .i32(s.k as i32)
            .ptr(val.dev_mut()?)
            .ptr(idx.dev_mut()?)
            .ptr(&len);
        int(s.rows * s.n, "top-k scores")?;
        // SAFETY: arguments match topk_f32(scores, n, k, val, idx, len); the shape was checked:
        // scores hold rows*n f32, val / idx rows*k f32 / u32, len rows u32; one block per row.
        unsafe {
            self.launch(
                &Op::Topk.kernel(DType::F32),
                one_block_per_row(s.rows)?,
                args,
            )
        }
    }

    fn knn(
        &self,
        q: &Buf,
        db: &Buf,
        exclude: Option<&Buf>,
        val: &mut Buf,
        idx: &mut Buf,
        s: Checked<Knn>,
    ) -> Result<()> {
        check_k(s.k)?;
        if s.nq == 0 {
            return Ok(());
        }
        if s.ndb == 0 {
            let v = vec![f32::NEG_INFINITY; s.nq * s.k];
            self.layer()
                .write(bytemuck::cast_slice(&v), val.dev_mut()?)?;
            let j = vec![u32::MAX; s.nq * s.k];
            return self.layer().write(bytemuck::cast_slice(&j), idx.dev_mut()?);
        }
        let tile = s.tile.min(s.ndb);
        int(s.nq * tile, "search score block")?;
        let block = self.layer().alloc(4 * s.nq * tile)?;
        let mut len = self.layer().alloc(4 * s.nq)?;
        self.layer().zero(&mut len)?;
        let dt = q.dtype();
        for j0 in (0..s.ndb).step_by(tile) {
            let nt = tile.min(s.ndb - j0);
            let shape = MatMul::new(s.nq, nt, s.dim).tb();
            // SAFETY: q holds nq*dim elements, db from row j0 holds nt*dim (j0 + nt <= ndb),
            // the block nq*tile >= nq*nt f32.
            unsafe {
                self.matmul_at(
                    (q.dev()?, 0),
                    (db.dev()?, j0 * s.dim * dt.size()),
                    (&block, 0),
                    shape,
                    dt,
                    DType::F32,
                )?
            };
            let mut args = Args::new().ptr(&block).i32(nt as i32).u32(j0 as u32);
            args = match exclude {
                Some(x) => args.ptr(x.dev()?),
                None => args.null(),
            };
            let args = args
                .i32(s.k as i32)
                .ptr(val.dev_mut()?)
                .ptr(idx.dev_mut()?)
                .ptr(&len);
            // SAFETY: arguments match topk_merge_f32(tile, n, base, exclude, k, val, idx, len);
            // the block holds nq rows of nt scores, exclude (when given) nq i64, val / idx nq*k,
            // len nq; one block per query.
            unsafe { self.launch("topk_merge_f32", one_block_per_row(s.nq)?, args)? };
        }
        Ok(())
    }
}
