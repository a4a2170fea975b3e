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
