//! BatchNorm2d with a fused activation: batch statistics and running averages in training,
//! running statistics in eval mode, and frozen running statistics in training when asked.

use super::maps::Out;
use super::{empty, ensure_len, ensure_like, Param, ParamKind};
use crate::backend::{
    Act, ActMask, Backend, BatchNorm, BnBwdSums, BnEvalParams, BnTrainParams, Buf, DType,
};
use anyhow::{anyhow, bail, Context, Result};

/// BatchNorm over channels of an NCHW tensor (`<name>.{weight,bias,running_mean,running_var}`,
/// PyTorch's names; `num_batches_tracked` is not kept: momentum is fixed, so it is unused).
pub struct BatchNorm2d {
    pub weight: Param,
    pub bias: Param,
    pub running_mean: Param,
    pub running_var: Param,
    pub eps: f32,
    /// PyTorch's momentum (weight of the new batch in the running averages).
    pub momentum: f32,
    pub act: Act,
    /// Statistics groups per batch (spec G13); 1 is plain BatchNorm.
    pub ghost: usize,
    /// Frozen statistics (`MODEL.BACKBONE.FREEZE_BN`): training forwards normalise with the
    /// running statistics and leave them unchanged; gamma and beta still train.
    pub frozen: bool,
    shape: Option<BatchNorm>,
    /// The last forward was a training forward (backward allowed).
    trained: bool,
    /// The last forward normalised with batch statistics (else with the running ones).
    batch_stats: bool,
    save_mean: Buf,
    save_invstd: Buf,
    /// Output of the last forward.
    pub y: Buf,
    /// Input gradient of the last backward.
    pub dx: Buf,
    /// The last forward added a residual: backward also writes its gradient into `dres`
    /// (unless the activation is the identity: then that gradient is `dy` itself).
    residual: bool,
    /// The residual's gradient of the last backward (after a [`BatchNorm2d::forward_add`] with
    /// an activation).
    pub dres: Buf,
    /// act'(y) of the last training forward with a residual, where the backend keeps it: the
    /// backward's reduce pass reads it in place of y.
    act_mask: ActMask,
    /// The backward's reduce pass was taken by the data gradient that wrote dy
    /// ([`BatchNorm2d::reduce_target`]): its runs a pair in `sums`, and dz in `dres` (after a
    /// residual) or where dy was.
    summed: Option<usize>,
    sums: Buf,
}

/// A BatchNorm's backward reduce pass as the data gradient that writes its dy takes it
/// (`Backend::conv2d_bwd_data_bn_sums`): what that reads of the BatchNorm, where dz and the sums
/// go, and where their runs are recorded for the backward. After a residual, dz (the residual's
/// gradient) goes to the BatchNorm's `dres` and the data gradient adds onto the residual branch's
/// gradient; without one (`dz` None) dz goes where the data gradient writes, the BatchNorm's dy.
pub(crate) struct ReduceTarget<'a> {
    pub bn: BnBwdSums<'a>,
    pub shape: BatchNorm,
    pub dz: Option<&'a mut Buf>,
    pub partial: &'a mut Buf,
    pub summed: &'a mut Option<usize>,
}

impl BatchNorm2d {
    /// gamma 1, beta 0, running mean 0 and variance 1, momentum 0.1 (PyTorch's init).
    pub fn new(be: &dyn Backend, name: &str, c: usize, eps: f32, act: Act) -> Result<Self> {
        let (ones, zeros) = (vec![1.0; c], vec![0.0; c]);
        let p = |suffix: &str, kind, v: &[f32]| {
            Param::new(be, format!("{name}.{suffix}"), &[c], kind, v)
        };
        Ok(BatchNorm2d {
            weight: p("weight", ParamKind::BnWeight, &ones)?,
            bias: p("bias", ParamKind::BnBias, &zeros)?,
            running_mean: p("running_mean", ParamKind::Running, &zeros)?,
            running_var: p("running_var", ParamKind::Running, &ones)?,
            eps,
            momentum: 0.1,
            act,
            ghost: 1,
            frozen: false,
            shape: None,
            trained: false,
            batch_stats: false,
            save_mean: empty(),
            save_invstd: empty(),
            y: empty(),
            dx: empty(),
            residual: false,
            dres: empty(),
            act_mask: ActMask::new(),
            summed: None,
            sums: Buf::empty(DType::F32),
        })
    }

    /// Channels.
    pub fn channels(&self) -> usize {
        self.weight.numel()
    }

    /// `y = act(bn(x))` over `n x c x hw`.
    pub fn forward(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        n: usize,
        hw: usize,
        train: bool,
    ) -> Result<()> {
        self.forward_add(be, x, None, n, hw, train)
    }

    /// `y = act(bn(x) + residual)`: a ResNet block's last BatchNorm, the add and the ReLU in
    /// one pass; backward then also gives the residual's gradient in [`BatchNorm2d::dres`]
    /// (with the identity activation, EfficientNet's projection, that gradient is `dy`).
    pub fn forward_add(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        residual: Option<&Buf>,
        n: usize,
        hw: usize,
        train: bool,
    ) -> Result<()> {
        self.forward_layout(be, x, residual, (n, hw), train, false)
    }

    /// [`BatchNorm2d::forward_add`], y written channels-last when `nhwc` is asked and the forward
    /// is a training one with batch statistics and no residual ([`BatchNorm2d::y_nhwc`] says
    /// which it was): for a convolution that reads its input so.
    pub fn forward_layout(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        residual: Option<&Buf>,
        (n, hw): (usize, usize),
        train: bool,
        nhwc: bool,
    ) -> Result<()> {
        let mut y = std::mem::replace(&mut self.y, empty());
        let s = self.layout_for(n, hw, train, residual.is_some(), nhwc);
        let done = self.forward_shape(be, x, residual, s, train, &mut y);
        self.y = y;
        done
    }

    /// [`BatchNorm2d::forward_add`] into `y` instead of [`BatchNorm2d::y`].
    pub(crate) fn forward_into(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        residual: Option<&Buf>,
        (n, hw): (usize, usize),
        train: bool,
        y: &mut dyn Out,
    ) -> Result<()> {
        self.forward_shape(be, x, residual, self.shape_for(n, hw), train, y)
    }

    fn forward_shape(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        residual: Option<&Buf>,
        s: BatchNorm,
        train: bool,
        y: &mut dyn Out,
    ) -> Result<()> {
        let (n, hw) = (s.n, s.hw);
        let y = y.sized(be, x.dtype(), n * s.c * hw)?;
        let name = &self.weight.name;
        let batch_stats = self.batch_stats_in(train);
        if batch_stats {
            ensure_len(be, &mut self.save_mean, s.ghost * s.c)?;
            ensure_len(be, &mut self.save_invstd, s.ghost * s.c)?;
            be.batchnorm_fwd_train(
                x,
                &self.weight.value,
                &self.bias.value,
                (&mut self.running_mean.value, &mut self.running_var.value),
                (&mut self.save_mean, &mut self.save_invstd),
                residual,
                y,
                Some(&mut self.act_mask),
                s,
            )
        } else {
            be.batchnorm_fwd_eval(
                x,
                &self.weight.value,
                &self.bias.value,
                &self.running_mean.value,
                &self.running_var.value,
                residual,
                y,
                s,
            )
        }
        .with_context(|| format!("forward of {name}"))?;
        self.ran(s, train, batch_stats, residual.is_some());
        Ok(())
    }

    /// The op shape over `n x c x hw` activations.
    pub(crate) fn shape_for(&self, n: usize, hw: usize) -> BatchNorm {
        BatchNorm {
            momentum: self.momentum,
            ghost: self.ghost,
            ..BatchNorm::new(n, self.channels(), hw, self.eps, self.act)
        }
    }

    /// [`BatchNorm2d::shape_for`], y channels-last where `nhwc` is asked and a training forward
    /// with batch statistics without a residual writes it.
    pub(crate) fn layout_for(
        &self,
        n: usize,
        hw: usize,
        train: bool,
        residual: bool,
        nhwc: bool,
    ) -> BatchNorm {
        BatchNorm {
            y_nhwc: nhwc && self.batch_stats_in(train) && !residual,
            ..self.shape_for(n, hw)
        }
    }

    /// Whether the last forward wrote y channels-last (`n x hw x c`).
    pub fn y_nhwc(&self) -> bool {
        self.shape.is_some_and(|s| s.y_nhwc)
    }

    /// The tensors an eval-mode forward reads, for a convolution that applies it in its epilogue.
    pub(crate) fn eval_params(&self) -> BnEvalParams<'_> {
        BnEvalParams {
            gamma: &self.weight.value,
            beta: &self.bias.value,
            mean: &self.running_mean.value,
            var: &self.running_var.value,
        }
    }

    /// Whether a training forward normalises with batch statistics (else with the running
    /// ones, frozen).
    pub(crate) fn batch_stats_in(&self, train: bool) -> bool {
        train && !self.frozen
    }

    /// The tensors a training forward with batch statistics over `s` reads and writes, its saved
    /// statistics sized, for a convolution that takes the statistics in its epilogue; and its
    /// output, sized `n x c x hw` of `dtype`.
    pub(crate) fn train_params(
        &mut self,
        be: &dyn Backend,
        s: &BatchNorm,
        dtype: DType,
    ) -> Result<(BnTrainParams<'_>, &mut Buf)> {
        ensure_len(be, &mut self.save_mean, s.ghost * s.c)?;
        ensure_len(be, &mut self.save_invstd, s.ghost * s.c)?;
        be.ensure(&mut self.y, dtype, s.n * s.c * s.hw)?;
        Ok((
            BnTrainParams {
                gamma: &self.weight.value,
                beta: &self.bias.value,
                running: (&mut self.running_mean.value, &mut self.running_var.value),
                saved: (&mut self.save_mean, &mut self.save_invstd),
                mask: Some(&mut self.act_mask),
            },
            &mut self.y,
        ))
    }

    /// Records a forward over `s` (by this layer, or by the convolution before it in its
    /// epilogue).
    pub(crate) fn ran(&mut self, s: BatchNorm, train: bool, batch_stats: bool, residual: bool) {
        self.shape = Some(s);
        self.trained = train;
        self.batch_stats = batch_stats;
        self.residual = residual && self.act != Act::Identity;
        self.summed = None;
    }

    /// The output y, and where a data gradient that writes this BatchNorm's dy may take the
    /// backward's reduce pass ([`ReduceTarget`]; `x` is this BatchNorm's input): after a training
    /// forward with batch statistics, without a residual or with one and a kept act' mask, else
    /// None. After a residual dres is sized for dz here.
    pub(crate) fn reduce_target<'a>(
        &'a mut self,
        be: &dyn Backend,
        x: &'a Buf,
    ) -> Result<(&'a Buf, Option<ReduceTarget<'a>>)> {
        let shape = match self.shape {
            Some(s)
                if self.trained && self.batch_stats && (!self.residual || self.act_mask.kept) =>
            {
                s
            }
            _ => return Ok((&self.y, None)),
        };
        let dz = if self.residual {
            ensure_like(be, &mut self.dres, x, shape.n * shape.c * shape.hw)?;
            Some(&mut self.dres)
        } else {
            None
        };
        let target = ReduceTarget {
            bn: BnBwdSums {
                x,
                params: (&self.weight.value, &self.bias.value),
                saved: (&self.save_mean, &self.save_invstd),
                mask: self.residual.then_some(&self.act_mask),
            },
            shape,
            dz,
            partial: &mut self.sums,
            summed: &mut self.summed,
        };
        Ok((&self.y, Some(target)))
    }

    /// From the forward's input `x` and `dy`: `dx = ...`, gamma / beta gradients `+=`.
    pub fn backward(&mut self, be: &dyn Backend, x: &Buf, dy: &Buf) -> Result<()> {
        self.backward_layout(be, x, dy, false).map(|_| ())
    }

    /// [`BatchNorm2d::backward`], dx written channels-last (`n x hw x c`) when `nhwc` is asked
    /// and the last forward was a training one with batch statistics (for a convolution before it
    /// whose backward reads its dy so; the residual's gradient stays NCHW); returns whether it
    /// was. Where the data gradient that wrote dy took the reduce pass
    /// (`BatchNorm2d::reduce_target`), `dy` holds dz instead, or after a residual is not read:
    /// dres holds dz.
    pub fn backward_layout(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        dy: &Buf,
        nhwc: bool,
    ) -> Result<bool> {
        let name = self.weight.name.clone();
        let s = self
            .shape
            .ok_or_else(|| anyhow!("backward of {name} before its forward"))?;
        let s = BatchNorm {
            dx_nhwc: nhwc && self.batch_stats,
            ..s
        };
        if !self.trained {
            bail!("backward of {name} after an eval-mode forward; call forward with train = true (a frozen BatchNorm then keeps its running statistics)");
        }
        ensure_like(be, &mut self.dx, x, s.n * s.c * s.hw)?;
        let summed = self.summed.take();
        if self.residual && summed.is_none() {
            ensure_like(be, &mut self.dres, dy, s.n * s.c * s.hw)?;
        }
        let dgamma = self
            .weight
            .grad
            .as_mut()
            .ok_or_else(|| anyhow!("{name} has no gradient"))?;
        let dbeta = self
            .bias
            .grad
            .as_mut()
            .ok_or_else(|| anyhow!("{name} bias has no gradient"))?;
        let params = (&self.weight.value, &self.bias.value);
        let saved = (&self.save_mean, &self.save_invstd);
        if let Some(runs) = summed {
            let sums = (&self.sums, runs);
            let dz = if self.residual { &self.dres } else { dy };
            be.batchnorm_bwd_summed(x, dz, params, saved, sums, &mut self.dx, (dgamma, dbeta), s)
        } else if self.batch_stats {
            let dres = self.residual.then_some(&mut self.dres);
            be.batchnorm_bwd(
                x,
                &self.y,
                dy,
                params,
                saved,
                Some(&self.act_mask),
                &mut self.dx,
                dres,
                (dgamma, dbeta),
                s,
            )
        } else {
            let dres = self.residual.then_some(&mut self.dres);
            be.batchnorm_bwd_eval(
                x,
                &self.y,
                dy,
                &self.weight.value,
                (&self.running_mean.value, &self.running_var.value),
                &mut self.dx,
                dres,
                (dgamma, dbeta),
                s,
            )
        }
        .with_context(|| format!("backward of {name}"))?;
        Ok(s.dx_nhwc)
    }

    /// weight, bias, running_mean, running_var (state_dict order).
    pub fn params(&self) -> Vec<&Param> {
        vec![
            &self.weight,
            &self.bias,
            &self.running_mean,
            &self.running_var,
        ]
    }

    /// Mutable twin of [`BatchNorm2d::params`].
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        vec![
            &mut self.weight,
            &mut self.bias,
            &mut self.running_mean,
            &mut self.running_var,
        ]
    }
}
