//! `insclr-cu train`: the flags of [`insclr::jobs::train()`]; prints the stage's summary.

use anyhow::Result;
use insclr::backend::DeviceChoice;
use insclr::jobs::{self, TrainOptions};
use std::path::PathBuf;

/// Arguments of `insclr-cu train`.
#[derive(clap::Args)]
pub struct Args {
    /// Stage config (TOML with the original YAML's keys; see configs/).
    #[arg(long)]
    config: PathBuf,
    /// Continue from the latest checkpoint in OUTPUT_DIR/checkpoints (starts fresh if none);
    /// refused when the config or an input file differs from the run's.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Delete the files an earlier run wrote in OUTPUT_DIR (its manifest lists them) and start
    /// over; refused when OUTPUT_DIR holds anything else or an input. Without it a non-empty
    /// OUTPUT_DIR is refused.
    #[arg(long)]
    overwrite: bool,
    /// No progress bar; a plain line every SOLVER.LOG_PERIOD steps instead.
    #[arg(long)]
    quiet: bool,
    /// Override a config key: `--set SEED=7 --set SOLVER.BASE_LR=1e-5` (repeatable; the
    /// value is TOML, or a plain string). Recorded in run.json like the file's own keys.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    #[command(flatten)]
    ranks: super::Ranks,
}

/// Runs the stage and prints a summary.
pub fn run(args: Args, device: DeviceChoice) -> Result<()> {
    if args.ranks.started_processes(device)? {
        return Ok(());
    }
    let s = jobs::train(
        &TrainOptions {
            config: args.config,
            overrides: args.overrides,
            resume: args.resume,
            overwrite: args.overwrite,
            quiet: args.quiet,
            gpus: args.ranks.gpus,
        },
        device,
    )?;
    if !super::prints_results()? {
        return Ok(());
    }
    let out = s
        .final_model
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
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
    if s.resumed_from.is_none() {
        println!(
            "left at random initialisation: {}",
            name_list(&s.random_init, 8)
        );
    }
    Ok(())
}

/// "3 tensors: a, b, c" with at most `max` names, then how many more.
fn name_list(names: &[String], max: usize) -> String {
    if names.is_empty() {
        return "none (every tensor came from a weights file or MODEL.HEAD.INIT)".to_string();
    }
    let mut s = format!(
        "{} tensor(s): {}",
        names.len(),
        names[..names.len().min(max)].join(", ")
    );
    if names.len() > max {
        s += &format!(", ... ({} more)", names.len() - max);
    }
    s
}
