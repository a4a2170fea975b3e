//! The CPU backend: plain Rust, one file per kernel family with the same names as
//! `kernels/*.cu`. It is the oracle every CUDA kernel is tested against, and a real backend
//! for small runs (rayon over rows, matrixmultiply for GEMM). Every op runs on f32.

pub mod conv;
pub mod eltwise;
pub mod gemm;
pub mod norm;
pub mod pool;

use super::{Backend, Buf, DType, Device, Op};
use anyhow::{bail, Result};

/// The CPU backend; stateless.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl CpuBackend {
    /// A CPU backend using all cores rayon sees.
    pub fn new() -> Self {
        CpuBackend
    }
}

impl Backend for CpuBackend {
    fn device(&self) -> Device {
        Device::Cpu
    }

    fn describe(&self) -> String {
        format!("CPU, {} threads", rayon::current_num_threads())
    }

    fn supports(&self, _op: Op, dtype: DType) -> bool {
        dtype == DType::F32
    }

    fn zeros(&self, dtype: DType, len: usize) -> Result<Buf> {
        Ok(Buf::host_zeroed(dtype, len))
    }

    fn write_bytes(&self, src: &[u8], dst: &mut Buf) -> Result<()> {
        let Some(d) = dst.host_bytes_mut() else {
            bail!("the CPU backend was given a device buffer; download it first")
        };
        if d.len() != src.len() {
            bail!("copy of {} bytes into a buffer of {}", src.len(), d.len());
        }
        d.copy_from_slice(src);
        Ok(())
    }

    fn read_bytes(&self, src: &Buf, dst: &mut [u8]) -> Result<()> {
        let Some(s) = src.host_bytes() else {
            bail!("the CPU backend was given a device buffer")
        };
        if s.len() != dst.len() {
            bail!("copy of a {}-byte buffer into {} bytes", s.len(), dst.len());
        }
        dst.copy_from_slice(s);
        Ok(())
    }

    fn zero(&self, buf: &mut Buf) -> Result<()> {
        let Some(d) = buf.host_bytes_mut() else {
            bail!("the CPU backend was given a device buffer")
        };
        d.fill(0);
        Ok(())
    }

    super::family_accessors!();

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}
