//! Launcher for kernels/verify.cu: one block of 256 threads per pair.

use super::device::{Args, Launch};
use super::{int, CudaBackend};
use crate::backend::{Checked, Verify, VerifyFeatures, VerifyOps, VerifyOut};
use anyhow::Result;

const THREADS: u32 = 256;

impl VerifyOps for CudaBackend {
    fn verify(
        &self,
        f: &VerifyFeatures,
        pairs: &[[u32; 2]],
        out: &mut VerifyOut,
        s: Checked<Verify>,
    ) -> Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        let blocks = int(pairs.len(), "pairs")? as u32;
        let c = s.consts();
        let offsets = self.upload_indices(f.offsets)?;
        let pair_list: Vec<i32> = pairs.iter().flatten().map(|&i| i as i32).collect();
        let pair_list = self.upload_list(&pair_list)?;
        let args = Args::new()
            .ptr(f.desc.dev()?)
            .ptr(f.desc_scale.dev()?)
            .ptr(f.xy.dev()?)
            .ptr(&offsets)
            .ptr(&pair_list)
            .i32(int(s.dim, "descriptor length")?)
            .f32(s.min_similarity)
            .f32(c.ratio2)
            .f32(c.thr2)
            .f32(c.max_scale2)
            .i32(s.hypotheses as i32)
            .i64(s.seed as i64)
            .ptr(out.matches.dev_mut()?)
            .ptr(out.inliers.dev_mut()?)
            .ptr(out.model.dev_mut()?);
        // SAFETY: arguments match verify_i8(desc, desc_scale, xy, offsets, pairs, dim, min_sim,
        // ratio2, thr2, max_scale2, hypotheses, seed, matches, inliers, model); the shape was
        // checked: desc total*dim i8 with dim % 4 == 0 (rows 4-byte aligned in a device
        // allocation), offsets split the total rows with at most VERIFY_MAX_FEATURES per image,
        // every pair names an image, the outputs hold one (four for model) per pair.
        unsafe { self.launch("verify_i8", Launch::linear(blocks, THREADS), args) }
    }
}
