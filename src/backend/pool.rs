//! Pooling: GeM (InsCLR's descriptor pooling) and max pooling (ResNet's stem), forward and
//! backward. Kernels in `kernels/pool.cu`.

use super::{
    check_dtypes, check_len, not_implemented, same_dtype, Backend, Buf, Checked, DType, Op, Padding,
};
use anyhow::{bail, Result};

/// GeM's clamp, from the original (`eps = 1e-6`).
pub const GEM_EPS: f32 = 1e-6;

/// Shape of a GeM pooling: `rows = N*C` maps of `hw = H*W` values each, power `p`, clamp `eps`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gem {
    pub rows: usize,
    pub hw: usize,
    pub p: f32,
    pub eps: f32,
}

impl Gem {
    /// InsCLR's GeM: p = 3 fixed, eps = 1e-6.
    pub fn new(n: usize, c: usize, h: usize, w: usize) -> Self {
        Gem {
            rows: n * c,
            hw: h * w,
            p: 3.0,
            eps: GEM_EPS,
        }
    }

    /// `maps` are `rows x hw` (x, dx), `pooled` are `rows` (y, dy).
    fn check(self, maps: &[&Buf], pooled: &[&Buf]) -> Result<Checked<Self>> {
        if self.hw == 0 || self.p <= 0.0 || !self.p.is_finite() {
            bail!(
                "GeM: need hw > 0 and a finite p > 0, got hw={} p={}",
                self.hw,
                self.p
            );
        }
        check_len(&self, self.rows * self.hw, maps)?;
        check_len(&self, self.rows, pooled)?;
        same_dtype(&self, &[maps, pooled].concat())?;
        Ok(Checked(self))
    }
}

/// Shape of a max pooling over NCHW `n x c x h x w` (padding counts as -inf, floor mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub oh: usize,
    pub ow: usize,
}

impl MaxPool {
    /// A `k x k` window with `stride` and symmetric `pad` (ResNet's stem: 3, 2, 1).
    pub fn new(
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<Self> {
        if k == 0 || stride == 0 || pad >= k {
            bail!(
                "max pool: need k > 0, stride > 0 and pad < k, got k={k} stride={stride} pad={pad}"
            );
        }
        let (_, oh) = Padding::Sym(pad).resolve(h, k, stride);
        let (_, ow) = Padding::Sym(pad).resolve(w, k, stride);
        if oh == 0 || ow == 0 {
            bail!("max pool: a {h}x{w} map is too small for a {k}x{k} window; use larger images");
        }
        Ok(MaxPool {
            n,
            c,
            h,
            w,
            k,
            stride,
            pad,
            oh,
            ow,
        })
    }

    /// An argmax byte holds a place in the window: k * k <= 256.
    fn check_argmax(&self) -> Result<()> {
        if self.k > 16 {
            bail!("max pool: a {0}x{0} window's argmax does not fit a byte; training takes windows up to 16x16", self.k);
        }
        Ok(())
    }

    /// `x` are input-sized (x, dx), `y` output-sized (y, dy).
    fn check(self, x: &[&Buf], y: &[&Buf]) -> Result<Checked<Self>> {
        check_len(&self, self.n * self.c * self.h * self.w, x)?;
        check_len(&self, self.n * self.c * self.oh * self.ow, y)?;
        same_dtype(&self, &[x, y].concat())?;
        Ok(Checked(self))
    }
}

/// What a backend implements for this family.
pub trait PoolOps {
    /// GeM forward: `y[r] = (mean_hw max(x, eps)^p)^(1/p)`.
    fn gem_fwd(&self, _x: &Buf, _y: &mut Buf, _s: Checked<Gem>) -> Result<()> {
        Err(not_implemented(Op::GemFwd))
    }
    /// GeM backward: writes `dx` from `x`, the forward output `y` and `dy`.
    fn gem_bwd(
        &self,
        _x: &Buf,
        _y: &Buf,
        _dy: &Buf,
        _dx: &mut Buf,
        _s: Checked<Gem>,
    ) -> Result<()> {
        Err(not_implemented(Op::GemBwd))
    }
    /// Max pooling forward; with `argmax` also each output's first maximum's place in its
    /// window, `(iy - y0) k + (ix - x0)`, a byte each (u8, the output's size).
    fn maxpool_fwd(
        &self,
        _x: &Buf,
        _y: &mut Buf,
        _argmax: Option<&mut Buf>,
        _s: Checked<MaxPool>,
    ) -> Result<()> {
        Err(not_implemented(Op::MaxpoolFwd))
    }
    /// Max pooling backward: writes `dx`, routing each `dy` to its window's maximum as the
    /// forward's `argmax` recorded it.
    fn maxpool_bwd(
        &self,
        _argmax: &Buf,
        _dy: &Buf,
        _dx: &mut Buf,
        _s: Checked<MaxPool>,
    ) -> Result<()> {
        Err(not_implemented(Op::MaxpoolBwd))
    }
}

impl dyn Backend + '_ {
    /// GeM pooling forward: `y[r] = (mean_hw max(x, eps)^p)^(1/p)`.
    pub fn gem_fwd(&self, x: &Buf, y: &mut Buf, s: Gem) -> Result<()> {
        let s = s.check(&[x], &[y])?;
        self.require(Op::GemFwd, x.dtype())?;
        self.pool_ops().gem_fwd(x, y, s)
    }

    /// GeM pooling backward: writes `dx` from `x`, the forward output `y` and `dy`.
    pub fn gem_bwd(&self, x: &Buf, y: &Buf, dy: &Buf, dx: &mut Buf, s: Gem) -> Result<()> {
        let s = s.check(&[x, dx], &[y, dy])?;
        self.require(Op::GemBwd, x.dtype())?;
        self.pool_ops().gem_bwd(x, y, dy, dx, s)
    }

    /// Max pooling forward; a training forward also keeps `argmax` (sized here: a byte per
    /// output), which the backward reads instead of x.
    pub fn maxpool_fwd(
        &self,
        x: &Buf,
        y: &mut Buf,
        mut argmax: Option<&mut Buf>,
        s: MaxPool,
    ) -> Result<()> {
        let s = s.check(&[x], &[y])?;
        self.require(Op::MaxpoolFwd, x.dtype())?;
        if let Some(a) = argmax.as_deref_mut() {
            s.check_argmax()?;
            self.ensure(a, DType::U8, s.n * s.c * s.oh * s.ow)?;
        }
        self.pool_ops().maxpool_fwd(x, y, argmax, s)
    }

    /// Max pooling backward: writes `dx`, routing each `dy` to its window's first maximum, which
    /// the training forward kept in `argmax`.
    pub fn maxpool_bwd(&self, argmax: &Buf, dy: &Buf, dx: &mut Buf, s: MaxPool) -> Result<()> {
        let s = s.check(&[dx], &[dy])?;
        s.check_argmax()?;
        check_len(&*s, s.n * s.c * s.oh * s.ow, &[argmax])?;
        check_dtypes(&*s, &[(argmax, DType::U8)])?;
        self.require(Op::MaxpoolBwd, dy.dtype())?;
        self.pool_ops().maxpool_bwd(argmax, dy, dx, s)
    }
}
