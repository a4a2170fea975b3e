//! Every kernel against its floor and its baseline. `cargo bench` runs the CPU twins always and
//! the CUDA kernels when a GPU is present (skipped with a message otherwise; the emulated GPU
//! says nothing about speed and is never benchmarked).
//!
//! Napkin math: a memory-bound kernel's floor is bytes moved / peak DRAM bandwidth; a GEMM's is
//! max(flops / peak, bytes / bandwidth), with the FP32 peak for f32 and the dense tensor-core
//! peak for bf16 (half of it for TF32: the f32 convolutions' `_tf32` rows, beside the SIMT `_f32`
//! ones, cuBLAS SGEMM and cuBLAS on TF32 tensor cores). Peaks come from the device's attributes.
//! One criterion group per kernel family;
//! our GEMMs run beside cuBLAS SGEMM and the top-k beside a full sort of each row on the same
//! shape, and the table gives the ratio. With `INSCLR_BENCH_TABLE=path` the GPU results
//! are also written there as a markdown table (scripts/device-check.sh collects it into
//! bench_results/).
//!
//! The GPU machine is lent for minutes, so its runner (scripts/device-run.sh) narrows and
//! speeds this up: `INSCLR_BENCH_FAMILIES=conv,gemm` sets up and runs only those families,
//! `INSCLR_BENCH_CONV_NETS=resnet101,resnet50` only those networks' convolutions;
//! `INSCLR_BENCH_FAST=1` times each kernel without criterion and `INSCLR_BENCH_LAUNCHES=N` only
//! calls each selected kernel N times, for Nsight Compute (`util`); the filter, a regular
//! expression over `family/backend/kernel/shape` as criterion's, selects in those modes too.

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion};
use insclr::backend::cuda::DeviceInfo;
use insclr::backend::{
    Act, ActMask, Backend, BatchNorm, BatchSelect, BnBwdSums, Buf, Contrastive, Conv, CopyRows,
    CudaBackend, DType, Gem, ImageToTensor, Knn, L2Norm, MatMul, MaxPool, MiningScore, OptimStep,
    Padding, TopK,
};
use insclr::rng::Rng;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use util::{listed, median, mode, time_fast, Mode};

mod util;

/// One measured kernel for the results table.
struct Row {
    op: String,
    shape: String,
    seconds: f64,
    bytes: f64,
    flops: f64,
    /// Which peak bounds the flops: f32 SIMT, or tensor cores (bf16, or TF32 for `_tf32` rows).
    tensor: bool,
    /// For a convolution: its network and how many times a training step runs this shape
    /// (0 for the stem's data gradient, which training skips).
    step: Option<(String, f64)>,
}

static ROWS: Mutex<Vec<Row>> = Mutex::new(Vec::new());

/// The GPU's facts for the table's header and floors, set when the GPU benchmarks start.
static GPU: OnceLock<DeviceInfo> = OnceLock::new();

/// GeM over a batch of 64 ResNet maps at 1024 px input (32x32 at stride 32), L2 over 64k
/// descriptors, and the similarity of 64 queries with a 100k-row memory bank.
const GEM: (usize, usize, usize, usize) = (64, 2048, 32, 32);
const L2: (usize, usize) = (65_536, 2048);
const SIM: (usize, usize, usize) = (64, 100_000, 2048);

/// Elements past which a GPU operand repeats one block of random values instead of drawing
/// every value: ResNet-101's 448 px operands (an im2col of 462M elements) would take the host
/// seconds each. What times depend on is the values' distribution (uniform either way, neither
/// zero nor denormal), not their being drawn afresh.
const FRESH: usize = 1 << 22;

fn filled(be: &dyn Backend, rng: &mut Rng, len: usize, dtype: DType) -> Buf {
    let fresh = len <= FRESH || be.device() == insclr::backend::Device::Cpu;
    let values = rng.vec_f32(if fresh { len } else { FRESH }, -1.0, 1.0);
    match dtype {
        DType::BF16 => {
            let h: Vec<half::bf16> = values.iter().map(|&x| half::bf16::from_f32(x)).collect();
            repeated(be, &h, len)
        }
        _ => repeated(be, &values, len),
    }
}

/// A device buffer of `len` elements holding `block` over and over.
fn repeated<T: insclr::backend::Elem>(be: &dyn Backend, block: &[T], len: usize) -> Buf {
    if block.len() >= len {
        return be.upload(&block[..len]).expect("upload");
    }
    let arena = be.arena(T::DTYPE, len).expect("alloc");
    for start in (0..len).step_by(block.len()) {
        let n = block.len().min(len - start);
        let mut view = be.view(&arena, start, n).expect("view");
        be.upload_into(&block[..n], &mut view).expect("upload");
    }
    arena
}

/// True when the family `name` is to be set up and run (`INSCLR_BENCH_FAMILIES`).
fn wanted(name: &str) -> bool {
    listed("INSCLR_BENCH_FAMILIES", name)
}

/// A criterion group and its name (`<family>/<backend>`, the first part of every id in it).
struct Family<'a> {
    group: BenchmarkGroup<'a, WallTime>,
    name: String,
    /// Set by a convolution for the rows it measures next (see [`Row::step`]).
    step: Option<(String, f64)>,
}

impl Family<'_> {
    fn finish(self) {
        self.group.finish();
    }
}

/// Times `f` (per call, between two synchronisations) in `group` as `name`, and records a row
/// when `record` is set.
#[allow(clippy::too_many_arguments)]
fn measure(
    group: &mut Family<'_>,
    be: &dyn Backend,
    record: bool,
    name: &str,
    shape: String,
    bytes: f64,
    flops: f64,
    mut f: impl FnMut(),
) {
    let id = format!("{}/{name}/{shape}", group.name);
    let mut samples = Vec::new();
    match mode() {
        Mode::Launches(n) => {
            if util::selected(&id) {
                eprintln!("LAUNCH {n} x {id}");
                for _ in 0..n {
                    f();
                }
                be.synchronize().expect("sync");
            }
            return;
        }
        Mode::Fast => {
            if util::selected(&id) {
                samples = time_fast(&|| be.synchronize().expect("sync"), &mut f);
                eprintln!("{id}: {:.1} us", 1e6 * median(&samples));
            }
        }
        Mode::Criterion => criterion_samples(group, be, name, &shape, &mut f, &mut samples),
    }
    if record && !samples.is_empty() {
        ROWS.lock().unwrap().push(Row {
            op: name.into(),
            shape,
            seconds: median(&samples),
            bytes,
            flops,
            tensor: name.contains("bf16") || name.ends_with("_tf32"),
            step: group.step.clone(),
        });
        // Rewritten after every row: a run stopped at its time limit keeps what it measured.
        write_table(false);
    }
}

/// Times `f` under criterion as `name` / `shape`, pushing each sample's per-call time.
fn criterion_samples(
    group: &mut Family<'_>,
    be: &dyn Backend,
    name: &str,
    shape: &str,
    f: &mut dyn FnMut(),
    samples: &mut Vec<f64>,
) {
    let mut warm = false;
    group
        .group
        .bench_function(BenchmarkId::new(name, shape), |b| {
            b.iter_custom(|iters| {
                // One untimed call first: module loading, cuBLAS heuristics and first-touch
                // allocations stay out of the samples (`--quick` has no warm-up of its own).
                if !std::mem::replace(&mut warm, true) {
                    f();
                }
                be.synchronize().expect("sync");
                let t = Instant::now();
                for _ in 0..iters {
                    f();
                }
                be.synchronize().expect("sync");
                let d = t.elapsed();
                samples.push(d.as_secs_f64() / iters as f64);
                d
            })
        });
}

/// The criterion group of one kernel family on `be`, named `<family>/<backend>`, timing each
/// shape for `measure` after `warm_up` (the layer families have many shapes: shorter times).
fn family<'a>(
    c: &'a mut Criterion,
    be: &dyn Backend,
    name: &str,
    (warm_up, measure): (Duration, Duration),
) -> Family<'a> {
    let name = format!("{name}/{}", be.name());
    let mut group = c.benchmark_group(&name);
    group
        .sample_size(10)
        .warm_up_time(warm_up)
        .measurement_time(measure);
    Family {
        group,
        name,
        step: None,
    }
}

/// Times of the method's families and of the layer families.
const KERNEL_TIMES: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(3));
const LAYER_TIMES: (Duration, Duration) = (Duration::from_millis(100), Duration::from_millis(300));

/// Benchmarks every family on one backend; `gpu` adds the cuBLAS baseline and records rows.
fn bench_backend(c: &mut Criterion, be: &dyn Backend, gpu: Option<&CudaBackend>) {
    let record = gpu.is_some();
    let mut rng = Rng::new(1);
    // The similarity block of 64 queries against a 100k-row bank: the GEMM, the top-k and the
    // losses work on its shape.
    let (m, nn, k) = SIM;
    let label = format!("{m}x{k} . ({nn}x{k})^T");
    let flops = 2.0 * (m * nn * k) as f64;
    if wanted("pool") {
        let mut group = family(c, be, "pool", KERNEL_TIMES);

        // pool: GeM forward / backward, f32 and bf16 (a bf16 network's last map), on 32 x 32
        // maps (32 lanes a row) and ResNet-101's at 448 px (14 x 14: 16 lanes a row).
        for (dt, (n, ch, h, w)) in [
            (DType::F32, GEM),
            (DType::BF16, GEM),
            (DType::F32, (64, 2048, 14, 14)),
            (DType::BF16, (64, 2048, 14, 14)),
        ] {
            let s = Gem::new(n, ch, h, w);
            let shape = format!("{n}x{ch}x{h}x{w}");
            let x = filled(be, &mut rng, s.rows * s.hw, dt);
            let mut y = be.zeros(dt, s.rows).unwrap();
            let bytes = (dt.size() * s.rows * (s.hw + 1)) as f64;
            measure(
                &mut group,
                be,
                record,
                &format!("gem_fwd_{dt}"),
                shape.clone(),
                bytes,
                0.0,
                || be.gem_fwd(&x, &mut y, s).unwrap(),
            );
            let dy = filled(be, &mut rng, s.rows, dt);
            let mut dx = be.zeros(dt, s.rows * s.hw).unwrap();
            measure(
                &mut group,
                be,
                record,
                &format!("gem_bwd_{dt}"),
                shape.clone(),
                2.0 * bytes,
                0.0,
                || be.gem_bwd(&x, &y, &dy, &mut dx, s).unwrap(),
            );
        }

        group.finish();
    }
    if wanted("norm") {
        let mut group = family(c, be, "norm", KERNEL_TIMES);

        // norm: L2 forward / backward (y doubles as dy).
        let (rows, cols) = L2;
        let s = L2Norm::new(rows, cols);
        let shape = format!("{rows}x{cols}");
        let x = filled(be, &mut rng, rows * cols, DType::F32);
        let mut y = be.zeros(DType::F32, rows * cols).unwrap();
        let bytes = 4.0 * (rows * cols) as f64;
        measure(
            &mut group,
            be,
            record,
            "l2norm_fwd_f32",
            shape.clone(),
            2.0 * bytes,
            0.0,
            || be.l2norm_fwd(&x, &mut y, s).unwrap(),
        );
        let mut dx = be.zeros(DType::F32, rows * cols).unwrap();
        measure(
            &mut group,
            be,
            record,
            "l2norm_bwd_f32",
            shape,
            3.0 * bytes,
            0.0,
            || be.l2norm_bwd(&x, &y, &mut dx, s).unwrap(),
        );
        drop((x, y, dx));

        group.finish();
    }
    if wanted("gemm") {
        let mut group = family(c, be, "gemm", KERNEL_TIMES);

        // gemm: queries . bank^T, ours in f32 and bf16, cuBLAS beside each on a GPU (SGEMM,
        // and cublasGemmEx in bf16 on the tensor cores).
        let shape = MatMul::new(m, nn, k).tb();
        for dt in [DType::F32, DType::BF16] {
            // The CPU's bf16 twin widens the 100k-row bank on every call: not worth timing.
            if !be.supports(insclr::backend::Op::Matmul, dt) || (dt == DType::BF16 && gpu.is_none())
            {
                continue;
            }
            let q = filled(be, &mut rng, m * k, dt);
            let bank = filled(be, &mut rng, nn * k, dt);
            let mut sim = be.zeros(dt, m * nn).unwrap();
            let bytes = (dt.size() * (m * k + nn * k + m * nn)) as f64;
            let name = format!("matmul_{dt}");
            measure(
                &mut group,
                be,
                record,
                &name,
                label.clone(),
                bytes,
                flops,
                || be.matmul(&q, &bank, &mut sim, shape).unwrap(),
            );
            if let Some(cuda) = gpu {
                let name = match dt {
                    DType::F32 => "sgemm_cublas",
                    _ => "gemm_cublas_bf16",
                };
                measure(
                    &mut group,
                    be,
                    record,
                    name,
                    label.clone(),
                    bytes,
                    flops,
                    || cuda.matmul_cublas(&q, &bank, &mut sim, shape).unwrap(),
                );
            }
        }
        // A ResNet head's product (64 descriptors through the 2048 x 2048 f32 layer): too few
        // 64 x 64 tiles for a GPU's multiprocessors, so the launcher takes matmul_narrow_f32.
        let (hm, hn, hk) = (64, 2048, 2048);
        let head = MatMul::new(hm, hn, hk).tb();
        let x = filled(be, &mut rng, hm * hk, DType::F32);
        let w = filled(be, &mut rng, hn * hk, DType::F32);
        let mut y = be.zeros(DType::F32, hm * hn).unwrap();
        let head_label = format!("{hm}x{hk} . ({hn}x{hk})^T head");
        let head_bytes = (4 * (hm * hk + hn * hk + hm * hn)) as f64;
        let head_flops = 2.0 * (hm * hn * hk) as f64;
        measure(
            &mut group,
            be,
            record,
            "matmul_f32",
            head_label.clone(),
            head_bytes,
            head_flops,
            || be.matmul(&x, &w, &mut y, head).unwrap(),
        );
        if let Some(cuda) = gpu {
            measure(
                &mut group,
                be,
                record,
                "sgemm_cublas",
                head_label,
                head_bytes,
                head_flops,
                || cuda.matmul_cublas(&x, &w, &mut y, head).unwrap(),
            );
        }

        group.finish();
    }
    if wanted("select") {
        let mut group = family(c, be, "select", KERNEL_TIMES);

        // select: top-500 of each row of the 64 x 100k similarity block, and the streamed search
        // (GEMM + running top-500) on the same shape: its cost over matmul_f32 is the top-k's.
        let k500 = 500;
        let scores = filled(be, &mut rng, m * nn, DType::F32);
        let (mut val, mut idx) = (
            be.zeros(DType::F32, m * k500).unwrap(),
            be.zeros(DType::U32, m * k500).unwrap(),
        );
        let s = TopK {
            rows: m,
            n: nn,
            k: k500,
        };
        let bytes = 4.0 * (m * nn + 2 * m * k500) as f64;
        measure(
            &mut group,
            be,
            record,
            "topk_f32",
            format!("{m}x{nn}, k {k500}"),
            bytes,
            0.0,
            || be.topk(&scores, &mut val, &mut idx, s).unwrap(),
        );
        drop(scores);
        // Against the baseline, a full sort of each row, on rows short enough for it.
        let short = 4096;
        let scores = filled(be, &mut rng, m * short, DType::F32);
        let s = TopK {
            rows: m,
            n: short,
            k: k500,
        };
        let bytes = 4.0 * (m * short + 2 * m * k500) as f64;
        let label_short = format!("{m}x{short}, k {k500}");
        measure(
            &mut group,
            be,
            record,
            "topk_f32",
            label_short.clone(),
            bytes,
            0.0,
            || be.topk(&scores, &mut val, &mut idx, s).unwrap(),
        );
        if let Some(cuda) = gpu {
            measure(
                &mut group,
                be,
                record,
                "topk_sort_f32",
                label_short,
                bytes,
                0.0,
                || cuda.topk_by_sort(&scores, &mut val, &mut idx, s).unwrap(),
            );
        }
        drop(scores);
        let q = filled(be, &mut rng, m * k, DType::F32);
        let bank = filled(be, &mut rng, nn * k, DType::F32);
        let s = Knn {
            nq: m,
            ndb: nn,
            dim: k,
            k: k500,
            tile: 16_384,
        };
        let bytes = 4.0 * (m * k + nn * k) as f64;
        measure(
            &mut group,
            be,
            record,
            "knn_f32",
            format!("{label}, k {k500}"),
            bytes,
            flops,
            || be.knn(&q, &bank, None, &mut val, &mut idx, s).unwrap(),
        );

        group.finish();
    }
    if wanted("contrastive") {
        let mut group = family(c, be, "contrastive", KERNEL_TIMES);

        // contrastive: the memory loss of 64 rows against a 100k-row bank, with dL/dS.
        let sim = filled(be, &mut rng, m * nn, DType::F32);
        let y1: Vec<i64> = (0..m as i64).map(|i| i % 16 + 1).collect();
        let y2: Vec<i64> = (0..nn as i64).map(|j| j % 17).collect();
        let (yb1, yb2) = (be.upload(&y1).unwrap(), be.upload(&y2).unwrap());
        let mut grad = be.zeros(DType::F32, m * nn).unwrap();
        let mut stats = be.zeros(DType::F32, 3 * m).unwrap();
        let cs = Contrastive {
            n1: m,
            n2: nn,
            margin: 0.4,
            pos_th: 1.0 - 1e-6,
            memory: true,
            inv_rows: 1.0 / m as f32,
        };
        let bytes = (4 * 2 * m * nn + 8 * (m + nn) + 12 * m) as f64;
        measure(
            &mut group,
            be,
            record,
            "contrastive_f32",
            format!("{m}x{nn}, dL/dS"),
            bytes,
            0.0,
            || {
                be.contrastive(&sim, &yb1, &yb2, Some(&mut grad), &mut stats, cs)
                    .unwrap()
            },
        );

        group.finish();
    }
    if wanted("bank") {
        let mut group = family(c, be, "bank", KERNEL_TIMES);

        // bank: a step's memory read, 100k scattered rows of 2048 gathered into a block.
        let bank = filled(be, &mut rng, nn * k, DType::F32);
        let mut block = be.zeros(DType::F32, nn * k).unwrap();
        let mut order: Vec<usize> = (0..nn).collect();
        for i in (1..nn).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let dst: Vec<usize> = (0..nn).collect();
        let bytes = (2 * 4 * nn * k + 16 * nn) as f64;
        measure(
            &mut group,
            be,
            record,
            "copy_rows_f32",
            format!("{nn} rows of {k}"),
            bytes,
            0.0,
            || {
                be.copy_rows(&bank, &mut block, &order, &dst, CopyRows { dim: k })
                    .unwrap()
            },
        );
        drop((bank, block));

        group.finish();
    }
    if wanted("mining") {
        let mut group = family(c, be, "mining", KERNEL_TIMES);

        // mining: a step's decisions (128 anchors x 5 neighbours of 2048; 2000 candidates against
        // a query set of 64); latency-bound, timed to keep them in view.
        let (anchors, kn, nc, nqs) = (128, 5, 2000, 64);
        let g = filled(be, &mut rng, anchors * (kn + 1) * k, DType::F32);
        let ap: Vec<usize> = (0..anchors).collect();
        let np: Vec<usize> = (anchors..anchors * (kn + 1)).collect();
        let mut keep = be.zeros(DType::I32, anchors * kn).unwrap();
        let sel = BatchSelect {
            anchors,
            k: kn,
            dim: k,
            dynamic: false,
            thresh: 0.6,
        };
        let bytes = (4 * anchors * (kn + 1) * k) as f64;
        measure(
            &mut group,
            be,
            record,
            "batch_select_f32",
            format!("{anchors}x{kn} of {k}"),
            bytes,
            0.0,
            || be.batch_select(&g, &ap, &np, &mut keep, sel).unwrap(),
        );
        let sim = filled(be, &mut rng, nc * nqs, DType::F32);
        let chosen = vec![false; nc];
        let (mut score, mut num) = (
            be.zeros(DType::F32, nc).unwrap(),
            be.zeros(DType::I32, nc).unwrap(),
        );
        let ms = MiningScore {
            nc,
            nq: nqs,
            use_max: false,
            th: 0.6,
        };
        measure(
            &mut group,
            be,
            record,
            "mining_score_f32",
            format!("{nc}x{nqs}"),
            (4 * nc * nqs) as f64,
            0.0,
            || {
                be.mining_score(&sim, &chosen, &mut score, &mut num, ms)
                    .unwrap()
            },
        );
        group.finish();
    }
}

/// A convolution of the backbones, from benches/conv_shapes.txt (which
/// scripts/torch-baseline.py reads too): depthwise or dense, the network, input channels, map
/// size, output channels, kernel, stride, and how many layers of the network have this shape.
struct ConvShape {
    depthwise: bool,
    net: String,
    cin: usize,
    hw: usize,
    cout: usize,
    k: usize,
    stride: usize,
    /// Layers of the network with this shape, when conv_shapes.txt says (ResNets).
    count: Option<usize>,
}

fn conv_shapes() -> Vec<ConvShape> {
    include_str!("conv_shapes.txt")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let num = |i: usize| -> usize { f[i].parse().expect("conv_shapes.txt: a number") };
            let depthwise = f[0] == "dw";
            let (cout, k, stride, rest) = if depthwise {
                (num(2), num(4), num(5), 6)
            } else {
                (num(4), num(5), num(6), 7)
            };
            let count = f.get(rest).map(|c| {
                c.trim_start_matches('x')
                    .parse()
                    .expect("conv_shapes.txt: a count xN")
            });
            ConvShape {
                depthwise,
                net: f[1].to_string(),
                cin: num(2),
                hw: num(3),
                cout,
                k,
                stride,
                count,
            }
        })
        .collect()
}

/// The three passes of a convolution, as its kernels' names spell them.
const PASSES: [&str; 3] = ["fwd", "bwd_data", "bwd_weight"];

/// The three GEMMs of an im2col convolution of GEMM shape (m, n, k) = (C_out, N*P*Q,
/// C_in*R*S), per pass: Y = W . col, dcol = W^T . dY, dW = dY . col^T, with the output's type
/// (a bf16 weight gradient is f32, as ours).
fn im2col_gemms<'a>(
    (m, n, k): (usize, usize, usize),
    (w, dy, col): (&'a Buf, &'a Buf, &'a Buf),
    dtype: DType,
) -> [(&'a Buf, &'a Buf, MatMul, DType); 3] {
    [
        (w, col, MatMul::new(m, n, k), dtype),
        (w, dy, MatMul::new(k, n, m).ta(), dtype),
        (dy, col, MatMul::new(m, k, n).tb(), DType::F32),
    ]
}

/// Batch of the layer benchmarks on a GPU (the training batch).
const LAYER_BATCH: usize = 64;

/// The backbone's layers: every conv shape of ResNet-101 at 448 px, ResNet-50 and
/// EfficientNet-Lite0 at 224 px, forward / dgrad / wgrad, in f32 (exact, and on TF32 tensor
/// cores) beside cuBLAS SGEMM and cuBLAS's TF32 GEMM (cublasGemmEx, `gemm_cublas_<pass>_tf32`),
/// and in bf16 on tensor cores beside cuBLAS's bf16 GEMM (cublasGemmEx), each on the GEMM of the same
/// (M, N, K) = (C_out, N*P*Q, C_in*R*S) (im2col's own time not counted, so the baseline is
/// flattered: a tensor-core speed of light more than a peer); the depthwise convolutions;
/// BatchNorm, max pool, the elementwise ops and the optimiser at ResNet-50's sizes. On the CPU,
/// only the first ResNet-50 shapes at batch 1 (the twins are references, not contenders).
fn bench_layers(c: &mut Criterion, be: &dyn Backend, gpu: Option<&CudaBackend>) {
    let record = gpu.is_some();
    let mut rng = Rng::new(2);
    let (batch, take) = if record {
        (LAYER_BATCH, usize::MAX)
    } else {
        (1, 3)
    };
    if wanted("conv") {
        let mut group = family(c, be, "conv", LAYER_TIMES);
        let shapes = conv_shapes();
        // ResNet-101's 448 px shapes are GPU-sized, even at batch 1.
        let here = |cs: &ConvShape| {
            if record {
                listed("INSCLR_BENCH_CONV_NETS", &cs.net)
            } else {
                cs.net != "resnet101"
            }
        };
        let fam = group.name.clone();
        for cs in shapes
            .iter()
            .filter(|cs| !cs.depthwise && here(cs))
            .take(take)
        {
            let (cin, hw, cout, k, stride, net) =
                (cs.cin, cs.hw, cs.cout, cs.k, cs.stride, &cs.net);
            let pad = if net == "lite0" {
                Padding::Same
            } else {
                Padding::Sym(k / 2)
            };
            let s = Conv::new(batch, cin, hw, hw, cout, k, stride, pad, 1).unwrap();
            let (ex, ew, ey) = s.sizes();
            let (m, n, kk) = (cout, batch * s.oh * s.ow, cin * k * k);
            let flops = 2.0 * (m * n * kk) as f64;
            let bytes = 4.0 * (ex + ew + ey) as f64;
            let label = format!("{net} {batch}x{cin}x{hw}x{hw} -> {cout} k{k} s{stride}");
            // Each shape's operands are made only when one of its benchmarks is selected: the
            // ResNet-101 ones take gigabytes.
            let any = |names: &[String]| {
                names
                    .iter()
                    .any(|op| util::selected(&format!("{fam}/{op}/{label}")))
            };
            let names = |pattern: &str| PASSES.map(|p| pattern.replace("{}", p));
            // A step runs each pass of this shape `count` times, but never the stem's data
            // gradient (its input needs none).
            let step = |pass: &str| {
                cs.count.map(|c| {
                    let skipped = pass == "bwd_data" && cin == 3;
                    (net.clone(), if skipped { 0.0 } else { c as f64 })
                })
            };
            // bf16 on tensor cores (activations and weights bf16, the weight gradient f32)
            // first: the layout the design moves to, and the comparison a short run keeps.
            let (ours_bf16, cublas_bf16) = (names("conv2d_{}_bf16"), names("gemm_cublas_bf16_{}"));
            if record && any(&[ours_bf16.clone(), cublas_bf16.clone()].concat()) {
                let (xb, wb, dyb) = (
                    filled(be, &mut rng, ex, DType::BF16),
                    filled(be, &mut rng, ew, DType::BF16),
                    filled(be, &mut rng, ey, DType::BF16),
                );
                let (mut yb, mut dxb, mut dw) = (
                    be.zeros(DType::BF16, ey).unwrap(),
                    be.zeros(DType::BF16, ex).unwrap(),
                    be.zeros(DType::F32, ew).unwrap(),
                );
                for (pass, name) in PASSES.iter().zip(&ours_bf16) {
                    group.step = step(pass);
                    measure(
                        &mut group,
                        be,
                        record,
                        name,
                        label.clone(),
                        bytes / 2.0,
                        flops,
                        || {
                            match *pass {
                                "fwd" => be.conv2d_fwd(&xb, &wb, &mut yb, s),
                                "bwd_data" => be.conv2d_bwd_data(&dyb, &wb, &mut dxb, s),
                                _ => be.conv2d_bwd_weight(&xb, &dyb, &mut dw, s),
                            }
                            .unwrap()
                        },
                    );
                }
                if let Some(cuda) = gpu.filter(|_| any(&cublas_bf16)) {
                    let colb = filled(be, &mut rng, kk * n, DType::BF16);
                    let gemms = im2col_gemms((m, n, kk), (&wb, &dyb, &colb), DType::BF16);
                    for ((pass, name), (a, b, mm, out)) in
                        PASSES.iter().zip(&cublas_bf16).zip(gemms)
                    {
                        let mut c_out = be.zeros(out, mm.m * mm.n).unwrap();
                        group.step = step(pass);
                        measure(
                            &mut group,
                            be,
                            record,
                            name,
                            label.clone(),
                            bytes / 2.0,
                            flops,
                            || cuda.matmul_cublas(a, b, &mut c_out, mm).unwrap(),
                        );
                    }
                }
            }
            let (ours_f32, ours_tf32, sgemm, cublas_tf32) = (
                names("conv2d_{}_f32"),
                names("conv2d_{}_tf32"),
                names("sgemm_cublas_{}"),
                names("gemm_cublas_{}_tf32"),
            );
            if any(&[
                ours_f32.clone(),
                ours_tf32.clone(),
                sgemm.clone(),
                cublas_tf32.clone(),
            ]
            .concat())
            {
                let x = filled(be, &mut rng, ex, DType::F32);
                let w = filled(be, &mut rng, ew, DType::F32);
                let dy = filled(be, &mut rng, ey, DType::F32);
                let (mut y, mut dx, mut dw) = (
                    be.zeros(DType::F32, ey).unwrap(),
                    be.zeros(DType::F32, ex).unwrap(),
                    be.zeros(DType::F32, ew).unwrap(),
                );
                // Ours in exact FP32 (SIMT), then on TF32 tensor cores (what train and extract
                // run in f32 by default), under the pass's name with _f32 or _tf32.
                for (tf32, ours) in [(false, &ours_f32), (true, &ours_tf32)] {
                    be.set_tf32(tf32);
                    for (pass, name) in PASSES.iter().zip(ours) {
                        group.step = step(pass);
                        measure(
                            &mut group,
                            be,
                            record,
                            name,
                            label.clone(),
                            bytes,
                            flops,
                            || {
                                match *pass {
                                    "fwd" => be.conv2d_fwd(&x, &w, &mut y, s),
                                    "bwd_data" => be.conv2d_bwd_data(&dy, &w, &mut dx, s),
                                    _ => be.conv2d_bwd_weight(&x, &dy, &mut dw, s),
                                }
                                .unwrap()
                            },
                        );
                    }
                }
                be.set_tf32(false);
                // cuBLAS on the same GEMMs: SGEMM (FP32), then cublasGemmEx on TF32 tensor cores.
                if let Some(cuda) = gpu.filter(|_| any(&sgemm) || any(&cublas_tf32)) {
                    let col = filled(be, &mut rng, kk * n, DType::F32);
                    let gemms = im2col_gemms((m, n, kk), (&w, &dy, &col), DType::F32);
                    for (tf32, names) in [(false, &sgemm), (true, &cublas_tf32)] {
                        for ((pass, name), (a, b, mm, out)) in PASSES.iter().zip(names).zip(&gemms)
                        {
                            let mut c_out = be.zeros(*out, mm.m * mm.n).unwrap();
                            group.step = step(pass);
                            measure(
                                &mut group,
                                be,
                                record,
                                name,
                                label.clone(),
                                bytes,
                                flops,
                                || {
                                    if tf32 {
                                        cuda.matmul_cublas_tf32(a, b, &mut c_out, *mm)
                                    } else {
                                        cuda.matmul_cublas(a, b, &mut c_out, *mm)
                                    }
                                    .unwrap()
                                },
                            );
                        }
                    }
                }
            }
            group.step = None;
        }
        for cs in shapes
            .iter()
            .filter(|cs| cs.depthwise && here(cs))
            .take(take)
        {
            let (ch, hw, k, stride) = (cs.cin, cs.hw, cs.k, cs.stride);
            let s = Conv::new(batch, ch, hw, hw, ch, k, stride, Padding::Same, ch).unwrap();
            let (ex, ew, ey) = s.sizes();
            let x = filled(be, &mut rng, ex, DType::F32);
            let w = filled(be, &mut rng, ew, DType::F32);
            let dy = filled(be, &mut rng, ey, DType::F32);
            let (mut y, mut dx, mut dw) = (
                be.zeros(DType::F32, ey).unwrap(),
                be.zeros(DType::F32, ex).unwrap(),
                be.zeros(DType::F32, ew).unwrap(),
            );
            let flops = 2.0 * (ey * k * k) as f64;
            let bytes = 4.0 * (ex + ey) as f64;
            let label = format!("{} dw {batch}x{ch}x{hw}x{hw} k{k} s{stride}", cs.net);
            measure(
                &mut group,
                be,
                record,
                "depthwise_fwd_f32",
                label.clone(),
                bytes,
                flops,
                || be.conv2d_fwd(&x, &w, &mut y, s).unwrap(),
            );
            measure(
                &mut group,
                be,
                record,
                "depthwise_bwd_data_f32",
                label.clone(),
                bytes,
                flops,
                || be.conv2d_bwd_data(&dy, &w, &mut dx, s).unwrap(),
            );
            measure(
                &mut group,
                be,
                record,
                "depthwise_bwd_weight_f32",
                label,
                bytes,
                flops,
                || be.conv2d_bwd_weight(&x, &dy, &mut dw, s).unwrap(),
            );
        }
        group.finish();
    }

    // norm, pool, eltwise at layer1's activation (batch x 256 x 56 x 56) and the stem's pool.
    if wanted("layers") {
        let mut group = family(c, be, "layers", LAYER_TIMES);
        let (ch, hw) = (256, 56 * 56);
        let len = batch * ch * hw;
        let label = format!("{batch}x{ch}x56x56");
        batchnorm_benches(&mut group, be, record, &mut rng, (batch, ch, hw), &label);
        let x = filled(be, &mut rng, len, DType::F32);
        let dy = filled(be, &mut rng, len, DType::F32);
        let (mut y, mut dx) = (
            be.zeros(DType::F32, len).unwrap(),
            be.zeros(DType::F32, len).unwrap(),
        );
        let t = 4.0 * len as f64;
        measure(
            &mut group,
            be,
            record,
            "add_fwd_f32",
            label.clone(),
            3.0 * t,
            0.0,
            || be.add_fwd(&x, &dy, &mut y).unwrap(),
        );
        measure(
            &mut group,
            be,
            record,
            "act_fwd_f32",
            label.clone(),
            2.0 * t,
            0.0,
            || be.act_fwd(&x, &mut y, Act::Relu).unwrap(),
        );
        measure(
            &mut group,
            be,
            record,
            "act_bwd_f32",
            label.clone(),
            3.0 * t,
            0.0,
            || be.act_bwd(&x, &dy, &mut dx, Act::Relu).unwrap(),
        );
        // A bf16 network's casts: 4 bytes read and 2 written per element, or the reverse.
        let mut half = be.zeros(DType::BF16, x.len()).unwrap();
        measure(
            &mut group,
            be,
            record,
            "cast_f32",
            label.clone(),
            1.5 * t,
            0.0,
            || be.cast(&x, &mut half).unwrap(),
        );
        measure(
            &mut group,
            be,
            record,
            "cast_bf16",
            label,
            1.5 * t,
            0.0,
            || be.cast(&half, &mut y).unwrap(),
        );
        drop((x, dy, y, dx, half));
        // The input: a batch of 224 px RGB bytes to the normalised tensor, f32 and (a bf16
        // network's input, no cast after it) bf16.
        let it = ImageToTensor {
            n: batch,
            h: 224,
            w: 224,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        };
        let px = batch * 3 * 224 * 224;
        let rgb = be.upload(&vec![77u8; px]).unwrap();
        for (dt, kernel) in [
            (DType::F32, "image_to_tensor_u8"),
            (DType::BF16, "image_to_tensor_u8_bf16"),
        ] {
            let mut t = be.zeros(dt, px).unwrap();
            measure(
                &mut group,
                be,
                record,
                kernel,
                format!("{batch}x224x224x3"),
                ((1 + dt.size()) * px) as f64,
                0.0,
                || be.image_to_tensor(&rgb, &mut t, it).unwrap(),
            );
        }
        drop(rgb);
        // ResNet-50's stem pool at 224 px on its own kernels (`maxpool_3x3s2_*`, a 2 x 8 cell a
        // thread), and beside them the general kernels on a map two columns narrower, which the
        // stem kernels do not take (a width not a multiple of 8): the table's floor / time
        // compares the two.
        for (dt, w, kernel) in [
            (DType::F32, 112, "maxpool_3x3s2"),
            (DType::BF16, 112, "maxpool_3x3s2"),
            (DType::BF16, 110, "maxpool"),
        ] {
            let mp = MaxPool::new(batch, 64, 112, w, 3, 2, 1).unwrap();
            let (lin, lout) = (batch * 64 * 112 * w, batch * 64 * mp.oh * mp.ow);
            let x = filled(be, &mut rng, lin, dt);
            let dy = filled(be, &mut rng, lout, dt);
            let (mut y, mut dx) = (be.zeros(dt, lout).unwrap(), be.zeros(dt, lin).unwrap());
            let mut argmax = be.zeros(DType::U8, lout).unwrap();
            let label = format!("{batch}x64x112x{w} k3 s2");
            // The training forward: x read, y and the argmax bytes written; the backward: the
            // argmax bytes and dy read, dx written.
            let bytes = (dt.size() * (lin + lout) + lout) as f64;
            measure(
                &mut group,
                be,
                record,
                &format!("{kernel}_fwd_{}", dt.name()),
                label.clone(),
                bytes,
                0.0,
                || be.maxpool_fwd(&x, &mut y, Some(&mut argmax), mp).unwrap(),
            );
            measure(
                &mut group,
                be,
                record,
                &format!("{kernel}_bwd_{}", dt.name()),
                label,
                bytes,
                0.0,
                || be.maxpool_bwd(&argmax, &dy, &mut dx, mp).unwrap(),
            );
        }
        group.finish();
    }

    // optim: one step over ResNet-50's 25.6M parameters (a tenth on the CPU).
    if wanted("optim") {
        let mut group = family(c, be, "optim", LAYER_TIMES);
        let n = if record { 25_557_032 } else { 2_555_703 };
        let label = format!("{n} params");
        let mut p = filled(be, &mut rng, n, DType::F32);
        let g = filled(be, &mut rng, n, DType::F32);
        let (mut m, mut v) = (
            be.zeros(DType::F32, n).unwrap(),
            be.zeros(DType::F32, n).unwrap(),
        );
        let step = OptimStep {
            len: n,
            split: n - 53_120,
            lr: [1e-3, 1e-3],
            wd: [1e-4, 0.0],
        };
        let t = 4.0 * n as f64;
        measure(
            &mut group,
            be,
            record,
            "adam_f32",
            label.clone(),
            7.0 * t,
            0.0,
            || be.adam(&mut p, &g, &mut m, &mut v, step, 3).unwrap(),
        );
        measure(
            &mut group,
            be,
            record,
            "sgd_f32",
            label.clone(),
            5.0 * t,
            0.0,
            || be.sgd(&mut p, &g, &mut m, step, 0.9).unwrap(),
        );
        measure(&mut group, be, record, "sumsq_f32", label, t, 0.0, || {
            be.sum_squares(&g).unwrap();
        });
        group.finish();
    }
}

/// BatchNorm's training passes (ReLU) over `batch x ch x hw`, in f32 and bf16: the forward (its
/// statistics pass, then the apply pass) and the backward (the reduce pass, then dx), as ResNet's
/// first two BatchNorms of a block run them; in bf16 also y and dx channels-last (for a
/// channels-last convolution beside them) and with a residual added (a block's last BatchNorm:
/// y and act'(y) as a bit a value, then dz from that mask). Bytes: each pass's reads and writes of
/// the activations.
fn batchnorm_benches(
    group: &mut Family<'_>,
    be: &dyn Backend,
    record: bool,
    rng: &mut Rng,
    (batch, ch, hw): (usize, usize, usize),
    label: &str,
) {
    let len = batch * ch * hw;
    let plain = BatchNorm::new(batch, ch, hw, 1e-5, Act::Relu);
    for dt in [DType::F32, DType::BF16] {
        let mut b = BnBench::new(be, rng, dt, len, ch);
        let t = (dt.size() * len) as f64;
        let mut run = |name: &str, bytes: f64, f: &mut dyn FnMut()| {
            measure(
                group,
                be,
                record,
                &format!("{name}_{dt}"),
                label.to_string(),
                bytes,
                0.0,
                f,
            )
        };
        run("batchnorm_fwd_train", 3.0 * t, &mut || {
            b.forward(be, plain, false)
        });
        run("batchnorm_fwd_eval", 2.0 * t, &mut || b.eval(be, plain));
        run("batchnorm_bwd", 5.0 * t, &mut || {
            b.backward(be, plain, false)
        });
        if dt != DType::BF16 {
            continue;
        }
        let y_nhwc = BatchNorm {
            y_nhwc: true,
            ..plain
        };
        let dx_nhwc = BatchNorm {
            dx_nhwc: true,
            ..plain
        };
        run("batchnorm_fwd_train_nhwc", 3.0 * t, &mut || {
            b.forward(be, y_nhwc, false)
        });
        run("batchnorm_bwd_nhwc", 5.0 * t, &mut || {
            b.backward(be, dx_nhwc, false)
        });
        // x and the residual read, y written, its mask (a bit a value); then x, the mask and dy
        // read, dz written, and x, dz read, dx written.
        let mask = t / 16.0;
        run("batchnorm_fwd_train_residual", 4.0 * t + mask, &mut || {
            b.forward(be, plain, true)
        });
        run("batchnorm_bwd_residual", 6.0 * t + mask, &mut || {
            b.backward(be, plain, true)
        });
        // The same BatchNorm after the next block's conv1 (ch -> ch / 4, layer1's 256 -> 64):
        // that 1x1's data gradient added onto the identity path's gradient and then the
        // backward above (two ops), or the data gradient taking the reduce pass in its epilogue
        // (dz written where dy was) and the second pass alone, where the backend fuses them.
        // Then without a residual (as a bottleneck's bn2 before its conv3; the same shapes): the
        // data gradient written, the plain backward (two ops), or the data gradient with the
        // sums of dz (act' of y recomputed from x) and the second pass.
        let s = Conv::new(batch, ch, hw, 1, ch / 4, 1, 1, Padding::Sym(0), 1).unwrap();
        let (_, lw, ly) = s.sizes();
        let (dyc, wc) = (filled(be, rng, ly, dt), filled(be, rng, lw, dt));
        let mut partial = Buf::empty(DType::F32);
        // dz goes to dres after a residual, else where dy was.
        let fused = |b: &mut BnBench, partial: &mut Buf, residual: bool| {
            let [gamma, beta, _, _, sm, si, dg, db] = &mut b.params;
            let sums = BnBwdSums {
                x: &b.x,
                params: (&*gamma, &*beta),
                saved: (sm, si),
                mask: residual.then_some(&b.mask),
            };
            let (res, dz) = if residual {
                (Some(&b.dy), &mut b.dres)
            } else {
                (None, &mut b.dy)
            };
            let runs = be
                .conv2d_bwd_data_bn_sums(&dyc, &wc, res, dz, sums, partial, s, plain)
                .unwrap()?;
            let (params, sums) = ((&*gamma, &*beta), (&*partial, runs));
            let dz = if residual { &b.dres } else { &b.dy };
            be.batchnorm_bwd_summed(&b.x, dz, params, (sm, si), sums, &mut b.dx, (dg, db), plain)
                .unwrap();
            Some(())
        };
        let flops = 2.0 * (ly * ch) as f64;
        let conv = (ly + lw) as f64 * dt.size() as f64;
        for residual in [true, false] {
            b.forward(be, plain, residual);
            if fused(&mut b, &mut partial, residual).is_none() {
                continue;
            }
            let kind = if residual { "" } else { "plain_" };
            let mut both = |name: &str, bytes: f64, f: &mut dyn FnMut()| {
                let name = format!("batchnorm_bwd_{kind}after_1x1_{name}_{dt}");
                measure(group, be, record, &name, label.to_string(), bytes, flops, f)
            };
            // With a residual: the data gradient reads and writes dy, the backward 6 passes and
            // the mask; the fused pair reads x and the residual's gradient and writes dz, then 3.
            // Without: the data gradient writes dy, the backward 5 passes; the fused pair reads x
            // and writes dz, then 3.
            let (two, one) = if residual {
                (8.0 * t + mask, 6.0 * t + mask)
            } else {
                (6.0 * t, 5.0 * t)
            };
            both("two_ops", conv + two, &mut || {
                if residual {
                    be.conv2d_bwd_data_add(&dyc, &wc, &mut b.dy, s).unwrap();
                } else {
                    be.conv2d_bwd_data(&dyc, &wc, &mut b.dy, s).unwrap();
                }
                b.backward(be, plain, residual)
            });
            both("fused", conv + one, &mut || {
                fused(&mut b, &mut partial, residual).unwrap()
            });
        }
    }
}

/// The buffers of [`batchnorm_benches`]' passes; the residual, where one is added, is dy's buffer.
struct BnBench {
    x: Buf,
    dy: Buf,
    y: Buf,
    dx: Buf,
    dres: Buf,
    mask: ActMask,
    params: [Buf; 8],
}

impl BnBench {
    fn new(be: &dyn Backend, rng: &mut Rng, dt: DType, len: usize, ch: usize) -> Self {
        let act = |be: &dyn Backend| be.zeros(dt, len).unwrap();
        let chan = |be: &dyn Backend| be.zeros(DType::F32, ch).unwrap();
        BnBench {
            x: filled(be, rng, len, dt),
            dy: filled(be, rng, len, dt),
            y: act(be),
            dx: act(be),
            dres: act(be),
            mask: ActMask::new(),
            // gamma, beta, running mean and variance, saved mean and 1/std, dgamma, dbeta
            params: [
                filled(be, rng, ch, DType::F32),
                filled(be, rng, ch, DType::F32),
                chan(be),
                be.upload(&vec![1.0f32; ch]).unwrap(),
                chan(be),
                chan(be),
                chan(be),
                chan(be),
            ],
        }
    }

    fn forward(&mut self, be: &dyn Backend, bn: BatchNorm, residual: bool) {
        let [gamma, beta, rm, rv, sm, si, ..] = &mut self.params;
        let (res, mask) = match residual {
            true => (Some(&self.dy), Some(&mut self.mask)),
            false => (None, None),
        };
        be.batchnorm_fwd_train(
            &self.x,
            gamma,
            beta,
            (rm, rv),
            (sm, si),
            res,
            &mut self.y,
            mask,
            bn,
        )
        .unwrap()
    }

    fn eval(&mut self, be: &dyn Backend, bn: BatchNorm) {
        let [gamma, beta, rm, rv, ..] = &self.params;
        be.batchnorm_fwd_eval(&self.x, gamma, beta, rm, rv, None, &mut self.y, bn)
            .unwrap()
    }

    fn backward(&mut self, be: &dyn Backend, bn: BatchNorm, residual: bool) {
        let [gamma, beta, _, _, sm, si, dg, db] = &mut self.params;
        let (mask, dres) = match residual {
            true => (Some(&self.mask), Some(&mut self.dres)),
            false => (None, None),
        };
        let (x, y, dy) = (&self.x, &self.y, &self.dy);
        be.batchnorm_bwd(
            x,
            y,
            dy,
            (gamma, beta),
            (sm, si),
            mask,
            &mut self.dx,
            dres,
            (dg, db),
            bn,
        )
        .unwrap()
    }
}

fn bench_cpu(c: &mut Criterion) {
    // The GPU machine's runner (scripts/device-run.sh) times the GPU alone; the CPU groups'
    // inputs would take it seconds to make even when its filter skips them.
    if std::env::var("INSCLR_BENCH_GPU_ONLY").is_ok_and(|v| v == "1") {
        return;
    }
    bench_backend(c, insclr::backend::cpu(), None);
    bench_layers(c, insclr::backend::cpu(), None);
}

fn bench_gpu(c: &mut Criterion) {
    let cuda = match CudaBackend::new(0) {
        Ok(be) => be,
        Err(e) => {
            eprintln!("SKIPPED GPU benchmarks: {e:#}");
            return;
        }
    };
    if let Some(info) = cuda.info() {
        let _ = GPU.set(info.clone());
    }
    bench_backend(c, &cuda, Some(&cuda));
    bench_layers(c, &cuda, Some(&cuda));
    write_table(true);
}

/// Per network, the convolutions of one training step (forward, data and weight gradient)
/// predicted from the rows: each shape's time times its count in the network, summed, for
/// ours and cuBLAS in each type, with the shapes measured so far out of all the network's.
fn step_sums(rows: &[Row]) -> String {
    let mut nets: Vec<&str> = Vec::new();
    for r in rows.iter().filter_map(|r| r.step.as_ref()) {
        if !nets.contains(&r.0.as_str()) {
            nets.push(&r.0);
        }
    }
    if nets.is_empty() {
        return String::new();
    }
    let all = conv_shapes();
    let mut out = String::from(
        "\n| step's convolutions (sum of time x count) | pass | ours f32 | ours TF32 | SGEMM | cuBLAS TF32 | ours bf16 | cuBLAS bf16 | shapes measured |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for net in nets {
        let total = all.iter().filter(|c| c.net == net && !c.depthwise).count();
        for pass in PASSES.iter().copied().chain(["all"]) {
            let sum = |kernel: &dyn Fn(&str) -> String| {
                let (mut ms, mut shapes) = (0.0, 0);
                for r in rows {
                    let Some((n, weight)) = &r.step else { continue };
                    let passes: &[&str] = if pass == "all" { &PASSES } else { &[pass] };
                    if n == net && passes.iter().any(|p| r.op == kernel(p)) {
                        ms += 1e3 * weight * r.seconds;
                        shapes += usize::from(r.op == kernel(passes[0]));
                    }
                }
                (ms, shapes)
            };
            let cols = [
                sum(&|p| format!("conv2d_{p}_f32")),
                sum(&|p| format!("conv2d_{p}_tf32")),
                sum(&|p| format!("sgemm_cublas_{p}")),
                sum(&|p| format!("gemm_cublas_{p}_tf32")),
                sum(&|p| format!("conv2d_{p}_bf16")),
                sum(&|p| format!("gemm_cublas_bf16_{p}")),
            ];
            let shown = cols.iter().map(|c| c.1).max().unwrap_or(0);
            out += &format!(
                "| {net} | {pass} | {} | {}/{total} |\n",
                cols.map(|(ms, n)| if n > 0 {
                    format!("{ms:.1} ms")
                } else {
                    "-".into()
                })
                .join(" | "),
                shown
            );
        }
    }
    out
}

/// Writes the results table to `INSCLR_BENCH_TABLE` (replacing it), and prints it when `print`.
fn write_table(print: bool) {
    let Some(info) = GPU.get() else { return };
    let (bw, f32_peak, tc_peak) = (
        info.peak_bandwidth(),
        info.peak_fp32_flops(),
        info.peak_bf16_tensor_flops(),
    );
    // Dense TF32 is half of bf16's rate on every tensor-core generation since Ampere.
    let tf32_peak = tc_peak / 2.0;
    let mut out = format!(
        "GPU: {} (sm_{}{}, driver CUDA {:?}), peak DRAM {:.0} GB/s, FP32 {:.1} TFLOP/s, bf16 tensor {:.0} TFLOP/s (from device attributes)\n\n\
         | kernel | shape | time (us) | achieved | floor (us) | floor / time | vs baseline |\n|---|---|---|---|---|---|---|\n",
        info.name,
        info.compute_capability.0,
        info.compute_capability.1,
        info.driver,
        bw / 1e9,
        f32_peak / 1e12,
        tc_peak / 1e12
    );
    let rows = ROWS.lock().unwrap();
    for r in rows.iter() {
        let peak = match (r.tensor, r.op.ends_with("_tf32")) {
            (true, true) => tf32_peak,
            (true, false) => tc_peak,
            _ => f32_peak,
        };
        let floor = (r.bytes / bw).max(r.flops / peak);
        let achieved = if r.flops > 0.0 {
            format!("{:.1} TFLOP/s", r.flops / r.seconds / 1e12)
        } else {
            format!("{:.0} GB/s", r.bytes / r.seconds / 1e9)
        };
        // Our kernel's time against its baseline's on the same shape (>1: ours is faster).
        let baseline = match r.op.as_str() {
            "matmul_f32" => "sgemm_cublas".to_string(),
            "matmul_bf16" => "gemm_cublas_bf16".to_string(),
            "topk_f32" => "topk_sort_f32".to_string(),
            op => match op.strip_prefix("conv2d_") {
                Some(pass) if op.ends_with("_f32") => {
                    format!("sgemm_cublas_{}", pass.trim_end_matches("_f32"))
                }
                // Against cuBLAS on the same tensor cores (PyTorch's f32 default).
                Some(pass) if op.ends_with("_tf32") => {
                    format!("gemm_cublas_{pass}")
                }
                Some(pass) => format!("gemm_cublas_bf16_{}", pass.trim_end_matches("_bf16")),
                None => String::new(),
            },
        };
        let vs = rows
            .iter()
            .find(|b| b.op == baseline && b.shape == r.shape)
            .map_or(String::new(), |b| {
                format!("{:.2}x {baseline}", b.seconds / r.seconds)
            });
        out += &format!(
            "| {} | {} | {:.1} | {} | {:.1} | {:.0}% | {} |\n",
            r.op,
            r.shape,
            r.seconds * 1e6,
            achieved,
            floor * 1e6,
            100.0 * floor / r.seconds,
            vs
        );
    }
    out += &step_sums(&rows);
    if print {
        println!("\n{out}");
    }
    if let Ok(path) = std::env::var("INSCLR_BENCH_TABLE") {
        std::fs::write(&path, out).expect("write bench table");
    }
}

criterion_group!(benches, bench_gpu, bench_cpu);
criterion_main!(benches);
