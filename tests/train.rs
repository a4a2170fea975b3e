//! `insclr-cu train` end to end on generated images: a tiny stage is finite and deterministic,
//! a corrupt image is skipped and listed, and a run interrupted at a checkpoint and resumed
//! ends with exactly the parameters of an uninterrupted run (base / v1 and impr / v2).

mod common;

use insclr::io::safetensors;
use insclr::mining::CandidatePool;
use insclr::rng::Rng;
use insclr::train::{self, Config, RunOptions};
use std::path::{Path, PathBuf};

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("insclr-train-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// 18 images in 6 groups (a colour and a stripe period per group, noise per image), as PNGs,
/// plus one corrupt file sorted last; and a candidate pool over all 19 (colour means + noise).
fn make_data(dir: &Path) -> PathBuf {
    let img_dir = dir.join("images");
    std::fs::create_dir_all(&img_dir).unwrap();
    let mut r = Rng::new(11);
    let (n_good, d) = (18usize, 8usize);
    let mut feats = Vec::new();
    for i in 0..n_good {
        let g = i % 6;
        let base = [
            40 + 35 * g as u32,
            220 - 30 * g as u32,
            90 + 20 * (g as u32 % 3),
        ];
        let period = 3 + g as u32;
        let img = image::RgbImage::from_fn(40 + 4 * (i as u32 % 3), 36, |x, y| {
            let s = if (x / period + y / 7) % 2 == 0 { 40 } else { 0 };
            let nz = (r.below(30)) as u32;
            image::Rgb([
                ((base[0] + s + nz) % 256) as u8,
                ((base[1] + nz) % 256) as u8,
                ((base[2] + s) % 256) as u8,
            ])
        });
        img.save(img_dir.join(format!("img_{i:02}.png"))).unwrap();
        // Pool descriptor: the group's direction plus noise, unit norm.
        let mut v: Vec<f32> = (0..d)
            .map(|t| if t == g { 1.0 } else { 0.0 } + 0.25 * r.normal())
            .collect();
        let nrm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        v.iter_mut().for_each(|a| *a /= nrm);
        feats.extend(v);
    }
    std::fs::write(img_dir.join("zz_corrupt.jpg"), b"not a jpeg at all").unwrap();
    let mut v: Vec<f32> = (0..d).map(|_| r.normal()).collect();
    let nrm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.iter_mut().for_each(|a| *a /= nrm);
    feats.extend(v);
    let be = insclr::backend::cpu();
    let pool = CandidatePool::compute(be, &feats, n_good + 1, d, 8, 64, &mut |_| {}).unwrap();
    let p = dir.join("pool.npz");
    pool.save(&p).unwrap();
    p
}

fn config(dir: &Path, pool: &Path, out: &str, v2: bool, max_step: usize) -> Config {
    let common = format!(
        r#"
OUTPUT_DIR = "{out}"
SEED = 7
[DATA]
ROOT = "{root}"
CACHE_IMAGES = {cache}
[INPUT]
TRAIN_IMG_SIZE = [32, 32]
NOAUG_IMG_SIZE = [32, 32]
SCALE_LOWER = {lo}
SCALE_UPPER = {hi}
[MODEL]
PRETRAIN = "random"
BN_GHOST_GROUPS = 2
[MODEL.BACKBONE]
NAME = "resnet-custom"
STAGES = [1, 1, 1, 1]
BASE_WIDTH = 4
[MODEL.HEAD]
OUT_DIM = 16
[LOSS.CONTRASTIVE_LOSS]
MARGIN = 0.4
[SOLVER]
NAME = "adam"
BASE_LR = 1e-3
WEIGHT_DECAY = 1e-4
IMS_PER_BATCH = 2
STEPS = [3]
MAX_STEP = {max_step}
CHECKPOINT_PERIOD = 2
[NEIGHBOR]
SRC = "{pool}"
K = 2
"#,
        out = dir.join(out).display(),
        root = dir.join("images").display(),
        pool = pool.display(),
        lo = if v2 { 0.4 } else { 0.75 },
        hi = if v2 { 1.0 } else { 1.33 },
        // v1 keeps decoded images, v2 decodes every step.
        cache = !v2,
    );
    let xbm = if v2 {
        r#"
[NOAUG]
ENABLE = true
[SELECTION]
ENABLE = true
THRESH = 0.6
[XBM]
ENABLE = true
VERSION = "v2"
SIZE = 0
FEATURE_DIM = 16
START_STEP = 0
GET_STEP = 0
GET_SIZE = 10
CANDIDATE_MODE = "b+i_tr2_avg0.60_k02"
POSITIVE_THRESH = 0.75
NEGATIVE_THRESH = 0.5
"#
    } else {
        r#"
[XBM]
ENABLE = true
VERSION = "v1"
SIZE = 0
FEATURE_DIM = 16
START_STEP = 1
GET_STEP = 2
GET_SIZE = 10
POTENTIAL_POSITIVE = 3
"#
    };
    Config::parse(&format!("{common}{xbm}"), "test.toml").unwrap()
}

fn quiet(resume: bool) -> RunOptions {
    RunOptions {
        resume,
        quiet: true,
        ..RunOptions::default()
    }
}

fn final_tensors(dir: &Path, out: &str) -> Vec<(String, Vec<f32>)> {
    let t = safetensors::read(&dir.join(out).join("model_final.safetensors")).unwrap();
    t.into_iter()
        .filter_map(|t| t.as_f32().map(|v| (t.name.clone(), v.to_vec())))
        .collect()
}

fn log_losses(dir: &Path, out: &str) -> Vec<(u64, f64, f64)> {
    std::fs::read_to_string(dir.join(out).join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["step"].as_u64().unwrap(),
                v["loss"].as_f64().unwrap(),
                v["lr"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn log_lines(dir: &Path, out: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join(out).join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn stage_is_deterministic_and_resumable(v2: bool) {
    let tag = if v2 { "v2" } else { "v1" };
    let dir = tmpdir(tag);
    let pool = make_data(&dir);
    let be = insclr::backend::cpu();

    // Uninterrupted, twice: same numbers, with the loader thread two steps ahead (the
    // default) and with each step loading its own images.
    let a = train::run(config(&dir, &pool, "a", v2, 4), be, &quiet(false)).unwrap();
    let mut b = config(&dir, &pool, "b", v2, 4);
    assert_eq!(b.dataloader.prefetch, 2);
    b.dataloader.prefetch = 0;
    train::run(b, be, &quiet(false)).unwrap();
    assert_eq!(a.steps_run, 4);
    assert_eq!(a.skipped, 1, "the corrupt file is skipped");
    let listed = std::fs::read_to_string(dir.join("a").join("skipped.txt")).unwrap();
    assert!(listed.contains("zz_corrupt.jpg"), "{listed}");
    let la = log_losses(&dir, "a");
    assert_eq!(la.len(), 4);
    assert!(
        la.iter().all(|&(_, l, _)| l.is_finite() && l > 0.0),
        "{la:?}"
    );
    // Milestone 3: steps 1..3 at the base lr, step 4 at a tenth.
    assert_eq!(la[2].2, 1e-3);
    assert!((la[3].2 - 1e-4).abs() < 1e-12, "{la:?}");
    assert_eq!(la, log_losses(&dir, "b"));
    // The memory was read when the config says, and (v2) mining found positives.
    let lines = log_lines(&dir, "a");
    let field = |k: &str| -> Vec<f64> { lines.iter().map(|v| v[k].as_f64().unwrap()).collect() };
    let mem = field("memory_size");
    if v2 {
        assert!(mem.iter().all(|&m| m > 0.0), "{mem:?}");
        assert!(field("init_pos").iter().sum::<f64>() > 0.0, "{lines:?}");
        assert!(field("memory_pos").iter().sum::<f64>() > 0.0, "{lines:?}");
    } else {
        assert_eq!(
            mem[..2],
            [0.0, 0.0],
            "GET_STEP = 2: no memory before step 3"
        );
        assert!(mem[2] > 0.0 && mem[3] > 0.0, "{mem:?}");
    }
    assert!(field("memory_loss")[3] > 0.0, "{lines:?}");
    let fa = final_tensors(&dir, "a");
    assert_eq!(fa, final_tensors(&dir, "b"));

    // Training moved the weights away from the seeded initialisation.
    let init = {
        let cfg = config(&dir, &pool, "x", v2, 4);
        let (net, _) =
            insclr::nn::model::build_model(&cfg.model, cfg.seed, cfg.precision(), be).unwrap();
        insclr::nn::weights::export(&net, be).unwrap()
    };
    let moved = init
        .iter()
        .filter_map(|t| {
            let v = t.as_f32()?;
            let f = fa.iter().find(|(n, _)| *n == t.name)?;
            Some(v != f.1.as_slice())
        })
        .filter(|&m| m)
        .count();
    assert!(moved > 10, "only {moved} tensors changed");

    // Interrupted after the checkpoint at step 2, then resumed to step 4.
    let c1 = train::run(config(&dir, &pool, "c", v2, 2), be, &quiet(false)).unwrap();
    assert_eq!(c1.steps_run, 2);
    assert!(dir
        .join("c/checkpoints/checkpoint_0000002.safetensors")
        .exists());
    assert!(dir
        .join("c/checkpoints/checkpoint_0000002.memory.npz")
        .exists());
    let c2 = train::run(config(&dir, &pool, "c", v2, 4), be, &quiet(true)).unwrap();
    assert_eq!((c2.resumed_from, c2.steps_run), (Some(2), 2));
    assert_eq!(log_losses(&dir, "c"), la, "same losses step by step");
    assert_eq!(final_tensors(&dir, "c"), fa, "same final parameters");
    let decisions =
        |run: &str| std::fs::read_to_string(dir.join(run).join("decisions.jsonl")).unwrap();
    assert!(!decisions("a").is_empty());
    assert_eq!(decisions("c"), decisions("a"), "same decision log");

    // A different seed gives a different run.
    let mut other = config(&dir, &pool, "d", v2, 2);
    other.seed = 8;
    train::run(other, be, &quiet(false)).unwrap();
    assert_ne!(log_losses(&dir, "d")[..2], la[..2]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn base_stage_v1_is_deterministic_and_resumes_exactly() {
    stage_is_deterministic_and_resumable(false);
}

#[test]
fn impr_stage_v2_is_deterministic_and_resumes_exactly() {
    stage_is_deterministic_and_resumable(true);
}

#[test]
fn resume_with_another_seed_is_refused() {
    let dir = tmpdir("seed");
    let pool = make_data(&dir);
    let be = insclr::backend::cpu();
    train::run(config(&dir, &pool, "a", false, 2), be, &quiet(false)).unwrap();
    let mut cfg = config(&dir, &pool, "a", false, 4);
    cfg.seed = 99;
    let e = format!("{:#}", train::run(cfg, be, &quiet(true)).unwrap_err());
    assert!(e.contains("SEED"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The options of issue 14 train on the CPU: no head (`MODEL.HEAD.ENABLE = false`: the
/// descriptor is the L2-normalised 128-d GeM, no `head.fc` is written) with frozen BatchNorm
/// statistics (`MODEL.BACKBONE.FREEZE_BN`: the running statistics stay at their init while
/// the backbone and the BatchNorm affine parameters move).
#[test]
fn headless_stage_with_frozen_batchnorm_trains_on_the_cpu() {
    let dir = tmpdir("headless");
    let pool = make_data(&dir);
    let be = insclr::backend::cpu();
    let mut cfg = config(&dir, &pool, "a", false, 2);
    cfg.model.head.enable = false;
    cfg.model.backbone.freeze_bn = true;
    cfg.xbm.feature_dim = 128;
    let r = train::run(cfg, be, &quiet(false)).unwrap();
    assert_eq!(r.steps_run, 2);
    let losses = log_losses(&dir, "a");
    assert!(losses.iter().all(|&(_, l, _)| l.is_finite()), "{losses:?}");
    let fa = final_tensors(&dir, "a");
    assert!(
        fa.iter().all(|(n, _)| !n.starts_with("head.")),
        "a head was saved"
    );
    let get = |name: &str| &fa.iter().find(|(n, _)| n == name).unwrap().1;
    assert!(get("bn1.running_mean").iter().all(|&v| v == 0.0));
    assert!(get("layer4.0.bn3.running_var").iter().all(|&v| v == 1.0));
    assert!(
        get("bn1.weight").iter().any(|&v| v != 1.0),
        "bn1.weight did not train"
    );
    // A wrong bank width names the descriptor width.
    let mut cfg = config(&dir, &pool, "b", false, 2);
    cfg.model.head.enable = false;
    let e = format!("{:#}", train::run(cfg, be, &quiet(false)).unwrap_err());
    assert!(e.contains("XBM.FEATURE_DIM = 128"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The done-when of the device backbone: `train` on the GPU (the emulator here) gives the CPU's
/// losses for the first steps, base / v1 and impr / v2 (no-DA forward, selection, mining),
/// and resumes exactly. The device runs exact f32 (`SOLVER.TF32 = false`); with TF32
/// convolutions, the default, its first loss is within TF32's rounding of the CPU's.
/// Only the first steps: Adam's first updates are `lr * sign(g)` whatever `|g|`, so a
/// gradient that is zero up to rounding (a BatchNorm bias after cancellation) moves its
/// parameter by ±lr on one device and ∓lr on the other, and the runs drift apart from there.
fn device_train_matches_cpu(v2: bool) {
    let tag = if v2 { "dev-v2" } else { "dev-v1" };
    let dir = tmpdir(tag);
    let pool = make_data(&dir);
    let dev = common::kernel_device(&format!("device_train_matches_cpu_{tag}"));
    let steps = 3;
    let exact = |out: &str, steps: usize| {
        let mut c = config(&dir, &pool, out, v2, steps);
        c.solver.tf32 = false;
        c
    };
    train::run(
        config(&dir, &pool, "cpu", v2, steps),
        insclr::backend::cpu(),
        &quiet(true),
    )
    .unwrap();
    train::run(exact("dev", steps), &dev, &quiet(true)).unwrap();
    let (a, b) = (log_lines(&dir, "cpu"), log_lines(&dir, "dev"));
    assert_eq!(a.len(), steps);
    for (x, y) in a.iter().zip(&b) {
        let (lx, ly) = (x["loss"].as_f64().unwrap(), y["loss"].as_f64().unwrap());
        let rel = (lx - ly).abs() / lx.abs().max(1e-6);
        common::log(&format!(
            "{tag} step {}: loss cpu {lx} device {ly} (rel {rel:.1e})",
            x["step"]
        ));
        assert!(rel < 1e-4, "step {}: cpu {lx} vs device {ly}", x["step"]);
        // Mining and selection decide the same pairs.
        for key in [
            "batch_pos",
            "batch_neg",
            "rejected",
            "memory_size",
            "selected_pos",
        ] {
            assert_eq!(x[key], y[key], "step {}: {key}", x["step"]);
        }
    }
    // Interrupted after the checkpoint at step 2 and resumed on the device: the parameters and
    // optimiser state go back into the device arena, and the run ends exactly as without.
    train::run(exact("dev-r", 2), &dev, &quiet(true)).unwrap();
    let r = train::run(exact("dev-r", steps), &dev, &quiet(true)).unwrap();
    assert_eq!(r.resumed_from, Some(2));
    assert_eq!(log_losses(&dir, "dev-r"), log_losses(&dir, "dev"));
    assert_eq!(final_tensors(&dir, "dev-r"), final_tensors(&dir, "dev"));
    // TF32 convolutions (the default): the first step's loss moves by TF32's rounding, not more;
    // if it equalled the exact run's, TF32 did not run.
    train::run(config(&dir, &pool, "dev-tf32", v2, 1), &dev, &quiet(true)).unwrap();
    let (exact_loss, tf32_loss) = (
        log_losses(&dir, "dev")[0].1,
        log_losses(&dir, "dev-tf32")[0].1,
    );
    let rel = (exact_loss - tf32_loss).abs() / exact_loss.abs().max(1e-6);
    common::log(&format!(
        "{tag} step 1: loss exact {exact_loss} tf32 {tf32_loss} (rel {rel:.1e})"
    ));
    assert!(
        rel > 0.0 && rel < 1e-2,
        "step 1: exact {exact_loss} vs tf32 {tf32_loss}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn device_train_v1_matches_cpu_for_the_first_steps() {
    device_train_matches_cpu(false);
}

#[test]
fn device_train_v2_matches_cpu_for_the_first_steps() {
    device_train_matches_cpu(true);
}

/// `SOLVER.PRECISION = "bf16"` on the CPU (the v2 stage: both banks, mining): it trains to
/// finite losses that are not the f32 run's, the banks hold bf16 values (the checkpoint writes
/// them widened, exactly), a resumed run ends as the uninterrupted one, and resuming it in f32
/// is refused. How close bf16 is to f32 is measured on a network that normalises more than
/// three values per channel (tests/nn_device.rs) and on real photos (bench_results): this
/// stage's 1x1 last maps in groups of three images turn bf16's rounding into different hinge
/// decisions (step 1: 1.0 against 0.67 negatives over the margin).
#[test]
fn bf16_stage_trains_resumes_exactly_and_refuses_an_f32_resume() {
    let dir = tmpdir("bf16");
    let pool = make_data(&dir);
    let be = insclr::backend::cpu();
    let bf16 = |out: &str, steps: usize| {
        let mut c = config(&dir, &pool, out, true, steps);
        c.solver.precision = "bf16".into();
        c
    };
    train::run(config(&dir, &pool, "f32", true, 1), be, &quiet(false)).unwrap();
    train::run(bf16("a", 4), be, &quiet(false)).unwrap();
    let (lf, la) = (log_losses(&dir, "f32"), log_losses(&dir, "a"));
    assert_eq!(la.len(), 4);
    assert!(la.iter().all(|&(_, l, _)| l.is_finite()), "{la:?}");
    assert_ne!(
        la[0].1, lf[0].1,
        "bf16 gave the f32 loss: it did not run in bf16"
    );

    train::run(bf16("c", 2), be, &quiet(false)).unwrap();
    let banks = dir.join("c/checkpoints/checkpoint_0000002.memory.npz");
    for name in ["da", "noda"] {
        let rows = insclr::io::npy::read_npz::<f32>(&banks, name).unwrap();
        assert!(rows.data.iter().any(|&v| v != 0.0), "bank {name} is empty");
        let off = rows
            .data
            .iter()
            .filter(|&&v| half::bf16::from_f32(v).to_f32() != v)
            .count();
        assert_eq!(off, 0, "bank {name}: {off} values are not bf16 values");
    }
    let r = train::run(bf16("c", 4), be, &quiet(true)).unwrap();
    assert_eq!(r.resumed_from, Some(2));
    assert_eq!(log_losses(&dir, "c"), la, "same losses step by step");
    assert_eq!(final_tensors(&dir, "c"), final_tensors(&dir, "a"));

    let e = train::run(config(&dir, &pool, "c", true, 6), be, &quiet(true)).unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("SOLVER.PRECISION"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The bf16 stage on the device (the GPU, else emu): the backbone's bf16 kernels, the casts and
/// the bf16 banks' row copies in a whole v2 stage; its first loss is near the CPU's bf16 loss,
/// and a resumed run ends exactly as the uninterrupted one.
#[test]
fn bf16_stage_runs_on_the_device_and_resumes_exactly() {
    let dir = tmpdir("bf16-dev");
    let pool = make_data(&dir);
    let dev = common::kernel_device("bf16_stage_runs_on_the_device_and_resumes_exactly");
    let bf16 = |out: &str, steps: usize| {
        let mut c = config(&dir, &pool, out, true, steps);
        c.solver.precision = "bf16".into();
        c
    };
    train::run(bf16("cpu", 1), insclr::backend::cpu(), &quiet(false)).unwrap();
    train::run(bf16("dev", 3), &dev, &quiet(false)).unwrap();
    let (lc, ld) = (log_losses(&dir, "cpu"), log_losses(&dir, "dev"));
    assert_eq!(ld.len(), 3);
    assert!(ld.iter().all(|&(_, l, _)| l.is_finite()), "{ld:?}");
    let rel = (lc[0].1 - ld[0].1).abs() / lc[0].1;
    common::log(&format!(
        "bf16 step 1 loss: cpu {} device {} (rel {rel:.1e})",
        lc[0].1, ld[0].1
    ));
    assert!(rel < 2e-2, "cpu {lc:?} against device {ld:?}");
    train::run(bf16("dev-r", 2), &dev, &quiet(false)).unwrap();
    let r = train::run(bf16("dev-r", 3), &dev, &quiet(true)).unwrap();
    assert_eq!(r.resumed_from, Some(2));
    assert_eq!(log_losses(&dir, "dev-r"), ld);
    assert_eq!(final_tensors(&dir, "dev-r"), final_tensors(&dir, "dev"));
    std::fs::remove_dir_all(&dir).ok();
}

/// The largest relative norm difference `|a - b| / |a|` over two runs' final tensors (same
/// names, same order), and the tensor's name.
fn max_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> (f64, String) {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((na, va), (nb, vb))| {
            assert_eq!(na, nb);
            let d: f64 = va
                .iter()
                .zip(vb)
                .map(|(x, y)| ((x - y) as f64).powi(2))
                .sum();
            let n: f64 = va.iter().map(|x| (*x as f64).powi(2)).sum();
            ((d / n.max(1e-30)).sqrt(), na.clone())
        })
        .fold((0.0, String::new()), |m, x| if x.0 > m.0 { x } else { m })
}

/// The stage on `ranks` threads of `be`s (each rank its own backend, as each GPU has).
fn run_ranks(
    ranks: usize,
    cfg: &Config,
    be: impl Fn() -> Box<dyn insclr::backend::Backend> + Sync,
    opts: &RunOptions,
) -> anyhow::Result<train::Summary> {
    let out = insclr::dist::threads::run(ranks, |comm| {
        train::run_rank(cfg.clone(), be().as_ref(), comm, opts)
    })?;
    Ok(out.into_iter().next().unwrap())
}

/// Issue 30: the batch split over 2 ranks (each describes and back-propagates half of it,
/// F and G all-gathered, gradients all-reduced) trains the model 1 rank trains, and rank 0
/// alone writes the run: one log, one checkpoint series, one final model.
///
/// With frozen BatchNorm statistics nothing depends on the split but the order of additions:
/// every parameter tensor agrees to 1e-5 (relative norm) after 4 Adam steps. With batch
/// statistics and `BN_GHOST_GROUPS = 2` a rank's half is one statistics group, as on one rank:
/// the losses still agree to 1e-5, but a BatchNorm bias whose gradient cancels to rounding
/// (another BatchNorm follows it) takes Adam steps of +-lr from rounding noise alone, so its
/// tensor is only held to 1e-3 (the same effect as CPU against GPU, see
/// `device_train_matches_cpu`).
fn two_ranks_train_what_one_trains(v2: bool, freeze_bn: bool) {
    let tag = format!(
        "ranks-{}-{}",
        if v2 { "v2" } else { "v1" },
        if freeze_bn { "frozen" } else { "ghost" }
    );
    let dir = tmpdir(&tag);
    let pool = make_data(&dir);
    let cfg = |out: &str| {
        let mut c = config(&dir, &pool, out, v2, 4);
        c.model.backbone.freeze_bn = freeze_bn;
        c
    };
    let cpu = || Box::new(insclr::backend::CpuBackend::new()) as Box<dyn insclr::backend::Backend>;
    let one = train::run(cfg("one"), cpu().as_ref(), &quiet(false)).unwrap();
    let two = run_ranks(2, &cfg("two"), cpu, &quiet(false)).unwrap();
    assert_eq!((one.steps_run, two.steps_run), (4, 4));
    let (a, b) = (log_lines(&dir, "one"), log_lines(&dir, "two"));
    assert_eq!(b.len(), 4, "one log line per step");
    for (x, y) in a.iter().zip(&b) {
        let (lx, ly) = (x["loss"].as_f64().unwrap(), y["loss"].as_f64().unwrap());
        assert!(
            (lx - ly).abs() <= 1e-5 * lx.abs().max(1.0),
            "step {}: 1 rank {lx}, 2 ranks {ly}",
            x["step"]
        );
        for key in [
            "images",
            "batch_pos",
            "batch_neg",
            "rejected",
            "memory_size",
            "selected_pos",
        ] {
            assert_eq!(x[key], y[key], "step {}: {key}", x["step"]);
        }
    }
    let (d, name) = max_diff(&final_tensors(&dir, "one"), &final_tensors(&dir, "two"));
    common::log(&format!(
        "{tag}: 1 rank vs 2 ranks, largest relative difference {d:.2e} ({name})"
    ));
    let tol = if freeze_bn { 1e-5 } else { 1e-3 };
    assert!(d <= tol, "{name} differs by {d:.2e} (relative norm)");
    let listing = |run: &str| {
        let mut f: Vec<String> = std::fs::read_dir(dir.join(run).join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        f.sort();
        f
    };
    assert_eq!(listing("two"), listing("one"), "one checkpoint series");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn two_ranks_train_what_one_trains_v1() {
    two_ranks_train_what_one_trains(false, true);
    two_ranks_train_what_one_trains(false, false);
}

#[test]
fn two_ranks_train_what_one_trains_v2() {
    two_ranks_train_what_one_trains(true, true);
    two_ranks_train_what_one_trains(true, false);
}

/// A rank's collectives that fail at its `at`-th all-gather, as a rank whose process died.
struct DiesAt<'a> {
    inner: &'a dyn insclr::dist::Collective,
    at: usize,
    gathers: std::sync::atomic::AtomicUsize,
}

impl insclr::dist::Collective for DiesAt<'_> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world(&self) -> usize {
        self.inner.world()
    }
    fn all_gather_bytes(&self, part: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
        let n = 1 + self
            .gathers
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n == self.at {
            anyhow::bail!("lost the GPU");
        }
        self.inner.all_gather_bytes(part)
    }
    fn all_reduce_sum(&self, x: &mut [f32]) -> anyhow::Result<()> {
        self.inner.all_reduce_sum(x)
    }
    fn broadcast(&self, x: &mut [f32], root: usize) -> anyhow::Result<()> {
        self.inner.broadcast(x, root)
    }
    fn abort(&self, why: &str) {
        self.inner.abort(why)
    }
}

/// Issue 30: rank 1 dies in step 3 (its 5th all-gather: the start, the resume check, then F
/// of steps 1..3); rank 0 stops with an error naming it instead of waiting, keeps the step-2
/// checkpoint, and `--resume` on 2 ranks ends exactly as the uninterrupted 2-rank run. A
/// resume on another number of ranks is refused (the BatchNorm groups would change).
#[test]
fn a_dead_rank_stops_the_others_and_the_run_resumes() {
    let dir = tmpdir("ranks-dead");
    let pool = make_data(&dir);
    let cpu = || Box::new(insclr::backend::CpuBackend::new()) as Box<dyn insclr::backend::Backend>;
    run_ranks(
        2,
        &config(&dir, &pool, "whole", false, 4),
        cpu,
        &quiet(false),
    )
    .unwrap();
    let cfg = config(&dir, &pool, "cut", false, 4);
    let e = insclr::dist::threads::run(2, |comm| {
        let dies = DiesAt {
            inner: comm,
            at: if comm.rank() == 1 { 5 } else { 0 },
            gathers: Default::default(),
        };
        train::run_rank(cfg.clone(), cpu().as_ref(), &dies, &quiet(false))
    })
    .unwrap_err();
    let text = format!("{e:#}");
    assert!(
        text.starts_with("rank 1 of 2 failed") && text.contains("lost the GPU"),
        "{text}"
    );
    assert_eq!(log_losses(&dir, "cut").len(), 2, "steps 1 and 2 kept");
    let e = train::run(cfg.clone(), cpu().as_ref(), &quiet(true)).unwrap_err();
    assert!(format!("{e:#}").contains("ranks (--gpus): 2 -> 1"), "{e:#}");
    let r = run_ranks(2, &cfg, cpu, &quiet(true)).unwrap();
    assert_eq!((r.resumed_from, r.steps_run), (Some(2), 2));
    assert_eq!(log_losses(&dir, "cut"), log_losses(&dir, "whole"));
    assert_eq!(final_tensors(&dir, "cut"), final_tensors(&dir, "whole"));
    std::fs::remove_dir_all(&dir).ok();
}

/// Ghost BatchNorm groups that the ranks cannot share are refused by name.
#[test]
fn ranks_that_cannot_split_the_statistics_groups_are_refused() {
    let dir = tmpdir("ranks-ghost");
    let pool = make_data(&dir);
    let cpu = || Box::new(insclr::backend::CpuBackend::new()) as Box<dyn insclr::backend::Backend>;
    let e = run_ranks(
        3,
        &config(&dir, &pool, "three", false, 2),
        cpu,
        &quiet(false),
    )
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("BN_GHOST_GROUPS = 2 cannot be split over 3 ranks"),
        "{e:#}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
