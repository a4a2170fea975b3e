//! `insclr-cu info`: version, chosen backend, GPU and driver, embedded kernels; with
//! `--model`, a model summary instead.

use anyhow::Result;
use insclr::backend::{self, cuda, CpuBackend};
use insclr::nn::head::HeadKind;
use insclr::nn::{count_trainable, Arch, Module, RetrievalNet};
use insclr::rng::Rng;

/// Arguments of `insclr-cu info`.
#[derive(clap::Args)]
pub struct Args {
    /// Also print ptxas's per-kernel resource report (registers, shared memory, spills).
    #[arg(long)]
    kernels: bool,
    /// Print a model summary (layers, parameters, output dim): resnet50, resnet101 or
    /// efficientnet-lite0, built as the retrieval network with random weights.
    #[arg(long, value_name = "MODEL")]
    model: Option<String>,
    /// Head of the summarised model: norm_linear_norm (GLDv2) or linear_norm (INSTRE).
    #[arg(long, default_value = "norm_linear_norm", requires = "model")]
    head: String,
    /// Descriptor dimension of the summarised model (default: the backbone's channels).
    #[arg(long, requires = "model")]
    dim: Option<usize>,
}

pub fn run(args: Args) -> Result<()> {
    if let Some(model) = &args.model {
        return model_summary(model, &args.head, args.dim);
    }
    println!("insclr-cu {}", env!("CARGO_PKG_VERSION"));
    let (_, chosen) = backend::auto();
    println!("backend: {chosen}");
    match cuda::driver_version() {
        Some((major, minor)) => println!("driver: CUDA {major}.{minor}"),
        None => println!("driver: none (no libcuda.so; no GPU)"),
    }
    let archs: Vec<String> = cuda::embedded::ARCHS
        .iter()
        .map(|a| format!("sm_{a}"))
        .collect();
    if cuda::has_kernels() {
        let families: Vec<String> = cuda::embedded::FATBINS
            .iter()
            .map(|(f, bin)| format!("{f} ({} KiB)", bin.len().div_ceil(1024)))
            .collect();
        println!(
            "kernels: embedded for {} (+ PTX {}): {}",
            archs.join(", "),
            archs
                .last()
                .map(|a| a.replace("sm_", "compute_"))
                .unwrap_or_default(),
            families.join(", ")
        );
    } else {
        println!(
            "kernels: none (built without nvcc; run scripts/install-cuda-tools.sh and rebuild)"
        );
    }
    if args.kernels {
        println!();
        for line in cuda::embedded::RESOURCES_TSV.lines() {
            println!("{}", line.replace('\t', "  "));
        }
    }
    Ok(())
}

/// Builds the network on the CPU with random weights and prints its layers and sizes.
fn model_summary(model: &str, head: &str, dim: Option<usize>) -> Result<()> {
    let arch = Arch::parse(model)?;
    let kind = HeadKind::parse(head)?;
    let be = CpuBackend::new();
    let mut rng = Rng::new(0);
    let backbone = arch.build(&be, &mut rng, false)?;
    let c = backbone.out_channels();
    let bb_params = count_trainable(&*backbone);
    let net = RetrievalNet::new(&be, &mut rng, backbone, kind, dim.unwrap_or(c))?;
    println!("model: {} + GeM + {head}", net.backbone.name());
    for line in net.summary() {
        println!("  {line}");
    }
    let tensors = net.params();
    let running: usize = tensors
        .iter()
        .filter(|p| !p.kind.trainable())
        .map(|p| p.numel())
        .sum();
    println!(
        "parameters: {} trainable ({} backbone, {} head) in {} tensors, plus {} BatchNorm running statistics",
        count_trainable(&net),
        bb_params,
        count_trainable(&net) - bb_params,
        tensors.iter().filter(|p| p.kind.trainable()).count(),
        running
    );
    println!(
        "backbone output: {c} channels at stride 32; descriptor dim: {}",
        net.head.out_dim()
    );
    Ok(())
}
