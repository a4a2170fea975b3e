//! The CUDA backend: one file per `kernels/*.cu` family, each a launch shape plus a thin safe
//! wrapper per kernel, named as the kernel's `extern "C"` entry point. cuBLAS serves GEMM
//! until our own GEMM lands, and stays as the baseline in `cargo bench`.
//!
//! Nothing here panics without a GPU: cudarc loads libcuda lazily and panics if it is missing,
//! so [`CudaBackend::new`] checks for the library first and returns an error instead.

pub mod gemm;
pub mod norm;
pub mod pool;

use super::{check_same, Act, Backend, BatchNorm, Buf, Conv, Gem, L2Norm, MatMul, MaxPool};
use anyhow::{anyhow, bail, Context, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::Arc;

/// The kernels compiled by build.rs: `(family, fatbin)` pairs, the SM list and ptxas's report.
pub mod embedded {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// True when build.rs found nvcc and embedded at least one kernel family.
pub fn has_kernels() -> bool {
    !embedded::FATBINS.is_empty()
}

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
}

/// A CUDA device with its stream, cuBLAS handle and the embedded kernel modules.
pub struct CudaBackend {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    modules: HashMap<&'static str, Arc<CudaModule>>,
    info: DeviceInfo,
}

impl CudaBackend {
    /// Opens GPU `ordinal` and loads every embedded kernel family. Errors (never panics) when
    /// the build has no kernels, the driver is missing, there is no such GPU, or the fatbins
    /// hold no code for this GPU's architecture.
    pub fn new(ordinal: usize) -> Result<Self> {
        if !has_kernels() {
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
        };
        let stream = ctx.default_stream();
        // SAFETY: is_culib_present only dlopens libcublas; it makes no cuBLAS call.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            bail!("libcublas.so not found; add the CUDA toolkit's lib64 (or PyTorch's nvidia/cublas/lib) to LD_LIBRARY_PATH");
        }
        let blas =
            CudaBlas::new(stream.clone()).map_err(|e| anyhow!("creating a cuBLAS handle: {e}"))?;
        let mut modules = HashMap::new();
        for (family, fatbin) in embedded::FATBINS {
            let module = ctx.load_module(Ptx::from_binary(fatbin.to_vec())).map_err(|e| {
                anyhow!(
                    "loading kernels/{family}.cu on {} (sm_{major}{minor}): {e}; the build targets sm_{:?} \
                     — rebuild with INSCLR_CUDA_ARCHS={major}{minor}",
                    info.name,
                    embedded::ARCHS
                )
            })?;
            modules.insert(*family, module);
        }
        Ok(CudaBackend {
            stream,
            blas,
            modules,
            info,
        })
    }

    /// The GPU this backend runs on.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The stream every launch of this backend goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    fn function(&self, family: &str, name: &str) -> Result<CudaFunction> {
        let module = self
            .modules
            .get(family)
            .ok_or_else(|| anyhow!("kernels/{family}.cu was not built into this binary"))?;
        module
            .load_function(name)
            .map_err(|e| anyhow!("kernel {name} not found in kernels/{family}.cu: {e}"))
    }
}

fn dev<T: DeviceRepr>(b: &Buf<T>) -> Result<&CudaSlice<T>> {
    match b {
        Buf::Device(d) => Ok(d),
        Buf::Host(_) => bail!("the CUDA backend was given a host buffer; upload it first"),
    }
}

fn dev_mut<T: DeviceRepr>(b: &mut Buf<T>) -> Result<&mut CudaSlice<T>> {
    match b {
        Buf::Device(d) => Ok(d),
        Buf::Host(_) => bail!("the CUDA backend was given a host buffer; upload it first"),
    }
}

/// The error of an op whose kernel is not written yet: says where it will live and what to do.
fn no_kernel(op: &str, family: &str) -> anyhow::Error {
    anyhow!("{op} has no CUDA kernel yet (kernels/{family}.cu); use --backend cpu")
}

/// A size as the `int` our kernels take, or an error naming the op when it does not fit.
fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).with_context(|| format!("{what} = {v} exceeds the kernels' 32-bit size limit"))
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn describe(&self) -> String {
        let i = &self.info;
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

    fn zeros(&self, len: usize) -> Result<Buf<f32>> {
        Ok(Buf::Device(
            self.stream.alloc_zeros(len).context("cudaMalloc")?,
        ))
    }

    fn upload(&self, data: &[f32]) -> Result<Buf<f32>> {
        Ok(Buf::Device(
            self.stream.clone_htod(data).context("copy to GPU")?,
        ))
    }

    fn download(&self, buf: &Buf<f32>) -> Result<Vec<f32>> {
        self.stream.clone_dtoh(dev(buf)?).context("copy from GPU")
    }

    fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .context("CUDA stream synchronize (a kernel failed earlier?)")
    }

    fn matmul(&self, a: &Buf<f32>, b: &Buf<f32>, c: &mut Buf<f32>, shape: MatMul) -> Result<()> {
        shape.check(a.len(), b.len(), c.len())?;
        gemm::sgemm_cublas(self, dev(a)?, dev(b)?, dev_mut(c)?, shape)
    }

    fn gem_fwd(&self, x: &Buf<f32>, y: &mut Buf<f32>, shape: Gem) -> Result<()> {
        shape.check(x.len(), y.len())?;
        pool::gem_fwd_f32(self, dev(x)?, dev_mut(y)?, shape)
    }

    fn gem_bwd(
        &self,
        x: &Buf<f32>,
        y: &Buf<f32>,
        dy: &Buf<f32>,
        dx: &mut Buf<f32>,
        shape: Gem,
    ) -> Result<()> {
        shape.check(x.len(), y.len())?;
        shape.check(dx.len(), dy.len())?;
        pool::gem_bwd_f32(self, dev(x)?, dev(y)?, dev(dy)?, dev_mut(dx)?, shape)
    }

    fn l2norm_fwd(&self, x: &Buf<f32>, y: &mut Buf<f32>, shape: L2Norm) -> Result<()> {
        shape.check(&[x.len(), y.len()])?;
        norm::l2norm_fwd_f32(self, dev(x)?, dev_mut(y)?, shape)
    }

    fn l2norm_bwd(
        &self,
        x: &Buf<f32>,
        dy: &Buf<f32>,
        dx: &mut Buf<f32>,
        shape: L2Norm,
    ) -> Result<()> {
        shape.check(&[x.len(), dy.len(), dx.len()])?;
        norm::l2norm_bwd_f32(self, dev(x)?, dev(dy)?, dev_mut(dx)?, shape)
    }

    fn zero(&self, buf: &mut Buf<f32>) -> Result<()> {
        self.stream
            .memset_zeros(dev_mut(buf)?)
            .context("cudaMemset to zero")
    }

    fn upload_into(&self, data: &[f32], buf: &mut Buf<f32>) -> Result<()> {
        check_same("upload_into", &[data.len(), buf.len()])?;
        self.stream
            .memcpy_htod(data, dev_mut(buf)?)
            .context("copy to GPU")
    }

    fn conv2d_fwd(&self, x: &Buf<f32>, w: &Buf<f32>, y: &mut Buf<f32>, s: Conv) -> Result<()> {
        s.check(x.len(), w.len(), y.len())?;
        Err(no_kernel("conv2d_fwd", "conv"))
    }

    fn conv2d_bwd_data(
        &self,
        dy: &Buf<f32>,
        w: &Buf<f32>,
        dx: &mut Buf<f32>,
        s: Conv,
    ) -> Result<()> {
        s.check(dx.len(), w.len(), dy.len())?;
        Err(no_kernel("conv2d_bwd_data", "conv"))
    }

    fn conv2d_bwd_weight(
        &self,
        x: &Buf<f32>,
        dy: &Buf<f32>,
        dw: &mut Buf<f32>,
        s: Conv,
    ) -> Result<()> {
        s.check(x.len(), dw.len(), dy.len())?;
        Err(no_kernel("conv2d_bwd_weight", "conv"))
    }

    fn batchnorm_fwd_train(
        &self,
        _x: &Buf<f32>,
        _gamma: &Buf<f32>,
        _beta: &Buf<f32>,
        _running: (&mut Buf<f32>, &mut Buf<f32>),
        _saved: (&mut Buf<f32>, &mut Buf<f32>),
        _y: &mut Buf<f32>,
        _s: BatchNorm,
    ) -> Result<()> {
        Err(no_kernel("batchnorm_fwd_train", "norm"))
    }

    fn batchnorm_fwd_eval(
        &self,
        _x: &Buf<f32>,
        _gamma: &Buf<f32>,
        _beta: &Buf<f32>,
        _running_mean: &Buf<f32>,
        _running_var: &Buf<f32>,
        _y: &mut Buf<f32>,
        _s: BatchNorm,
    ) -> Result<()> {
        Err(no_kernel("batchnorm_fwd_eval", "norm"))
    }

    fn batchnorm_bwd(
        &self,
        _x: &Buf<f32>,
        _y: &Buf<f32>,
        _dy: &Buf<f32>,
        _gamma: &Buf<f32>,
        _saved: (&Buf<f32>, &Buf<f32>),
        _dx: &mut Buf<f32>,
        _dparams: (&mut Buf<f32>, &mut Buf<f32>),
        _s: BatchNorm,
    ) -> Result<()> {
        Err(no_kernel("batchnorm_bwd", "norm"))
    }

    fn maxpool_fwd(&self, _x: &Buf<f32>, _y: &mut Buf<f32>, _s: MaxPool) -> Result<()> {
        Err(no_kernel("maxpool_fwd", "pool"))
    }

    fn maxpool_bwd(
        &self,
        _x: &Buf<f32>,
        _y: &Buf<f32>,
        _dy: &Buf<f32>,
        _dx: &mut Buf<f32>,
        _s: MaxPool,
    ) -> Result<()> {
        Err(no_kernel("maxpool_bwd", "pool"))
    }

    fn add_fwd(&self, _a: &Buf<f32>, _b: &Buf<f32>, _y: &mut Buf<f32>) -> Result<()> {
        Err(no_kernel("add_fwd", "eltwise"))
    }

    fn act_fwd(&self, _x: &Buf<f32>, _y: &mut Buf<f32>, _act: Act) -> Result<()> {
        Err(no_kernel("act_fwd", "eltwise"))
    }

    fn act_bwd(&self, _y: &Buf<f32>, _dy: &Buf<f32>, _dx: &mut Buf<f32>, _act: Act) -> Result<()> {
        Err(no_kernel("act_bwd", "eltwise"))
    }
}
