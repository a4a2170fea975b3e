//! Launchers for kernels/pool.cu (GeM).

use super::device::{Args, Launch};
use super::{int, CudaBackend};
use crate::backend::{Buf, Checked, Gem, Op, PoolOps};
use anyhow::Result;

const BWD_THREADS: u32 = 256;

impl PoolOps for CudaBackend {
    /// One warp per (n, c) row.
    fn gem_fwd(&self, x: &Buf, y: &mut Buf, s: Checked<Gem>) -> Result<()> {
        if s.rows == 0 {
            return Ok(());
        }
        let (rows, hw) = (int(s.rows, "GeM rows")?, int(s.hw, "GeM hw")?);
        int(s.rows * s.hw, "GeM elements")?;
        let cfg = Launch::warp_per_item(s.rows);
        let args = Args::new()
            .ptr(x.dev()?)
            .ptr(y.dev_mut()?)
            .i32(rows)
            .i32(hw)
            .f32(s.p)
            .f32(s.eps);
        // SAFETY: arguments match gem_fwd_<dtype>(x, y, rows, hw, p, eps); the shape was checked:
        // x holds rows*hw elements and y rows, of x's dtype.
        unsafe { self.launch(&Op::GemFwd.kernel(x.dtype()), cfg, args) }
    }

    /// Grid-stride, one thread per element.
    fn gem_bwd(&self, x: &Buf, y: &Buf, dy: &Buf, dx: &mut Buf, s: Checked<Gem>) -> Result<()> {
        let total = s.rows * s.hw;
        if total == 0 {
            return Ok(());
        }
        let (rows, hw) = (int(s.rows, "GeM rows")?, int(s.hw, "GeM hw")?);
        let blocks = total.div_ceil(BWD_THREADS as usize).min(65_535 * 8) as u32;
        let args = Args::new()
            .ptr(x.dev()?)
            .ptr(y.dev()?)
            .ptr(dy.dev()?)
            .ptr(dx.dev_mut()?)
            .i32(rows)
            .i32(hw)
            .f32(s.p)
            .f32(s.eps);
        // SAFETY: arguments match gem_bwd_<dtype>(x, y, dy, dx, rows, hw, p, eps); the shape was
        // checked: x, dx hold rows*hw elements and y, dy rows.
        unsafe {
            self.launch(
                &Op::GemBwd.kernel(x.dtype()),
                Launch::linear(blocks, BWD_THREADS),
                args,
            )
        }
    }
}
