//! Which paths name one file, and which folder holds which: the checks every command runs
//! before it writes, so that an output never replaces an input and `--overwrite` never
//! deletes a folder that holds (or lies inside) something the command reads.
//!
//! Paths are compared twice over: resolved (absolute, links and `..` followed) and, on unix,
//! by device and inode, which also catches a hard link under another name.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// `p` absolute, with links and `..` resolved. A path that does not exist yet keeps its
/// missing tail under its nearest existing folder, resolved; `None` when not even that exists.
pub fn resolve(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = p.canonicalize() {
        return Some(c);
    }
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(p)
    };
    let mut tail = Vec::new();
    let mut head = abs.as_path();
    loop {
        if let Ok(c) = head.canonicalize() {
            let mut out = c;
            for part in tail.iter().rev() {
                out.push(part);
            }
            return Some(lexical(&out));
        }
        tail.push(head.components().next_back()?.as_os_str().to_os_string());
        head = head.parent()?;
    }
}

/// `a/b/../c` -> `a/c`, lexically (a linked folder before a `..` is not followed): for the part
/// of a path that does not exist yet, and for a path read from a file. A leading `..` of a
/// relative path stays; `/..` is `/`.
fn lexical(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut parts: Vec<Component> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match parts.last() {
                Some(Component::Normal(_)) => {
                    parts.pop();
                }
                Some(Component::RootDir) => {}
                _ => parts.push(c),
            },
            c => parts.push(c),
        }
    }
    parts.iter().collect()
}

/// A path `p` written in `file` (a pipeline plan, a stage config), as cargo and compose files
/// read theirs: relative to `file`'s folder, shortened lexically (`configs/../data` is `data`).
/// Empty and absolute paths stay as they are.
pub fn beside(file: &Path, p: &str) -> String {
    if p.is_empty() || Path::new(p).is_absolute() {
        return p.to_string();
    }
    let out = lexical(&file.parent().unwrap_or(Path::new("")).join(p));
    if out.as_os_str().is_empty() {
        ".".to_string()
    } else {
        out.display().to_string()
    }
}

/// `(device, inode)` of what `p` names (links followed), where the platform has them.
fn file_id(p: &Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = p;
        None
    }
}

/// True when `a` and `b` name one file: the same device and inode when both exist (a hard
/// link, a symbolic link, `./x` and `x` all count), else the same resolved path.
pub fn same_file(a: &Path, b: &Path) -> bool {
    if let (Some(x), Some(y)) = (file_id(a), file_id(b)) {
        return x == y;
    }
    matches!((resolve(a), resolve(b)), (Some(x), Some(y)) if x == y)
}

/// True when `inner` is `outer` or lies somewhere inside it (both resolved).
pub fn within(inner: &Path, outer: &Path) -> bool {
    matches!((resolve(inner), resolve(outer)), (Some(i), Some(o)) if i.starts_with(&o))
}

/// A path a command reads or writes, with what names it (`--feats`, `DATA.ROOT`, ...).
#[derive(Clone, Debug)]
pub struct Named {
    pub what: String,
    pub path: PathBuf,
}

impl Named {
    pub fn new(what: impl Into<String>, path: impl Into<PathBuf>) -> Named {
        Named {
            what: what.into(),
            path: path.into(),
        }
    }
}

/// Refuses, before any work, when an output file is one of the inputs: writing it would
/// replace what the command reads (`pool --feats f.npy --out f.npy`, `search --html q.jpg
/// q.jpg` where the page's name was forgotten). Inputs that do not exist are skipped: they
/// fail later, where they are read, with their own message.
pub fn check_outputs(inputs: &[Named], outputs: &[Named]) -> Result<()> {
    // One stat per input (image lists can be long); names are resolved only where a file is
    // missing, since two existing files are the same exactly when their inodes are.
    let ids: Vec<Option<(u64, u64)>> = inputs.iter().map(|i| file_id(&i.path)).collect();
    for o in outputs {
        let out_id = file_id(&o.path);
        let mut out_resolved = None;
        for (i, id) in inputs.iter().zip(&ids) {
            let same = match (out_id, id) {
                (Some(a), Some(b)) => a == *b,
                (None, Some(_)) | (Some(_), None) => false,
                (None, None) => {
                    let r = out_resolved.get_or_insert_with(|| resolve(&o.path));
                    r.is_some() && resolve(&i.path) == *r
                }
            };
            if same {
                bail!(
                    "{} {} and {} {} are the same file: writing the output would replace an input; give the output another path",
                    o.what,
                    o.path.display(),
                    i.what,
                    i.path.display()
                );
            }
        }
    }
    Ok(())
}

/// Refuses `--overwrite` of the folder `dir` when it is, holds, or lies inside one of
/// `inputs` (config and plan files, image folders, pools, weights, ground truths): deleting
/// its contents could take an input with it.
pub fn check_clear_keeps_inputs(dir: &Path, inputs: &[Named]) -> Result<()> {
    for i in inputs {
        if !i.path.exists() {
            continue;
        }
        let why = if within(&i.path, dir) {
            "holds"
        } else if within(dir, &i.path) {
            "lies inside"
        } else {
            continue;
        };
        bail!(
            "--overwrite refused: {} {why} {} {}, which this command reads; choose an output folder apart from the inputs",
            dir.display(),
            i.what,
            i.path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("insclr-paths-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn one_file_under_many_names_and_a_file_not_yet_written() {
        let d = scratch("same");
        let a = d.join("a.npy");
        std::fs::write(&a, b"x").unwrap();
        std::fs::create_dir_all(d.join("sub")).unwrap();
        assert!(same_file(&a, &d.join("./sub/../a.npy")));
        std::fs::hard_link(&a, d.join("h.npy")).unwrap();
        assert!(same_file(&a, &d.join("h.npy")));
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&a, d.join("s.npy")).unwrap();
            assert!(same_file(&d.join("s.npy"), &a));
        }
        assert!(!same_file(&a, &d.join("b.npy")));
        // Neither exists: compared by resolved name.
        assert!(same_file(&d.join("n/x.txt"), &d.join("n/./x.txt")));
        assert_eq!(
            resolve(&d.join("n/m/../x.txt")),
            Some(d.canonicalize().unwrap().join("n/x.txt"))
        );
        let e = check_outputs(&[Named::new("--feats", &a)], &[Named::new("--out", &a)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--out") && e.contains("--feats") && e.contains("same file"));
        check_outputs(
            &[Named::new("--feats", &a)],
            &[Named::new("--out", d.join("b.npy"))],
        )
        .unwrap();
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_folder_holding_or_inside_an_input_is_never_cleared() {
        let d = scratch("clear");
        std::fs::create_dir_all(d.join("imgs/sub")).unwrap();
        std::fs::write(d.join("cfg.toml"), b"x").unwrap();
        let root = [Named::new("DATA.ROOT", d.join("imgs"))];
        let e = check_clear_keeps_inputs(&d.join("imgs/sub"), &root).unwrap_err();
        assert!(e.to_string().contains("lies inside DATA.ROOT"), "{e}");
        let e = check_clear_keeps_inputs(&d, &[Named::new("--config", d.join("cfg.toml"))]);
        assert!(e.unwrap_err().to_string().contains("holds --config"));
        check_clear_keeps_inputs(&d.join("out"), &root).unwrap();
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn beside_reads_a_path_from_its_files_folder() {
        let plan = Path::new("configs/demo-pipeline.toml");
        assert_eq!(beside(plan, "../data/demo"), "data/demo");
        assert_eq!(beside(plan, "stage.toml"), "configs/stage.toml");
        assert_eq!(beside(plan, "/abs/x"), "/abs/x");
        assert_eq!(beside(plan, ""), "");
        assert_eq!(beside(Path::new("plan.toml"), "../up"), "../up");
        assert_eq!(beside(Path::new("plan.toml"), "./x"), "x");
        assert_eq!(beside(Path::new("a/plan.toml"), ".."), ".");
        assert_eq!(beside(Path::new("/r/a/plan.toml"), "../b"), "/r/b");
    }
}
