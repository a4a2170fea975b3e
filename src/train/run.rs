//! Running a whole stage around its step ([`super::step`]): the run directory, the data, pool
//! and model, the bank initialisation or the resume, then the steps with a progress bar, the
//! logs ([`super::log`]), a checkpoint every `SOLVER.CHECKPOINT_PERIOD` and at the end, and
//! the final model.

use super::checkpoint;
use super::config::Config;
use super::log::{plot_run, truncate_log, DECISIONS_FILE};
use super::run_dir;
use super::stage::Stage;
use crate::backend::{Backend, DType};
use crate::data::dataset::Dataset;
use crate::data::image::Skipped;
use crate::dist::{Collective, Solo};
use crate::io::paths::{check_outputs, Named};
use crate::mining::CandidatePool;
use crate::nn::model::{load_model, Built};
use crate::nn::DescriptorNet;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Options of [`run`].
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Continue from the latest checkpoint in `OUTPUT_DIR/checkpoints` (the same run only).
    pub resume: bool,
    /// Delete the files an earlier run wrote in OUTPUT_DIR and start over (a fresh run refuses
    /// a non-empty one).
    pub overwrite: bool,
    /// No progress bar.
    pub quiet: bool,
    /// Files the caller read to make the config (the config file, a pipeline's plan): no
    /// output may replace them and `--overwrite` may not delete them.
    pub inputs: Vec<Named>,
}

/// What a finished stage reports.
#[derive(Clone, Debug)]
pub struct Summary {
    pub steps_run: usize,
    pub resumed_from: Option<usize>,
    pub first_loss: Option<f32>,
    pub last_loss: Option<f32>,
    pub seconds: f64,
    pub final_model: PathBuf,
    pub skipped: usize,
    /// Model tensors no weights file provided (empty when resumed: the checkpoint has all).
    pub random_init: Vec<String>,
    /// Files removed at the start: stale files of a failed write (on resume), or the files an
    /// earlier run wrote (with `--overwrite`).
    pub removed: Vec<PathBuf>,
}

/// Runs a whole stage from a config: data, pool, model, [bank init], steps with a progress
/// bar and a JSON-lines log (`OUTPUT_DIR/log.jsonl`), checkpoints every `CHECKPOINT_PERIOD`
/// and at the end, and the final model as `OUTPUT_DIR/model_final.safetensors`. OUTPUT_DIR
/// must be empty, or hold this same run when resuming ([`super::run_dir`]). Every check runs
/// before OUTPUT_DIR is touched, and a fresh run that fails before its first checkpoint
/// removes what it wrote.
pub fn run(cfg: Config, be: &dyn Backend, opts: &RunOptions) -> Result<Summary> {
    run_rank(cfg, be, &Solo, opts)
}

/// [`run`] as rank `comm.rank()` of a stage split over `comm.world()` ranks (every rank
/// calls it with the same config): rank 0 checks and writes OUTPUT_DIR as [`run`] does, the
/// others only train beside it, writing nothing, and return their own counts. The run record
/// holds the number of ranks, so `--resume` continues only with as many.
pub fn run_rank(
    cfg: Config,
    be: &dyn Backend,
    comm: &dyn Collective,
    opts: &RunOptions,
) -> Result<Summary> {
    let start = std::time::Instant::now();
    if cfg.output_dir.is_empty() {
        bail!("OUTPUT_DIR is empty: say where checkpoints and logs go");
    }
    be.set_tf32(cfg.solver.tf32);
    if comm.rank() != 0 {
        return follow(cfg, be, comm, opts, start);
    }
    let out = PathBuf::from(&cfg.output_dir);
    let mut record = run_dir::RunRecord::new(&cfg)?;
    record.ranks = comm.world();
    let mut inputs = opts.inputs.clone();
    inputs.extend(run_dir::inputs(&cfg));
    let outputs: Vec<Named> = [
        run_dir::RUN_FILE,
        "log.jsonl",
        DECISIONS_FILE,
        "skipped.txt",
        "plot.svg",
        FINAL_MODEL,
    ]
    .iter()
    .map(|n| Named::new("the run's", out.join(n)))
    .collect();
    check_outputs(&inputs, &outputs)?;
    run_dir::precheck(&out, &record, opts.resume, opts.overwrite, &inputs)?;
    let (data, pool, built) = open_stage_inputs(&cfg, be)?;
    let Built {
        net,
        note,
        random_init,
    } = built;
    let n = data.len();
    let skipped = data.skipped.clone();
    eprintln!(
        "train: {n} images ({} skipped), pool k = {}, model {} -> {} ({note}), backend {}, {}",
        skipped.len(),
        pool.k,
        cfg.model.backbone.name,
        net.out_dim(),
        be.name(),
        match cfg.precision() {
            DType::F32 if be.tf32() => "f32, TF32 convolutions",
            DType::F32 => "f32",
            _ => "bf16 activations and banks, f32 weights",
        }
    );
    if cfg.test.test_period <= cfg.solver.max_step {
        eprintln!("note: periodic evaluation (TEST.TEST_PERIOD) is not run by train; evaluate checkpoints with `insclr-cu eval`");
    }
    let mut stage = Stage::new(cfg, be, comm, net, data, &pool)?;
    stage.run = Some(record.to_json()?);
    // Only now, with every setting and input checked, is OUTPUT_DIR locked and written.
    let mut dir = run_dir::prepare(&out, &record, opts.resume, opts.overwrite, &inputs)?;
    let mut saved = false;
    let done = steps(&mut stage, &mut dir, &skipped, opts, &mut saved);
    let Ran {
        resumed_from,
        first_loss,
        last_loss,
        steps: ran,
    } = match done {
        Ok(r) => r,
        Err(e) => {
            if !saved {
                dir.undo();
            }
            return Err(e);
        }
    };
    let final_model = out.join(FINAL_MODEL);
    let tensors = crate::nn::weights::export(&stage.net, be)?;
    let meta = stage.model_meta().to_map();
    dir.manifest.add(&final_model)?;
    crate::io::safetensors::write(&final_model, &tensors, Some(meta))?;
    Ok(Summary {
        steps_run: ran,
        resumed_from,
        first_loss,
        last_loss,
        seconds: start.elapsed().as_secs_f64(),
        final_model,
        skipped: skipped.len(),
        random_init: if resumed_from.is_some() {
            Vec::new()
        } else {
            random_init
        },
        removed: dir.removed.clone(),
    })
}

/// The final model's file name in OUTPUT_DIR.
pub const FINAL_MODEL: &str = "model_final.safetensors";

/// A rank other than 0: the same stage on its share of every batch, writing nothing. It
/// starts when rank 0 has checked and prepared OUTPUT_DIR ([`start_together`]).
fn follow(
    cfg: Config,
    be: &dyn Backend,
    comm: &dyn Collective,
    opts: &RunOptions,
    start: std::time::Instant,
) -> Result<Summary> {
    let (data, pool, built) = open_stage_inputs(&cfg, be)?;
    let skipped = data.skipped.len();
    let final_model = Path::new(&cfg.output_dir).join(FINAL_MODEL);
    let mut stage = Stage::new(cfg, be, comm, built.net, data, &pool)?;
    let resumed_from = start_together(&mut stage, opts.resume)?;
    if resumed_from.is_none() {
        stage.init_banks(&mut |_| {})?;
    }
    let (mut first, mut last, mut ran) = (None, None, 0);
    while stage.step < stage.cfg.solver.max_step {
        let (l, _) = stage.step_once()?;
        first.get_or_insert(l.loss);
        last = Some(l.loss);
        ran += 1;
    }
    Ok(Summary {
        steps_run: ran,
        resumed_from,
        first_loss: first,
        last_loss: last,
        seconds: start.elapsed().as_secs_f64(),
        final_model,
        skipped,
        random_init: if resumed_from.is_some() {
            Vec::new()
        } else {
            built.random_init
        },
        removed: Vec::new(),
    })
}

/// The training set, its candidate pool and the model a stage starts from (after the memory
/// check of the banks and buffers they need).
fn open_stage_inputs(cfg: &Config, be: &dyn Backend) -> Result<(Dataset, CandidatePool, Built)> {
    let root = PathBuf::from(&cfg.data.root);
    let list = (!cfg.data.train_filename.is_empty()).then(|| root.join(&cfg.data.train_filename));
    let data = Dataset::open(&root, list.as_deref(), cfg.data.cache_images)?;
    let n = data.len();
    super::memory::check(cfg, n, be.device() == crate::backend::Device::Cpu)?;
    let pool = CandidatePool::load(Path::new(&cfg.neighbor.src), n).context("NEIGHBOR.SRC")?;
    let built = load_model(&cfg.model, cfg.seed, cfg.precision(), be)?;
    Ok((data, pool, built))
}

/// Where every rank starts: rank 0 arrives once OUTPUT_DIR is checked and prepared, then each
/// rank resumes from the latest checkpoint (with `resume`), and all must have found the same.
fn start_together(stage: &mut Stage, resume: bool) -> Result<Option<usize>> {
    let comm = stage.comm;
    comm.all_gather_bytes(&[])?;
    let resumed = if resume { stage.resume()? } else { None };
    if comm.world() > 1 {
        let at = resumed.map_or(0, |s| s as u32 + 1);
        let all = crate::dist::all_gather(comm, &[at])?;
        if all.iter().any(|&a| a != at) {
            bail!("the ranks resumed from different checkpoints (step + 1 by rank, 0 for none: {all:?}); is OUTPUT_DIR on a folder every rank sees?");
        }
    }
    Ok(resumed)
}

/// What [`steps`] did.
struct Ran {
    resumed_from: Option<usize>,
    first_loss: Option<f32>,
    last_loss: Option<f32>,
    steps: usize,
}

/// Resumes or starts the stage in the prepared `dir` and runs its steps. `saved` turns true
/// once a checkpoint is on disk (from then on a failure keeps the folder: `--resume`
/// continues it).
fn steps(
    stage: &mut Stage,
    dir: &mut run_dir::Prepared,
    skipped: &Skipped,
    opts: &RunOptions,
    saved: &mut bool,
) -> Result<Ran> {
    let out = PathBuf::from(&stage.cfg.output_dir);
    if !skipped.is_empty() {
        eprintln!("{}", skipped.summary(20));
        let listing: String = skipped
            .items
            .iter()
            .map(|(i, p, why)| format!("{i}\t{}\t{why}\n", p.display()))
            .collect();
        let path = out.join("skipped.txt");
        dir.manifest.add(&path)?;
        std::fs::write(&path, listing).with_context(|| format!("writing {}", path.display()))?;
    }
    let quiet = opts.quiet;
    let log_path = out.join("log.jsonl");
    let decisions_path = out.join(DECISIONS_FILE);
    let resumed_from = start_together(stage, opts.resume)?;
    *saved = resumed_from.is_some();
    match resumed_from {
        Some(s) => {
            eprintln!("resumed from step {s}");
            truncate_log(&log_path, s)?;
            truncate_log(&decisions_path, s)?;
        }
        None => {
            for p in [&log_path, &decisions_path] {
                dir.manifest.add(p)?;
                std::fs::write(p, "").with_context(|| format!("creating {}", p.display()))?;
            }
            if stage.noda.is_some() {
                let bar = bar(quiet, stage.good.len() as u64, "bank init");
                stage.init_banks(&mut |k| bar.inc(k as u64))?;
                bar.finish_and_clear();
            }
        }
    }
    let max = stage.cfg.solver.max_step;
    let period = stage.cfg.solver.checkpoint_period;
    let log_every = stage.cfg.solver.log_period.max(1);
    let append = |p: &Path| {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(p)
            .with_context(|| format!("opening {}", p.display()))
    };
    for p in [&log_path, &decisions_path] {
        dir.manifest.add(p)?;
    }
    let (mut logf, mut decf) = (append(&log_path)?, append(&decisions_path)?);
    let pb = bar(quiet, max as u64, "train");
    pb.set_position(stage.step as u64);
    pb.reset_eta();
    let (mut first, mut last, mut ran) = (None, None, 0);
    while stage.step < max {
        let (l, decisions) = stage.step_once()?;
        ran += 1;
        first.get_or_insert(l.loss);
        last = Some(l.loss);
        writeln!(logf, "{}", serde_json::to_string(&l)?)?;
        for d in &decisions {
            writeln!(decf, "{}", serde_json::to_string(d)?)?;
        }
        pb.set_message(format!(
            "loss {:.4} (batch {:.4} mem {:.4}) lr {:.1e} {:.1} img/s, waited {:.0} ms for images",
            l.loss,
            l.batch_loss,
            l.memory_loss,
            l.lr,
            l.images as f64 / l.seconds.max(1e-9),
            1e3 * l.load_wait
        ));
        pb.inc(1);
        if quiet && (l.step % log_every == 0 || l.step == max) {
            eprintln!(
                "step {}/{max} loss {:.4} batch {:.4} memory {:.4} lr {:.1e} {:.2}s/step {:.1} img/s, waited {:.0} ms for images",
                l.step,
                l.loss,
                l.batch_loss,
                l.memory_loss,
                l.lr,
                l.seconds,
                l.images as f64 / l.seconds.max(1e-9),
                1e3 * l.load_wait
            );
        }
        if stage.step % period == 0 || stage.step == max {
            let ck = stage.checkpoint_dir();
            dir.manifest
                .add(&checkpoint::checkpoint_path(&ck, stage.step))?;
            dir.manifest
                .add(&checkpoint::memory_path(&ck, stage.step))?;
            stage.save_checkpoint()?;
            *saved = true;
            logf.flush()?;
            dir.manifest.add(&out.join("plot.svg"))?;
            plot_run(&out)?;
        }
    }
    pb.finish_and_clear();
    Ok(Ran {
        resumed_from,
        first_loss: first,
        last_loss: last,
        steps: ran,
    })
}

fn bar(quiet: bool, len: u64, what: &str) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}, {per_sec}] {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_prefix(what.to_string());
    pb
}
