//! A whole training step of the backbone on the device, as `train` runs it: the batch's decoded
//! RGB bytes uploaded and normalised on the device (`Images::Rgb`, a quarter of the f32
//! tensor's bytes), the training-mode forward, the backward of a descriptor gradient, the
//! gradient clip and the Adam update over the parameter arena. ResNet-50 at 224 px and
//! ResNet-101 at 448 px, batch 64, f32 and bf16; images/s in the table, with the input's
//! upload and conversion timed alone beside it (PyTorch's step, in scripts/torch-baseline.py,
//! keeps its batch on the GPU: subtract that column to compare). GPU only: on the CPU a step of
//! these networks takes minutes and says nothing new. The step is `insclr::plan::BackboneStep`,
//! the one `insclr-cu plan` lists the launches of.
//!
//! Then one extraction call of ResNet-101, 16 images at 1024 px, f32 and bf16: the batch's
//! bytes uploaded, the eval forward (reused maps), GeM, the head, the descriptors downloaded, as
//! `extract` describes one scale of a batch (scripts/torch-baseline.py times PyTorch's eval
//! forward of a batch already on the GPU).
//!
//! f32 runs its convolutions on TF32 tensor cores, as `train` and `extract` do by default
//! (`SOLVER.TF32`, `--tf32`) and as PyTorch's fp32 step in scripts/torch-baseline.py does.
//!
//! `INSCLR_BENCH_FAST=1` times five steps after an untimed one instead of criterion's loop
//! (benches/util); `INSCLR_PROFILE=1` adds one more step recorded with CUDA events around every
//! launch, copy and memset, and its per-kernel table.

use criterion::{criterion_group, criterion_main, Criterion};
use insclr::backend::{Backend, CudaBackend, DType, ImageToTensor};
use insclr::data::image::{IMAGENET_MEAN as MEAN, IMAGENET_STD as STD};
use insclr::nn::{Arch, Images};
use insclr::plan::{BackboneStep, DESC_DIM};
use insclr::rng::Rng;
use std::time::{Duration, Instant};
use util::{median, mode, time_fast, Mode};

mod util;

const BATCH: usize = 64;

/// Per-step seconds of `step`, by the mode's rules; empty when the filter leaves `id` out.
fn time_step(
    c: &mut Criterion,
    be: &dyn Backend,
    id: (&str, &str),
    step: &mut dyn FnMut(),
) -> Vec<f64> {
    let sync = || be.synchronize().expect("sync");
    let full = format!("{}/{}", id.0, id.1);
    match mode() {
        Mode::Launches(n) => {
            if util::selected(&full) {
                (0..n).for_each(|_| step());
                sync();
            }
            Vec::new()
        }
        Mode::Fast if util::selected(&full) => time_fast(&sync, step),
        Mode::Fast => Vec::new(),
        Mode::Criterion => {
            let mut group = c.benchmark_group(id.0);
            group
                .sample_size(10)
                .warm_up_time(Duration::from_secs(1))
                .measurement_time(Duration::from_secs(10));
            let (mut samples, mut warm) = (Vec::new(), false);
            group.bench_function(id.1, |b| {
                b.iter_custom(|iters| {
                    // One untimed step first (`--quick` has no warm-up of its own).
                    if !std::mem::replace(&mut warm, true) {
                        step();
                    }
                    sync();
                    let t = Instant::now();
                    for _ in 0..iters {
                        step();
                    }
                    sync();
                    let d = t.elapsed();
                    samples.push(d.as_secs_f64() / iters as f64);
                    d
                })
            });
            group.finish();
            samples
        }
    }
}

/// Median seconds of the input alone: `bytes` uploaded and converted to the network's
/// `precision`, as the step's first work does.
fn time_input(be: &dyn Backend, bytes: &[u8], px: usize, precision: DType) -> f64 {
    let mut staging = be.zeros(DType::U8, bytes.len()).expect("alloc");
    let mut input = be.zeros(precision, bytes.len()).expect("alloc");
    let s = ImageToTensor {
        n: BATCH,
        h: px,
        w: px,
        mean: MEAN,
        std: STD,
    };
    let mut samples = Vec::new();
    for _ in 0..6 {
        be.synchronize().expect("sync");
        let t = Instant::now();
        be.upload_into(bytes, &mut staging).expect("upload");
        be.image_to_tensor(&staging, &mut input, s)
            .expect("image_to_tensor");
        be.synchronize().expect("sync");
        samples.push(t.elapsed().as_secs_f64());
    }
    median(&samples[1..])
}

fn bench_step(c: &mut Criterion) {
    let cuda = match CudaBackend::new(0) {
        Ok(be) => be,
        Err(e) => {
            eprintln!("SKIPPED training-step benchmark: {e:#}");
            return;
        }
    };
    let be: &dyn Backend = &cuda;
    be.set_tf32(true);
    let profile = insclr::backend::profile::kernel_profile_requested();
    let mut table = String::from(
        "\n| training step (ours) | batch | px | ms / step | images / s | input: u8 RGB uploaded and normalised per step, as `train` (ms of the step) |\n|---|---|---|---|---|---|\n",
    );
    let mut profiles = String::new();
    for (arch, name, px, precision) in [
        (Arch::ResNet50, "resnet50", 224, DType::F32),
        (Arch::ResNet50, "resnet50", 224, DType::BF16),
        (Arch::ResNet101, "resnet101", 448, DType::F32),
        (Arch::ResNet101, "resnet101", 448, DType::BF16),
    ] {
        let label = format!("{name} {precision:?} {BATCH}x{px}px");
        if !util::selected(&format!("step/cuda/{label}")) {
            continue;
        }
        let mut rng = Rng::new(3);
        let mut backbone_step =
            BackboneStep::new(be, &mut rng, arch, precision, BATCH, px).expect("network");
        let bytes: Vec<u8> = (0..BATCH * px * px * 3)
            .map(|_| rng.below(256) as u8)
            .collect();
        let d_desc = be
            .upload(&rng.vec_f32(BATCH * DESC_DIM, -1e-3, 1e-3))
            .expect("upload");
        let images = Images::Rgb {
            bytes: &bytes,
            mean: MEAN,
            std: STD,
        };
        let mut step = || {
            backbone_step
                .run(be, images, &d_desc)
                .expect("training step")
        };
        let samples = time_step(c, be, ("step/cuda", &label), &mut step);
        if samples.is_empty() {
            continue;
        }
        let s = median(&samples);
        let input = time_input(be, &bytes, px, precision);
        table += &format!(
            "| {name} {precision:?} | {BATCH} | {px} | {:.1} | {:.1} | {:.1} MB: {:.2} ms ({:.1}%) |\n",
            s * 1e3,
            BATCH as f64 / s,
            bytes.len() as f64 / 1e6,
            input * 1e3,
            100.0 * input / s
        );
        if profile {
            be.synchronize().expect("sync");
            cuda.profile_start();
            let t = Instant::now();
            step();
            be.synchronize().expect("sync");
            let wall = t.elapsed().as_secs_f64() * 1e3;
            match cuda.profile_take() {
                Ok(p) => {
                    profiles += &p.table(&format!("{name} {precision:?} step"), Some(wall), 25)
                }
                Err(e) => profiles += &format!("\n{name} {precision:?}: no profile ({e:#})\n"),
            }
        }
        // Written after every row: a run stopped at its time limit keeps what it measured.
        if let Ok(path) = std::env::var("INSCLR_BENCH_TABLE") {
            std::fs::write(&path, format!("{table}{profiles}")).expect("write bench table");
        }
    }
    println!("{table}{profiles}");
    bench_extract(c, be, &format!("{table}{profiles}"));
}

/// The extraction calls' table (module doc), written after `steps` (the steps' tables) to
/// `INSCLR_BENCH_TABLE`.
fn bench_extract(c: &mut Criterion, be: &dyn Backend, steps: &str) {
    let (n, px) = (16, 1024);
    let mut table = String::from(
        "\n| extraction call (ours) | batch | px | ms / call | images / s |\n|---|---|---|---|---|\n",
    );
    for precision in [DType::F32, DType::BF16] {
        let label = format!("resnet101 {precision:?} {n}x{px}px");
        if !util::selected(&format!("extract/cuda/{label}")) {
            continue;
        }
        let mut rng = Rng::new(3);
        let mut net =
            BackboneStep::network(be, &mut rng, Arch::ResNet101, precision).expect("network");
        insclr::nn::drop_grads(&mut net);
        let bytes: Vec<u8> = (0..n * px * px * 3).map(|_| rng.below(256) as u8).collect();
        let images = Images::Rgb {
            bytes: &bytes,
            mean: MEAN,
            std: STD,
        };
        let mut call = || {
            net.describe_images(be, images, n, px, px)
                .expect("extraction call");
        };
        let samples = time_step(c, be, ("extract/cuda", &label), &mut call);
        if samples.is_empty() {
            continue;
        }
        let s = median(&samples);
        table += &format!(
            "| resnet101 {precision:?} | {n} | {px} | {:.1} | {:.1} |\n",
            s * 1e3,
            n as f64 / s
        );
        if let Ok(path) = std::env::var("INSCLR_BENCH_TABLE") {
            std::fs::write(&path, format!("{steps}{table}")).expect("write bench table");
        }
    }
    println!("{table}");
}

criterion_group!(benches, bench_step);
criterion_main!(benches);
