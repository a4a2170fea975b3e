//! Launchers for kernels/bank.cu.

use super::device::{Args, Launch};
use super::{int, CudaBackend};
use crate::backend::{BankOps, Buf, Checked, CopyRows, Op};
use anyhow::Result;

impl BankOps for CudaBackend {
    /// One warp per row moved; the index lists go up as i64.
    fn copy_rows(
        &self,
        src: &Buf,
        dst: &mut Buf,
        src_idx: &[usize],
        dst_idx: &[usize],
        s: Checked<CopyRows>,
    ) -> Result<()> {
        let count = src_idx.len();
        if count == 0 {
            return Ok(());
        }
        let (si, di) = (self.upload_indices(src_idx)?, self.upload_indices(dst_idx)?);
        let args = Args::new()
            .ptr(src.dev()?)
            .ptr(dst.dev_mut()?)
            .ptr(&si)
            .ptr(&di)
            .i32(int(count, "rows copied")?)
            .i32(int(s.dim, "row length")?);
        int(src.len().max(dst.len()), "bank elements")?;
        let cfg = Launch::warp_per_item(count);
        // SAFETY: arguments match copy_rows_<dtype>(src, dst, src_idx, dst_idx, count, dim); the
        // shape was checked: every index is below its buffer's rows, destinations distinct, and
        // both index lists hold `count` i64.
        unsafe { self.launch(&Op::CopyRows.kernel(src.dtype()), cfg, args) }
    }
}
