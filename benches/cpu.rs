//! The CPU backend where EfficientNet-Lite0 spends its time: the depthwise convolutions at the
//! shapes of a 512 px input (batch 1, TF SAME padding), forward and both backward passes, and
//! one whole eval-mode forward of a 512 px image. Each result line ends with the napkin floor
//! (see `floor`), so a run says how far from the machine's limits the loops are.
//!
//! `cargo bench --bench cpu -- depthwise` or `-- lite0`; short runs with
//! `-- --measurement-time 2 --warm-up-time 0.5`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use insclr::backend::{Conv, DType, Padding};
use insclr::nn::Arch;
use insclr::rng::Rng;
use std::time::Duration;

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
    let mut g = c.benchmark_group("depthwise/cpu");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
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
    let mut g = c.benchmark_group("lite0/cpu");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("forward_eval_1x512", |b| {
        b.iter(|| net.forward(be, &x, (1, px, px), false).unwrap())
    });
    g.finish();
}

criterion_group!(benches, depthwise, lite0);
criterion_main!(benches);
