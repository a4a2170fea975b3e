//! Launchers for kernels/contrastive.cu.

use super::device::{Args, Launch};
use super::{int, CudaBackend};
use crate::backend::{Buf, Checked, Contrastive, ContrastiveOps, DType, Op};
use anyhow::Result;

impl ContrastiveOps for CudaBackend {
    /// One block per row.
    fn contrastive(
        &self,
        s: &Buf,
        y1: &Buf,
        y2: &Buf,
        grad: Option<&mut Buf>,
        stats: &mut Buf,
        shape: Checked<Contrastive>,
    ) -> Result<()> {
        if shape.n1 == 0 {
            return Ok(());
        }
        int(shape.n1 * shape.n2, "contrastive similarity block")?;
        let mut args = Args::new()
            .ptr(s.dev()?)
            .ptr(y1.dev()?)
            .ptr(y2.dev()?)
            .i32(int(shape.n2, "contrastive n2")?)
            .f32(shape.margin)
            .f32(shape.pos_th)
            .i32(shape.memory as i32)
            .f32(shape.inv_rows);
        args = match grad {
            Some(g) => args.ptr(g.dev_mut()?),
            None => args.null(),
        };
        let args = args.ptr(stats.dev_mut()?);
        let cfg = Launch::linear(int(shape.n1, "contrastive n1")? as u32, 256);
        // SAFETY: arguments match contrastive_f32(S, y1, y2, n2, margin, pos_th, memory,
        // inv_rows, grad, stats); the shape was checked: S (and grad) n1*n2 f32, y1 n1 and
        // y2 n2 i64, stats 3*n1 f32; one block per row.
        unsafe { self.launch(&Op::Contrastive.kernel(DType::F32), cfg, args) }
    }
}
