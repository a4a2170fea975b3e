//! Train a stage: one InsCLR training stage from a TOML config, resumable (`insclr-cu train`).

use crate::backend::{self, DeviceChoice};
use crate::dist;
use crate::io::paths::Named;
use crate::train::{self, Config, RunOptions, Summary};
use anyhow::Result;
use std::path::PathBuf;

/// Which stage to train, and how to treat its OUTPUT_DIR.
#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    /// The stage config (TOML with the original YAML's keys; see configs/).
    pub config: PathBuf,
    /// `KEY=VALUE` overrides of the config (the value is TOML, or a plain string); recorded in
    /// run.json like the file's own keys.
    pub overrides: Vec<String>,
    /// Continue from the latest checkpoint in OUTPUT_DIR/checkpoints (starts fresh if none);
    /// refused when the config or an input file differs from the run's.
    pub resume: bool,
    /// Delete the files an earlier run wrote in OUTPUT_DIR and start over.
    pub overwrite: bool,
    /// No progress bar; a plain line every SOLVER.LOG_PERIOD steps instead.
    pub quiet: bool,
    /// Ranks to split every batch over (0 or 1: one): GPUs with `--device cuda`, one process
    /// each ([`crate::dist::launch`]), or threads of this process with `--device cpu` / `emu`.
    pub gpus: usize,
}

/// Reads the config, picks the backend it needs and runs the stage ([`train::run()`]).
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// use insclr::jobs::{extract, pool, train, DescribeOptions, ExtractOptions, PoolOptions, TrainOptions};
/// let cpu = insclr::backend::DeviceChoice::Cpu;
/// let dir = std::env::temp_dir().join(format!("insclr-doc-train-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// // The candidate pool of the training images, from their tiny-gem descriptors.
/// let images = std::fs::canonicalize("tests/data/gldv2/train")?;
/// let describe = DescribeOptions { img_size: 64, quiet: true, ..Default::default() };
/// let out = dir.join("feats.npy");
/// extract(&ExtractOptions { images: images.clone(), out, describe, ..Default::default() }, cpu)?;
/// let (feats, out) = (dir.join("feats.npy"), dir.join("pool.npz"));
/// pool(&PoolOptions { feats, k: 3, out, ..Default::default() }, cpu)?;
/// // A tiny stage: a 4-stage ResNet 4 channels wide at 32 px, two steps of XBM v1 (paths in
/// // a config are relative to its folder: absolute ones here).
/// let config = format!(
///     "OUTPUT_DIR = {out:?}\nSEED = 3\n[DATA]\nROOT = {images:?}\n\
///      [INPUT]\nTRAIN_IMG_SIZE = [32, 32]\nNOAUG_IMG_SIZE = [32, 32]\n\
///      [MODEL]\nPRETRAIN = \"random\"\n[MODEL.BACKBONE]\nNAME = \"resnet-custom\"\n\
///      STAGES = [1, 1, 1, 1]\nBASE_WIDTH = 4\n[MODEL.HEAD]\nOUT_DIM = 8\n\
///      [SOLVER]\nIMS_PER_BATCH = 2\nMAX_STEP = 2\nCHECKPOINT_PERIOD = 2\n\
///      [NEIGHBOR]\nSRC = {pool:?}\nK = 2\n\
///      [XBM]\nENABLE = true\nVERSION = \"v1\"\nFEATURE_DIM = 8\n\
///      SIZE = 0\nSTART_STEP = 0\nGET_STEP = 1\nGET_SIZE = 4\nPOTENTIAL_POSITIVE = 2\n",
///     images = images.display().to_string(),
///     out = dir.join("run").display().to_string(),
///     pool = dir.join("pool.npz").display().to_string(),
/// );
/// std::fs::write(dir.join("stage.toml"), config)?;
/// let opts = TrainOptions { config: dir.join("stage.toml"), quiet: true, ..Default::default() };
/// let summary = train(&opts, cpu)?;
/// assert_eq!(summary.steps_run, 2);
/// assert!(summary.final_model.exists());
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
pub fn train(opts: &TrainOptions, device: DeviceChoice) -> Result<Summary> {
    let cfg = Config::load_with(&opts.config, &opts.overrides)?;
    let run_opts = RunOptions {
        resume: opts.resume,
        overwrite: opts.overwrite,
        quiet: opts.quiet,
        inputs: vec![Named::new("--config", &opts.config)],
    };
    let needs = cfg.backend_needs();
    dist::launch::on_ranks(opts.gpus, device, |comm, ordinal| {
        let (be, chosen) = backend::select_on(device, &needs, ordinal)?;
        if comm.rank() == 0 {
            eprintln!("train: backend {chosen}{}", dist::launch::ranks_note(comm));
        }
        train::run_rank(cfg.clone(), be.as_ref(), comm, &run_opts)
    })
}
