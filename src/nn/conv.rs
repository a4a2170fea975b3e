//! Conv2d (no bias) and the Conv -> BatchNorm (-> activation) unit both backbones are made of.

use super::batchnorm::{BatchNorm2d, ReduceTarget};
use super::maps::{Out, Slot};
use super::{empty, ensure_like, Param, ParamKind};
use crate::backend::{Act, Backend, Buf, Conv, DType, Padding};
use crate::rng::Rng;
use anyhow::{anyhow, Context, Result};

/// A 2-D convolution without bias, weight `c_out x c_in/groups x k x k` named `<name>.weight`.
pub struct Conv2d {
    pub weight: Param,
    pub c_in: usize,
    pub c_out: usize,
    pub k: usize,
    pub stride: usize,
    pub padding: Padding,
    pub groups: usize,
    shape: Option<Conv>,
    /// The weight in the activations' type when that is not f32 (bf16), rounded from the f32
    /// master copy at every forward; the backward's data gradient reads the same copy.
    weight_lp: Buf,
    /// Output of the last forward, `n x c_out x oh x ow`.
    pub y: Buf,
    /// Input gradient of the last backward.
    pub dx: Buf,
}

impl Conv2d {
    /// A convolution initialised as torchvision does: kaiming-normal, fan_out, ReLU gain
    /// (std = sqrt(2 / (c_out * k * k))).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        be: &dyn Backend,
        rng: &mut Rng,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: Padding,
        groups: usize,
    ) -> Result<Self> {
        let shape = [c_out, c_in / groups, k, k];
        let std = (2.0 / (c_out * k * k) as f32).sqrt();
        let init: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| rng.normal() * std)
            .collect();
        Ok(Conv2d {
            weight: Param::new(
                be,
                format!("{name}.weight"),
                &shape,
                ParamKind::Weight,
                &init,
            )?,
            c_in,
            c_out,
            k,
            stride,
            padding,
            groups,
            shape: None,
            weight_lp: empty(),
            y: empty(),
            dx: empty(),
        })
    }

    /// The op shape for an `n x c_in x h x w` input.
    pub fn shape_for(&self, n: usize, h: usize, w: usize) -> Result<Conv> {
        Conv::new(
            n,
            self.c_in,
            h,
            w,
            self.c_out,
            self.k,
            self.stride,
            self.padding,
            self.groups,
        )
        .with_context(|| format!("layer {}", self.weight.name))
    }

    /// `y = conv(x)`; returns the output's `(oh, ow)`.
    pub fn forward(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<(usize, usize)> {
        let mut y = std::mem::replace(&mut self.y, empty());
        let done = self.forward_into(be, x, (n, h, w), &mut y);
        self.y = y;
        done
    }

    /// [`Conv2d::forward`] into `y` instead of [`Conv2d::y`].
    pub(crate) fn forward_into(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        (n, h, w): (usize, usize, usize),
        y: &mut dyn Out,
    ) -> Result<(usize, usize)> {
        let s = self.shape_for(n, h, w)?;
        let w = be.cast_to(&self.weight.value, x.dtype(), &mut self.weight_lp)?;
        let y = y.sized(be, x.dtype(), s.sizes().2)?;
        be.conv2d_fwd(x, w, y, s)
            .with_context(|| format!("forward of {}", self.weight.name))?;
        self.shape = Some(s);
        Ok((s.oh, s.ow))
    }

    /// From the forward's input `x` and `dy`: `weight.grad += dW`, and `dx = ...` when
    /// `need_dx` (the first layer of a network skips it).
    pub fn backward(&mut self, be: &dyn Backend, x: &Buf, dy: &Buf, need_dx: bool) -> Result<()> {
        self.backward_layout(be, x, dy, need_dx, false)
    }

    /// [`Conv2d::backward`] of a channels-last `dy` when `dy_nhwc` (as the BatchNorm after the
    /// convolution wrote it, where `Backend::conv_reads_dy_nhwc` allows).
    pub(crate) fn backward_layout(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        dy: &Buf,
        need_dx: bool,
        dy_nhwc: bool,
    ) -> Result<()> {
        let mut dx = std::mem::replace(&mut self.dx, empty());
        let done = match self.shape {
            Some(s) if need_dx => ensure_like(be, &mut dx, dy, s.sizes().0)
                .and_then(|()| self.backward_into(be, x, dy, Some(&mut dx), false, dy_nhwc)),
            _ => self.backward_into(be, x, dy, None, false, dy_nhwc),
        };
        self.dx = dx;
        done
    }

    /// The input gradient of `dy` (channels-last when its flag says so) with the backward reduce
    /// pass of the BatchNorm whose dy it is (`t`) taken in the epilogue, where the backend fuses
    /// them; returns whether it did. After a residual (`t.dz` given) the gradient is added onto
    /// `res`, which is left as it was, and dz goes to that BatchNorm; without one (`res` None) dz
    /// is written to [`Conv2d::dx`].
    fn bwd_data_bn_sums(
        &mut self,
        be: &dyn Backend,
        (dy, dy_nhwc): (&Buf, bool),
        res: Option<&Buf>,
        t: ReduceTarget,
    ) -> Result<bool> {
        let Some(s) = self.shape.map(|s| s.nhwc_grad(dy_nhwc)) else {
            return Ok(false);
        };
        let mut own = std::mem::replace(&mut self.dx, empty());
        let dz = match (t.dz, res) {
            (Some(dz), Some(_)) => dz,
            (None, None) => {
                ensure_like(be, &mut own, dy, s.sizes().0)?;
                &mut own
            }
            _ => {
                self.dx = own;
                return Ok(false);
            }
        };
        // The data gradient reads the f32 master copy, or the low-precision copy (bf16) the
        // forward rounded from it.
        let w = match dy.dtype() {
            DType::F32 => &self.weight.value,
            _ => &self.weight_lp,
        };
        let done = be
            .conv2d_bwd_data_bn_sums(dy, w, res, dz, t.bn, t.partial, s, t.shape)
            .with_context(|| {
                format!(
                    "data gradient of {} with the next BatchNorm's sums",
                    self.weight.name
                )
            });
        self.dx = own;
        *t.summed = done?;
        Ok(t.summed.is_some())
    }

    /// `weight.grad += dW` from the forward's input and `dy`, and the input gradient into (or,
    /// `add`, onto) `dx` when given: one backend op, which may share work between the passes.
    fn backward_into(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        dy: &Buf,
        dx: Option<&mut Buf>,
        add: bool,
        dy_nhwc: bool,
    ) -> Result<()> {
        let s = self
            .shape
            .ok_or_else(|| anyhow!("backward of {} before its forward", self.weight.name))?
            .nhwc_grad(dy_nhwc);
        let name = &self.weight.name;
        let dw = self
            .weight
            .grad
            .as_mut()
            .ok_or_else(|| anyhow!("{name} has no gradient buffer (it is not trainable)"))?;
        // The data gradient reads the f32 master copy, or the low-precision copy (bf16) the
        // forward rounded from it.
        let w = match dy.dtype() {
            DType::F32 => &self.weight.value,
            _ => &self.weight_lp,
        };
        be.conv2d_bwd(x, dy, w, dw, dx, add, s)
            .with_context(|| format!("gradients of {name}"))
    }
}

/// Which of a [`ConvBn`]'s activations are channels-last: its input (as the BatchNorm before it
/// wrote it) and, asked for, its output (for a convolution after it that reads it so:
/// `Backend::conv_reads_nhwc`). Both NCHW by default.
#[derive(Clone, Copy, Debug, Default)]
pub struct Layout {
    pub x_nhwc: bool,
    pub y_nhwc: bool,
}

/// Conv -> BatchNorm with a fused activation: the unit of ResNet and EfficientNet.
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm2d,
    /// Output size of the last forward.
    pub out_hw: (usize, usize),
}

impl ConvBn {
    /// `conv_name` / `bn_name` are the torchvision-style prefixes (`layer1.0.conv1`, `layer1.0.bn1`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        be: &dyn Backend,
        rng: &mut Rng,
        (conv_name, bn_name): (&str, &str),
        c_in: usize,
        c_out: usize,
        (k, stride, padding, groups): (usize, usize, Padding, usize),
        eps: f32,
        act: Act,
    ) -> Result<Self> {
        Ok(ConvBn {
            conv: Conv2d::new(be, rng, conv_name, c_in, c_out, k, stride, padding, groups)?,
            bn: BatchNorm2d::new(be, bn_name, c_out, eps, act)?,
            out_hw: (0, 0),
        })
    }

    /// Output of the last forward (the BatchNorm's, after the activation).
    pub fn y(&self) -> &Buf {
        &self.bn.y
    }

    /// Input gradient of the last backward.
    pub fn dx(&self) -> &Buf {
        &self.conv.dx
    }

    /// Forward in training (batch statistics) or eval mode; returns `(oh, ow)`.
    pub fn forward(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        (n, h, w): (usize, usize, usize),
        train: bool,
    ) -> Result<(usize, usize)> {
        self.forward_add(be, x, None, (n, h, w), train)
    }

    /// Forward with `residual` added before the activation (a ResNet block's last unit); its
    /// gradient comes out of backward in `bn.dres`.
    pub fn forward_add(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        residual: Option<&Buf>,
        (n, h, w): (usize, usize, usize),
        train: bool,
    ) -> Result<(usize, usize)> {
        self.forward_layout(be, x, residual, (n, h, w), train, Layout::default())
    }

    /// [`ConvBn::forward_add`] of an input in `layout.x_nhwc`'s layout (channels-last as the
    /// BatchNorm before it wrote it: [`BatchNorm2d::y_nhwc`]), the output channels-last where
    /// `layout.y_nhwc` asks and the BatchNorm writes it so ([`BatchNorm2d::forward_layout`]).
    pub fn forward_layout(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        residual: Option<&Buf>,
        (n, h, w): (usize, usize, usize),
        train: bool,
        layout: Layout,
    ) -> Result<(usize, usize)> {
        let conv = &mut self.conv;
        let s = conv.shape_for(n, h, w)?.nhwc_input(layout.x_nhwc);
        let b = self
            .bn
            .layout_for(n, s.oh * s.ow, train, residual.is_some(), layout.y_nhwc);
        let wt = be.cast_to(&conv.weight.value, x.dtype(), &mut conv.weight_lp)?;
        be.ensure(&mut conv.y, x.dtype(), s.sizes().2)?;
        let name = &conv.weight.name;
        // In training with batch statistics, the convolution's epilogue takes them where the
        // backend can (the same outputs, the statistics summed in another order).
        let fused = self.bn.batch_stats_in(train) && {
            let (params, y) = self.bn.train_params(be, &b, x.dtype())?;
            be.conv2d_fwd_bn_train(x, wt, &mut conv.y, params, residual, y, s, b)
                .with_context(|| format!("forward of {name} and its BatchNorm"))?
        };
        if fused {
            self.bn.ran(b, true, true, residual.is_some());
        } else {
            be.conv2d_fwd(x, wt, &mut conv.y, s)
                .with_context(|| format!("forward of {name}"))?;
            self.bn
                .forward_layout(be, &conv.y, residual, (n, s.oh * s.ow), train, b.y_nhwc)?;
        }
        conv.shape = Some(s);
        self.out_hw = (s.oh, s.ow);
        Ok((s.oh, s.ow))
    }

    /// Eval-mode forward of an [`EvalMaps`](super::maps::EvalMaps) pass: the BatchNorm's output
    /// (with `residual` added) into `y`, by one kernel where the backend applies BatchNorm in the
    /// convolution's epilogue, else the convolution's output into `z` first (the same values).
    pub(crate) fn infer(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        residual: Option<&Buf>,
        (n, h, w): (usize, usize, usize),
        (z, y): (&mut Slot, &mut Slot),
    ) -> Result<(usize, usize)> {
        let conv = &mut self.conv;
        let s = conv.shape_for(n, h, w)?;
        let b = self.bn.shape_for(n, s.oh * s.ow);
        let wt = be.cast_to(&conv.weight.value, x.dtype(), &mut conv.weight_lp)?;
        let out = y.sized(be, x.dtype(), s.sizes().2)?;
        let fused = be
            .conv2d_fwd_bn_eval(x, wt, self.bn.eval_params(), residual, out, s, b)
            .with_context(|| format!("forward of {} and its BatchNorm", conv.weight.name))?;
        if fused {
            self.bn.ran(b, false, false, residual.is_some());
        } else {
            let z = z.sized(be, x.dtype(), s.sizes().2)?;
            be.conv2d_fwd(x, wt, z, s)
                .with_context(|| format!("forward of {}", conv.weight.name))?;
            self.bn
                .forward_into(be, z, residual, (n, s.oh * s.ow), false, y)?;
        }
        conv.shape = Some(s);
        self.out_hw = (s.oh, s.ow);
        Ok((s.oh, s.ow))
    }

    /// Backward from `dy` (gradient of [`ConvBn::y`]); `x` is the forward's input. BatchNorm's dx
    /// is the convolution's dy alone: written channels-last where the convolution's backward reads
    /// it so (no transpose of it then).
    pub fn backward(&mut self, be: &dyn Backend, x: &Buf, dy: &Buf, need_dx: bool) -> Result<()> {
        let nhwc = self.bn_backward(be, dy)?;
        self.conv.backward_layout(be, x, &self.bn.dx, need_dx, nhwc)
    }

    /// BatchNorm's backward, its dx channels-last where the convolution reads its dy so; returns
    /// whether it was.
    fn bn_backward(&mut self, be: &dyn Backend, dy: &Buf) -> Result<bool> {
        let nhwc = self
            .conv
            .shape
            .is_some_and(|s| be.conv_reads_dy_nhwc(&s, dy.dtype()));
        self.bn.backward_layout(be, &self.conv.y, dy, nhwc)
    }

    /// As [`ConvBn::backward`], the convolution's input gradient added onto `dx` (the gradient a
    /// residual branch already left there) instead of written to [`Conv2d::dx`]: one pass over
    /// it fewer than a separate add.
    pub fn backward_add(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        dy: &Buf,
        dx: &mut Buf,
    ) -> Result<()> {
        self.backward_then(be, x, dy, Some(dx), None)
    }

    /// [`ConvBn::backward`] (or [`ConvBn::backward_add`] onto `add_to`) where the input gradient
    /// is the dy of the BatchNorm before this unit (`then`: a ResNet block's last, whose output
    /// is this block's input, with `add_to` its residual branch's gradient; or the BatchNorm
    /// whose output this unit's convolution alone reads): the data gradient takes that
    /// BatchNorm's backward reduce pass in its epilogue where the backend fuses them. `add_to` is
    /// then left as it was, that BatchNorm holding dz and the sums instead (its backward does not
    /// read its dy); without `add_to`, [`Conv2d::dx`] holds dz.
    pub(crate) fn backward_then(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        dy: &Buf,
        add_to: Option<&mut Buf>,
        then: Option<ReduceTarget>,
    ) -> Result<()> {
        let nhwc = self.bn_backward(be, dy)?;
        if let Some(then) = then {
            let dy = (&self.bn.dx, nhwc);
            if self
                .conv
                .bwd_data_bn_sums(be, dy, add_to.as_deref(), then)?
            {
                return self
                    .conv
                    .backward_into(be, x, &self.bn.dx, None, false, nhwc);
            }
        }
        match add_to {
            Some(dx) => self
                .conv
                .backward_into(be, x, &self.bn.dx, Some(dx), true, nhwc),
            None => self.conv.backward_layout(be, x, &self.bn.dx, true, nhwc),
        }
    }

    /// Its output, and where the data gradient after it may take its BatchNorm's backward reduce
    /// pass ([`BatchNorm2d::reduce_target`]).
    pub(crate) fn output_and_reduce(
        &mut self,
        be: &dyn Backend,
    ) -> Result<(&Buf, Option<ReduceTarget<'_>>)> {
        self.bn.reduce_target(be, &self.conv.y)
    }

    /// The unit's tensors in state_dict order (conv weight, then BatchNorm's four).
    pub fn params(&self) -> Vec<&Param> {
        let mut v = vec![&self.conv.weight];
        v.extend(self.bn.params());
        v
    }

    /// Mutable twin of [`ConvBn::params`].
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = vec![&mut self.conv.weight];
        v.extend(self.bn.params_mut());
        v
    }
}
