//! The device layer on a real GPU: the CUDA driver (and cuBLAS) through cudarc, loaded at run
//! time. Nothing here panics without a GPU: cudarc panics when libcuda is missing, so
//! [`Gpu::open`] checks for the library first and returns an error instead.

use super::device::{Args, DevMem, Launch, DEFAULT_DYNAMIC_SMEM};
use super::embedded;
use anyhow::{anyhow, bail, Context, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    result, CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr,
};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// True when the CUDA driver library can be loaded (a GPU driver is installed).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library; no CUDA call is made.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The installed driver's CUDA version as (major, minor), when a driver is present.
pub fn driver_version() -> Option<(i32, i32)> {
    if !driver_present() {
        return None;
    }
    let mut v = 0i32;
    // SAFETY: the library is present (checked above); the call writes one int.
    let status = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
    (status == cudarc::driver::sys::CUresult::CUDA_SUCCESS).then_some((v / 1000, (v % 1000) / 10))
}

/// Facts about the GPU a backend runs on, for `insclr-cu info` and bench reports.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_mem_bytes: usize,
    pub multiprocessors: i32,
    pub driver: Option<(i32, i32)>,
    /// Memory clock (kHz), bus width (bits) and SM clock (kHz), for napkin-math floors.
    pub mem_clock_khz: i32,
    pub mem_bus_bits: i32,
    pub sm_clock_khz: i32,
    /// The most shared memory a block may have after opting in (227 KiB on sm_90).
    pub smem_per_block_optin: i32,
}

impl DeviceInfo {
    /// Peak DRAM bandwidth in bytes/s: two transfers per memory clock over the bus.
    pub fn peak_bandwidth(&self) -> f64 {
        2.0 * self.mem_clock_khz as f64 * 1e3 * self.mem_bus_bits as f64 / 8.0
    }

    /// Peak FP32 (non-tensor-core) FLOP/s: 128 FP32 lanes per SM from Volta on (64 on sm_80),
    /// one FMA (2 flops) per lane per clock.
    pub fn peak_fp32_flops(&self) -> f64 {
        let lanes = if self.compute_capability == (8, 0) {
            64.0
        } else {
            128.0
        };
        self.multiprocessors as f64 * lanes * 2.0 * self.sm_clock_khz as f64 * 1e3
    }

    /// Peak dense bf16 tensor-core FLOP/s: 4096 flops per SM per clock on sm_90 (989 TFLOP/s on
    /// an H100 SXM), 2048 on sm_80 / sm_86 / sm_89.
    pub fn peak_bf16_tensor_flops(&self) -> f64 {
        let per_clock = if self.compute_capability.0 >= 9 {
            4096.0
        } else {
            2048.0
        };
        self.multiprocessors as f64 * per_clock * self.sm_clock_khz as f64 * 1e3
    }
}

/// Keeps freed device memory in the device's stream-ordered pool (cudarc allocates with
/// cuMemAllocAsync). With the default release threshold of 0 the driver returns it to the system
/// at every synchronisation, and the next step maps its activations again; a network whose input
/// size alternates (XBMv2's no-DA and training views) reallocates every layer twice a step. Not
/// fatal when the driver refuses: allocations are then only slower.
fn keep_pool_memory(ctx: &CudaContext) {
    use cudarc::driver::sys;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold = u64::MAX;
    // SAFETY: driver calls on this context's device with valid out-pointers; the attribute takes
    // a pointer to a u64 (cuMemPoolSetAttribute's documentation).
    let ok = ctx.bind_to_thread().is_ok()
        && unsafe {
            sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device())
                == sys::CUresult::CUDA_SUCCESS
                && sys::cuMemPoolSetAttribute(
                    pool,
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                    (&mut threshold as *mut u64).cast(),
                ) == sys::CUresult::CUDA_SUCCESS
        };
    if !ok {
        eprintln!("note: the CUDA memory pool keeps its default release threshold; allocations may be slower");
    }
}

/// A GPU with its stream, cuBLAS handle and the embedded kernels, by name.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    pub(super) blas: CudaBlas,
    functions: HashMap<String, CudaFunction>,
    /// Per kernel, the dynamic shared memory it has been allowed beyond the default 48 KiB:
    /// the attribute is set once per kernel and size, not before every launch.
    smem_allowed: Mutex<HashMap<String, u32>>,
    _modules: Vec<Arc<CudaModule>>,
    pub info: DeviceInfo,
}

impl Gpu {
    /// Opens GPU `ordinal` and loads every embedded kernel family. Errors (never panics) when
    /// the build has no kernels, the driver is missing, there is no such GPU, or the fatbins
    /// hold no code for this GPU's architecture.
    pub fn open(ordinal: usize) -> Result<Gpu> {
        if embedded::FATBINS.is_empty() {
            bail!("built without kernels (nvcc was not found at build time; run scripts/install-cuda-tools.sh and rebuild)");
        }
        if !driver_present() {
            bail!("no CUDA driver (libcuda.so) on this machine");
        }
        let count =
            CudaContext::device_count().map_err(|e| anyhow!("cuDeviceGetCount failed: {e}"))?;
        if ordinal as i32 >= count {
            bail!("GPU {ordinal} requested but the driver sees {count} device(s)");
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| anyhow!("creating a context on GPU {ordinal}: {e}"))?;
        let (major, minor) = ctx.compute_capability().map_err(|e| anyhow!("{e}"))?;
        use cudarc::driver::sys::CUdevice_attribute as A;
        let attr = |a: A| ctx.attribute(a).unwrap_or(0);
        let info = DeviceInfo {
            ordinal,
            name: ctx.name().unwrap_or_else(|_| "unknown GPU".into()),
            compute_capability: (major, minor),
            total_mem_bytes: ctx.total_mem().unwrap_or(0),
            multiprocessors: attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT),
            driver: driver_version(),
            mem_clock_khz: attr(A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE),
            mem_bus_bits: attr(A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH),
            sm_clock_khz: attr(A::CU_DEVICE_ATTRIBUTE_CLOCK_RATE),
            smem_per_block_optin: attr(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN),
        };
        keep_pool_memory(&ctx);
        let stream = ctx.default_stream();
        // SAFETY: is_culib_present only dlopens libcublas; it makes no cuBLAS call.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            bail!("libcublas.so not found; add the CUDA toolkit's lib64 (or PyTorch's nvidia/cublas/lib) to LD_LIBRARY_PATH");
        }
        let blas =
            CudaBlas::new(stream.clone()).map_err(|e| anyhow!("creating a cuBLAS handle: {e}"))?;
        let mut functions = HashMap::new();
        let mut modules = Vec::new();
        for (family, fatbin) in embedded::FATBINS {
            let module = ctx.load_module(Ptx::from_binary(fatbin.to_vec())).map_err(|e| {
                anyhow!(
                    "loading kernels/{family}.cu on {} (sm_{major}{minor}): {e}; the build targets sm_{:?} \
                     — rebuild with INSCLR_CUDA_ARCHS={major}{minor}",
                    info.name,
                    embedded::ARCHS
                )
            })?;
            // The emulator's list names every kernel of every family (same sources).
            for (_, kernel) in super::emu::KERNELS.iter().filter(|(f, _)| f == family) {
                if let Ok(f) = module.load_function(kernel) {
                    functions.insert(kernel.to_string(), f);
                }
            }
            modules.push(module);
        }
        Ok(Gpu {
            ctx,
            stream,
            blas,
            functions,
            smem_allowed: Mutex::new(HashMap::new()),
            _modules: modules,
            info,
        })
    }

    /// The kernels loaded on this GPU.
    pub fn kernels(&self) -> impl Iterator<Item = &str> {
        self.functions.keys().map(String::as_str)
    }

    /// `bytes` of uninitialised device memory (at least one byte is mapped).
    pub fn alloc(&self, bytes: usize) -> Result<DevMem> {
        // SAFETY: the memory is written (copy or memset) or only written by kernels before it
        // is read back; u8 has no invalid bit patterns.
        let slice: CudaSlice<u8> = unsafe { self.stream.alloc(bytes.max(1)) }
            .with_context(|| format!("cudaMalloc of {bytes} bytes"))?;
        let (ptr, _) = slice.device_ptr(&self.stream);
        Ok(DevMem::gpu(ptr, bytes, slice, self.info.ordinal))
    }

    pub fn write(&self, src: &[u8], dst: &mut DevMem) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        if dst.is_view() {
            self.stream.context().bind_to_thread()?;
            // SAFETY: a view is a live device range of dst.bytes() == src.len() bytes (checked
            // by the caller); waiting below keeps `src` alive until the copy is done.
            unsafe { result::memcpy_htod_async(dst.ptr(), src, self.stream.cu_stream()) }
                .context("copy to a GPU view")?;
            return self.synchronize();
        }
        let slice = dst.gpu_slice_mut()?;
        let mut view = slice.slice_mut(..src.len());
        self.stream
            .memcpy_htod(src, &mut view)
            .context("copy to GPU")
    }

    pub fn read(&self, src: &DevMem, dst: &mut [u8]) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        if src.is_view() {
            self.stream.context().bind_to_thread()?;
            // SAFETY: as in write, in the other direction.
            unsafe { result::memcpy_dtoh_async(dst, src.ptr(), self.stream.cu_stream()) }
                .context("copy from a GPU view")?;
            return self.synchronize();
        }
        let view = src.gpu_slice()?.slice(..dst.len());
        self.stream
            .memcpy_dtoh(&view, dst)
            .context("copy from GPU")?;
        self.synchronize()
    }

    pub fn zero(&self, dst: &mut DevMem) -> Result<()> {
        if dst.is_view() {
            self.stream.context().bind_to_thread()?;
            // SAFETY: a view is a live device range of dst.bytes() bytes.
            return unsafe {
                result::memset_d8_async(dst.ptr(), 0, dst.bytes(), self.stream.cu_stream())
            }
            .context("cudaMemset of a GPU view to zero");
        }
        self.stream
            .memset_zeros(dst.gpu_slice_mut()?)
            .context("cudaMemset to zero")
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .context("CUDA stream synchronize (a kernel failed earlier?)")
    }

    /// Launches `kernel` on the backend's stream.
    ///
    /// # Safety
    /// `args` must match the kernel's parameters in number, order and type, and every pointer
    /// in it must address memory the kernel may access for this launch shape.
    pub unsafe fn launch(&self, kernel: &str, cfg: Launch, args: &mut Args) -> Result<()> {
        let f = self
            .functions
            .get(kernel)
            .ok_or_else(|| anyhow!("kernel {kernel} is not in this binary's fatbins"))?;
        self.ctx.bind_to_thread().map_err(|e| anyhow!("{e}"))?;
        if cfg.smem > DEFAULT_DYNAMIC_SMEM {
            self.allow_dynamic_smem(kernel, f, cfg.smem)?;
        }
        let mut params = args.pointers();
        cudarc::driver::result::launch_kernel(
            f.cu_function(),
            cfg.grid,
            cfg.block,
            cfg.smem,
            self.stream.cu_stream(),
            &mut params,
        )
        .map_err(|e| {
            anyhow!(
                "launch {kernel} grid {:?} block {:?}: {e}",
                cfg.grid,
                cfg.block
            )
        })
    }

    /// Lets `kernel` launch with `bytes` of dynamic shared memory: above 48 KiB a kernel must opt
    /// in (`CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`), once; a later, larger request
    /// raises it. The context is bound (by the launch).
    fn allow_dynamic_smem(&self, kernel: &str, f: &CudaFunction, bytes: u32) -> Result<()> {
        let mut allowed = self.smem_allowed.lock().unwrap_or_else(|e| e.into_inner());
        if allowed.get(kernel).is_some_and(|&a| a >= bytes) {
            return Ok(());
        }
        use cudarc::driver::sys::CUfunction_attribute as F;
        f.set_attribute(
            F::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
        )
        .map_err(|e| {
            anyhow!(
                "{kernel}: opting in to {bytes} bytes of dynamic shared memory failed on {} \
                     (it allows {} bytes per block, static included): {e}",
                self.info.name,
                self.info.smem_per_block_optin
            )
        })?;
        allowed.insert(kernel.to_string(), bytes);
        Ok(())
    }

    /// Resident blocks of `kernel` per multiprocessor (the driver's occupancy calculator; 0 when
    /// it fails or the kernel is unknown).
    pub(super) fn resident_blocks(&self, kernel: &str, threads: u32, dyn_smem: u32) -> u32 {
        self.functions
            .get(kernel)
            .filter(|_| self.ctx.bind_to_thread().is_ok())
            .and_then(|f| {
                f.occupancy_max_active_blocks_per_multiprocessor(threads, dyn_smem as usize, None)
                    .ok()
            })
            .unwrap_or(0)
    }

    /// The GPU's multiprocessors (at least 1).
    pub(super) fn multiprocessors(&self) -> u32 {
        self.info.multiprocessors.max(1) as u32
    }

    /// A timing event recorded on the backend's stream now: one before and one after some work
    /// bracket its time on the GPU (`INSCLR_PROFILE=1`, [`crate::backend::profile`]).
    pub fn timing_event(&self) -> Result<CudaEvent> {
        let flags = cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT;
        self.stream
            .record_event(Some(flags))
            .map_err(|e| anyhow!("recording a CUDA event: {e}"))
    }

    /// Binds the context to the calling thread before a raw cuBLAS call.
    pub fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| anyhow!("{e}"))
    }
}
