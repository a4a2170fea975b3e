//! Launchers for kernels/pool.cu (GeM).

use super::{int, CudaBackend};
use crate::backend::Gem;
use anyhow::{Context, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

const WARPS_PER_BLOCK: u32 = 8;
const BWD_THREADS: u32 = 256;

/// One warp per (n, c) row.
pub fn gem_fwd_f32(
    be: &CudaBackend,
    x: &CudaSlice<f32>,
    y: &mut CudaSlice<f32>,
    s: Gem,
) -> Result<()> {
    if s.rows == 0 {
        return Ok(());
    }
    let f = be.function("pool", "gem_fwd_f32")?;
    let (rows, hw) = (int(s.rows, "GeM rows")?, int(s.hw, "GeM hw")?);
    int(s.rows * s.hw, "GeM elements")?;
    let cfg = LaunchConfig {
        grid_dim: ((s.rows as u32).div_ceil(WARPS_PER_BLOCK), 1, 1),
        block_dim: (WARPS_PER_BLOCK * 32, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut l = be.stream().launch_builder(&f);
    l.arg(x).arg(y).arg(&rows).arg(&hw).arg(&s.p).arg(&s.eps);
    // SAFETY: argument types and order match gem_fwd_f32; x holds rows*hw, y holds rows floats.
    unsafe { l.launch(cfg) }.context("launch gem_fwd_f32")?;
    Ok(())
}

/// Grid-stride, one thread per element.
pub fn gem_bwd_f32(
    be: &CudaBackend,
    x: &CudaSlice<f32>,
    y: &CudaSlice<f32>,
    dy: &CudaSlice<f32>,
    dx: &mut CudaSlice<f32>,
    s: Gem,
) -> Result<()> {
    let total = s.rows * s.hw;
    if total == 0 {
        return Ok(());
    }
    let f = be.function("pool", "gem_bwd_f32")?;
    let (rows, hw) = (int(s.rows, "GeM rows")?, int(s.hw, "GeM hw")?);
    let blocks = total.div_ceil(BWD_THREADS as usize).min(65_535 * 8) as u32;
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BWD_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut l = be.stream().launch_builder(&f);
    l.arg(x)
        .arg(y)
        .arg(dy)
        .arg(dx)
        .arg(&rows)
        .arg(&hw)
        .arg(&s.p)
        .arg(&s.eps);
    // SAFETY: argument types and order match gem_bwd_f32; x, dx hold rows*hw and y, dy rows floats.
    unsafe { l.launch(cfg) }.context("launch gem_bwd_f32")?;
    Ok(())
}
