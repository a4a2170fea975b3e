//! `insclr-cu import-weights IN.pth OUT.safetensors`: a PyTorch checkpoint (zip or legacy
//! format) to safetensors, keeping the original tensor names.

use anyhow::{bail, Context, Result};
use insclr::io::{pth, safetensors, tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

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
    if same_file(&args.input, &args.output) {
        bail!(
            "the input {} and the output {} are the same file: writing would replace the checkpoint being converted; give another output path",
            args.input.display(),
            args.output.display()
        );
    }
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

/// True when `a` and `b` name one file: the same path once links and `..` are resolved, or
/// (unix) the same device and inode, which also catches a hard link.
fn same_file(a: &Path, b: &Path) -> bool {
    // The output may not exist yet: resolve its folder and keep its name.
    let resolve = |p: &Path| -> Option<PathBuf> {
        p.canonicalize().ok().or_else(|| {
            let dir = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            Some(dir.canonicalize().ok()?.join(p.file_name()?))
        })
    };
    if let (Some(x), Some(y)) = (resolve(a), resolve(b)) {
        if x == y {
            return true;
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return (x.dev(), x.ino()) == (y.dev(), y.ino());
        }
    }
    false
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
