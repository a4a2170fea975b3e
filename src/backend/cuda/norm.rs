//! Launchers for kernels/norm.cu (row-wise L2 normalisation).

use super::device::{Args, Launch};
use super::{int, CudaBackend};
use crate::backend::{Buf, Checked, L2Norm, NormOps, Op};
use anyhow::Result;

impl NormOps for CudaBackend {
    /// One warp per row.
    fn l2norm_fwd(&self, x: &Buf, y: &mut Buf, s: Checked<L2Norm>) -> Result<()> {
        if s.rows == 0 || s.cols == 0 {
            return Ok(());
        }
        let (rows, cols) = (int(s.rows, "L2 rows")?, int(s.cols, "L2 cols")?);
        let args = Args::new()
            .ptr(x.dev()?)
            .ptr(y.dev_mut()?)
            .i32(rows)
            .i32(cols)
            .f32(s.eps);
        // SAFETY: arguments match l2norm_fwd_<dtype>(x, y, rows, cols, eps); the shape was
        // checked: x and y hold rows*cols elements.
        unsafe {
            self.launch(
                &Op::L2normFwd.kernel(x.dtype()),
                Launch::warp_per_item(s.rows),
                args,
            )
        }
    }

    /// One warp per row.
    fn l2norm_bwd(&self, x: &Buf, dy: &Buf, dx: &mut Buf, s: Checked<L2Norm>) -> Result<()> {
        if s.rows == 0 || s.cols == 0 {
            return Ok(());
        }
        let (rows, cols) = (int(s.rows, "L2 rows")?, int(s.cols, "L2 cols")?);
        let args = Args::new()
            .ptr(x.dev()?)
            .ptr(dy.dev()?)
            .ptr(dx.dev_mut()?)
            .i32(rows)
            .i32(cols)
            .f32(s.eps);
        // SAFETY: arguments match l2norm_bwd_<dtype>(x, dy, dx, rows, cols, eps); the shape was
        // checked: x, dy, dx hold rows*cols elements.
        unsafe {
            self.launch(
                &Op::L2normBwd.kernel(x.dtype()),
                Launch::warp_per_item(s.rows),
                args,
            )
        }
    }
}
