//! Helpers shared by the integration tests: GPU discovery with an explicit skip, error norms,
//! finite differences.
#![allow(dead_code)]

use insclr::backend::{Backend, Buf, CudaBackend};

/// The CUDA backend, or `None` with a printed skip message. With `INSCLR_REQUIRE_GPU=1` a
/// missing GPU fails the test instead of skipping it.
pub fn gpu(test: &str) -> Option<CudaBackend> {
    match CudaBackend::new(0) {
        Ok(be) => Some(be),
        Err(e) => {
            if std::env::var("INSCLR_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("{test}: INSCLR_REQUIRE_GPU=1 but no CUDA backend: {e:#}");
            }
            // Written to the stderr handle directly: libtest captures eprintln! of passing tests,
            // and a skip must be visible in the test log.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: no GPU ({e:#})");
            None
        }
    }
}

/// ||a - b|| / max(||b||, tiny), in f64.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        assert!(
            x.is_finite(),
            "non-finite value {x} (poisoned output not overwritten?)"
        );
        num += (x as f64 - y as f64).powi(2);
        den += (y as f64).powi(2);
    }
    num.sqrt() / den.sqrt().max(1e-30)
}

/// A buffer of `len` NaNs, so that any element a kernel forgets to write shows up.
pub fn poisoned(be: &dyn Backend, len: usize) -> Buf<f32> {
    be.upload(&vec![f32::NAN; len]).expect("upload")
}

/// Central finite difference of `f` with respect to every element of `x`.
pub fn numeric_grad(x: &[f32], h: f32, mut f: impl FnMut(&[f32]) -> f64) -> Vec<f32> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = xp[i];
            xp[i] = orig + h;
            let up = f(&xp);
            xp[i] = orig - h;
            let down = f(&xp);
            xp[i] = orig;
            ((up - down) / (2.0 * h as f64)) as f32
        })
        .collect()
}
