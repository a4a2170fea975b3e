//! One module per subcommand: its clap arguments and its `run`.

pub mod eval;
pub mod extract;
pub mod import_weights;
pub mod info;
pub mod pipeline;
pub mod plan;
pub mod pool;
pub mod report;
pub mod search;
pub mod train;
pub mod verify;

use anyhow::Result;
use insclr::backend::{DType, DeviceChoice};
use insclr::dist::launch;
use insclr::eval::expand::Expansion;

/// `--gpus N` of the commands that split their work over ranks ([`insclr::dist`]).
#[derive(clap::Args)]
pub struct Ranks {
    /// Split the work over N ranks: N GPUs with --device cuda (one process each), or N threads
    /// with --device cpu / emu. Under a cluster launcher (srun, torchrun) leave it out: RANK
    /// and WORLD_SIZE (or Slurm's variables) say it.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub gpus: usize,
}

impl Ranks {
    /// Starts the GPU ranks as processes when `--gpus N` asks for them on CUDA, and waits for
    /// them: true when it did (the command is then done here).
    pub fn started_processes(&self, device: DeviceChoice) -> Result<bool> {
        if launch::needs_processes(self.gpus, device)? {
            launch::spawn_local(self.gpus)?;
            return Ok(true);
        }
        Ok(false)
    }
}

/// `--precision` of `extract`, `search`, `match`, `pool` and `plan`: f32 or bf16.
pub fn parse_precision(s: &str) -> Result<DType, String> {
    match s {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        _ => Err(format!("{s}: use f32 or bf16")),
    }
}

/// Whether this process prints the command's results (rank 0, or no ranks).
pub fn prints_results() -> Result<bool> {
    launch::is_rank_zero()
}

/// `--qe` and `--dba` of `eval` and `search` ([`insclr::eval::expand`]).
#[derive(clap::Args)]
pub struct ExpansionArgs {
    /// α-weighted query expansion before ranking: each query plus its N best database rows,
    /// weighted by similarity^ALPHA, renormalised. `--qe` alone: N = 2, ALPHA = 3; or
    /// `--qe=N` / `--qe=N,ALPHA`.
    #[arg(long, value_name = "N[,ALPHA]", num_args = 0..=1, require_equals = true,
          default_missing_value = "2", value_parser = |s: &str| Expansion::parse(s, Expansion::QE))]
    pub qe: Option<Expansion>,
    /// α-weighted database-side augmentation before ranking (and before --qe): every database
    /// row plus its N most similar other rows, weighted as --qe (keep N below the photos a
    /// place has). `--dba` alone: N = 2, ALPHA = 3; or `--dba=N` / `--dba=N,ALPHA`.
    #[arg(long, value_name = "N[,ALPHA]", num_args = 0..=1, require_equals = true,
          default_missing_value = "2", value_parser = |s: &str| Expansion::parse(s, Expansion::DBA))]
    pub dba: Option<Expansion>,
}
