//! The seam between the method and the hardware. Every op the model and InsCLR need lives in
//! one file per kernel family (`gemm`, `pool`, `norm`, `conv`, `eltwise`, `select`,
//! `contrastive`, `bank`, `mining`, `optim`), which holds the op's
//! shape struct, its check, the family trait a backend implements (`cpu/<family>.rs`,
//! `cuda/<family>.rs`) and the checked entry point callers use, a method on `dyn Backend`:
//!
//! ```ignore
//! be.gem_fwd(&x, &mut y, Gem::new(n, c, h, w))?; // checks sizes and dtypes once, then dispatches
//! ```
//!
//! A buffer carries its element type ([`DType`]); the CUDA backend launches the kernel named
//! `<op>_<dtype>` (e.g. `gem_fwd_f32`). What a backend lacks is known before a run:
//! [`Backend::supports`] answers per op and dtype, and [`select()`] refuses (or, for `auto`, passes
//! over) a device that lacks an op a command needs.
//!
//! Gradient convention (as in llm.c): activation gradients are written with `=`; parameter
//! gradients accumulate with `+=` (through `beta = 1` in `matmul`).

pub mod bank;
pub mod contrastive;
pub mod conv;
pub mod cpu;
pub mod cuda;
pub mod eltwise;
pub mod gemm;
pub mod mining;
pub mod norm;
pub mod optim;
pub mod pool;
pub mod profile;
pub mod select;
pub mod verify;

use anyhow::{anyhow, bail, Context, Result};
use std::borrow::Cow;
use std::fmt;

pub use bank::{BankOps, CopyRows};
pub use contrastive::{Contrastive, ContrastiveOps};
pub use conv::{BnBwdSums, BnEvalParams, BnTrainParams, Conv, ConvOps, Padding};
pub use cpu::CpuBackend;
pub use cuda::CudaBackend;
pub use eltwise::{Act, Eltwise, EltwiseOps, ImageToTensor};
pub use gemm::{GemmOps, MatMul};
pub use mining::{BatchSelect, MiningOps, MiningScore, SELECT_MAX_K};
pub use norm::{ActMask, BatchNorm, L2Norm, NormOps, L2_EPS};
pub use optim::{AdamScalars, OptimOps, OptimStep};
pub use pool::{Gem, MaxPool, PoolOps, GEM_EPS};
pub use select::{Knn, SelectOps, TopK, TOPK_MAX};
pub use verify::{Verify, VerifyFeatures, VerifyOps, VerifyOut, VERIFY_MAX_FEATURES};

/// Element type of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    BF16,
    I32,
    U32,
    I64,
    /// Quantised local descriptors.
    I8,
    /// Raw pixels (RGB bytes), the input of `image_to_tensor`.
    U8,
}

impl DType {
    /// The suffix of kernel names (`gem_fwd_f32`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
            DType::U32 => "u32",
            DType::I64 => "i64",
            DType::U8 => "u8",
            DType::I8 => "i8",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::BF16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::I64 => 8,
            DType::U8 | DType::I8 => 1,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust type that a buffer can hold.
pub trait Elem: bytemuck::Pod + Send + Sync + 'static {
    const DTYPE: DType;
}
impl Elem for f32 {
    const DTYPE: DType = DType::F32;
}
impl Elem for half::bf16 {
    const DTYPE: DType = DType::BF16;
}
impl Elem for i32 {
    const DTYPE: DType = DType::I32;
}
impl Elem for u32 {
    const DTYPE: DType = DType::U32;
}
impl Elem for i64 {
    const DTYPE: DType = DType::I64;
}
impl Elem for u8 {
    const DTYPE: DType = DType::U8;
}
impl Elem for i8 {
    const DTYPE: DType = DType::I8;
}

/// A flat buffer of `len` elements of one [`DType`] on the backend that made it.
pub struct Buf {
    dtype: DType,
    len: usize,
    mem: Mem,
}

enum Mem {
    /// Host memory (the CPU backend), in 8-byte words so any dtype views it aligned.
    Host(Vec<u64>),
    /// Memory of a CUDA device, real or emulated.
    Device(cuda::DevMem),
}

impl Buf {
    /// An empty host buffer: a placeholder that an op's output replaces on first use.
    pub fn empty(dtype: DType) -> Buf {
        Buf {
            dtype,
            len: 0,
            mem: Mem::Host(Vec::new()),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.len * self.dtype.size()
    }

    fn host_zeroed(dtype: DType, len: usize) -> Result<Buf> {
        let bytes = len
            .checked_mul(dtype.size())
            .ok_or_else(|| anyhow!("a buffer of {len} x {dtype} is larger than memory"))?;
        Ok(Buf {
            dtype,
            len,
            mem: Mem::Host(vec![0u64; bytes.div_ceil(8)]),
        })
    }

    fn device(dtype: DType, len: usize, mem: cuda::DevMem) -> Buf {
        Buf {
            dtype,
            len,
            mem: Mem::Device(mem),
        }
    }

    /// The host bytes of a CPU buffer.
    fn host_bytes(&self) -> Option<&[u8]> {
        match &self.mem {
            Mem::Host(w) => Some(&bytemuck::cast_slice(w)[..self.bytes()]),
            Mem::Device(_) => None,
        }
    }

    fn host_bytes_mut(&mut self) -> Option<&mut [u8]> {
        let n = self.bytes();
        match &mut self.mem {
            Mem::Host(w) => Some(&mut bytemuck::cast_slice_mut(w)[..n]),
            Mem::Device(_) => None,
        }
    }

    /// The elements of a host buffer of dtype `T` (the CPU backend's view); an error for a
    /// device buffer (use [`Backend`]'s `download` or `host_view`) or another dtype.
    pub fn host<T: Elem>(&self) -> Result<&[T]> {
        self.expect_dtype(T::DTYPE)?;
        let bytes = self.host_bytes().ok_or_else(|| {
            anyhow!("a device buffer was given to the CPU backend; download it first")
        })?;
        Ok(bytemuck::cast_slice(bytes))
    }

    /// The elements of a host buffer, mutable.
    pub fn host_mut<T: Elem>(&mut self) -> Result<&mut [T]> {
        self.expect_dtype(T::DTYPE)?;
        let bytes = self.host_bytes_mut().ok_or_else(|| {
            anyhow!("a device buffer was given to the CPU backend; download it first")
        })?;
        Ok(bytemuck::cast_slice_mut(bytes))
    }

    /// The device memory of a CUDA buffer.
    /// True when this buffer is the view of `arena` at element `offset` (same dtype).
    pub fn is_view_of(&self, arena: &Buf, offset: usize) -> bool {
        match (&self.mem, &arena.mem) {
            (Mem::Device(d), Mem::Device(a)) => {
                self.dtype == arena.dtype && d.is_at(a, offset * self.dtype.size())
            }
            _ => false,
        }
    }

    pub(crate) fn dev(&self) -> Result<&cuda::DevMem> {
        match &self.mem {
            Mem::Device(d) => Ok(d),
            Mem::Host(_) => bail!("a host buffer was given to the CUDA backend; upload it first"),
        }
    }

    pub(crate) fn dev_mut(&mut self) -> Result<&mut cuda::DevMem> {
        match &mut self.mem {
            Mem::Device(d) => Ok(d),
            Mem::Host(_) => bail!("a host buffer was given to the CUDA backend; upload it first"),
        }
    }

    fn expect_dtype(&self, want: DType) -> Result<()> {
        if self.dtype != want {
            bail!("a {} buffer was used as {want}", self.dtype);
        }
        Ok(())
    }
}

impl fmt::Debug for Buf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = match &self.mem {
            Mem::Host(_) => "host",
            Mem::Device(d) => d.place(),
        };
        write!(f, "Buf({} x {} on {place})", self.len, self.dtype)
    }
}

/// A shape that has been checked against its buffers. Only this module and its children make
/// one, so a backend's op (and the unsafe launch behind it) never sees unchecked sizes; the
/// checked entry points on `dyn Backend` pass it on with the very buffers it was checked
/// against, which is what crate code calling a family trait directly must do too.
#[derive(Clone, Copy, Debug)]
pub struct Checked<S>(S);

impl<S> std::ops::Deref for Checked<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.0
    }
}

/// Checks that every buffer of `bufs` holds `want` elements; `what` names the op in the error.
fn check_len(what: &dyn fmt::Debug, want: usize, bufs: &[&Buf]) -> Result<()> {
    if let Some(b) = bufs.iter().find(|b| b.len() != want) {
        bail!(
            "{what:?}: a buffer holds {} elements, expected {want}",
            b.len()
        );
    }
    Ok(())
}

/// Checks that each buffer has its dtype.
fn check_dtypes(what: &dyn fmt::Debug, bufs: &[(&Buf, DType)]) -> Result<()> {
    if let Some((b, want)) = bufs.iter().find(|(b, want)| b.dtype() != *want) {
        bail!("{what:?}: a buffer of {}, expected {want}", b.dtype());
    }
    Ok(())
}

/// Checks that all `bufs` share one dtype and returns it.
fn same_dtype(what: &dyn fmt::Debug, bufs: &[&Buf]) -> Result<DType> {
    let dt = bufs.first().map_or(DType::F32, |b| b.dtype());
    if let Some(b) = bufs.iter().find(|b| b.dtype() != dt) {
        bail!(
            "{what:?}: buffers of different dtypes ({dt} and {})",
            b.dtype()
        );
    }
    Ok(dt)
}

/// Every op of the seam. Its kernel on CUDA is `<name>_<dtype>` in `kernels/<family>.cu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Matmul,
    GemFwd,
    GemBwd,
    MaxpoolFwd,
    MaxpoolBwd,
    L2normFwd,
    L2normBwd,
    BatchnormFwdTrain,
    BatchnormFwdEval,
    BatchnormBwd,
    Conv2dFwd,
    Conv2dBwdData,
    Conv2dBwdWeight,
    AddFwd,
    ActFwd,
    ActBwd,
    ImageToTensor,
    Cast,
    Topk,
    Knn,
    Contrastive,
    CopyRows,
    BatchSelect,
    MiningScore,
    Adam,
    Sgd,
    SumSquares,
    Scale,
    Verify,
}

impl Op {
    /// Every op, in family order.
    pub const ALL: [Op; 29] = [
        Op::Matmul,
        Op::GemFwd,
        Op::GemBwd,
        Op::MaxpoolFwd,
        Op::MaxpoolBwd,
        Op::L2normFwd,
        Op::L2normBwd,
        Op::BatchnormFwdTrain,
        Op::BatchnormFwdEval,
        Op::BatchnormBwd,
        Op::Conv2dFwd,
        Op::Conv2dBwdData,
        Op::Conv2dBwdWeight,
        Op::AddFwd,
        Op::ActFwd,
        Op::ActBwd,
        Op::ImageToTensor,
        Op::Cast,
        Op::Topk,
        Op::Knn,
        Op::Contrastive,
        Op::CopyRows,
        Op::BatchSelect,
        Op::MiningScore,
        Op::Adam,
        Op::Sgd,
        Op::SumSquares,
        Op::Scale,
        Op::Verify,
    ];

    /// The op's name, the stem of its kernels' names.
    pub fn name(self) -> &'static str {
        match self {
            Op::Matmul => "matmul",
            Op::GemFwd => "gem_fwd",
            Op::GemBwd => "gem_bwd",
            Op::MaxpoolFwd => "maxpool_fwd",
            Op::MaxpoolBwd => "maxpool_bwd",
            Op::L2normFwd => "l2norm_fwd",
            Op::L2normBwd => "l2norm_bwd",
            Op::BatchnormFwdTrain => "batchnorm_fwd_train",
            Op::BatchnormFwdEval => "batchnorm_fwd_eval",
            Op::BatchnormBwd => "batchnorm_bwd",
            Op::Conv2dFwd => "conv2d_fwd",
            Op::Conv2dBwdData => "conv2d_bwd_data",
            Op::Conv2dBwdWeight => "conv2d_bwd_weight",
            Op::AddFwd => "add_fwd",
            Op::ActFwd => "act_fwd",
            Op::ActBwd => "act_bwd",
            Op::ImageToTensor => "image_to_tensor",
            Op::Cast => "cast",
            Op::Topk => "topk",
            Op::Knn => "knn",
            Op::Contrastive => "contrastive",
            Op::CopyRows => "copy_rows",
            Op::BatchSelect => "batch_select",
            Op::MiningScore => "mining_score",
            Op::Adam => "adam",
            Op::Sgd => "sgd",
            Op::SumSquares => "sumsq",
            Op::Scale => "scale",
            Op::Verify => "verify",
        }
    }

    /// The kernel family (`kernels/<family>.cu`, `backend/<family>.rs`).
    pub fn family(self) -> &'static str {
        match self {
            Op::Matmul => "gemm",
            Op::GemFwd | Op::GemBwd | Op::MaxpoolFwd | Op::MaxpoolBwd => "pool",
            Op::L2normFwd
            | Op::L2normBwd
            | Op::BatchnormFwdTrain
            | Op::BatchnormFwdEval
            | Op::BatchnormBwd => "norm",
            Op::Conv2dFwd | Op::Conv2dBwdData | Op::Conv2dBwdWeight => "conv",
            Op::AddFwd | Op::ActFwd | Op::ActBwd | Op::ImageToTensor | Op::Cast => "eltwise",
            Op::Topk | Op::Knn => "select",
            Op::Contrastive => "contrastive",
            Op::CopyRows => "bank",
            Op::BatchSelect | Op::MiningScore => "mining",
            Op::Adam | Op::Sgd | Op::SumSquares | Op::Scale => "optim",
            Op::Verify => "verify",
        }
    }

    /// The dtype this op's kernel is named after in a network computing in `float`: the
    /// float type, except for the image conversion, whose input is bytes.
    pub fn dtype_in(self, float: DType) -> DType {
        match self {
            Op::ImageToTensor => DType::U8,
            Op::Verify => DType::I8,
            _ => float,
        }
    }

    /// The kernel that runs this op on `dtype`.
    pub fn kernel(self, dtype: DType) -> String {
        format!("{}_{}", self.name(), dtype.name())
    }
}

/// Which kind of backend made a buffer or runs an op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// Plain Rust on the CPU: the reference.
    Cpu,
    /// Our kernels on an NVIDIA GPU.
    Cuda,
    /// Our kernels on the emulated GPU (the CPU; proves logic, never speed).
    Emu,
    /// Our CUDA backend over a layer that records launches and runs none (`insclr-cu plan`).
    Plan,
}

impl Device {
    /// "cpu", "cuda", "emu" or "plan".
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::Emu => "emu",
            Device::Plan => "plan",
        }
    }
}

/// Every op the model and the method need, on one device. Implemented by [`CpuBackend`] and
/// [`CudaBackend`]; callers hold a `&dyn Backend` and use the checked methods on it (the family
/// traits are what a backend implements, not what callers call).
pub trait Backend: Send + Sync {
    /// The device this backend runs on.
    fn device(&self) -> Device;
    /// One line for humans: the device and what runs on it.
    fn describe(&self) -> String;
    /// True when this backend runs `op` on buffers of `dtype`.
    fn supports(&self, op: Op, dtype: DType) -> bool;
    /// A zero-filled buffer of `len` elements of `dtype`.
    fn zeros(&self, dtype: DType, len: usize) -> Result<Buf>;
    /// Copies `src` (exactly `dst.bytes()` long) into `dst`.
    fn write_bytes(&self, src: &[u8], dst: &mut Buf) -> Result<()>;
    /// Copies `src` into `dst` (exactly `src.bytes()` long), waiting for pending work.
    fn read_bytes(&self, src: &Buf, dst: &mut [u8]) -> Result<()>;
    /// Sets every element of `buf` to zero (gradients before a step, scatter targets).
    fn zero(&self, buf: &mut Buf) -> Result<()>;
    /// Waits for all queued work.
    fn synchronize(&self) -> Result<()>;
    /// Whether f32 convolutions may run on TF32 tensor cores (f32 storage and accumulation,
    /// products of inputs rounded to 10 mantissa bits: PyTorch's default for f32 convolutions on
    /// a GPU). Off when a backend is made; a backend without TF32 kernels (the CPU) ignores it
    /// and stays exact. Everything else in f32 stays exact f32 either way.
    fn set_tf32(&self, _on: bool) {}
    /// What [`Backend::set_tf32`] last set, where the backend has TF32 kernels (else false).
    fn tf32(&self) -> bool {
        false
    }

    /// The families' ops on this backend (called by the checked methods on `dyn Backend`).
    fn gemm_ops(&self) -> &dyn GemmOps;
    fn pool_ops(&self) -> &dyn PoolOps;
    fn norm_ops(&self) -> &dyn NormOps;
    fn conv_ops(&self) -> &dyn ConvOps;
    fn eltwise_ops(&self) -> &dyn EltwiseOps;
    fn select_ops(&self) -> &dyn SelectOps;
    fn contrastive_ops(&self) -> &dyn ContrastiveOps;
    fn bank_ops(&self) -> &dyn BankOps;
    fn mining_ops(&self) -> &dyn MiningOps;
    fn optim_ops(&self) -> &dyn OptimOps;
    fn verify_ops(&self) -> &dyn VerifyOps;
}

/// The family accessors of a backend that implements every family trait itself.
macro_rules! family_accessors {
    () => {
        fn gemm_ops(&self) -> &dyn $crate::backend::GemmOps {
            self
        }
        fn pool_ops(&self) -> &dyn $crate::backend::PoolOps {
            self
        }
        fn norm_ops(&self) -> &dyn $crate::backend::NormOps {
            self
        }
        fn conv_ops(&self) -> &dyn $crate::backend::ConvOps {
            self
        }
        fn eltwise_ops(&self) -> &dyn $crate::backend::EltwiseOps {
            self
        }
        fn select_ops(&self) -> &dyn $crate::backend::SelectOps {
            self
        }
        fn contrastive_ops(&self) -> &dyn $crate::backend::ContrastiveOps {
            self
        }
        fn bank_ops(&self) -> &dyn $crate::backend::BankOps {
            self
        }
        fn mining_ops(&self) -> &dyn $crate::backend::MiningOps {
            self
        }
        fn optim_ops(&self) -> &dyn $crate::backend::OptimOps {
            self
        }
        fn verify_ops(&self) -> &dyn $crate::backend::VerifyOps {
            self
        }
    };
}
pub(crate) use family_accessors;

impl dyn Backend + '_ {
    /// "cpu", "cuda" or "emu".
    pub fn name(&self) -> &'static str {
        self.device().name()
    }

    /// True when `buf` lives where this backend computes (a placeholder or a buffer of another
    /// backend does not).
    pub fn owns(&self, buf: &Buf) -> bool {
        match (&buf.mem, self.device()) {
            (Mem::Host(_), Device::Cpu) => true,
            (Mem::Device(d), dev) => d.device() == dev,
            _ => false,
        }
    }

    /// Makes `buf` a buffer of `len` elements of `dtype` on this backend, reallocating (zeroed)
    /// only when it is not one already, so a repeated shape reuses its buffers. A host buffer
    /// also keeps its memory for any shape that fits in it: fresh memory is zeroed by the kernel
    /// page by page on first touch, which took 14% of a Lite0 extraction whose batches change
    /// size. Either way the contents are left as they were, not zeroed.
    pub fn ensure(&self, buf: &mut Buf, dtype: DType, len: usize) -> Result<()> {
        if buf.len() == len && buf.dtype() == dtype && self.owns(buf) {
            return Ok(());
        }
        if let (Mem::Host(words), true) = (&buf.mem, self.owns(buf)) {
            if len * dtype.size() <= words.len() * 8 {
                buf.dtype = dtype;
                buf.len = len;
                return Ok(());
            }
        }
        *buf = self.zeros(dtype, len)?;
        Ok(())
    }

    /// A zeroed device buffer that `view`s share: the parameter arena. The CPU
    /// backend keeps its tensors apart (its optimiser loops over them in place) and has none.
    pub fn arena(&self, dtype: DType, len: usize) -> Result<Buf> {
        let b = self.zeros(dtype, len)?;
        match b.mem {
            Mem::Device(d) => Ok(Buf {
                dtype,
                len,
                mem: Mem::Device(d.into_shared()),
            }),
            Mem::Host(_) => bail!("the {} backend has no arenas", self.name()),
        }
    }

    /// `len` elements of `arena` from element `offset`, sharing its memory.
    pub fn view(&self, arena: &Buf, offset: usize, len: usize) -> Result<Buf> {
        let size = arena.dtype.size();
        let end = offset.checked_add(len);
        if end.is_none_or(|e| e > arena.len) {
            bail!(
                "a view of {len} elements at {offset} of an arena of {}",
                arena.len
            );
        }
        Ok(Buf {
            dtype: arena.dtype,
            len,
            mem: Mem::Device(arena.dev()?.view(offset * size, len * size)?),
        })
    }

    /// A new buffer holding `data`.
    pub fn upload<T: Elem>(&self, data: &[T]) -> Result<Buf> {
        let mut b = self.zeros(T::DTYPE, data.len())?;
        self.write_bytes(bytemuck::cast_slice(data), &mut b)?;
        Ok(b)
    }

    /// Copies `data` into an existing buffer of the same length and dtype (no allocation).
    pub fn upload_into<T: Elem>(&self, data: &[T], buf: &mut Buf) -> Result<()> {
        buf.expect_dtype(T::DTYPE)?;
        if data.len() != buf.len() {
            bail!(
                "upload of {} elements into a buffer of {}",
                data.len(),
                buf.len()
            );
        }
        self.write_bytes(bytemuck::cast_slice(data), buf)
    }

    /// The buffer's elements on the host (waits for pending work).
    pub fn download<T: Elem>(&self, buf: &Buf) -> Result<Vec<T>> {
        buf.expect_dtype(T::DTYPE)?;
        let mut out = vec![T::zeroed(); buf.len()];
        self.read_bytes(buf, bytemuck::cast_slice_mut(&mut out))?;
        Ok(out)
    }

    /// The buffer's elements on the host: borrowed in place on the CPU, copied from a device.
    pub fn host_view<'a, T: Elem>(&self, buf: &'a Buf) -> Result<Cow<'a, [T]>> {
        match &buf.mem {
            Mem::Host(_) => Ok(Cow::Borrowed(buf.host::<T>()?)),
            Mem::Device(_) => Ok(Cow::Owned(self.download(buf)?)),
        }
    }

    /// Runs `f` on the buffer's elements on the host: in place on the CPU; on a device through
    /// a download and an upload.
    pub fn update_on_host<T: Elem>(&self, buf: &mut Buf, f: impl FnOnce(&mut [T])) -> Result<()> {
        if let Mem::Host(_) = buf.mem {
            f(buf.host_mut::<T>()?);
            return Ok(());
        }
        let mut v = self.download::<T>(buf)?;
        f(&mut v);
        self.upload_into(&v, buf)
    }

    /// The ops of `needs` this backend lacks.
    pub fn missing(&self, needs: &[(Op, DType)]) -> Vec<(Op, DType)> {
        needs
            .iter()
            .copied()
            .filter(|&(op, dt)| !self.supports(op, dt))
            .collect()
    }

    /// An error unless this backend runs `op` on `dtype`.
    fn require(&self, op: Op, dtype: DType) -> Result<()> {
        if self.supports(op, dtype) {
            return Ok(());
        }
        Err(lacks_error(self.device(), &[(op, dtype)]))
    }
}

/// The error for ops a backend does not have: names each one and, for a GPU backend, the
/// kernel it lacks and where that kernel will live.
fn lacks_error(backend: Device, missing: &[(Op, DType)]) -> anyhow::Error {
    let list: Vec<String> = missing
        .iter()
        .map(|&(op, dt)| match backend {
            Device::Cpu => format!("{} on {dt}", op.name()),
            _ => format!("{} (kernels/{}.cu)", op.kernel(dt), op.family()),
        })
        .collect();
    match backend {
        Device::Cpu => anyhow!("the cpu backend has no twin for {}", list.join(", ")),
        _ => anyhow!(
            "the {} backend has no kernel for {}; use --device cpu",
            backend.name(),
            list.join(", ")
        ),
    }
}

/// The error a family trait's default method returns: the op is not written for this backend.
/// Callers going through `dyn Backend` see [`lacks_error`] first.
fn not_implemented(op: Op) -> anyhow::Error {
    anyhow!("{} is not implemented on this backend", op.name())
}

/// The device a command asked for (`--device`, `INSCLR_DEVICE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The GPU when there is one and it has every kernel the command needs, else the CPU.
    Auto,
    Cpu,
    Cuda,
    /// The emulated GPU: our kernels, on the CPU. Never chosen by `auto`.
    Emu,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda),
            "emu" => Ok(DeviceChoice::Emu),
            _ => Err(format!("unknown device '{s}'; use auto, cpu, cuda or emu")),
        }
    }
}

/// The backend for a command that needs `needs`, and a line saying what was chosen and why.
/// An explicit device that lacks an op is an error naming the ops; `auto` passes over the GPU
/// then, and says so.
pub fn select(choice: DeviceChoice, needs: &[(Op, DType)]) -> Result<(Box<dyn Backend>, String)> {
    select_on(choice, needs, 0)
}

/// [`select()`] with the GPU numbered `ordinal` (a rank's, [`crate::dist::launch`]).
pub fn select_on(
    choice: DeviceChoice,
    needs: &[(Op, DType)],
    ordinal: usize,
) -> Result<(Box<dyn Backend>, String)> {
    let checked = |be: Box<dyn Backend>| -> Result<(Box<dyn Backend>, String)> {
        let missing = be.missing(needs);
        if !missing.is_empty() {
            return Err(lacks_error(be.device(), &missing));
        }
        let why = format!("{}: {}", be.name(), be.describe());
        Ok((be, why))
    };
    match choice {
        DeviceChoice::Cpu => checked(Box::new(CpuBackend::new())),
        DeviceChoice::Emu => checked(Box::new(CudaBackend::emu())),
        DeviceChoice::Cuda => checked(Box::new(
            CudaBackend::new(ordinal)
                .context("--device cuda (use --device auto or cpu without a GPU)")?,
        )),
        DeviceChoice::Auto => {
            let cpu = Box::new(CpuBackend::new());
            match CudaBackend::new(ordinal) {
                Ok(gpu) => {
                    let gpu: Box<dyn Backend> = Box::new(gpu);
                    let missing = gpu.missing(needs);
                    if missing.is_empty() {
                        return checked(gpu);
                    }
                    let names: Vec<String> = missing.iter().map(|(o, d)| o.kernel(*d)).collect();
                    let (be, _) = checked(cpu)?;
                    let why = format!("cpu (the GPU lacks {} for this command)", names.join(", "));
                    Ok((be, why))
                }
                Err(e) => {
                    let (be, _) = checked(cpu)?;
                    Ok((be, format!("cpu (no CUDA backend: {e:#})")))
                }
            }
        }
    }
}

/// The CPU backend (stateless, so one static serves everyone).
pub fn cpu() -> &'static dyn Backend {
    static CPU: CpuBackend = CpuBackend;
    &CPU
}

/// What a command computing in f32 needs of a backend: `ops` on f32 (the image conversion on
/// bytes).
pub fn f32_needs(ops: &[Op]) -> Vec<(Op, DType)> {
    ops.iter().map(|&o| (o, o.dtype_in(DType::F32))).collect()
}

/// [`select()`] for a command computing in f32 (the common case).
pub fn select_f32(choice: DeviceChoice, ops: &[Op]) -> Result<(Box<dyn Backend>, String)> {
    select(choice, &f32_needs(ops))
}
