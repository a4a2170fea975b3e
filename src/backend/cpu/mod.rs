//! The CPU backend: plain Rust, one file per kernel family with the same names as
//! `kernels/*.cu`. It is the oracle every CUDA kernel is tested against, and a real backend
//! for small runs (rayon over rows, matrixmultiply for GEMM).

pub mod conv;
pub mod eltwise;
pub mod gemm;
pub mod norm;
pub mod pool;

use super::{check_same, Act, Backend, BatchNorm, Buf, Conv, Gem, L2Norm, MatMul, MaxPool};
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

    fn zero(&self, buf: &mut Buf<f32>) -> Result<()> {
        host_mut(buf)?.fill(0.0);
        Ok(())
    }

    fn upload_into(&self, data: &[f32], buf: &mut Buf<f32>) -> Result<()> {
        check_same("upload_into", &[data.len(), buf.len()])?;
        host_mut(buf)?.copy_from_slice(data);
        Ok(())
    }

    fn conv2d_fwd(&self, x: &Buf<f32>, w: &Buf<f32>, y: &mut Buf<f32>, s: Conv) -> Result<()> {
        s.check(x.len(), w.len(), y.len())?;
        conv::conv2d_fwd_f32(host(x)?, host(w)?, host_mut(y)?, s);
        Ok(())
    }

    fn conv2d_bwd_data(
        &self,
        dy: &Buf<f32>,
        w: &Buf<f32>,
        dx: &mut Buf<f32>,
        s: Conv,
    ) -> Result<()> {
        s.check(dx.len(), w.len(), dy.len())?;
        conv::conv2d_bwd_data_f32(host(dy)?, host(w)?, host_mut(dx)?, s);
        Ok(())
    }

    fn conv2d_bwd_weight(
        &self,
        x: &Buf<f32>,
        dy: &Buf<f32>,
        dw: &mut Buf<f32>,
        s: Conv,
    ) -> Result<()> {
        s.check(x.len(), dw.len(), dy.len())?;
        conv::conv2d_bwd_weight_f32(host(x)?, host(dy)?, host_mut(dw)?, s);
        Ok(())
    }

    fn batchnorm_fwd_train(
        &self,
        x: &Buf<f32>,
        gamma: &Buf<f32>,
        beta: &Buf<f32>,
        running: (&mut Buf<f32>, &mut Buf<f32>),
        saved: (&mut Buf<f32>, &mut Buf<f32>),
        y: &mut Buf<f32>,
        s: BatchNorm,
    ) -> Result<()> {
        s.check(
            &[x.len(), y.len()],
            &[gamma.len(), beta.len(), running.0.len(), running.1.len()],
        )?;
        s.check_train(&[saved.0.len(), saved.1.len()])?;
        norm::batchnorm_fwd_train_f32(
            host(x)?,
            host(gamma)?,
            host(beta)?,
            host_mut(running.0)?,
            host_mut(running.1)?,
            host_mut(saved.0)?,
            host_mut(saved.1)?,
            host_mut(y)?,
            s,
        );
        Ok(())
    }

    fn batchnorm_fwd_eval(
        &self,
        x: &Buf<f32>,
        gamma: &Buf<f32>,
        beta: &Buf<f32>,
        running_mean: &Buf<f32>,
        running_var: &Buf<f32>,
        y: &mut Buf<f32>,
        s: BatchNorm,
    ) -> Result<()> {
        s.check(
            &[x.len(), y.len()],
            &[
                gamma.len(),
                beta.len(),
                running_mean.len(),
                running_var.len(),
            ],
        )?;
        norm::batchnorm_fwd_eval_f32(
            host(x)?,
            host(gamma)?,
            host(beta)?,
            host(running_mean)?,
            host(running_var)?,
            host_mut(y)?,
            s,
        );
        Ok(())
    }

    fn batchnorm_bwd(
        &self,
        x: &Buf<f32>,
        y: &Buf<f32>,
        dy: &Buf<f32>,
        gamma: &Buf<f32>,
        saved: (&Buf<f32>, &Buf<f32>),
        dx: &mut Buf<f32>,
        dparams: (&mut Buf<f32>, &mut Buf<f32>),
        s: BatchNorm,
    ) -> Result<()> {
        s.check(
            &[x.len(), y.len(), dy.len(), dx.len()],
            &[gamma.len(), dparams.0.len(), dparams.1.len()],
        )?;
        s.check_train(&[saved.0.len(), saved.1.len()])?;
        norm::batchnorm_bwd_f32(
            host(x)?,
            host(y)?,
            host(dy)?,
            host(gamma)?,
            host(saved.0)?,
            host(saved.1)?,
            host_mut(dx)?,
            host_mut(dparams.0)?,
            host_mut(dparams.1)?,
            s,
        );
        Ok(())
    }

    fn maxpool_fwd(&self, x: &Buf<f32>, y: &mut Buf<f32>, s: MaxPool) -> Result<()> {
        s.check(&[x.len()], &[y.len()])?;
        pool::maxpool_fwd_f32(host(x)?, host_mut(y)?, s);
        Ok(())
    }

    fn maxpool_bwd(
        &self,
        x: &Buf<f32>,
        y: &Buf<f32>,
        dy: &Buf<f32>,
        dx: &mut Buf<f32>,
        s: MaxPool,
    ) -> Result<()> {
        s.check(&[x.len(), dx.len()], &[y.len(), dy.len()])?;
        // The CPU twin recomputes each window's argmax from x; y is for kernels that compare.
        pool::maxpool_bwd_f32(host(x)?, host(dy)?, host_mut(dx)?, s);
        Ok(())
    }

    fn add_fwd(&self, a: &Buf<f32>, b: &Buf<f32>, y: &mut Buf<f32>) -> Result<()> {
        check_same("add", &[a.len(), b.len(), y.len()])?;
        eltwise::add_fwd_f32(host(a)?, host(b)?, host_mut(y)?);
        Ok(())
    }

    fn act_fwd(&self, x: &Buf<f32>, y: &mut Buf<f32>, act: Act) -> Result<()> {
        check_same("activation forward", &[x.len(), y.len()])?;
        eltwise::act_fwd_f32(host(x)?, host_mut(y)?, act);
        Ok(())
    }

    fn act_bwd(&self, y: &Buf<f32>, dy: &Buf<f32>, dx: &mut Buf<f32>, act: Act) -> Result<()> {
        check_same("activation backward", &[y.len(), dy.len(), dx.len()])?;
        eltwise::act_bwd_f32(host(y)?, host(dy)?, host_mut(dx)?, act);
        Ok(())
    }
}
