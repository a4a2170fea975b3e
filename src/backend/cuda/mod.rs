//! The CUDA backend: one file per `kernels/*.cu` family, each a launch shape plus a thin safe
//! wrapper per kernel, over a device layer ([`layer`], on the types they share in [`device`])
//! with three implementations: a real GPU through the CUDA driver ([`driver`]), the emulated GPU
//! ([`emu`]), which runs the same kernel sources on the CPU, and a recorder ([`record`]) that
//! runs nothing and writes every launch down for `insclr-cu plan`. cuBLAS stays as the GEMM baseline in `cargo bench` (and a fallback
//! with `INSCLR_GEMM=cublas`).

pub mod bank;
pub mod contrastive;
pub mod conv;
pub mod device;
pub mod driver;
pub mod eltwise;
pub mod embedded;
pub mod emu;
pub mod gemm;
pub mod layer;
pub mod mining;
pub mod norm;
pub mod occupancy;
pub mod optim;
pub mod pool;
pub mod record;
pub mod select;
pub mod selftest;
pub mod verify;
pub mod work;

use super::profile::{KernelProfile, Span};
use super::{Backend, Buf, DType, Device, Op};
use anyhow::{bail, Context, Result};
use cudarc::driver::CudaEvent;
use device::{Args, Launch};
use layer::Layer;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

pub use device::DevMem;
pub use driver::{driver_present, driver_version, DeviceInfo};

/// True when build.rs found nvcc and embedded at least one kernel family for GPUs.
pub fn has_kernels() -> bool {
    !embedded::FATBINS.is_empty()
}

/// Our kernels on a GPU or on the emulated GPU.
pub struct CudaBackend {
    layer: Layer,
    kernels: HashSet<String>,
    /// Device scratch for kernels' intermediate results (split-K partial sums), grown to the
    /// largest request and reused, so a training step allocates nothing after its first.
    scratch: Mutex<Option<DevMem>>,
    /// A second such block, for what outlives one launcher's use of `scratch`: the BatchNorm
    /// statistics a convolution's epilogue writes and BatchNorm then reads, a layer's output
    /// gradient in channels-last order shared by its two backward passes.
    outer_scratch: Mutex<Option<DevMem>>,
    /// While a per-kernel profile records ([`CudaBackend::profile_start`]): every launch, copy
    /// and memset, with the events around it on a GPU.
    profiling: AtomicBool,
    recorded: Mutex<Vec<Recorded>>,
    /// f32 convolutions on TF32 tensor cores where a kernel exists ([`Backend::set_tf32`]).
    tf32: AtomicBool,
}

/// A piece of work recorded for a profile: name, launch shape, and its events on a GPU.
struct Recorded {
    name: String,
    shape: String,
    events: Option<(CudaEvent, CudaEvent)>,
}

impl CudaBackend {
    /// Opens GPU `ordinal`. Errors (never panics) when the build has no kernels, the driver is
    /// missing, there is no such GPU, or the fatbins hold no code for its architecture.
    pub fn new(ordinal: usize) -> Result<Self> {
        let gpu = driver::Gpu::open(ordinal)?;
        let kernels = gpu.kernels().map(str::to_string).collect();
        Ok(CudaBackend {
            layer: Layer::Gpu(Box::new(gpu)),
            kernels,
            scratch: Mutex::new(None),
            outer_scratch: Mutex::new(None),
            profiling: AtomicBool::new(false),
            recorded: Mutex::new(Vec::new()),
            tf32: AtomicBool::new(false),
        })
    }

    /// The emulated GPU; always available.
    pub fn emu() -> Self {
        Self::emu_with_sms(occupancy::MODEL_SMS)
    }

    /// The emulated GPU, modelling `sms` multiprocessors instead of an H100's or H200's 132:
    /// the sizes chosen from the GPU's occupancy (split-K counts, the 1x1 weight gradient's
    /// groups of images) are then those of a small GPU, which is how a test's small batch
    /// reaches the splits a large batch takes on a large one.
    pub fn emu_with_sms(sms: u32) -> Self {
        let mut emu = emu::Emu::new();
        emu.sms = sms.max(1);
        CudaBackend {
            layer: Layer::Emu(emu),
            kernels: emu::KERNELS.iter().map(|(_, k)| k.to_string()).collect(),
            scratch: Mutex::new(None),
            outer_scratch: Mutex::new(None),
            profiling: AtomicBool::new(false),
            recorded: Mutex::new(Vec::new()),
            tf32: AtomicBool::new(false),
        }
    }

    /// A backend whose launches run nowhere and are recorded (`insclr-cu plan`): it has every
    /// kernel the sources define, its memory has no storage, and what it reads back is zeros.
    pub fn plan() -> Self {
        CudaBackend {
            layer: Layer::Plan(record::Recorder::new()),
            kernels: emu::KERNELS.iter().map(|(_, k)| k.to_string()).collect(),
            scratch: Mutex::new(None),
            outer_scratch: Mutex::new(None),
            profiling: AtomicBool::new(false),
            recorded: Mutex::new(Vec::new()),
            tf32: AtomicBool::new(false),
        }
    }

    /// The recorder of a [`CudaBackend::plan`] backend.
    pub fn recorder(&self) -> Option<&record::Recorder> {
        match &self.layer {
            Layer::Plan(r) => Some(r),
            _ => None,
        }
    }

    /// The GPU's facts, or `None` on the emulator and the plan.
    pub fn info(&self) -> Option<&DeviceInfo> {
        match &self.layer {
            Layer::Gpu(g) => Some(&g.info),
            Layer::Emu(_) | Layer::Plan(_) => None,
        }
    }

    /// How many blocks of `kernel` (`threads` each, `dyn_smem` bytes of dynamic shared memory)
    /// the whole device holds at once: blocks per multiprocessor times multiprocessors. A GPU's
    /// driver answers; the emulator (unless made with [`CudaBackend::emu_with_sms`]) and the
    /// plan answer for an H100 / H200 ([`occupancy::MODEL_SMS`] multiprocessors of sm_90), so
    /// sizes chosen from it are the same there as on those GPUs. At least 1.
    pub(crate) fn resident_blocks(&self, kernel: &str, threads: u32, dyn_smem: u32) -> usize {
        let modelled = || {
            let res = occupancy::resources(kernel);
            occupancy::blocks_per_sm(&occupancy::SM90, res, threads, dyn_smem).blocks
        };
        let per_sm = match &self.layer {
            Layer::Gpu(g) => match g.resident_blocks(kernel, threads, dyn_smem) {
                // The driver could not say (an unknown kernel): the model's answer.
                0 => modelled(),
                known => known,
            },
            Layer::Emu(_) | Layer::Plan(_) => modelled(),
        };
        (per_sm as usize * self.multiprocessors()).max(1)
    }

    /// The device's multiprocessors: the GPU's, the emulator's (132 unless made with
    /// [`CudaBackend::emu_with_sms`]), the plan's 132.
    pub(crate) fn multiprocessors(&self) -> usize {
        match &self.layer {
            Layer::Gpu(g) => g.multiprocessors() as usize,
            Layer::Emu(e) => e.sms as usize,
            Layer::Plan(_) => occupancy::MODEL_SMS as usize,
        }
    }

    pub(crate) fn layer(&self) -> &Layer {
        &self.layer
    }

    /// Starts recording every launch, copy and memset on this backend for a per-kernel
    /// profile (forgetting an earlier one not taken). On a GPU each gets a pair of CUDA events,
    /// which adds a little time between launches; the emulator (and the plan) only count.
    pub fn profile_start(&self) {
        self.lock_recorded().clear();
        self.profiling.store(true, Ordering::SeqCst);
    }

    /// Stops recording and returns what was recorded since [`CudaBackend::profile_start`],
    /// waiting for the GPU to finish it.
    pub fn profile_take(&self) -> Result<KernelProfile> {
        self.profiling.store(false, Ordering::SeqCst);
        let recorded = std::mem::take(&mut *self.lock_recorded());
        self.layer.synchronize()?;
        let mut spans = Vec::with_capacity(recorded.len());
        for r in recorded {
            let ms = match &r.events {
                Some((start, end)) => Some(
                    start
                        .elapsed_ms(end)
                        .map_err(|e| anyhow::anyhow!("timing {}: {e}", r.name))?
                        as f64,
                ),
                None => None,
            };
            spans.push(Span {
                name: r.name,
                shape: r.shape,
                ms,
            });
        }
        Ok(KernelProfile { spans })
    }

    fn lock_recorded(&self) -> std::sync::MutexGuard<'_, Vec<Recorded>> {
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `work` (which puts work on the backend's stream), recording it as `name` while a
    /// profile records.
    fn recorded<T>(
        &self,
        name: &str,
        shape: impl FnOnce() -> String,
        work: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        if !self.profiling.load(Ordering::Relaxed) {
            return work();
        }
        let (out, events) = match &self.layer {
            Layer::Gpu(g) => {
                let start = g.timing_event()?;
                let out = work()?;
                (out, Some((start, g.timing_event()?)))
            }
            Layer::Emu(_) | Layer::Plan(_) => (work()?, None),
        };
        self.lock_recorded().push(Recorded {
            name: name.to_string(),
            shape: shape(),
            events,
        });
        Ok(out)
    }

    /// A host list (flags) as a new device array, for a launch's arguments.
    pub(crate) fn upload_list<T: bytemuck::Pod>(&self, v: &[T]) -> Result<DevMem> {
        let mut m = self.layer.alloc(std::mem::size_of_val(v))?;
        let bytes = bytemuck::cast_slice(v);
        self.recorded(
            COPY_IN,
            || bytes_shape(bytes.len()),
            || self.layer.write(bytes, &mut m),
        )?;
        Ok(m)
    }

    /// Host indices as a new device array of i64 (the kernels' index type).
    pub(crate) fn upload_indices(&self, idx: &[usize]) -> Result<DevMem> {
        self.upload_list(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>())
    }

    /// Runs `f` with device scratch of at least `bytes` bytes (contents undefined). Launches on
    /// one stream run in order, so a later user of the scratch never races an earlier one.
    pub(crate) fn with_scratch<R>(
        &self,
        bytes: usize,
        f: impl FnOnce(&DevMem) -> Result<R>,
    ) -> Result<R> {
        self.grown(&self.scratch, bytes, f)
    }

    /// As [`CudaBackend::with_scratch`], for what a launcher keeps while it runs others that
    /// take the first scratch (a convolution's BatchNorm statistics, a shared channels-last
    /// copy of dy): `f` may call `with_scratch`, never this again.
    pub(crate) fn with_outer_scratch<R>(
        &self,
        bytes: usize,
        f: impl FnOnce(&DevMem) -> Result<R>,
    ) -> Result<R> {
        self.grown(&self.outer_scratch, bytes, f)
    }

    fn grown<R>(
        &self,
        slot: &Mutex<Option<DevMem>>,
        bytes: usize,
        f: impl FnOnce(&DevMem) -> Result<R>,
    ) -> Result<R> {
        let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().is_none_or(|m| m.bytes() < bytes) {
            *guard = None; // free the old block before allocating its replacement
            *guard = Some(self.layer.alloc(bytes)?);
        }
        f(guard.as_ref().expect("scratch allocated above"))
    }

    /// Launches `kernel`.
    ///
    /// # Safety
    /// As [`Layer::launch`]: `args` match the kernel's parameters and its pointers cover what
    /// the kernel touches for this launch shape.
    pub(crate) unsafe fn launch(&self, kernel: &str, cfg: Launch, mut args: Args) -> Result<()> {
        let shape = || format!("grid {:?} block {:?}", cfg.grid, cfg.block);
        self.recorded(kernel, shape, || self.layer.launch(kernel, cfg, &mut args))
            .with_context(|| format!("kernel {kernel}"))
    }
}

/// A profile's names for the work that is not a kernel.
const COPY_IN: &str = "[copy to device]";
const COPY_OUT: &str = "[copy from device]";
const MEMSET: &str = "[memset]";

fn bytes_shape(bytes: usize) -> String {
    format!("{bytes} bytes")
}

/// Room kept below `i32::MAX`: kernels step an `int` index by up to a block or a tile past a
/// size before they compare it.
const INT_HEADROOM: usize = 1 << 16;

/// A size as the `int` our kernels take, or an error naming the op when it does not fit.
fn int(v: usize, what: &str) -> Result<i32> {
    if v > i32::MAX as usize - INT_HEADROOM {
        bail!("{what} = {v} exceeds the kernels' 32-bit size limit; split the work");
    }
    Ok(v as i32)
}

impl Backend for CudaBackend {
    fn device(&self) -> Device {
        match self.layer {
            Layer::Gpu(_) => Device::Cuda,
            Layer::Emu(_) => Device::Emu,
            Layer::Plan(_) => Device::Plan,
        }
    }

    fn describe(&self) -> String {
        match &self.layer {
            Layer::Gpu(g) => {
                let i = &g.info;
                format!(
                    "GPU {} {} (sm_{}{}, {:.1} GiB, {} SMs)",
                    i.ordinal,
                    i.name,
                    i.compute_capability.0,
                    i.compute_capability.1,
                    i.total_mem_bytes as f64 / (1u64 << 30) as f64,
                    i.multiprocessors
                )
            }
            Layer::Emu(e) => format!(
                "emulated GPU on the CPU ({} kernels; seed {}; proves logic, not speed)",
                self.kernels.len(),
                e.seed()
            ),
            Layer::Plan(_) => format!(
                "launch plan ({} kernels; records launches, runs none)",
                self.kernels.len()
            ),
        }
    }

    fn supports(&self, op: Op, dtype: DType) -> bool {
        match op {
            // Our GEMM into an f32 score block, merged by topk_merge_f32.
            Op::Knn => {
                let gemm = match dtype {
                    DType::F32 => "matmul_f32",
                    DType::BF16 => "matmul_bf16_f32",
                    _ => return false,
                };
                self.kernels.contains(gemm) && self.kernels.contains("topk_merge_f32")
            }
            _ => self.kernels.contains(&op.kernel(dtype)),
        }
    }

    fn zeros(&self, dtype: DType, len: usize) -> Result<Buf> {
        let bytes = len
            .checked_mul(dtype.size())
            .with_context(|| format!("a buffer of {len} x {dtype} is larger than memory"))?;
        let mut mem = self.layer.alloc(bytes)?;
        self.recorded(MEMSET, || bytes_shape(bytes), || self.layer.zero(&mut mem))?;
        Ok(Buf::device(dtype, len, mem))
    }

    fn write_bytes(&self, src: &[u8], dst: &mut Buf) -> Result<()> {
        let dst = dst.dev_mut()?;
        self.recorded(
            COPY_IN,
            || bytes_shape(src.len()),
            || self.layer.write(src, dst),
        )
    }

    fn read_bytes(&self, src: &Buf, dst: &mut [u8]) -> Result<()> {
        let n = dst.len();
        self.recorded(
            COPY_OUT,
            || bytes_shape(n),
            || self.layer.read(src.dev()?, dst),
        )
    }

    fn zero(&self, buf: &mut Buf) -> Result<()> {
        let mem = buf.dev_mut()?;
        let n = mem.bytes();
        self.recorded(MEMSET, || bytes_shape(n), || self.layer.zero(mem))
    }

    super::family_accessors!();

    fn synchronize(&self) -> Result<()> {
        self.layer.synchronize()
    }

    fn set_tf32(&self, on: bool) {
        self.tf32.store(on, Ordering::Relaxed);
    }

    fn tf32(&self) -> bool {
        self.tf32.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_records_launches_copies_and_memsets_while_it_is_on() {
        let emu = CudaBackend::emu();
        let be: &dyn Backend = &emu;
        let a = be.upload(&[1.0f32, -2.0, 3.0]).unwrap();
        emu.profile_start();
        let mut y = be.zeros(DType::F32, 3).unwrap();
        be.add_fwd(&a, &a, &mut y).unwrap();
        let mut z = be.zeros(DType::F32, 3).unwrap();
        be.add_fwd(&y, &a, &mut z).unwrap();
        assert_eq!(be.download::<f32>(&y).unwrap(), [2.0, -4.0, 6.0]);
        let p = emu.profile_take().unwrap();
        let names: Vec<&str> = p.spans.iter().map(|s| s.name.as_str()).collect();
        let add = Op::AddFwd.kernel(DType::F32);
        // The upload before the start is not in it; each new buffer is a memset.
        assert_eq!(
            names,
            [MEMSET, add.as_str(), MEMSET, add.as_str(), COPY_OUT],
            "{p:?}"
        );
        assert!(p.spans[1].shape.starts_with("grid ("), "{p:?}");
        assert_eq!(p.spans[4].shape, "12 bytes");
        // The emulator's times mean nothing: counted, not timed.
        assert!(!p.timed());
        let rows = p.by_kernel();
        let launches = |n: &str| rows.iter().find(|r| r.name == n).map(|r| r.launches);
        assert_eq!(rows.len(), 3);
        assert_eq!((launches(&add), launches(MEMSET)), (Some(2), Some(2)));
        // Off again: nothing more is recorded.
        be.add_fwd(&a, &a, &mut y).unwrap();
        assert!(emu.profile_take().unwrap().spans.is_empty());
    }
}
