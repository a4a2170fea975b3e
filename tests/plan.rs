//! The launch plan (`insclr-cu plan`): the recording device layer lists what the launchers
//! launch, with the work they state; a whole training step plans without a GPU, every launch
//! with a floor; the CLI prints the ResNet-101 448 px bf16 step beside its measured time.

use insclr::backend::cuda::occupancy::{self, SM90};
use insclr::backend::cuda::record::Event;
use insclr::backend::cuda::work::Unit;
use insclr::backend::{Backend, Buf, Conv, CudaBackend, DType, Padding};
use insclr::nn::Arch;
use insclr::plan::{plan_step, Job, Kind, PlanOptions, StepPlan};
use std::process::Command;

/// The operations `f` makes on a fresh plan backend, given buffers of `sizes` (inputs of
/// `dtype`, the output of `out`) made beforehand.
fn launches_of(
    (dtype, out): (DType, DType),
    sizes: (usize, usize, usize),
    f: impl Fn(&dyn Backend, &Buf, &Buf, &mut Buf),
) -> Vec<Event> {
    let cuda = CudaBackend::plan();
    let be: &dyn Backend = &cuda;
    let a = be.zeros(dtype, sizes.0).unwrap();
    let b = be.zeros(dtype, sizes.1).unwrap();
    let mut c = be.zeros(out, sizes.2).unwrap();
    let rec = cuda.recorder().unwrap();
    rec.set_recording(true);
    f(be, &a, &b, &mut c);
    rec.take()
}

#[test]
fn a_1x1_convolution_is_recorded_with_2nhwck_flops_and_its_traffic() {
    // 14 x 14 = 196 pixels: no 16-byte NCHW rows, so bf16 takes the channels-last path (its two
    // transposes into scratch, then the implicit GEMM), f32 the element gather.
    let s = Conv::new(8, 64, 14, 14, 32, 1, 1, Padding::Sym(0), 1).unwrap();
    let (x, w, y) = s.sizes();
    for dtype in [DType::F32, DType::BF16] {
        let events = launches_of((dtype, dtype), (x, w, y), |be, x, w, y| {
            be.conv2d_fwd(x, w, y, s).unwrap()
        });
        let (kernel, cfg, work) = match (&events[..], dtype) {
            ([Event::Launch { kernel, cfg, work }], DType::F32) => (kernel, cfg, work),
            (
                [Event::Launch {
                    kernel: tx,
                    work: Some(wx),
                    ..
                }, Event::Launch {
                    kernel: tw,
                    work: Some(ww),
                    ..
                }, Event::Launch { kernel, cfg, work }],
                DType::BF16,
            ) => {
                assert_eq!(
                    (tx.as_str(), tw.as_str()),
                    ("conv2d_to_nhwc_bf16", "conv2d_to_nhwc_bf16")
                );
                // Each transpose reads and writes its tensor once.
                assert_eq!(
                    (wx.bytes, ww.bytes),
                    ((2 * x * 2) as f64, (2 * w * 2) as f64)
                );
                (kernel, cfg, work)
            }
            _ => panic!("{dtype}: unexpected launches {events:?}"),
        };
        let (want, grid) = match dtype {
            // N = 8 * 196 output positions over 64-wide tiles.
            DType::F32 => ("conv2d_fwd_f32", ((8 * 196usize).div_ceil(64) as u32, 1, 1)),
            // One product over the batch (196 pixels an image are no whole number of tiles): 8 x
            // 196 pixels over 128-wide tiles, 32 channels in one 64-row tile.
            _ => (
                "conv2d_nhwc_fwd_m64_bf16",
                ((8 * 196usize).div_ceil(128) as u32, 1, 1),
            ),
        };
        assert_eq!(kernel, want);
        assert_eq!(cfg.grid, grid);
        let work = work.as_ref().expect("the conv launcher states its work");
        assert_eq!(work.flops, (2 * 8 * 14 * 14 * 64 * 32) as f64);
        assert_eq!(work.bytes, ((x + w + y) * dtype.size()) as f64);
        let unit = if dtype == DType::BF16 {
            Unit::TensorBf16
        } else {
            Unit::Fp32
        };
        assert_eq!(work.unit, unit);
        assert_eq!(work.shape, "8x64x14x14 -> 32 k1 s1");
        // The tiles' share of useful outputs: the pipelined product's 32 of 64 rows and 1568 of
        // 13 x 128 columns; the SIMT kernel states none.
        let fill = if dtype == DType::BF16 {
            (32.0 * 1568.0) / (64.0 * 13.0 * 128.0)
        } else {
            1.0
        };
        assert_eq!(work.fill, fill);
    }
}

#[test]
fn a_weight_gradient_is_split_to_fill_one_wave_of_the_modelled_gpu() {
    // 64 x 64 channels at 112 x 112, batch 64: one output tile, K = 802816 positions (enough
    // for 3136 splits of the 256 positions a split takes at least, more than any sm_90 holds).
    let s = Conv::new(64, 64, 112, 112, 64, 1, 1, Padding::Sym(0), 1).unwrap();
    let (x, _, y) = s.sizes();
    for dtype in [DType::F32, DType::BF16] {
        let events = launches_of((dtype, DType::F32), (x, y, s.sizes().1), |be, x, dy, dw| {
            be.conv2d_bwd_weight(x, dy, dw, s).unwrap()
        });
        let [Event::Launch { kernel, cfg, .. }, Event::Launch {
            kernel: reduce,
            work: Some(reduce_work),
            ..
        }] = &events[..]
        else {
            panic!("the weight gradient and its reduction expected, got {events:?}");
        };
        // bf16 takes the 1x1 GEMM on the pipelined mainloop (64 output rows: its 64-row tiles).
        let want = match dtype {
            DType::BF16 => "conv2d_1x1_bwd_weight_m64_bf16".to_string(),
            _ => format!("conv2d_bwd_weight_{dtype}"),
        };
        assert_eq!(kernel, &want);
        assert_eq!(reduce, "conv2d_bwd_weight_reduce_f32");
        let res = occupancy::resources(kernel);
        let per_sm = occupancy::blocks_per_sm(&SM90, res, cfg.block.0, cfg.smem).blocks as usize;
        let slots = per_sm * occupancy::MODEL_SMS as usize;
        let blocks = (cfg.grid.0 * cfg.grid.1 * cfg.grid.2) as usize;
        let splits = cfg.grid.2 as usize;
        // One tile, so the splits alone fill the GPU: all of it, in one wave.
        assert_eq!(cfg.grid.0 * cfg.grid.1, 1);
        assert!(
            blocks <= slots && blocks * 10 >= slots * 9,
            "{kernel}: {blocks} blocks for {slots} slots"
        );
        // The reduction reads every split's partial sums and dw, and writes dw.
        assert_eq!(reduce_work.bytes, ((splits + 2) * 64 * 64 * 4) as f64);
    }
}

fn resnet50(precision: DType) -> StepPlan {
    plan_step(&PlanOptions {
        arch: Arch::ResNet50,
        px: 224,
        batch: 64,
        precision,
        tf32: false,
        job: Job::Step,
    })
    .unwrap()
}

/// The device memory of an extraction call (`plan --extract`) grows with its batch by the
/// eval forward's reused maps: for ResNet-101, 80 values per image per pixel of the input (the
/// slots' largest uses: the stem's convolution 16, the block inputs and outputs 2 x 16, the
/// downsample 16, the inner maps 8 + 4, the kept stride-16 map 4), the input (3, and its bytes)
/// and in bf16 the convolutions' channels-last scratch. BatchNorm runs in the convolutions'
/// epilogue, so the scratch slot for a convolution's output before BatchNorm (16) is never
/// used: measured 67.9 in f32 and 87.8 in bf16 (83.9 and 103.8 with it). Every layer's own
/// buffer, as a training forward keeps them, comes to about 640 (the plan before the maps: 41.3
/// GiB against 5.6 GiB for 16 images at 1024 px in f32; 21.6 against 3.8 in bf16).
#[test]
fn an_extraction_call_holds_a_few_maps_not_every_layers() {
    let px = 256;
    for (precision, most) in [(DType::F32, 75.0), (DType::BF16, 95.0)] {
        let peak = |batch| {
            plan_step(&PlanOptions {
                arch: Arch::ResNet101,
                px,
                batch,
                precision,
                tf32: false,
                job: Job::Extract,
            })
            .unwrap()
            .peak_bytes as f64
        };
        // The difference leaves the parameters out.
        let per_image = (peak(4) - peak(2)) / 2.0;
        let per_pixel = per_image / (px * px * precision.size()) as f64;
        eprintln!("{precision}: {per_pixel:.1} values per image per input pixel");
        assert!(
            (60.0..most).contains(&per_pixel),
            "{precision}: an extraction call holds {per_pixel:.1} values per image per input pixel"
        );
    }
}

fn count(p: &StepPlan, name: &str) -> usize {
    p.entries.iter().filter(|e| e.name == name).count()
}

fn count_prefix(p: &StepPlan, prefix: &str) -> usize {
    p.entries
        .iter()
        .filter(|e| e.name.starts_with(prefix))
        .count()
}

/// Convolutions whose pass (`fwd`, `bwd_data`, `bwd_weight`) ran in `precision`: the implicit
/// GEMM's launches, and in bf16 also the 1x1 GEMMs' (`conv2d_1x1_<op>[_m64]_bf16`) and the
/// channels-last ones' (`conv2d_nhwc_<op>[_m64]_bf16`), a data gradient by stride phases counted
/// once (its products, one per phase weight).
fn conv_count(p: &StepPlan, op: &str, precision: DType) -> usize {
    let launches = count(p, &format!("conv2d_{op}_{precision}"))
        + count_prefix(p, &format!("conv2d_1x1_{op}_"))
        + count_prefix(p, &format!("conv2d_nhwc_{op}_"));
    if op == "bwd_data" {
        let phased = count_prefix(p, "conv2d_nhwc_bwd_data_phase_");
        let layers = p
            .entries
            .iter()
            .filter(|e| e.name.starts_with("conv2d_nhwc_bwd_data_phase_"))
            .map(|e| e.work.shape.split(" phase").next().unwrap_or_default())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        launches - phased + layers
    } else {
        launches
    }
}

#[test]
fn a_resnet50_step_plans_every_layer_once_and_every_launch_has_a_floor() {
    for precision in [DType::F32, DType::BF16] {
        let p = resnet50(precision);
        let k = |op: &str| format!("{op}_{precision}");
        // 53 convolutions (49 in the bottlenecks, 3 downsamples, the stem) and their
        // BatchNorms; the stem's input gradient is never computed.
        assert_eq!(conv_count(&p, "fwd", precision), 53);
        assert_eq!(conv_count(&p, "bwd_data", precision), 52);
        assert_eq!(conv_count(&p, "bwd_weight", precision), 53);
        // In bf16 the 1x1 stride-1 convolutions whose maps hold a multiple of 8 pixels (56 and
        // 28 px: not 14 x 14 = 196 or 7 x 7) are GEMMs on the pipelined mainloop: stage 1's six
        // and its downsample, stage 2's eight (its first block's reduction still at 56 px), and
        // stage 3's first reduction (at 28 px).
        // Every other one is a channels-last implicit GEMM, the stem too (its 3 input channels
        // padded to 8), and so is every data gradient but the stem's (never computed): at
        // stride 2 (stages 2-4's first 3x3 and downsample) one product per stride phase that a
        // tap reaches (4 for a 3x3 padded by 1, 1 for a 1x1, whose dx is zeroed first), each
        // after its sub-kernel's gather. Every weight gradient but the 1x1 GEMMs' is
        // channels-last too: no element gather is left. Each channels-last pass follows two
        // transposes (the forward's and data gradient's input and weight, the weight gradient's
        // x and dy), but a layer's two backward passes share dy's (conv2d_bwd): one fewer for
        // each of the 36 layers with both; each bottleneck's 3x3 (16) reads its input as bn1
        // wrote it, channels-last, and so does each 1x1 expansion at 14 and 7 px (9) as bn2
        // wrote it: two fewer each (its forward's and its weight gradient's); and every
        // channels-last layer reads its dy as its BatchNorm's backward wrote it, channels-last:
        // one fewer for each of 37 (the 16 3x3s, the 3 stride-2 downsamples, the stem, the 8 1x1
        // reductions and the 9 expansions at 14 and 7 px).
        if precision == DType::BF16 {
            assert_eq!(
                count_prefix(&p, "conv2d_1x1_fwd_"),
                16,
                "1x1 stride-1 convolutions at 56 and 28 px"
            );
            assert_eq!(count(&p, &k("conv2d_fwd")), 0);
            assert_eq!(count(&p, &k("conv2d_bwd_data")), 0);
            assert_eq!(count(&p, &k("conv2d_bwd_weight")), 0);
            assert_eq!(count_prefix(&p, "conv2d_nhwc_fwd_"), 37);
            assert_eq!(count_prefix(&p, "conv2d_nhwc_bwd_data_"), 30 + 3 * 4 + 3);
            assert_eq!(count_prefix(&p, "conv2d_nhwc_bwd_data_phase_"), 3 * 4 + 3);
            assert_eq!(count(&p, "conv2d_phase_weight_bf16"), 3 * 4 + 3);
            assert_eq!(count_prefix(&p, "conv2d_nhwc_bwd_weight_"), 37);
            // The stem's 3 channels (x twice, its weight once) go by the narrow transpose.
            assert_eq!(count(&p, "conv2d_to_nhwc8_bf16"), 3);
            assert_eq!(
                count(&p, "conv2d_to_nhwc_bf16"),
                2 * (37 + 36 + 37) - 3 - 36 - 2 * (16 + 9) - 37
            );
        }
        // Each bottleneck's input gradient: c1's data gradient added onto the identity path's in
        // its epilogue in bf16 (no add left), by its element gather then an add in f32.
        let adds = if precision == DType::BF16 { 0 } else { 16 };
        assert_eq!(count(&p, &k("add_fwd")), adds);
        // Each weight gradient adds its splits into dw once; the channels-last ones from KRSC.
        let krsc = if precision == DType::BF16 { 37 } else { 0 };
        assert_eq!(count(&p, "conv2d_bwd_weight_reduce_krsc_f32"), krsc);
        assert_eq!(count(&p, "conv2d_bwd_weight_reduce_f32"), 53 - krsc);
        // In bf16 each bottleneck's bn1 writes its y channels-last for the 3x3 (16), and bn2 for
        // the 1x1 expansion at 14 and 7 px (9): a pass that saves the statistics, then the
        // channels-last apply pass. f32 without TF32 (this plan) has no channels-last kernel.
        let nhwc = if precision == DType::BF16 { 16 + 9 } else { 0 };
        assert_eq!(count(&p, &k("batchnorm_fwd_train")), 53 - nhwc);
        assert_eq!(count(&p, &k("batchnorm_fwd_train_save")), nhwc);
        assert_eq!(count(&p, &k("batchnorm_fwd_train_nhwc")), nhwc);
        let dx_nhwc = if precision == DType::BF16 { 37 } else { 0 };
        assert_eq!(count(&p, &k("batchnorm_bwd")), 53 - dx_nhwc);
        assert_eq!(count(&p, &k("batchnorm_bwd_nhwc")), dx_nhwc);
        assert_eq!(count(&p, "batchnorm_bwd_pairs_f32"), dx_nhwc);
        assert_eq!(count(&p, "adam_f32"), 1);
        assert_eq!(
            p.count(Kind::CopyToDevice),
            2,
            "the images and the norm's zero"
        );
        // Forward convolutions: torchvision's 4.09 GMAC per 224 px image (the classifier's 2M
        // are not in a retrieval network); in bf16 the stem's products also multiply its 5
        // padding channels (112 x 112 x 64 x 49 x 5 MAC an image), as the GPU will.
        let fwd: f64 = p
            .entries
            .iter()
            .filter(|e| {
                e.name == k("conv2d_fwd")
                    || e.name.starts_with("conv2d_1x1_fwd_")
                    || e.name.starts_with("conv2d_nhwc_fwd_")
            })
            .map(|e| e.work.flops)
            .sum();
        let gmac = fwd / 2.0 / 64.0 / 1e9;
        let padding = match precision {
            DType::BF16 => (112 * 112 * 64 * 49 * 5) as f64 / 1e9,
            _ => 0.0,
        };
        assert!(
            (gmac - 4.09 - padding).abs() < 0.02,
            "{gmac} GMAC per image"
        );
        for e in &p.entries {
            for (g, on) in e.on.iter().enumerate() {
                assert!(on.floor > 0.0, "{} on {}: no floor", e.name, p.gpus[g].name);
            }
            if e.kind == Kind::Kernel {
                assert!(e.work.bytes > 0.0, "{}: no bytes", e.name);
            }
        }
        // The H200 has more bandwidth and the same compute: never slower, faster overall.
        assert!(p.floor(1) < p.floor(0));
        assert!(p.entries.iter().all(|e| e.on[1].floor <= e.on[0].floor));
    }
}

#[test]
fn the_plan_of_a_step_is_the_same_every_time() {
    let (a, b) = (resnet50(DType::BF16), resnet50(DType::BF16));
    let key = |p: &StepPlan| -> Vec<String> {
        p.entries
            .iter()
            .map(|e| format!("{} {:?} {:?}", e.name, e.cfg, e.work))
            .collect()
    };
    assert_eq!(key(&a), key(&b));
    assert_eq!(a.floor(1), b.floor(1));
}

#[test]
fn the_cli_prints_the_resnet101_448_bf16_step_beside_its_measured_time() {
    let out = Command::new(env!("CARGO_BIN_EXE_insclr-cu"))
        .args([
            "plan",
            "--model",
            "resnet101",
            "--img-size",
            "448",
            "--batch",
            "64",
            "--precision",
            "bf16",
        ])
        .env_remove("INSCLR_DEVICE")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every launch listed: ResNet-101's 104 forward convolutions among them (the 1x1 stride-1
    // ones at 112, 56 and 28 px as GEMMs on the pipelined mainloop, the others but the stem as
    // channels-last implicit GEMMs on it).
    let fwd = text
        .lines()
        .filter(|l| {
            let kernel = l.split_whitespace().nth(1).unwrap_or("");
            kernel == "conv2d_fwd_bf16"
                || kernel.starts_with("conv2d_1x1_fwd_")
                || kernel.starts_with("conv2d_nhwc_fwd_")
        })
        .count();
    assert_eq!(fwd, 104, "{text}");
    // bn3's reduce pass taken by the next block's conv1 data gradient where that is a 1x1 GEMM
    // (stages 1-3 and stage 4's first block: 30 of 33; the last block's dy comes from pooling),
    // bn2's by its block's conv3 where that is one (stages 1-3: 30 of 33; stage 1's, 64
    // channels, on 64-row tiles), bn1's by its block's conv2 where that is a stride-1
    // channels-last product whose dx rows are 16-byte runs (28 of 33: not the three stride-2
    // first blocks of stages 2-4, not stage 4's other two at 14 x 14).
    let launches = |name: &str| {
        text.lines()
            .filter(|l| l.split_whitespace().nth(1) == Some(name))
            .count()
    };
    for (kernel, count) in [
        ("conv2d_1x1_bwd_data_bn_sums_bf16", 30 + 27),
        ("conv2d_1x1_bwd_data_bn_sums_m64_bf16", 3),
        ("conv2d_nhwc_bwd_data_bn_sums_bf16", 25),
        ("conv2d_nhwc_bwd_data_bn_sums_m64_bf16", 3),
        ("batchnorm_merge_sums_f32", 88),
        ("batchnorm_bwd_reduce_bf16", 104 - 88),
    ] {
        assert_eq!(launches(kernel), count, "{kernel}: {text}");
    }
    for want in [
        "floor of the step",
        "H100 SXM",
        "H200",
        "759.9 ms per step",
        "by kernel",
        // 33.05 before the max pool kept its argmax bytes (64 x 64 x 112 x 112: 51 MB); 33.10
        // before the bytes became the bf16 input directly (no f32 tensor: 154 MB); 32.96 before
        // pixel tiles ran across images (fewer runs of BatchNorm's partial sums).
        "device memory: 32.94 GiB held at most",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
    // The max pool's backward reads its argmax bytes and dy, not the pooled map x: dx written,
    // dy and a byte per output read (64 x 64 x 224 x 224 in, 112 x 112 out, bf16), on the stem
    // pool's own kernel.
    let pool_bwd = text
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("maxpool_3x3s2_bwd_bf16"))
        .unwrap_or_else(|| panic!("no maxpool_3x3s2_bwd_bf16 in:\n{text}"));
    let (input, output) = (64 * 64 * 224 * 224, 64 * 64 * 112 * 112);
    let mb = format!("{:.2}", ((input + output) * 2 + output) as f64 / 1e6);
    assert!(pool_bwd.contains(&mb), "want {mb} MB in: {pool_bwd}");
}

/// `plan --extract` plans the extraction call: no backward, no optimiser, and its own words; in
/// either precision every BatchNorm runs in its convolution's epilogue (no BatchNorm launch).
#[test]
fn the_cli_plans_an_extraction_call() {
    // f32 takes TF32 tensor cores unless told otherwise (`--tf32 false`: the SIMT kernels).
    for (precision, tf32, fused) in [
        ("bf16", "true", "conv2d_1x1_fwd_bn_eval_bf16"),
        ("f32", "true", "conv2d_1x1_fwd_bn_eval_tf32"),
        ("f32", "false", "conv2d_fwd_bn_eval_f32"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_insclr-cu"))
            .args([
                "plan",
                "--model",
                "resnet50",
                "--img-size",
                "320",
                "--batch",
                "4",
            ])
            .args([
                "--precision",
                precision,
                "--tf32",
                tf32,
                "--extract",
                "--summary",
            ])
            .env_remove("INSCLR_DEVICE")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        for want in ["one extraction call", "floor of the call", "device memory:"] {
            assert!(text.contains(want), "no {want:?} in:\n{text}");
        }
        assert!(!text.contains("last measured"), "{text}");
        let kernels: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("  ")?.split_whitespace().next())
            .collect();
        assert!(
            kernels.contains(&format!("gem_fwd_{precision}").as_str()),
            "{text}"
        );
        assert!(kernels.contains(&fused), "{text}");
        assert!(
            !kernels.iter().any(|k| k.starts_with("batchnorm")),
            "{text}"
        );
        let backward = kernels
            .iter()
            .find(|k| k.contains("_bwd") || k.starts_with("adam"));
        assert_eq!(backward, None, "{text}");
    }
}

/// The grids of one training BatchNorm's forward and backward launches, in order, for an
/// `n x c x hw` tensor of `dtype` with `ghost` statistics groups.
fn batchnorm_grids(dtype: DType, (n, c, hw, ghost): (usize, usize, usize, usize)) -> Vec<Event> {
    use insclr::backend::{Act, BatchNorm};
    let cuda = CudaBackend::plan();
    let be: &dyn Backend = &cuda;
    let len = n * c * hw;
    let act = |be: &dyn Backend| be.zeros(dtype, len).unwrap();
    let chan = |be: &dyn Backend, k: usize| be.zeros(DType::F32, k).unwrap();
    let (x, mut y, dy, mut dx) = (act(be), act(be), act(be), act(be));
    let (gamma, beta) = (chan(be, c), chan(be, c));
    let (mut rm, mut rv, mut dg, mut db) = (chan(be, c), chan(be, c), chan(be, c), chan(be, c));
    let (mut sm, mut si) = (chan(be, ghost * c), chan(be, ghost * c));
    let s = BatchNorm {
        ghost,
        ..BatchNorm::new(n, c, hw, 1e-5, Act::Relu)
    };
    let rec = cuda.recorder().unwrap();
    rec.set_recording(true);
    be.batchnorm_fwd_train(
        &x,
        &gamma,
        &beta,
        (&mut rm, &mut rv),
        (&mut sm, &mut si),
        None,
        &mut y,
        None,
        s,
    )
    .unwrap();
    be.batchnorm_bwd(
        &x,
        &y,
        &dy,
        (&gamma, &beta),
        (&sm, &si),
        None,
        &mut dx,
        None,
        (&mut dg, &mut db),
        s,
    )
    .unwrap();
    rec.take()
}

#[test]
fn batchnorm_splits_each_channel_into_runs_that_fill_whole_waves() {
    // ResNet-101's BatchNorms at 448 px, batch 64: 64 channels of 224 x 224 (the stem) up to
    // 2048 of 14 x 14. One block per channel left 0.16 to 0.65 of a wave.
    for (c, hw) in [
        (64, 50176),
        (64, 12544),
        (256, 12544),
        (512, 3136),
        (1024, 784),
        (2048, 196),
    ] {
        let events = batchnorm_grids(DType::BF16, (64, c, hw, 1));
        let names: Vec<&str> = events
            .iter()
            .map(|e| match e {
                Event::Launch { kernel, .. } => kernel.as_str(),
                _ => "not a launch",
            })
            .collect();
        assert_eq!(
            names,
            [
                "batchnorm_fwd_train_stats_bf16",
                "batchnorm_fwd_train_bf16",
                "batchnorm_bwd_reduce_bf16",
                "batchnorm_bwd_bf16"
            ]
        );
        for e in &events {
            let Event::Launch { kernel, cfg, work } = e else {
                unreachable!()
            };
            let per_sm =
                occupancy::blocks_per_sm(&SM90, occupancy::resources(kernel), cfg.block.0, 0);
            let slots = (per_sm.blocks * occupancy::MODEL_SMS) as f64;
            let waves = (cfg.grid.0 * cfg.grid.1) as f64 / slots;
            assert_eq!(
                cfg.grid.1 as usize, c,
                "{kernel}: one row of blocks per channel"
            );
            assert!(
                waves / waves.ceil() >= 0.95,
                "{kernel} on 64x{c}x{hw}: {} runs of {c} channels are {waves:.2} waves of {slots}",
                cfg.grid.0
            );
            assert!(
                work.as_ref().is_some_and(|w| w.bytes > 0.0),
                "{kernel}: no work"
            );
        }
    }
}

#[test]
fn batchnorm_runs_have_at_least_1024_vectors_and_small_tensors_keep_one() {
    let runs = |dtype, shape| match &batchnorm_grids(dtype, shape)[0] {
        Event::Launch { cfg, .. } => cfg.grid.0,
        e => panic!("{e:?}"),
    };
    // The sizes tests/layers.rs runs on the emulated GPU: several runs per pair there.
    assert_eq!(runs(DType::F32, (4, 2, 5000, 1)), 5);
    assert_eq!(runs(DType::BF16, (4, 2, 5000, 1)), 3);
    assert_eq!(runs(DType::F32, (6, 1, 4096, 2)), 3);
    assert_eq!(runs(DType::BF16, (6, 1, 4096, 2)), 2);
    // 1023 vectors: one run, whatever the idle GPU.
    assert_eq!(runs(DType::F32, (1, 1, 4092, 1)), 1);
}
