//! Import weights: a PyTorch checkpoint (zip or legacy format) to `.safetensors`, keeping the
//! original tensor names (`insclr-cu import-weights`).

use crate::io::paths::{check_outputs, Named};
use crate::io::tensor::{self, SourceDType};
use crate::io::{pth, safetensors};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// What [`import_weights`] converted.
#[derive(Clone, Debug)]
pub struct ImportReport {
    pub tensors: usize,
    pub elements: usize,
    /// Tensors and elements per stored dtype.
    pub dtypes: BTreeMap<SourceDType, (usize, usize)>,
    /// Of them, BatchNorm's `num_batches_tracked` counters (tensors, elements).
    pub batches_tracked: usize,
    /// The output's size.
    pub bytes: u64,
}

/// Converts `input` to `output`, then re-reads the output and checks it holds the same
/// tensors (a full disk shows here, not at the next load).
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// let dir = std::env::temp_dir().join(format!("insclr-doc-import-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// // A checkpoint in PyTorch's legacy (pre-1.6) format (src/io/pickle_fixtures.rs's LEGACY_PTH).
/// let pth = std::path::Path::new("tests/data/legacy-checkpoint.pth");
/// let r = insclr::jobs::import_weights(pth, &dir.join("model.safetensors"))?;
/// assert_eq!(r.tensors, insclr::io::safetensors::read(&dir.join("model.safetensors"))?.len());
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
pub fn import_weights(input: &Path, output: &Path) -> Result<ImportReport> {
    check_outputs(
        &[Named::new("the input", input)],
        &[Named::new("the output", output)],
    )?;
    let tensors = pth::read(input)?;
    if tensors.is_empty() {
        bail!("{}: the state dict holds no tensor", input.display());
    }
    let source = input
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("source".to_string(), source),
    ]);
    safetensors::write(output, &tensors, Some(meta))?;
    let back = safetensors::read(output).context("re-reading what was written")?;
    let by_name: HashMap<&str, &tensor::Tensor> =
        back.iter().map(|t| (t.name.as_str(), t)).collect();
    for t in &tensors {
        match by_name.get(t.name.as_str()) {
            Some(b) if b.shape == t.shape && b.data == t.data => {}
            _ => bail!(
                "{}: tensor {} did not read back identical; the disk may be full",
                output.display(),
                t.name
            ),
        }
    }
    Ok(ImportReport {
        tensors: tensors.len(),
        elements: tensors.iter().map(|t| t.numel()).sum(),
        dtypes: tensor::dtype_summary(&tensors),
        batches_tracked: tensors
            .iter()
            .filter(|t| t.name.ends_with("num_batches_tracked"))
            .count(),
        bytes: std::fs::metadata(output).map(|m| m.len()).unwrap_or(0),
    })
}
