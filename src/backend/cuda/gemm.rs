//! Launchers for kernels/gemm.cu, and cuBLAS (SGEMM, and bf16 through cublasGemmEx): the
//! baseline `cargo bench` measures our kernels against, and an f32 fallback on a GPU with
//! `INSCLR_GEMM=cublas`.

use super::device::{Args, DevMem, Launch};
use super::layer::Layer;
use super::work::Work;
use super::{int, CudaBackend};
use crate::backend::{Buf, Checked, DType, GemmOps, MatMul};
use anyhow::{anyhow, bail, Result};
use cudarc::cublas::sys::cublasOperation_t as CublasOp;

/// Block tiles (m, n) of the kernels: `matmul_f32` for outputs at least this large in both
/// dimensions, `matmul_small_f32` otherwise, `matmul_narrow_f32` where even that leaves
/// multiprocessors idle ([`f32_kernel`]); `matmul_bf16` always.
const F32_TILE: (usize, usize) = (128, 128);
const F32_SMALL_TILE: (usize, usize) = (64, 64);
const F32_NARROW_TILE: (usize, usize) = (32, 32);
const BF16_TILE: (usize, usize) = (128, 128);

/// The f32 kernel and its tile for an `m x n` output on a GPU of `sms` multiprocessors: 128 x 128
/// tiles where both dimensions fill them, else 64 x 64, else (fewer 64 x 64 tiles than
/// multiprocessors: each would run its whole k alone on one) 32 x 32.
fn f32_kernel(m: usize, n: usize, sms: usize) -> (&'static str, (usize, usize)) {
    if m >= F32_TILE.0 && n >= F32_TILE.1 {
        ("matmul_f32", F32_TILE)
    } else if m.div_ceil(F32_SMALL_TILE.0) * n.div_ceil(F32_SMALL_TILE.1) < sms {
        ("matmul_narrow_f32", F32_NARROW_TILE)
    } else {
        ("matmul_small_f32", F32_SMALL_TILE)
    }
}

/// The pipelined tensor-core kernels (kernels/tc_gemm.cuh): block tile, threads and dynamic
/// shared memory (3 stages of (BM + BN) x 32 bf16; the epilogue reuses them), as
/// `tc::SmemSize` computes it.
struct TcTile {
    kernel_bf16: &'static str,
    kernel_f32: &'static str,
    tile: (usize, usize),
}
const TC_STAGES: usize = 3;
const TC_THREADS: u32 = 128;
const TC_128: TcTile = TcTile {
    kernel_bf16: "matmul_tc_bf16",
    kernel_f32: "matmul_tc_bf16_f32",
    tile: (128, 128),
};
const TC_64: TcTile = TcTile {
    kernel_bf16: "matmul_tc64_bf16",
    kernel_f32: "matmul_tc64_bf16_f32",
    tile: (64, 128),
};

impl TcTile {
    fn smem_bytes(&self) -> u32 {
        ((self.tile.0 + self.tile.1) * 32 * 2 * TC_STAGES) as u32
    }
}

/// True when the pipelined kernels can take the product: every operand row starts 16-byte
/// aligned (their 16-byte copies and stores need it), so each leading dimension is a multiple of
/// 8 elements and each operand starts 16-byte aligned.
fn tc_aligned(s: &MatMul, offsets: [usize; 3]) -> bool {
    let lda = if s.trans_a { s.m } else { s.k };
    let ldb = if s.trans_b { s.k } else { s.n };
    lda % 8 == 0 && ldb % 8 == 0 && offsets.iter().all(|o| o % 16 == 0)
}

/// True when `INSCLR_GEMM=cublas` routes f32 products on a GPU to cuBLAS.
fn cublas_requested() -> bool {
    std::env::var("INSCLR_GEMM").is_ok_and(|v| v == "cublas")
}

impl GemmOps for CudaBackend {
    fn matmul(&self, a: &Buf, b: &Buf, c: &mut Buf, s: Checked<MatMul>) -> Result<()> {
        if a.dtype() == DType::F32 && cublas_requested() {
            if let Layer::Gpu(_) = self.layer() {
                return self.matmul_cublas(a, b, c, *s);
            }
        }
        let (dtype, out) = (a.dtype(), c.dtype());
        // SAFETY: the shape was checked: A, B, C hold m*k, k*n, m*n elements of one dtype.
        unsafe {
            self.matmul_at(
                (a.dev()?, 0),
                (b.dev()?, 0),
                (c.dev_mut()?, 0),
                *s,
                dtype,
                out,
            )
        }
    }
}

/// The grid of a product tiled `(tm, tn)`, and m, n, k as the kernels' `int`s. gemm.cu computes
/// element addresses in 64 bits, so only the dimensions (plus a tile) must fit an `int`, not the
/// operands' element counts: a 1.5M x 2048 bank is one product.
fn launch_shape(s: &MatMul, (tm, tn): (usize, usize)) -> Result<(Launch, [i32; 3])> {
    let grid_y = s.m.div_ceil(tm);
    if grid_y > 65_535 {
        bail!(
            "matmul: m = {} needs {grid_y} row blocks, over the grid's 65535",
            s.m
        );
    }
    let cfg = Launch {
        grid: (s.n.div_ceil(tn) as u32, grid_y as u32, 1),
        block: (256, 1, 1),
        smem: 0,
    };
    let dims = [
        int(s.m, "matmul m")?,
        int(s.n, "matmul n")?,
        int(s.k, "matmul k")?,
    ];
    Ok((cfg, dims))
}

/// A product's multiply-adds and compulsory traffic: A and B read once, C written (and read
/// first when `beta` is not 0).
fn gemm_work(s: &MatMul, dtype: DType, out: DType) -> Work {
    let c_passes = if s.beta == 0.0 { 1 } else { 2 };
    let bytes = (s.m * s.k + s.k * s.n) * dtype.size() + c_passes * s.m * s.n * out.size();
    Work {
        flops: 2.0 * (s.m * s.n * s.k) as f64,
        bytes: bytes as f64,
        unit: Work::unit_of(dtype),
        shape: format!("{}x{}x{}", s.m, s.n, s.k),
        fill: 1.0,
    }
}

impl CudaBackend {
    /// Launches our GEMM on `(memory, byte offset)` operands: a launcher's building block (the
    /// streamed search multiplies a query block by a slice of the database). A and B are of
    /// `dtype`, C of `out` (bf16 inputs may write f32).
    ///
    /// # Safety
    /// From each offset, A and B hold m*k and k*n elements of `dtype`, C m*n of `out`.
    pub(super) unsafe fn matmul_at(
        &self,
        a: (&DevMem, usize),
        b: (&DevMem, usize),
        c: (&DevMem, usize),
        s: MatMul,
        dtype: DType,
        out: DType,
    ) -> Result<()> {
        if s.m == 0 || s.n == 0 {
            return Ok(());
        }
        let pipelined = dtype == DType::BF16 && tc_aligned(&s, [a.1, b.1, c.1]);
        let tc = if s.m <= TC_64.tile.0 { &TC_64 } else { &TC_128 };
        let (kernel, (tm, tn)) = match (dtype, out) {
            (DType::BF16, DType::BF16) if pipelined => (tc.kernel_bf16, tc.tile),
            (DType::BF16, DType::F32) if pipelined => (tc.kernel_f32, tc.tile),
            (DType::BF16, DType::BF16) => ("matmul_bf16", BF16_TILE),
            (DType::BF16, DType::F32) => ("matmul_bf16_f32", BF16_TILE),
            (DType::F32, DType::F32) => f32_kernel(s.m, s.n, self.multiprocessors()),
            _ => bail!("no GEMM kernel takes {dtype} inputs to a {out} output"),
        };
        let (mut cfg, [m, n, k]) = launch_shape(&s, (tm, tn))?;
        if pipelined {
            cfg.block = (TC_THREADS, 1, 1);
            cfg.smem = tc.smem_bytes();
        }
        let args = Args::new()
            .ptr_at(a.0, a.1)
            .ptr_at(b.0, b.1)
            .ptr_at(c.0, c.1)
            .i32(m)
            .i32(n)
            .i32(k)
            .i32(s.trans_a as i32)
            .i32(s.trans_b as i32)
            .f32(s.alpha)
            .f32(s.beta)
            .work(gemm_work(&s, dtype, out));
        // Arguments match matmul_*(A, B, C, m, n, k, trans_a, trans_b, alpha, beta); the sizes
        // are the caller's contract.
        self.launch(kernel, cfg, args)
    }

    /// `C = alpha op(A) op(B) + beta C` through cuBLAS (GPU only): the baseline of `cargo
    /// bench`. f32 operands run SGEMM; bf16 operands run cublasGemmEx on the tensor cores with
    /// f32 accumulation, into a bf16 or an f32 C (as our bf16 GEMM and weight gradient write).
    /// Checks the shape like `matmul`.
    pub fn matmul_cublas(&self, a: &Buf, b: &Buf, c: &mut Buf, s: MatMul) -> Result<()> {
        self.cublas(a, b, c, s, false)
    }

    /// As [`CudaBackend::matmul_cublas`], f32 operands on the TF32 tensor cores
    /// (cublasGemmEx with `CUBLAS_COMPUTE_32F_FAST_TF32`, what PyTorch's f32 products run with
    /// TF32 allowed): the baseline of our `_tf32` convolutions.
    pub fn matmul_cublas_tf32(&self, a: &Buf, b: &Buf, c: &mut Buf, s: MatMul) -> Result<()> {
        if a.dtype() != DType::F32 {
            bail!("the TF32 cuBLAS baseline multiplies f32, got {}", a.dtype());
        }
        self.cublas(a, b, c, s, true)
    }

    fn cublas(&self, a: &Buf, b: &Buf, c: &mut Buf, s: MatMul, tf32: bool) -> Result<()> {
        let Layer::Gpu(gpu) = self.layer() else {
            bail!("cuBLAS runs on a GPU only");
        };
        let s = cublas_check(s, a, b, c)?;
        if s.m == 0 || s.n == 0 {
            return Ok(());
        }
        let op = |t: bool| {
            if t {
                CublasOp::CUBLAS_OP_T
            } else {
                CublasOp::CUBLAS_OP_N
            }
        };
        // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T.
        let (m, n, k) = (
            int(s.n, "cublas n")?,
            int(s.m, "cublas m")?,
            int(s.k, "cublas k")?,
        );
        let lda = int(if s.trans_b { s.k } else { s.n }.max(1), "cublas lda")?;
        let ldb = int(if s.trans_a { s.m } else { s.k }.max(1), "cublas ldb")?;
        let ldc = int(s.n, "cublas ldc")?;
        for mem in [a.dev()?, b.dev()?, c.dev()?] {
            self.layer().check_home(mem)?;
        }
        let (pa, pb, pc) = (a.dev()?.ptr(), b.dev()?.ptr(), c.dev_mut()?.ptr());
        gpu.bind()?;
        let what = |e| anyhow!("cuBLAS {} m={} n={} k={}: {e}", a.dtype(), s.m, s.n, s.k);
        if a.dtype() == DType::F32 && !tf32 {
            // SAFETY: the shape was checked: a, b, c hold m*k, k*n and m*n f32, which is what
            // these leading dimensions address; the handle's stream is the backend's stream.
            return unsafe {
                cudarc::cublas::result::sgemm(
                    *gpu.blas.handle(),
                    op(s.trans_b),
                    op(s.trans_a),
                    m,
                    n,
                    k,
                    &s.alpha,
                    pb as *const f32,
                    lda,
                    pa as *const f32,
                    ldb,
                    &s.beta,
                    pc as *mut f32,
                    ldc,
                )
            }
            .map_err(what);
        }
        use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType};
        let c_type = match c.dtype() {
            DType::BF16 => cudaDataType::CUDA_R_16BF,
            _ => cudaDataType::CUDA_R_32F,
        };
        let (ab_type, compute) = if tf32 {
            (
                cudaDataType::CUDA_R_32F,
                cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
            )
        } else {
            (
                cudaDataType::CUDA_R_16BF,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
            )
        };
        // SAFETY: as for SGEMM, with a and b bf16 and c bf16 or f32, or all three f32 for TF32
        // (checked); with a 32-bit compute type alpha and beta are host f32.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *gpu.blas.handle(),
                op(s.trans_b),
                op(s.trans_a),
                m,
                n,
                k,
                (&s.alpha as *const f32).cast(),
                pb as *const std::ffi::c_void,
                ab_type,
                lda,
                pa as *const std::ffi::c_void,
                ab_type,
                ldb,
                (&s.beta as *const f32).cast(),
                pc as *mut std::ffi::c_void,
                c_type,
                ldc,
                compute,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(what)
    }
}

/// The operand types the cuBLAS baseline takes: f32 x f32 -> f32 (SGEMM), or bf16 x bf16 ->
/// bf16 or f32 (cublasGemmEx); the sizes as [`MatMul::check`] wants them.
fn cublas_check(s: MatMul, a: &Buf, b: &Buf, c: &Buf) -> Result<MatMul> {
    let ok = matches!(
        (a.dtype(), b.dtype(), c.dtype()),
        (DType::F32, DType::F32, DType::F32) | (DType::BF16, DType::BF16, DType::BF16 | DType::F32)
    );
    if !ok {
        bail!(
            "the cuBLAS baseline multiplies f32 into f32 or bf16 into bf16 or f32, got {} x {} -> {}",
            a.dtype(),
            b.dtype(),
            c.dtype()
        );
    }
    // The sizes as MatMul::check tests them; its dtype rule (one type for all three) is
    // stricter than cuBLAS's.
    if a.len() != s.m * s.k || b.len() != s.k * s.n || c.len() != s.m * s.n {
        bail!(
            "cuBLAS m={} n={} k={}: buffers hold A={}, B={}, C={} elements; expected {}, {}, {}",
            s.m,
            s.n,
            s.k,
            a.len(),
            b.len(),
            c.len(),
            s.m * s.k,
            s.k * s.n,
            s.m * s.n
        );
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_kernel_narrows_its_tiles_when_the_gpu_would_idle() {
        // ResNet's head (64 x 2048): 32 tiles of 64 x 64 for 132 multiprocessors; 128 of 32 x 32.
        assert_eq!(f32_kernel(64, 2048, 132).0, "matmul_narrow_f32");
        // Enough 64 x 64 tiles (a query batch against a bank), or 128 x 128 ones.
        assert_eq!(f32_kernel(64, 100_000, 132).0, "matmul_small_f32");
        assert_eq!(f32_kernel(64, 2048, 32).0, "matmul_small_f32");
        assert_eq!(f32_kernel(2048, 2048, 132).0, "matmul_f32");
        assert_eq!(f32_kernel(128, 64, 1).0, "matmul_small_f32");
        assert_eq!(f32_kernel(7, 5, 1).0, "matmul_small_f32");
        assert_eq!(f32_kernel(7, 5, 2).0, "matmul_narrow_f32");
    }

    #[test]
    fn a_product_over_2_pow_31_elements_launches_when_its_dimensions_fit() {
        // GLDv2's 1.5M descriptors of 2048 against a block of 512 queries: 3.1G elements of B.
        let s = MatMul::new(512, 1_500_000, 2048).tb();
        let (cfg, dims) = launch_shape(&s, F32_TILE).unwrap();
        assert_eq!(dims, [512, 1_500_000, 2048]);
        assert_eq!(cfg.grid, (11_719, 4, 1));
        // Too many row blocks for the grid's y, or a dimension past an int: errors, not launches.
        let tall = MatMul::new(65_536 * 128 + 1, 8, 8);
        assert!(launch_shape(&tall, F32_TILE).is_err());
        let deep = MatMul::new(8, 8, 1 << 31);
        let err = launch_shape(&deep, F32_TILE).unwrap_err().to_string();
        assert!(err.contains("matmul k"), "{err}");
    }

    #[test]
    fn the_cublas_baseline_takes_f32_or_bf16_inputs_and_checks_sizes() {
        let be = crate::backend::cpu();
        let buf = |dt, len| be.zeros(dt, len).unwrap();
        let s = MatMul::new(2, 3, 4);
        let (f, h) = (DType::F32, DType::BF16);
        assert!(cublas_check(s, &buf(f, 8), &buf(f, 12), &buf(f, 6)).is_ok());
        assert!(cublas_check(s, &buf(h, 8), &buf(h, 12), &buf(h, 6)).is_ok());
        // bf16 operands into an f32 C, as the weight gradient writes.
        assert!(cublas_check(s, &buf(h, 8), &buf(h, 12), &buf(f, 6)).is_ok());
        let mixed = cublas_check(s, &buf(f, 8), &buf(h, 12), &buf(f, 6)).unwrap_err();
        assert!(mixed.to_string().contains("f32 x bf16"), "{mixed}");
        assert!(cublas_check(s, &buf(f, 8), &buf(f, 12), &buf(h, 6)).is_err());
        let short = cublas_check(s, &buf(h, 8), &buf(h, 11), &buf(h, 6)).unwrap_err();
        assert!(short.to_string().contains("B=11"), "{short}");
    }
}
