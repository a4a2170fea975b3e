//! `insclr-cu pipeline` (issue 11): the stages chained in one command on the GLDv2 layout
//! (tests/data/gldv2, real photos, made by scripts/make-gldv2-fixture.py), on the emulated GPU,
//! killed with SIGKILL in stage 2 and started again (the same final model as an uninterrupted
//! run), and refusing to continue with a changed plan, stage config or output.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("insclr-pipeline-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_insclr-cu"))
}

fn pipeline(plan: &Path, device: &str) -> Output {
    bin()
        .args(["--device", device, "pipeline", "--quiet", "--config"])
        .arg(plan)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gldv2")
}

/// A tiny stage config (resnet-custom, 32 px, XBM v1) in `dir/stage.toml`; the pipeline sets
/// its OUTPUT_DIR, DATA and NEIGHBOR.SRC.
fn stage_config(dir: &Path, max_step: usize) -> PathBuf {
    let path = dir.join("stage.toml");
    std::fs::write(
        &path,
        common::tiny_stage_toml(dir, max_step, 1e-3, "random", ""),
    )
    .unwrap();
    path
}

/// A plan of `stages` (NAME, extra lines) on `data` (ROOT, TRAIN_FILENAME) with `eval`.
fn plan(
    dir: &Path,
    stage: &Path,
    data: (&Path, &str),
    eval: &str,
    stages: &[(&str, &str)],
) -> PathBuf {
    let mut s = format!(
        "OUTPUT_DIR = {:?}\n[DATA]\nROOT = {:?}\nTRAIN_FILENAME = {:?}\n\
         [POOL]\nK = 4\nEXACT_SIZE = [40, 48]\nSCALES = [1.0, 0.7071]\n{eval}\n",
        dir.join("run").display().to_string(),
        data.0.display().to_string(),
        data.1
    );
    for (name, extra) in stages {
        s += &format!(
            "[[STAGE]]\nNAME = {name:?}\nCONFIG = {:?}\n{extra}\n",
            stage.display().to_string()
        );
    }
    let path = dir.join("plan.toml");
    std::fs::write(&path, s).unwrap();
    path
}

/// The 8 group PNGs of the run tests and a list ground truth over them (query i's positive is
/// the other image of its group).
fn tiny_images(dir: &Path) -> String {
    common::write_group_pngs(&dir.join("images"));
    let names: Vec<String> = (0..8).map(|i| format!("img_{i}.png")).collect();
    let gnd = serde_json::json!({
        "imlist": names,
        "qimlist": names[..4],
        "gnd": (0..4).map(|i| serde_json::json!({"ok": [i + 4], "junk": [i]})).collect::<Vec<_>>(),
    });
    let g = dir.join("gnd.json");
    std::fs::write(&g, gnd.to_string()).unwrap();
    format!(
        "[EVAL]\nDATASET = \"list\"\nROOT = {:?}\nGND = {:?}\nIMG_SIZE = 40\nSCALES = [1.0]\n",
        dir.join("images").display().to_string(),
        g.display().to_string()
    )
}

fn final_crc(out: &str) -> String {
    let at = out
        .find("crc32 ")
        .expect("the final model's crc32 is printed");
    out[at + 6..at + 14].to_string()
}

#[test]
fn gldv2_fixture_trains_and_evaluates_through_the_gldv2_readers() {
    let dir = tmpdir("gldv2");
    let stage = stage_config(&dir, 4);
    let fx = fixture();
    let eval = format!(
        "[EVAL]\nDATASET = \"gldv2\"\nROOT = {:?}\nIMG_SIZE = 48\nSCALES = [1.0]\n",
        fx.display().to_string()
    );
    let plan = plan(
        &dir,
        &stage,
        (&fx.join("train"), "train_clean.csv"),
        &eval,
        &[("s1", "")],
    );
    let o = pipeline(&plan, "cpu");
    let out = text(&o);
    assert!(o.status.success(), "{out}");

    // The training set is train_clean.csv's landmarks of 15 or more images, in file order, at
    // GLDv2's nested paths: landmark 27's 15, then 44's 15; 31 has 14 and is left out.
    let csv = std::fs::read_to_string(fx.join("train/train_clean.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split_once(',').unwrap().1.split(' ').collect())
        .collect();
    assert_eq!((rows[0].len(), rows[1].len(), rows[2].len()), (15, 14, 15));
    let want: Vec<PathBuf> = rows[0]
        .iter()
        .chain(&rows[2])
        .map(|id| {
            let c: Vec<String> = id.chars().take(3).map(String::from).collect();
            fx.join("train")
                .join(&c[0])
                .join(&c[1])
                .join(&c[2])
                .join(format!("{id}.jpg"))
        })
        .collect();
    for stage in ["s0", "s1"] {
        let listed = std::fs::read_to_string(dir.join(format!("run/{stage}/feature.txt")))
            .unwrap_or_default();
        if stage == "s1" {
            assert!(listed.is_empty(), "the last stage needs no pool");
            continue;
        }
        let listed: Vec<PathBuf> = listed.lines().map(PathBuf::from).collect();
        assert_eq!(listed, want);
    }
    let pool = insclr::mining::CandidatePool::load(&dir.join("run/s0/neighbor.npz"), 30).unwrap();
    assert_eq!((pool.n, pool.k), (30, 4));

    // Retrieval through the GLDv2 solution: 2 Public queries, 1 Private (the Ignored row is
    // dropped), scored before and after the stage.
    for stage in ["s0", "s1"] {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("run/{stage}/eval.json"))).unwrap(),
        )
        .unwrap();
        let r = v["results"].as_array().unwrap();
        let splits: Vec<(&str, u64)> = r
            .iter()
            .map(|x| (x["split"].as_str().unwrap(), x["queries"].as_u64().unwrap()))
            .collect();
        assert_eq!(splits, [("Public", 2), ("Private", 1)], "{stage}");
        assert!(r
            .iter()
            .all(|x| (0.0..=1.0).contains(&x["map_at_100"].as_f64().unwrap())));
    }
    let log = std::fs::read_to_string(dir.join("run/s1/train/log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 4);
    assert!(
        out.contains("mAP Public") && out.contains("mAP Private"),
        "{out}"
    );
    let plot = std::fs::read_to_string(dir.join("run/plot.svg")).unwrap();
    assert!(plot.contains("mAP Public after each stage"), "{plot}");
    assert!(dir.join("run/s1/train/plot.svg").exists());
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run/pipeline.json")).unwrap())
            .unwrap();
    let steps: Vec<&str> = state["done"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "s0/model",
            "s0/features",
            "s0/pool",
            "s0/eval",
            "s1/train",
            "s1/eval"
        ]
    );

    // Started again, every step is done and the result is the same.
    let again = pipeline(&plan, "cpu");
    let again_out = text(&again);
    assert!(again.status.success(), "{again_out}");
    assert_eq!(again_out.matches("done before").count(), 6, "{again_out}");
    assert_eq!(final_crc(&again_out), final_crc(&out));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_stage_pipeline_runs_on_the_emulated_gpu() {
    let dir = tmpdir("emu");
    let stage = stage_config(&dir, 2);
    // The pools verified too: [POOL]'s VERIFY_TOP lines go before [EVAL].
    let eval = format!(
        "VERIFY_TOP = 2\nLOCAL = 8\nLOCAL_LAYER = \"mid\"\n{}",
        tiny_images(&dir)
    );
    let plan = plan(
        &dir,
        &stage,
        (&dir.join("images"), ""),
        &eval,
        &[("s1", ""), ("s2", "SET = [\"SEED=4\"]")],
    );
    let o = pipeline(&plan, "emu");
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    common::log("RAN pipeline two_stage_pipeline_runs_on_the_emulated_gpu on emu");
    assert_eq!(
        out.matches("pool: verified the top 2 of 8 images (16 pairs")
            .count(),
        2,
        "{out}"
    );
    assert!(dir.join("run/s1/feature.local.npz").exists());
    assert!(
        out.contains("backend emu") || out.contains("backend: emu"),
        "{out}"
    );
    for step in ["s0/eval", "s1/train", "s1/pool", "s2/train", "s2/eval"] {
        assert!(
            out.contains(&format!("] {step}")),
            "{step} did not run: {out}"
        );
    }
    let table: Vec<&str> = out.lines().filter(|l| l.starts_with("s")).collect();
    assert!(
        table
            .iter()
            .any(|l| l.starts_with("s2") && l.contains("after s2")),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_pipeline_killed_in_stage_2_ends_with_the_same_model_as_one_that_was_not() {
    let whole_dir = tmpdir("whole");
    let killed_dir = tmpdir("killed");
    let mut crcs = Vec::new();
    for (dir, kill) in [(&whole_dir, false), (&killed_dir, true)] {
        let stage = stage_config(dir, 6);
        let eval = tiny_images(dir);
        let plan = plan(
            dir,
            &stage,
            (&dir.join("images"), ""),
            &eval,
            &[
                ("s1", ""),
                (
                    "s2",
                    "SET = [\"SOLVER.MAX_STEP=300\", \"SOLVER.CHECKPOINT_PERIOD=5\"]",
                ),
            ],
        );
        if kill {
            let mut child = bin()
                .args(["--device", "cpu", "pipeline", "--quiet", "--config"])
                .arg(&plan)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let ckpt = dir.join("run/s2/train/checkpoints");
            loop {
                let has = std::fs::read_dir(&ckpt).is_ok_and(|d| {
                    d.flatten()
                        .any(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                });
                if has {
                    break;
                }
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "the pipeline ended before stage 2 wrote a checkpoint"
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            child.kill().unwrap(); // SIGKILL
            let status = child.wait().unwrap();
            assert!(!status.success(), "killed before it finished");
            let state = std::fs::read_to_string(dir.join("run/pipeline.json")).unwrap();
            assert!(
                state.contains("s1/eval") && !state.contains("s2/train"),
                "killed inside s2/train: {state}"
            );
        }
        let o = pipeline(&plan, "cpu");
        let out = text(&o);
        assert!(o.status.success(), "{out}");
        if kill {
            assert!(out.contains("resumed from step"), "{out}");
            assert_eq!(out.matches("done before").count(), 8, "{out}");
        }
        crcs.push(final_crc(&out));
    }
    assert_eq!(crcs[0], crcs[1]);
    let _ = std::fs::remove_dir_all(&whole_dir);
    let _ = std::fs::remove_dir_all(&killed_dir);
}

/// A first run whose first step fails leaves no state behind, so the corrected stage config
/// (or plan) starts in the same folder instead of being refused as another plan.
#[test]
fn a_pipeline_whose_first_step_fails_can_be_corrected_in_place() {
    let dir = tmpdir("first-fails");
    let stage = stage_config(&dir, 2);
    let eval = tiny_images(&dir);
    let data = dir.join("images");
    let good = std::fs::read_to_string(&stage).unwrap();
    // Weights that are no weights file: the starting model (step s0/model) fails to load.
    let not_weights = dir.join("gnd.json").display().to_string();
    let bad = good.replace(
        "PRETRAIN = \"random\"",
        &format!("PRETRAIN = {not_weights:?}"),
    );
    assert_ne!(bad, good);
    std::fs::write(&stage, bad).unwrap();
    let plan_path = plan(&dir, &stage, (&data, ""), &eval, &[("s1", "")]);
    let o = pipeline(&plan_path, "cpu");
    assert!(
        !o.status.success() && text(&o).contains("pipeline step s0/model"),
        "{}",
        text(&o)
    );
    assert!(!dir.join("run/pipeline.json").exists(), "{}", text(&o));
    std::fs::write(&stage, &good).unwrap();
    let o = pipeline(&plan_path, "cpu");
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_changed_plan_stage_config_or_output_is_refused() {
    let dir = tmpdir("refuse");
    let stage = stage_config(&dir, 2);
    let eval = tiny_images(&dir);
    let data = dir.join("images");
    let plan_path = plan(&dir, &stage, (&data, ""), &eval, &[("s1", "")]);
    let o = pipeline(&plan_path, "cpu");
    assert!(o.status.success(), "{}", text(&o));

    let stage_text = std::fs::read_to_string(&stage).unwrap();
    std::fs::write(&stage, stage_text.replace("SEED = 3", "SEED = 4")).unwrap();
    let o = pipeline(&plan_path, "cpu");
    assert!(!o.status.success());
    assert!(
        text(&o).contains("changed since this pipeline started"),
        "{}",
        text(&o)
    );
    std::fs::write(&stage, &stage_text).unwrap();

    plan(
        &dir,
        &stage,
        (&data, ""),
        &eval,
        &[("s1", "SET = [\"SEED=9\"]")],
    );
    let o = pipeline(&plan_path, "cpu");
    assert!(
        text(&o).contains("was started with another plan")
            && text(&o).contains("STAGE[0].SET: [] -> [\"SEED=9\"]"),
        "{}",
        text(&o)
    );
    plan(&dir, &stage, (&data, ""), &eval, &[("s1", "")]);
    // Another precision is another plan; an unknown one is refused before anything runs.
    let with_precision = |p: &str| {
        bin()
            .args(["--device", "cpu", "pipeline", "--quiet", "--precision", p])
            .arg("--config")
            .arg(&plan_path)
            .output()
            .unwrap()
    };
    let o = with_precision("bf16");
    assert!(
        text(&o).contains("was started with another plan")
            && text(&o).contains("PRECISION: \"f32\" -> \"bf16\""),
        "{}",
        text(&o)
    );
    let o = with_precision("fp16");
    assert!(
        text(&o).contains("PRECISION = \"fp16\": use \"f32\" or \"bf16\""),
        "{}",
        text(&o)
    );

    let pool = dir.join("run/s0/neighbor.npz");
    let mut bytes = std::fs::read(&pool).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&pool, bytes).unwrap();
    let o = pipeline(&plan_path, "cpu");
    assert!(
        text(&o).contains("changed after step s0/pool wrote it"),
        "{}",
        text(&o)
    );

    let o = bin()
        .args([
            "--device",
            "cpu",
            "pipeline",
            "--quiet",
            "--overwrite",
            "--config",
        ])
        .arg(&plan_path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));

    plan(
        &dir,
        &stage,
        (&data, ""),
        &eval,
        &[("s1", "SET = [\"NEIGHBOR.SRC=x.npz\"]")],
    );
    let o = pipeline(&plan_path, "cpu");
    assert!(
        text(&o).contains("NEIGHBOR.SRC is the pipeline's to set"),
        "{}",
        text(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_image_that_cannot_be_described_is_left_out_and_counted() {
    let dir = tmpdir("corrupt");
    let data = dir.join("gldv2");
    let fx = fixture();
    let copy = Command::new("cp")
        .arg("-r")
        .arg(fx.join("train"))
        .arg(&data)
        .status()
        .unwrap();
    assert!(copy.success());
    // The third image of the first landmark: dataset index 2, cut to half a JPEG.
    let csv = std::fs::read_to_string(data.join("train_clean.csv")).unwrap();
    let id = csv
        .lines()
        .nth(1)
        .unwrap()
        .split([',', ' '])
        .nth(3)
        .unwrap();
    let bad = data.join(format!("{}/{}/{}/{id}.jpg", &id[..1], &id[1..2], &id[2..3]));
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();

    let stage = stage_config(&dir, 2);
    let plan = plan(&dir, &stage, (&data, "train_clean.csv"), "", &[("s1", "")]);
    let o = pipeline(&plan, "cpu");
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let listed = std::fs::read_to_string(dir.join("run/s0/feature.bad.txt")).unwrap();
    assert!(listed.contains(id), "{listed}");
    let rows = std::fs::read_to_string(dir.join("run/s0/feature.txt")).unwrap();
    assert_eq!(rows.lines().count(), 29);
    let pool = insclr::mining::CandidatePool::load(&dir.join("run/s0/neighbor.npz"), 30).unwrap();
    assert_eq!(pool.neighbors(2), [2; 4]);
    assert!((0..30)
        .filter(|&i| i != 2)
        .all(|i| !pool.neighbors(i).contains(&2)));
    assert!(out.contains("1 image(s) without a descriptor"), "{out}");
    assert!(out.contains("1 image(s) skipped"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 30, end to end through the command line: `extract`, `pool` and `train --gpus 2` on
/// the emulated GPU (the ranks are threads) make one descriptor matrix, one pool, one run
/// (one log, one checkpoint series, one final model) that `report` reads; and `pipeline
/// --gpus 2 --device cpu` splits its extract, pool and train steps the same way.
#[test]
fn commands_split_over_two_ranks_run_end_to_end() {
    let dir = tmpdir("ranks");
    common::write_group_pngs(&dir.join("images"));
    let run = |args: &[&str]| {
        let o = bin().args(args).output().unwrap();
        let out = text(&o);
        assert!(o.status.success(), "{args:?}: {out}");
        out
    };
    let (feats, pool) = (dir.join("feats.npy"), dir.join("pool.npz"));
    let (images, feats_s, pool_s) = (
        dir.join("images").display().to_string(),
        feats.display().to_string(),
        pool.display().to_string(),
    );
    let out = run(&[
        "--device",
        "emu",
        "extract",
        "--quiet",
        "--gpus",
        "2",
        "--img-size",
        "32",
        "--images",
        &images,
        "--out",
        &feats_s,
    ]);
    assert!(out.contains("2 ranks"), "{out}");
    let out = run(&[
        "--device", "emu", "pool", "--gpus", "2", "--k", "2", "--feats", &feats_s, "--out", &pool_s,
    ]);
    assert!(out.contains("2 ranks"), "{out}");
    let stage = dir.join("stage.toml");
    std::fs::write(&stage, common::tiny_stage_toml(&dir, 4, 1e-3, "random", "")).unwrap();
    let stage_s = stage.display().to_string();
    let out = run(&[
        "--device", "emu", "train", "--quiet", "--gpus", "2", "--config", &stage_s,
    ]);
    common::log("RAN commands_split_over_two_ranks_run_end_to_end on emu");
    assert!(
        out.contains("backend emu") && out.contains("2 ranks"),
        "{out}"
    );
    assert_eq!(
        out.matches("trained 4 steps").count(),
        1,
        "rank 0 alone reports: {out}"
    );
    let log = std::fs::read_to_string(dir.join("out/log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 4, "one log line per step");
    let mut checkpoints: Vec<String> = std::fs::read_dir(dir.join("out/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    checkpoints.sort();
    assert_eq!(
        checkpoints,
        [
            "checkpoint_0000002.memory.npz",
            "checkpoint_0000002.safetensors",
            "checkpoint_0000004.memory.npz",
            "checkpoint_0000004.safetensors"
        ]
    );
    let out = run(&[
        "--device",
        "cpu",
        "report",
        &dir.join("out").display().to_string(),
    ]);
    assert!(dir.join("out/report.html").exists(), "{out}");

    let stage2 = stage_config(&dir, 2);
    let eval = tiny_images(&dir);
    let plan = plan(
        &dir,
        &stage2,
        (&dir.join("images"), ""),
        &eval,
        &[("s1", "")],
    );
    let plan_s = plan.display().to_string();
    let out = run(&[
        "--device", "cpu", "pipeline", "--quiet", "--gpus", "2", "--config", &plan_s,
    ]);
    for step in ["s0/features", "s0/pool", "s1/train"] {
        assert!(
            out.contains(&format!("] {step}")),
            "{step} did not run: {out}"
        );
    }
    assert!(out.matches("2 ranks").count() >= 3, "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
