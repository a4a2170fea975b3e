//! Run a pipeline: the whole recipe as one resumable command (spec 1, G1; `insclr-cu pipeline`). The original
//! chains its stages by hand; here one TOML lists them and the run directory keeps, per stage,
//! what each step made:
//!
//! ```text
//! s0/model      the model stage 1 starts from (ImageNet backbone, a previous model, or random)
//! s0/features   its descriptors of the training images (exact resize, raw GeM averaged: G2, G4)
//! s0/pool       their candidate pool (top-K neighbours)            -> NEIGHBOR.SRC of stage 1
//! s0/eval       retrieval before training                          ([EVAL], optional)
//! s1/train      stage 1 (its own OUTPUT_DIR, resumable)            -> MODEL.PRETRAIN of stage 2
//! s1/features   stage 1's descriptors of the training images (its head, unit per scale)
//! s1/pool ...   and so on; the last stage has no features / pool, only train and eval.
//! ```
//!
//! Every step is one of the other jobs ([`super::extract()`], [`super::pool()`], [`super::train()`],
//! [`super::evaluate()`]) called with options made from the plan (their checks, progress bars and
//! atomic writes), recorded in `pipeline.json` with the checksum of each output once it has
//! finished. Paths in the plan are relative to the plan's folder. Started again, the pipeline checks that the plan and the
//! stage configs are the ones it started with and that the recorded outputs are unchanged, skips
//! the finished steps, and resumes a stage's training from its last checkpoint; every step is
//! deterministic, so a run that was killed ends with the same files as one that was not.

use super::evaluate::{evaluate, Benchmark, EvalOptions};
use super::extract::{extract, DescribeOptions, ExtractOptions};
use crate::backend::{self, DType, DeviceChoice, Op};
use crate::io::npy::write_atomic;
use crate::io::out_dir::{self, DirLock, Manifest};
use crate::io::paths::{beside, check_outputs, Named};
use crate::nn::net::DescriptorChoice;
use crate::nn::LocalLayer;
use crate::train::run_dir::{file_sum, InputFile};
use crate::train::{self, Config, RunOptions};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Which plan to run, and how.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// The plan (TOML: `OUTPUT_DIR`, `[DATA]`, `[POOL]`, `[EVAL]`, `[[STAGE]]`; see
    /// configs/demo-pipeline.toml). Started again with the same plan, it continues.
    pub config: PathBuf,
    /// Delete the files an earlier pipeline wrote in OUTPUT_DIR (its manifests list them) and
    /// start over; refused when the folder holds anything else or an input.
    pub overwrite: bool,
    /// No progress bars; plain lines instead.
    pub quiet: bool,
    /// Replaces the plan's PRECISION (f32 or bf16).
    pub precision: Option<String>,
    /// Replaces the plan's OUTPUT_DIR (relative to the current folder, as a flag's paths are).
    pub output_dir: Option<String>,
    /// Ranks the extract, pool and train steps split their work over (0 or 1: one), as threads
    /// on `--device cpu` / `emu` ([`crate::dist::launch`]).
    pub gpus: usize,
    /// Longest side a scaled image may have when describing images.
    pub max_side: usize,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            config: PathBuf::new(),
            overwrite: false,
            quiet: false,
            precision: None,
            output_dir: None,
            gpus: 1,
            max_side: crate::eval::extract::MAX_SIDE,
        }
    }
}

/// What a finished [`pipeline`] made.
#[derive(Clone, Debug)]
pub struct PipelineReport {
    /// Steps of the plan, and seconds spent in this run (earlier runs' steps are skipped).
    pub steps: usize,
    pub seconds: f64,
    /// The last stage's model, with its checksum.
    pub final_model: InputFile,
    /// The mAP of every evaluated stage, one row each (with `[EVAL]`).
    pub table: Option<String>,
    /// Every stage's curves end to end.
    pub plot: PathBuf,
}

/// The plan file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE")]
struct Plan {
    /// Where every step writes (`s0/`, then one folder per stage).
    output_dir: String,
    data: PlanData,
    pool: PlanPool,
    #[serde(default)]
    eval: Option<PlanEval>,
    /// What every stage trains in (`SOLVER.PRECISION`): f32 (the default) or bf16.
    #[serde(default = "default_precision")]
    precision: String,
    stage: Vec<PlanStage>,
}

fn default_precision() -> String {
    "f32".into()
}

/// The training images of every stage (their `DATA.ROOT` and `DATA.TRAIN_FILENAME`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE")]
struct PlanData {
    root: String,
    #[serde(default)]
    train_filename: String,
}

/// How each candidate pool is made (spec 4.1).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE")]
struct PlanPool {
    /// Neighbours per image (the original: 500).
    k: usize,
    /// Every image resized to exactly `[h, w]` (the original: 512 x 512, G4).
    exact_size: [usize; 2],
    /// The original: `[1, 1/sqrt(2), 1/2]`.
    scales: Vec<f64>,
    #[serde(default = "default_batch")]
    batch: usize,
    /// Re-rank each image's first VERIFY_TOP neighbours by spatial verification before the
    /// stage trains on them (0, the default: no verification; docs/verify.md).
    #[serde(default)]
    verify_top: usize,
    /// Local features per image for the verification, and their map (`last` or `mid`).
    #[serde(default = "default_local")]
    local: usize,
    #[serde(default = "default_local_layer")]
    local_layer: String,
    /// A match within INLIER_PX of its partner is an inlier; MIN_INLIERS of them verify.
    #[serde(default = "default_inlier_px")]
    inlier_px: f32,
    #[serde(default = "default_min_inliers")]
    min_inliers: i32,
    /// Lowe's ratio of the matches (1: every mutual match but exact ties).
    #[serde(default = "default_ratio")]
    ratio: f32,
}

fn default_ratio() -> f32 {
    crate::backend::Verify::default().ratio
}

fn default_batch() -> usize {
    16
}

fn default_local() -> usize {
    128
}

fn default_local_layer() -> String {
    "last".into()
}

fn default_inlier_px() -> f32 {
    crate::backend::Verify::default().inlier_px
}

fn default_min_inliers() -> i32 {
    crate::eval::verify::DEFAULT_MIN_INLIERS
}

/// Retrieval scored after stage 0 and after every stage (`insclr-cu eval`'s options).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE")]
struct PlanEval {
    /// list, roxford5k, rparis6k or gldv2.
    dataset: String,
    root: String,
    #[serde(default)]
    gnd: String,
    img_size: u32,
    scales: Vec<f64>,
}

/// One training stage: a `train` config and `--set` overrides of it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE")]
struct PlanStage {
    /// Its folder under OUTPUT_DIR (s1, s2, ...).
    name: String,
    config: String,
    #[serde(default)]
    set: Vec<String>,
}

/// The keys the pipeline sets in every stage config: a stage may not set them itself.
const OWNED_KEYS: [&str; 6] = [
    "OUTPUT_DIR",
    "SOLVER.PRECISION",
    "DATA.ROOT",
    "DATA.TRAIN_FILENAME",
    "NEIGHBOR.SRC",
    "MODEL.PRETRAIN",
];

/// The state file in OUTPUT_DIR.
const STATE_FILE: &str = "pipeline.json";

/// `pipeline.json`: the plan, the stage configs it was started with and the finished steps.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
struct State {
    plan: Option<Plan>,
    stage_configs: Vec<InputFile>,
    done: Vec<Done>,
}

/// A finished step and the checksums of what it wrote.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
struct Done {
    step: String,
    outputs: Vec<InputFile>,
    seconds: f64,
}

/// What a step does. Stage 0 is the model stage 1 starts from; stage `k >= 1` is `plan.stage[k - 1]`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Model,
    Features,
    Pool,
    Eval,
    Train,
}

#[derive(Clone, Copy, Debug)]
struct Step {
    stage: usize,
    kind: Kind,
}

impl Plan {
    fn read(path: &Path) -> Result<Plan> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading pipeline plan {}", path.display()))?;
        let mut plan: Plan = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
        plan.output_dir = beside(path, &plan.output_dir);
        plan.data.root = beside(path, &plan.data.root);
        if let Some(e) = plan.eval.as_mut() {
            e.root = beside(path, &e.root);
            e.gnd = beside(path, &e.gnd);
        }
        for s in &mut plan.stage {
            s.config = beside(path, &s.config);
        }
        plan.check()
            .with_context(|| format!("pipeline plan {}", path.display()))?;
        Ok(plan)
    }

    fn check(&self) -> Result<()> {
        if self.output_dir.is_empty() {
            bail!("OUTPUT_DIR is empty: say where the pipeline writes");
        }
        if self.stage.is_empty() {
            bail!("no [[STAGE]]: list the training stages in order");
        }
        let mut names = vec!["s0"];
        for s in &self.stage {
            let ok = !s.name.is_empty()
                && s.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                bail!(
                    "stage NAME '{}' must be letters, digits, - or _ (it names a folder)",
                    s.name
                );
            }
            if names.contains(&s.name.as_str()) {
                bail!(
                    "stage NAME '{}' is used twice (s0 is the starting model's)",
                    s.name
                );
            }
            names.push(&s.name);
            for o in &s.set {
                let key = o.split_once('=').map_or(o.as_str(), |(k, _)| k).trim();
                if OWNED_KEYS.contains(&key) {
                    bail!("stage {}: SET {key} is the pipeline's to set (it chains the stages); set DATA in [DATA], and drop the others", s.name);
                }
            }
        }
        if !matches!(self.precision.as_str(), "f32" | "bf16") {
            bail!("PRECISION = {:?}: use \"f32\" or \"bf16\"", self.precision);
        }
        if self.pool.k == 0 || self.pool.scales.is_empty() {
            bail!("[POOL] needs K >= 1 and at least one scale");
        }
        if self.pool.verify_top > 0 {
            self.pool
                .local_layer
                .parse::<LocalLayer>()
                .context("[POOL] LOCAL_LAYER")?;
            crate::eval::extract::check_local(self.pool.local).context("[POOL] LOCAL")?;
            if self.pool.local == 0 {
                bail!("[POOL] VERIFY_TOP needs LOCAL >= 1 local features per image");
            }
        }
        if let Some(e) = &self.eval {
            if !["list", "roxford5k", "rparis6k", "gldv2"].contains(&e.dataset.as_str()) {
                bail!(
                    "[EVAL] DATASET '{}' is none of list, roxford5k, rparis6k, gldv2",
                    e.dataset
                );
            }
        }
        Ok(())
    }

    /// Every step in order.
    fn steps(&self) -> Vec<Step> {
        let last = self.stage.len();
        let mut out = Vec::new();
        for stage in 0..=last {
            let kinds: &[Kind] = match stage {
                0 => &[Kind::Model, Kind::Features, Kind::Pool, Kind::Eval],
                k if k == last => &[Kind::Train, Kind::Eval],
                _ => &[Kind::Train, Kind::Features, Kind::Pool, Kind::Eval],
            };
            for &kind in kinds {
                if kind != Kind::Eval || self.eval.is_some() {
                    out.push(Step { stage, kind });
                }
            }
        }
        out
    }

    fn stage_name(&self, stage: usize) -> &str {
        match stage {
            0 => "s0",
            k => &self.stage[k - 1].name,
        }
    }

    fn dir(&self, stage: usize) -> PathBuf {
        Path::new(&self.output_dir).join(self.stage_name(stage))
    }

    fn step_name(&self, s: Step) -> String {
        let kind = match s.kind {
            Kind::Model => "model",
            Kind::Features => "features",
            Kind::Pool => "pool",
            Kind::Eval => "eval",
            Kind::Train => "train",
        };
        format!("{}/{kind}", self.stage_name(s.stage))
    }

    /// The model of stage `k`'s end: the starting model for 0, else the stage's final model.
    fn model(&self, stage: usize) -> PathBuf {
        match stage {
            0 => self.dir(0).join("model.safetensors"),
            k => self.dir(k).join("train").join("model_final.safetensors"),
        }
    }

    fn features(&self, stage: usize) -> PathBuf {
        self.dir(stage).join("feature.npy")
    }

    /// The local features beside [`Plan::features`] when the pools are verified.
    fn local_features(&self, stage: usize) -> Option<PathBuf> {
        (self.pool.verify_top > 0).then(|| super::extract::local_path(&self.features(stage)))
    }

    fn pool_file(&self, stage: usize) -> PathBuf {
        self.dir(stage).join("neighbor.npz")
    }

    fn eval_file(&self, stage: usize) -> PathBuf {
        self.dir(stage).join("eval.json")
    }

    /// Stage `k`'s config (k >= 1): its file, its SET, then the keys that chain it.
    fn stage_config(&self, k: usize) -> Result<Config> {
        let s = &self.stage[k - 1];
        let mut sets = s.set.clone();
        let out = self.dir(k).join("train");
        sets.push(format!(
            "OUTPUT_DIR={}",
            toml_str(&out.display().to_string())
        ));
        sets.push(format!("DATA.ROOT={}", toml_str(&self.data.root)));
        sets.push(format!("SOLVER.PRECISION={}", toml_str(&self.precision)));
        sets.push(format!(
            "DATA.TRAIN_FILENAME={}",
            toml_str(&self.data.train_filename)
        ));
        sets.push(format!(
            "NEIGHBOR.SRC={}",
            toml_str(&self.pool_file(k - 1).display().to_string())
        ));
        if k > 1 {
            sets.push(format!(
                "MODEL.PRETRAIN={}",
                toml_str(&self.model(k - 1).display().to_string())
            ));
        }
        Config::load_with(Path::new(&s.config), &sets)
            .with_context(|| format!("stage {} ({})", s.name, s.config))
    }

    /// The stage-0 descriptor is the starting model's raw GeM when it is an ImageNet or random
    /// backbone (G2), else the starting model's head.
    /// Whether stage `k`'s features step describes with TF32 convolutions (in f32 on a GPU):
    /// as the stage that trains on its pool (k + 1; the last stage's own for the last
    /// features) sets `SOLVER.TF32`, so that `SOLVER.TF32 = false` keeps a stage's mining exact
    /// as well as its training.
    fn describe_tf32(&self, k: usize) -> Result<bool> {
        Ok(self
            .stage_config((k + 1).min(self.stage.len()))?
            .solver
            .tf32)
    }

    fn stage0_is_gem(&self) -> Result<bool> {
        let cfg = self.stage_config(1)?;
        Ok(matches!(cfg.model.pretrain.as_str(), "imagenet" | "random"))
    }
}

/// `s` as a TOML string literal (the `--set` values are TOML).
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

impl State {
    fn path(plan: &Plan) -> PathBuf {
        Path::new(&plan.output_dir).join(STATE_FILE)
    }

    fn save(&self, plan: &Plan) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        write_atomic(&State::path(plan), |w| {
            std::io::Write::write_all(w, text.as_bytes())?;
            Ok(())
        })
    }

    fn is_done(&self, step: &str) -> bool {
        self.done.iter().any(|d| d.step == step)
    }
}

/// The checksums of the stage configs named by the plan.
fn stage_config_sums(plan: &Plan) -> Result<Vec<InputFile>> {
    plan.stage
        .iter()
        .map(|s| file_sum(Path::new(&s.config)).with_context(|| format!("stage {}", s.name)))
        .collect()
}

/// The files and folders the pipeline reads, by what names them: the plan, the stage
/// configs, the data and evaluation folders, and the weights or descriptors stage configs
/// name (not the pools and models the pipeline makes itself).
fn plan_inputs(plan: &Plan, plan_path: &Path) -> Result<Vec<Named>> {
    let mut v = vec![Named::new("the plan", plan_path)];
    for s in &plan.stage {
        v.push(Named::new(format!("stage {}'s CONFIG", s.name), &s.config));
    }
    for k in 1..=plan.stage.len() {
        let cfg = plan.stage_config(k)?;
        for n in train::run_dir::inputs(&cfg) {
            let made_here = n.what == "NEIGHBOR.SRC" || (k > 1 && n.what == "MODEL.PRETRAIN");
            if !made_here {
                v.push(Named::new(
                    format!("stage {}'s {}", plan.stage[k - 1].name, n.what),
                    n.path,
                ));
            }
        }
    }
    if let Some(e) = &plan.eval {
        v.push(Named::new("[EVAL] ROOT", &e.root));
        if !e.gnd.is_empty() {
            v.push(Named::new("[EVAL] GND", &e.gnd));
        }
    }
    v.retain(|n| !n.path.as_os_str().is_empty());
    Ok(v)
}

/// "KEY: then -> now" for every key of the plan that differs, arrays by index
/// (`STAGE[0].SET`), as train's `--resume` names the keys that differ.
fn plan_diff(old: &Plan, new: &Plan) -> Vec<String> {
    fn flat(prefix: &str, v: serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flat(&key, v, out);
                }
            }
            serde_json::Value::Array(a) if a.iter().any(|x| x.is_object()) => {
                for (i, v) in a.into_iter().enumerate() {
                    flat(&format!("{prefix}[{i}]"), v, out);
                }
            }
            v => out.push((prefix.to_string(), v)),
        }
    }
    let map = |p: &Plan| {
        let mut out = Vec::new();
        flat("", serde_json::to_value(p).unwrap_or_default(), &mut out);
        out.into_iter()
            .collect::<std::collections::BTreeMap<String, serde_json::Value>>()
    };
    let (a, b) = (map(old), map(new));
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let show = |v: Option<&serde_json::Value>| v.map_or("(absent)".to_string(), |v| v.to_string());
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {} -> {}", show(a.get(k)), show(b.get(k))))
        .collect()
}

/// The pipeline's OUTPUT_DIR while it runs: its lock, held to the end, and its manifest.
struct OutDir {
    lock: DirLock,
    manifest: Manifest,
    /// Started here (not continued): a failure before any step finished removes it again.
    fresh: bool,
}

impl OutDir {
    /// Removes what this pipeline wrote when it started here and finished no step, so a
    /// corrected plan can start in the same folder.
    fn undo(&self, state: &State) {
        if self.fresh && state.done.is_empty() {
            out_dir::undo(&self.manifest, &Default::default(), &self.lock);
        }
    }
}

/// Opens (or starts) the run directory under its lock: a fresh one must be empty; one holding
/// a `pipeline.json` continues when its plan, stage configs and finished outputs are
/// unchanged; `overwrite` deletes what an earlier pipeline wrote (never an input, never a
/// file no manifest lists).
fn open_state(plan: &Plan, inputs: &[Named], overwrite: bool) -> Result<(State, OutDir)> {
    let out = Path::new(&plan.output_dir);
    let configs = stage_config_sums(plan)?;
    let lock = DirLock::acquire(out, "the pipeline's OUTPUT_DIR")?;
    let manifest = Manifest::open(out)?;
    let mut dir = OutDir {
        fresh: manifest.entries().is_empty(),
        lock,
        manifest,
    };
    match settle(plan, configs, inputs, overwrite, &mut dir) {
        Ok(state) => Ok((state, dir)),
        Err(e) => {
            dir.undo(&State::default());
            Err(e)
        }
    }
}

/// The part of [`open_state`] done under the lock.
fn settle(
    plan: &Plan,
    configs: Vec<InputFile>,
    inputs: &[Named],
    overwrite: bool,
    dir: &mut OutDir,
) -> Result<State> {
    let out = Path::new(&plan.output_dir);
    let state_path = State::path(plan);
    let unused = out_dir::is_unused(out)?;
    if overwrite && !unused {
        out_dir::clear(out, &dir.lock, inputs, &Default::default())?;
        dir.manifest = Manifest::open(out)?;
        dir.fresh = true;
    } else if !unused {
        if !state_path.exists() {
            bail!(
                "OUTPUT_DIR {} is not empty and holds no {STATE_FILE}; pick another OUTPUT_DIR",
                out.display()
            );
        }
        let text = std::fs::read_to_string(&state_path)
            .with_context(|| format!("reading {}", state_path.display()))?;
        let state: State = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a pipeline state", state_path.display()))?;
        let again = "pass --overwrite to start over, or pick another OUTPUT_DIR";
        if let Some(was) = state.plan.as_ref().filter(|&p| p != plan) {
            bail!(
                "{} was started with another plan; what differs (then -> now):\n  {}\n{again}",
                state_path.display(),
                plan_diff(was, plan).join("\n  ")
            );
        }
        if state.plan.is_none() {
            bail!("{} records no plan; {again}", state_path.display());
        }
        for (was, now) in state.stage_configs.iter().zip(&configs) {
            if was != now {
                bail!(
                    "stage config {} changed since this pipeline started (crc32 {} -> {}); put it back, or {again}",
                    now.path,
                    was.crc32,
                    now.crc32
                );
            }
        }
        for d in &state.done {
            for f in &d.outputs {
                let now = file_sum(Path::new(&f.path))
                    .with_context(|| format!("the output of finished step {}", d.step))?;
                if &now != f {
                    bail!("{} changed after step {} wrote it; {again}", f.path, d.step);
                }
            }
        }
        dir.fresh = false;
        return Ok(state);
    }
    let state = State {
        plan: Some(plan.clone()),
        stage_configs: configs,
        done: Vec::new(),
    };
    dir.manifest.add(&State::path(plan))?;
    state.save(plan)?;
    Ok(state)
}

/// The dataset index of each line of `list` (the images `extract` described, in row order)
/// and the dataset's size.
fn dataset_rows(plan: &Plan, list: &Path, rows: usize) -> Result<(Vec<usize>, usize)> {
    let root = Path::new(&plan.data.root);
    let file = (!plan.data.train_filename.is_empty()).then(|| root.join(&plan.data.train_filename));
    let all = crate::data::image_paths(root, file.as_deref())?;
    let index: std::collections::HashMap<String, usize> = all
        .iter()
        .enumerate()
        .map(|(i, p)| (p.display().to_string(), i))
        .collect();
    let text =
        std::fs::read_to_string(list).with_context(|| format!("reading {}", list.display()))?;
    let at = text
        .lines()
        .map(|l| {
            index.get(l).copied().with_context(|| {
                format!("{}: {l} is not a training image of [DATA]", list.display())
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if at.len() != rows {
        bail!(
            "{} names {} images for {rows} descriptors",
            list.display(),
            at.len()
        );
    }
    Ok((at, all.len()))
}

/// Runs one step; returns the files it made.
fn run_step(
    plan: &Plan,
    step: Step,
    device: DeviceChoice,
    opts: &PipelineOptions,
    inputs: &[Named],
) -> Result<Vec<PathBuf>> {
    let k = step.stage;
    let quiet = opts.quiet;
    std::fs::create_dir_all(plan.dir(k))
        .with_context(|| format!("creating {}", plan.dir(k).display()))?;
    // Stage 0 describes with the starting model's raw GeM when it is an ImageNet or random
    // backbone (G2).
    let gem = k == 0 && plan.stage0_is_gem()?;
    let descriptor = if gem {
        DescriptorChoice::Gem
    } else {
        DescriptorChoice::Auto
    };
    match step.kind {
        Kind::Model => {
            let cfg = plan.stage_config(1)?;
            let (be, _) = backend::select_f32(device, &Op::ALL)?;
            let built =
                crate::nn::model::load_model(&cfg.model, cfg.seed, cfg.precision(), be.as_ref())?;
            eprintln!("pipeline: starting model: {}", built.note);
            let meta = cfg.model_meta(&built.net, false);
            let tensors = crate::nn::weights::export(&built.net, be.as_ref())?;
            crate::io::safetensors::write(&plan.model(0), &tensors, Some(meta.to_map()))?;
            Ok(vec![plan.model(0)])
        }
        Kind::Features => {
            let out = plan.features(k);
            let (images, root) = if plan.data.train_filename.is_empty() {
                (PathBuf::from(&plan.data.root), None)
            } else {
                let root = PathBuf::from(&plan.data.root);
                (root.join(&plan.data.train_filename), Some(root))
            };
            let report = extract(
                &ExtractOptions {
                    describe: DescribeOptions {
                        weights: Some(plan.model(k)),
                        descriptor,
                        max_side: opts.max_side,
                        scales: plan.pool.scales.clone(),
                        exact_size: Some(plan.pool.exact_size),
                        batch: plan.pool.batch,
                        raw_scales: gem,
                        quiet,
                        local_layer: plan.pool.local_layer.parse()?,
                        tf32: plan.describe_tf32(k)?,
                        ..DescribeOptions::default()
                    },
                    images,
                    root,
                    out: out.clone(),
                    // An image that cannot be described is left out and listed in
                    // feature.bad.txt; the pool step gives it an empty row, and training skips
                    // it too.
                    skip_bad: true,
                    gpus: opts.gpus,
                    local: if plan.pool.verify_top > 0 {
                        plan.pool.local
                    } else {
                        0
                    },
                },
                device,
            )?;
            println!("{}", report.summary(&out));
            let mut files = vec![
                out.clone(),
                out.with_extension("txt"),
                out.with_extension("bad.txt"),
            ];
            files.extend(plan.local_features(k));
            Ok(files)
        }
        Kind::Pool => {
            let out = plan.pool_file(k);
            let feats_path = plan.features(k);
            let feats = crate::io::npy::read::<f32>(&feats_path)?;
            let (n, d) = feats.dims2(&feats_path.display().to_string())?;
            // Row r of the descriptors is the image on line r of feature.txt; the pool's rows
            // are the training set's images in dataset order.
            let (at, all) = dataset_rows(plan, &feats_path.with_extension("txt"), n)?;
            let tile = crate::mining::pool::default_tile(n);
            super::pool::check_pool_memory(n, plan.pool.k, tile, DType::F32)?;
            let pool = super::pool::compute_on_ranks(
                opts.gpus,
                &feats.data,
                n,
                d,
                plan.pool.k,
                tile,
                DType::F32,
                device,
            )?;
            let pool = match plan.local_features(k) {
                Some(local) => verified(plan, pool, &local, device)?,
                None => pool,
            }
            .spread(&at, all)?;
            pool.save(&out)?;
            println!(
                "pool: wrote {} ({all} x {} neighbours; {} image(s) without a descriptor have none)",
                out.display(),
                plan.pool.k,
                all - n
            );
            Ok(vec![out])
        }
        Kind::Eval => {
            let e = plan.eval.as_ref().context("no [EVAL]")?;
            let out = plan.eval_file(k);
            let mut eval = EvalOptions::new(e.dataset.parse::<Benchmark>()?, &e.root);
            eval.weights = Some(plan.model(k));
            eval.descriptor = descriptor;
            eval.img_size = e.img_size;
            eval.scales = Some(e.scales.clone());
            eval.json = Some(out.clone());
            eval.gnd = (!e.gnd.is_empty()).then(|| PathBuf::from(&e.gnd));
            eval.max_side = opts.max_side;
            eval.quiet = quiet;
            let report = evaluate(&eval, device)?;
            print!("{}\n{}", report.header, report.table);
            Ok(vec![out])
        }
        Kind::Train => {
            let cfg = plan.stage_config(k)?;
            let out = PathBuf::from(&cfg.output_dir);
            // A step that was interrupted left its run directory: continue it (train checks
            // that it is the same run and resumes from the last checkpoint).
            let started = std::fs::read_dir(&out).is_ok_and(|mut d| d.next().is_some());
            let run = RunOptions {
                resume: started,
                overwrite: false,
                quiet,
                inputs: inputs.to_vec(),
            };
            let needs = cfg.backend_needs();
            let s = crate::dist::launch::on_ranks(opts.gpus, device, |comm, gpu| {
                let (be, chosen) = backend::select_on(device, &needs, gpu)?;
                if comm.rank() == 0 {
                    eprintln!(
                        "train: backend {chosen}{}",
                        crate::dist::launch::ranks_note(comm)
                    );
                }
                train::run_rank(cfg.clone(), be.as_ref(), comm, &run)
            })?;
            eprintln!(
                "trained {} steps{} in {:.1} s; {} image(s) skipped",
                s.steps_run,
                s.resumed_from
                    .map_or(String::new(), |k| format!(" (resumed at {k})")),
                s.seconds,
                s.skipped
            );
            Ok(vec![s.final_model])
        }
    }
}

/// `pool` (rows: the described images) with each row's first `VERIFY_TOP` neighbours re-ranked
/// by spatial verification against the local features `local` (the same rows).
fn verified(
    plan: &Plan,
    pool: crate::mining::pool::CandidatePool,
    local: &Path,
    device: DeviceChoice,
) -> Result<crate::mining::pool::CandidatePool> {
    use crate::eval::verify::{rerank_pool, verify_pairs};
    let l = crate::eval::local::LocalFeatures::load(local)?;
    if l.images() != pool.n {
        bail!(
            "{} holds {} images but the pool {}; extract them again",
            local.display(),
            l.images(),
            pool.n
        );
    }
    let t = plan.pool.verify_top.min(pool.k);
    let s = crate::backend::Verify {
        dim: l.dim,
        inlier_px: plan.pool.inlier_px,
        ratio: plan.pool.ratio,
        ..Default::default()
    };
    let (be, _) = backend::select(device, &[(Op::Verify, DType::I8)])?;
    let pairs: Vec<[u32; 2]> = (0..pool.n)
        .flat_map(|i| pool.neighbors(i)[..t].iter().map(move |&j| [i as u32, j]))
        .collect();
    let t0 = Instant::now();
    let inliers: Vec<i32> = verify_pairs(be.as_ref(), &l, &pairs, s, &mut |_| {})?
        .iter()
        .map(|f| f.inliers)
        .collect();
    let (out, reordered, first) = rerank_pool(&pool, &inliers, t, plan.pool.min_inliers);
    println!(
        "pool: verified the top {t} of {} images ({} pairs in {:.1} s): {reordered} lists reordered, {first} with a verified first neighbour",
        pool.n,
        pairs.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// What `step` writes: its files, and the folders they go in.
fn step_outputs(plan: &Plan, step: Step) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let k = step.stage;
    let mut dirs = vec![plan.dir(k)];
    let files = match step.kind {
        Kind::Model => vec![plan.model(0)],
        Kind::Features => {
            let f = plan.features(k);
            let mut v = vec![
                f.clone(),
                f.with_extension("txt"),
                f.with_extension("bad.txt"),
            ];
            v.extend(plan.local_features(k));
            v
        }
        Kind::Pool => vec![plan.pool_file(k)],
        Kind::Eval => vec![plan.eval_file(k)],
        // The stage's folder has a manifest of its own, kept by train.
        Kind::Train => {
            dirs.push(plan.dir(k).join("train"));
            Vec::new()
        }
    };
    (files, dirs)
}

/// Runs (or continues) the plan of `opts.config`: every step not done yet, then the table of
/// scores and the plot of every stage.
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// use insclr::jobs::{pipeline, PipelineOptions};
/// let dir = std::env::temp_dir().join(format!("insclr-doc-pipeline-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let data = std::fs::canonicalize("tests/data/gldv2")?;
/// // One tiny stage (a 4-stage ResNet 4 channels wide at 32 px, two steps of XBM v1) from a
/// // random backbone; paths in a plan and a config are relative to their file.
/// std::fs::write(
///     dir.join("stage.toml"),
///     "OUTPUT_DIR = \"unused\"\nSEED = 3\n[DATA]\nROOT = \"unused\"\n\
///      [INPUT]\nTRAIN_IMG_SIZE = [32, 32]\nNOAUG_IMG_SIZE = [32, 32]\n\
///      [MODEL]\nPRETRAIN = \"random\"\n[MODEL.BACKBONE]\nNAME = \"resnet-custom\"\n\
///      STAGES = [1, 1, 1, 1]\nBASE_WIDTH = 4\n[MODEL.HEAD]\nOUT_DIM = 8\n\
///      [SOLVER]\nIMS_PER_BATCH = 2\nMAX_STEP = 2\nCHECKPOINT_PERIOD = 2\n\
///      [NEIGHBOR]\nSRC = \"unused\"\nK = 2\n\
///      [XBM]\nENABLE = true\nVERSION = \"v1\"\nFEATURE_DIM = 8\n\
///      SIZE = 0\nSTART_STEP = 0\nGET_STEP = 1\nGET_SIZE = 4\nPOTENTIAL_POSITIVE = 2\n",
/// )?;
/// std::fs::write(
///     dir.join("plan.toml"),
///     format!(
///         "OUTPUT_DIR = \"run\"\n[DATA]\nROOT = {:?}\n\
///          [POOL]\nK = 4\nEXACT_SIZE = [40, 48]\nSCALES = [1.0]\n\
///          [[STAGE]]\nNAME = \"s1\"\nCONFIG = \"stage.toml\"\n",
///         data.join("train").display().to_string()
///     ),
/// )?;
/// let opts = PipelineOptions { config: dir.join("plan.toml"), quiet: true, ..Default::default() };
/// let done = pipeline(&opts, insclr::backend::DeviceChoice::Cpu)?;
/// assert_eq!(done.steps, 4); // s0/model, s0/features, s0/pool, s1/train
/// assert!(dir.join("run/s1/train/model_final.safetensors").exists());
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
pub fn pipeline(opts: &PipelineOptions, device: DeviceChoice) -> Result<PipelineReport> {
    let threads = matches!(device, DeviceChoice::Cpu | DeviceChoice::Emu);
    let launched = crate::dist::launch::RankEnv::from_env()?.is_some_and(|e| e.world > 1);
    if opts.gpus > 1 && !threads || launched {
        bail!("pipeline splits its steps over ranks as threads, with --device cpu or emu; on GPUs run its steps as commands (`insclr-cu extract | pool | train --gpus N --device cuda`, or under srun / torchrun), which split over one process per GPU");
    }
    let mut plan = Plan::read(&opts.config)?;
    if let Some(p) = &opts.precision {
        plan.precision = p.clone();
    }
    if let Some(d) = &opts.output_dir {
        plan.output_dir = d.clone();
    }
    plan.check()
        .with_context(|| format!("pipeline plan {} with the flags", opts.config.display()))?;
    // Every stage config is read and checked here, before the output folder is touched.
    let inputs = plan_inputs(&plan, &opts.config)?;
    let steps = plan.steps();
    let out = Path::new(&plan.output_dir);
    let mut outputs = vec![
        Named::new("the pipeline's", out.join(STATE_FILE)),
        Named::new("the pipeline's", out.join("plot.svg")),
    ];
    for &s in &steps {
        let what = format!("step {}'s", plan.step_name(s));
        outputs.extend(
            step_outputs(&plan, s)
                .0
                .into_iter()
                .map(|p| Named::new(&what, p)),
        );
    }
    check_outputs(&inputs, &outputs)?;
    let (mut state, mut dir) = open_state(&plan, &inputs, opts.overwrite)?;
    let r = run_steps(&plan, &steps, &mut state, &mut dir, &inputs, device, opts);
    if r.is_err() {
        dir.undo(&state);
    }
    r
}

/// The steps not done yet, the table and the plot, in the locked `dir`.
fn run_steps(
    plan: &Plan,
    steps: &[Step],
    state: &mut State,
    dir: &mut OutDir,
    inputs: &[Named],
    device: DeviceChoice,
    opts: &PipelineOptions,
) -> Result<PipelineReport> {
    let t0 = Instant::now();
    for (i, &step) in steps.iter().enumerate() {
        let name = plan.step_name(step);
        if state.is_done(&name) {
            eprintln!("pipeline [{}/{}] {name}: done before", i + 1, steps.len());
            continue;
        }
        eprintln!("\npipeline [{}/{}] {name}", i + 1, steps.len());
        let t = Instant::now();
        let (files, dirs) = step_outputs(plan, step);
        for d in &dirs {
            dir.manifest.add_dir(d)?;
        }
        for f in &files {
            dir.manifest.add(f)?;
        }
        let made = run_step(plan, step, device, opts, inputs)
            .with_context(|| format!("pipeline step {name}"))?;
        let outputs = made
            .iter()
            .map(|p| file_sum(p))
            .collect::<Result<Vec<_>>>()?;
        state.done.push(Done {
            step: name,
            outputs,
            seconds: t.elapsed().as_secs_f64(),
        });
        state.save(plan)?;
    }
    let last = plan.stage.len();
    let final_model = file_sum(&plan.model(last))?;
    let table = plan.eval.is_some().then(|| table(plan)).transpose()?;
    let plot = Path::new(&plan.output_dir).join("plot.svg");
    dir.manifest.add(&plot)?;
    write_plot(plan, &plot)?;
    Ok(PipelineReport {
        steps: steps.len(),
        seconds: t0.elapsed().as_secs_f64(),
        final_model,
        table,
        plot,
    })
}

/// `plot.svg`: the stages' curves end to end (steps counted across stages) and the first
/// score of every evaluation at the step its stage ended.
fn write_plot(plan: &Plan, path: &Path) -> Result<()> {
    let mut runs = Vec::new();
    let mut ends = vec![0.0];
    let mut offset = 0.0;
    for k in 1..=plan.stage.len() {
        let rows = train::log::read_log(&plan.dir(k).join("train"))?;
        let last = rows.last().and_then(|r| r["step"].as_f64()).unwrap_or(0.0);
        runs.push((offset, rows));
        offset += last;
        ends.push(offset);
    }
    let mut panels = train::log::log_panels(&runs);
    if plan.eval.is_some() {
        let mut label = String::new();
        let mut points = Vec::new();
        for (k, x) in ends.iter().enumerate() {
            if let Some((name, m)) = scores(plan, k)?.into_iter().next() {
                label = format!("mAP {name} after each stage");
                points.extend(m.map(|m| (*x, 100.0 * m)));
            }
        }
        panels.push(crate::io::plot::Panel {
            title: label,
            points,
            dots: true,
        });
    }
    let names: Vec<&str> = plan.stage.iter().map(|s| s.name.as_str()).collect();
    let title = format!("{}: stages {}", plan.output_dir, names.join(", "));
    crate::io::plot::write(path, &title, "step (all stages)", &panels)
}

/// Stage `k`'s scores from its `eval --json`: (protocol or split, mAP in [0, 1]) per result.
fn scores(plan: &Plan, k: usize) -> Result<Vec<(String, Option<f64>)>> {
    let path = plan.eval_file(k);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not eval --json output", path.display()))?;
    let results = v["results"].as_array().cloned().unwrap_or_default();
    Ok(results
        .iter()
        .map(|r| {
            let label = r["protocol"]
                .as_str()
                .or(r["split"].as_str())
                .unwrap_or("?");
            (
                label.to_string(),
                r["map"].as_f64().or(r["map_at_100"].as_f64()),
            )
        })
        .collect())
}

/// The scores of every evaluated stage, one row each.
fn table(plan: &Plan) -> Result<String> {
    let mut header: Vec<String> = Vec::new();
    let mut rows = Vec::new();
    for k in 0..=plan.stage.len() {
        let found = scores(plan, k)?;
        if k == 0 {
            header = found.iter().map(|(label, _)| label.clone()).collect();
        }
        let cells: Vec<String> = found
            .iter()
            .map(|(_, m)| m.map_or("-".to_string(), |m| format!("{:.2}", 100.0 * m)))
            .collect();
        let what = match k {
            0 => "starting model".to_string(),
            k => format!("after {}", plan.stage[k - 1].name),
        };
        rows.push((plan.stage_name(k).to_string(), what, cells));
    }
    let mut s = format!("{:<8}{:<18}", "stage", "model");
    for h in &header {
        s += &format!("{:>12}", format!("mAP {h}"));
    }
    s.push('\n');
    for (name, what, cells) in rows {
        s += &format!("{name:<8}{what:<18}");
        for c in cells {
            s += &format!("{c:>12}");
        }
        s.push('\n');
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_plans_parse_and_chain_their_stages() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let plans = [
            ("demo-pipeline.toml", 4),
            ("bench-pipeline.toml", 4),
            ("bench-pipeline-one-base.toml", 2),
            ("gldv2-pipeline.toml", 4),
        ];
        for (name, stages) in plans {
            // Read from any folder: the plan's paths are relative to the plan.
            let plan = Plan::read(&root.join("configs").join(name)).unwrap();
            assert_eq!(plan.stage.len(), stages, "{name}");
            assert!(Path::new(&plan.stage[0].config).exists(), "{name}");
            let steps: Vec<String> = plan.steps().iter().map(|&s| plan.step_name(s)).collect();
            assert_eq!(
                steps[..5],
                ["s0/model", "s0/features", "s0/pool", "s0/eval", "s1/train"]
            );
            assert_eq!(steps[steps.len() - 2..], ["s4/train", "s4/eval"]);
            let s2 = plan.stage_config(2).unwrap();
            assert_eq!(s2.neighbor.src, plan.pool_file(1).display().to_string());
            assert_eq!(s2.model.pretrain, plan.model(1).display().to_string());
            assert_eq!(s2.data.root, plan.data.root);
            assert_eq!(
                s2.output_dir,
                plan.dir(2).join("train").display().to_string()
            );
            assert!(
                plan.stage0_is_gem().unwrap(),
                "{name}: stage 1 starts from ImageNet"
            );
        }
        let gld = Plan::read(&root.join("configs/gldv2-pipeline.toml")).unwrap();
        assert_eq!((gld.pool.k, gld.pool.exact_size), (500, [512, 512]));
    }

    #[test]
    fn a_features_step_describes_with_the_tf32_of_the_stage_that_mines_its_pool() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut plan = Plan::read(&root.join("configs/demo-pipeline.toml")).unwrap();
        let last = plan.stage.len();
        assert!(
            (0..=last).all(|k| plan.describe_tf32(k).unwrap()),
            "the default: TF32"
        );
        plan.stage[1].set.push("SOLVER.TF32=false".into());
        let tf32: Vec<bool> = (0..=last).map(|k| plan.describe_tf32(k).unwrap()).collect();
        // Stage 2 mines the pool of s1's features.
        assert_eq!(tf32[..3], [true, false, true]);
        plan.stage[last - 1].set.push("SOLVER.TF32=false".into());
        assert!(
            !plan.describe_tf32(last).unwrap(),
            "the last features: the last stage's"
        );
    }
}
