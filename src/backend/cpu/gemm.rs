//! Row-major f32 matrix product on the CPU through `matrixmultiply` (packed, SIMD), split
//! across rayon's threads, reading transposes through strides instead of copying.

use super::{widen, with_f32_out};
use crate::backend::{Buf, Checked, MatMul};
use anyhow::Result;
use rayon::prelude::*;

/// `C = alpha * op(A) op(B) + beta * C`; sizes are checked by the caller.
pub fn matmul_f32(a: &[f32], b: &[f32], c: &mut [f32], s: MatMul) {
    let (m, n, k) = (s.m, s.n, s.k);
    if m == 0 || n == 0 {
        return;
    }
    // Strides (row, column) of op(A) and op(B) as stored.
    let (rsa, csa) = if s.trans_a {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    let (rsb, csb) = if s.trans_b {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    if k == 0 {
        // matrixmultiply leaves C untouched for k = 0; the product is an empty sum, and beta = 0
        // overwrites C without reading it (it may hold NaN).
        c.iter_mut()
            .for_each(|v| *v = if s.beta == 0.0 { 0.0 } else { *v * s.beta });
        return;
    }
    // One single-threaded GEMM per rayon thread, over a slab of C's rows or columns (the longer
    // side; slabs in whole 16-wide register tiles). matrixmultiply's own threads competed with
    // rayon's idle workers for the cores: this measured 1.1-1.25x faster on ResNet-50 steps and
    // the Lite0 forward (bench_results/cpu-2026-11-30.md). Each element of C comes out of the
    // same micro-kernel with the same summation order whatever the split and the product's
    // shape, so results do not depend on the thread count or on how a caller tiles a product.
    let slabs = if m * n * k < PARALLEL_MIN {
        1
    } else {
        rayon::current_num_threads()
    };
    let split_rows = m >= n;
    let len = if split_rows { m } else { n };
    let step = len.div_ceil(slabs).next_multiple_of(16).min(len);
    let c = SharedOut(c.as_mut_ptr());
    (0..len.div_ceil(step)).into_par_iter().for_each(|p| {
        let (lo, hi) = (p * step, ((p + 1) * step).min(len));
        let (rows, cols, a_at, b_at, c_at) = if split_rows {
            (hi - lo, n, lo as isize * rsa, 0, lo * n)
        } else {
            (m, hi - lo, 0, lo as isize * csb, lo)
        };
        // SAFETY: the caller checked that a, b, c hold m*k, k*n and m*n elements; the offsets
        // and strides address only those, and the slabs of C that tasks write are disjoint.
        unsafe {
            matrixmultiply::sgemm(
                rows,
                k,
                cols,
                s.alpha,
                a.as_ptr().offset(a_at),
                rsa,
                csa,
                b.as_ptr().offset(b_at),
                rsb,
                csb,
                s.beta,
                c.at(c_at),
                n as isize,
                1,
            );
        }
    });
}

/// Products of fewer multiply-adds than this run on one thread.
const PARALLEL_MIN: usize = 1 << 18;

/// C's base pointer, shared by the tasks that write its disjoint slabs.
struct SharedOut(*mut f32);

// SAFETY: the tasks write disjoint elements through it (see `matmul_f32`).
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer `i` elements on; the caller keeps `i` inside C.
    unsafe fn at(&self, i: usize) -> *mut f32 {
        self.0.add(i)
    }
}

/// The textbook triple loop, f64 accumulation: the oracle for every GEMM, CPU or GPU.
pub fn matmul_naive(a: &[f32], b: &[f32], c: &mut [f32], s: MatMul) {
    for i in 0..s.m {
        for j in 0..s.n {
            let mut acc = 0.0f64;
            for p in 0..s.k {
                let av = if s.trans_a {
                    a[p * s.m + i]
                } else {
                    a[i * s.k + p]
                };
                let bv = if s.trans_b {
                    b[j * s.k + p]
                } else {
                    b[p * s.n + j]
                };
                acc += av as f64 * bv as f64;
            }
            let prev = if s.beta == 0.0 {
                0.0
            } else {
                s.beta as f64 * c[i * s.n + j] as f64
            };
            c[i * s.n + j] = (s.alpha as f64 * acc + prev) as f32;
        }
    }
}

impl crate::backend::GemmOps for super::CpuBackend {
    fn matmul(&self, a: &Buf, b: &Buf, c: &mut Buf, s: Checked<MatMul>) -> Result<()> {
        let (a, b) = (widen(a)?, widen(b)?);
        // beta != 0 reads C: a bf16 C is widened first.
        with_f32_out(c, s.beta != 0.0, |c| matmul_f32(&a, &b, c, *s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The pool's top-k must not depend on the thread count or on its tiling: every element
    /// of C has the same bits whether the product runs on one thread or several, and whether
    /// it is computed in a large product or alone.
    #[test]
    fn results_do_not_depend_on_threads_or_the_product_shape() {
        let mut rng = Rng::new(4);
        let (m, n, k) = (70, 300, 33);
        assert!(
            m * n * k >= PARALLEL_MIN,
            "the product must be split across threads"
        );
        let a = rng.vec_f32(m * k, -1.0, 1.0);
        let b = rng.vec_f32(n * k, -1.0, 1.0);
        let s = MatMul::new(m, n, k).tb();
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut c = vec![f32::NAN; m * n];
            pool.install(|| matmul_f32(&a, &b, &mut c, s));
            c
        };
        let one = on(1);
        let mut want = vec![0.0; m * n];
        matmul_naive(&a, &b, &mut want, s);
        let err = one
            .iter()
            .zip(&want)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(err < 1e-5, "{err}");
        for threads in [2, 3] {
            let got = on(threads);
            assert!(got
                .iter()
                .zip(&one)
                .all(|(x, y)| x.to_bits() == y.to_bits()));
        }
        // Row 5 against columns 17..=19 alone, as a 1 x 3 product.
        let mut c = vec![0.0; 3];
        let cols = &b[17 * k..20 * k];
        matmul_f32(&a[5 * k..6 * k], cols, &mut c, MatMul::new(1, 3, k).tb());
        for (j, v) in c.iter().enumerate() {
            assert_eq!(v.to_bits(), one[5 * n + 17 + j].to_bits());
        }
    }
}
