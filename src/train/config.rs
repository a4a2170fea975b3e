//! The stage config: TOML with the original YAML's keys (`MODEL`, `INPUT`, `SOLVER`, `XBM`,
//! `SELECTION`, `NEIGHBOR`, `LOSS`, ...) and its defaults (`benchmark/config/defaults.py`, spec
//! section 5). Unknown keys are an error naming the key, so a typo never silently falls back
//! to a default.
//!
//! Additions of this port (not in the original): top-level `SEED`; `DATA.CACHE_IMAGES`;
//! `MODEL.BACKBONE.STAGES` / `BASE_WIDTH` (small ResNets for CPU runs); `MODEL.IMAGENET_WEIGHTS`
//! (the file `PRETRAIN = "imagenet"` loads; the original reads `model_zoo/`);
//! `PRETRAIN = "random"`; `MODEL.BN_GHOST_GROUPS` (spec G13); `XBM.SIZE = 0` meaning "the
//! dataset's size"; `SOLVER.LOG_PERIOD`; `SOLVER.TRACE_ANCHORS` / `TRACE_IMAGES` (the decision
//! log).

use crate::backend::{DType, Op};
use crate::data::image::PixelNorm;
use crate::nn::meta::ModelMeta;
use crate::nn::RetrievalNet;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `MODEL` and its subsections: the network's own section, which building a model
/// ([`crate::nn::model`]) reads without the rest of the config.
pub use crate::nn::config::{Backbone, Gmp, Head, Model, Pool};

/// A whole stage config.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct Config {
    /// Where checkpoints, the JSON-lines log and the final model go.
    pub output_dir: String,
    /// Accepted for compatibility; the backend is picked by `insclr-cu train --cpu` / detection.
    pub device: String,
    /// Seed of every random choice (sampler, augmentation, memory samples, initialisation).
    pub seed: u64,
    pub data: Data,
    pub noaug: NoAug,
    pub input: Input,
    pub dataloader: DataLoader,
    pub model: Model,
    pub loss: Loss,
    pub solver: Solver,
    pub test: Test,
    pub xbm: Xbm,
    pub neighbor: Neighbor,
    pub attention: Attention,
    pub selection: Selection,
}

/// `DATA`: where the training images are.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct Data {
    /// Free-form name (the original needs `gldv2`; here it is only logged).
    pub dataset: String,
    /// Image folder, or the prefix for relative paths in `TRAIN_FILENAME`.
    pub root: String,
    /// GLDv2's `train_clean.csv` (`landmark_id,images`; landmarks of 15 or more images, in
    /// file order, images at `ROOT/a/b/c/<id>.jpg`), or a list file (one path per line,
    /// relative to `ROOT`); empty: every image under `ROOT`, sorted by path (the order
    /// `insclr-cu extract --images ROOT` uses).
    pub train_filename: String,
    /// Unused by training (kept for the original's key).
    pub test_filename: String,
    /// Keep decoded images in memory (small sets); otherwise decode every step.
    pub cache_images: bool,
}

/// `NOAUG`: the no-augmentation view used for selection and mining (impr).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct NoAug {
    pub enable: bool,
    pub scales: Vec<f64>,
}

/// `INPUT`: augmentation and image sizes, `(height, width)`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct Input {
    pub scale_lower: f64,
    pub scale_upper: f64,
    pub pixel_mean: [f32; 3],
    pub pixel_std: [f32; 3],
    pub train_img_size: [usize; 2],
    /// Candidate-pool extraction size (used by `extract`, not by `train`).
    pub test_img_size: [usize; 2],
    pub noaug_img_size: [usize; 2],
}

/// `DATALOADER`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct DataLoader {
    /// Threads that decode and augment the next steps' images (at most the machine's cores;
    /// without PREFETCH they run on rayon's global pool, `RAYON_NUM_THREADS`).
    pub num_workers: usize,
    pub sampler: String,
    /// Steps whose images a loader thread prepares while the current step computes (0: each
    /// step loads its own). Changes no result.
    pub prefetch: usize,
}

/// `LOSS`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct Loss {
    pub name: String,
    pub contrastive_loss: ContrastiveLoss,
}

/// `LOSS.CONTRASTIVE_LOSS`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct ContrastiveLoss {
    pub margin: f32,
    pub pos_margin: f32,
}

/// `SOLVER`: optimiser, schedule, steps, checkpoints.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct Solver {
    /// `adam` or `sgd`.
    pub name: String,
    pub base_lr: f64,
    pub bias_lr_factor: f64,
    pub weight_decay: f64,
    pub weight_decay_bias: f64,
    pub loss_base_lr: f64,
    pub loss_bias_lr_factor: f64,
    pub loss_weight_decay: f64,
    pub loss_weight_decay_bias: f64,
    pub momentum: f64,
    pub grad_max_norm: f64,
    pub scheduler_name: String,
    pub steps: Vec<usize>,
    pub max_step: usize,
    pub gamma: f64,
    pub warmup_factor: f64,
    pub warmup_step: usize,
    pub warmup_method: String,
    /// Anchors per step (each brings `NEIGHBOR.K` neighbours).
    pub ims_per_batch: usize,
    /// `f32`, or `bf16`: the backbone's activations and gradients and the memory banks in bf16
    /// (tensor cores on a GPU), with f32 master weights, optimiser state, BatchNorm statistics
    /// and head. Not in the original (which trains in f32).
    pub precision: String,
    /// With `f32`: convolutions on TF32 tensor cores where the backend has them (a CUDA GPU, or
    /// its emulator; inputs rounded to 10 mantissa bits, f32 accumulation), as PyTorch's f32
    /// convolutions run by default; `false` keeps every convolution exact f32. Everything else
    /// stays f32, and the CPU is always exact.
    pub tf32: bool,
    pub checkpoint_period: usize,
    /// Steps between progress-log lines on stderr (the JSON log gets every step).
    pub log_period: usize,
    /// Anchors (a seeded sample of the dataset) whose tuples' selection and mining decisions
    /// go to `OUTPUT_DIR/decisions.jsonl` whenever they are in a batch (what `insclr-cu
    /// report` shows); 0: none.
    pub trace_anchors: usize,
    /// Images (paths as listed: relative to `DATA.ROOT`) traced as anchors too.
    pub trace_images: Vec<String>,
}

/// `TEST`: periodic evaluation (not run by `train`; evaluate checkpoints with `insclr-cu eval`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct Test {
    pub test_period: usize,
    pub ims_per_batch: usize,
    pub scales: Vec<f64>,
}

/// `XBM`: memory banks and what is read from them.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct Xbm {
    /// `v1` (base stages) or `v2` (impr).
    pub version: String,
    pub enable: bool,
    pub potential_positive: usize,
    /// Dataset size (0: take it from the image list).
    pub size: usize,
    pub feature_dim: usize,
    pub start_step: usize,
    pub get_step: usize,
    pub get_size: usize,
    /// Never read by the original either (G24).
    pub memory_loss_only: bool,
    pub memory_loss_weight: f32,
    pub use_negative: bool,
    pub positive_thresh: f32,
    pub negative_thresh: f32,
    pub candidate_mode: String,
}

/// `NEIGHBOR`: the candidate pool.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct Neighbor {
    /// The pool `.npz` of `insclr-cu pool`.
    pub src: String,
    /// Never read by the original either (G24).
    pub feature: String,
    pub k: usize,
}

/// `ATTENTION`: disabled in every shipped config; only `ENABLE = false` is supported.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct Attention {
    pub enable: bool,
    pub name: String,
    pub reduce_dim: usize,
    pub reduce_relu: bool,
    pub func: String,
}

/// `SELECTION`: mini-batch selection (impr).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct Selection {
    pub enable: bool,
    pub use_noaug_similarity: bool,
    pub thresh: f32,
    pub always_true: usize,
    /// `fixed` or `dynamic`.
    #[serde(rename = "TYPE")]
    pub kind: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            output_dir: String::new(),
            device: "cuda".into(),
            seed: 42,
            data: Data::default(),
            noaug: NoAug::default(),
            input: Input::default(),
            dataloader: DataLoader::default(),
            model: Model::default(),
            loss: Loss::default(),
            solver: Solver::default(),
            test: Test::default(),
            xbm: Xbm::default(),
            neighbor: Neighbor::default(),
            attention: Attention::default(),
            selection: Selection::default(),
        }
    }
}

impl Default for Data {
    fn default() -> Self {
        Data {
            dataset: String::new(),
            root: String::new(),
            train_filename: String::new(),
            test_filename: String::new(),
            cache_images: true,
        }
    }
}

impl Default for NoAug {
    fn default() -> Self {
        NoAug {
            enable: false,
            scales: vec![1.0],
        }
    }
}

impl Default for Input {
    fn default() -> Self {
        Input {
            scale_lower: 0.75,
            scale_upper: 1.33,
            pixel_mean: [0.485, 0.456, 0.406],
            pixel_std: [0.229, 0.224, 0.225],
            train_img_size: [512, 512],
            test_img_size: [512, 512],
            noaug_img_size: [512, 512],
        }
    }
}

impl Default for DataLoader {
    fn default() -> Self {
        DataLoader {
            num_workers: 8,
            sampler: "random".into(),
            prefetch: 2,
        }
    }
}

impl Default for Loss {
    fn default() -> Self {
        Loss {
            name: "contrastive_loss".into(),
            contrastive_loss: ContrastiveLoss::default(),
        }
    }
}

impl Default for ContrastiveLoss {
    fn default() -> Self {
        ContrastiveLoss {
            margin: 0.5,
            pos_margin: 0.0,
        }
    }
}

impl Default for Solver {
    fn default() -> Self {
        Solver {
            name: "sgd".into(),
            base_lr: 1e-3,
            bias_lr_factor: 1.0,
            weight_decay: 1e-6,
            weight_decay_bias: 0.0,
            loss_base_lr: 1e-3,
            loss_bias_lr_factor: 1.0,
            loss_weight_decay: 1e-6,
            loss_weight_decay_bias: 0.0,
            momentum: 0.9,
            grad_max_norm: 9_999_999.0,
            scheduler_name: "WarmupMultiStepLR".into(),
            steps: vec![50_000, 75_000],
            max_step: 80_000,
            gamma: 0.1,
            warmup_factor: 1.0 / 3.0,
            warmup_step: 0,
            warmup_method: "linear".into(),
            ims_per_batch: 36,
            precision: "f32".into(),
            tf32: true,
            checkpoint_period: 4000,
            log_period: 20,
            trace_anchors: 64,
            trace_images: Vec::new(),
        }
    }
}

impl Default for Test {
    fn default() -> Self {
        Test {
            test_period: 4000,
            ims_per_batch: 128,
            scales: vec![1.0, std::f64::consts::FRAC_1_SQRT_2, 0.5],
        }
    }
}

impl Default for Xbm {
    fn default() -> Self {
        Xbm {
            version: "v1".into(),
            enable: false,
            potential_positive: 50,
            size: 1_223_195,
            feature_dim: 2048,
            start_step: 2000,
            get_step: 4000,
            get_size: 100_000,
            memory_loss_only: false,
            memory_loss_weight: 1.0,
            use_negative: true,
            positive_thresh: 0.65,
            negative_thresh: 0.55,
            candidate_mode: String::new(),
        }
    }
}

impl Default for Neighbor {
    fn default() -> Self {
        Neighbor {
            src: String::new(),
            feature: String::new(),
            k: 1,
        }
    }
}

impl Default for Attention {
    fn default() -> Self {
        Attention {
            enable: false,
            name: "spaital_attention".into(),
            reduce_dim: 128,
            reduce_relu: false,
            func: "sigmoid".into(),
        }
    }
}

impl Default for Selection {
    fn default() -> Self {
        Selection {
            enable: false,
            use_noaug_similarity: true,
            thresh: 0.65,
            always_true: 0,
            kind: "fixed".into(),
        }
    }
}

/// A config file's text, refusing files too large to be one: configs are a few KB, and a
/// large file is a wrong path (a dataset, a checkpoint) that reading whole would only delay.
/// The keys whose values are paths: in a config file they are relative to the file's folder,
/// as cargo and compose files read theirs (`--set` values and the pipeline's keys, given on a
/// command line, are relative to the current folder). MODEL.PRETRAIN is a path unless it is
/// `imagenet` or `random`; DATA.TRAIN_FILENAME and SOLVER.TRACE_IMAGES are relative to
/// DATA.ROOT.
pub const FILE_PATH_KEYS: [&str; 6] = [
    "OUTPUT_DIR",
    "DATA.ROOT",
    "NEIGHBOR.SRC",
    "MODEL.PRETRAIN",
    "MODEL.IMAGENET_WEIGHTS",
    "MODEL.HEAD.INIT_FEATS",
];

/// Rewrites the [`FILE_PATH_KEYS`] of `doc`, read from `file`, relative to the current folder.
fn paths_beside(doc: &mut toml::Table, file: &Path) {
    for key in FILE_PATH_KEYS {
        let mut parts: Vec<&str> = key.split('.').collect();
        let Some(last) = parts.pop() else { continue };
        let mut table = Some(&mut *doc);
        for part in parts {
            table = table
                .and_then(|t| t.get_mut(part))
                .and_then(|v| v.as_table_mut());
        }
        let Some(toml::Value::String(v)) = table.and_then(|t| t.get_mut(last)) else {
            continue;
        };
        if key == "MODEL.PRETRAIN" && matches!(v.as_str(), "imagenet" | "random") {
            continue;
        }
        *v = crate::io::paths::beside(file, v);
    }
}

fn read_config_text(path: &Path) -> Result<String> {
    const MAX_CONFIG: u64 = 1 << 20;
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading config {}", path.display()))?
        .len();
    if len > MAX_CONFIG {
        bail!(
            "config {} is {len} bytes; a config is a small TOML file (see configs/*.toml): wrong path?",
            path.display()
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))
}

impl Config {
    /// Parses TOML text; `name` is the file named in errors.
    pub fn parse(text: &str, name: &str) -> Result<Config> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            anyhow::anyhow!(
                "{name}: {}; keys are the original YAML's (see configs/*.toml)",
                e.to_string().trim_end()
            )
        })?;
        cfg.validate().with_context(|| format!("checking {name}"))?;
        Ok(cfg)
    }

    /// Reads and checks a config file. Its paths are relative to its folder (see
    /// [`FILE_PATH_KEYS`]).
    pub fn load(path: &Path) -> Result<Config> {
        let name = path.display().to_string();
        let text = read_config_text(path)?;
        // Checked as written first, so that an error points at the file's own lines.
        Config::parse(&text, &name)?;
        let mut doc: toml::Table = toml::from_str(&text)?;
        paths_beside(&mut doc, path);
        Config::parse(&toml::to_string(&doc)?, &name)
    }

    /// [`Config::load`] with `KEY=VALUE` overrides applied first (`SEED=7`,
    /// `SOLVER.BASE_LR=1e-5`, `OUTPUT_DIR="runs/a"`). A value is read as TOML, or as a string
    /// when it is not TOML (so `OUTPUT_DIR=runs/a` needs no quotes). The key must be one the
    /// config has: a misspelt key is an error, as in the file.
    pub fn load_with(path: &Path, overrides: &[String]) -> Result<Config> {
        if overrides.is_empty() {
            return Config::load(path);
        }
        let name = path.display().to_string();
        let text = read_config_text(path)?;
        let mut doc: toml::Table = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{name}: {}", e.to_string().trim_end()))?;
        // The file's paths are relative to the file, the overrides' to the current folder.
        paths_beside(&mut doc, path);
        for o in overrides {
            let (key, raw) = o.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("--set {o:?}: write KEY=VALUE, e.g. SOLVER.BASE_LR=1e-5")
            })?;
            let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(raw.to_string()));
            let mut parts: Vec<&str> = key.trim().split('.').collect();
            let last = parts
                .pop()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| anyhow::anyhow!("--set {o:?}: the key is empty"))?;
            let mut table = &mut doc;
            for part in parts {
                table = table
                    .entry(part)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .ok_or_else(|| {
                        anyhow::anyhow!("--set {o:?}: {part} is a value, not a section")
                    })?;
            }
            table.insert(last.to_string(), value);
        }
        Config::parse(
            &toml::to_string(&doc)?,
            &format!("{name} with --set {}", overrides.join(" ")),
        )
    }

    /// The type the backbone and the banks compute in (`SOLVER.PRECISION`, validated).
    pub fn precision(&self) -> DType {
        match self.solver.precision.as_str() {
            "bf16" => DType::BF16,
            _ => DType::F32,
        }
    }

    /// What the model files of a stage of this config record about `net` (its inputs'
    /// normalisation and sizes, the no-DA size when `noaug`; [`crate::nn::meta`]).
    pub fn model_meta(&self, net: &RetrievalNet, noaug: bool) -> ModelMeta {
        let i = &self.input;
        ModelMeta::of_training(
            net,
            PixelNorm {
                mean: i.pixel_mean,
                std: i.pixel_std,
            },
            i.train_img_size,
            noaug.then_some(i.noaug_img_size),
        )
    }

    /// What a training run of this config needs of a backend: every op on f32, and in bf16
    /// the ops of the backbone and the banks.
    pub fn backend_needs(&self) -> Vec<(Op, DType)> {
        let mut needs = crate::backend::f32_needs(&Op::ALL);
        if self.precision() != DType::F32 {
            needs.extend(
                crate::nn::LOW_PRECISION_OPS
                    .iter()
                    .map(|&o| (o, self.precision())),
            );
        }
        needs
    }

    /// Checks values that the types cannot: names, ranges and combinations this port runs.
    pub fn validate(&self) -> Result<()> {
        let s = &self.solver;
        if !matches!(s.name.as_str(), "adam" | "sgd") {
            bail!("SOLVER.NAME = {:?}: use \"adam\" or \"sgd\"", s.name);
        }
        if !matches!(s.precision.as_str(), "f32" | "bf16") {
            bail!(
                "SOLVER.PRECISION = {:?}: use \"f32\" or \"bf16\"",
                s.precision
            );
        }
        if s.scheduler_name != "WarmupMultiStepLR" {
            bail!(
                "SOLVER.SCHEDULER_NAME = {:?}: only \"WarmupMultiStepLR\" exists",
                s.scheduler_name
            );
        }
        if !matches!(s.warmup_method.as_str(), "linear" | "constant") {
            bail!(
                "SOLVER.WARMUP_METHOD = {:?}: use \"linear\" or \"constant\"",
                s.warmup_method
            );
        }
        if s.steps.windows(2).any(|w| w[0] > w[1]) {
            bail!(
                "SOLVER.STEPS = {:?} must be increasing (as the original requires)",
                s.steps
            );
        }
        if s.ims_per_batch == 0 || s.max_step == 0 || s.checkpoint_period == 0 {
            bail!(
                "SOLVER.IMS_PER_BATCH ({}), MAX_STEP ({}) and CHECKPOINT_PERIOD ({}) must be positive",
                s.ims_per_batch,
                s.max_step,
                s.checkpoint_period
            );
        }
        if !(s.base_lr > 0.0 && s.grad_max_norm > 0.0) {
            bail!(
                "SOLVER.BASE_LR ({}) and GRAD_MAX_NORM ({}) must be positive",
                s.base_lr,
                s.grad_max_norm
            );
        }
        let i = &self.input;
        if !(0.0 < i.scale_lower && i.scale_lower <= i.scale_upper) {
            bail!(
                "INPUT.SCALE_LOWER / SCALE_UPPER = {} / {}: need 0 < lower <= upper",
                i.scale_lower,
                i.scale_upper
            );
        }
        if i.train_img_size.contains(&0) || i.noaug_img_size.contains(&0) {
            bail!("INPUT.TRAIN_IMG_SIZE / NOAUG_IMG_SIZE must be positive [height, width]");
        }
        if i.pixel_std.iter().any(|&v| v <= 0.0) {
            bail!("INPUT.PIXEL_STD = {:?} must be positive", i.pixel_std);
        }
        if self.attention.enable {
            bail!("ATTENTION.ENABLE = true: the attention branch is not implemented (every shipped config disables it)");
        }
        let h = &self.model.head;
        if !h.enable && h.init != "random" {
            bail!(
                "MODEL.HEAD.INIT = {:?} with MODEL.HEAD.ENABLE = false: there is no head to initialise; remove INIT or enable the head",
                h.init
            );
        }
        match h.init.as_str() {
            "random" => {}
            "identity" => {
                if let Some(c) = h.in_dim.filter(|&c| c != h.out_dim) {
                    bail!(
                        "MODEL.HEAD.INIT = \"identity\" needs a square head, but IN_DIM = {c} and OUT_DIM = {}; set OUT_DIM = {c} or use INIT = \"pca\" / \"random\"",
                        h.out_dim
                    );
                }
            }
            "pca" => {
                if h.init_feats.is_empty() {
                    bail!("MODEL.HEAD.INIT = \"pca\" needs MODEL.HEAD.INIT_FEATS = the stage-0 descriptors (.npy, N x C f32), e.g. \"data/demo-work/s0_feature.npy\"");
                }
                if let Some(c) = h.in_dim.filter(|&c| h.out_dim > c) {
                    bail!(
                        "MODEL.HEAD.INIT = \"pca\" keeps at most IN_DIM = {c} directions, but OUT_DIM = {}; set OUT_DIM <= {c}",
                        h.out_dim
                    );
                }
            }
            other => bail!(
                "MODEL.HEAD.INIT = {other:?}: use \"random\" (the original's), \"identity\" or \"pca\""
            ),
        }
        if self.model.pool.name != "gem" || self.model.pool.gmp.p != 3.0 {
            bail!(
                "MODEL.POOL = {} with p {}: only GeM with fixed p = 3 is implemented (spec G15)",
                self.model.pool.name,
                self.model.pool.gmp.p
            );
        }
        if self.loss.name != "contrastive_loss" || self.loss.contrastive_loss.pos_margin != 0.0 {
            bail!("LOSS: only contrastive_loss with POS_MARGIN = 0 exists in the original");
        }
        if self.neighbor.src.is_empty() {
            bail!("NEIGHBOR.SRC is empty: give the candidate pool .npz made by `insclr-cu pool`");
        }
        if self.neighbor.k == 0 {
            bail!("NEIGHBOR.K must be at least 1");
        }
        if self.model.bn_ghost_groups == 0 {
            bail!("MODEL.BN_GHOST_GROUPS must be at least 1");
        }
        let x = &self.xbm;
        if x.enable {
            match x.version.as_str() {
                "v1" => {}
                "v2" => {
                    if !self.noaug.enable {
                        bail!("XBM.VERSION = \"v2\" needs NOAUG.ENABLE = true (the no-DA bank)");
                    }
                    crate::mining::Mode::parse(&x.candidate_mode)
                        .with_context(|| format!("XBM.CANDIDATE_MODE = {:?}", x.candidate_mode))?;
                }
                v => bail!("XBM.VERSION = {v:?}: use \"v1\" or \"v2\""),
            }
            // Without the head the descriptor width is the backbone's (checked by the stage).
            if self.model.head.enable && x.feature_dim != self.model.head.out_dim {
                bail!(
                    "XBM.FEATURE_DIM = {} but MODEL.HEAD.OUT_DIM = {}; they must match",
                    x.feature_dim,
                    self.model.head.out_dim
                );
            }
        }
        let sel = &self.selection;
        if sel.enable {
            if !matches!(sel.kind.as_str(), "fixed" | "dynamic") {
                bail!(
                    "SELECTION.TYPE = {:?}: use \"fixed\" or \"dynamic\"",
                    sel.kind
                );
            }
            if sel.use_noaug_similarity && !self.noaug.enable {
                bail!("SELECTION.USE_NOAUG_SIMILARITY needs NOAUG.ENABLE = true");
            }
        }
        if self.noaug.scales.is_empty() || self.noaug.scales.iter().any(|&s| s <= 0.0) {
            bail!(
                "NOAUG.SCALES = {:?} must be positive factors",
                self.noaug.scales
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[NEIGHBOR]\nSRC = \"pool.npz\"\n";

    #[test]
    fn defaults_are_the_originals() {
        let c = Config::parse(MINIMAL, "t.toml").unwrap();
        assert_eq!(c.solver.name, "sgd");
        assert_eq!(c.solver.base_lr, 1e-3);
        assert_eq!(c.solver.weight_decay, 1e-6);
        assert_eq!(c.solver.steps, vec![50_000, 75_000]);
        assert_eq!(c.solver.max_step, 80_000);
        assert_eq!(c.solver.ims_per_batch, 36);
        assert_eq!(c.solver.grad_max_norm, 9_999_999.0);
        assert_eq!(c.loss.contrastive_loss.margin, 0.5);
        assert_eq!((c.xbm.positive_thresh, c.xbm.negative_thresh), (0.65, 0.55));
        assert_eq!(c.xbm.size, 1_223_195);
        assert_eq!((c.xbm.start_step, c.xbm.get_step), (2000, 4000));
        assert_eq!(c.selection.thresh, 0.65);
        assert_eq!(c.neighbor.k, 1);
        assert_eq!(c.input.noaug_img_size, [512, 512]);
        assert_eq!((c.input.scale_lower, c.input.scale_upper), (0.75, 1.33));
        assert_eq!(c.test.scales.len(), 3);
        assert_eq!(c.seed, 42);
    }

    #[test]
    fn head_init_and_frozen_batchnorm_parse_with_paper_defaults() {
        let c = Config::parse(MINIMAL, "t.toml").unwrap();
        assert_eq!(c.model.head.init, "random");
        assert!(c.model.head.init_feats.is_empty());
        assert!(!c.model.backbone.freeze_bn);
        let text = format!(
            "{MINIMAL}[MODEL.BACKBONE]\nFREEZE_BN = true\n[MODEL.HEAD]\nOUT_DIM = 512\nINIT = \"pca\"\nINIT_FEATS = \"s0.npy\"\n"
        );
        let c = Config::parse(&text, "t.toml").unwrap();
        assert!(c.model.backbone.freeze_bn);
        assert_eq!(
            (c.model.head.init.as_str(), c.model.head.init_feats.as_str()),
            ("pca", "s0.npy")
        );
        let bad = |head: &str| {
            let text = format!("{MINIMAL}[MODEL.HEAD]\n{head}\n");
            format!("{:#}", Config::parse(&text, "t.toml").unwrap_err())
        };
        let e = bad("INIT = \"zeros\"");
        assert!(
            e.contains("MODEL.HEAD.INIT") && e.contains("identity"),
            "{e}"
        );
        let e = bad("INIT = \"pca\"");
        assert!(e.contains("INIT_FEATS"), "{e}");
        let e = bad("INIT = \"identity\"\nIN_DIM = 2048\nOUT_DIM = 512");
        assert!(e.contains("square") && e.contains("OUT_DIM = 2048"), "{e}");
        let e = bad("INIT = \"pca\"\nINIT_FEATS = \"f.npy\"\nIN_DIM = 256\nOUT_DIM = 512");
        assert!(e.contains("OUT_DIM <= 256"), "{e}");
        let e = bad("ENABLE = false\nINIT = \"identity\"");
        assert!(
            e.contains("ENABLE = false") && e.contains("remove INIT"),
            "{e}"
        );
        // Without the head, XBM.FEATURE_DIM is checked against the backbone by the stage.
        let text = format!(
            "{MINIMAL}[MODEL.HEAD]\nENABLE = false\n[XBM]\nENABLE = true\nFEATURE_DIM = 1280\n"
        );
        assert!(!Config::parse(&text, "t.toml").unwrap().model.head.enable);
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let text = format!("{MINIMAL}[SOLVER]\nBASE_LRR = 1e-4\n");
        let e = format!("{:#}", Config::parse(&text, "cfg.toml").unwrap_err());
        assert!(e.contains("BASE_LRR") && e.contains("cfg.toml"), "{e}");
        let e = format!(
            "{:#}",
            Config::parse(&format!("{MINIMAL}[XBMM]\nENABLE = true\n"), "c").unwrap_err()
        );
        assert!(e.contains("XBMM"), "{e}");
    }

    #[test]
    fn bad_values_are_errors_naming_the_key() {
        let e = format!(
            "{:#}",
            Config::parse(&format!("{MINIMAL}[SOLVER]\nNAME = \"lamb\"\n"), "c").unwrap_err()
        );
        assert!(e.contains("SOLVER.NAME"), "{e}");
        let e = format!(
            "{:#}",
            Config::parse(&format!("{MINIMAL}[SOLVER]\nPRECISION = \"fp16\"\n"), "c").unwrap_err()
        );
        assert!(e.contains("SOLVER.PRECISION = \"fp16\""), "{e}");
        let bf16 = Config::parse(&format!("{MINIMAL}[SOLVER]\nPRECISION = \"bf16\"\n"), "c");
        let bf16 = bf16.unwrap();
        assert_eq!(bf16.precision(), DType::BF16);
        assert!(bf16
            .backend_needs()
            .contains(&(Op::Conv2dBwdData, DType::BF16)));
        let e = format!(
            "{:#}",
            Config::parse(
                &format!("{MINIMAL}[XBM]\nENABLE = true\nVERSION = \"v2\"\nFEATURE_DIM = 2048\n"),
                "c"
            )
            .unwrap_err()
        );
        assert!(e.contains("NOAUG.ENABLE"), "{e}");
        let e = format!("{:#}", Config::parse("", "c").unwrap_err());
        assert!(e.contains("NEIGHBOR.SRC"), "{e}");
    }

    /// `--set` overrides: TOML values or bare strings, nested keys, new sections; a misspelt
    /// key or a value of the wrong type is refused as it would be in the file.
    #[test]
    fn overrides_set_keys_and_refuse_unknown_ones() {
        let path = std::env::temp_dir().join(format!("insclr-set-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            format!("SEED = 1\n{MINIMAL}[SOLVER]\nBASE_LR = 0.1\n"),
        )
        .unwrap();
        let set = |o: &[&str]| {
            let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
            Config::load_with(&path, &o)
        };
        let c = set(&[
            "SEED=7",
            "SOLVER.BASE_LR=1e-5",
            "OUTPUT_DIR=runs/a",
            "XBM.ENABLE=true",
        ])
        .unwrap();
        assert_eq!((c.seed, c.solver.base_lr), (7, 1e-5));
        // A --set path is the command line's (relative to the current folder), the file's
        // relative to the file.
        assert_eq!(c.output_dir, "runs/a");
        assert!(c.xbm.enable);
        let beside = path.with_file_name("pool.npz").display().to_string();
        assert_eq!(c.neighbor.src, beside);
        assert_eq!(Config::load(&path).unwrap().neighbor.src, beside);
        for (bad, says) in [
            ("SOLVER.BASE_RL=1", "BASE_RL"),
            ("SEED=x", "SEED"),
            ("SEED", "KEY=VALUE"),
            ("SEED.X=1", "not a section"),
        ] {
            let e = format!("{:#}", set(&[bad]).unwrap_err());
            assert!(e.contains(says), "{bad}: {e}");
        }
        std::fs::remove_file(&path).ok();
    }

    /// The shipped configs mirror spec section 5.
    #[test]
    fn shipped_configs_parse_with_the_specs_values() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let s1 = Config::load(&root.join("gldv2-base-stage1.toml")).unwrap();
        assert_eq!(s1.solver.name, "adam");
        assert_eq!((s1.solver.base_lr, s1.solver.weight_decay), (1e-4, 1e-4));
        assert_eq!(
            (s1.solver.steps.clone(), s1.solver.max_step),
            (vec![40_000], 60_000)
        );
        assert_eq!(s1.solver.ims_per_batch, 64);
        assert_eq!(s1.input.train_img_size, [224, 224]);
        assert_eq!((s1.input.scale_lower, s1.input.scale_upper), (0.75, 1.33));
        assert_eq!(
            (s1.xbm.version.as_str(), s1.xbm.start_step, s1.xbm.get_step),
            ("v1", 2000, 4000)
        );
        assert_eq!(s1.neighbor.k, 3);
        assert_eq!(s1.loss.contrastive_loss.margin, 0.4);
        let im = Config::load(&root.join("gldv2-impr.toml")).unwrap();
        assert_eq!(
            (im.solver.base_lr, im.solver.steps.clone()),
            (3e-5, vec![20_000])
        );
        assert_eq!((im.solver.ims_per_batch, im.solver.max_step), (16, 40_000));
        assert_eq!(im.input.train_img_size, [448, 448]);
        assert_eq!((im.input.scale_lower, im.input.scale_upper), (0.4, 1.0));
        assert_eq!(im.xbm.candidate_mode, "b+i_tr4_avg0.60_k05");
        assert_eq!(
            (im.xbm.positive_thresh, im.xbm.negative_thresh),
            (0.75, 0.5)
        );
        assert_eq!(
            (im.xbm.start_step, im.xbm.get_step, im.xbm.get_size),
            (0, 0, 100_000)
        );
        assert!(im.noaug.enable && im.selection.enable);
        assert_eq!(
            (im.selection.thresh, im.selection.kind.as_str()),
            (0.6, "fixed")
        );
        let ib = Config::load(&root.join("instre-base.toml")).unwrap();
        assert_eq!(ib.solver.grad_max_norm, 10.0);
        assert_eq!(ib.model.head.name, "linear_norm");
        assert_eq!(ib.model.head.out_dim, 256);
        let ii = Config::load(&root.join("instre-impr.toml")).unwrap();
        assert_eq!(ii.input.train_img_size, [224, 226]);
        assert!(!ii.xbm.use_negative);
        for f in [
            "gldv2-base-stage2.toml",
            "gldv2-base-stage3.toml",
            "demo.toml",
            "demo-impr.toml",
            "demo-lite0.toml",
            "small-collection.toml",
        ] {
            Config::load(&root.join(f)).unwrap();
        }
        // Their paths are read from their folder, whatever folder the command runs in.
        let small = Config::load(&root.join("small-collection.toml")).unwrap();
        let top = root.parent().unwrap();
        assert_eq!(small.data.root, top.join("data/demo").display().to_string());
        assert_eq!(
            small.model.imagenet_weights,
            top.join("data/weights/efficientnet-lite0-57934424.pth")
                .display()
                .to_string()
        );
        assert_eq!(small.model.pretrain, "imagenet");
    }
}
