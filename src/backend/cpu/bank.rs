//! Memory-bank row moves on the CPU: the twin of `kernels/bank.cu`.

use crate::backend::{Buf, Checked, CopyRows, DType};
use anyhow::Result;
use half::bf16;

/// `dst[dst_idx[t]] = src[src_idx[t]]`, rows of `dim`.
pub fn copy_rows<T: Copy>(
    src: &[T],
    dst: &mut [T],
    src_idx: &[usize],
    dst_idx: &[usize],
    dim: usize,
) {
    for (&s, &d) in src_idx.iter().zip(dst_idx) {
        dst[d * dim..(d + 1) * dim].copy_from_slice(&src[s * dim..(s + 1) * dim]);
    }
}

impl crate::backend::BankOps for super::CpuBackend {
    fn copy_rows(
        &self,
        src: &Buf,
        dst: &mut Buf,
        src_idx: &[usize],
        dst_idx: &[usize],
        s: Checked<CopyRows>,
    ) -> Result<()> {
        match src.dtype() {
            DType::BF16 => copy_rows(
                src.host::<bf16>()?,
                dst.host_mut()?,
                src_idx,
                dst_idx,
                s.dim,
            ),
            _ => copy_rows(src.host::<f32>()?, dst.host_mut()?, src_idx, dst_idx, s.dim),
        }
        Ok(())
    }
}
