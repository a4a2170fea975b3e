//! The CPU backend beside the libraries users already have. Groups:
//! - `depthwise`: EfficientNet-Lite0's depthwise convolutions at the shapes of a 512 px input
//!   (batch 1, TF SAME padding), forward and both backward passes, with the napkin floor
//!   (see `floor`);
//! - `gemm`: the CPU GEMM on our shapes (pool tiles, ResNet-50 convolutions as GEMMs);
//! - `pool`: candidate pools of random unit descriptors, 20k x 2048 and 100k x 128 (ten minutes);
//! - `lite0`: one eval-mode EfficientNet-Lite0 forward of a 512 px image;
//! - `resnet50`: a ResNet-50 training forward + backward, batch 2 at 224 px.
//!
//! The run ends with a table of our median times beside the peers' (numpy / FAISS / PyTorch
//! CPU on the same shapes and thread count), read from `target/cpu-peers.json`, which
//! `scripts/cpu-peers.py bench` writes; without that file the peer columns say so.
//!
//! `cargo bench --bench cpu -- resnet50` runs one group; short runs with
//! `-- --measurement-time 2 --warm-up-time 0.5`.

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion};
use insclr::backend::{Conv, DType, MatMul, Padding};
use insclr::eval::extract::l2_normalize_rows;
use insclr::mining::pool::{default_tile, CandidatePool};
use insclr::nn::head::HeadKind;
use insclr::nn::{zero_grads, Arch, RetrievalNet};
use insclr::rng::Rng;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Median seconds per iteration of each timed bench, by id, for the closing table.
static MEDIANS: Mutex<Vec<(String, f64)>> = Mutex::new(Vec::new());

/// The bench group `<name>/cpu`: ten samples (criterion's minimum: these runs are long),
/// with the given warm-up and measuring time.
fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
    warm_up_ms: u64,
    measure_s: u64,
) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(format!("{name}/cpu"));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(warm_up_ms))
        .measurement_time(Duration::from_secs(measure_s));
    g
}

/// Benches `f` as `group/id` and keeps its median time per iteration for the peer table.
fn timed(g: &mut BenchmarkGroup<WallTime>, group: &str, id: &str, mut f: impl FnMut()) {
    let mut samples = Vec::new();
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            let d = t.elapsed();
            samples.push(d.as_secs_f64() / iters as f64);
            d
        })
    });
    if samples.is_empty() {
        return; // filtered out
    }
    samples.sort_by(f64::total_cmp);
    let median = samples[samples.len() / 2];
    MEDIANS
        .lock()
        .unwrap()
        .push((format!("{group}/{id}"), median));
}

/// (channels, map, kernel, stride) of Lite0's depthwise layers at 512 px input.
const DEPTHWISE: [(usize, usize, usize, usize); 7] = [
    (32, 256, 3, 1),
    (96, 256, 3, 2),
    (144, 128, 3, 1),
    (144, 128, 5, 2),
    (240, 64, 5, 1),
    (672, 32, 5, 2),
    (1152, 16, 5, 1),
];

/// Assumed machine limits for the floor: ~10 GB/s of DRAM bandwidth per core and one 16-lane
/// f32 FMA per cycle per core at 2.3 GHz (AVX-512 with one FMA port counted), on every core
/// rayon uses.
fn floor(bytes: f64, flops: f64) -> f64 {
    let cores = rayon::current_num_threads() as f64;
    (bytes / (10e9 * cores)).max(flops / (2.0 * 16.0 * 2.3e9 * cores))
}

fn depthwise(c: &mut Criterion) {
    let be = insclr::backend::cpu();
    let mut rng = Rng::new(5);
    let mut g = group(c, "depthwise", 300, 1);
    for (ch, hw, k, stride) in DEPTHWISE {
        let s = Conv::new(1, ch, hw, hw, ch, k, stride, Padding::Same, ch).unwrap();
        let (lx, lw, ly) = s.sizes();
        let up = |rng: &mut Rng, len| be.upload(&rng.vec_f32(len, -1.0, 1.0)).unwrap();
        let (x, w, dy) = (up(&mut rng, lx), up(&mut rng, lw), up(&mut rng, ly));
        let mut y = be.zeros(DType::F32, ly).unwrap();
        let mut dx = be.zeros(DType::F32, lx).unwrap();
        let mut dw = be.zeros(DType::F32, lw).unwrap();
        let label = format!("1x{ch}x{hw}x{hw} k{k} s{stride}");
        let (bytes, flops) = (4.0 * (lx + ly) as f64, 2.0 * (ly * k * k) as f64);
        eprintln!(
            "floor {label}: {:.1} us ({:.1} MB, {:.1} MFLOP)",
            floor(bytes, flops) * 1e6,
            bytes / 1e6,
            flops / 1e6
        );
        g.bench_function(BenchmarkId::new("fwd", &label), |b| {
            b.iter(|| be.conv2d_fwd(&x, &w, &mut y, s).unwrap())
        });
        g.bench_function(BenchmarkId::new("bwd_data", &label), |b| {
            b.iter(|| be.conv2d_bwd_data(&dy, &w, &mut dx, s).unwrap())
        });
        g.bench_function(BenchmarkId::new("bwd_weight", &label), |b| {
            b.iter(|| be.conv2d_bwd_weight(&x, &dy, &mut dw, s).unwrap())
        });
    }
    g.finish();
}

/// One 512 px image through the randomly initialised backbone in eval mode (weights do not
/// change the work).
fn lite0(c: &mut Criterion) {
    let be = insclr::backend::cpu();
    let mut rng = Rng::new(6);
    let mut net = Arch::EfficientNetLite0
        .build(be, &mut rng, false)
        .expect("backbone");
    let px = 512;
    let x = be.upload(&rng.vec_f32(3 * px * px, -2.0, 2.0)).unwrap();
    let mut g = group(c, "lite0", 500, 3);
    timed(&mut g, "lite0", "forward_eval_1x512", || {
        net.forward(be, &x, (1, px, px), false).unwrap();
    });
    g.finish();
}

/// One training-mode forward and backward of ResNet-50 with the GeM + linear head at 224 px,
/// batch 2 (the backbone's share of a CPU training step; the optimiser is elementwise).
fn resnet50_step(c: &mut Criterion) {
    let be = insclr::backend::cpu();
    let mut rng = Rng::new(7);
    let backbone = Arch::ResNet50.build(be, &mut rng, false).expect("backbone");
    let mut net =
        RetrievalNet::new(be, &mut rng, backbone, HeadKind::NormLinearNorm, 2048).expect("net");
    let (batch, px) = (2, 224);
    let x = rng.vec_f32(batch * 3 * px * px, -2.0, 2.0);
    let d_desc = be.upload(&rng.vec_f32(batch * 2048, -1e-3, 1e-3)).unwrap();
    let mut g = group(c, "resnet50", 500, 5);
    timed(&mut g, "resnet50", "forward_backward_2x224", || {
        net.forward_train(be, &x, batch, px, px).unwrap();
        zero_grads(be, &mut net).unwrap();
        net.backward(be, &d_desc).unwrap();
    });
    g.finish();
}

/// (m, n, k, B transposed, what it is): C = A op(B), row-major, as the CPU paths call it.
const GEMMS: [(usize, usize, usize, bool, &str); 4] = [
    (512, 2048, 2048, true, "pool tile at d 2048"),
    (512, 2048, 128, true, "pool tile at d 128"),
    (64, 3136, 576, false, "ResNet-50 layer1 3x3 conv, one image"),
    (512, 49, 4608, false, "ResNet-50 layer4 3x3 conv, one image"),
];

fn gemm(c: &mut Criterion) {
    let be = insclr::backend::cpu();
    let mut rng = Rng::new(8);
    let mut g = group(c, "gemm", 300, 2);
    for (m, n, k, tb, what) in GEMMS {
        let a = be.upload(&rng.vec_f32(m * k, -1.0, 1.0)).unwrap();
        let b = be.upload(&rng.vec_f32(k * n, -1.0, 1.0)).unwrap();
        let mut out = be.zeros(DType::F32, m * n).unwrap();
        let s = if tb {
            MatMul::new(m, n, k).tb()
        } else {
            MatMul::new(m, n, k)
        };
        let id = format!("{m}x{n}x{k}{}", if tb { " bt" } else { "" });
        eprintln!(
            "gemm {id}: {what}, {:.2} GFLOP",
            2.0 * (m * n * k) as f64 / 1e9
        );
        timed(&mut g, "gemm", &id, || {
            be.matmul(&a, &b, &mut out, s).unwrap()
        });
    }
    g.finish();
}

/// (n, d, k) of the two reference pools. One pool takes 15-40 s on 2 cores, so this group takes
/// about ten minutes (criterion's minimum of ten samples); smaller pools are no stand-in, as
/// the top-k's share of the work grows with k / n.
const POOLS: [(usize, usize, usize); 2] = [(20000, 2048, 500), (100000, 128, 100)];

fn pool(c: &mut Criterion) {
    let be = insclr::backend::cpu();
    let mut rng = Rng::new(9);
    let mut g = group(c, "pool", 1, 1);
    for (n, d, k) in POOLS {
        let mut feats = rng.vec_f32(n * d, -1.0, 1.0);
        l2_normalize_rows(&mut feats, d);
        timed(&mut g, "pool", &format!("{n}x{d} k{k}"), || {
            CandidatePool::compute(be, &feats, n, d, k, default_tile(n), &mut |_| {}).unwrap();
        });
    }
    g.finish();
}

/// Our medians beside the peers' times from `target/cpu-peers.json`
/// (`{"<group>/<id>": {"<peer>": seconds}}`, written by `scripts/cpu-peers.py bench`).
fn peer_table(_: &mut Criterion) {
    let medians = MEDIANS.lock().unwrap();
    if medians.is_empty() {
        return;
    }
    let path = "target/cpu-peers.json";
    let peers: serde_json::Map<String, serde_json::Value> = match std::fs::read(path) {
        Err(_) => Default::default(),
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            eprintln!("{path} is not a peer table ({e}); run scripts/cpu-peers.py bench again");
            Default::default()
        }),
    };
    let threads = rayon::current_num_threads();
    println!(
        "\n| bench ({threads} threads) | insclr-cu, median | peer | peer time | peer time / ours |"
    );
    println!("|---|---|---|---|---|");
    for (id, ours) in medians.iter() {
        let cells: Vec<(&String, f64)> = peers
            .get(id)
            .and_then(|v| v.as_object())
            .into_iter()
            .flatten()
            .filter_map(|(name, t)| Some((name, t.as_f64()?)))
            .collect();
        if cells.is_empty() {
            println!(
                "| {id} | {:.2} ms | (none measured: run scripts/cpu-peers.py bench) | | |",
                ours * 1e3
            );
        }
        for (name, t) in cells {
            println!(
                "| {id} | {:.2} ms | {name} | {:.2} ms | {:.2}x |",
                ours * 1e3,
                t * 1e3,
                t / ours
            );
        }
    }
}

criterion_group!(
    benches,
    depthwise,
    gemm,
    pool,
    lite0,
    resnet50_step,
    peer_table
);
criterion_main!(benches);
