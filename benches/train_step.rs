//! A whole training step of the backbone on the device, as `train` runs it: the training-mode
//! forward of a batch of images (their upload included), the backward of a descriptor
//! gradient, the gradient clip and the Adam update over the parameter arena. ResNet-50 at
//! 224 px and ResNet-101 at 448 px, batch 64, f32; images/s in the table. The PyTorch numbers
//! to compare with come from scripts/torch-baseline.py on the same GPU. GPU only: on the CPU
//! a step of these networks takes minutes and says nothing new. The step is
//! `insclr::plan::BackboneStep`, the one `insclr-cu plan` lists the launches of.

use criterion::{criterion_group, criterion_main, Criterion};
use insclr::backend::{Backend, CudaBackend, DType};
use insclr::nn::Arch;
use insclr::plan::{BackboneStep, DESC_DIM};
use insclr::rng::Rng;
use std::time::{Duration, Instant};

const BATCH: usize = 64;

fn bench_step(c: &mut Criterion) {
    let cuda = match CudaBackend::new(0) {
        Ok(be) => be,
        Err(e) => {
            eprintln!("SKIPPED training-step benchmark: {e:#}");
            return;
        }
    };
    let be: &dyn Backend = &cuda;
    let mut table = String::from(
        "\n| training step (ours) | batch | px | ms / step | images / s |\n|---|---|---|---|---|\n",
    );
    let mut group = c.benchmark_group("step/cuda");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    for (arch, name, px, precision) in [
        (Arch::ResNet50, "resnet50", 224, DType::F32),
        (Arch::ResNet50, "resnet50", 224, DType::BF16),
        (Arch::ResNet101, "resnet101", 448, DType::F32),
        (Arch::ResNet101, "resnet101", 448, DType::BF16),
    ] {
        let mut rng = Rng::new(3);
        let mut backbone_step =
            BackboneStep::new(be, &mut rng, arch, precision, BATCH, px).expect("network");
        let x = rng.vec_f32(BATCH * 3 * px * px, -2.0, 2.0);
        let d_desc = be
            .upload(&rng.vec_f32(BATCH * DESC_DIM, -1e-3, 1e-3))
            .expect("upload");
        let mut step = || backbone_step.run(be, &x, &d_desc).expect("training step");
        let label = format!("{name} {precision:?} {BATCH}x{px}px");
        let (mut samples, mut warm) = (Vec::new(), false);
        group.bench_function(&label, |b| {
            b.iter_custom(|iters| {
                // One untimed step first (`--quick` has no warm-up of its own).
                if !std::mem::replace(&mut warm, true) {
                    step();
                }
                be.synchronize().expect("sync");
                let t = Instant::now();
                for _ in 0..iters {
                    step();
                }
                be.synchronize().expect("sync");
                let d = t.elapsed();
                samples.push(d.as_secs_f64() / iters as f64);
                d
            })
        });
        samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
        if let Some(&s) = samples.get(samples.len() / 2) {
            table += &format!(
                "| {name} {precision:?} | {BATCH} | {px} | {:.1} | {:.1} |\n",
                s * 1e3,
                BATCH as f64 / s
            );
            // Written after every row: a run stopped at its time limit keeps what it measured.
            if let Ok(path) = std::env::var("INSCLR_BENCH_TABLE") {
                std::fs::write(&path, &table).expect("write bench table");
            }
        }
    }
    group.finish();
    println!("{table}");
}

criterion_group!(benches, bench_step);
criterion_main!(benches);
