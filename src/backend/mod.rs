//! The seam between the method and the hardware: every op the model and InsCLR need, written
//! once per backend. The CPU backend is the reference (and trains small jobs); the CUDA backend
//! launches the kernels in `kernels/*.cu`. Buffers are flat; shapes are passed to each op
//! (llm.c style), so an op's contract is its argument list.
//!
//! Gradient convention (as in llm.c): activation gradients are written with `=`; parameter
//! gradients accumulate with `+=` (through `beta = 1` in [`Backend::matmul`]).

pub mod cpu;
pub mod cuda;

use anyhow::{bail, Result};
use cudarc::driver::{CudaSlice, DeviceRepr};

pub use cpu::CpuBackend;
pub use cuda::CudaBackend;

/// GeM's clamp, from the original (`eps = 1e-6`).
pub const GEM_EPS: f32 = 1e-6;
/// L2 normalisation's floor on the norm, as torch.nn.functional.normalize (`1e-12`).
pub const L2_EPS: f32 = 1e-12;

/// A flat buffer of `T` on the backend that made it.
pub enum Buf<T: DeviceRepr> {
    /// Host memory, used by the CPU backend.
    Host(Vec<T>),
    /// Device memory on the CUDA backend's stream.
    Device(CudaSlice<T>),
}

impl<T: DeviceRepr> Buf<T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Buf::Host(v) => v.len(),
            Buf::Device(d) => d.len(),
        }
    }

    /// True when the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Shape of a row-major matrix product `C[m,n] = alpha * op(A) op(B) + beta * C`, where `op(A)`
/// is `m x k` (A stored `k x m` when `trans_a`) and `op(B)` is `k x n` (B stored `n x k` when
/// `trans_b`). All three matrices are dense and row-major.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MatMul {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    pub beta: f32,
}

impl MatMul {
    /// `C = A B` with no transposes.
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        MatMul {
            m,
            n,
            k,
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            beta: 0.0,
        }
    }

    /// Same product with `A` read transposed.
    pub fn ta(self) -> Self {
        MatMul {
            trans_a: true,
            ..self
        }
    }

    /// Same product with `B` read transposed.
    pub fn tb(self) -> Self {
        MatMul {
            trans_b: true,
            ..self
        }
    }

    /// Same product accumulating into C (`beta = 1`), as parameter gradients do.
    pub fn accumulate(self) -> Self {
        MatMul { beta: 1.0, ..self }
    }

    fn check(&self, a: usize, b: usize, c: usize) -> Result<()> {
        let (m, n, k) = (self.m, self.n, self.k);
        if a != m * k || b != k * n || c != m * n {
            bail!(
                "matmul m={m} n={n} k={k}: buffers hold A={a}, B={b}, C={c} elements; expected {}, {}, {}",
                m * k,
                k * n,
                m * n
            );
        }
        Ok(())
    }
}

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

    fn check(&self, x: usize, y: usize) -> Result<()> {
        if self.hw == 0 || self.p <= 0.0 || !self.p.is_finite() {
            bail!(
                "GeM: need hw > 0 and a finite p > 0, got hw={} p={}",
                self.hw,
                self.p
            );
        }
        if x != self.rows * self.hw || y != self.rows {
            bail!(
                "GeM rows={} hw={}: x holds {x} (expected {}), y holds {y} (expected {})",
                self.rows,
                self.hw,
                self.rows * self.hw,
                self.rows
            );
        }
        Ok(())
    }
}

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

    fn check(&self, bufs: &[usize]) -> Result<()> {
        let want = self.rows * self.cols;
        if let Some(bad) = bufs.iter().find(|&&l| l != want) {
            bail!(
                "L2 norm {}x{}: a buffer holds {bad} elements, expected {want}",
                self.rows,
                self.cols
            );
        }
        Ok(())
    }
}

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
    fn resolve(self, len: usize, k: usize, stride: usize) -> (usize, usize) {
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
        })
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

    fn check(&self, x: usize, w: usize, y: usize) -> Result<()> {
        let (ex, ew, ey) = self.sizes();
        if x != ex || w != ew || y != ey {
            bail!(
                "conv {self:?}: buffers hold x={x}, w={w}, y={y} elements; expected {ex}, {ew}, {ey}"
            );
        }
        Ok(())
    }
}

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

/// Shape of a BatchNorm over an NCHW tensor `n x c x hw`, with an activation fused after it.
/// `ghost` splits the batch into that many contiguous chunks with their own statistics (spec G13:
/// the original's 4-GPU DataParallel); running statistics follow chunk 0 only, as DataParallel
/// keeps only replica 0's buffer updates. `ghost = 1` is plain BatchNorm.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNorm {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
    pub eps: f32,
    pub momentum: f32,
    pub act: Act,
    pub ghost: usize,
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
        }
    }

    /// Checks the activation-sized buffers (`n*c*hw`) and the per-channel ones (`c`).
    fn check(&self, act: &[usize], chan: &[usize]) -> Result<()> {
        let (want, wc) = (self.n * self.c * self.hw, self.c);
        if let Some(bad) = act.iter().find(|&&l| l != want) {
            bail!("batchnorm {self:?}: a tensor holds {bad} elements, expected {want}");
        }
        if let Some(bad) = chan.iter().find(|&&l| l != wc) {
            bail!("batchnorm {self:?}: a per-channel tensor holds {bad} elements, expected {wc}");
        }
        Ok(())
    }

    /// Checks what training-mode statistics need: whole chunks, more than one value per channel.
    fn check_train(&self, saved: &[usize]) -> Result<()> {
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
        let want = self.ghost * self.c;
        if let Some(bad) = saved.iter().find(|&&l| l != want) {
            bail!("batchnorm {self:?}: a saved-statistics buffer holds {bad} elements, expected {want}");
        }
        Ok(())
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

    fn check(&self, x: &[usize], y: &[usize]) -> Result<()> {
        let (wx, wy) = (
            self.n * self.c * self.h * self.w,
            self.n * self.c * self.oh * self.ow,
        );
        if x.iter().any(|&l| l != wx) || y.iter().any(|&l| l != wy) {
            bail!("max pool {self:?}: input-sized buffers hold {x:?} (expected {wx}), output-sized {y:?} (expected {wy})");
        }
        Ok(())
    }
}

/// Checks that elementwise operands all have `len` elements.
fn check_same(op: &str, bufs: &[usize]) -> Result<()> {
    if let Some(&first) = bufs.first() {
        if bufs.iter().any(|&l| l != first) {
            bail!("{op}: operands differ in length: {bufs:?}");
        }
    }
    Ok(())
}

/// Every op the model and the method need. Object-safe, so `Box<dyn Backend>` picks the
/// hardware at run time; tests are written once against `&dyn Backend`.
pub trait Backend: Send + Sync {
    /// "cpu" or "cuda".
    fn name(&self) -> &'static str;
    /// One line for humans: the device and what runs on it.
    fn describe(&self) -> String;

    /// A zero-filled buffer of `len` f32.
    fn zeros(&self, len: usize) -> Result<Buf<f32>>;
    /// Copies host data into a new buffer on this backend.
    fn upload(&self, data: &[f32]) -> Result<Buf<f32>>;
    /// Copies a buffer back to the host (waits for pending work).
    fn download(&self, buf: &Buf<f32>) -> Result<Vec<f32>>;
    /// Waits for all queued work.
    fn synchronize(&self) -> Result<()>;

    /// `C = alpha * op(A) op(B) + beta * C`, row-major (see [`MatMul`]).
    fn matmul(&self, a: &Buf<f32>, b: &Buf<f32>, c: &mut Buf<f32>, shape: MatMul) -> Result<()>;

    /// GeM pooling forward: `y[r] = (mean_hw max(x, eps)^p)^(1/p)`.
    fn gem_fwd(&self, x: &Buf<f32>, y: &mut Buf<f32>, shape: Gem) -> Result<()>;
    /// GeM pooling backward: writes `dx` from `x`, the forward output `y` and `dy`.
    fn gem_bwd(
        &self,
        x: &Buf<f32>,
        y: &Buf<f32>,
        dy: &Buf<f32>,
        dx: &mut Buf<f32>,
        shape: Gem,
    ) -> Result<()>;

    /// Row-wise L2 normalisation forward.
    fn l2norm_fwd(&self, x: &Buf<f32>, y: &mut Buf<f32>, shape: L2Norm) -> Result<()>;
    /// Row-wise L2 normalisation backward: writes `dx` from the input `x` and `dy`.
    fn l2norm_bwd(
        &self,
        x: &Buf<f32>,
        dy: &Buf<f32>,
        dx: &mut Buf<f32>,
        shape: L2Norm,
    ) -> Result<()>;
    /// Sets every element of `buf` to zero (gradients before a step, scatter targets).
    fn zero(&self, buf: &mut Buf<f32>) -> Result<()>;
    /// Copies host data into an existing buffer of the same length (no allocation).
    fn upload_into(&self, data: &[f32], buf: &mut Buf<f32>) -> Result<()>;

    /// Convolution forward: `y = conv(x, w)` (see [`Conv`]).
    fn conv2d_fwd(&self, x: &Buf<f32>, w: &Buf<f32>, y: &mut Buf<f32>, s: Conv) -> Result<()>;
    /// Convolution data gradient: writes `dx` from `dy` and the weight.
    fn conv2d_bwd_data(
        &self,
        dy: &Buf<f32>,
        w: &Buf<f32>,
        dx: &mut Buf<f32>,
        s: Conv,
    ) -> Result<()>;
    /// Convolution weight gradient: accumulates into `dw` from the input `x` and `dy`.
    fn conv2d_bwd_weight(
        &self,
        x: &Buf<f32>,
        dy: &Buf<f32>,
        dw: &mut Buf<f32>,
        s: Conv,
    ) -> Result<()>;

    /// BatchNorm + activation forward with batch statistics: writes `y`, saves each statistics
    /// group's mean and 1/sqrt(var+eps) (`ghost x c`) for backward, and updates the running
    /// mean / unbiased variance with the momentum.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_fwd_train(
        &self,
        x: &Buf<f32>,
        gamma: &Buf<f32>,
        beta: &Buf<f32>,
        running: (&mut Buf<f32>, &mut Buf<f32>),
        saved: (&mut Buf<f32>, &mut Buf<f32>),
        y: &mut Buf<f32>,
        s: BatchNorm,
    ) -> Result<()>;
    /// BatchNorm + activation forward with the running statistics (eval mode).
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_fwd_eval(
        &self,
        x: &Buf<f32>,
        gamma: &Buf<f32>,
        beta: &Buf<f32>,
        running_mean: &Buf<f32>,
        running_var: &Buf<f32>,
        y: &mut Buf<f32>,
        s: BatchNorm,
    ) -> Result<()>;
    /// BatchNorm + activation backward after a training-mode forward: writes `dx`, accumulates
    /// `dgamma` and `dbeta`. `y` is the forward output (for the activation's mask).
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;

    /// Max pooling forward.
    fn maxpool_fwd(&self, x: &Buf<f32>, y: &mut Buf<f32>, s: MaxPool) -> Result<()>;
    /// Max pooling backward: writes `dx`, routing each `dy` to the first maximum of its window.
    fn maxpool_bwd(
        &self,
        x: &Buf<f32>,
        y: &Buf<f32>,
        dy: &Buf<f32>,
        dx: &mut Buf<f32>,
        s: MaxPool,
    ) -> Result<()>;

    /// Elementwise `y = a + b` (residual connections, summing two gradient paths).
    fn add_fwd(&self, a: &Buf<f32>, b: &Buf<f32>, y: &mut Buf<f32>) -> Result<()>;
    /// Activation forward `y = act(x)`.
    fn act_fwd(&self, x: &Buf<f32>, y: &mut Buf<f32>, act: Act) -> Result<()>;
    /// Activation backward from the forward output: `dx = dy * act'(y)`.
    fn act_bwd(&self, y: &Buf<f32>, dy: &Buf<f32>, dx: &mut Buf<f32>, act: Act) -> Result<()>;
}

/// The CUDA backend when a GPU, its driver and the embedded kernels are all present, else the
/// CPU backend. The string says which was chosen and, for CPU, why.
pub fn auto() -> (Box<dyn Backend>, String) {
    match CudaBackend::new(0) {
        Ok(cuda) => {
            let why = format!("cuda: {}", cuda.describe());
            (Box::new(cuda), why)
        }
        Err(e) => (
            Box::new(CpuBackend::new()),
            format!("cpu (no CUDA backend: {e:#})"),
        ),
    }
}
