//! The mistakes a new user makes (issue 27), run as the user would run them: each test builds
//! a scratch folder of the user's files (photos, configs, plans, ground truths, earlier runs),
//! runs the command through the binary from that folder, and checks that it is refused with an
//! error (exit status 1, never an abort) naming what to do, and that every file of the user is
//! byte-identical afterwards. Each test logs `MISTAKE <command> -> <outcome>`, so
//! `cargo test --test mistakes -- --nocapture` prints the suite's table.
//!
//! Two writers of one folder are real processes started side by side.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A scratch folder the commands run in, as a user's working folder.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("insclr-mistake-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// `cmd` as a user types it (words split at spaces) from the scratch folder, on the CPU.
    fn cmd(&self, cmd: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_insclr-cu"));
        c.args(["--device", "cpu"])
            .args(cmd.split_whitespace())
            .current_dir(&self.dir)
            .env("RAYON_NUM_THREADS", "2");
        c
    }

    fn run(&self, cmd: &str) -> Output {
        self.cmd(cmd).output().unwrap()
    }

    fn spawn(&self, cmd: &str) -> Child {
        self.cmd(cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Every file under the folder (links as links) and its bytes, by relative path; what
    /// lies under `skip` (folders the commands may write) is left out.
    fn snapshot(&self, skip: &[&str]) -> BTreeMap<String, Vec<u8>> {
        fn walk(root: &Path, dir: &Path, skip: &[&str], out: &mut BTreeMap<String, Vec<u8>>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                if skip
                    .iter()
                    .any(|s| rel == *s || rel.starts_with(&format!("{s}/")))
                {
                    continue;
                }
                let ft = std::fs::symlink_metadata(&p).unwrap().file_type();
                if ft.is_dir() {
                    walk(root, &p, skip, out);
                } else if ft.is_symlink() {
                    let to = std::fs::read_link(&p).unwrap();
                    out.insert(rel, format!("link to {}", to.display()).into_bytes());
                } else {
                    out.insert(rel, std::fs::read(&p).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.dir, &self.dir, skip, &mut out);
        out
    }

    /// The 8 group photos in `images/`, their tiny-gem descriptors `f.npy` / `f.txt` and
    /// pool `pool.npz`, and `c.toml`, a tiny stage on them writing to `out/` (paths relative
    /// to the scratch folder, as a user writes them).
    fn tiny_data(&self, max_step: usize) {
        common::write_group_pngs(&self.path("images"));
        let o = self.run("extract --quiet --scales 1 --images images --out f.npy");
        assert!(o.status.success(), "{}", text(&o));
        let o = self.run("pool --feats f.npy --k 4 --out pool.npz");
        assert!(o.status.success(), "{}", text(&o));
        let cfg = common::tiny_stage_toml(Path::new("."), max_step, 1e-3, "random", "");
        self.write("c.toml", &cfg);
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The error line of a refused command.
fn error_line(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or("(no error line)")
        .to_string()
}

/// Runs one mistake in `s`: checks it is refused with exit status 1 (an error, not an abort
/// or a signal) and that every file outside `writable` is byte-identical; logs its outcome and
/// returns its stderr.
fn mistake(s: &Scratch, cmd: &str, writable: &[&str]) -> String {
    let before = s.snapshot(writable);
    let o = s.run(cmd);
    let after = s.snapshot(writable);
    common::log(&format!(
        "MISTAKE insclr-cu {cmd} -> exit {:?}: {}",
        o.status.code(),
        error_line(&o)
    ));
    assert_eq!(
        o.status.code(),
        Some(1),
        "insclr-cu {cmd} was not refused with an error: {}",
        text(&o)
    );
    let changed: Vec<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    assert!(
        changed.is_empty(),
        "insclr-cu {cmd} changed the user's files {changed:?}: {}",
        text(&o)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Waits until `path` exists (a writer reached a point), failing after a minute.
fn wait_for(path: &Path, child: &mut Child) {
    let t = Instant::now();
    while !path.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the writer ended ({status}) before {} appeared",
                path.display()
            );
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_output(child: Child) -> Output {
    child.wait_with_output().unwrap()
}

/// `train --config cfgdir/tiny.toml --overwrite` with `OUTPUT_DIR = "cfgdir"`: used to delete
/// the config, a sibling config and a notes file, then train.
#[test]
fn overwrite_never_deletes_the_folder_of_the_config() {
    let s = Scratch::new("cfgdir");
    s.tiny_data(2);
    let cfg = std::fs::read_to_string(s.path("c.toml")).unwrap();
    // Its paths are relative to its folder: OUTPUT_DIR "." is that folder.
    s.write(
        "cfgdir/tiny.toml",
        &cfg.replace("\"./", "\"../")
            .replace("OUTPUT_DIR = \"../out\"", "OUTPUT_DIR = \".\""),
    );
    s.write("cfgdir/other.toml", &cfg);
    s.write("cfgdir/notes.txt", "what I tried");
    let err = mistake(
        &s,
        "train --config cfgdir/tiny.toml --overwrite --quiet",
        &[],
    );
    assert!(
        err.contains("--overwrite refused") && err.contains("holds --config cfgdir/tiny.toml"),
        "{err}"
    );
}

/// `--overwrite` with `OUTPUT_DIR = "imgs2/sub"` inside `DATA.ROOT = "imgs2"`: used to delete
/// the training photos in `imgs2/sub`.
#[test]
fn overwrite_never_deletes_inside_the_training_images() {
    let s = Scratch::new("imgs2");
    common::write_group_pngs(&s.path("imgs2/sub"));
    let o = s.run("extract --quiet --scales 1 --images imgs2 --out f.npy");
    assert!(o.status.success(), "{}", text(&o));
    let o = s.run("pool --feats f.npy --k 4 --out pool.npz");
    assert!(o.status.success(), "{}", text(&o));
    s.write(
        "c.toml",
        &common::tiny_stage_toml(Path::new("."), 2, 1e-3, "random", ""),
    );
    let err = mistake(
        &s,
        "train --config c.toml --set DATA.ROOT=imgs2 --set OUTPUT_DIR=imgs2/sub --overwrite --quiet",
        &[],
    );
    assert!(err.contains("lies inside DATA.ROOT imgs2"), "{err}");
}

/// A one-stage plan on the tiny data with `extra` lines in its stage (the eval ground truth
/// `gnd`, relative to the scratch folder).
fn tiny_plan(s: &Scratch, out: &str, gnd: &str, stage_extra: &str) -> String {
    let names: Vec<String> = (0..8).map(|i| format!("img_{i}.png")).collect();
    let g = serde_json::json!({
        "imlist": names,
        "qimlist": names[..4],
        "gnd": (0..4).map(|i| serde_json::json!({"ok": [i + 4], "junk": [i]})).collect::<Vec<_>>(),
    });
    s.write(gnd, &g.to_string());
    format!(
        "OUTPUT_DIR = {out:?}\n[DATA]\nROOT = \"images\"\n\
         [POOL]\nK = 4\nEXACT_SIZE = [32, 32]\nSCALES = [1.0]\n\
         [EVAL]\nDATASET = \"list\"\nROOT = \"images\"\nGND = {gnd:?}\nIMG_SIZE = 32\nSCALES = [1.0]\n\
         [[STAGE]]\nNAME = \"s1\"\nCONFIG = \"c.toml\"\n{stage_extra}\n"
    )
}

/// `pipeline --config k22/myplan.toml --output-dir k22 --overwrite` (k22 holding an earlier
/// pipeline's state): used to delete the plan and the ground truth it names.
#[test]
fn pipeline_overwrite_never_deletes_its_plan_or_ground_truth() {
    let s = Scratch::new("k22");
    s.tiny_data(2);
    let plan = tiny_plan(&s, "run", "k22/gnd.json", "");
    // The plan's paths are relative to its folder, k22.
    let plan = plan
        .replace("\"images\"", "\"../images\"")
        .replace("\"k22/gnd.json\"", "\"gnd.json\"")
        .replace("\"c.toml\"", "\"../c.toml\"");
    s.write("k22/myplan.toml", &plan);
    // What an earlier run left: main's --overwrite asked for nothing more.
    s.write("k22/pipeline.json", "{}");
    let err = mistake(
        &s,
        "pipeline --config k22/myplan.toml --output-dir k22 --overwrite --quiet",
        &[],
    );
    assert!(
        err.contains("--overwrite refused") && err.contains("k22/myplan.toml"),
        "{err}"
    );
}

/// `train dual.toml` running and `train dual.toml --set SEED=7 --overwrite` started beside
/// it: the second used to delete the first's files, leaving a folder whose run.json said
/// SEED 7 beside the first's model. Now it is refused at once, naming the first's pid, and
/// the first ends with a consistent folder. A writer killed with SIGKILL leaves no lock.
#[test]
fn a_second_train_in_a_used_folder_is_refused_naming_the_first() {
    let s = Scratch::new("dual");
    s.tiny_data(600);
    let cfg = std::fs::read_to_string(s.path("c.toml")).unwrap();
    s.write(
        "dual.toml",
        &cfg.replace("CHECKPOINT_PERIOD = 2", "CHECKPOINT_PERIOD = 100"),
    );
    let mut a = s.spawn("train --config dual.toml --quiet");
    wait_for(&s.path("out/run.json"), &mut a);
    let err = mistake(
        &s,
        "train --config dual.toml --set SEED=7 --overwrite --quiet",
        &["out"],
    );
    let pid = format!("pid {} (", a.id());
    assert!(
        err.contains("OUTPUT_DIR out is in use by another insclr-cu")
            && err.contains(&pid)
            && err.contains("train --config dual.toml --quiet"),
        "{err}"
    );
    let a = wait_output(a);
    assert!(a.status.success(), "{}", text(&a));
    let run = std::fs::read_to_string(s.path("out/run.json")).unwrap();
    assert!(run.contains("\"SEED\": 3"), "{run}");
    let log = std::fs::read_to_string(s.path("out/log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 600);
    let ck: Vec<String> = (1..=6)
        .map(|k| format!("checkpoint_{:07}.safetensors", 100 * k))
        .collect();
    for c in &ck {
        assert!(s.path("out/checkpoints").join(c).is_file(), "{c}");
    }

    // SIGKILL: the lock dies with the process, and --resume continues at once.
    let mut c = s.spawn("train --config dual.toml --set OUTPUT_DIR=out2 --quiet");
    wait_for(
        &s.path("out2/checkpoints/checkpoint_0000100.safetensors"),
        &mut c,
    );
    c.kill().unwrap();
    c.wait().unwrap();
    let o = s.run("train --config dual.toml --set OUTPUT_DIR=out2 --resume --quiet");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("resumed at"), "{}", text(&o));
}

/// Two `pipeline --output-dir dual` started 0.3 s apart: both used to run the same steps, one
/// dying on a checkpoint the other had moved. Now one runs and the other is refused, naming it.
#[test]
fn two_pipelines_in_one_folder_one_runs_and_the_other_is_refused() {
    let s = Scratch::new("duopipe");
    s.tiny_data(200);
    let every_100 = "SET = [\"SOLVER.CHECKPOINT_PERIOD=100\"]";
    s.write("plan.toml", &tiny_plan(&s, "run", "gnd.json", every_100));
    let cmd = "pipeline --config plan.toml --output-dir dual --quiet";
    let before = s.snapshot(&["dual"]);
    let first = s.spawn(cmd);
    std::thread::sleep(Duration::from_millis(300));
    let second = s.spawn(cmd);
    let pids = [first.id(), second.id()];
    let outs = [wait_output(first), wait_output(second)];
    assert_eq!(before, s.snapshot(&["dual"]), "the user's files changed");
    let ok: Vec<usize> = (0..2).filter(|&i| outs[i].status.success()).collect();
    assert_eq!(
        ok.len(),
        1,
        "one runs, one is refused:\n{}\n---\n{}",
        text(&outs[0]),
        text(&outs[1])
    );
    let (won, lost) = (ok[0], 1 - ok[0]);
    let err = String::from_utf8_lossy(&outs[lost].stderr).into_owned();
    common::log(&format!(
        "MISTAKE insclr-cu {cmd} (twice, 0.3 s apart) -> the {} exit {:?}: {}",
        if lost == 0 { "first" } else { "second" },
        outs[lost].status.code(),
        error_line(&outs[lost])
    ));
    assert_eq!(outs[lost].status.code(), Some(1));
    assert!(
        err.contains("is in use by another insclr-cu")
            && err.contains(&format!("pid {} (", pids[won])),
        "{err}"
    );
    let state = std::fs::read_to_string(s.path("dual/pipeline.json")).unwrap();
    assert!(state.contains("s1/eval"), "{state}");
}

/// Outputs named like inputs: each used to replace the input with the output, exit 0.
#[test]
fn no_output_replaces_an_input() {
    let s = Scratch::new("same");
    s.tiny_data(2);
    std::fs::copy(s.path("images/img_0.png"), s.path("q.png")).unwrap();
    // `search --html q.png q.png`: the page's name was forgotten.
    let err = mistake(
        &s,
        "search --index f.npy --images f.txt --scales 1 --html q.png q.png",
        &[],
    );
    assert!(
        err.contains("--html q.png and the query q.png are the same file"),
        "{err}"
    );
    // `eval --gnd g.json --json g.json`.
    let names: Vec<String> = (0..8).map(|i| format!("img_{i}.png")).collect();
    let g = serde_json::json!({"imlist": names, "qimlist": names[..2], "gnd": [{"ok": [4]}, {"ok": [5]}]});
    s.write("g.json", &g.to_string());
    let err = mistake(
        &s,
        "eval --dataset list --root images --gnd g.json --json g.json --scales 1 --quiet",
        &[],
    );
    assert!(
        err.contains("--json g.json and the ground truth g.json are the same file"),
        "{err}"
    );
    // `extract --images n --out n/photo.png`.
    std::fs::create_dir_all(s.path("n")).unwrap();
    std::fs::copy(s.path("images/img_1.png"), s.path("n/photo.png")).unwrap();
    std::fs::copy(s.path("images/img_2.png"), s.path("n/other.png")).unwrap();
    let err = mistake(
        &s,
        "extract --images n --out n/photo.png --scales 1 --quiet",
        &[],
    );
    assert!(
        err.contains("--out n/photo.png and the image n/photo.png are the same file"),
        "{err}"
    );
    // `pool --feats f.npy --out f.npy`.
    let err = mistake(&s, "pool --feats f.npy --k 2 --out f.npy", &[]);
    assert!(
        err.contains("--out f.npy and --feats f.npy are the same file"),
        "{err}"
    );
    // `report run --out run/log.jsonl`, on a finished run.
    let o = s.run("train --config c.toml --set OUTPUT_DIR=run --quiet");
    assert!(o.status.success(), "{}", text(&o));
    let err = mistake(&s, "report run --out run/log.jsonl", &[]);
    assert!(
        err.contains("--out run/log.jsonl and the run's run/log.jsonl are the same file"),
        "{err}"
    );
}

/// `train --set 'INPUT.TRAIN_IMG_SIZE=[100000,100000]'`: used to abort (exit 134, `memory
/// allocation of 480000000000 bytes failed`). Now an error with the estimate, the limit and
/// the settings to change, before OUTPUT_DIR exists.
#[test]
fn a_step_too_large_for_memory_is_refused_with_the_estimate() {
    if !std::fs::read_to_string("/proc/meminfo").is_ok_and(|m| m.contains("MemAvailable")) {
        common::log(
            "SKIP a_step_too_large_for_memory_is_refused_with_the_estimate: no MemAvailable",
        );
        return;
    }
    let s = Scratch::new("huge");
    s.tiny_data(2);
    let err = mistake(
        &s,
        "train --config c.toml --set INPUT.TRAIN_IMG_SIZE=[100000,100000] --quiet",
        &[],
    );
    assert!(
        err.contains("needs at least")
            && err.contains("MemAvailable")
            && err.contains("INPUT.TRAIN_IMG_SIZE 100000 x 100000")
            && err.contains("lower INPUT.TRAIN_IMG_SIZE"),
        "{err}"
    );
    assert!(!s.path("out").exists(), "nothing was written");
}

/// A config error found after the folder was prepared used to leave run.json behind, so the
/// corrected rerun was refused as "not empty". A run that fails before its first checkpoint
/// now leaves the disk as it found it.
#[test]
fn a_run_that_fails_before_its_first_checkpoint_leaves_nothing() {
    let s = Scratch::new("undo");
    s.tiny_data(2);
    // An anchor to trace that is no training image (checked with the model built).
    let err = mistake(
        &s,
        "train --config c.toml --set SOLVER.TRACE_IMAGES=[\"nope.png\"] --quiet",
        &[],
    );
    assert!(err.contains("nope.png"), "{err}");
    assert!(
        !s.path("out").exists(),
        "the folder it would have made is not there"
    );
    // A step that fails (SGD at this rate overflows before the first checkpoint, at step 2).
    std::fs::create_dir_all(s.path("out")).unwrap();
    let err = mistake(
        &s,
        "train --config c.toml --set SOLVER.NAME=\"sgd\" --set SOLVER.BASE_LR=1e30 --set SOLVER.MAX_STEP=50 --set SOLVER.CHECKPOINT_PERIOD=50 --quiet",
        &[],
    );
    assert!(err.contains("is NaN") || err.contains("is inf"), "{err}");
    assert_eq!(
        std::fs::read_dir(s.path("out")).unwrap().count(),
        0,
        "left as found: empty"
    );
    let o = s.run("train --config c.toml --quiet");
    assert!(
        o.status.success(),
        "the corrected run starts there: {}",
        text(&o)
    );
}

/// `--overwrite` through a symbolic link used to delete the target's contents.
#[test]
fn overwrite_never_deletes_through_a_link() {
    let s = Scratch::new("link");
    s.tiny_data(2);
    let o = s.run("train --config c.toml --set OUTPUT_DIR=real --quiet");
    assert!(o.status.success(), "{}", text(&o));
    std::os::unix::fs::symlink("real", s.path("link")).unwrap();
    let err = mistake(
        &s,
        "train --config c.toml --set OUTPUT_DIR=link --overwrite --quiet",
        &[],
    );
    assert!(
        err.contains("link is a symbolic link (to real)") && err.contains("give the folder itself"),
        "{err}"
    );
}

/// `--overwrite` deletes what a run wrote (the report written into the run included) and
/// refuses, listing them, files no run wrote.
#[test]
fn overwrite_removes_only_what_a_run_wrote_and_lists_the_rest() {
    let s = Scratch::new("foreign");
    s.tiny_data(2);
    let o = s.run("train --config c.toml --quiet");
    assert!(o.status.success(), "{}", text(&o));
    let o = s.run("report out");
    assert!(o.status.success(), "{}", text(&o));
    s.write("out/notes.txt", "mine");
    s.write("out/checkpoints/best.txt", "mine too");
    let err = mistake(&s, "train --config c.toml --overwrite --quiet", &[]);
    assert!(
        err.contains("holds 2 file(s) or folder(s) that no run of insclr-cu wrote there")
            && err.contains("checkpoints/best.txt, notes.txt"),
        "{err}"
    );
    std::fs::remove_file(s.path("out/notes.txt")).unwrap();
    std::fs::remove_file(s.path("out/checkpoints/best.txt")).unwrap();
    let o = s.run("train --config c.toml --overwrite --quiet");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("--overwrite: removed"), "{}", text(&o));
    assert!(!s.path("out/report.html").exists() && !s.path("out/report.json").exists());
}

/// A ground truth whose queries all have no positive used to print `mAP -0.00`, exit 0.
#[test]
fn a_ground_truth_without_positives_is_an_error() {
    let s = Scratch::new("nopos");
    s.tiny_data(2);
    let g = serde_json::json!({
        "imlist": (0..8).map(|i| format!("img_{i}.png")).collect::<Vec<_>>(),
        "qimlist": ["img_0.png", "img_1.png"],
        "gnd": [{"ok": [], "junk": [3]}, {"ok": []}],
    });
    s.write("g.json", &g.to_string());
    let f = insclr::io::npy::read::<f32>(&s.path("f.npy")).unwrap();
    let q = insclr::io::npy::Array::new(vec![2, 3], f.data[..6].to_vec()).unwrap();
    insclr::io::npy::write(&s.path("q.npy"), &q).unwrap();
    let err = mistake(
        &s,
        "eval --dataset list --root images --gnd g.json --db-feats f.npy --query-feats q.npy",
        &[],
    );
    assert!(
        err.contains("g.json: none of its 2 queries has a positive"),
        "{err}"
    );
}

/// A PNG declaring 30000 x 30000 pixels used to be called "corrupt or unsupported".
#[test]
fn an_image_too_large_to_decode_says_so_with_its_size() {
    let s = Scratch::new("bigpng");
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        let crc = crc32fast::hash(&c[4..]);
        c.extend_from_slice(&crc.to_be_bytes());
        c
    };
    let mut ihdr = 30000u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&30000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    // A few rows of data: the decoder refuses the size before it reads any.
    png.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(chunk(b"IEND", &[]));
    std::fs::create_dir_all(s.path("big")).unwrap();
    std::fs::write(s.path("big/huge.png"), png).unwrap();
    let err = mistake(
        &s,
        "extract --images big --out f.npy --img-size 64 --scales 1 --quiet",
        &["f.bad.txt"],
    );
    assert!(
        err.contains("big/huge.png is too large: 30000 x 30000 pixels"),
        "{err}"
    );
}

/// `pool` on a full disk (a file-size limit here) used to print the zip writer's raw
/// `ZipWriter drop failed: Io(...)` beside the error.
#[test]
fn pool_on_a_full_disk_says_so_once_and_leaves_no_file() {
    let s = Scratch::new("full");
    // 300 unit descriptors: their pool of 50 neighbours takes 180 KB.
    let mut r = insclr::rng::Rng::new(5);
    let rows: Vec<f32> = (0..300 * 4).map(|_| r.normal()).collect();
    let mut rows = rows;
    insclr::eval::extract::l2_normalize_rows(&mut rows, 4);
    let a = insclr::io::npy::Array::new(vec![300, 4], rows).unwrap();
    insclr::io::npy::write(&s.path("f.npy"), &a).unwrap();
    let bin = env!("CARGO_BIN_EXE_insclr-cu");
    // SIGXFSZ ignored: a write past the limit fails with EFBIG, as one on a full disk does
    // with ENOSPC.
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f 1; exec {bin} --device cpu pool --feats f.npy --k 50 --out big.npz"
        ))
        .current_dir(&s.dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    common::log(&format!(
        "MISTAKE insclr-cu pool ... on a full disk -> exit {:?}: {}",
        o.status.code(),
        error_line(&o)
    ));
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("ZipWriter"), "{err}");
    assert!(
        err.contains("error: writing big.npz.tmp: File too large"),
        "{err}"
    );
    assert!(!s.path("big.npz").exists() && !s.path("big.npz.tmp").exists());
}
