//! An output folder belongs to one writer and knows what it wrote, as git's index lock and
//! cargo's build lock do:
//!
//! - [`DirLock`]: an exclusive OS file lock on `DIR/.insclr-lock`, held for the writer's
//!   whole life. The kernel drops it with the process, so a `kill -9` never leaves a lock
//!   behind; the file names the holder's pid and command line for the refusal of a second
//!   writer.
//! - [`Manifest`]: `DIR/.insclr-manifest`, one JSON string per line, the path (relative to
//!   `DIR`, folders ending in `/`) of every file and folder the writer creates. A line is
//!   appended and synced *before* its file is created, so a crash leaves at most an entry
//!   for a file that was never made, never a file that no entry names.
//! - [`clear`]: what `--overwrite` runs: it deletes exactly the files the manifests list
//!   (a folder with its own manifest, a run inside a pipeline, is read by that one), and
//!   refuses, listing them, when the folder holds anything else; it never follows a link.

use super::paths::{check_clear_keeps_inputs, Named};
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file's name in a locked folder.
pub const LOCK_FILE: &str = ".insclr-lock";
/// The manifest's name in an output folder.
pub const MANIFEST_FILE: &str = ".insclr-manifest";

/// The exclusive lock of one output folder; released (and its file removed) when dropped.
#[derive(Debug)]
pub struct DirLock {
    /// Holds the lock while it is open; never read after the holder's line is written.
    _file: File,
    path: PathBuf,
    /// Folders this lock had to create, outermost first (see [`DirLock::created`]).
    created: Vec<PathBuf>,
}

/// This process's command line, as the lock file shows it to a second writer.
fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// Creates `dir` and the missing folders above it; returns those it created, outermost first.
fn create_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut p = dir;
    while !p.as_os_str().is_empty() && std::fs::symlink_metadata(p).is_err() {
        missing.push(p.to_path_buf());
        match p.parent() {
            Some(q) => p = q,
            None => break,
        }
    }
    missing.reverse();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(missing)
}

impl DirLock {
    /// Takes the lock of `dir` (created when missing), or refuses at once naming the process
    /// that holds it. `what` names the folder in messages (`OUTPUT_DIR`).
    pub fn acquire(dir: &Path, what: &str) -> Result<DirLock> {
        let created = create_dirs(dir)?;
        let r = Self::lock(dir, what, created.clone());
        if r.is_err() {
            // Refused or failed: the folders made for the lock go again, if still empty (a
            // lock file in them may be another writer's, and is never removed here).
            for d in created.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
        }
        r
    }

    fn lock(dir: &Path, what: &str, created: Vec<PathBuf>) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        // A holder that is exiting removes the file after we opened it: our lock is then on a
        // file nobody else can find, so open again until the lock is on the file at `path`.
        for _ in 0..100 {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("creating the lock file {}", path.display()))?;
            match try_flock(&file, Flock::Exclusive) {
                Ok(true) => {}
                Ok(false) => {
                    bail!(
                        "{what} {} is in use by another insclr-cu: {}; wait for it to finish (or stop it), or choose another folder",
                        dir.display(),
                        holder(&mut file)
                    );
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("locking {}", path.display()));
                }
            }
            if !same_inode(&file, &path) {
                continue;
            }
            file.set_len(0)?;
            file.rewind()?;
            writeln!(
                file,
                "pid {}\ncommand {}",
                std::process::id(),
                command_line()
            )
            .and_then(|_| file.sync_data())
            .with_context(|| format!("writing the lock file {}", path.display()))?;
            return Ok(DirLock {
                _file: file,
                path,
                created,
            });
        }
        bail!(
            "could not lock {}: its lock file keeps being replaced",
            path.display()
        )
    }

    /// The folders [`DirLock::acquire`] created (outermost first): a run that fails before it
    /// has made anything worth keeping removes them again, leaving the disk as it found it.
    pub fn created(&self) -> &[PathBuf] {
        &self.created
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Removed while still held, so no other writer can be holding this file; one that
        // opened it meanwhile sees the inode change and opens again.
        let _ = std::fs::remove_file(&self.path);
        // Closing the file (dropping it, next) releases the lock.
    }
}

/// The two kinds of `flock(2)` lock.
#[derive(Clone, Copy)]
enum Flock {
    Shared,
    Exclusive,
}

/// `flock(2)` without waiting: `Ok(false)` when another open file holds a conflicting lock.
/// The kernel drops the lock when the last descriptor of the open file closes, so a process
/// killed with SIGKILL never leaves one behind.
#[cfg(unix)]
fn try_flock(file: &File, kind: Flock) -> std::io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    let op = match kind {
        Flock::Shared => libc::LOCK_SH,
        Flock::Exclusive => libc::LOCK_EX,
    } | libc::LOCK_NB;
    // SAFETY: flock takes a descriptor this `File` owns and keeps open for the call, and no
    // pointer.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Without `flock(2)` there is no lock: every writer proceeds, as before locks existed.
#[cfg(not(unix))]
fn try_flock(_file: &File, _kind: Flock) -> std::io::Result<bool> {
    Ok(true)
}

/// True when `file` is still the file at `path` (not removed or replaced since it was opened).
fn same_inode(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        path.exists()
    }
}

/// "pid 123 (insclr-cu train --config a.toml)" from a held lock file; the holder writes it
/// right after locking, so an empty file is read again a few times.
fn holder(file: &mut File) -> String {
    for _ in 0..20 {
        let mut text = String::new();
        if file.rewind().is_ok() && file.read_to_string(&mut text).is_ok() {
            let field = |key: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(key).map(str::trim).map(str::to_string))
            };
            if let Some(pid) = field("pid ") {
                let cmd = field("command ").unwrap_or_default();
                return format!("pid {pid} ({cmd})");
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    "a process that has not said which".to_string()
}

/// The files and folders a writer created in its output folder (see the module doc).
#[derive(Debug)]
pub struct Manifest {
    dir: PathBuf,
    entries: BTreeSet<String>,
}

/// `a/b` as the manifest writes it: relative, `/`-separated, without `.` or `..`.
fn entry_of(rel: &Path) -> Result<String> {
    use std::path::Component;
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(s) => parts.push(
                s.to_str()
                    .with_context(|| format!("{} is not UTF-8", rel.display()))?
                    .to_string(),
            ),
            Component::CurDir => {}
            _ => bail!("{} is not a path inside the output folder", rel.display()),
        }
    }
    if parts.is_empty() {
        bail!("an empty path is no manifest entry");
    }
    Ok(parts.join("/"))
}

impl Manifest {
    /// The manifest of `dir` (empty when it has none yet).
    pub fn open(dir: &Path) -> Result<Manifest> {
        Ok(Manifest {
            dir: dir.to_path_buf(),
            entries: read_entries(dir)?,
        })
    }

    /// True when `dir` has a manifest file.
    pub fn exists(dir: &Path) -> bool {
        dir.join(MANIFEST_FILE).is_file()
    }

    /// Records `path` (inside the folder: `dir.join(...)` or relative to it) as a file this
    /// writer is about to create, with the folders between, before it is created.
    pub fn add(&mut self, path: &Path) -> Result<()> {
        self.add_entry(path, false)
    }

    /// Records the folder `path` (inside the folder) as one this writer creates.
    pub fn add_dir(&mut self, path: &Path) -> Result<()> {
        self.add_entry(path, true)
    }

    fn add_entry(&mut self, path: &Path, is_dir: bool) -> Result<()> {
        let rel = path.strip_prefix(&self.dir).unwrap_or(path);
        let entry = entry_of(rel)?;
        let mut new = Vec::new();
        let parts: Vec<&str> = entry.split('/').collect();
        for i in 1..parts.len() {
            new.push(format!("{}/", parts[..i].join("/")));
        }
        new.push(if is_dir { format!("{entry}/") } else { entry });
        new.retain(|e| !self.entries.contains(e));
        if new.is_empty() {
            return Ok(());
        }
        let text: String = new
            .iter()
            .map(|e| serde_json::Value::String(e.clone()).to_string() + "\n")
            .collect();
        let path = self.dir.join(MANIFEST_FILE);
        // One write of whole lines on an append-only file: a crash cuts at most the last line,
        // which the reader drops (its file was not created yet).
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_data())
            .with_context(|| format!("writing {}", path.display()))?;
        self.entries.extend(new);
        Ok(())
    }

    /// Every entry (files, and folders ending in `/`).
    pub fn entries(&self) -> &BTreeSet<String> {
        &self.entries
    }
}

/// The entries of `dir`'s manifest; a torn or unreadable line is dropped.
fn read_entries(dir: &Path) -> Result<BTreeSet<String>> {
    let path = dir.join(MANIFEST_FILE);
    let text = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let text = String::from_utf8_lossy(&text);
    Ok(text
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| serde_json::from_str::<String>(l.trim_end()).ok())
        .filter(|e| entry_of(Path::new(e.trim_end_matches('/'))).is_ok())
        .collect())
}

/// What `--overwrite` finds in a folder: what insclr-cu wrote, and what it did not.
#[derive(Debug, Default)]
pub struct Contents {
    /// Files a manifest lists (or their `.tmp` of an interrupted write), manifests included.
    pub ours: Vec<PathBuf>,
    /// Folders a manifest lists, innermost first.
    pub our_dirs: Vec<PathBuf>,
    /// Everything else, relative to the folder (folders end in `/`).
    pub foreign: Vec<String>,
}

/// Sorts the contents of `dir` into what its manifests (and `also`, entries of the same form
/// the caller knows to be its own) list and what they do not.
pub fn contents(dir: &Path, also: &BTreeSet<String>) -> Result<Contents> {
    let mut c = Contents::default();
    let mut entries = read_entries(dir)?;
    entries.extend(also.iter().cloned());
    walk(dir, "", "", &entries, &mut c)?;
    Ok(c)
}

/// `dir` is `shown` (relative to the cleared folder) and `prefix` inside the folder whose
/// manifest `entries` is.
fn walk(
    dir: &Path,
    shown: &str,
    prefix: &str,
    entries: &BTreeSet<String>,
    c: &mut Contents,
) -> Result<()> {
    let mut list: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("listing {}", dir.display()))?;
    list.sort_by_key(|e| e.file_name());
    for e in list {
        let name = e.file_name();
        let Some(name) = name.to_str() else {
            c.foreign.push(format!("{shown}{}", name.to_string_lossy()));
            continue;
        };
        let p = e.path();
        let rel = format!("{prefix}{name}");
        // symlink_metadata: a link is judged as the link, never as what it points to; this
        // program writes no links, so none is ever its own.
        let ft = std::fs::symlink_metadata(&p)
            .with_context(|| format!("reading {}", p.display()))?
            .file_type();
        if ft.is_dir() {
            if !entries.contains(&format!("{rel}/")) {
                c.foreign.push(format!("{shown}{name}/"));
                continue;
            }
            let shown = format!("{shown}{name}/");
            if p.join(MANIFEST_FILE).is_file() {
                walk(&p, &shown, "", &read_entries(&p)?, c)?;
            } else {
                walk(&p, &shown, &format!("{rel}/"), entries, c)?;
            }
            c.our_dirs.push(p);
            continue;
        }
        let listed = entries.contains(&rel)
            || rel
                .strip_suffix(".tmp")
                .is_some_and(|r| entries.contains(r));
        let own = prefix.is_empty() && (name == MANIFEST_FILE || name == LOCK_FILE);
        if ft.is_file() && (listed || own) {
            c.ours.push(p);
        } else {
            c.foreign.push(format!("{shown}{name}"));
        }
    }
    Ok(())
}

/// "a, b, c and 4 more".
fn some(names: &[String], max: usize) -> String {
    let mut s = names[..names.len().min(max)].join(", ");
    if names.len() > max {
        s += &format!(" and {} more", names.len() - max);
    }
    s
}

/// `--overwrite` of `dir`, which `lock` holds: deletes every file and folder its manifests
/// (or `legacy`: entries of a writer that kept none) list, and nothing else; returns what it
/// removed (the lock file stays, the manifest is emptied). Refuses before deleting anything
/// as [`check_clear`] does.
pub fn clear(
    dir: &Path,
    lock: &DirLock,
    inputs: &[Named],
    legacy: &BTreeSet<String>,
) -> Result<Vec<PathBuf>> {
    let c = check_clear(dir, inputs, legacy)?;
    let mut removed = Vec::new();
    let keep = [lock.path.clone(), dir.join(MANIFEST_FILE)];
    for f in &c.ours {
        if keep.contains(f) {
            continue;
        }
        std::fs::remove_file(f)
            .with_context(|| format!("--overwrite: removing {}", f.display()))?;
        removed.push(f.clone());
    }
    for d in &c.our_dirs {
        std::fs::remove_dir(d).with_context(|| format!("--overwrite: removing {}", d.display()))?;
        removed.push(d.clone());
    }
    // Emptied last: a failure above leaves a manifest that still lists what is left.
    File::create(dir.join(MANIFEST_FILE))
        .with_context(|| format!("emptying {}", dir.join(MANIFEST_FILE).display()))?;
    let names: Vec<String> = removed
        .iter()
        .map(|p| p.strip_prefix(dir).unwrap_or(p).display().to_string())
        .collect();
    eprintln!(
        "--overwrite: removed {} file(s) and folder(s) an earlier run wrote in {}: {}",
        removed.len(),
        dir.display(),
        if names.is_empty() {
            "none".to_string()
        } else {
            some(&names, 8)
        }
    );
    Ok(removed)
}

/// What [`clear`] would delete, or its refusal: when `dir` is a link, is, holds or lies inside
/// one of `inputs`, or holds anything no manifest lists (naming it). Deletes nothing, so a
/// command runs it before its long checks, and again under the lock.
pub fn check_clear(dir: &Path, inputs: &[Named], legacy: &BTreeSet<String>) -> Result<Contents> {
    let meta =
        std::fs::symlink_metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(dir).unwrap_or_default();
        bail!(
            "--overwrite refused: {} is a symbolic link (to {}); --overwrite never deletes through a link: give the folder itself",
            dir.display(),
            target.display()
        );
    }
    check_clear_keeps_inputs(dir, inputs)?;
    let c = contents(dir, legacy)?;
    if !c.foreign.is_empty() {
        bail!(
            "--overwrite refused: {} holds {} file(s) or folder(s) that no run of insclr-cu wrote there (its manifest {MANIFEST_FILE} does not list them): {}; --overwrite deletes only what a run wrote: move them away, or choose another folder",
            dir.display(),
            c.foreign.len(),
            some(&c.foreign, 12)
        );
    }
    Ok(c)
}

/// The holder of `dir`'s lock ("pid 123 (command)") when another writer holds it now. Reads
/// only (no lock file is created), so a command can be refused before its long checks.
pub fn held_by(dir: &Path) -> Option<String> {
    let mut file = File::open(dir.join(LOCK_FILE)).ok()?;
    match try_flock(&file, Flock::Shared) {
        // Closing the file releases the shared lock.
        Ok(true) | Err(_) => None,
        Ok(false) => Some(holder(&mut file)),
    }
}

/// Refuses, naming the holder, when another writer holds `dir`'s lock (see [`held_by`]).
pub fn check_not_held(dir: &Path, what: &str) -> Result<()> {
    match held_by(dir) {
        Some(h) => bail!(
            "{what} {} is in use by another insclr-cu: {h}; wait for it to finish (or stop it), or choose another folder",
            dir.display()
        ),
        None => Ok(()),
    }
}

/// True when `dir` holds nothing but an idle lock file (of a writer that was killed) or is
/// missing: a fresh run may start there.
pub fn is_unused(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(it) => {
            for e in it {
                let e = e.with_context(|| format!("listing {}", dir.display()))?;
                if e.file_name() != LOCK_FILE {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("listing {}", dir.display())),
    }
}

/// Undoes a writer that failed before it made anything worth keeping: removes the files and
/// folders `manifest` gained since `before` (a snapshot of its entries), the manifest when it
/// was new, and the folders the lock created, so the disk is as it was found.
pub fn undo(manifest: &Manifest, before: &BTreeSet<String>, lock: &DirLock) {
    let dir = &manifest.dir;
    let mut new: Vec<&String> = manifest.entries.difference(before).collect();
    // Deepest first, files before the folders that hold them.
    new.sort_by_key(|e| std::cmp::Reverse((e.matches('/').count(), e.len())));
    for e in new {
        let p = dir.join(e.trim_end_matches('/'));
        if e.ends_with('/') {
            let _ = std::fs::remove_dir(&p);
        } else {
            let _ = std::fs::remove_file(&p);
            let mut tmp = p.into_os_string();
            tmp.push(".tmp");
            let _ = std::fs::remove_file(PathBuf::from(tmp));
        }
    }
    if before.is_empty() {
        let _ = std::fs::remove_file(dir.join(MANIFEST_FILE));
    }
    // The lock file goes when the lock is dropped; folders it created can only go after.
    let _ = std::fs::remove_file(&lock.path);
    for d in lock.created.iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("insclr-outdir-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_released_on_drop() {
        let d = scratch("lock");
        let a = DirLock::acquire(&d.join("out"), "OUTPUT_DIR").unwrap();
        assert_eq!(a.created(), [d.clone(), d.join("out")]);
        let e = DirLock::acquire(&d.join("out"), "OUTPUT_DIR").unwrap_err();
        let e = e.to_string();
        let pid = format!("pid {}", std::process::id());
        assert!(e.contains("is in use") && e.contains(&pid), "{e}");
        drop(a);
        assert!(!d.join("out").join(LOCK_FILE).exists());
        let b = DirLock::acquire(&d.join("out"), "OUTPUT_DIR").unwrap();
        assert!(b.created().is_empty());
        drop(b);
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn clear_removes_what_the_manifests_list_and_refuses_anything_else() {
        let d = scratch("clear");
        let lock = DirLock::acquire(&d, "OUTPUT_DIR").unwrap();
        let mut m = Manifest::open(&d).unwrap();
        for f in ["run.json", "checkpoints/c1.safetensors"] {
            m.add(&d.join(f)).unwrap();
        }
        m.add_dir(&d.join("s1/train")).unwrap();
        std::fs::create_dir_all(d.join("checkpoints")).unwrap();
        std::fs::create_dir_all(d.join("s1/train")).unwrap();
        for f in ["run.json", "checkpoints/c1.safetensors", "run.json.tmp"] {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        // A run inside: its own manifest says what it holds.
        let mut inner = Manifest::open(&d.join("s1/train")).unwrap();
        inner.add(&d.join("s1/train/log.jsonl")).unwrap();
        std::fs::write(d.join("s1/train/log.jsonl"), b"x").unwrap();
        std::fs::write(d.join("s1/train/notes.txt"), b"mine").unwrap();
        std::fs::write(d.join("checkpoints/mine.txt"), b"mine").unwrap();
        let e = clear(&d, &lock, &[], &BTreeSet::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("2 file(s)")
                && e.contains("checkpoints/mine.txt")
                && e.contains("s1/train/notes.txt"),
            "{e}"
        );
        assert!(d.join("run.json").exists(), "a refusal deletes nothing");
        std::fs::remove_file(d.join("s1/train/notes.txt")).unwrap();
        std::fs::remove_file(d.join("checkpoints/mine.txt")).unwrap();
        let removed = clear(&d, &lock, &[], &BTreeSet::new()).unwrap();
        assert_eq!(removed.len(), 8, "{removed:?}");
        let left: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(Manifest::open(&d).unwrap().entries().is_empty());
        drop(lock);
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_failed_writer_leaves_the_disk_as_it_found_it() {
        let d = scratch("undo");
        let lock = DirLock::acquire(&d.join("a/out"), "OUTPUT_DIR").unwrap();
        let mut m = Manifest::open(&d.join("a/out")).unwrap();
        let before = m.entries().clone();
        m.add(&d.join("a/out/checkpoints/c.npz")).unwrap();
        std::fs::create_dir_all(d.join("a/out/checkpoints")).unwrap();
        std::fs::write(d.join("a/out/checkpoints/c.npz"), b"x").unwrap();
        undo(&m, &before, &lock);
        drop(lock);
        assert!(
            !d.exists(),
            "{:?}",
            std::fs::read_dir(&d).map(|r| r.count())
        );
    }

    #[test]
    fn manifest_entries_stay_inside_the_folder_and_a_torn_line_is_dropped() {
        let d = scratch("entries");
        std::fs::create_dir_all(&d).unwrap();
        let mut m = Manifest::open(&d).unwrap();
        assert!(m.add(Path::new("../x")).is_err());
        m.add(Path::new("a/b.txt")).unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(d.join(MANIFEST_FILE))
            .unwrap();
        f.write_all(b"\"../../etc/passwd\"\n\"half").unwrap();
        let got: Vec<String> = Manifest::open(&d)
            .unwrap()
            .entries()
            .iter()
            .cloned()
            .collect();
        assert_eq!(got, ["a/", "a/b.txt"]);
        std::fs::remove_dir_all(&d).ok();
    }
}
