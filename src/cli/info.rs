//! `insclr-cu info`: version, chosen backend, GPU and driver, embedded kernels.

use anyhow::Result;
use insclr::backend::{self, cuda};

/// Arguments of `insclr-cu info`.
#[derive(clap::Args)]
pub struct Args {
    /// Also print ptxas's per-kernel resource report (registers, shared memory, spills).
    #[arg(long)]
    kernels: bool,
}

pub fn run(args: Args) -> Result<()> {
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
