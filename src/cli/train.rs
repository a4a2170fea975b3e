//! `insclr-cu train`: one training stage from a TOML config, resumable.

use anyhow::Result;
use insclr::backend::{self, DeviceChoice, Op};
use insclr::train::{self, Config, RunOptions};
use std::path::PathBuf;

/// Arguments of `insclr-cu train`.
#[derive(clap::Args)]
pub struct Args {
    /// Stage config (TOML with the original YAML's keys; see configs/).
    #[arg(long)]
    config: PathBuf,
    /// Continue from the latest checkpoint in OUTPUT_DIR/checkpoints (starts fresh if none).
    #[arg(long)]
    resume: bool,
    /// No progress bar; a plain line every SOLVER.LOG_PERIOD steps instead.
    #[arg(long)]
    quiet: bool,
}

/// Runs the stage and prints a summary.
pub fn run(args: Args, device: DeviceChoice) -> Result<()> {
    let cfg = Config::load(&args.config)?;
    let (be, chosen) = backend::select_f32(device, &Op::ALL)?;
    eprintln!("train: backend {chosen}");
    let out = cfg.output_dir.clone();
    let s = train::run(
        cfg,
        be.as_ref(),
        &RunOptions {
            resume: args.resume,
            quiet: args.quiet,
        },
    )?;
    let fmt = |l: Option<f32>| l.map_or("-".to_string(), |v| format!("{v:.4}"));
    println!(
        "trained {} steps{} in {:.1} s: loss {} -> {}; {} image(s) skipped; model {}; log {out}/log.jsonl",
        s.steps_run,
        s.resumed_from
            .map_or(String::new(), |k| format!(" (resumed at {k})")),
        s.seconds,
        fmt(s.first_loss),
        fmt(s.last_loss),
        s.skipped,
        s.final_model.display()
    );
    Ok(())
}
