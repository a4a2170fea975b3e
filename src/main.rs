//! The insclr-cu command line: parse, call the library ([`insclr::jobs`]), print.

// The flags' doc comments are clap's help text, plain text rather than rustdoc markdown
// (`[DATA]` is a TOML section there, `<out>` a placeholder).
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

use anyhow::Result;
use clap::{Parser, Subcommand};
use insclr::backend::DeviceChoice;

mod cli;

#[derive(Parser)]
#[command(
    name = "insclr-cu",
    version,
    about = "InsCLR image-retrieval training on CUDA, with a CPU twin for every op"
)]
struct Cli {
    /// Where the ops run: auto (the GPU when it has every kernel the command needs, else the
    /// CPU), cpu, cuda, or emu (our CUDA kernels emulated on the CPU: slow, for checking them).
    #[arg(long, global = true, env = "INSCLR_DEVICE", default_value = "auto", value_parser = parse_device)]
    device: DeviceChoice,
    #[command(subcommand)]
    command: Command,
}

fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    s.parse()
}

#[derive(Subcommand)]
enum Command {
    /// What GPU, driver and kernels are here; never fails without a GPU.
    Info(cli::info::Args),
    /// Candidate pool: exact top-k inner-product neighbours of a descriptor file.
    Pool(cli::pool::Args),
    /// Multi-scale descriptors of a list or folder of images, written as .npy.
    Extract(cli::extract::Args),
    /// The most similar images of a descriptor index for query images (text, JSON or HTML).
    Search(cli::search::Args),
    /// Retrieval scores on revisited Oxford / Paris, GLDv2 or a plain list (one table).
    Eval(cli::eval::Args),
    /// Convert a PyTorch .pth (zip or legacy format) to .safetensors, keeping tensor names.
    ImportWeights(cli::import_weights::Args),
    /// One training stage (base or full InsCLR) from a TOML config; resumable.
    Train(cli::train::Args),
    /// Every stage of a recipe in one resumable command: pool, stage 1, pool, stage 2, ...
    /// with retrieval scored after each.
    Pipeline(cli::pipeline::Args),
    /// One HTML page of a training run: curves, the mining inspector, retrieval before/after.
    Report(cli::report::Args),
    /// Every launch of one training step with occupancy, waves and roofline floors on an H100
    /// and an H200 (a model; runs nothing on a GPU), and the step's floor beside its last
    /// measured time.
    Plan(cli::plan::Args),
    /// Re-rank a candidate pool: each image's top neighbours by local-feature inliers
    /// (spatial verification); writes a pool train reads like any other.
    Verify(cli::verify::Args),
    /// Verify two photos: inliers of their local-feature matches, and a picture of them.
    Match(cli::verify::MatchArgs),
}

fn main() {
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::Info(a) => cli::info::run(a, cli.device),
        Command::Pool(a) => cli::pool::run(a, cli.device),
        Command::Extract(a) => cli::extract::run(a, cli.device),
        Command::Search(a) => cli::search::run(a, cli.device),
        Command::Eval(a) => cli::eval::run(a, cli.device),
        Command::ImportWeights(a) => cli::import_weights::run(a),
        Command::Train(a) => cli::train::run(a, cli.device),
        Command::Pipeline(a) => cli::pipeline::run(a, cli.device),
        Command::Report(a) => cli::report::run(a),
        Command::Plan(a) => cli::plan::run(a),
        Command::Verify(a) => cli::verify::run(a, cli.device),
        Command::Match(a) => cli::verify::run_match(a, cli.device),
    };
    if insclr::backend::cuda::emu::memstats_enabled() {
        let stats = insclr::backend::cuda::emu::memstats();
        if stats.is_empty() {
            eprintln!(
                "INSCLR_EMU_MEMSTATS=1: no emulated launch ran (the counters need --device emu)"
            );
        } else {
            eprint!("{}", insclr::backend::cuda::emu::memstats_table(&stats));
        }
    }
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
