//! Launchers for kernels/mining.cu: one thread per decision.

use super::device::{Args, Launch};
use super::{int, CudaBackend};
use crate::backend::{BatchSelect, Buf, Checked, MiningOps, MiningScore};
use anyhow::Result;

const THREADS: u32 = 128;

fn per_item(n: usize) -> Result<Launch> {
    Ok(Launch::linear(
        (int(n, "decisions")? as u32).div_ceil(THREADS),
        THREADS,
    ))
}

impl MiningOps for CudaBackend {
    fn batch_select(
        &self,
        g: &Buf,
        anchor_pos: &[usize],
        neighbor_pos: &[usize],
        keep: &mut Buf,
        s: Checked<BatchSelect>,
    ) -> Result<()> {
        if s.anchors == 0 {
            return Ok(());
        }
        let (ap, np) = (
            self.upload_indices(anchor_pos)?,
            self.upload_indices(neighbor_pos)?,
        );
        let args = Args::new()
            .ptr(g.dev()?)
            .i32(int(s.dim, "feature length")?)
            .ptr(&ap)
            .ptr(&np)
            .i32(int(s.anchors, "anchors")?)
            .i32(s.k as i32)
            .i32(s.dynamic as i32)
            .f32(s.thresh)
            .ptr(keep.dev_mut()?);
        // SAFETY: arguments match batch_select_f32(g, d, anchor_pos, neighbor_pos, anchors, k,
        // dynamic, thresh, keep); the shape was checked: every position is a row of g, k is at
        // most SELECT_MAX_K, keep holds anchors*k i32.
        unsafe { self.launch("batch_select_f32", per_item(s.anchors)?, args) }
    }

    fn mining_score(
        &self,
        s: &Buf,
        chosen: &[bool],
        score: &mut Buf,
        num: &mut Buf,
        shape: Checked<MiningScore>,
    ) -> Result<()> {
        if shape.nc == 0 {
            return Ok(());
        }
        let flags: Vec<i32> = chosen.iter().map(|&c| c as i32).collect();
        let chosen = self.upload_list(&flags)?;
        int(shape.nc * shape.nq, "candidate similarities")?;
        let args = Args::new()
            .ptr(s.dev()?)
            .i32(shape.nc as i32)
            .i32(int(shape.nq, "query set")?)
            .ptr(&chosen)
            .i32(shape.use_max as i32)
            .f32(shape.th)
            .ptr(score.dev_mut()?)
            .ptr(num.dev_mut()?);
        // SAFETY: arguments match mining_score_f32(S, nc, nq, chosen, use_max, th, score, num);
        // the shape was checked: S nc*nq f32, chosen nc i32, score nc f32, num nc i32.
        unsafe { self.launch("mining_score_f32", per_item(shape.nc)?, args) }
    }
}
