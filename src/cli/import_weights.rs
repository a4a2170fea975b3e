//! `insclr-cu import-weights IN.pth OUT.safetensors`: the arguments of
//! [`insclr::jobs::import_weights()`]; prints what was converted.

use anyhow::Result;
use insclr::jobs;
use std::path::PathBuf;

/// Arguments of `insclr-cu import-weights`.
#[derive(clap::Args)]
pub struct Args {
    /// PyTorch checkpoint (`.pth` / `.pt`; torchvision zip or legacy format).
    input: PathBuf,
    /// Output `.safetensors` file (written atomically).
    output: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let r = jobs::import_weights(&args.input, &args.output)?;
    println!(
        "{}: {} tensors, {} elements",
        args.input.display(),
        r.tensors,
        group(r.elements)
    );
    for (dt, (n, e)) in &r.dtypes {
        println!("  {dt:>8}: {n:>4} tensors, {:>12} elements", group(*e));
    }
    if r.batches_tracked > 0 {
        // Each counter is one element.
        println!(
            "  ({} of them num_batches_tracked; {} tensors / {} elements without)",
            r.batches_tracked,
            r.tensors - r.batches_tracked,
            group(r.elements - r.batches_tracked)
        );
    }
    println!(
        "wrote {} ({} tensors, {} bytes; verified by re-reading)",
        args.output.display(),
        r.tensors,
        group(r.bytes as usize)
    );
    Ok(())
}

/// 4694073 -> "4,694,073".
fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
