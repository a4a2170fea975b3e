//! Getting images into tensors: listing a dataset, decoding, the evaluators' geometry and
//! normalisation.

pub mod dataset;
pub mod gldv2;
pub mod image;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// A dataset's images in order (training's `DATA.ROOT` / `DATA.TRAIN_FILENAME`, extraction's
/// `--root` / `--images`): GLDv2's `train_clean.csv` (known by its header; spec 2.1), a list
/// file's paths (relative to `root`), or every image under `root`, sorted.
pub fn image_paths(root: &Path, list: Option<&Path>) -> Result<Vec<PathBuf>> {
    let paths: Vec<PathBuf> = match list {
        None => image::list_images(root)?,
        Some(l) if gldv2::is_train_clean(l) => gldv2::read_train_clean(l)?
            .iter()
            .map(|t| gldv2::image_path(root, &t.id))
            .collect(),
        Some(l) => {
            let text = std::fs::read_to_string(l)
                .with_context(|| format!("reading image list {}", l.display()))?;
            text.lines()
                .map(str::trim)
                .filter(|s| !s.is_empty() && !s.starts_with('#'))
                .map(|s| root.join(s))
                .collect()
        }
    };
    if paths.is_empty() {
        match list {
            Some(l) => bail!("{}: no image paths (one per line expected)", l.display()),
            None => bail!("no images under {}", root.display()),
        }
    }
    Ok(paths)
}
