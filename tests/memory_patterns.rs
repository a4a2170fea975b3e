//! What today's hot kernels do to memory, from the emulated device's counters
//! (`insclr::backend::cuda::emu::count_memory`): shared-memory wavefronts against the ideal
//! (bank conflicts) and global sectors against the ideal (coalescing), per access site, on
//! interior tile shapes. Each kernel's table is printed (`cargo test --test memory_patterns --
//! --nocapture`); the assertions hold what the kernels are today, good and bad, so a change to
//! an access pattern shows here: the README lists the defects, issue 26 is to remove them.
//! Counters are exact for a launch, so these numbers do not depend on the machine.

mod common;

use common::log;
use insclr::backend::cuda::emu::{count_memory, memstats_table, MemSpace, MemStat, ACCESS_HOOKS};
use insclr::backend::{Backend, Conv, CudaBackend, DType, MatMul, Padding};
use insclr::rng::Rng;

fn upload(be: &dyn Backend, len: usize, dtype: DType, seed: u64) -> insclr::backend::Buf {
    common::upload_as(be, &Rng::new(seed).vec_f32(len, -1.0, 1.0), dtype).unwrap()
}

/// The rows of `kernel` in `stats`.
fn rows<'a>(stats: &'a [MemStat], kernel: &str) -> Vec<&'a MemStat> {
    let r: Vec<&MemStat> = stats.iter().filter(|s| s.kernel == kernel).collect();
    assert!(!r.is_empty(), "no counters for {kernel}: {stats:#?}");
    r
}

/// Sum of (transactions, ideal, requests) over `kernel`'s rows that `pick` selects.
fn total(stats: &[MemStat], kernel: &str, pick: impl Fn(&MemStat) -> bool) -> (u64, u64, u64) {
    rows(stats, kernel)
        .into_iter()
        .filter(|s| pick(s))
        .fold((0, 0, 0), |(t, i, r), s| {
            (t + s.transactions, i + s.ideal, r + s.requests)
        })
}

fn show(what: &str, stats: &[MemStat]) {
    log(&format!("{what}\n{}", memstats_table(stats)));
}

#[test]
fn matmul_bf16_on_the_bank_similarity_shape() {
    if !ACCESS_HOOKS {
        log("not asserted in the sanitiser build (no access hooks)");
        return;
    }
    let dev = CudaBackend::emu();
    let be: &dyn Backend = &dev;
    // Queries x bank^T, the similarity of a batch with a memory bank (k-contiguous operands).
    let (m, n, k) = (128, 256, 64);
    let s = MatMul::new(m, n, k).tb();
    let a = upload(be, m * k, DType::BF16, 1);
    let b = upload(be, n * k, DType::BF16, 2);
    let mut c = be.zeros(DType::BF16, m * n).unwrap();
    let (r, stats) = count_memory(|| be.matmul(&a, &b, &mut c, s));
    r.unwrap();
    show(
        "bf16 matmul, 128 x 256 x 64, B transposed (the pipelined kernel):",
        &stats,
    );
    let kernel = "matmul_tc_bf16";
    // Every mma does useful work on an aligned shape: m n k / (16 8 16).
    let (mma, _, _) = total(&stats, kernel, |s| s.space == MemSpace::TensorCore);
    assert_eq!(mma, (m * n * k / (16 * 8 * 16)) as u64);
    // No bank conflict and full coalescing anywhere: the swizzled cp.async stores and ldmatrix
    // reads, the epilogue's staging and its 16-byte stores.
    for row in rows(&stats, kernel) {
        assert_eq!(row.transactions, row.ideal, "{row:?}");
        if row.space != MemSpace::TensorCore && row.op != "st" {
            assert_eq!(row.width, 16, "16-byte accesses only: {row:?}");
        }
    }
    let (_, _, copies) = total(&stats, kernel, |s| {
        s.op == "cp.async" && s.space == MemSpace::Global
    });
    let (_, _, fragments) = total(&stats, kernel, |s| s.op == "ldmatrix.x4");
    // Two 128 x 128 blocks, each copying its 128 rows of A and of B once (16 bytes a lane).
    assert_eq!(
        copies,
        (2 * (128 + 128) * k * 2 / 16 / 32) as u64,
        "each tile copied once"
    );
    assert_eq!(fragments, mma / 4, "ldmatrix.x4 only, one per 4 mma");

    // Shapes whose rows are not 16-byte aligned take the simple kernel, with its defects.
    let k = 60;
    let a = upload(be, m * k, DType::BF16, 1);
    let b = upload(be, n * k, DType::BF16, 2);
    let (r, stats) = count_memory(|| be.matmul(&a, &b, &mut c, MatMul::new(m, n, k).tb()));
    r.unwrap();
    show("bf16 matmul, 128 x 256 x 60 (the simple kernel):", &stats);
    let kernel = "matmul_bf16";
    let (t, i, _) = total(&stats, kernel, |s| s.op.starts_with("ldmatrix"));
    assert_eq!(t, i, "ldmatrix bank conflicts");
    // Its epilogue stores 2 bytes a lane: a warp's request spans 8 rows of 8 bytes, one sector
    // each: 8 sectors for 64 bytes.
    let (t, i, r) = total(&stats, kernel, |s| {
        s.space == MemSpace::Global && s.op == "st"
    });
    assert_eq!((t, i), (8 * r, 2 * r), "epilogue: 8 sectors per 64 bytes");
}

#[test]
fn conv_bf16_on_a_resnet_3x3_shape() {
    if !ACCESS_HOOKS {
        log("not asserted in the sanitiser build (no access hooks)");
        return;
    }
    let dev = CudaBackend::emu();
    let be: &dyn Backend = &dev;
    // A ResNet bottleneck's 3x3 (64 -> 64, 16 x 16, padding 1), batch 2.
    let s = Conv::new(2, 64, 16, 16, 64, 3, 1, Padding::Sym(1), 1).unwrap();
    let (lx, lw, ly) = s.sizes();
    let x = upload(be, lx, DType::BF16, 3);
    let w = upload(be, lw, DType::BF16, 4);
    let dy = upload(be, ly, DType::BF16, 5);
    let mut y = be.zeros(DType::BF16, ly).unwrap();
    let mut dx = be.zeros(DType::BF16, lx).unwrap();
    let mut dw = be.zeros(DType::F32, lw).unwrap();
    let (r, stats) = count_memory(|| -> anyhow::Result<()> {
        be.conv2d_fwd(&x, &w, &mut y, s)?;
        be.conv2d_bwd_data(&dy, &w, &mut dx, s)?;
        be.conv2d_bwd_weight(&x, &dy, &mut dw, s)
    });
    r.unwrap();
    show("conv bf16, 2 x 64 x 16 x 16 -> 64, 3x3, padding 1:", &stats);
    // Forward: M = 2 * 16 * 16 = 512 output pixels, N = 64 channels, K = 64 * 9 = 576.
    let (mma, _, _) = total(&stats, "conv2d_fwd_bf16", |s| {
        s.space == MemSpace::TensorCore
    });
    assert!(mma >= 512 * 64 * 576 / 2048, "{mma} mma");
    for kernel in ["conv2d_fwd_bf16", "conv2d_bwd_data_bf16"] {
        let (t, i, _) = total(&stats, kernel, |s| s.op.starts_with("ldmatrix"));
        assert_eq!(t, i, "{kernel}: ldmatrix bank conflicts");
        // The output: 2-byte stores at a pixel stride of a channel plane, a sector per lane.
        let (t, i, _) = total(&stats, kernel, |s| {
            s.space == MemSpace::Global && s.op == "st"
        });
        assert!(t >= 4 * i, "{kernel}: epilogue {t} sectors, ideal {i}");
    }
}

#[test]
fn f32_kernels_on_the_same_shapes() {
    if !ACCESS_HOOKS {
        log("not asserted in the sanitiser build (no access hooks)");
        return;
    }
    let dev = CudaBackend::emu();
    let be: &dyn Backend = &dev;
    let s = Conv::new(2, 64, 16, 16, 64, 3, 1, Padding::Sym(1), 1).unwrap();
    let (lx, lw, ly) = s.sizes();
    let x = upload(be, lx, DType::F32, 6);
    let w = upload(be, lw, DType::F32, 7);
    let mut y = be.zeros(DType::F32, ly).unwrap();
    let mm = MatMul::new(128, 256, 64).tb();
    let a = upload(be, 128 * 64, DType::F32, 8);
    let b = upload(be, 256 * 64, DType::F32, 9);
    let mut c = be.zeros(DType::F32, 128 * 256).unwrap();
    let (r, stats) = count_memory(|| -> anyhow::Result<()> {
        be.conv2d_fwd(&x, &w, &mut y, s)?;
        be.matmul(&a, &b, &mut c, mm)
    });
    r.unwrap();
    show(
        "f32 conv (2 x 64 x 16 x 16 -> 64, 3x3) and matmul (128 x 256 x 64, B transposed):",
        &stats,
    );
    for kernel in ["conv2d_fwd_f32", "matmul_f32"] {
        let (t, i, _) = total(&stats, kernel, |s| {
            s.space == MemSpace::Shared && s.op == "ld"
        });
        assert!(t >= i, "{kernel}");
        assert!(rows(&stats, kernel)
            .iter()
            .all(|s| s.space != MemSpace::TensorCore));
    }
}

#[test]
fn conv_1x1_bf16_runs_on_the_pipelined_mainloop() {
    if !ACCESS_HOOKS {
        log("not asserted in the sanitiser build (no access hooks)");
        return;
    }
    let dev = CudaBackend::emu();
    let be: &dyn Backend = &dev;
    // A bottleneck's expanding 1x1 (64 -> 256 channels, 16 x 8), batch 2.
    let s = Conv::new(2, 64, 16, 8, 256, 1, 1, Padding::Sym(0), 1).unwrap();
    let (lx, lw, ly) = s.sizes();
    let x = upload(be, lx, DType::BF16, 10);
    let w = upload(be, lw, DType::BF16, 11);
    let dy = upload(be, ly, DType::BF16, 12);
    let mut y = be.zeros(DType::BF16, ly).unwrap();
    let mut dx = be.zeros(DType::BF16, lx).unwrap();
    let mut dw = be.zeros(DType::F32, lw).unwrap();
    let (r, stats) = count_memory(|| -> anyhow::Result<()> {
        be.conv2d_fwd(&x, &w, &mut y, s)?;
        be.conv2d_bwd_data(&dy, &w, &mut dx, s)?;
        be.conv2d_bwd_weight(&x, &dy, &mut dw, s)
    });
    r.unwrap();
    show("conv bf16 1x1, 2 x 64 x 16 x 8 -> 256:", &stats);
    // Forward: M = 256 (128-row tiles), N = 128 pixels; data gradient: M = 64 (64-row tiles);
    // weight gradient: M = 256, N = 64 (half of a 128-wide tile: the other half multiplies the
    // zero fill), K = 128 pixels of each image.
    let mma = |kernel: &str| total(&stats, kernel, |s| s.space == MemSpace::TensorCore).0;
    let useful = (2 * 128 * 64 * 256 / (16 * 8 * 16)) as u64;
    assert_eq!(mma("conv2d_1x1_fwd_bf16"), useful);
    assert_eq!(mma("conv2d_1x1_bwd_data_m64_bf16"), useful);
    assert_eq!(mma("conv2d_1x1_bwd_weight_bf16"), 2 * useful);
    for kernel in [
        "conv2d_1x1_fwd_bf16",
        "conv2d_1x1_bwd_data_m64_bf16",
        "conv2d_1x1_bwd_weight_bf16",
    ] {
        for row in rows(&stats, kernel) {
            assert_eq!(row.transactions, row.ideal, "{row:?}");
        }
    }
}
