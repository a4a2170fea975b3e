//! The insclr-cu command line: parse, call the library, print.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "insclr-cu",
    version,
    about = "InsCLR image-retrieval training on CUDA, with a CPU twin for every op"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// What GPU, driver and kernels are here; never fails without a GPU.
    Info(cli::info::Args),
    /// Convert a PyTorch .pth (zip or legacy format) to .safetensors, keeping tensor names.
    ImportWeights(cli::import_weights::Args),
}

fn main() {
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::Info(a) => cli::info::run(a),
        Command::ImportWeights(a) => cli::import_weights::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
