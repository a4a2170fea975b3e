//! Launchers for kernels/norm.cu (row-wise L2 normalisation, BatchNorm + activation).

use super::device::{Args, Launch};
use super::work::Work;
use super::{int, CudaBackend};
use crate::backend::{BatchNorm, Buf, Checked, L2Norm, NormOps, Op};
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
            .f32(s.eps)
            .work(l2_work(&s, x, 2));
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
            .f32(s.eps)
            .work(l2_work(&s, x, 3));
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

    /// One block per channel (kernels/norm.cu says why).
    fn batchnorm_fwd_train(
        &self,
        x: &Buf,
        gamma: &Buf,
        beta: &Buf,
        running: (&mut Buf, &mut Buf),
        saved: (&mut Buf, &mut Buf),
        residual: Option<&Buf>,
        y: &mut Buf,
        s: Checked<BatchNorm>,
    ) -> Result<()> {
        let (n, c, hw) = bn_sizes(&s)?;
        if c == 0 || n == 0 {
            return Ok(());
        }
        let res = residual.map(|r| r.dev()).transpose()?;
        let args = Args::new()
            .ptr(x.dev()?)
            .ptr(gamma.dev()?)
            .ptr(beta.dev()?)
            .ptr(running.0.dev_mut()?)
            .ptr(running.1.dev_mut()?)
            .ptr(saved.0.dev_mut()?)
            .ptr(saved.1.dev_mut()?)
            .opt_ptr(res)
            .ptr(y.dev_mut()?)
            .i32(n)
            .i32(c)
            .i32(hw)
            .i32(s.ghost as i32)
            .f32(s.eps)
            .f32(s.momentum)
            .i32(s.act.code())
            .work(bn_work(&s, x, 2 + residual.is_some() as usize));
        // SAFETY: arguments match batchnorm_fwd_train_f32(x, gamma, beta, running_mean,
        // running_var, save_mean, save_invstd, res, y, n, C, hw, ghost, eps, momentum, act); the
        // shape was checked: x, y (and res) hold n*C*hw, the parameters and running statistics C, the saved
        // statistics ghost*C, and ghost divides n.
        unsafe {
            self.launch(
                &Op::BatchnormFwdTrain.kernel(x.dtype()),
                Launch::linear(c as u32, BN_THREADS),
                args,
            )
        }
    }

    /// Grid-stride, one thread per element.
    fn batchnorm_fwd_eval(
        &self,
        x: &Buf,
        gamma: &Buf,
        beta: &Buf,
        running_mean: &Buf,
        running_var: &Buf,
        residual: Option<&Buf>,
        y: &mut Buf,
        s: Checked<BatchNorm>,
    ) -> Result<()> {
        let (n, c, hw) = bn_sizes(&s)?;
        let total = s.n * s.c * s.hw;
        if total == 0 {
            return Ok(());
        }
        let res = residual.map(|r| r.dev()).transpose()?;
        let args = Args::new()
            .ptr(x.dev()?)
            .ptr(gamma.dev()?)
            .ptr(beta.dev()?)
            .ptr(running_mean.dev()?)
            .ptr(running_var.dev()?)
            .opt_ptr(res)
            .ptr(y.dev_mut()?)
            .i32(n)
            .i32(c)
            .i32(hw)
            .f32(s.eps)
            .i32(s.act.code())
            .work(bn_work(&s, x, 2 + residual.is_some() as usize));
        // SAFETY: arguments match batchnorm_fwd_eval_f32(x, gamma, beta, running_mean,
        // running_var, res, y, n, C, hw, eps, act); the shape was checked: x, y (and res) hold
        // n*C*hw and the
        // per-channel buffers C.
        unsafe {
            self.launch(
                &Op::BatchnormFwdEval.kernel(x.dtype()),
                Launch::grid_stride(total),
                args,
            )
        }
    }

    /// One block per channel, as the training forward.
    fn batchnorm_bwd(
        &self,
        x: &Buf,
        y: &Buf,
        dy: &Buf,
        gamma: &Buf,
        saved: (&Buf, &Buf),
        dx: &mut Buf,
        dres: Option<&mut Buf>,
        dparams: (&mut Buf, &mut Buf),
        s: Checked<BatchNorm>,
    ) -> Result<()> {
        let (n, c, hw) = bn_sizes(&s)?;
        if c == 0 || n == 0 {
            return Ok(());
        }
        // x, y and dy read; dx (and the residual's gradient) written.
        let passes = 4 + dres.is_some() as usize;
        let dres = dres.map(|r| r.dev_mut()).transpose()?;
        let args = Args::new()
            .ptr(x.dev()?)
            .ptr(y.dev()?)
            .ptr(dy.dev()?)
            .ptr(gamma.dev()?)
            .ptr(saved.0.dev()?)
            .ptr(saved.1.dev()?)
            .ptr(dx.dev_mut()?)
            .opt_ptr(dres.as_deref())
            .ptr(dparams.0.dev_mut()?)
            .ptr(dparams.1.dev_mut()?)
            .i32(n)
            .i32(c)
            .i32(hw)
            .i32(s.ghost as i32)
            .i32(s.act.code())
            .work(bn_work(&s, x, passes));
        // SAFETY: arguments match batchnorm_bwd_f32(x, y, dy, gamma, save_mean, save_invstd, dx,
        // dres, dgamma, dbeta, n, C, hw, ghost, act); the shape was checked as for the forward.
        unsafe {
            self.launch(
                &Op::BatchnormBwd.kernel(x.dtype()),
                Launch::linear(c as u32, BN_THREADS),
                args,
            )
        }
    }

    /// `batchnorm_bwd_eval_<dtype>` (frozen statistics): one block per channel, as the
    /// training backward.
    fn batchnorm_bwd_eval(
        &self,
        x: &Buf,
        y: &Buf,
        dy: &Buf,
        gamma: &Buf,
        running: (&Buf, &Buf),
        dx: &mut Buf,
        dres: Option<&mut Buf>,
        dparams: (&mut Buf, &mut Buf),
        s: Checked<BatchNorm>,
    ) -> Result<()> {
        let (n, c, hw) = bn_sizes(&s)?;
        if c == 0 || n == 0 {
            return Ok(());
        }
        // x, y and dy read; dx (and the residual's gradient) written.
        let passes = 4 + dres.is_some() as usize;
        let dres = dres.map(|r| r.dev_mut()).transpose()?;
        let args = Args::new()
            .ptr(x.dev()?)
            .ptr(y.dev()?)
            .ptr(dy.dev()?)
            .ptr(gamma.dev()?)
            .ptr(running.0.dev()?)
            .ptr(running.1.dev()?)
            .ptr(dx.dev_mut()?)
            .opt_ptr(dres.as_deref())
            .ptr(dparams.0.dev_mut()?)
            .ptr(dparams.1.dev_mut()?)
            .i32(n)
            .i32(c)
            .i32(hw)
            .f32(s.eps)
            .i32(s.act.code())
            .work(bn_work(&s, x, passes));
        // SAFETY: arguments match batchnorm_bwd_eval_f32(x, y, dy, gamma, running_mean,
        // running_var, dx, dres, dgamma, dbeta, n, C, hw, eps, act); the shape was checked by
        // the caller: activations n*C*hw, per-channel buffers C.
        unsafe {
            self.launch(
                &format!("batchnorm_bwd_eval_{}", x.dtype().name()),
                Launch::linear(c as u32, BN_THREADS),
                args,
            )
        }
    }
}

/// Threads of the one-block-per-channel BatchNorm kernels (`BN_THREADS` in kernels/norm.cu).
const BN_THREADS: u32 = 512;

/// `passes` over a `rows x cols` matrix of `x`'s dtype.
fn l2_work(s: &L2Norm, x: &Buf, passes: usize) -> Work {
    Work::traffic(
        passes * s.rows * s.cols * x.dtype().size(),
        format!("{}x{}", s.rows, s.cols),
    )
}

/// `passes` over the activations (in `x`'s dtype) and eight f32 per channel (weight, bias,
/// running statistics read and written, saved statistics or parameter gradients).
fn bn_work(s: &BatchNorm, x: &Buf, passes: usize) -> Work {
    Work::traffic(
        passes * s.n * s.c * s.hw * x.dtype().size() + 8 * 4 * s.c * s.ghost.max(1),
        format!("{}x{}x{}", s.n, s.c, s.hw),
    )
}

/// `(n, C, hw)` as the kernels' `int`s.
fn bn_sizes(s: &BatchNorm) -> Result<(i32, i32, i32)> {
    int(s.n * s.c * s.hw, "batchnorm elements")?;
    Ok((s.n as i32, s.c as i32, s.hw as i32))
}
