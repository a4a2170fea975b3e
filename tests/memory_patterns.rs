//! What today's hot kernels do to memory, from the emulated device's counters
//! (`insclr::backend::cuda::emu::count_memory`): shared-memory wavefronts against the ideal
//! (bank conflicts) and global sectors against the ideal (coalescing), per access site, on
//! interior tile shapes. Each kernel's table is printed (`cargo test --test memory_patterns --
//! --nocapture`); the assertions hold what the kernels are today, good and bad, so a change to
//! an access pattern shows here: docs/gpu.md lists the defects, issue 26 is to remove them.
//! Counters are exact for a launch, so these numbers do not depend on the machine.

mod common;

use common::{log, TrainedBn};
use insclr::backend::cuda::emu::{count_memory, memstats_table, MemSpace, MemStat, ACCESS_HOOKS};
use insclr::backend::{
    Act, ActMask, Backend, BatchNorm, BnEvalParams, BnTrainParams, Conv, CudaBackend, DType,
    MatMul, Padding,
};
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

/// Every row of `stats` is one of `kernels`' (`what` says why, when one is not).
fn only(stats: &[MemStat], kernels: &[&str], what: &str) {
    for r in stats {
        assert!(kernels.contains(&r.kernel.as_str()), "{what}: {}", r.kernel);
    }
}

/// Eval BatchNorm whose four per-channel tensors are `ones` (the counters do not look at values).
fn ones_bn(ones: &insclr::backend::Buf) -> BnEvalParams<'_> {
    BnEvalParams {
        gamma: ones,
        beta: ones,
        mean: ones,
        var: ones,
    }
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
fn conv_bf16_element_gather_where_it_still_runs() {
    if !ACCESS_HOOKS {
        log("not asserted in the sanitiser build (no access hooks)");
        return;
    }
    let dev = CudaBackend::emu();
    let be: &dyn Backend = &dev;
    // What keeps the element gather since the channels-last kernels: a kernel over 8 x 8 (ConvGather
    // keeps a row's tap masks in 8 bits), all three passes: a 9x9, 8 -> 64 channels on 16 x 16,
    // padding 4, batch 2 (no ResNet or EfficientNet layer).
    let s = Conv::new(2, 8, 16, 16, 64, 9, 1, Padding::Sym(4), 1).unwrap();
    let (lx, lw, ly) = s.sizes();
    let (x, w, dy) = (
        upload(be, lx, DType::BF16, 3),
        upload(be, lw, DType::BF16, 4),
        upload(be, ly, DType::BF16, 5),
    );
    let mut y = be.zeros(DType::BF16, ly).unwrap();
    let mut dx = be.zeros(DType::BF16, lx).unwrap();
    let mut dw = be.zeros(DType::F32, lw).unwrap();
    let (r, stats) = count_memory(|| -> anyhow::Result<()> {
        be.conv2d_fwd(&x, &w, &mut y, s)?;
        be.conv2d_bwd_data(&dy, &w, &mut dx, s)?;
        be.conv2d_bwd_weight(&x, &dy, &mut dw, s)
    });
    r.unwrap();
    show(
        "conv bf16: a 9x9's three passes (2 x 8 x 16 x 16 -> 64, padding 4):",
        &stats,
    );
    // Forward: M = 64 channels, N = 2 * 16 * 16 = 512 output pixels, K = 8 * 81 = 648.
    let (mma, _, _) = total(&stats, "conv2d_fwd_bf16", |s| {
        s.space == MemSpace::TensorCore
    });
    assert!(mma >= 512 * 64 * 648 / 2048, "{mma} mma");
    for kernel in [
        "conv2d_fwd_bf16",
        "conv2d_bwd_data_bf16",
        "conv2d_bwd_weight_bf16",
    ] {
        let (t, i, _) = total(&stats, kernel, |s| s.op.starts_with("ldmatrix"));
        assert_eq!(t, i, "{kernel}: ldmatrix bank conflicts");
    }
    for kernel in ["conv2d_fwd_bf16", "conv2d_bwd_data_bf16"] {
        // The output: 2-byte stores at a pixel stride of a channel plane, a sector per lane.
        let (t, i, _) = total(&stats, kernel, |s| {
            s.space == MemSpace::Global && s.op == "st"
        });
        assert!(t >= 4 * i, "{kernel}: epilogue {t} sectors, ideal {i}");
    }
}

#[test]
fn conv_bf16_stem_runs_channels_last_with_its_channels_padded_to_8() {
    if !ACCESS_HOOKS {
        log("not asserted in the sanitiser build (no access hooks)");
        return;
    }
    let dev = CudaBackend::emu();
    let be: &dyn Backend = &dev;
    // ResNet's stem on a 32 x 32 image, batch 2: 3 input channels, no 16-byte run, so the
    // transposes write them as 8 (5 of zeros) and the channels-last products run K = 49 x 8.
    let s = Conv::new(2, 3, 32, 32, 64, 7, 2, Padding::Sym(3), 1).unwrap();
    let (lx, lw, ly) = s.sizes();
    let x = upload(be, lx, DType::BF16, 13);
    let w = upload(be, lw, DType::BF16, 14);
    let dy = upload(be, ly, DType::BF16, 15);
    let mut y = be.zeros(DType::BF16, ly).unwrap();
    let mut dw = be.zeros(DType::F32, lw).unwrap();
    let (r, stats) = count_memory(|| -> anyhow::Result<()> {
        be.conv2d_fwd(&x, &w, &mut y, s)?;
        be.conv2d_bwd_weight(&x, &dy, &mut dw, s)
    });
    r.unwrap();
    show(
        "conv bf16: the stem's forward and weight gradient (2 x 3 x 32 x 32 -> 64, 7x7, stride 2):",
        &stats,
    );
    only(
        &stats,
        &[
            "conv2d_to_nhwc8_bf16",
            "conv2d_to_nhwc_bf16",
            "conv2d_nhwc_fwd_m64_bf16",
            "conv2d_nhwc_bwd_weight_m64_bf16",
            "conv2d_bwd_weight_reduce_krsc_f32",
        ],
        "no element gather: the transposes, the products and the reduction only",
    );
    // Forward: M = 64, N = 2 x 16 x 16 pixels, K = 392 in 13 k tiles of 32 (the last one's 8
    // columns past the taps zero-filled, multiplied all the same).
    let mma = total(&stats, "conv2d_nhwc_fwd_m64_bf16", |s| {
        s.space == MemSpace::TensorCore
    })
    .0;
    assert_eq!(mma, (64 * 512 * 13 * 32 / (16 * 8 * 16)) as u64);
    // The 64-row weight gradient's gather puts 4 threads on a row of B: a quarter-warp's 8
    // copies (2 rows) still fill 8 bank groups, as every shared access of both products does.
    for kernel in [
        "conv2d_nhwc_fwd_m64_bf16",
        "conv2d_nhwc_bwd_weight_m64_bf16",
    ] {
        for row in rows(&stats, kernel) {
            if row.space == MemSpace::Shared {
                assert_eq!(row.transactions, row.ideal, "{row:?}");
            }
        }
    }
    // x (twice: forward and weight gradient) and the weight go channels-last by the narrow
    // transpose: a lane reads its pixel's 3 channels, 2 bytes from each plane (a warp's 32
    // pixels: 64 bytes of a plane), and writes one 16-byte run of 8 channels (512 bytes a warp).
    // x's planes start on sectors: whole sectors. The weight's 64 planes of 3 x 49 taps (294
    // bytes) and their 98-byte channel rows do not, and each of its requests (2 warps of taps
    // a plane: 3 loads, 1 store each) may touch one sector more than its bytes need.
    let x_requests = 2 * 2 * 1024 / 32;
    let w_requests = 64 * 2;
    for (op, width, per_pixel) in [("ld", 2, 3), ("st", 16, 1)] {
        let picked = |s: &MemStat| s.space == MemSpace::Global && s.op == op;
        let (t, i, r) = total(&stats, "conv2d_to_nhwc8_bf16", picked);
        assert_eq!(
            r,
            ((x_requests + w_requests) * per_pixel) as u64,
            "{op} requests"
        );
        assert!(
            t - i <= (w_requests * per_pixel) as u64,
            "{op}: {t} sectors, ideal {i}"
        );
        for row in rows(&stats, "conv2d_to_nhwc8_bf16") {
            if picked(row) {
                assert_eq!(row.width, width, "{row:?}");
            }
        }
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

/// The TF32 1x1 kernels (f32 operands on the same mainloop): the k-contiguous operands by
/// ldmatrix, the m- and n-contiguous ones by 4-byte loads from rows swizzled by 2 (k % 4), the f32
/// epilogue in two passes; every site at the ideal, and exactly the products' m16n8k8 count.
/// 128 -> 256 channels takes the 128-row kernels of all three passes, 64 -> 64 the 64-row ones.
#[test]
fn conv_1x1_tf32_runs_on_the_pipelined_mainloop_without_bank_conflicts() {
    if !ACCESS_HOOKS {
        log("not asserted in the sanitiser build (no access hooks)");
        return;
    }
    let dev = CudaBackend::emu();
    dev.set_tf32(true);
    let be: &dyn Backend = &dev;
    for (c_in, c_out, tile) in [(128, 256, ""), (64, 64, "_m64")] {
        let s = Conv::new(2, c_in, 16, 8, c_out, 1, 1, Padding::Sym(0), 1).unwrap();
        let (lx, lw, ly) = s.sizes();
        let x = upload(be, lx, DType::F32, 20);
        let w = upload(be, lw, DType::F32, 21);
        let dy = upload(be, ly, DType::F32, 22);
        let mut y = be.zeros(DType::F32, ly).unwrap();
        let mut dx = be.zeros(DType::F32, lx).unwrap();
        let mut dw = be.zeros(DType::F32, lw).unwrap();
        let (r, stats) = count_memory(|| -> anyhow::Result<()> {
            be.conv2d_fwd(&x, &w, &mut y, s)?;
            be.conv2d_bwd_data(&dy, &w, &mut dx, s)?;
            be.conv2d_bwd_weight(&x, &dy, &mut dw, s)
        });
        r.unwrap();
        show(
            &format!("conv tf32 1x1, 2 x {c_in} x 16 x 8 -> {c_out}:"),
            &stats,
        );
        let mma = |kernel: &str| total(&stats, kernel, |s| s.space == MemSpace::TensorCore).0;
        let useful = (2 * 128 * c_in * c_out / (16 * 8 * 8)) as u64;
        let kernels =
            ["fwd", "bwd_data", "bwd_weight"].map(|op| format!("conv2d_1x1_{op}{tile}_tf32"));
        for kernel in &kernels {
            // The weight gradient's N is c_in: 64 fills half of a 128-wide tile, whose other half
            // multiplies the zero fill.
            let tiled = if kernel.contains("weight") {
                useful * (c_in.div_ceil(128) * 128 / c_in) as u64
            } else {
                useful
            };
            assert_eq!(mma(kernel), tiled, "{kernel}");
            for row in rows(&stats, kernel) {
                assert_eq!(row.transactions, row.ideal, "{kernel}: {row:?}");
            }
        }
    }
}

/// The TF32 channels-last kernels on the bf16 tests' interior shape (a 3x3 without padding,
/// 2 x 64 x 8 x 66 -> 128): 4 channels of one (pixel, tap) a 16-byte copy; the forward and the
/// stride-1 data gradient with both operands k-contiguous (ldmatrix.x4), the weight gradient with
/// both read by 4-byte loads from rows swizzled by 2 (k % 4), conflict-free; the f32 transposes'
/// 4-byte accesses coalesced and their tile free of bank conflicts.
#[test]
fn conv_nhwc_tf32_runs_on_the_pipelined_mainloop() {
    if !ACCESS_HOOKS {
        log("not asserted in the sanitiser build (no access hooks)");
        return;
    }
    let dev = CudaBackend::emu();
    dev.set_tf32(true);
    let be: &dyn Backend = &dev;
    let s = Conv::new(2, 64, 8, 66, 128, 3, 1, Padding::Sym(0), 1).unwrap();
    let (lx, lw, ly) = s.sizes();
    let x = upload(be, lx, DType::F32, 23);
    let w = upload(be, lw, DType::F32, 24);
    let dy = upload(be, ly, DType::F32, 25);
    let mut y = be.zeros(DType::F32, ly).unwrap();
    let mut dx = be.zeros(DType::F32, lx).unwrap();
    let (r, stats) = count_memory(|| -> anyhow::Result<()> {
        be.conv2d_fwd(&x, &w, &mut y, s)?;
        be.conv2d_bwd_data(&dy, &w, &mut dx, s)
    });
    r.unwrap();
    show(
        "conv tf32 NHWC forward and data gradient, 2 x 64 x 8 x 66 -> 128, 3x3:",
        &stats,
    );
    only(
        &stats,
        &[
            "conv2d_nhwc_fwd_tf32",
            "conv2d_nhwc_bwd_data_m64_tf32",
            "conv2d_to_nhwc_f32",
        ],
        "only the transposes and the implicit GEMMs run",
    );
    let mma = |kernel: &str| total(&stats, kernel, |s| s.space == MemSpace::TensorCore).0;
    // Forward: M = 128, N = 384 pixels an image, K = 9 x 64; data gradient: M = 64, N = 2 x
    // 528 pixels, one product over both images (nine column tiles of 128: 1152, where one per
    // image took five each: 1280), K = 9 x 128. mma.m16n8k8.
    assert_eq!(
        mma("conv2d_nhwc_fwd_tf32"),
        (2 * 128 * 384 * 576 / (16 * 8 * 8)) as u64
    );
    assert_eq!(
        mma("conv2d_nhwc_bwd_data_m64_tf32"),
        (64 * 1152 * 1152 / (16 * 8 * 8)) as u64
    );
    for kernel in ["conv2d_nhwc_fwd_tf32", "conv2d_nhwc_bwd_data_m64_tf32"] {
        for row in rows(&stats, kernel) {
            assert_eq!(row.transactions, row.ideal, "{kernel}: {row:?}");
        }
        // 64 x 32 warps: 4 A and 2 B ldmatrix.x4 a k step for 4 x 4 mma.
        let (_, _, fragments) = total(&stats, kernel, |s| s.op == "ldmatrix.x4");
        assert_eq!(
            fragments,
            mma(kernel) * 6 / 16,
            "{kernel}: 6 ldmatrix.x4 per 16 mma"
        );
    }
    // The transposes: one float a lane; their tile free of bank conflicts, their reads along
    // planes of 528 and 384 pixels and their writes (runs of 64 or 128 channels) coalesced.
    for row in rows(&stats, "conv2d_to_nhwc_f32") {
        assert_eq!(row.width, 4, "{row:?}");
        assert_eq!(row.transactions, row.ideal, "{row:?}");
    }

    // The weight gradient: M = 128 output channels, N = 9 taps x 64 channels (five 128-column
    // tiles), K = the batch's 768 pixels; dy's rows and x's runs of a tap's channels whole sectors.
    let mut dw = be.zeros(DType::F32, lw).unwrap();
    let (r, stats) = count_memory(|| be.conv2d_bwd_weight(&x, &dy, &mut dw, s));
    r.unwrap();
    show("conv tf32 NHWC weight gradient, the same layer:", &stats);
    let kernel = "conv2d_nhwc_bwd_weight_tf32";
    only(
        &stats,
        &[
            kernel,
            "conv2d_to_nhwc_f32",
            "conv2d_bwd_weight_reduce_krsc_f32",
        ],
        "the transposes, the product and the reduction only",
    );
    let mma = total(&stats, kernel, |s| s.space == MemSpace::TensorCore).0;
    assert_eq!(mma, (128 * 640 * 768 / (16 * 8 * 8)) as u64);
    for row in rows(&stats, kernel) {
        assert_eq!(row.transactions, row.ideal, "{row:?}");
    }
    let (_, _, fragments) = total(&stats, kernel, |s| s.op == "ldmatrix.x4");
    assert_eq!(
        fragments, 0,
        "no ldmatrix: both operands are m- or n-contiguous"
    );
}

/// The forwards that apply eval-mode BatchNorm with a residual in their epilogue (an extraction's
/// bottleneck output): the residual's 16-byte reads beside the output's 16-byte stores, the
/// per-channel tables (one thread a channel, then broadcast reads) and the main loop all at the
/// ideal; the same products as the plain forwards.
#[test]
fn conv_with_eval_batchnorm_in_the_epilogue() {
    if !ACCESS_HOOKS {
        log("not asserted in the sanitiser build (no access hooks)");
        return;
    }
    let dev = CudaBackend::emu();
    let be: &dyn Backend = &dev;
    // The 1x1 of the test above, and a 3x3 on a 6 x 64 strip without padding (below).
    for (s, kernel) in [
        (
            Conv::new(2, 64, 16, 8, 256, 1, 1, Padding::Sym(0), 1).unwrap(),
            "conv2d_1x1_fwd_bn_eval_bf16",
        ),
        (
            Conv::new(2, 64, 8, 66, 128, 3, 1, Padding::Sym(0), 1).unwrap(),
            "conv2d_nhwc_fwd_bn_eval_bf16",
        ),
    ] {
        let (lx, lw, ly) = s.sizes();
        let x = upload(be, lx, DType::BF16, 20);
        let w = upload(be, lw, DType::BF16, 21);
        let res = upload(be, ly, DType::BF16, 22);
        let chan = be.upload(&vec![1.0f32; s.c_out]).unwrap();
        let bn = ones_bn(&chan);
        let b = BatchNorm::new(s.n, s.c_out, s.oh * s.ow, 1e-5, Act::Relu);
        let mut y = be.zeros(DType::BF16, ly).unwrap();
        let (r, stats) =
            count_memory(|| be.conv2d_fwd_bn_eval(&x, &w, bn, Some(&res), &mut y, s, b));
        assert!(r.unwrap(), "{kernel}: not fused");
        show(&format!("{kernel}, {s:?}, with a residual:"), &stats);
        let mma = total(&stats, kernel, |s| s.space == MemSpace::TensorCore).0;
        let useful = s.n * s.oh * s.ow * s.c_out * s.c_in * s.kh * s.kw / (16 * 8 * 16);
        assert_eq!(mma, useful as u64, "{kernel}");
        for row in rows(&stats, kernel) {
            assert_eq!(row.transactions, row.ideal, "{row:?}");
        }
        let (_, read, _) = total(&stats, kernel, |r| {
            r.space == MemSpace::Global && r.op == "ld" && r.width == 16
        });
        assert!(read > 0, "{kernel}: no 16-byte residual reads");
    }
}

/// The epilogue's stores on maps whose rows are not 16-byte aligned, as ResNet's last stages have
/// them, two images a product (pixel tiles across images): 14 x 14 (196 pixels, 392-byte rows) in
/// 8-byte vectors along each row, 7 x 7 (49 pixels: both images whole in one tile) image by image
/// as whole rows, one contiguous span of C each, in 16-byte vectors that cross rows. Every
/// access at its ideal (a 14 x 14 row's two tile segments start off sector boundaries in 3 rows of
/// 4, which no store width avoids: there the fewest sectors that hold each segment), no 2-byte
/// store; the forward with eval BatchNorm and a residual reads the residual as it stores, the
/// data gradient added onto dx reads dx so.
#[test]
fn conv_epilogue_stores_unaligned_maps_in_vectors() {
    if !ACCESS_HOOKS {
        log("not asserted in the sanitiser build (no access hooks)");
        return;
    }
    let dev = CudaBackend::emu();
    let be: &dyn Backend = &dev;
    for (side, k) in [(14, 3), (14, 1), (7, 3), (7, 1)] {
        let s = Conv::new(2, 64, side, side, 128, k, 1, Padding::Sym(k / 2), 1).unwrap();
        let (lx, lw, ly) = s.sizes();
        let x = upload(be, lx, DType::BF16, 40);
        let w = upload(be, lw, DType::BF16, 41);
        let dy = upload(be, ly, DType::BF16, 42);
        let res = upload(be, ly, DType::BF16, 43);
        let chan = be.upload(&vec![1.0f32; s.c_out]).unwrap();
        let bn = ones_bn(&chan);
        let b = BatchNorm::new(s.n, s.c_out, s.oh * s.ow, 1e-5, Act::Relu);
        let mut y = be.zeros(DType::BF16, ly).unwrap();
        let mut dx = be.zeros(DType::BF16, lx).unwrap();
        let (r, fwd) = count_memory(|| be.conv2d_fwd(&x, &w, &mut y, s));
        r.unwrap();
        let (r, eval) =
            count_memory(|| be.conv2d_fwd_bn_eval(&x, &w, bn, Some(&res), &mut y, s, b));
        assert!(r.unwrap(), "{s:?}: not fused");
        let (r, data) = count_memory(|| be.conv2d_bwd_data_add(&dy, &w, &mut dx, s));
        r.unwrap();
        // dx has 64 channel rows: the 64-row kernel.
        for (stats, kernel, rows_of_c) in [
            (&fwd, "conv2d_nhwc_fwd_bf16", s.c_out),
            (&eval, "conv2d_nhwc_fwd_bn_eval_bf16", s.c_out),
            (&data, "conv2d_nhwc_bwd_data_m64_bf16", s.c_in),
        ] {
            show(&format!("{kernel}, {side} x {side}, {k}x{k}:"), stats);
            let pixels = side * side;
            let c_bytes = (s.n * rows_of_c * pixels * 2) as u64;
            let (width, sectors) = if pixels == 196 {
                // The two images' 392 pixels are one product's columns (tc_gemm.cuh's
                // ImageCols): each row's pieces between the 128-pixel tiles' edges (image 0:
                // 128 + 68 pixels, image 1: 60 + 128 + 8) as contiguous byte ranges.
                let mut sectors = 0;
                for image in 0..s.n as u64 {
                    let cols = image * 196..(image + 1) * 196;
                    let edges: Vec<u64> = (0..=4).map(|t| t * 128).collect();
                    for row in 0..rows_of_c as u64 {
                        let at = (image * rows_of_c as u64 + row) * 392;
                        for tile in edges.windows(2) {
                            let (a, b) = (tile[0].max(cols.start), tile[1].min(cols.end));
                            if a < b {
                                let (a, b) = (at + (a - cols.start) * 2, at + (b - cols.start) * 2);
                                sectors += b.div_ceil(32) - a / 32;
                            }
                        }
                    }
                }
                (8, sectors)
            } else {
                (16, c_bytes / 32)
            };
            for row in rows(stats, kernel) {
                let c_access =
                    row.space == MemSpace::Global && row.op != "cp.async" && row.bytes == c_bytes;
                if c_access {
                    assert_eq!(
                        row.width, width,
                        "{kernel}: C in {width}-byte vectors: {row:?}"
                    );
                    assert_eq!(row.transactions, sectors, "{kernel}: {row:?}");
                } else if pixels == 49 && row.space == MemSpace::Shared && row.width == 2 {
                    // The spans' reads of the staged rows, a value at a time: lanes read 16 bytes
                    // apart across rows 272 bytes apart, 2-way conflicts, a little more for the
                    // second image, whose columns start 98 bytes into each staged row (both
                    // images are one tile's columns; 1.96-2.2x here).
                    assert!(4 * row.transactions <= 9 * row.ideal, "{kernel}: {row:?}");
                } else {
                    assert_eq!(row.transactions, row.ideal, "{kernel}: {row:?}");
                }
            }
            let stores: Vec<_> = rows(stats, kernel)
                .into_iter()
                .filter(|r| r.space == MemSpace::Global && r.op == "st")
                .collect();
            assert!(
                stores.len() == 1 && stores[0].bytes == c_bytes,
                "{kernel}: C stored once, at one site: {stores:?}"
            );
        }
    }
}

/// A training forward whose BatchNorm statistics come from the convolution's epilogue: the
/// `_bn_stats` kernels read the staged rows once more (4 or 8 lanes a row, 4-byte words), with
/// no bank conflict, and otherwise access memory as the plain forwards do (every site at its
/// ideal, the same mma count); then BatchNorm reads the output once (its apply pass alone).
#[test]
fn conv_with_batchnorm_statistics_in_the_epilogue() {
    if !ACCESS_HOOKS {
        log("not asserted in the sanitiser build (no access hooks)");
        return;
    }
    let dev = CudaBackend::emu();
    let be: &dyn Backend = &dev;
    // 1x1 with a partial last pixel tile (160 = 128 + 32) and two statistics groups; a 3x3 on a
    // 6 x 64 strip (whole tiles of 128 pixels less the last 0).
    let shapes = [
        (
            Conv::new(4, 64, 16, 10, 256, 1, 1, Padding::Sym(0), 1).unwrap(),
            2,
            "conv2d_1x1_fwd_bn_stats",
        ),
        (
            Conv::new(2, 64, 8, 66, 128, 3, 1, Padding::Sym(0), 1).unwrap(),
            1,
            "conv2d_nhwc_fwd_bn_stats",
        ),
    ];
    for ((s, ghost, family), tf32) in shapes.iter().flat_map(|c| [(c, false), (c, true)]) {
        let (s, ghost) = (*s, *ghost);
        dev.set_tf32(tf32);
        let (dt, suffix) = if tf32 {
            (DType::F32, "tf32")
        } else {
            (DType::BF16, "bf16")
        };
        let kernel = format!("{family}_{suffix}");
        let kernel = kernel.as_str();
        let (lx, lw, ly) = s.sizes();
        let x = upload(be, lx, dt, 30);
        let w = upload(be, lw, dt, 31);
        let c = s.c_out;
        let chan = || be.upload(&vec![1.0f32; c]).unwrap();
        let (gamma, beta, mut rm, mut rv) = (chan(), chan(), chan(), chan());
        let (mut mean, mut invstd) = (
            be.zeros(DType::F32, ghost * c).unwrap(),
            be.zeros(DType::F32, ghost * c).unwrap(),
        );
        let b = BatchNorm {
            ghost,
            ..BatchNorm::new(s.n, c, s.oh * s.ow, 1e-5, Act::Relu)
        };
        let (mut z, mut y) = (be.zeros(dt, ly).unwrap(), be.zeros(dt, ly).unwrap());
        let bn = BnTrainParams {
            gamma: &gamma,
            beta: &beta,
            running: (&mut rm, &mut rv),
            saved: (&mut mean, &mut invstd),
            mask: None,
        };
        let (r, stats) =
            count_memory(|| be.conv2d_fwd_bn_train(&x, &w, &mut z, bn, None, &mut y, s, b));
        assert!(r.unwrap(), "{kernel}: not fused");
        show(
            &format!("{kernel}, {s:?}, {ghost} statistics groups:"),
            &stats,
        );
        let mma = total(&stats, kernel, |s| s.space == MemSpace::TensorCore).0;
        let k_step = if tf32 { 8 } else { 16 };
        // One product an image (the statistics' runs stay per image, conv.rs's
        // EpiloguePost::group): the last pixel tile's columns past the map are multiplied too.
        let columns = s.n * (s.oh * s.ow).next_multiple_of(128);
        let useful = columns * c * s.c_in * s.kh * s.kw / (16 * 8 * k_step);
        assert_eq!(mma, useful as u64, "{kernel}");
        for row in rows(&stats, kernel) {
            assert_eq!(row.transactions, row.ideal, "{row:?}");
        }
        only(
            &stats,
            &[
                kernel,
                "batchnorm_merge_stats_f32",
                &format!("batchnorm_fwd_train_{dt}"),
                &format!("conv2d_to_nhwc_{dt}"),
            ],
            "the statistics pass is gone",
        );
        // BatchNorm's apply pass reads z once and writes y once.
        let (read, _, _) = total(&stats, &format!("batchnorm_fwd_train_{dt}"), |r| {
            r.space == MemSpace::Global && r.op == "ld" && r.width == 16
        });
        assert_eq!(
            read as usize,
            ly * dt.size() / 32,
            "{kernel}: z's sectors read by BatchNorm"
        );
    }
}

/// The data gradients that take a BatchNorm's backward reduce pass in their epilogue
/// (`conv2d_1x1_bwd_data_bn_sums_*`, and `conv2d_nhwc_bwd_data_bn_sums_*` for a 3x3 of a
/// channels-last dy), after a residual and without one: every access site at its
/// ideal sectors and wavefronts (the identity path's gradient, BatchNorm's x and dz in 16-byte
/// vectors along rows, the mask a byte a vector, the sums 4 bytes a row; without a residual, x
/// and dz alone), with a partial last pixel tile and two statistics groups;
/// the reduce pass is gone, and BatchNorm's second pass reads x and dz once and writes dx once.
/// The mask is the exception: a bf16 warp's bytes are two rows' 16-byte segments (a tile's 128
/// columns of each), 2 sectors where the packed bytes would take 1 (the other halves are the
/// next pixel tile's, from L2), rows hw / 16 bytes apart cross sectors where that is not a
/// multiple of 32 (160 pixels: 20 bytes), and a tile that runs from one image into the next
/// splits a row's bytes between the two images (2.33x for 160 pixels); under 2.5x the ideal, and
/// 1/16 of the activations' bytes.
#[test]
fn conv_data_gradient_with_batchnorm_backward_sums_in_the_epilogue() {
    if !ACCESS_HOOKS {
        log("not asserted in the sanitiser build (no access hooks)");
        return;
    }
    let dev = CudaBackend::emu();
    let be: &dyn Backend = &dev;
    let shapes = [
        (
            2,
            Conv::new(4, 256, 16, 10, 64, 1, 1, Padding::Sym(0), 1).unwrap(),
        ),
        (
            1,
            Conv::new(2, 128, 16, 16, 64, 1, 1, Padding::Sym(0), 1).unwrap(),
        ),
        // A 3x3 whose data gradient (padding 2 - 2 = 0) reads its channels-last dy with no
        // zero-filled copy: 256 pixels, two whole column tiles an image.
        (
            1,
            Conv::new(2, 128, 16, 16, 64, 3, 1, Padding::Sym(2), 1)
                .unwrap()
                .nhwc_grad(true),
        ),
    ];
    let cases = shapes
        .iter()
        .flat_map(|&c| [(c, false), (c, true)])
        .flat_map(|c| [(c, true), (c, false)]);
    for (((ghost, s), tf32), residual) in cases {
        dev.set_tf32(tf32);
        let (dt, suffix) = if tf32 {
            (DType::F32, "tf32")
        } else {
            (DType::BF16, "bf16")
        };
        let family = if s.kh == 1 { "1x1" } else { "nhwc" };
        let kernel = format!("conv2d_{family}_bwd_data_bn_sums_{suffix}");
        let kernel = kernel.as_str();
        let (lx, lw, ly) = s.sizes();
        let (x, res, w, dy) = (
            upload(be, lx, dt, 40),
            upload(be, lx, dt, 41),
            upload(be, lw, dt, 42),
            upload(be, ly, dt, 43),
        );
        let c = s.c_in;
        let b = BatchNorm {
            ghost,
            ..BatchNorm::new(s.n, c, s.h * s.w, 1e-5, Act::Relu)
        };
        let bn = TrainedBn::new(be, &x, residual.then_some(&res), b, &mut Rng::new(44));
        let (params, saved) = bn.params();
        let (mut dz, mut dx) = (be.zeros(dt, lx).unwrap(), be.zeros(dt, lx).unwrap());
        let mut partial = insclr::backend::Buf::empty(DType::F32);
        let chan = || be.zeros(DType::F32, c).unwrap();
        let (mut dg, mut db) = (chan(), chan());
        let (runs, stats) = count_memory(|| -> anyhow::Result<()> {
            let sums = bn.sums(&x, residual);
            let res = residual.then_some(&res);
            let runs =
                be.conv2d_bwd_data_bn_sums(&dy, &w, res, &mut dz, sums, &mut partial, s, b)?;
            let runs = runs.ok_or_else(|| anyhow::anyhow!("not fused"))?;
            let sums = (&partial, runs);
            be.batchnorm_bwd_summed(&x, &dz, params, saved, sums, &mut dx, (&mut dg, &mut db), b)
        });
        runs.unwrap_or_else(|e| panic!("{kernel}: {e:#}"));
        show(
            &format!("{kernel}, {s:?}, {ghost} statistics groups, residual {residual}:"),
            &stats,
        );
        for row in rows(&stats, kernel) {
            if row.width == 1 {
                assert!(2 * row.transactions <= 5 * row.ideal, "{row:?}");
            } else {
                assert_eq!(row.transactions, row.ideal, "{row:?}");
            }
        }
        // The channels-last product also copies its weight, flipped, into KRSC order.
        let (bwd, weight_copy) = (
            format!("batchnorm_bwd_{dt}"),
            format!("conv2d_to_nhwc_{dt}"),
        );
        let mut ran = vec![kernel, "batchnorm_merge_sums_f32", &bwd];
        ran.extend((family == "nhwc").then_some(weight_copy.as_str()));
        only(&stats, &ran, "the reduce pass is gone");
        // The epilogue reads x (and after a residual the identity path's gradient) and writes
        // dz, 16 bytes at a time; BatchNorm's second pass reads x and dz and writes dx.
        let sectors = (lx * dt.size() / 32) as u64;
        let moved = |k: &str, op: &str| {
            total(&stats, k, |r| {
                r.space == MemSpace::Global && r.op == op && r.width == 16
            })
            .0
        };
        assert_eq!(
            moved(kernel, "ld"),
            (1 + residual as u64) * sectors,
            "{kernel}: x (and the gradient) read once"
        );
        assert_eq!(moved(kernel, "st"), sectors, "{kernel}: dz written once");
        assert_eq!(moved(&bwd, "ld"), 2 * sectors, "{bwd}: x and dz read once");
        assert_eq!(moved(&bwd, "st"), sectors, "{bwd}: dx written once");
    }
}

#[test]
fn conv_nhwc_bf16_runs_on_the_pipelined_mainloop() {
    if !ACCESS_HOOKS {
        log("not asserted in the sanitiser build (no access hooks)");
        return;
    }
    let dev = CudaBackend::emu();
    let be: &dyn Backend = &dev;
    // A 3x3 without padding on a 6 x 64 output strip (384 pixels: three whole column tiles per
    // image), 64 -> 128 channels, batch 2: no window reaches outside the image and every row is
    // inside the GEMM, so no copy is zero-filled and every tile is an interior one. The 8 x 66
    // input and the 6 x 64 output both have whole 16-byte rows in NCHW (the transposes' wide
    // path), the weight's 9 taps per channel do not (its 2-byte path).
    let s = Conv::new(2, 64, 8, 66, 128, 3, 1, Padding::Sym(0), 1).unwrap();
    assert_eq!((s.oh, s.ow), (6, 64));
    let (lx, lw, ly) = s.sizes();
    let x = upload(be, lx, DType::BF16, 13);
    let w = upload(be, lw, DType::BF16, 14);
    let dy = upload(be, ly, DType::BF16, 15);
    let mut y = be.zeros(DType::BF16, ly).unwrap();
    let mut dx = be.zeros(DType::BF16, lx).unwrap();
    let (r, stats) = count_memory(|| be.conv2d_fwd(&x, &w, &mut y, s));
    r.unwrap();
    show(
        "conv bf16 NHWC forward, 2 x 64 x 8 x 66 -> 128, 3x3, no padding:",
        &stats,
    );
    only(
        &stats,
        &["conv2d_nhwc_fwd_bf16", "conv2d_to_nhwc_bf16"],
        "only the transposes and the implicit GEMM run",
    );
    let kernel = "conv2d_nhwc_fwd_bf16";
    let mma = total(&stats, kernel, |s| s.space == MemSpace::TensorCore).0;
    // M = 128 channels, N = 384 pixels per image, K = 9 x 64: every mma useful.
    assert_eq!(mma, (2 * 128 * 384 * 576 / (16 * 8 * 16)) as u64);
    for row in rows(&stats, kernel) {
        assert_eq!(row.transactions, row.ideal, "{row:?}");
        if row.space != MemSpace::TensorCore && row.op != "st" {
            assert_eq!(row.width, 16, "16-byte accesses only: {row:?}");
        }
    }
    // The gather copies each (pixel, tap) run of 8 channels once: 2 images x 384 pixels x 9
    // taps x 64 channels, 16 bytes a lane.
    let (_, _, copies) = total(&stats, kernel, |s| {
        s.op == "cp.async" && s.space == MemSpace::Global
    });
    let weight_copies = 3 * 2 * 128 * 576 * 2 / 16 / 32; // each block copies W's 128 rows once
    assert_eq!(
        copies,
        (2 * 384 * 9 * 64 * 2 / 16 / 32 + weight_copies) as u64
    );
    let (_, _, fragments) = total(&stats, kernel, |s| s.op == "ldmatrix.x4");
    assert_eq!(fragments, mma / 4, "ldmatrix.x4 only, one per 4 mma");
    // The transposes: no bank conflict; x's 16-byte reads and both writes coalesced (the
    // weight's 2-byte reads start wherever a channel's 9 taps do: 1.5x).
    let t = "conv2d_to_nhwc_bf16";
    for row in rows(&stats, t) {
        if row.space == MemSpace::Shared || row.width == 16 {
            assert_eq!(row.transactions, row.ideal, "{row:?}");
        }
    }
    let wide: u64 = rows(&stats, t)
        .iter()
        .filter(|s| s.space == MemSpace::Global && s.width == 16)
        .map(|s| s.bytes)
        .sum();
    // x's 2 x 64 x 528 elements read and written, the weight's 128 x 576 written, 16 bytes a lane.
    assert_eq!(wide, ((2 * 2 * 64 * 528 + 128 * 576) * 2) as u64);

    // The data gradient at stride 1: the forward of dy (128 channels, 6 x 64) with the flipped
    // weight and padding 2, M = 64 input channels (the 64-row kernel), N = 2 x 528 pixels in
    // one product over both images (nine column tiles, where one per image took ten), K = 9 x
    // 128. The borders' zero-filled copies read nothing.
    let (r, stats) = count_memory(|| be.conv2d_bwd_data(&dy, &w, &mut dx, s));
    r.unwrap();
    show(
        "conv bf16 NHWC data gradient, the same layer (padding 2 for dy):",
        &stats,
    );
    let kernel = "conv2d_nhwc_bwd_data_m64_bf16";
    let mma = total(&stats, kernel, |s| s.space == MemSpace::TensorCore).0;
    assert_eq!(mma, (64 * 1152 * 1152 / (16 * 8 * 16)) as u64);
    // A pixel's 4 chunks of a k tile are 64 sector-aligned bytes (dy has 128 channels), so
    // even the border tiles' requests, with some lanes zero-filled, read whole sectors.
    for row in rows(&stats, kernel) {
        assert_eq!(row.transactions, row.ideal, "{row:?}");
    }
    // The transposes of dy (384 pixels a channel) and of the weight (576 = 64 x 9 a row of
    // c_out) both take the 16-byte path, coalesced.
    for row in rows(&stats, "conv2d_to_nhwc_bf16") {
        assert_eq!(row.transactions, row.ideal, "{row:?}");
        assert_eq!(
            row.width,
            if row.space == MemSpace::Shared && row.op == "ld" {
                2
            } else {
                16
            },
            "{row:?}"
        );
    }
}

#[test]
fn conv_nhwc_weight_gradient_copies_whole_sectors_without_bank_conflicts() {
    if !ACCESS_HOOKS {
        log("not asserted in the sanitiser build (no access hooks)");
        return;
    }
    let dev = CudaBackend::emu();
    let be: &dyn Backend = &dev;
    // The interior layer of the test above: no window reaches outside the image. M = 128 output
    // channels (the 128-row kernel), N = 9 taps x 64 channels (4.5 column tiles: the last one's
    // columns past the taps are zero-filled), K = 2 x 384 pixels, whole 32-pixel k tiles.
    let s = Conv::new(2, 64, 8, 66, 128, 3, 1, Padding::Sym(0), 1).unwrap();
    let (lx, lw, ly) = s.sizes();
    let x = upload(be, lx, DType::BF16, 16);
    let dy = upload(be, ly, DType::BF16, 17);
    let mut dw = be.zeros(DType::F32, lw).unwrap();
    let (r, stats) = count_memory(|| be.conv2d_bwd_weight(&x, &dy, &mut dw, s));
    r.unwrap();
    show(
        "conv bf16 NHWC weight gradient, 2 x 64 x 8 x 66 -> 128, 3x3, no padding:",
        &stats,
    );
    let kernel = "conv2d_nhwc_bwd_weight_bf16";
    only(
        &stats,
        &[
            kernel,
            "conv2d_to_nhwc_bf16",
            "conv2d_bwd_weight_reduce_krsc_f32",
        ],
        "the transposes, the product and the reduction only",
    );
    let mma = total(&stats, kernel, |s| s.space == MemSpace::TensorCore).0;
    // Five 128-column tiles (640 columns, 576 of them taps) over the batch's 768 pixels,
    // whatever the split: each split's length is a multiple of the 32-pixel k tile here.
    assert_eq!(mma, (128 * 640 * 768 / (16 * 8 * 16)) as u64);
    // dy's rows (128 channels) and x's runs (a tap's 64 channels) are whole sectors; the
    // swizzled stores and the .trans fragment loads hit 32 banks; the f32 partial sums leave
    // in 16-byte rows.
    for row in rows(&stats, kernel) {
        assert_eq!(row.transactions, row.ideal, "{row:?}");
        if row.space != MemSpace::TensorCore && row.op != "st" {
            assert_eq!(row.width, 16, "16-byte accesses only: {row:?}");
        }
    }
    let (_, _, fragments) = total(&stats, kernel, |s| s.op == "ldmatrix.x4");
    assert_eq!(
        fragments,
        mma * 3 / 8,
        "per 8 mma: 2 x4 loads of A and 1 of B"
    );
    // The splits' sums move from KRSC to dw's order through shared memory: 128-byte rows of a
    // tap read, dw's runs of 32 channels x 9 taps read and written whole, no bank conflict.
    for row in rows(&stats, "conv2d_bwd_weight_reduce_krsc_f32") {
        assert_eq!(row.transactions, row.ideal, "{row:?}");
    }
}

/// The split weight gradient's reduction (`conv2d_bwd_weight_reduce_f32`, 8 rows of a warp a
/// block): each row's parts are 32 consecutive floats a warp read (one 128-byte run), the rows'
/// sums go through shared memory a float a lane (32 banks), dw's runs are read and written whole.
/// f32 on FP32, a 1x1 of 8 x 8 weights over 4 x 56 x 56 pixels: 49 parts.
#[test]
fn conv_weight_gradient_reduction_reads_whole_runs() {
    if !ACCESS_HOOKS {
        return;
    }
    let dev = CudaBackend::emu();
    dev.set_tf32(false);
    let be: &dyn Backend = &dev;
    let s = Conv::new(4, 8, 56, 56, 8, 1, 1, Padding::Sym(0), 1).unwrap();
    let (lx, lw, ly) = s.sizes();
    let x = upload(be, lx, DType::F32, 5);
    let dy = upload(be, ly, DType::F32, 6);
    let mut dw = be.zeros(DType::F32, lw).unwrap();
    let (r, stats) = count_memory(|| be.conv2d_bwd_weight(&x, &dy, &mut dw, s));
    r.unwrap();
    show(
        "conv f32 weight gradient in 49 parts, 8 x 8 weights:",
        &stats,
    );
    let kernel = "conv2d_bwd_weight_reduce_f32";
    let reduce = rows(&stats, kernel);
    // Reads of 49 parts of 64 floats (2 warps' runs each), dw read and written once.
    let (ld, _, _) = total(&stats, kernel, |r| {
        r.space == MemSpace::Global && r.op == "ld"
    });
    assert_eq!(ld, (49 + 1) * 64 * 4 / 32, "{reduce:?}");
    for row in reduce {
        assert_eq!(row.transactions, row.ideal, "{row:?}");
    }
}

#[test]
fn conv_stride_2_data_gradient_by_phases_multiplies_no_zeros() {
    if !ACCESS_HOOKS {
        log("not asserted in the sanitiser build (no access hooks)");
        return;
    }
    // bf16, and f32 on TF32 tensor cores (mma.m16n8k8: twice the mma of the same products).
    for (dtype, tf32, suffix, k_per_mma) in [
        (DType::BF16, false, "bf16", 16),
        (DType::F32, true, "tf32", 8),
    ] {
        let dev = CudaBackend::emu();
        dev.set_tf32(tf32);
        let be: &dyn Backend = &dev;
        // ResNet's downsampling 3x3 at a small size: 2 x 64 x 16 x 16 -> 128, stride 2, padding
        // 1. Phase (0, 0) of dx takes tap (1, 1) only, (0, 1) and (1, 0) two taps, (1, 1) four:
        // 9 in all, each (input pixel, tap) pair once, as many multiply-adds as the forward.
        let s = Conv::new(2, 64, 16, 16, 128, 3, 2, Padding::Sym(1), 1).unwrap();
        let (lx, lw, ly) = s.sizes();
        let w = upload(be, lw, dtype, 18);
        let dy = upload(be, ly, dtype, 19);
        let mut dx = be.zeros(dtype, lx).unwrap();
        let (r, stats) = count_memory(|| be.conv2d_bwd_data(&dy, &w, &mut dx, s));
        r.unwrap();
        show(
            &format!("conv {suffix} data gradient by stride phases, 2 x 64 x 16 x 16 -> 128, 3x3, stride 2, padding 1:"),
            &stats,
        );
        let product = format!("conv2d_nhwc_bwd_data_phase_m64_{suffix}");
        let (transpose, gather) = (
            format!("conv2d_to_nhwc_{dtype}"),
            format!("conv2d_phase_weight_{dtype}"),
        );
        only(
            &stats,
            &[&product, &transpose, &gather],
            "no element gather, no pass over dx but the products' own stores",
        );
        // Each phase: M = 64 channels (one 64-row tile), N = its 8 x 8 grid (one 128-column
        // tile, half used), K = its taps x 128; the tiles' padding aside, 9 taps in all against
        // the element gather's 4 x 9 (every input pixel times every tap).
        let mma = total(&stats, &product, |s| s.space == MemSpace::TensorCore).0;
        let per_tap = 2 * 64 * 128 * 128 / (16 * 8 * k_per_mma); // images x rows x padded columns x k
        assert_eq!(mma, (9 * per_tap) as u64);
        // The gather and the fragments as the forward's (1.0x); the stores of a phase's pixels, 2
        // apart in dx's rows, an element a thread: up to twice the ideal sectors (a defect while
        // dx is NCHW; 4-byte f32 stores fill a sector's half).
        for row in rows(&stats, &product) {
            if row.space == MemSpace::Global && row.op == "st" {
                assert_eq!(row.width as usize, dtype.size(), "{row:?}");
                assert!(row.transactions <= 2 * row.ideal, "{row:?}");
            } else {
                assert_eq!(row.transactions, row.ideal, "{row:?}");
            }
        }
        for row in rows(&stats, &gather) {
            assert_eq!(row.transactions, row.ideal, "{row:?}");
            assert_eq!(row.width, 16, "{row:?}");
        }
    }
}

#[test]
fn batchnorm_moves_its_activations_in_coalesced_16_byte_vectors() {
    use insclr::backend::{Act, BatchNorm};
    if !ACCESS_HOOKS {
        log("not asserted in the sanitiser build (no access hooks)");
        return;
    }
    let dev = CudaBackend::emu();
    let be: &dyn Backend = &dev;
    // Two channels of two 64 x 128 planes: 2048 (bf16) or 4096 (f32) vectors per channel, so
    // each channel is cut into 2 or 4 runs and some warps cross a plane's end.
    let (n, c, hw) = (2, 2, 64 * 128);
    let len = n * c * hw;
    for dtype in [DType::BF16, DType::F32] {
        let s = BatchNorm::new(n, c, hw, 1e-5, Act::Relu);
        let x = upload(be, len, dtype, 20);
        let res = upload(be, len, dtype, 21);
        let dy = upload(be, len, dtype, 22);
        let (mut y, mut dx, mut dres) = (
            be.zeros(dtype, len).unwrap(),
            be.zeros(dtype, len).unwrap(),
            be.zeros(dtype, len).unwrap(),
        );
        let chan = |v: f32| be.upload(&vec![v; c]).unwrap();
        let (gamma, beta) = (chan(1.0), chan(0.0));
        let (mut rm, mut rv, mut sm, mut si) = (chan(0.0), chan(1.0), chan(0.0), chan(1.0));
        let (mut dg, mut db) = (chan(0.0), chan(0.0));
        let mut mask = ActMask::new();
        let (r, stats) = count_memory(|| -> anyhow::Result<()> {
            be.batchnorm_fwd_train(
                &x,
                &gamma,
                &beta,
                (&mut rm, &mut rv),
                (&mut sm, &mut si),
                Some(&res),
                &mut y,
                Some(&mut mask),
                s,
            )?;
            be.batchnorm_bwd(
                &x,
                &y,
                &dy,
                (&gamma, &beta),
                (&sm, &si),
                Some(&mask),
                &mut dx,
                Some(&mut dres),
                (&mut dg, &mut db),
                s,
            )?;
            be.batchnorm_fwd_eval(&x, &gamma, &beta, &rm, &rv, Some(&res), &mut y, s)
        });
        r.unwrap();
        assert!(mask.kept(), "{dtype}: no activation mask kept");
        show(&format!("batchnorm {dtype}, 2 x 2 x 8192:"), &stats);
        let bytes = (len * dtype.size()) as u64;
        // act'(y) after the residual: a byte per 16-byte vector of y, written by the forward's
        // apply pass and read by the backward's reduce pass in place of y, a warp's 32 bytes in
        // one sector.
        for op in ["batchnorm_fwd_train", "batchnorm_bwd_reduce"] {
            let kernel = format!("{op}_{dtype}");
            let masks: Vec<&MemStat> = rows(&stats, &kernel)
                .into_iter()
                .filter(|s| s.space == MemSpace::Global && s.width == 1)
                .collect();
            let moved: u64 = masks.iter().map(|s| s.bytes).sum();
            assert_eq!(moved, bytes / 16, "{kernel}: {masks:#?}");
            for row in masks {
                assert_eq!(row.transactions, row.ideal, "{kernel}: {row:?}");
            }
        }
        // Every activation byte in a 16-byte access, no sector fetched twice; the rest (the
        // pair's first value, parameters, partial sums: broadcasts, one sector a warp) under 5%
        // of the sectors.
        for (op, passes) in [
            ("batchnorm_fwd_train_stats", 1),
            ("batchnorm_fwd_train", 3),
            // With the residual: x and dy read (act'(y) from the mask), dz (the residual's
            // gradient) written; then x and dz read, dx written.
            ("batchnorm_bwd_reduce", 3),
            ("batchnorm_bwd", 3),
            ("batchnorm_fwd_eval", 3),
        ] {
            let kernel = format!("{op}_{dtype}");
            let vectors: Vec<&MemStat> = rows(&stats, &kernel)
                .into_iter()
                .filter(|s| s.space == MemSpace::Global && s.width == 16)
                .collect();
            let moved: u64 = vectors.iter().map(|s| s.bytes).sum();
            let sectors: u64 = vectors.iter().map(|s| s.transactions).sum();
            assert_eq!(moved, passes * bytes, "{kernel}: {vectors:#?}");
            for row in vectors {
                assert_eq!(row.transactions, row.ideal, "{kernel}: {row:?}");
            }
            let other: u64 = rows(&stats, &kernel)
                .into_iter()
                .filter(|s| s.space == MemSpace::Global && s.width != 16)
                .map(|s| s.transactions)
                .sum();
            assert!(
                other * 20 < sectors,
                "{kernel}: {other} sectors outside vectors, {sectors} in them"
            );
        }
    }
}

/// BatchNorm writing y channels-last for the convolution after it (`BatchNorm::y_nhwc`), and its
/// backward writing dx channels-last for the convolution before it (`BatchNorm::dx_nhwc`): their
/// passes read x (and dy) along NCHW rows and write along pixels' channels through the
/// transposes' tiles, every activation byte in a 16-byte access at its ideal sectors (bf16; f32 a
/// lane a value, 128 bytes a warp), the tiles and the staged channel maps without bank
/// conflicts, the maps' own reads a small part of it.
#[test]
fn channels_last_batchnorm_moves_its_tiles_coalesced_without_bank_conflicts() {
    use insclr::backend::{Act, BatchNorm};
    if !ACCESS_HOOKS {
        log("not asserted in the sanitiser build (no access hooks)");
        return;
    }
    let dev = CudaBackend::emu();
    let be: &dyn Backend = &dev;
    // 128 channels of 8 x 16 pixels, 2 images: whole 64 x 64 (bf16) and 32 x 32 (f32) tiles.
    let (n, c, hw) = (2, 128, 128);
    let len = n * c * hw;
    for dtype in [DType::BF16, DType::F32] {
        let s = BatchNorm {
            y_nhwc: true,
            ..BatchNorm::new(n, c, hw, 1e-5, Act::Relu)
        };
        let x = upload(be, len, dtype, 23);
        let dy = upload(be, len, dtype, 24);
        let (mut y, mut dx) = (be.zeros(dtype, len).unwrap(), be.zeros(dtype, len).unwrap());
        let chan = |v: f32| be.upload(&vec![v; c]).unwrap();
        let (gamma, beta) = (chan(1.0), chan(0.0));
        let (mut rm, mut rv, mut sm, mut si) = (chan(0.0), chan(1.0), chan(0.0), chan(1.0));
        let (mut dg, mut db) = (chan(0.0), chan(0.0));
        let (r, stats) = count_memory(|| -> anyhow::Result<()> {
            let (running, saved) = ((&mut rm, &mut rv), (&mut sm, &mut si));
            be.batchnorm_fwd_train(&x, &gamma, &beta, running, saved, None, &mut y, None, s)?;
            let back = BatchNorm {
                y_nhwc: false,
                dx_nhwc: true,
                ..s
            };
            let (params, saved, dparams) = ((&gamma, &beta), (&sm, &si), (&mut dg, &mut db));
            be.batchnorm_bwd(
                &x, &y, &dy, params, saved, None, &mut dx, None, dparams, back,
            )
        });
        r.unwrap();
        show(
            &format!("channels-last batchnorm {dtype}, 2 x 128 x 128, forward and backward:"),
            &stats,
        );
        let k = |op: &str| format!("batchnorm_{op}");
        only(
            &stats,
            &[
                &k(&format!("fwd_train_stats_{dtype}")),
                &k(&format!("fwd_train_save_{dtype}")),
                &k(&format!("fwd_train_nhwc_{dtype}")),
                &k(&format!("bwd_reduce_{dtype}")),
                &k("bwd_pairs_f32"),
                &k(&format!("bwd_nhwc_{dtype}")),
            ],
            "the statistics, per-pair and channels-last passes",
        );
        let bytes = (len * dtype.size()) as u64;
        // x read, y written; x and dy read, dx written.
        let (fwd, bwd) = (
            k(&format!("fwd_train_nhwc_{dtype}")),
            k(&format!("bwd_nhwc_{dtype}")),
        );
        check_tile_pass(&stats, &fwd, dtype, bytes, 2);
        check_tile_pass(&stats, &bwd, dtype, bytes, 3);
    }
}

/// A channels-last tile pass over tensors of `tensor` bytes: the activations (sites that move a
/// whole tensor) move `passes` tensors in 16-byte (bf16) or 4-byte (f32) global accesses, each at
/// its ideal sectors, and every shared access is at its ideal (no bank conflict); the rest (the
/// block's channel maps, copied into shared memory once, a word a thread: 1/32 of a forward tile's
/// sectors, 1/14 of a backward one's, L2 hits) under 1/12 of the
/// activations' sectors.
fn check_tile_pass(stats: &[MemStat], kernel: &str, dtype: DType, tensor: u64, passes: u64) {
    let (activations, maps): (Vec<&MemStat>, Vec<&MemStat>) = rows(stats, kernel)
        .into_iter()
        .filter(|s| s.space == MemSpace::Global)
        .partition(|s| s.bytes >= tensor);
    let bytes: u64 = activations.iter().map(|s| s.bytes).sum();
    assert_eq!(
        bytes,
        passes * tensor,
        "{kernel}: each activation once: {activations:#?}"
    );
    let width = if dtype == DType::BF16 { 16 } else { 4 };
    for row in &activations {
        assert_eq!(row.transactions, row.ideal, "{kernel}: {row:?}");
        assert_eq!(row.width, width, "{kernel}: {row:?}");
    }
    for row in rows(stats, kernel)
        .into_iter()
        .filter(|s| s.space == MemSpace::Shared)
    {
        assert_eq!(
            row.transactions, row.ideal,
            "{kernel}: bank conflict {row:?}"
        );
    }
    let sectors: u64 = activations.iter().map(|s| s.transactions).sum();
    let map_sectors: u64 = maps.iter().map(|s| s.transactions).sum();
    assert!(
        map_sectors > 0 && map_sectors * 12 <= sectors,
        "{kernel}: {map_sectors} sectors of channel maps, {sectors} of activations"
    );
}

/// The max pool (bf16, 3 x 3 / 2, pad 1, 2 x 4 x 56 x 56, ResNet's stem on a smaller map): the
/// training forward writes an argmax byte an output beside y, and the backward reads those bytes
/// and dy, not the pooled map (before 2026-12-07 it recomputed each covering window's argmax from
/// x: 80808 sectors, 2.67x the ideal for its window reads). The stem kernels take a 2 x 8 cell of
/// the map a thread: the rows go as vectors (x's 16 bytes, y's and dy's 8, the argmax bytes 4),
/// the one column beyond a cell comes from the next lane by a shuffle, and only a warp's edge
/// lanes load it, one value each (the general kernels' element accesses: 9136 sectors forward,
/// 9277 backward).
#[test]
fn max_pool_backward_reads_argmax_bytes_not_the_map() {
    let dev = CudaBackend::emu();
    let be: &dyn Backend = &dev;
    let dt = DType::BF16;
    let s = insclr::backend::MaxPool::new(2, 4, 56, 56, 3, 2, 1).unwrap();
    let (lin, lout) = (s.n * s.c * s.h * s.w, s.n * s.c * s.oh * s.ow);
    let x = upload(be, lin, dt, 7);
    let dy = upload(be, lout, dt, 8);
    let (mut y, mut dx) = (be.zeros(dt, lout).unwrap(), be.zeros(dt, lin).unwrap());
    let mut argmax = be.zeros(DType::U8, lout).unwrap();
    let (r, fwd) = count_memory(|| be.maxpool_fwd(&x, &mut y, Some(&mut argmax), s));
    r.unwrap();
    show("maxpool_3x3s2_fwd_bf16 with its argmax bytes:", &fwd);
    let (r, bwd) = count_memory(|| be.maxpool_bwd(&argmax, &dy, &mut dx, s));
    r.unwrap();
    show("maxpool_3x3s2_bwd_bf16 from the argmax bytes:", &bwd);
    only(&fwd, &["maxpool_3x3s2_fwd_bf16"], "one launch");
    only(&bwd, &["maxpool_3x3s2_bwd_bf16"], "one launch");
    // Every access within 1.2x its ideal sectors (a 56-wide row is 112 bytes, so a warp's 32
    // cells start mid-sector: 1.17x), of the widths the cells name, and far fewer sectors in all
    // than the general kernels'.
    let check = |stats: &[MemStat], widths: &[(&str, u32)], general: u64| {
        let mut all = 0;
        for row in stats {
            assert_eq!(row.space, MemSpace::Global, "{row:?}");
            assert!(
                widths.contains(&(row.op, row.width)),
                "an access the cells do not make: {row:?}"
            );
            assert!(5 * row.transactions <= 6 * row.ideal, "{row:?}");
            all += row.transactions;
        }
        assert!(
            2 * all < general,
            "{all} sectors, the general kernel's {general}"
        );
    };
    check(&fwd, &[("ld", 16), ("ld", 2), ("st", 8), ("st", 4)], 9136);
    check(
        &bwd,
        &[("ld", 8), ("ld", 4), ("ld", 2), ("ld", 1), ("st", 16)],
        9277,
    );
}

/// The input conversion reads a group's bytes as three 4- or 8-byte words and writes each
/// channel's values as 16-byte vectors at their ideal sectors; a value comes from the block's
/// shared table (built with conflict-free stores), whose lookups go where the bytes say. The
/// words of neighbouring lanes are 12 or 24 bytes apart, so each of a group's three loads touches
/// the sectors of all three (3.00x their ideal, the same lines three times: the repeats are
/// cache hits, DRAM reads each byte once); the old element-a-thread kernel's byte loads were too.
#[test]
fn image_to_tensor_reads_words_and_stores_16_byte_vectors() {
    let dev = CudaBackend::emu();
    let be: &dyn Backend = &dev;
    let (n, h, w) = (2, 32, 32);
    let bytes: Vec<u8> = Rng::new(5)
        .vec_f32(n * h * w * 3, 0.0, 255.0)
        .iter()
        .map(|&v| v as u8)
        .collect();
    let rgb = be.upload(&bytes).unwrap();
    let s = insclr::backend::ImageToTensor {
        n,
        h,
        w,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
    for (dt, kernel, word) in [
        (DType::F32, "image_to_tensor_u8", 4),
        (DType::BF16, "image_to_tensor_u8_bf16", 8),
    ] {
        let mut out = be.zeros(dt, n * 3 * h * w).unwrap();
        let (r, stats) = count_memory(|| be.image_to_tensor(&rgb, &mut out, s));
        r.unwrap();
        show(&format!("{kernel}, {n} x {h} x {w}:"), &stats);
        only(&stats, &[kernel], "one launch");
        for row in &stats {
            match (row.space, row.op) {
                (MemSpace::Global, "ld") => assert_eq!(row.width, word, "{row:?}"),
                (MemSpace::Global, "st") => assert_eq!(row.width, 16, "{row:?}"),
                (MemSpace::Shared, "st") => {}
                // The lookups: random bytes put a warp's 32 on ~3 lanes a bank at worst.
                (MemSpace::Shared, "ld") => assert!(row.excess() < 4.0, "{row:?}"),
                _ => panic!("an access the kernel does not make: {row:?}"),
            }
            match (row.space, row.op) {
                (MemSpace::Global, "ld") => assert_eq!(row.transactions, 3 * row.ideal, "{row:?}"),
                (_, "st") => assert_eq!(row.transactions, row.ideal, "{row:?}"),
                _ => {}
            }
        }
        let (stored, _, _) = total(&stats, kernel, |r| {
            r.space == MemSpace::Global && r.op == "st"
        });
        assert_eq!(stored as usize * 32, n * 3 * h * w * dt.size(), "{kernel}");
    }
}

/// GeM on 14 x 14 maps (ResNet's last stage at 448 px), bf16: 16 lanes a row, so a warp's access
/// takes 32 consecutive bytes of each of two rows. Rows are 392 bytes, so most of those runs
/// straddle a sector boundary: 1.76x the ideal sectors for x and dx (the next access reads the
/// rest of those sectors: cache hits, DRAM moves each byte once); y and dy a value a row.
#[test]
fn gem_reads_rows_in_lane_groups() {
    let dev = CudaBackend::emu();
    let be: &dyn Backend = &dev;
    let dt = DType::BF16;
    let s = insclr::backend::Gem::new(2, 64, 14, 14);
    let x = upload(be, s.rows * s.hw, dt, 3);
    let dy = upload(be, s.rows, dt, 4);
    let (mut y, mut dx) = (
        be.zeros(dt, s.rows).unwrap(),
        be.zeros(dt, s.rows * s.hw).unwrap(),
    );
    let (r, fwd) = count_memory(|| be.gem_fwd(&x, &mut y, s));
    r.unwrap();
    show("gem_fwd_bf16, 128 rows of 14 x 14:", &fwd);
    let (r, bwd) = count_memory(|| be.gem_bwd(&x, &y, &dy, &mut dx, s));
    r.unwrap();
    show("gem_bwd_bf16, 128 rows of 14 x 14:", &bwd);
    only(&fwd, &["gem_fwd_bf16"], "one launch");
    only(&bwd, &["gem_bwd_bf16"], "one launch");
    for row in fwd.iter().chain(&bwd) {
        assert_eq!((row.space, row.width), (MemSpace::Global, 2), "{row:?}");
        assert!(
            25 * row.transactions <= 44 * row.ideal,
            "over 1.76x the ideal sectors: {row:?}"
        );
    }
    let (ld, ideal, _) = total(&bwd, "gem_bwd_bf16", |r| r.op == "ld" && r.bytes > 4096);
    assert_eq!((ld, ideal), (2816, 1600), "x's reads in the backward");
}
