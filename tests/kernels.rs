//! The foundation kernels (GeM pooling, L2 normalisation, GEMM): CPU hand-computed cases,
//! finite-difference checks of every backward, and kernel-vs-CPU comparisons on random inputs
//! with edge sizes, on the GPU when there is one and on the emulated GPU otherwise
//! (`INSCLR_REQUIRE_GPU=1` demands the GPU).

mod common;

use common::{
    download_f32, kernel_device, matches_cpu, numeric_grad, poisoned_as, rel_err, upload_as,
    FLOAT_DTYPES,
};
use insclr::backend::cpu::{gemm, norm, pool};
use insclr::backend::DType;
use insclr::backend::{
    select, select_f32, Act, Backend, BatchNorm, DeviceChoice, Gem, L2Norm, MatMul, Op,
};
use insclr::rng::Rng;

fn gem_cpu(x: &[f32], s: Gem) -> Vec<f32> {
    let mut y = vec![0.0; s.rows];
    pool::gem_fwd_f32(x, &mut y, s);
    y
}

fn l2_cpu(x: &[f32], s: L2Norm) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    norm::l2norm_fwd_f32(x, &mut y, s);
    y
}

#[test]
fn gem_forward_hand_computed() {
    let s = Gem {
        rows: 3,
        hw: 4,
        p: 3.0,
        eps: 1e-6,
    };
    // Row 0: cube mean (1+8+27+64)/4 = 25. Row 1: negatives clamp to eps. Row 2: all below eps.
    let x = [
        1.0, 2.0, 3.0, 4.0, -1.0, 0.0, 8.0, -5.0, -1.0, -2.0, 0.0, -3.0,
    ];
    let y = gem_cpu(&x, s);
    assert!((y[0] - 25f32.cbrt()).abs() < 1e-6, "{}", y[0]);
    assert!((y[1] - 128f32.cbrt()).abs() < 1e-5, "{}", y[1]);
    assert!((y[2] - 1e-6).abs() < 1e-9, "{}", y[2]);
    // p = 1 is the clamped mean; a large p approaches the max.
    let y1 = gem_cpu(
        &x[..4],
        Gem {
            rows: 1,
            hw: 4,
            p: 1.0,
            eps: 1e-6,
        },
    );
    assert!((y1[0] - 2.5).abs() < 1e-6);
    let y50 = gem_cpu(
        &x[..4],
        Gem {
            rows: 1,
            hw: 4,
            p: 50.0,
            eps: 1e-6,
        },
    );
    assert!(y50[0] > 3.8 && y50[0] <= 4.0, "{}", y50[0]);
}

#[test]
fn l2norm_hand_computed() {
    let s = L2Norm::new(3, 2);
    let y = l2_cpu(&[3.0, 4.0, 0.0, 0.0, -1e-14, 0.0], s);
    assert_eq!(&y[..2], &[0.6, 0.8]);
    assert_eq!(
        &y[2..4],
        &[0.0, 0.0],
        "a zero row stays zero (norm clamped to eps)"
    );
    assert!(
        (y[4] + 0.01).abs() < 1e-6,
        "below eps the row is divided by eps: {}",
        y[4]
    );
    let mut dx = vec![0.0; 2];
    norm::l2norm_bwd_f32(&[3.0, 4.0], &[1.0, 0.0], &mut dx, L2Norm::new(1, 2));
    // (dy - y (y.dy)) / ||x|| = ([1, 0] - [0.6, 0.8] * 0.6) / 5
    assert!(
        (dx[0] - 0.128).abs() < 1e-7 && (dx[1] + 0.096).abs() < 1e-7,
        "{dx:?}"
    );
}

#[test]
fn gem_backward_matches_finite_differences() {
    let mut rng = Rng::new(11);
    for &(rows, hw, p) in &[
        (3usize, 5usize, 3.0f32),
        (2, 7, 2.5),
        (1, 1, 3.0),
        (4, 9, 1.0),
    ] {
        let s = Gem {
            rows,
            hw,
            p,
            eps: 1e-6,
        };
        // Keep inputs away from the clamp so the loss is smooth within +-h; add a few clamped
        // (negative) entries, whose gradient must be exactly zero.
        let mut x: Vec<f32> = (0..rows * hw).map(|_| rng.uniform_f32(0.2, 2.0)).collect();
        for i in (0..x.len()).step_by(4) {
            x[i] = -rng.uniform_f32(0.1, 1.0);
        }
        let w = rng.vec_f32(rows, -1.0, 1.0);
        let loss = |x: &[f32]| -> f64 {
            gem_cpu(x, s)
                .iter()
                .zip(&w)
                .map(|(&y, &w)| (y * w) as f64)
                .sum()
        };
        let y = gem_cpu(&x, s);
        let mut dx = vec![f32::NAN; x.len()];
        pool::gem_bwd_f32(&x, &y, &w, &mut dx, s);
        let num = numeric_grad(&x, 1e-3, loss);
        assert!(
            rel_err(&dx, &num) < 2e-3,
            "rows={rows} hw={hw} p={p}: {dx:?} vs {num:?}"
        );
        for i in (0..x.len()).step_by(4) {
            assert_eq!(dx[i], 0.0, "clamped input {i} must get no gradient");
        }
    }
}

/// GeM's clamp at its threshold: torch.clamp(min = eps) passes the gradient where x >= eps, so a
/// row sitting exactly on eps gets dx = dy * y^(1-p) * eps^(p-1) / hw = dy / hw (y = eps), and a
/// row just below gets none. eps = 2^-20 and the value below it are exact in f32 and bf16; the
/// expectation is written out, so a comparison flipped in the kernel and its twin alike fails.
#[test]
fn gem_gradient_passes_where_x_is_exactly_eps() {
    let dev = kernel_device("gem_gradient_passes_where_x_is_exactly_eps");
    let eps = 2f32.powi(-20);
    let below = eps * (1.0 - 2f32.powi(-8)); // the next bf16 down
    let s = Gem {
        rows: 2,
        hw: 4,
        p: 3.0,
        eps,
    };
    let x: Vec<f32> = [[eps; 4], [below; 4]].concat();
    let dy = [0.5f32, 0.5];
    let want_dx: Vec<f32> = [[0.125f32; 4], [0.0; 4]].concat();
    for (dt, tol) in FLOAT_DTYPES {
        for be in [insclr::backend::cpu(), &dev as &dyn Backend] {
            let what = format!("{dt} on {}", be.name());
            let xb = upload_as(be, &x, dt).unwrap();
            let dyb = upload_as(be, &dy, dt).unwrap();
            let mut y = poisoned_as(be, 2, dt);
            be.gem_fwd(&xb, &mut y, s).unwrap();
            let mut dx = poisoned_as(be, 8, dt);
            be.gem_bwd(&xb, &y, &dyb, &mut dx, s).unwrap();
            // Both rows pool to eps: one is on the clamp, the other clamped up to it.
            let y = download_f32(be, &y).unwrap();
            assert!(rel_err(&y, &[eps, eps]) < tol, "{what}: y {y:?}");
            let dx = download_f32(be, &dx).unwrap();
            assert!(rel_err(&dx, &want_dx) < tol, "{what}: dx {dx:?}");
            assert_eq!(&dx[4..], &[0.0; 4], "{what}: below the clamp");
        }
    }
}

#[test]
fn l2norm_backward_matches_finite_differences() {
    let mut rng = Rng::new(12);
    for &(rows, cols) in &[(3usize, 5usize), (1, 1), (2, 33), (5, 2)] {
        let s = L2Norm::new(rows, cols);
        let x = rng.vec_f32(rows * cols, -2.0, 2.0);
        let w = rng.vec_f32(rows * cols, -1.0, 1.0);
        let loss = |x: &[f32]| -> f64 {
            l2_cpu(x, s)
                .iter()
                .zip(&w)
                .map(|(&y, &w)| (y * w) as f64)
                .sum()
        };
        let mut dx = vec![f32::NAN; x.len()];
        norm::l2norm_bwd_f32(&x, &w, &mut dx, s);
        let num = numeric_grad(&x, 1e-3, loss);
        assert!(
            rel_err(&dx, &num) < 2e-3,
            "rows={rows} cols={cols}: {dx:?} vs {num:?}"
        );
    }
}

#[test]
fn cpu_matmul_matches_naive_for_every_transpose() {
    let sizes = [(1, 1, 1), (7, 5, 3), (33, 17, 65), (4, 9, 0)];
    for_each_matmul_case(13, &sizes, |s, a, b, c0| {
        let (mut fast, mut slow) = (c0.to_vec(), c0.to_vec());
        gemm::matmul_f32(a, b, &mut fast, s);
        gemm::matmul_naive(a, b, &mut slow, s);
        assert!(rel_err(&fast, &slow) < 1e-5, "{s:?}");
    });
}

/// Calls `check(shape, a, b, c0)` for every size and transpose pair, with random A, B and an
/// initial C (alpha 0.5, beta 0.25, so both terms of the product are exercised).
fn for_each_matmul_case(
    seed: u64,
    sizes: &[(usize, usize, usize)],
    mut check: impl FnMut(MatMul, &[f32], &[f32], &[f32]),
) {
    let mut rng = Rng::new(seed);
    for &(m, n, k) in sizes {
        for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
            let s = MatMul {
                m,
                n,
                k,
                trans_a,
                trans_b,
                alpha: 0.5,
                beta: 0.25,
            };
            let a = rng.vec_f32(m * k, -1.0, 1.0);
            let b = rng.vec_f32(k * n, -1.0, 1.0);
            let c0 = rng.vec_f32(m * n, -1.0, 1.0);
            check(s, &a, &b, &c0);
        }
    }
}

#[test]
fn shape_mismatches_are_errors_not_panics() {
    let be = insclr::backend::cpu();
    let x = be.upload(&[1.0; 10]).unwrap();
    let mut y = be.zeros(DType::F32, 3).unwrap();
    let err = be
        .gem_fwd(&x, &mut y, Gem::new(1, 2, 2, 2))
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected 8"), "{err}");
    let mut c = be.zeros(DType::F32, 4).unwrap();
    assert!(be.matmul(&x, &x, &mut c, MatMul::new(2, 2, 3)).is_err());
    // Buffers of one op share a dtype, and an op a backend lacks for a dtype is named.
    let mut yb = be.zeros(DType::BF16, 2).unwrap();
    let err = be
        .gem_fwd(
            &be.upload(&[1.0f32; 8]).unwrap(),
            &mut yb,
            Gem::new(1, 2, 2, 2),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("different dtypes"), "{err}");
    let xb = be.zeros(DType::BF16, 4).unwrap();
    let err = be
        .batchnorm_fwd_eval(
            &xb,
            &be.zeros(DType::BF16, 1).unwrap(),
            &be.zeros(DType::BF16, 1).unwrap(),
            &be.zeros(DType::BF16, 1).unwrap(),
            &be.zeros(DType::BF16, 1).unwrap(),
            None,
            &mut be.zeros(DType::BF16, 4).unwrap(),
            BatchNorm::new(1, 1, 4, 1e-5, Act::Relu),
        )
        .unwrap_err()
        .to_string();
    // bf16 activations take f32 parameters and statistics (master copies).
    assert!(err.contains("parameters and statistics are f32"), "{err}");
    // An op a backend lacks for a dtype is refused by name before any work.
    let err = select(DeviceChoice::Cpu, &[(Op::Topk, DType::BF16)])
        .err()
        .expect("the CPU has no bf16 top-k")
        .to_string();
    assert!(err.contains("topk"), "{err}");
}

// ---- the CUDA kernels versus the CPU twin, on the GPU or the emulated GPU ----------------

// Edge sizes: one row, a warp's width -1 / +1, a block's 8 rows -1 / +1, realistic maps.
/// Rows of every lane count the kernels give a row (1 for 1 and 7 elements, 2 for 31-33, 4 for
/// 49, 8 for 100, 16 for 196: 14 x 14, 32 for 1024), row counts that leave a warp's or a block's
/// last rows empty (3 and 5 rows, 130 x 16 lanes: 9 blocks).
const GEM_SIZES: &[(usize, usize)] = &[
    (1, 1),
    (1, 31),
    (7, 32),
    (8, 33),
    (9, 49),
    (257, 1024),
    (64, 7),
    (5, 100),
    (3, 196),
    (130, 196),
];
const L2_SIZES: &[(usize, usize)] = &[(1, 1), (7, 31), (8, 32), (9, 33), (300, 2048), (2, 4097)];

#[test]
fn kernel_gem_matches_cpu() {
    let dev = kernel_device("kernel_gem_matches_cpu");
    for (dt, tol) in FLOAT_DTYPES {
        for &(rows, hw) in GEM_SIZES {
            for p in [3.0f32, 2.2] {
                let s = Gem {
                    rows,
                    hw,
                    p,
                    eps: 1e-6,
                };
                let what = format!("GeM {dt} rows={rows} hw={hw} p={p}");
                matches_cpu(&what, &dev, tol, |be| {
                    let mut rng = Rng::new(21 + rows as u64 * 7 + hw as u64);
                    // Mostly positive activations (post-ReLU maps), some below the clamp.
                    let x = upload_as(be, &rng.vec_f32(rows * hw, -0.2, 3.0), dt)?;
                    let dy = upload_as(be, &rng.vec_f32(rows, -1.0, 1.0), dt)?;
                    let mut y = poisoned_as(be, rows, dt);
                    be.gem_fwd(&x, &mut y, s)?;
                    let mut dx = poisoned_as(be, rows * hw, dt);
                    be.gem_bwd(&x, &y, &dy, &mut dx, s)?;
                    Ok(vec![
                        ("y".into(), download_f32(be, &y)?),
                        ("dx".into(), download_f32(be, &dx)?),
                    ])
                });
            }
        }
    }
}

#[test]
fn kernel_l2norm_matches_cpu() {
    let dev = kernel_device("kernel_l2norm_matches_cpu");
    for (dt, tol) in FLOAT_DTYPES {
        for &(rows, cols) in L2_SIZES {
            let s = L2Norm::new(rows, cols);
            matches_cpu(
                &format!("L2 {dt} rows={rows} cols={cols}"),
                &dev,
                tol,
                |be| {
                    let mut rng = Rng::new(22 + rows as u64 * 5 + cols as u64);
                    let mut xh = rng.vec_f32(rows * cols, -1.0, 1.0);
                    if rows > 2 {
                        xh[cols..2 * cols].iter_mut().for_each(|v| *v = 0.0); // a zero row: the clamp
                    }
                    let dyh = rng.vec_f32(rows * cols, -1.0, 1.0);
                    let x = upload_as(be, &xh, dt)?;
                    let dy = upload_as(be, &dyh, dt)?;
                    let mut y = poisoned_as(be, rows * cols, dt);
                    be.l2norm_fwd(&x, &mut y, s)?;
                    let mut dx = poisoned_as(be, rows * cols, dt);
                    be.l2norm_bwd(&x, &dy, &mut dx, s)?;
                    let mut out = vec![("y".to_string(), download_f32(be, &y)?)];
                    // Rows compared one by one: the zero row's gradient is dy / 1e-12 and would
                    // swamp the others. Each row is compared at the scale of its terms, |dy| /
                    // |x| (appended to both sides): dx = (dy - x (x.dy)/|x|^2) / |x| cancels to
                    // exactly 0 for one column, where the GPU's fused multiply-add leaves a
                    // residue of rounding size (seen on an H200) and a relative error means nothing.
                    let dx = download_f32(be, &dx)?;
                    for (r, row) in dx.chunks(cols).enumerate() {
                        let span = r * cols..(r + 1) * cols;
                        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
                        let scale = norm(&dyh[span.clone()]) / norm(&xh[span]).max(1e-12);
                        let mut row = row.to_vec();
                        row.push(scale);
                        out.push((format!("dx row {r} (and |dy| / |x|)"), row));
                    }
                    Ok(out)
                },
            );
        }
    }
}

/// GEMM sizes around both kernels' tiles (64 and 128) and BK (8, 16, 32), plus the
/// query-batch-against-a-bank shape and an empty sum.
const MATMUL_SIZES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (7, 5, 3),
    (63, 65, 17),
    (64, 64, 16),
    (127, 129, 33),
    (128, 128, 32),
    (129, 127, 31),
    (200, 300, 40),
    (64, 100, 2048),
    (4, 9, 0),
    // Leading dimensions that are multiples of 8 take the pipelined tensor-core kernels (bf16):
    // the smallest, past one 64-row tile, and partial tiles in m, n and k with every layout.
    (8, 8, 8),
    (65, 136, 24),
    (136, 264, 72),
];

/// Every size, transpose and (alpha, beta) on the kernel device; f32 also on an emulated GPU of
/// one multiprocessor, where no output leaves multiprocessors idle: the 64 x 64 tiles of
/// `matmul_small_f32` there, the 32 x 32 ones of `matmul_narrow_f32` on 132 (the GPU's count on a
/// GPU).
#[test]
fn kernel_matmul_matches_cpu() {
    let gpu = kernel_device("kernel_matmul_matches_cpu");
    let one_sm = insclr::backend::CudaBackend::emu_with_sms(1);
    let devices = |dt| match dt {
        DType::F32 => vec![&gpu, &one_sm],
        _ => vec![&gpu],
    };
    for (dt, tol) in FLOAT_DTYPES {
        for (&(m, n, k), dev) in MATMUL_SIZES
            .iter()
            .flat_map(|size| devices(dt).into_iter().map(move |d| (size, d)))
        {
            for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
                // beta = 0 must not read C: it starts as NaN there.
                for (alpha, beta) in [(0.5f32, 0.25f32), (1.0, 0.0)] {
                    let s = MatMul {
                        m,
                        n,
                        k,
                        trans_a,
                        trans_b,
                        alpha,
                        beta,
                    };
                    matches_cpu(&format!("{dt} {s:?}"), dev, tol, |be| {
                        let mut rng = Rng::new(23 + (m * 31 + n * 7 + k) as u64);
                        let a = upload_as(be, &rng.vec_f32(m * k, -1.0, 1.0), dt)?;
                        let b = upload_as(be, &rng.vec_f32(k * n, -1.0, 1.0), dt)?;
                        let mut c = if beta == 0.0 {
                            poisoned_as(be, m * n, dt)
                        } else {
                            upload_as(be, &rng.vec_f32(m * n, -1.0, 1.0), dt)?
                        };
                        be.matmul(&a, &b, &mut c, s)?;
                        Ok(vec![("C".into(), download_f32(be, &c)?)])
                    });
                }
            }
        }
    }
}

#[test]
fn cuda_backend_without_gpu_is_an_error_not_a_panic() {
    // On a GPU machine this opens the device; elsewhere it must fail cleanly with a reason.
    match insclr::backend::CudaBackend::new(0) {
        Ok(be) => assert_eq!((&be as &dyn Backend).name(), "cuda"),
        Err(e) => assert!(!format!("{e:#}").is_empty()),
    }
    let (be, why) = select_f32(DeviceChoice::Auto, &[Op::Matmul]).unwrap();
    assert!(why.starts_with(be.name()), "{why}");
    // The emulator is never chosen by auto, and an explicit device lacking an op is refused
    // up front, naming the kernel.
    assert_ne!(be.name(), "emu");
    let err = select(DeviceChoice::Emu, &[(Op::Topk, DType::BF16)])
        .err()
        .expect("emu has no bf16 top-k kernel")
        .to_string();
    assert!(
        err.contains("topk_bf16") && err.contains("--device cpu"),
        "{err}"
    );
}
