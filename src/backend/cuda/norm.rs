//! Launchers for kernels/norm.cu (row-wise L2 normalisation).

use super::{int, CudaBackend};
use crate::backend::L2Norm;
use anyhow::{Context, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

const WARPS_PER_BLOCK: u32 = 8;

fn row_per_warp(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((rows as u32).div_ceil(WARPS_PER_BLOCK), 1, 1),
        block_dim: (WARPS_PER_BLOCK * 32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One warp per row.
pub fn l2norm_fwd_f32(
    be: &CudaBackend,
    x: &CudaSlice<f32>,
    y: &mut CudaSlice<f32>,
    s: L2Norm,
) -> Result<()> {
    if s.rows == 0 || s.cols == 0 {
        return Ok(());
    }
    let f = be.function("norm", "l2norm_fwd_f32")?;
    let (rows, cols) = (int(s.rows, "L2 rows")?, int(s.cols, "L2 cols")?);
    let mut l = be.stream().launch_builder(&f);
    l.arg(x).arg(y).arg(&rows).arg(&cols).arg(&s.eps);
    // SAFETY: argument types and order match l2norm_fwd_f32; x and y hold rows*cols floats.
    unsafe { l.launch(row_per_warp(s.rows)) }.context("launch l2norm_fwd_f32")?;
    Ok(())
}

/// One warp per row.
pub fn l2norm_bwd_f32(
    be: &CudaBackend,
    x: &CudaSlice<f32>,
    dy: &CudaSlice<f32>,
    dx: &mut CudaSlice<f32>,
    s: L2Norm,
) -> Result<()> {
    if s.rows == 0 || s.cols == 0 {
        return Ok(());
    }
    let f = be.function("norm", "l2norm_bwd_f32")?;
    let (rows, cols) = (int(s.rows, "L2 rows")?, int(s.cols, "L2 cols")?);
    let mut l = be.stream().launch_builder(&f);
    l.arg(x).arg(dy).arg(dx).arg(&rows).arg(&cols).arg(&s.eps);
    // SAFETY: argument types and order match l2norm_bwd_f32; x, dy, dx hold rows*cols floats.
    unsafe { l.launch(row_per_warp(s.rows)) }.context("launch l2norm_bwd_f32")?;
    Ok(())
}
