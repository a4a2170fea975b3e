//! File formats other tools read: numpy `.npy` / `.npz`, Python pickles, PyTorch `.pth` and
//! `.safetensors` weights.

pub mod html;
pub mod npy;
pub mod pickle;
pub mod plot;
pub mod pth;
pub mod safetensors;
pub mod tensor;

#[cfg(test)]
pub(crate) mod pickle_fixtures;

use anyhow::{bail, Result};
use std::path::Path;

/// Fails unless a file can be created beside `path`, by creating and removing a scratch file
/// there: a long job then learns that its output folder is missing or read-only before the
/// work, not after it.
pub fn check_writable(path: &Path) -> Result<()> {
    let shown = path.display();
    if path.is_dir() {
        bail!("output {shown} is a folder; give a file name");
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        let why = if dir.exists() {
            "is not a folder"
        } else {
            "does not exist (create it first)"
        };
        bail!("cannot write output {shown}: {} {why}", dir.display());
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let scratch = dir.join(format!(".{name}.{}.write-check", std::process::id()));
    if let Err(e) = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&scratch)
    {
        bail!(
            "cannot write output {shown}: creating a file in {} failed ({e}); pick another path or fix the folder's permissions",
            dir.display()
        );
    }
    // Best effort: the check succeeded, a leftover scratch file is only clutter.
    let _ = std::fs::remove_file(&scratch);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_writable_names_the_path_and_leaves_nothing_behind() {
        let dir = std::env::temp_dir().join(format!("insclr-writable-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        check_writable(&dir.join("out.npy")).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::write(dir.join("file"), b"x").unwrap();
        let e = format!(
            "{:#}",
            check_writable(&dir.join("file/out.npy")).unwrap_err()
        );
        assert!(
            e.contains("file/out.npy") && e.contains("is not a folder"),
            "{e}"
        );
        let e = format!("{:#}", check_writable(&dir.join("no/out.npy")).unwrap_err());
        assert!(e.contains("does not exist"), "{e}");
        assert!(check_writable(&dir).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
