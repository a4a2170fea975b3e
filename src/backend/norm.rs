//! Normalisation: row-wise L2 (descriptors) and BatchNorm fused with the activation after it,
//! forward and backward. Kernels in `kernels/norm.cu`.

use super::{check_len, not_implemented, same_dtype, Act, Backend, Buf, Checked, DType, Op};
use anyhow::{bail, Result};

/// L2 normalisation's floor on the norm, as torch.nn.functional.normalize (`1e-12`).
pub const L2_EPS: f32 = 1e-12;

/// Shape of a row-wise L2 normalisation of a `rows x cols` matrix.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct L2Norm {
    pub rows: usize,
    pub cols: usize,
    pub eps: f32,
}

impl L2Norm {
    /// `x / max(||x||, 1e-12)` per row.
    pub fn new(rows: usize, cols: usize) -> Self {
        L2Norm {
            rows,
            cols,
            eps: L2_EPS,
        }
    }

    fn check(self, bufs: &[&Buf]) -> Result<Checked<Self>> {
        check_len(&self, self.rows * self.cols, bufs)?;
        same_dtype(&self, bufs)?;
        Ok(Checked(self))
    }
}

/// Shape of a BatchNorm over an NCHW tensor `n x c x hw`, with an activation fused after it.
/// `ghost` splits the batch into that many contiguous chunks with their own statistics (spec G13:
/// the original's 4-GPU DataParallel); running statistics follow chunk 0 only, as DataParallel
/// keeps only replica 0's buffer updates. `ghost = 1` is plain BatchNorm. `y_nhwc`: y is
/// written channels-last (`n x hw x c`) for a convolution that reads it so
/// ([`ConvOps::reads_nhwc`](super::ConvOps::reads_nhwc)); `dx_nhwc`: the backward writes dx so,
/// for the convolution before it, whose backward reads its dy so
/// ([`ConvOps::reads_dy_nhwc`](super::ConvOps::reads_dy_nhwc)). Both for training with batch
/// statistics only, y without a residual; every other tensor (the residual's gradient too) stays
/// NCHW.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNorm {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
    pub eps: f32,
    pub momentum: f32,
    pub act: Act,
    pub ghost: usize,
    pub y_nhwc: bool,
    pub dx_nhwc: bool,
}

impl BatchNorm {
    /// PyTorch's defaults (momentum 0.1, one statistics group) with the model's `eps`.
    pub fn new(n: usize, c: usize, hw: usize, eps: f32, act: Act) -> Self {
        BatchNorm {
            n,
            c,
            hw,
            eps,
            momentum: 0.1,
            act,
            ghost: 1,
            y_nhwc: false,
            dx_nhwc: false,
        }
    }

    /// Checks the activation-sized buffers (`n*c*hw`, one dtype) and the per-channel ones (`c`,
    /// f32 whatever the activations are: parameters and statistics are master copies).
    pub(super) fn check(self, act: &[&Buf], chan: &[&Buf]) -> Result<Checked<Self>> {
        check_len(&self, self.n * self.c * self.hw, act)?;
        check_len(&self, self.c, chan)?;
        same_dtype(&self, act)?;
        all_f32(&self, chan)?;
        Ok(Checked(self))
    }

    /// Also checks what training-mode statistics need: whole chunks, more than one value per
    /// channel, `ghost x c` saved statistics.
    pub(crate) fn check_train(
        self,
        act: &[&Buf],
        chan: &[&Buf],
        saved: &[&Buf],
    ) -> Result<Checked<Self>> {
        let s = self.check(act, chan)?;
        if self.ghost == 0 || self.n % self.ghost != 0 {
            bail!(
                "batchnorm: batch {} does not split into {} equal statistics groups; use a batch size divisible by it",
                self.n,
                self.ghost
            );
        }
        if (self.n / self.ghost) * self.hw < 2 {
            bail!(
                "batchnorm in training mode needs more than 1 value per channel, got {} (batch {} / {} groups x {} positions)",
                (self.n / self.ghost) * self.hw,
                self.n,
                self.ghost,
                self.hw
            );
        }
        check_len(&self, self.ghost * self.c, saved)?;
        all_f32(&self, saved)?;
        Ok(s)
    }

    /// A channels-last y or dx is for training with batch statistics, y without a residual (the
    /// residual's tensors stay NCHW; a BatchNorm's y with one also feeds the next block's sum).
    pub(crate) fn check_layout(&self, residual: bool, batch_stats: bool) -> Result<()> {
        if (self.y_nhwc || self.dx_nhwc) && !batch_stats {
            bail!("{self:?}: a channels-last y or dx is for training with batch statistics only");
        }
        if self.y_nhwc && residual {
            bail!("{self:?}: a channels-last y is for a BatchNorm without a residual only");
        }
        Ok(())
    }
}

/// act'(y) of a training BatchNorm whose y had a residual added, one bit a value, as a forward
/// may keep it for the backward, which then reads it in place of y (16 times fewer bytes in bf16;
/// without a residual the kernels recompute y from x instead). Its layout is the backend's: CUDA
/// keeps one where y's vectors are 16 bytes (kernels/norm.cu, `act_mask_of`), the CPU none.
#[derive(Debug)]
pub struct ActMask {
    pub(crate) bits: Buf,
    /// A forward wrote `bits` for the shape it ran; reset before every training forward.
    pub(crate) kept: bool,
}

impl ActMask {
    /// No mask kept.
    pub fn new() -> Self {
        ActMask {
            bits: Buf::empty(DType::U8),
            kept: false,
        }
    }

    /// Whether the last training forward kept one.
    pub fn kept(&self) -> bool {
        self.kept
    }
}

impl Default for ActMask {
    fn default() -> Self {
        Self::new()
    }
}

fn all_f32(what: &dyn std::fmt::Debug, bufs: &[&Buf]) -> Result<()> {
    if let Some(b) = bufs.iter().find(|b| b.dtype() != DType::F32) {
        bail!(
            "{what:?}: parameters and statistics are f32, got a {} buffer",
            b.dtype()
        );
    }
    Ok(())
}

/// What a backend implements for this family.
pub trait NormOps {
    /// Row-wise L2 normalisation forward.
    fn l2norm_fwd(&self, _x: &Buf, _y: &mut Buf, _s: Checked<L2Norm>) -> Result<()> {
        Err(not_implemented(Op::L2normFwd))
    }
    /// Row-wise L2 normalisation backward: writes `dx` from the input `x` and `dy`.
    fn l2norm_bwd(&self, _x: &Buf, _dy: &Buf, _dx: &mut Buf, _s: Checked<L2Norm>) -> Result<()> {
        Err(not_implemented(Op::L2normBwd))
    }
    /// BatchNorm + activation forward with batch statistics (training mode); a backend may keep
    /// act'(y) in `mask` (setting `kept`) where a residual went into y.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_fwd_train(
        &self,
        _x: &Buf,
        _gamma: &Buf,
        _beta: &Buf,
        _running: (&mut Buf, &mut Buf),
        _saved: (&mut Buf, &mut Buf),
        _residual: Option<&Buf>,
        _y: &mut Buf,
        _mask: Option<&mut ActMask>,
        _s: Checked<BatchNorm>,
    ) -> Result<()> {
        Err(not_implemented(Op::BatchnormFwdTrain))
    }
    /// BatchNorm + activation forward with the running statistics (eval mode).
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_fwd_eval(
        &self,
        _x: &Buf,
        _gamma: &Buf,
        _beta: &Buf,
        _running_mean: &Buf,
        _running_var: &Buf,
        _residual: Option<&Buf>,
        _y: &mut Buf,
        _s: Checked<BatchNorm>,
    ) -> Result<()> {
        Err(not_implemented(Op::BatchnormFwdEval))
    }
    /// BatchNorm + activation backward after a training-mode forward; `params` = (gamma, beta);
    /// `mask`: the forward's, when it kept one (else None).
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_bwd(
        &self,
        _x: &Buf,
        _y: &Buf,
        _dy: &Buf,
        _params: (&Buf, &Buf),
        _saved: (&Buf, &Buf),
        _mask: Option<&ActMask>,
        _dx: &mut Buf,
        _dres: Option<&mut Buf>,
        _dparams: (&mut Buf, &mut Buf),
        _s: Checked<BatchNorm>,
    ) -> Result<()> {
        Err(not_implemented(Op::BatchnormBwd))
    }
    /// [`NormOps::batchnorm_bwd`]'s second pass alone, after the data gradient that wrote this
    /// BatchNorm's dy took the reduce pass in its epilogue
    /// (`Backend::conv2d_bwd_data_bn_sums`): `dz` = dy act'(y) as it wrote it, `sums` its
    /// partial sums and their runs per pair. Only a backend that fuses that pass has it.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_bwd_summed(
        &self,
        _x: &Buf,
        _dz: &Buf,
        _params: (&Buf, &Buf),
        _saved: (&Buf, &Buf),
        _sums: (&Buf, usize),
        _dx: &mut Buf,
        _dparams: (&mut Buf, &mut Buf),
        _s: Checked<BatchNorm>,
    ) -> Result<()> {
        Err(not_implemented(Op::BatchnormBwd))
    }
    /// BatchNorm + activation backward after an eval-mode forward (frozen statistics,
    /// `MODEL.BACKBONE.FREEZE_BN`): the normalisation is a per-channel affine map, so `dx =
    /// dz * gamma / sqrt(running_var + eps)`. The CPU twin and kernels/norm.cu have it.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_bwd_eval(
        &self,
        _x: &Buf,
        _y: &Buf,
        _dy: &Buf,
        _gamma: &Buf,
        _running: (&Buf, &Buf),
        _dx: &mut Buf,
        _dres: Option<&mut Buf>,
        _dparams: (&mut Buf, &mut Buf),
        _s: Checked<BatchNorm>,
    ) -> Result<()> {
        bail!("this backend has no backward for a frozen-statistics BatchNorm (MODEL.BACKBONE.FREEZE_BN = true); train with --device cpu or set FREEZE_BN = false")
    }
}

impl dyn Backend + '_ {
    /// Row-wise L2 normalisation forward.
    pub fn l2norm_fwd(&self, x: &Buf, y: &mut Buf, s: L2Norm) -> Result<()> {
        let s = s.check(&[x, y])?;
        self.require(Op::L2normFwd, x.dtype())?;
        self.norm_ops().l2norm_fwd(x, y, s)
    }

    /// Row-wise L2 normalisation backward: writes `dx` from the input `x` and `dy`.
    pub fn l2norm_bwd(&self, x: &Buf, dy: &Buf, dx: &mut Buf, s: L2Norm) -> Result<()> {
        let s = s.check(&[x, dy, dx])?;
        self.require(Op::L2normBwd, x.dtype())?;
        self.norm_ops().l2norm_bwd(x, dy, dx, s)
    }

    /// BatchNorm + activation forward with batch statistics: writes `y = act(bn(x) [+
    /// residual])`, saves each statistics group's mean and 1/sqrt(var+eps) (`ghost x c`) for
    /// backward, and updates the running mean / unbiased variance with the momentum. With a
    /// residual, `mask` may be kept for `batchnorm_bwd` ([`ActMask`]).
    #[allow(clippy::too_many_arguments)]
    pub fn batchnorm_fwd_train(
        &self,
        x: &Buf,
        gamma: &Buf,
        beta: &Buf,
        running: (&mut Buf, &mut Buf),
        saved: (&mut Buf, &mut Buf),
        residual: Option<&Buf>,
        y: &mut Buf,
        mut mask: Option<&mut ActMask>,
        s: BatchNorm,
    ) -> Result<()> {
        let s = s.check_train(
            &[&[x, &*y], residual.as_slice()].concat(),
            &[gamma, beta, running.0, running.1],
            &[saved.0, saved.1],
        )?;
        s.check_layout(residual.is_some(), true)?;
        self.require(Op::BatchnormFwdTrain, x.dtype())?;
        if let Some(m) = mask.as_deref_mut() {
            m.kept = false;
        }
        self.norm_ops()
            .batchnorm_fwd_train(x, gamma, beta, running, saved, residual, y, mask, s)
    }

    /// BatchNorm + activation forward with the running statistics (eval mode), with the
    /// residual added before the activation when given.
    #[allow(clippy::too_many_arguments)]
    pub fn batchnorm_fwd_eval(
        &self,
        x: &Buf,
        gamma: &Buf,
        beta: &Buf,
        running_mean: &Buf,
        running_var: &Buf,
        residual: Option<&Buf>,
        y: &mut Buf,
        s: BatchNorm,
    ) -> Result<()> {
        let s = s.check(
            &[&[x, &*y], residual.as_slice()].concat(),
            &[gamma, beta, running_mean, running_var],
        )?;
        s.check_layout(residual.is_some(), false)?;
        self.require(Op::BatchnormFwdEval, x.dtype())?;
        self.norm_ops().batchnorm_fwd_eval(
            x,
            gamma,
            beta,
            running_mean,
            running_var,
            residual,
            y,
            s,
        )
    }

    /// BatchNorm + activation backward after a training-mode forward: writes `dx` (and the
    /// residual's gradient `dres = dy * act'(y)` when asked), accumulates `dgamma` and `dbeta`.
    /// `y` is the forward output (for the activation's mask), `params` (gamma, beta) and `saved`
    /// the forward's: without a residual a backend may recompute y from x with them instead of
    /// reading it (the CUDA kernels do, bit for bit), with one it may read the forward's `mask`
    /// instead, where that kept one.
    #[allow(clippy::too_many_arguments)]
    pub fn batchnorm_bwd(
        &self,
        x: &Buf,
        y: &Buf,
        dy: &Buf,
        params: (&Buf, &Buf),
        saved: (&Buf, &Buf),
        mask: Option<&ActMask>,
        dx: &mut Buf,
        dres: Option<&mut Buf>,
        dparams: (&mut Buf, &mut Buf),
        s: BatchNorm,
    ) -> Result<()> {
        let s = s.check_train(
            &[&[x, y, dy, &*dx], dres.as_deref().as_slice()].concat(),
            &[params.0, params.1, dparams.0, dparams.1],
            &[saved.0, saved.1],
        )?;
        s.check_layout(dres.is_some(), true)?;
        self.require(Op::BatchnormBwd, x.dtype())?;
        let mask = mask.filter(|m| m.kept);
        self.norm_ops()
            .batchnorm_bwd(x, y, dy, params, saved, mask, dx, dres, dparams, s)
    }

    /// `Backend::batchnorm_bwd` of a BatchNorm whose reduce pass a data gradient took
    /// (`Backend::conv2d_bwd_data_bn_sums`): from x and the `dz` it wrote (dy act'(y); after a
    /// residual, the residual's gradient) and its `sums` (the partial-sum buffer and its runs per
    /// pair), `dx` and the parameter gradients, the same values up to the sums' order.
    #[allow(clippy::too_many_arguments)]
    pub fn batchnorm_bwd_summed(
        &self,
        x: &Buf,
        dz: &Buf,
        params: (&Buf, &Buf),
        saved: (&Buf, &Buf),
        sums: (&Buf, usize),
        dx: &mut Buf,
        dparams: (&mut Buf, &mut Buf),
        s: BatchNorm,
    ) -> Result<()> {
        let s = s.check_train(
            &[x, dz, &*dx],
            &[params.0, params.1, dparams.0, dparams.1],
            &[saved.0, saved.1],
        )?;
        // Only x and dz are read: y's layout (channels-last where no residual went into it) is
        // the forward's business.
        s.check_layout(false, true)?;
        let want = 2 * s.ghost * s.c * sums.1;
        if sums.0.dtype() != DType::F32 || sums.0.len() != want {
            bail!(
                "{:?}: the backward's partial sums hold {} {} values, {} runs a pair need {want} f32",
                *s,
                sums.0.len(),
                sums.0.dtype(),
                sums.1
            );
        }
        self.require(Op::BatchnormBwd, x.dtype())?;
        self.norm_ops()
            .batchnorm_bwd_summed(x, dz, params, saved, sums, dx, dparams, s)
    }

    /// BatchNorm + activation backward after an eval-mode forward whose gradient is wanted
    /// (frozen statistics): `dz = dy * act'(y)`, `dx = dz * gamma * invstd` with the running
    /// statistics, `dgamma += sum(dz * xh)`, `dbeta += sum(dz)`, `dres = dz` when asked.
    #[allow(clippy::too_many_arguments)]
    pub fn batchnorm_bwd_eval(
        &self,
        x: &Buf,
        y: &Buf,
        dy: &Buf,
        gamma: &Buf,
        running: (&Buf, &Buf),
        dx: &mut Buf,
        dres: Option<&mut Buf>,
        dparams: (&mut Buf, &mut Buf),
        s: BatchNorm,
    ) -> Result<()> {
        let s = s.check(
            &[&[x, y, dy, &*dx], dres.as_deref().as_slice()].concat(),
            &[gamma, running.0, running.1, dparams.0, dparams.1],
        )?;
        s.check_layout(dres.is_some(), false)?;
        self.require(Op::BatchnormBwd, x.dtype())?;
        self.norm_ops()
            .batchnorm_bwd_eval(x, y, dy, gamma, running, dx, dres, dparams, s)
    }
}
