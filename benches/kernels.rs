//! Every kernel against its floor and its baseline. `cargo bench` runs the CPU twins always and
//! the CUDA kernels when a GPU is present (skipped with a message otherwise).
//!
//! Napkin math: a memory-bound kernel's floor is bytes moved / peak DRAM bandwidth; a GEMM's is
//! max(flops / peak FP32, bytes / bandwidth). Peaks come from the device's attributes. With
//! `INSCLR_BENCH_TABLE=path` the GPU results are also written there as a markdown table
//! (scripts/device-check.sh collects it into bench_results/).

use criterion::{criterion_group, criterion_main, Criterion};
use insclr::backend::{Backend, Buf, CudaBackend, DType, Gem, L2Norm, MatMul};
use insclr::rng::Rng;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One measured kernel for the results table.
struct Row {
    op: String,
    shape: String,
    seconds: f64,
    bytes: f64,
    flops: f64,
}

static ROWS: Mutex<Vec<Row>> = Mutex::new(Vec::new());

/// Shapes from the issue: GeM over a batch of 64 ResNet maps at 1024 px input (32x32 at stride 32),
/// L2 over 64k descriptors, and the similarity of 64 queries with a 100k-row memory bank.
const GEM: (usize, usize, usize, usize) = (64, 2048, 32, 32);
const L2: (usize, usize) = (65_536, 2048);
const SIM: (usize, usize, usize) = (64, 100_000, 2048);

fn filled(be: &dyn Backend, rng: &mut Rng, len: usize, lo: f32, hi: f32) -> Buf {
    be.upload(&rng.vec_f32(len, lo, hi)).expect("upload")
}

/// Times `iters` calls of `f` between two synchronisations; records the per-call time.
fn timed(be: &dyn Backend, iters: u64, samples: &mut Vec<f64>, mut f: impl FnMut()) -> Duration {
    be.synchronize().expect("sync");
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    be.synchronize().expect("sync");
    let d = t.elapsed();
    samples.push(d.as_secs_f64() / iters as f64);
    d
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Benchmarks GeM, L2 and GEMM on one backend, recording rows when `record` is set.
fn bench_backend(c: &mut Criterion, be: &dyn Backend, record: bool) {
    let mut rng = Rng::new(1);
    let mut group = c.benchmark_group(be.name());
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let push = |op: &str, shape: String, mut samples: Vec<f64>, bytes: f64, flops: f64| {
        if record && !samples.is_empty() {
            ROWS.lock().unwrap().push(Row {
                op: op.into(),
                shape,
                seconds: median(&mut samples),
                bytes,
                flops,
            });
        }
    };

    let (n, ch, h, w) = GEM;
    let s = Gem::new(n, ch, h, w);
    let x = filled(be, &mut rng, s.rows * s.hw, -0.1, 2.0);
    let mut y = be.zeros(DType::F32, s.rows).unwrap();
    let mut samples = Vec::new();
    group.bench_function("gem_fwd_f32", |b| {
        b.iter_custom(|it| timed(be, it, &mut samples, || be.gem_fwd(&x, &mut y, s).unwrap()))
    });
    push(
        "gem_fwd_f32",
        format!("{n}x{ch}x{h}x{w}"),
        samples,
        4.0 * (s.rows * (s.hw + 1)) as f64,
        0.0,
    );
    let dy = filled(be, &mut rng, s.rows, -1.0, 1.0);
    let mut dx = be.zeros(DType::F32, s.rows * s.hw).unwrap();
    let mut samples = Vec::new();
    group.bench_function("gem_bwd_f32", |b| {
        b.iter_custom(|it| {
            timed(be, it, &mut samples, || {
                be.gem_bwd(&x, &y, &dy, &mut dx, s).unwrap()
            })
        })
    });
    push(
        "gem_bwd_f32",
        format!("{n}x{ch}x{h}x{w}"),
        samples,
        4.0 * (2 * s.rows * (s.hw + 1)) as f64,
        0.0,
    );
    drop((x, dx));

    let (rows, cols) = L2;
    let s = L2Norm::new(rows, cols);
    let x = filled(be, &mut rng, rows * cols, -1.0, 1.0);
    let mut y = be.zeros(DType::F32, rows * cols).unwrap();
    let mut samples = Vec::new();
    group.bench_function("l2norm_fwd_f32", |b| {
        b.iter_custom(|it| {
            timed(be, it, &mut samples, || {
                be.l2norm_fwd(&x, &mut y, s).unwrap()
            })
        })
    });
    push(
        "l2norm_fwd_f32",
        format!("{rows}x{cols}"),
        samples,
        4.0 * (2 * rows * cols) as f64,
        0.0,
    );
    let mut samples = Vec::new();
    // y doubles as dy: the backward reads x and dy and writes dx.
    let mut dx = be.zeros(DType::F32, rows * cols).unwrap();
    group.bench_function("l2norm_bwd_f32", |b| {
        b.iter_custom(|it| {
            timed(be, it, &mut samples, || {
                be.l2norm_bwd(&x, &y, &mut dx, s).unwrap()
            })
        })
    });
    push(
        "l2norm_bwd_f32",
        format!("{rows}x{cols}"),
        samples,
        4.0 * (3 * rows * cols) as f64,
        0.0,
    );
    drop((x, y, dx));

    let (m, nn, k) = SIM;
    let q = filled(be, &mut rng, m * k, -1.0, 1.0);
    let bank = filled(be, &mut rng, nn * k, -1.0, 1.0);
    let mut sim = be.zeros(DType::F32, m * nn).unwrap();
    let shape = MatMul::new(m, nn, k).tb();
    let name = if be.name() == "cuda" {
        "sgemm_cublas"
    } else {
        "sgemm_matrixmultiply"
    };
    let mut samples = Vec::new();
    group.bench_function(name, |b| {
        b.iter_custom(|it| {
            timed(be, it, &mut samples, || {
                be.matmul(&q, &bank, &mut sim, shape).unwrap()
            })
        })
    });
    let bytes = 4.0 * (m * k + nn * k + m * nn) as f64;
    push(
        name,
        format!("{m}x{k} . ({nn}x{k})^T"),
        samples,
        bytes,
        2.0 * (m * nn * k) as f64,
    );
    group.finish();
}

fn bench_cpu(c: &mut Criterion) {
    bench_backend(c, insclr::backend::cpu(), false);
}

fn bench_gpu(c: &mut Criterion) {
    let cuda = match CudaBackend::new(0) {
        Ok(be) => be,
        Err(e) => {
            eprintln!("SKIPPED GPU benchmarks: {e:#}");
            return;
        }
    };
    bench_backend(c, &cuda, true);
    write_table(&cuda);
}

fn write_table(cuda: &CudaBackend) {
    let Some(info) = cuda.info() else { return };
    let (bw, fl) = (info.peak_bandwidth(), info.peak_fp32_flops());
    let mut out = format!(
        "GPU: {} (sm_{}{}, driver CUDA {:?}), peak DRAM {:.0} GB/s, peak FP32 {:.1} TFLOP/s (from device attributes)\n\n\
         | kernel | shape | time (us) | achieved GB/s | floor (us) | floor / time |\n|---|---|---|---|---|---|\n",
        info.name,
        info.compute_capability.0,
        info.compute_capability.1,
        info.driver,
        bw / 1e9,
        fl / 1e12
    );
    for r in ROWS.lock().unwrap().iter() {
        let floor = (r.bytes / bw).max(r.flops / fl);
        let gflops = if r.flops > 0.0 {
            format!(", {:.1} TFLOP/s", r.flops / r.seconds / 1e12)
        } else {
            String::new()
        };
        out += &format!(
            "| {} | {} | {:.1} | {:.0}{} | {:.1} | {:.0}% |\n",
            r.op,
            r.shape,
            r.seconds * 1e6,
            r.bytes / r.seconds / 1e9,
            gflops,
            floor * 1e6,
            100.0 * floor / r.seconds
        );
    }
    println!("\n{out}");
    if let Ok(path) = std::env::var("INSCLR_BENCH_TABLE") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("open bench table");
        f.write_all(out.as_bytes()).expect("write bench table");
    }
}

criterion_group!(benches, bench_gpu, bench_cpu);
criterion_main!(benches);
