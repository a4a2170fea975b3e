//! `insclr-cu pipeline`: the flags of [`insclr::jobs::pipeline()`]; prints the retrieval table.

use anyhow::Result;
use insclr::backend::DeviceChoice;
use insclr::eval::extract::MAX_SIDE;
use insclr::jobs::{self, PipelineOptions};
use std::path::PathBuf;

/// Arguments of `insclr-cu pipeline`.
#[derive(clap::Args)]
pub struct Args {
    /// Pipeline plan (TOML: OUTPUT_DIR, [DATA], [POOL], [EVAL], [[STAGE]]; see
    /// configs/demo-pipeline.toml; its paths are relative to its folder). Started again with
    /// the same plan, it continues.
    #[arg(long)]
    config: PathBuf,
    /// Delete the files an earlier pipeline wrote in OUTPUT_DIR (its manifests list them) and
    /// start over; refused when the folder holds anything else or an input.
    #[arg(long)]
    overwrite: bool,
    /// No progress bars; plain lines instead.
    #[arg(long)]
    quiet: bool,
    /// Replaces the plan's PRECISION (f32 or bf16: what every stage trains in).
    #[arg(long)]
    precision: Option<String>,
    /// Replaces the plan's OUTPUT_DIR (e.g. to run the same plan in bf16 beside f32); relative
    /// to the current folder.
    #[arg(long)]
    output_dir: Option<String>,
    /// Longest side a scaled image may have when describing images (a guard against scales
    /// that would exhaust memory).
    #[arg(long, env = "INSCLR_MAX_SIDE", default_value_t = MAX_SIDE)]
    max_side: usize,
    /// Split the extract, pool and train steps over N ranks, as threads with --device cpu or
    /// emu (on GPUs run the steps as commands with --gpus N).
    #[arg(long, default_value_t = 1, value_name = "N")]
    gpus: usize,
}

pub fn run(args: Args, device: DeviceChoice) -> Result<()> {
    let r = jobs::pipeline(
        &PipelineOptions {
            config: args.config,
            overwrite: args.overwrite,
            quiet: args.quiet,
            precision: args.precision,
            output_dir: args.output_dir,
            max_side: args.max_side,
            gpus: args.gpus,
        },
        device,
    )?;
    let m = &r.final_model;
    println!(
        "pipeline: {} steps done ({:.1} s in this run); final model {} (crc32 {}, {} bytes)",
        r.steps, r.seconds, m.path, m.crc32, m.bytes
    );
    if let Some(table) = &r.table {
        print!("{table}");
    }
    println!("curves of every stage: {}", r.plot.display());
    Ok(())
}
