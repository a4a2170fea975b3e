//! File formats other tools read: numpy `.npy` / `.npz`, Python pickles, PyTorch `.pth` and
//! `.safetensors` weights.

pub mod html;
pub mod npy;
pub mod out_dir;
pub mod paths;
pub mod pickle;
pub mod plot;
pub mod pth;
pub mod safetensors;
pub mod tensor;

#[cfg(test)]
pub(crate) mod pickle_fixtures;

use anyhow::{bail, Result};
use std::path::Path;

/// `MemAvailable` of `/proc/meminfo` in bytes; `None` where unknown (not Linux).
pub fn mem_available() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// Bytes as GiB with one decimal, for memory messages.
pub fn gib(bytes: f64) -> String {
    format!("{:.1} GiB", bytes / (1u64 << 30) as f64)
}

/// Refuses, before asking for it, memory that is not there: `need` bytes (a lower bound of
/// what `what` allocates) against `MemAvailable`; the message names both and `fix`, the
/// setting to change. Passes where the available memory is unknown.
pub fn check_memory(need: f64, what: &str, fix: &str) -> Result<()> {
    if let Some(avail) = mem_available() {
        if need > avail {
            bail!(
                "{what} needs at least {} of memory, but only {} is available (MemAvailable in /proc/meminfo); {fix}",
                gib(need),
                gib(avail)
            );
        }
    }
    Ok(())
}

/// Refuses to read the whole of `path` into memory when it is larger than the memory
/// available (a wrong path to a dataset archive, or a machine short of memory), naming both.
/// A missing file passes: the read names it.
pub fn check_file_memory(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        // Small files fit anywhere; /proc/meminfo is read only for the large ones.
        Ok(m) if m.len() <= 1 << 26 => Ok(()),
        Ok(m) => check_memory(
            m.len() as f64,
            &format!("reading {} whole", path.display()),
            "free memory, or check the path",
        ),
        Err(_) => Ok(()),
    }
}

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
