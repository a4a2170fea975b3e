//! Elementwise ops: residual add, standalone activations, the images' conversion to the
//! network's input, and the f32 <-> bf16 cast of a mixed-precision network. Kernels in
//! `kernels/eltwise.cu`.

use super::{
    check_dtypes, check_len, not_implemented, same_dtype, Backend, Buf, Checked, DType, Op,
};
use anyhow::{bail, Result};

/// A pointwise activation, standalone or fused after BatchNorm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// No activation.
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)` (EfficientNet-Lite).
    Relu6,
}

impl Act {
    /// The kernels' code for it (`ActKind` in kernels/common.cuh).
    pub fn code(self) -> i32 {
        match self {
            Act::Identity => 0,
            Act::Relu => 1,
            Act::Relu6 => 2,
        }
    }
}

/// Shape of an elementwise op over `len` elements, with the activation it applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Eltwise {
    pub len: usize,
    pub act: Act,
}

impl Eltwise {
    fn check(self, bufs: &[&Buf]) -> Result<Checked<Self>> {
        check_len(&self, self.len, bufs)?;
        same_dtype(&self, bufs)?;
        Ok(Checked(self))
    }
}

/// `ToTensor` + `Normalize(mean, std)` of a batch: `n` RGB images of `h x w` as bytes (`n x h x
/// w x 3`, as decoded) into the network's `n x 3 x h x w` input, `(v / 255 - mean) / std` in f32,
/// or that rounded to bf16 (a bf16 network's input, as a cast after it rounds).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageToTensor {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl ImageToTensor {
    fn check(self, rgb: &Buf, out: &Buf) -> Result<Checked<Self>> {
        if self.std.iter().any(|&s| s <= 0.0 || !s.is_finite()) {
            bail!("{self:?}: std must be positive");
        }
        let len = self.n * 3 * self.h * self.w;
        if self.n > i32::MAX as usize || 3 * self.h * self.w > i32::MAX as usize {
            bail!("{self:?}: images of more than 2^31 values, or more than 2^31 of them");
        }
        check_len(&self, len, &[rgb, out])?;
        check_dtypes(&self, &[(rgb, DType::U8)])?;
        if !matches!(out.dtype(), DType::F32 | DType::BF16) {
            bail!("{self:?}: the tensor is {}, not f32 or bf16", out.dtype());
        }
        Ok(Checked(self))
    }
}

/// What a backend implements for this family.
pub trait EltwiseOps {
    /// `y = a + b`.
    fn add_fwd(&self, _a: &Buf, _b: &Buf, _y: &mut Buf, _s: Checked<Eltwise>) -> Result<()> {
        Err(not_implemented(Op::AddFwd))
    }
    /// `y = act(x)`.
    fn act_fwd(&self, _x: &Buf, _y: &mut Buf, _s: Checked<Eltwise>) -> Result<()> {
        Err(not_implemented(Op::ActFwd))
    }
    /// `dx = dy * act'(y)`.
    fn act_bwd(&self, _y: &Buf, _dy: &Buf, _dx: &mut Buf, _s: Checked<Eltwise>) -> Result<()> {
        Err(not_implemented(Op::ActBwd))
    }
    /// RGB bytes to the normalised NCHW input.
    fn image_to_tensor(
        &self,
        _rgb: &Buf,
        _out: &mut Buf,
        _s: Checked<ImageToTensor>,
    ) -> Result<()> {
        Err(not_implemented(Op::ImageToTensor))
    }
    /// `y = x` in the other float type: f32 rounded to bf16 (nearest even), or bf16 widened.
    fn cast(&self, _x: &Buf, _y: &mut Buf, _s: Checked<Eltwise>) -> Result<()> {
        Err(not_implemented(Op::Cast))
    }
}

impl dyn Backend + '_ {
    /// Elementwise `y = a + b` (residual connections, summing two gradient paths).
    pub fn add_fwd(&self, a: &Buf, b: &Buf, y: &mut Buf) -> Result<()> {
        let s = Eltwise {
            len: a.len(),
            act: Act::Identity,
        }
        .check(&[a, b, y])?;
        self.require(Op::AddFwd, a.dtype())?;
        self.eltwise_ops().add_fwd(a, b, y, s)
    }

    /// Activation forward `y = act(x)`.
    pub fn act_fwd(&self, x: &Buf, y: &mut Buf, act: Act) -> Result<()> {
        let s = Eltwise { len: x.len(), act }.check(&[x, y])?;
        self.require(Op::ActFwd, x.dtype())?;
        self.eltwise_ops().act_fwd(x, y, s)
    }

    /// RGB bytes (`n x h x w x 3`, u8) to the normalised `n x 3 x h x w` input, f32 or bf16 as
    /// `out` is: the upload is a quarter of the f32 tensor's, and a bf16 network needs no cast
    /// after it.
    pub fn image_to_tensor(&self, rgb: &Buf, out: &mut Buf, s: ImageToTensor) -> Result<()> {
        let s = s.check(rgb, out)?;
        self.require(Op::ImageToTensor, DType::U8)?;
        self.eltwise_ops().image_to_tensor(rgb, out, s)
    }

    /// `y = x` between f32 and bf16, either way: f32 is rounded to the nearest bf16 (ties to
    /// even; NaN stays NaN, overflow gives infinity), bf16 widens exactly. The kernel is named
    /// after the source (`cast_f32` writes bf16, `cast_bf16` writes f32).
    pub fn cast(&self, x: &Buf, y: &mut Buf) -> Result<()> {
        let s = Eltwise {
            len: x.len(),
            act: Act::Identity,
        };
        check_len(&s, s.len, &[x, y])?;
        match (x.dtype(), y.dtype()) {
            (DType::F32, DType::BF16) | (DType::BF16, DType::F32) => {}
            (a, b) => bail!("cast: {a} -> {b} is not a cast between f32 and bf16"),
        }
        self.require(Op::Cast, x.dtype())?;
        self.eltwise_ops().cast(x, y, Checked(s))
    }

    /// `x` as `dtype`: `x` itself when it already is, else cast into `tmp` (reallocated only
    /// when its length or type is not already right).
    pub fn cast_to<'a>(&self, x: &'a Buf, dtype: DType, tmp: &'a mut Buf) -> Result<&'a Buf> {
        if x.dtype() == dtype {
            return Ok(x);
        }
        self.ensure(tmp, dtype, x.len())?;
        self.cast(x, tmp)?;
        Ok(tmp)
    }

    /// `x` as `dtype`, taking `x` itself when it already is.
    pub fn into_dtype(&self, x: Buf, dtype: DType) -> Result<Buf> {
        if x.dtype() == dtype {
            return Ok(x);
        }
        let mut y = self.zeros(dtype, x.len())?;
        self.cast(&x, &mut y)?;
        Ok(y)
    }

    /// Activation backward from the forward output: `dx = dy * act'(y)`.
    pub fn act_bwd(&self, y: &Buf, dy: &Buf, dx: &mut Buf, act: Act) -> Result<()> {
        let s = Eltwise { len: y.len(), act }.check(&[y, dy, dx])?;
        self.require(Op::ActBwd, y.dtype())?;
        self.eltwise_ops().act_bwd(y, dy, dx, s)
    }
}
