//! `insclr-cu import-weights IN.pth OUT.safetensors`: a PyTorch checkpoint (zip or legacy
//! format) to safetensors, keeping the original tensor names.

use anyhow::{bail, Context, Result};
use insclr::io::paths::{check_outputs, Named};
use insclr::io::{pth, safetensors, tensor};
use std::collections::HashMap;
use std::path::PathBuf;

/// Arguments of `insclr-cu import-weights`.
#[derive(clap::Args)]
pub struct Args {
    /// PyTorch checkpoint (`.pth` / `.pt`; torchvision zip or legacy format).
    input: PathBuf,
    /// Output `.safetensors` file (written atomically).
    output: PathBuf,
}

/// Converts, then re-reads the output and checks it holds the same tensors.
pub fn run(args: Args) -> Result<()> {
    check_outputs(
        &[Named::new("the input", &args.input)],
        &[Named::new("the output", &args.output)],
    )?;
    let tensors = pth::read(&args.input)?;
    if tensors.is_empty() {
        bail!("{}: the state dict holds no tensor", args.input.display());
    }
    let elements: usize = tensors.iter().map(|t| t.numel()).sum();
    println!(
        "{}: {} tensors, {} elements",
        args.input.display(),
        tensors.len(),
        group(elements)
    );
    for (dt, (n, e)) in tensor::dtype_summary(&tensors) {
        println!("  {dt:>8}: {n:>4} tensors, {:>12} elements", group(e));
    }
    let nbt = tensors
        .iter()
        .filter(|t| t.name.ends_with("num_batches_tracked"))
        .count();
    if nbt > 0 {
        println!(
            "  ({nbt} of them num_batches_tracked; {} tensors / {} elements without)",
            tensors.len() - nbt,
            group(elements - nbt)
        );
    }
    let source = args
        .input
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("source".to_string(), source),
    ]);
    safetensors::write(&args.output, &tensors, Some(meta))?;
    let back = safetensors::read(&args.output).context("re-reading what was written")?;
    let by_name: HashMap<&str, &tensor::Tensor> =
        back.iter().map(|t| (t.name.as_str(), t)).collect();
    for t in &tensors {
        match by_name.get(t.name.as_str()) {
            Some(b) if b.shape == t.shape && b.data == t.data => {}
            _ => bail!(
                "{}: tensor {} did not read back identical; the disk may be full",
                args.output.display(),
                t.name
            ),
        }
    }
    let size = std::fs::metadata(&args.output)
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "wrote {} ({} tensors, {} bytes; verified by re-reading)",
        args.output.display(),
        back.len(),
        group(size as usize)
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
