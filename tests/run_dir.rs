//! A run directory belongs to one run (issue 12): a fresh run refuses a used OUTPUT_DIR unless
//! `--overwrite` (which deletes only what a run wrote, issue 27), `--resume` refuses a changed
//! config key or input file and names it, a failed checkpoint write leaves no `*.tmp`, stale
//! files are removed on the next start, the summary names the tensors left at random
//! initialisation, and `import-weights X X` is refused.

mod common;

use insclr::mining::CandidatePool;
use insclr::rng::Rng;
use insclr::train::{self, Config, RunOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("insclr-rundir-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Descriptors of 8 images in 4 groups (a direction per group plus noise), unit norm.
fn features(seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..8)
        .flat_map(|i| {
            let mut v: Vec<f32> = (0..4)
                .map(|t| if t == i % 4 { 1.0 } else { 0.0 } + 0.2 * r.normal())
                .collect();
            let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
            v.iter_mut().for_each(|a| *a /= n);
            v
        })
        .collect()
}

fn write_pool(path: &Path, seed: u64) {
    let be = insclr::backend::cpu();
    let pool = CandidatePool::compute(be, &features(seed), 8, 4, 4, 64, &mut |_| {}).unwrap();
    pool.save(path).unwrap();
}

/// 8 small PNGs (a colour per group, noise per image) and their candidate pool.
fn make_data(dir: &Path) {
    common::write_group_pngs(&dir.join("images"));
    write_pool(&dir.join("pool.npz"), 5);
}

fn config(dir: &Path, max_step: usize, lr: f64) -> Config {
    Config::parse(
        &common::tiny_stage_toml(dir, max_step, lr, "random", ""),
        "test.toml",
    )
    .unwrap()
}

fn opts(resume: bool, overwrite: bool) -> RunOptions {
    RunOptions {
        resume,
        overwrite,
        quiet: true,
        ..RunOptions::default()
    }
}

fn run(cfg: Config, o: RunOptions) -> anyhow::Result<train::Summary> {
    train::run(cfg, insclr::backend::cpu(), &o)
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn log_steps(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("out/log.jsonl"))
        .unwrap()
        .lines()
        .count()
}

#[test]
fn fresh_run_refuses_a_used_output_dir_and_overwrite_clears_it() {
    let dir = tmpdir("fresh");
    make_data(&dir);
    run(config(&dir, 2, 1e-3), opts(false, false)).unwrap();
    std::fs::write(dir.join("out/notes.txt"), "from the old run").unwrap();

    let e = format!(
        "{:#}",
        run(config(&dir, 2, 1e-3), opts(false, false)).unwrap_err()
    );
    let out = dir.join("out").display().to_string();
    assert!(
        e.contains(&out) && e.contains("--resume") && e.contains("--overwrite"),
        "{e}"
    );
    assert!(
        dir.join("out/notes.txt").exists(),
        "a refusal deletes nothing"
    );

    // --overwrite deletes only what the run wrote: a file of the user's stops it, named.
    let e = format!(
        "{:#}",
        run(config(&dir, 2, 1e-3), opts(false, true)).unwrap_err()
    );
    assert!(
        e.contains("no run of insclr-cu wrote") && e.contains("notes.txt"),
        "{e}"
    );
    assert!(
        dir.join("out/notes.txt").exists(),
        "a refusal deletes nothing"
    );
    assert!(dir.join("out/model_final.safetensors").exists());
    std::fs::remove_file(dir.join("out/notes.txt")).unwrap();
    let s = run(config(&dir, 2, 1e-3), opts(false, true)).unwrap();
    assert_eq!((s.steps_run, s.resumed_from), (2, None));
    assert!(
        s.removed.contains(&dir.join("out/model_final.safetensors")),
        "{:?}",
        s.removed
    );
    assert_eq!(log_steps(&dir), 2);
    assert!(dir.join("out/run.json").exists());

    // --overwrite never deletes what the run reads.
    let mut cfg = config(&dir, 2, 1e-3);
    std::fs::copy(dir.join("pool.npz"), dir.join("out/pool.npz")).unwrap();
    cfg.neighbor.src = dir.join("out/pool.npz").display().to_string();
    let e = format!("{:#}", run(cfg, opts(false, true)).unwrap_err());
    assert!(
        e.contains("NEIGHBOR.SRC") && e.contains("--overwrite"),
        "{e}"
    );
    assert!(dir.join("out/pool.npz").exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn resume_with_a_changed_config_key_is_refused_naming_it() {
    let dir = tmpdir("key");
    make_data(&dir);
    run(config(&dir, 2, 1e-3), opts(false, false)).unwrap();
    let e = format!(
        "{:#}",
        run(config(&dir, 4, 2e-3), opts(true, false)).unwrap_err()
    );
    assert!(e.contains("SOLVER.BASE_LR: 0.001 -> 0.002"), "{e}");
    assert!(!e.contains("MAX_STEP"), "a longer run is the same run: {e}");
    assert_eq!(log_steps(&dir), 2, "nothing ran");
    // The same config continues.
    let s = run(config(&dir, 4, 1e-3), opts(true, false)).unwrap();
    assert_eq!((s.resumed_from, s.steps_run), (Some(2), 2));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn resume_with_a_changed_pool_file_is_refused_naming_it() {
    let dir = tmpdir("pool");
    make_data(&dir);
    run(config(&dir, 2, 1e-3), opts(false, false)).unwrap();
    write_pool(&dir.join("pool.npz"), 6);
    let e = format!(
        "{:#}",
        run(config(&dir, 4, 1e-3), opts(true, false)).unwrap_err()
    );
    let pool = dir.join("pool.npz").display().to_string();
    assert!(
        e.contains("NEIGHBOR.SRC") && e.contains(&pool) && e.contains("changed"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn failed_checkpoint_write_leaves_no_tmp_and_stale_files_go_on_resume() {
    let dir = tmpdir("stale");
    make_data(&dir);
    run(config(&dir, 2, 1e-3), opts(false, false)).unwrap();
    let ck = dir.join("out/checkpoints");
    // The banks of step 4 cannot be renamed into place (as when the disk is full).
    let blocker = ck.join("checkpoint_0000004.memory.npz");
    std::fs::create_dir_all(blocker.join("x")).unwrap();
    assert!(run(config(&dir, 4, 1e-3), opts(true, false)).is_err());
    let tmp: Vec<PathBuf> = files(&dir.join("out"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(tmp.is_empty(), "left behind: {tmp:?}");
    std::fs::remove_dir_all(&blocker).unwrap();

    // Debris of an earlier crash: temporary files and banks without their checkpoint.
    let stale = [
        ck.join("checkpoint_0000006.memory.npz"),
        ck.join("checkpoint_0000004.safetensors.tmp"),
        dir.join("out/model_final.safetensors.tmp"),
    ];
    for p in &stale {
        std::fs::write(p, b"partial").unwrap();
    }
    let s = run(config(&dir, 4, 1e-3), opts(true, false)).unwrap();
    assert_eq!(s.resumed_from, Some(2));
    let mut removed = s.removed.clone();
    removed.sort();
    let mut want = stale.to_vec();
    want.sort();
    assert_eq!(removed, want);
    assert!(stale.iter().all(|p| !p.exists()));
    assert!(ck.join("checkpoint_0000002.memory.npz").exists(), "kept");
    std::fs::remove_dir_all(&dir).ok();
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_insclr-cu"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap()
}

/// Through the command line: a stage starting from a previous stage's weights without the
/// head says the head was left at random initialisation; `--overwrite` is accepted and a
/// second fresh run is refused.
#[test]
fn train_summary_names_the_tensors_left_at_random_initialisation() {
    let dir = tmpdir("summary");
    make_data(&dir);
    std::fs::write(
        dir.join("stage1.toml"),
        common::tiny_stage_toml(&dir, 2, 1e-3, "random", ""),
    )
    .unwrap();
    let c1 = dir.join("stage1.toml").display().to_string();
    let o = cli(&["--device", "cpu", "train", "--config", &c1, "--quiet"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // PRETRAIN = random: every tensor, the first 8 by name.
    assert!(
        out.contains("left at random initialisation: ") && out.contains("more)"),
        "{out}"
    );
    let weights = insclr::io::safetensors::read(&dir.join("out/model_final.safetensors")).unwrap();
    let (head, body): (Vec<_>, Vec<_>) = weights
        .into_iter()
        .partition(|t| t.name.starts_with("head."));
    assert!(!head.is_empty());
    let prev = dir.join("no-head.safetensors");
    insclr::io::safetensors::write(&prev, &body, None).unwrap();
    let text = common::tiny_stage_toml(&dir, 2, 1e-3, &prev.display().to_string(), "");
    let cfg = dir.join("stage2.toml");
    std::fs::write(&cfg, text).unwrap();
    let c = cfg.to_str().unwrap();

    let o = cli(&["--device", "cpu", "train", "--config", c, "--quiet"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the used OUTPUT_DIR is refused");
    assert!(err.contains("--overwrite"), "{err}");

    let o = cli(&[
        "--device",
        "cpu",
        "train",
        "--config",
        c,
        "--quiet",
        "--overwrite",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line = out
        .lines()
        .find(|l| l.starts_with("left at random initialisation"))
        .unwrap_or_else(|| panic!("no random-init line in {out}"));
    let names: Vec<&str> = head.iter().map(|t| t.name.as_str()).collect();
    assert!(
        line.contains(&format!("{} tensor(s)", names.len())),
        "{line}"
    );
    assert!(names.iter().all(|n| line.contains(n)), "{line}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn import_weights_refuses_the_same_file_by_path_or_link() {
    let dir = tmpdir("import");
    let src = dir.join("model.pth");
    let body = b"a checkpoint that must survive".to_vec();
    std::fs::write(&src, &body).unwrap();
    std::fs::hard_link(&src, dir.join("hard.pth")).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(&src, dir.join("soft.pth")).unwrap();
    let s = src.display().to_string();
    let dotted = format!("{}/./model.pth", dir.display());
    let mut outputs = vec![
        s.clone(),
        dotted,
        dir.join("hard.pth").display().to_string(),
    ];
    if cfg!(unix) {
        outputs.push(dir.join("soft.pth").display().to_string());
    }
    for out in &outputs {
        let o = cli(&["import-weights", &s, out]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(
            err.contains("same file") && err.contains(&s) && err.contains(out.as_str()),
            "{out}: {err}"
        );
        assert_eq!(std::fs::read(&src).unwrap(), body, "{out}");
    }
    // Another output is not "the same file" (this input is no .pth, so it fails reading).
    let o = cli(&[
        "import-weights",
        &s,
        &dir.join("new.safetensors").display().to_string(),
    ]);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("same file"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_non_finite_step_stops_the_run_naming_it_and_keeps_the_last_good_checkpoint() {
    let dir = tmpdir("nonfinite");
    make_data(&dir);
    // SGD at this rate overflows the weights in the first update, so a later step's loss or
    // gradient is not finite.
    let mut cfg = config(&dir, 6, 1e30);
    cfg.solver.name = "sgd".into();
    cfg.solver.checkpoint_period = 1;
    let e = format!("{:#}", run(cfg, opts(false, false)).unwrap_err());
    let step: usize = e
        .strip_prefix("step ")
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the error names the step: {e}"));
    assert!(step >= 2, "{e}");
    assert!(e.contains("is NaN") || e.contains("is inf"), "{e}");
    let last = step - 1;
    assert!(
        e.contains(&format!("the last checkpoint is step {last}")),
        "{e}"
    );
    let ckpts: Vec<PathBuf> = files(&dir.join("out/checkpoints"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    assert_eq!(ckpts.len(), last, "{ckpts:?}");
    assert_eq!(log_steps(&dir), last);
    let _ = std::fs::remove_dir_all(&dir);
}
