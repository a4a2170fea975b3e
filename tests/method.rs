//! End-to-end checks of the method: `insclr-cu pool`, and one step of its own work (pool,
//! selection, mining, both losses) on the CPU and on the CUDA kernels.

mod common;

use insclr::backend::{Backend, DType};
use insclr::io::npy::{self, Array};
use insclr::mining::CandidatePool;
use insclr::rng::Rng;
use std::path::PathBuf;
use std::process::Command;

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("insclr-method-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn unit_rows(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n)
        .flat_map(|_| {
            let v: Vec<f32> = (0..d).map(|_| r.normal()).collect();
            let nrm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
            v.into_iter().map(move |a| a / nrm)
        })
        .collect()
}

fn pool_cmd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_insclr-cu"))
        .arg("pool")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn pool_cli_writes_the_pool_and_warns_on_non_unit_rows() {
    let dir = tmpdir("cli");
    let (n, d, k) = (50, 8, 5);
    let mut x = unit_rows(n, d, 3);
    x[0] *= 2.0;
    x[7 * d + 3] += 0.1;
    let feats = dir.join("f.npy");
    npy::write(&feats, &Array::new(vec![n, d], x.clone()).unwrap()).unwrap();
    let out = dir.join("p.npz");
    let o = pool_cmd(&[
        "--feats",
        feats.to_str().unwrap(),
        "--k",
        "5",
        "--out",
        out.to_str().unwrap(),
        "--tile",
        "7",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("warning: 2 of 50 descriptors"), "{stderr}");
    let got = CandidatePool::load(&out, n).unwrap();
    let want =
        CandidatePool::compute(insclr::backend::cpu(), &x, n, d, k, 16, &mut |_| {}).unwrap();
    assert_eq!(got, want);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn pool_cli_errors_name_the_problem() {
    let dir = tmpdir("err");
    let feats = dir.join("f.npy");
    npy::write(&feats, &Array::new(vec![4, 2], unit_rows(4, 2, 1)).unwrap()).unwrap();
    let out = dir.join("p.npz");
    let o = pool_cmd(&[
        "--feats",
        feats.to_str().unwrap(),
        "--k",
        "4",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("k = 4") && stderr.contains("n-1 = 3"),
        "{stderr}"
    );
    let missing = dir.join("missing.npy");
    let o = pool_cmd(&[
        "--feats",
        missing.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("missing.npy"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

/// What one impr step decided and computed, for comparing backends.
#[derive(Debug)]
struct StepOut {
    batch_labels: Vec<i64>,
    mined: Vec<usize>,
    mined_labels: Vec<i64>,
    positives: usize,
    batch_loss: f32,
    memory_loss: f32,
    avg_pos: f32,
    batch_grad: Vec<f32>,
    memory_grad: Vec<f32>,
}

/// One impr (v2) step on clustered descriptors, in the original's order (trap G11): selection
/// on no-DA features, batch loss, bank writes, mining, memory loss, all on `be`.
fn impr_step(be: &dyn Backend) -> StepOut {
    use insclr::loss::{contrastive_batch, contrastive_memory, Memory, MARGIN};
    use insclr::memory::IndexedBank;
    use insclr::mining::mine::{NEGATIVE_THRESH, POSITIVE_THRESH};
    use insclr::mining::{
        select_in_batch, AnchorSampler, Batch, MineConfig, Miner, Mode, SelectionRule,
    };

    let (n, d) = (400, 12);
    // Clusters of near-duplicates, so the pool has init positives and candidates.
    let mut r = Rng::new(5);
    let centres = unit_rows(20, d, 6);
    let x: Vec<f32> = (0..n)
        .flat_map(|i| {
            let c = &centres[(i % 20) * d..(i % 20 + 1) * d];
            let v: Vec<f32> = c.iter().map(|a| a + 0.12 * r.normal()).collect();
            let nrm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
            v.into_iter().map(move |a| a / nrm)
        })
        .collect();
    let pool = CandidatePool::compute(be, &x, n, d, 40, 100, &mut |_| {}).unwrap();
    let cfg = MineConfig {
        mode: Mode::parse("b+i_tr4_avg0.60_k05").unwrap(),
        get_size: 150,
        use_negative: true,
    };
    let miner = Miner::new(pool, POSITIVE_THRESH, NEGATIVE_THRESH, cfg);
    let all: Vec<usize> = (0..n).collect();
    let mut da = IndexedBank::new(be, n, d).unwrap();
    let mut noda = IndexedBank::new(be, n, d).unwrap();
    let xb = be.upload(&x).unwrap();
    da.write(be, &all, &xb).unwrap();
    noda.write(be, &all, &xb).unwrap();

    let mut sampler = AnchorSampler::new(n, 4, 42).unwrap();
    let mut batch = Batch::new(&miner.pool, &sampler.next_batch(), 3).unwrap();
    // Bank rows stand in for the no-DA (g) and DA (f) forward passes.
    let gb = noda.gather(be, &batch.indices).unwrap();
    let fb = da.gather(be, &batch.indices).unwrap();
    let f_len = fb.len();
    select_in_batch(be, &mut batch, &gb, d, SelectionRule::Fixed(0.6)).unwrap();
    let mut dfb = be.zeros(DType::F32, f_len).unwrap();
    let lb = contrastive_batch(be, &fb, &batch.labels, d, MARGIN, Some(&mut dfb)).unwrap();
    da.write(be, &batch.indices, &fb).unwrap();
    noda.write(be, &batch.indices, &gb).unwrap();
    assert!(batch.indices.iter().all(|&i| noda.counter(i) == 2));
    let m = miner
        .mine(be, &noda, &batch.indices, &batch.labels, &mut Rng::new(1))
        .unwrap();
    assert_eq!(m.indices.len(), 150usize.max(m.positives() + m.hard));
    let mem = da.gather(be, &m.indices).unwrap();
    let mut dfm = be.zeros(DType::F32, f_len).unwrap();
    let lm = contrastive_memory(
        be,
        &fb,
        &batch.labels,
        Memory {
            x: &mem,
            y: &m.labels,
        },
        d,
        MARGIN,
        Some(&mut dfm),
    )
    .unwrap();
    StepOut {
        positives: m.positives(),
        batch_labels: batch.labels,
        mined: m.indices,
        mined_labels: m.labels,
        batch_loss: lb.value,
        memory_loss: lm.value,
        avg_pos: lm.avg_pos,
        batch_grad: be.download(&dfb).unwrap(),
        memory_grad: be.download(&dfm).unwrap(),
    }
}

#[test]
fn one_impr_step_runs_in_the_original_order() {
    let out = impr_step(insclr::backend::cpu());
    assert!(
        out.positives > 0,
        "near-duplicate clusters must give positives"
    );
    assert!(
        out.avg_pos > 0.0,
        "mined positives must meet their tuple rows"
    );
    let total = out.batch_loss + out.memory_loss;
    assert!(total.is_finite() && total > 0.0);
    let grad = &out.memory_grad;
    assert!(grad.iter().all(|v| v.is_finite()) && grad.iter().any(|&v| v != 0.0));
}

/// The method's part of a step on the CUDA kernels (the GPU, or the emulated GPU without one)
/// makes the CPU's decisions and computes its losses and gradients.
#[test]
fn kernel_impr_step_matches_cpu() {
    let dev = common::kernel_device("kernel_impr_step_matches_cpu");
    let want = impr_step(insclr::backend::cpu());
    let got = impr_step(&dev);
    assert_eq!(got.batch_labels, want.batch_labels, "in-batch selection");
    assert_eq!(got.mined, want.mined, "mined memory rows");
    assert_eq!(got.mined_labels, want.mined_labels, "mined labels");
    assert_eq!(got.positives, want.positives, "mined positives");
    for (name, g, w) in [
        ("batch loss", got.batch_loss, want.batch_loss),
        ("memory loss", got.memory_loss, want.memory_loss),
        ("positives per row", got.avg_pos, want.avg_pos),
    ] {
        assert!(
            (g - w).abs() <= 1e-5 * w.abs().max(1.0),
            "{name}: {g} vs {w}"
        );
    }
    assert!(common::rel_err(&got.batch_grad, &want.batch_grad) < 1e-5);
    assert!(common::rel_err(&got.memory_grad, &want.memory_grad) < 1e-5);
}
