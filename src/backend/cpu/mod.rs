//! The CPU backend: plain Rust, one file per kernel family with the same names as
//! `kernels/*.cu`. It is the oracle every CUDA kernel is tested against, and a real backend
//! for small runs (rayon over rows, matrixmultiply for GEMM).

pub mod gemm;
pub mod norm;
pub mod pool;

use super::{Backend, Buf, Gem, L2Norm, MatMul};
use anyhow::{bail, Result};
use cudarc::driver::DeviceRepr;

/// The CPU backend; stateless.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl CpuBackend {
    /// A CPU backend using all cores rayon sees.
    pub fn new() -> Self {
        CpuBackend
    }
}

fn host<T: DeviceRepr>(b: &Buf<T>) -> Result<&[T]> {
    match b {
        Buf::Host(v) => Ok(v),
        Buf::Device(_) => bail!("the CPU backend was given a CUDA buffer; download it first"),
    }
}

fn host_mut<T: DeviceRepr>(b: &mut Buf<T>) -> Result<&mut [T]> {
    match b {
        Buf::Host(v) => Ok(v),
        Buf::Device(_) => bail!("the CPU backend was given a CUDA buffer; download it first"),
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn describe(&self) -> String {
        format!("CPU, {} threads", rayon::current_num_threads())
    }

    fn zeros(&self, len: usize) -> Result<Buf<f32>> {
        Ok(Buf::Host(vec![0.0; len]))
    }

    fn upload(&self, data: &[f32]) -> Result<Buf<f32>> {
        Ok(Buf::Host(data.to_vec()))
    }

    fn download(&self, buf: &Buf<f32>) -> Result<Vec<f32>> {
        Ok(host(buf)?.to_vec())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn matmul(&self, a: &Buf<f32>, b: &Buf<f32>, c: &mut Buf<f32>, shape: MatMul) -> Result<()> {
        shape.check(a.len(), b.len(), c.len())?;
        gemm::matmul_f32(host(a)?, host(b)?, host_mut(c)?, shape);
        Ok(())
    }

    fn gem_fwd(&self, x: &Buf<f32>, y: &mut Buf<f32>, shape: Gem) -> Result<()> {
        shape.check(x.len(), y.len())?;
        pool::gem_fwd_f32(host(x)?, host_mut(y)?, shape);
        Ok(())
    }

    fn gem_bwd(
        &self,
        x: &Buf<f32>,
        y: &Buf<f32>,
        dy: &Buf<f32>,
        dx: &mut Buf<f32>,
        shape: Gem,
    ) -> Result<()> {
        shape.check(x.len(), y.len())?;
        shape.check(dx.len(), dy.len())?;
        pool::gem_bwd_f32(host(x)?, host(y)?, host(dy)?, host_mut(dx)?, shape);
        Ok(())
    }

    fn l2norm_fwd(&self, x: &Buf<f32>, y: &mut Buf<f32>, shape: L2Norm) -> Result<()> {
        shape.check(&[x.len(), y.len()])?;
        norm::l2norm_fwd_f32(host(x)?, host_mut(y)?, shape);
        Ok(())
    }

    fn l2norm_bwd(
        &self,
        x: &Buf<f32>,
        dy: &Buf<f32>,
        dx: &mut Buf<f32>,
        shape: L2Norm,
    ) -> Result<()> {
        shape.check(&[x.len(), dy.len(), dx.len()])?;
        norm::l2norm_bwd_f32(host(x)?, host(dy)?, host_mut(dx)?, shape);
        Ok(())
    }
}
