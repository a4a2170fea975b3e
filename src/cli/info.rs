//! `insclr-cu info`: version, chosen backend, GPU and driver, embedded kernels; with
//! `--model`, a model summary instead.

use anyhow::Result;
use insclr::backend::{self, cuda, Backend, CudaBackend, DType, DeviceChoice, Op};

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

pub fn run(args: Args, device: DeviceChoice) -> Result<()> {
    if let Some(model) = &args.model {
        return model_summary(model, &args.head, args.dim);
    }
    println!("insclr-cu {}", env!("CARGO_PKG_VERSION"));
    match backend::select(device, &[]) {
        Ok((_, chosen)) => println!("backend ({}): {chosen}", device_name(device)),
        Err(e) => println!("backend ({}): unavailable: {e:#}", device_name(device)),
    }
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
            "kernels for GPUs: embedded for {} (+ PTX compute_{}): {}",
            archs.join(", "),
            cuda::embedded::PTX_ARCH,
            families.join(", ")
        );
    } else {
        println!(
            "kernels for GPUs: none (built without nvcc; run scripts/install-cuda-tools.sh and rebuild)"
        );
    }
    let emu = CudaBackend::emu();
    let be: &dyn Backend = &emu;
    println!("emulated GPU (--device emu): {}", be.describe());
    // Which op runs where: the CPU has every op; CUDA and emu have the kernels written so far.
    let gpu = CudaBackend::new(0).ok();
    println!("\nops on f32 buffers (cpu / cuda / emu):");
    for op in Op::ALL {
        let on = |b: Option<&dyn Backend>| match b {
            None => "-",
            Some(b) if b.supports(op, op.dtype_in(DType::F32)) => "yes",
            Some(_) => "no kernel",
        };
        println!(
            "  {:<20} {:<4} {:<10} {}",
            op.name(),
            on(Some(backend::cpu())),
            on(gpu.as_ref().map(|g| g as &dyn Backend)),
            on(Some(be))
        );
    }
    if args.kernels {
        println!("\nptxas's resource report, per kernel and arch:");
        print_aligned(cuda::embedded::RESOURCES_TSV);
        if cuda::has_kernels() {
            // The instruction-level table needs cuobjdump + nvdisasm and the declarations in
            // kernels/sass.toml, which live in the source tree, not in this binary.
            println!(
                "\nSASS per kernel (cp.async, ldmatrix, mma, the main loop's instruction mix, \
                 integer divisions, store widths), checked against kernels/sass.toml:\n  \
                 python3 scripts/sass-check.py --dir {}",
                cuda::embedded::FATBIN_DIR
            );
        }
    }
    Ok(())
}

/// A tab-separated table with its columns padded to one width each.
fn print_aligned(tsv: &str) {
    let rows: Vec<Vec<&str>> = tsv.lines().map(|l| l.split('\t').collect()).collect();
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|v| v.len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, v)| format!("{v:<w$}", w = width[c]))
            .collect();
        println!("  {}", cells.join("  ").trim_end());
    }
}

fn device_name(d: DeviceChoice) -> &'static str {
    match d {
        DeviceChoice::Auto => "auto",
        DeviceChoice::Cpu => "cpu",
        DeviceChoice::Cuda => "cuda",
        DeviceChoice::Emu => "emu",
    }
}

/// The network's layers and sizes ([`insclr::nn::model::summary`]).
fn model_summary(model: &str, head: &str, dim: Option<usize>) -> Result<()> {
    let s = insclr::nn::model::summary(model, head, dim)?;
    println!("model: {}", s.name);
    for line in &s.layers {
        println!("  {line}");
    }
    println!(
        "parameters: {} trainable ({} backbone, {} head) in {} tensors, plus {} BatchNorm running statistics",
        s.trainable,
        s.backbone_trainable,
        s.trainable - s.backbone_trainable,
        s.tensors,
        s.running
    );
    println!(
        "backbone output: {} channels at stride 32; descriptor dim: {}",
        s.channels, s.dim
    );
    Ok(())
}
