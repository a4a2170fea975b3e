//! 2-D convolution (NCHW, PyTorch's weight layout, groups incl. depthwise): forward, data and
//! weight gradients. Kernels to come in `kernels/conv.cu`.

use super::{
    check_dtypes, check_len, not_implemented, same_dtype, Act, ActMask, Backend, BatchNorm, Buf,
    Checked, DType, Op,
};
use anyhow::{bail, Result};

/// Spatial padding of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// The same `p` on every side (PyTorch's `padding=p`).
    Sym(usize),
    /// TensorFlow "SAME": `out = ceil(in / stride)`, total pad `max((out-1)*stride + k - in, 0)`,
    /// the smaller half on top / left. Depends on the input size, so it is resolved per shape.
    Same,
}

impl Padding {
    /// `(pad_before, out)` for one spatial dimension of size `len`.
    pub(crate) fn resolve(self, len: usize, k: usize, stride: usize) -> (usize, usize) {
        match self {
            Padding::Sym(p) => {
                let span = len + 2 * p;
                (
                    p,
                    if span >= k {
                        (span - k) / stride + 1
                    } else {
                        0
                    },
                )
            }
            Padding::Same => {
                let out = len.div_ceil(stride);
                let total = ((out.max(1) - 1) * stride + k).saturating_sub(len);
                (total / 2, out)
            }
        }
    }
}

/// Shape of a 2-D convolution without bias, NCHW input `n x c_in x h x w`, weight
/// `c_out x (c_in/groups) x kh x kw` (PyTorch layout), output `n x c_out x oh x ow`, dilation 1.
/// Bottom / right padding is implied by `oh` / `ow` (TF "SAME" pads asymmetrically).
/// `x_nhwc`: the input is channels-last instead (`n x h x w x c_in`), as a BatchNorm before it
/// wrote it for a backend that [reads it so](ConvOps::reads_nhwc); `dy_nhwc`: the output's
/// gradient is (`n x oh x ow x c_out`), as the BatchNorm after it wrote it
/// ([`ConvOps::reads_dy_nhwc`]); the weight, the output and dx stay as they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub oh: usize,
    pub ow: usize,
    pub groups: usize,
    pub x_nhwc: bool,
    pub dy_nhwc: bool,
}

impl Conv {
    /// A square `k x k` convolution; errors on sizes that give an empty output or channels not
    /// divisible by `groups`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        n: usize,
        c_in: usize,
        h: usize,
        w: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: Padding,
        groups: usize,
    ) -> Result<Self> {
        if stride == 0 || k == 0 || groups == 0 {
            bail!("conv: kernel {k}, stride {stride} and groups {groups} must all be positive");
        }
        if c_in % groups != 0 || c_out % groups != 0 {
            bail!("conv: channels {c_in} -> {c_out} are not divisible by groups = {groups}");
        }
        let (pad_top, oh) = padding.resolve(h, k, stride);
        let (pad_left, ow) = padding.resolve(w, k, stride);
        if oh == 0 || ow == 0 {
            bail!("conv: a {h}x{w} input is too small for a {k}x{k} kernel with {padding:?}; use larger images");
        }
        Ok(Conv {
            n,
            c_in,
            h,
            w,
            c_out,
            kh: k,
            kw: k,
            stride,
            pad_top,
            pad_left,
            oh,
            ow,
            groups,
            x_nhwc: false,
            dy_nhwc: false,
        })
    }

    /// The same convolution of a channels-last input (`x_nhwc`).
    pub fn nhwc_input(self, x_nhwc: bool) -> Self {
        Conv { x_nhwc, ..self }
    }

    /// The same convolution, its output's gradient channels-last (`dy_nhwc`).
    pub fn nhwc_grad(self, dy_nhwc: bool) -> Self {
        Conv { dy_nhwc, ..self }
    }

    /// Elements of the input, weight and output.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (
            self.n * self.c_in * self.h * self.w,
            self.c_out * (self.c_in / self.groups) * self.kh * self.kw,
            self.n * self.c_out * self.oh * self.ow,
        )
    }

    /// True for a depthwise convolution (one input and one output channel per group).
    pub fn is_depthwise(&self) -> bool {
        self.groups == self.c_in && self.groups == self.c_out
    }

    /// `x` input-sized, `w` weight-sized, `y` output-sized, one dtype.
    fn check(self, x: &Buf, w: &Buf, y: &Buf) -> Result<Checked<Self>> {
        self.check_sizes(x, w, y)?;
        same_dtype(&self, &[x, w, y])?;
        Ok(Checked(self))
    }

    /// As [`Conv::check`] for the weight gradient: `x` and `dy` share a dtype, and `dw` is f32
    /// whatever it is (the master gradient a bf16 network accumulates into).
    fn check_weight_grad(self, x: &Buf, dw: &Buf, dy: &Buf) -> Result<Checked<Self>> {
        self.check_sizes(x, dw, dy)?;
        same_dtype(&self, &[x, dy])?;
        check_dtypes(&self, &[(dw, DType::F32)])?;
        Ok(Checked(self))
    }

    fn check_sizes(&self, x: &Buf, w: &Buf, y: &Buf) -> Result<()> {
        let (ex, ew, ey) = self.sizes();
        check_len(self, ex, &[x])?;
        check_len(self, ew, &[w])?;
        check_len(self, ey, &[y])
    }
}

/// An eval-mode BatchNorm's per-channel tensors (f32), as a convolution that applies it in its
/// epilogue reads them: `y = act(gamma (z - mean) / sqrt(var + eps) + beta [+ residual])`.
#[derive(Clone, Copy)]
pub struct BnEvalParams<'a> {
    pub gamma: &'a Buf,
    pub beta: &'a Buf,
    pub mean: &'a Buf,
    pub var: &'a Buf,
}

/// A training-mode BatchNorm's tensors (f32), as [`ConvOps::conv2d_fwd_bn_train`] takes them:
/// gamma and beta, the running mean and variance it updates, the mean and 1/sqrt(var + eps) per
/// statistics group it saves for the backward, and where the backend may keep act'(y) after a
/// residual ([`ActMask`]).
pub struct BnTrainParams<'a> {
    pub gamma: &'a Buf,
    pub beta: &'a Buf,
    pub running: (&'a mut Buf, &'a mut Buf),
    pub saved: (&'a mut Buf, &'a mut Buf),
    pub mask: Option<&'a mut ActMask>,
}

/// What a data gradient that takes a training BatchNorm's backward reduce pass in its epilogue
/// reads of that BatchNorm, the one whose dy it writes (`Backend::conv2d_bwd_data_bn_sums`): its
/// input, gamma and beta, the forward's saved (mean, 1/sqrt(var + eps)) per statistics group, and
/// after a residual the act'(y) mask the forward kept (without one, y is recomputed from x).
#[derive(Clone, Copy)]
pub struct BnBwdSums<'a> {
    pub x: &'a Buf,
    pub params: (&'a Buf, &'a Buf),
    pub saved: (&'a Buf, &'a Buf),
    pub mask: Option<&'a ActMask>,
}

/// What a backend implements for this family.
pub trait ConvOps {
    /// Whether the convolution `s` reads a channels-last input (`Conv::x_nhwc`) in `dtype`
    /// without transposing it first (CUDA's channels-last kernels); a BatchNorm whose output is
    /// this convolution's input alone may then write it so.
    fn reads_nhwc(&self, _s: &Conv, _dtype: DType) -> bool {
        false
    }
    /// Whether both backward passes of `s` read a channels-last dy (`Conv::dy_nhwc`) in `dtype`
    /// without transposing it first; the BatchNorm after the convolution, whose dx is that dy
    /// alone, may then write it so.
    fn reads_dy_nhwc(&self, _s: &Conv, _dtype: DType) -> bool {
        false
    }
    /// The runs per (group, channel) of the partial sums that
    /// [`ConvOps::conv2d_bwd_data_bn_sums`] writes for `s` and `b` in `dtype`, or None where this
    /// backend does not fuse that BatchNorm's reduce pass into the data gradient.
    fn bn_sums_runs(&self, _s: &Conv, _b: &BatchNorm, _dtype: DType) -> Option<usize> {
        None
    }
    /// The data gradient (added onto `res`, where given) and then times act'(y) into `dz`, with
    /// the BatchNorm's backward sums of it into `partial` (`runs` a pair, from
    /// [`ConvOps::bn_sums_runs`]).
    #[allow(clippy::too_many_arguments)]
    fn conv2d_bwd_data_bn_sums(
        &self,
        _dy: &Buf,
        _w: &Buf,
        _res: Option<&Buf>,
        _dz: &mut Buf,
        _bn: BnBwdSums,
        _partial: &mut Buf,
        _s: Checked<Conv>,
        _b: Checked<BatchNorm>,
    ) -> Result<()> {
        Err(not_implemented(Op::Conv2dBwdData))
    }
    /// Convolution forward.
    fn conv2d_fwd(&self, _x: &Buf, _w: &Buf, _y: &mut Buf, _s: Checked<Conv>) -> Result<()> {
        Err(not_implemented(Op::Conv2dFwd))
    }
    /// Convolution data gradient.
    fn conv2d_bwd_data(&self, _dy: &Buf, _w: &Buf, _dx: &mut Buf, _s: Checked<Conv>) -> Result<()> {
        Err(not_implemented(Op::Conv2dBwdData))
    }
    /// Convolution data gradient added onto `dx`, rounded as `conv2d_bwd_data` into a buffer of
    /// dx's dtype and then `add_fwd` would round it.
    fn conv2d_bwd_data_add(
        &self,
        _dy: &Buf,
        _w: &Buf,
        _dx: &mut Buf,
        _s: Checked<Conv>,
    ) -> Result<()> {
        Err(not_implemented(Op::Conv2dBwdData))
    }
    /// Convolution forward and then eval-mode BatchNorm (+ residual, activation) in one kernel:
    /// bit for bit `conv2d_fwd` into a buffer of y's dtype and then `batchnorm_fwd_eval` into y.
    /// `Ok(false)` where the backend has no such kernel for the shape (nothing is written: the
    /// caller runs the two ops).
    #[allow(clippy::too_many_arguments)]
    fn conv2d_fwd_bn_eval(
        &self,
        _x: &Buf,
        _w: &Buf,
        _bn: BnEvalParams,
        _residual: Option<&Buf>,
        _y: &mut Buf,
        _s: Checked<Conv>,
        _b: Checked<BatchNorm>,
    ) -> Result<bool> {
        Ok(false)
    }
    /// Convolution forward into `z` whose epilogue also takes the BatchNorm statistics of z as
    /// stored, then training-mode BatchNorm (+ residual, activation) of z into y without reading
    /// z for its statistics: `conv2d_fwd` into z and then `batchnorm_fwd_train` into y, the
    /// statistics summed in another order. `Ok(false)` where the backend has no such kernel for
    /// the shape (nothing is written: the caller runs the two ops).
    #[allow(clippy::too_many_arguments)]
    fn conv2d_fwd_bn_train(
        &self,
        _x: &Buf,
        _w: &Buf,
        _z: &mut Buf,
        _bn: BnTrainParams,
        _residual: Option<&Buf>,
        _y: &mut Buf,
        _s: Checked<Conv>,
        _b: Checked<BatchNorm>,
    ) -> Result<bool> {
        Ok(false)
    }
    /// Convolution weight gradient (accumulates).
    fn conv2d_bwd_weight(
        &self,
        _x: &Buf,
        _dy: &Buf,
        _dw: &mut Buf,
        _s: Checked<Conv>,
    ) -> Result<()> {
        Err(not_implemented(Op::Conv2dBwdWeight))
    }
    /// Both backward passes: `conv2d_bwd_weight`, then with `dx` `conv2d_bwd_data` (or
    /// `conv2d_bwd_data_add` when `add`), the same values; a backend may share work between them.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_bwd(
        &self,
        x: &Buf,
        dy: &Buf,
        w: &Buf,
        dw: &mut Buf,
        dx: Option<&mut Buf>,
        add: bool,
        s: Checked<Conv>,
    ) -> Result<()> {
        bwd_by_passes(self, x, dy, w, dw, dx, add, s)
    }
}

/// [`ConvOps::conv2d_bwd`] as its two ops, for a backend (or a shape) that shares nothing
/// between them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn bwd_by_passes<O: ConvOps + ?Sized>(
    ops: &O,
    x: &Buf,
    dy: &Buf,
    w: &Buf,
    dw: &mut Buf,
    dx: Option<&mut Buf>,
    add: bool,
    s: Checked<Conv>,
) -> Result<()> {
    ops.conv2d_bwd_weight(x, dy, dw, s)?;
    match dx {
        Some(dx) if add => ops.conv2d_bwd_data_add(dy, w, dx, s),
        Some(dx) => ops.conv2d_bwd_data(dy, w, dx, s),
        None => Ok(()),
    }
}

impl dyn Backend + '_ {
    /// See [`ConvOps::reads_nhwc`].
    pub fn conv_reads_nhwc(&self, s: &Conv, dtype: DType) -> bool {
        self.conv_ops().reads_nhwc(s, dtype)
    }

    /// See [`ConvOps::reads_dy_nhwc`].
    pub fn conv_reads_dy_nhwc(&self, s: &Conv, dtype: DType) -> bool {
        self.conv_ops().reads_dy_nhwc(s, dtype)
    }

    /// Convolution forward: `y = conv(x, w)` (see [`Conv`]).
    pub fn conv2d_fwd(&self, x: &Buf, w: &Buf, y: &mut Buf, s: Conv) -> Result<()> {
        let s = s.check(x, w, y)?;
        self.require(Op::Conv2dFwd, x.dtype())?;
        self.conv_ops().conv2d_fwd(x, w, y, s)
    }

    /// `y = act(batchnorm_eval(conv(x, w)) [+ residual])` in one pass where the backend has a
    /// kernel for it (CUDA's, but for bf16's dense kernels over 8 x 8: the convolution's output
    /// is never stored); returns false, having written nothing, where it has none, and the caller runs
    /// `conv2d_fwd` and then `batchnorm_fwd_eval`, which give the same bits.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_fwd_bn_eval(
        &self,
        x: &Buf,
        w: &Buf,
        bn: BnEvalParams,
        residual: Option<&Buf>,
        y: &mut Buf,
        s: Conv,
        b: BatchNorm,
    ) -> Result<bool> {
        let s = s.check(x, w, y)?;
        fits_output(&s, &b)?;
        let b = b.check(
            &[&[&*y], residual.as_slice()].concat(),
            &[bn.gamma, bn.beta, bn.mean, bn.var],
        )?;
        b.check_layout(residual.is_some(), false)?;
        self.require(Op::Conv2dFwd, x.dtype())?;
        self.require(Op::BatchnormFwdEval, x.dtype())?;
        self.conv_ops()
            .conv2d_fwd_bn_eval(x, w, bn, residual, y, s, b)
    }

    /// `z = conv(x, w)` and `y = act(batchnorm_train(z) [+ residual])`, the batch statistics
    /// taken by the convolution's epilogue where the backend can (CUDA's tensor-core forwards:
    /// BatchNorm then reads z once, not twice); returns false, having written nothing, where it
    /// cannot, and the caller runs `conv2d_fwd` and then `batchnorm_fwd_train`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_fwd_bn_train(
        &self,
        x: &Buf,
        w: &Buf,
        z: &mut Buf,
        mut bn: BnTrainParams,
        residual: Option<&Buf>,
        y: &mut Buf,
        s: Conv,
        b: BatchNorm,
    ) -> Result<bool> {
        let s = s.check(x, w, z)?;
        fits_output(&s, &b)?;
        let b = b.check_train(
            &[&[&*z, &*y], residual.as_slice()].concat(),
            &[bn.gamma, bn.beta, &*bn.running.0, &*bn.running.1],
            &[&*bn.saved.0, &*bn.saved.1],
        )?;
        b.check_layout(residual.is_some(), true)?;
        self.require(Op::Conv2dFwd, x.dtype())?;
        self.require(Op::BatchnormFwdTrain, x.dtype())?;
        if let Some(m) = bn.mask.as_deref_mut() {
            m.kept = false;
        }
        self.conv_ops()
            .conv2d_fwd_bn_train(x, w, z, bn, residual, y, s, b)
    }

    /// A convolution's backward: `dw +=` the weight gradient from the forward's input `x` and
    /// `dy`, and with `dx` the data gradient written into it (or added onto it, `add`): the
    /// values of `conv2d_bwd_weight` and then `conv2d_bwd_data[_add]`, where CUDA's channels-last
    /// kernels transpose dy once for both.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_bwd(
        &self,
        x: &Buf,
        dy: &Buf,
        w: &Buf,
        dw: &mut Buf,
        dx: Option<&mut Buf>,
        add: bool,
        s: Conv,
    ) -> Result<()> {
        let checked = s.check_weight_grad(x, dw, dy)?;
        self.require(Op::Conv2dBwdWeight, x.dtype())?;
        if let Some(dx) = &dx {
            s.check(dx, w, dy)?;
            self.require(Op::Conv2dBwdData, dy.dtype())?;
        }
        self.conv_ops().conv2d_bwd(x, dy, w, dw, dx, add, checked)
    }

    /// Convolution data gradient: writes `dx` from `dy` and the weight.
    pub fn conv2d_bwd_data(&self, dy: &Buf, w: &Buf, dx: &mut Buf, s: Conv) -> Result<()> {
        let s = s.check(dx, w, dy)?;
        self.require(Op::Conv2dBwdData, dy.dtype())?;
        self.conv_ops().conv2d_bwd_data(dy, w, dx, s)
    }

    /// Convolution data gradient added onto what `dx` holds (a residual branch's gradient): the
    /// same values as `conv2d_bwd_data` into a buffer of dx's dtype and then `add_fwd` with dx,
    /// without the second pass over dx where the backend's kernels add it in their epilogue.
    pub fn conv2d_bwd_data_add(&self, dy: &Buf, w: &Buf, dx: &mut Buf, s: Conv) -> Result<()> {
        let s = s.check(dx, w, dy)?;
        self.require(Op::Conv2dBwdData, dy.dtype())?;
        self.conv_ops().conv2d_bwd_data_add(dy, w, dx, s)
    }

    /// The data gradient of a convolution whose input gradient is a training BatchNorm's dy, with
    /// that BatchNorm's backward reduce pass taken in the epilogue where the backend fuses them:
    /// `dz` = that dy times act'(y) (which `Backend::batchnorm_bwd_summed` then reads in place of
    /// dy), and per pixel run the sums (sum dz, sum dz xh) of each (group, channel) into `partial`
    /// (sized here). After a residual (ResNet's block output) the product is added onto what
    /// `res` holds (the residual branch's gradient, as `Backend::conv2d_bwd_data_add`), act' comes
    /// from the forward's mask and dz is the residual's gradient; without one (`res` None) act' is
    /// recomputed from x, as BatchNorm's own backward does. Returns the sums' runs a pair, or None,
    /// having done nothing, where the backend does not fuse this shape or, after a residual, the
    /// forward kept no mask or the activation is the identity: the caller then runs the data
    /// gradient and `batchnorm_bwd`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_bwd_data_bn_sums(
        &self,
        dy: &Buf,
        w: &Buf,
        res: Option<&Buf>,
        dz: &mut Buf,
        bn: BnBwdSums,
        partial: &mut Buf,
        s: Conv,
        b: BatchNorm,
    ) -> Result<Option<usize>> {
        if res.is_some() && (!bn.mask.is_some_and(|m| m.kept) || b.act == Act::Identity) {
            return Ok(None);
        }
        let Some(runs) = self.conv_ops().bn_sums_runs(&s, &b, dy.dtype()) else {
            return Ok(None);
        };
        if let Some(res) = res {
            s.check(res, w, dy)?;
        }
        let s = s.check(dz, w, dy)?;
        if (b.n, b.c, b.hw) != (s.n, s.c_in, s.h * s.w) {
            bail!(
                "conv data gradient + batchnorm sums: BatchNorm over {} x {} x {} does not fit the convolution's input {} x {} x {}x{}",
                b.n, b.c, b.hw, s.n, s.c_in, s.h, s.w
            );
        }
        let b = b.check_train(
            &[bn.x, &*dz],
            &[bn.params.0, bn.params.1],
            &[bn.saved.0, bn.saved.1],
        )?;
        self.require(Op::Conv2dBwdData, dy.dtype())?;
        self.ensure(partial, DType::F32, 2 * b.ghost * b.c * runs)?;
        self.conv_ops()
            .conv2d_bwd_data_bn_sums(dy, w, res, dz, bn, partial, s, b)?;
        Ok(Some(runs))
    }

    /// Convolution weight gradient: accumulates into `dw` (f32) from the input `x` and `dy`.
    pub fn conv2d_bwd_weight(&self, x: &Buf, dy: &Buf, dw: &mut Buf, s: Conv) -> Result<()> {
        let s = s.check_weight_grad(x, dw, dy)?;
        self.require(Op::Conv2dBwdWeight, x.dtype())?;
        self.conv_ops().conv2d_bwd_weight(x, dy, dw, s)
    }
}

/// A BatchNorm fused with a convolution normalises exactly the convolution's output.
fn fits_output(s: &Conv, b: &BatchNorm) -> Result<()> {
    if (b.n, b.c, b.hw) != (s.n, s.c_out, s.oh * s.ow) {
        bail!(
            "conv + batchnorm: BatchNorm over {} x {} x {} does not fit the convolution's output {} x {} x {}x{}",
            b.n, b.c, b.hw, s.n, s.c_out, s.oh, s.ow
        );
    }
    Ok(())
}
