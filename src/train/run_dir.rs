//! A run directory belongs to one run. `OUTPUT_DIR/run.json` and the metadata of every
//! checkpoint keep a [`RunRecord`]: the resolved config (every key, flattened to
//! `SECTION.KEY`) and the size and CRC-32 of each file the config makes training read.
//! `--resume` continues only when the record of the latest checkpoint (or `run.json` when
//! there is none yet) matches today's; a fresh run needs an empty OUTPUT_DIR, or
//! `--overwrite`, which deletes the files an earlier run wrote there (its manifest,
//! [`crate::io::out_dir`]) and refuses when the folder holds anything else or an input. The
//! run holds the folder's lock from [`prepare`] to its end. When a run resumes it also removes
//! the debris of a failed write: `*.tmp` files and memory banks whose checkpoint was never
//! written.

use super::checkpoint;
use super::config::Config;
use crate::io::out_dir::{self, DirLock, Manifest};
use crate::io::paths::Named;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The run record's file name in OUTPUT_DIR.
pub const RUN_FILE: &str = "run.json";

/// Config keys that may differ between an interrupted run and its resumption: none changes
/// the numbers of a step (where files go, how far to train, how often to log or save, how
/// images are cached, and the evaluation keys `train` does not read).
const MAY_CHANGE: &[&str] = &[
    "OUTPUT_DIR",
    "DEVICE",
    "SOLVER.MAX_STEP",
    "SOLVER.CHECKPOINT_PERIOD",
    "SOLVER.LOG_PERIOD",
    "SOLVER.TRACE_ANCHORS",
    "SOLVER.TRACE_IMAGES",
    "DATALOADER.NUM_WORKERS",
    "DATALOADER.PREFETCH",
    "DATA.CACHE_IMAGES",
    "DATA.TEST_FILENAME",
    "TEST.TEST_PERIOD",
    "TEST.IMS_PER_BATCH",
    "TEST.SCALES",
];

/// One input of a run: where it is, how many bytes were hashed and their CRC-32.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputFile {
    pub path: String,
    pub bytes: u64,
    pub crc32: String,
}

/// What makes a run: its resolved config and its inputs, by the config key that names them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub config: BTreeMap<String, Value>,
    pub inputs: BTreeMap<String, InputFile>,
    /// The ranks the run is split over (`--gpus`; absent: one): each rank's BatchNorm
    /// statistics are of its share of the batch, so a run continues only on as many.
    #[serde(default = "one_rank", skip_serializing_if = "is_one_rank")]
    pub ranks: usize,
}

fn one_rank() -> usize {
    1
}

fn is_one_rank(n: &usize) -> bool {
    *n == 1
}

impl RunRecord {
    /// The record of `cfg`: its keys, and checksums of the candidate pool, the weights it
    /// starts from and the image list (the list file, or the names of the images under
    /// `DATA.ROOT`; image contents are not hashed, a GLDv2 run would read 1.2M files twice).
    pub fn new(cfg: &Config) -> Result<RunRecord> {
        let mut config = BTreeMap::new();
        flatten("", serde_json::to_value(cfg)?, &mut config);
        let mut inputs = BTreeMap::new();
        let mut add = |key: &str, p: &Path| -> Result<()> {
            let f = file_sum(p).with_context(|| format!("{key} {}", p.display()))?;
            inputs.insert(key.to_string(), f);
            Ok(())
        };
        add("NEIGHBOR.SRC", Path::new(&cfg.neighbor.src))?;
        match cfg.model.pretrain.as_str() {
            "random" => {}
            // An empty IMAGENET_WEIGHTS is reported by the model builder.
            "imagenet" if cfg.model.imagenet_weights.is_empty() => {}
            "imagenet" => add(
                "MODEL.IMAGENET_WEIGHTS",
                Path::new(&cfg.model.imagenet_weights),
            )?,
            p => add("MODEL.PRETRAIN", Path::new(p))?,
        }
        let root = Path::new(&cfg.data.root);
        if cfg.data.train_filename.is_empty() {
            let names: String = crate::data::image::list_images(root)?
                .iter()
                .map(|p| format!("{}\n", p.strip_prefix(root).unwrap_or(p).display()))
                .collect();
            let mut h = crc32fast::Hasher::new();
            h.update(names.as_bytes());
            let f = InputFile {
                path: format!("{} (image names)", root.display()),
                bytes: names.len() as u64,
                crc32: format!("{:08x}", h.finalize()),
            };
            inputs.insert("DATA.ROOT".to_string(), f);
        } else {
            add("DATA.TRAIN_FILENAME", &root.join(&cfg.data.train_filename))?;
        }
        Ok(RunRecord {
            config,
            inputs,
            ranks: 1,
        })
    }

    /// The record of the run in `dir` (its `run.json`).
    pub fn read(dir: &Path) -> Result<RunRecord> {
        let path = dir.join(RUN_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {}: {} is not a run directory of insclr-cu train",
                path.display(),
                dir.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: unreadable run record", path.display()))
    }

    /// The resolved config the record was made from.
    pub fn to_config(&self) -> Result<Config> {
        let mut root = serde_json::Map::new();
        for (key, v) in &self.config {
            let mut node = &mut root;
            let mut parts = key.split('.').peekable();
            while let Some(part) = parts.next() {
                if parts.peek().is_none() {
                    node.insert(part.to_string(), v.clone());
                } else {
                    let next = node
                        .entry(part.to_string())
                        .or_insert_with(|| Value::Object(Default::default()));
                    node = next.as_object_mut().with_context(|| {
                        format!("run record: key {key} is both a value and a section")
                    })?;
                }
            }
        }
        serde_json::from_value(Value::Object(root))
            .context("run record: its keys are not a config of this insclr-cu")
    }

    /// One line of JSON (checkpoint metadata).
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string(self)?)
    }

    /// What differs from `old` (the run being resumed), one line per key or file.
    pub fn diff(&self, old: &RunRecord) -> Vec<String> {
        let mut out = Vec::new();
        if self.ranks != old.ranks {
            out.push(format!("ranks (--gpus): {} -> {}", old.ranks, self.ranks));
        }
        let keys: BTreeSet<&String> = old.config.keys().chain(self.config.keys()).collect();
        let show = |v: Option<&Value>| v.map_or("(absent)".to_string(), Value::to_string);
        for k in keys {
            let (a, b) = (old.config.get(k), self.config.get(k));
            if a != b && !MAY_CHANGE.contains(&k.as_str()) {
                out.push(format!("{k}: {} -> {}", show(a), show(b)));
            }
        }
        let keys: BTreeSet<&String> = old.inputs.keys().chain(self.inputs.keys()).collect();
        let show = |f: Option<&InputFile>| {
            f.map_or("(none)".to_string(), |f| {
                format!("{} ({} bytes, crc32 {})", f.path, f.bytes, f.crc32)
            })
        };
        for k in keys {
            let (a, b) = (old.inputs.get(k), self.inputs.get(k));
            match (a, b) {
                (Some(a), Some(b)) if a == b => {}
                (Some(a), Some(b)) if a.path == b.path => out.push(format!(
                    "{k}: file {} changed since the run started ({} bytes, crc32 {} -> {} bytes, crc32 {})",
                    b.path, a.bytes, a.crc32, b.bytes, b.crc32
                )),
                _ => out.push(format!("{k}: file {} -> {}", show(a), show(b))),
            }
        }
        out
    }
}

/// `{"SOLVER": {"BASE_LR": 0.001}}` -> `SOLVER.BASE_LR = 0.001`.
fn flatten(prefix: &str, v: Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        v => {
            out.insert(prefix.to_string(), v);
        }
    }
}

/// The files and folders a run of `cfg` reads, by the key that names them: what no output
/// may replace and no `--overwrite` may delete.
pub fn inputs(cfg: &Config) -> Vec<Named> {
    let root = Path::new(&cfg.data.root);
    let mut v = vec![
        Named::new("DATA.ROOT", root),
        Named::new("NEIGHBOR.SRC", &cfg.neighbor.src),
    ];
    if !cfg.data.train_filename.is_empty() {
        v.push(Named::new(
            "DATA.TRAIN_FILENAME",
            root.join(&cfg.data.train_filename),
        ));
    }
    match cfg.model.pretrain.as_str() {
        "random" => {}
        "imagenet" => v.push(Named::new(
            "MODEL.IMAGENET_WEIGHTS",
            &cfg.model.imagenet_weights,
        )),
        p => v.push(Named::new("MODEL.PRETRAIN", p)),
    }
    if !cfg.model.head.init_feats.is_empty() {
        v.push(Named::new(
            "MODEL.HEAD.INIT_FEATS",
            &cfg.model.head.init_feats,
        ));
    }
    v.retain(|n| !n.path.as_os_str().is_empty());
    v
}

/// Size and CRC-32 of a file, read in 1 MiB pieces (weights and pools can be GBs).
pub fn file_sum(path: &Path) -> Result<InputFile> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(InputFile {
        path: path.display().to_string(),
        bytes,
        crc32: format!("{:08x}", h.finalize()),
    })
}

/// An OUTPUT_DIR made ready by [`prepare`]: locked for this run, with its manifest.
#[derive(Debug)]
pub struct Prepared {
    /// Held until the run ends: no second writer can start in the folder.
    pub lock: DirLock,
    /// Every file the run creates is added here before it is created.
    pub manifest: Manifest,
    /// The manifest's entries before this run wrote anything (see [`Prepared::undo`]).
    before: BTreeSet<String>,
    /// A fresh start (not a resumption): a failure before the first checkpoint undoes it.
    pub fresh: bool,
    /// Files removed: stale debris on resume, or the earlier run's files on `--overwrite`.
    pub removed: Vec<PathBuf>,
}

impl Prepared {
    /// Removes what this run created, the folder too when the run created it: for a fresh
    /// run that failed before it wrote anything a rerun could continue from.
    pub fn undo(&self) {
        if self.fresh {
            out_dir::undo(&self.manifest, &self.before, &self.lock);
        }
    }
}

/// Makes `out` ready for the run of `record` (see the module doc): takes its lock (refused
/// while another process holds it), then refuses a used folder for a fresh run and another
/// run's folder for `resume`, clears the earlier run's files for `overwrite` (never an input
/// in `inputs`, never a file no manifest lists), removes stale files, and writes `run.json`.
pub fn prepare(
    out: &Path,
    record: &RunRecord,
    resume: bool,
    overwrite: bool,
    inputs: &[Named],
) -> Result<Prepared> {
    if resume && overwrite {
        bail!("--resume continues the run in OUTPUT_DIR and --overwrite deletes it: pass one");
    }
    let lock = DirLock::acquire(out, "OUTPUT_DIR")?;
    let manifest = Manifest::open(out)?;
    let mut p = Prepared {
        lock,
        before: manifest.entries().clone(),
        manifest,
        fresh: true,
        removed: Vec::new(),
    };
    match settle(out, record, resume, overwrite, inputs, &mut p) {
        Ok(()) => Ok(p),
        Err(e) => {
            p.undo();
            Err(e)
        }
    }
}

/// [`prepare`]'s refusals without the lock and without writing anything: run before the
/// dataset and the model are loaded, so a folder that will be refused is named in a moment,
/// not after an hour of decoding images. [`prepare`] checks again under the lock.
pub fn precheck(
    out: &Path,
    record: &RunRecord,
    resume: bool,
    overwrite: bool,
    inputs: &[Named],
) -> Result<()> {
    if resume && overwrite {
        bail!("--resume continues the run in OUTPUT_DIR and --overwrite deletes it: pass one");
    }
    out_dir::check_not_held(out, "OUTPUT_DIR")?;
    if out_dir::is_unused(out)? {
        return Ok(());
    }
    if overwrite {
        check_clearable(out)?;
        out_dir::check_clear(out, inputs, &legacy_of(out))?;
    } else if !resume {
        bail!(not_empty(out));
    } else {
        check_same_run(out, record)?;
    }
    Ok(())
}

/// The refusal of a used OUTPUT_DIR for a fresh run.
fn not_empty(out: &Path) -> String {
    format!(
        "OUTPUT_DIR {} is not empty: pass --resume to continue the run in it, or --overwrite to delete the files an earlier run wrote there and start over",
        out.display()
    )
}

/// The files of an older insclr-cu's run in `out` (see [`legacy_entries`]) when `out` is one:
/// it kept no manifest, but its run.json says whose folder it is.
fn legacy_of(out: &Path) -> BTreeSet<String> {
    if !Manifest::exists(out) && RunRecord::read(out).is_ok() {
        legacy_entries(out)
    } else {
        BTreeSet::new()
    }
}

/// The part of [`prepare`] done under the lock.
fn settle(
    out: &Path,
    record: &RunRecord,
    resume: bool,
    overwrite: bool,
    inputs: &[Named],
    p: &mut Prepared,
) -> Result<()> {
    if !out_dir::is_unused(out)? {
        if overwrite {
            check_clearable(out)?;
            p.removed = out_dir::clear(out, &p.lock, inputs, &legacy_of(out))?;
            p.manifest = Manifest::open(out)?;
            p.before = p.manifest.entries().clone();
        } else if !resume {
            bail!(not_empty(out));
        } else {
            check_same_run(out, record)?;
            p.fresh = false;
            if !Manifest::exists(out) {
                adopt(out, &mut p.manifest)?;
            }
            p.removed = remove_stale(out)?;
        }
    }
    let text = serde_json::to_string_pretty(record)?;
    let run_file = out.join(RUN_FILE);
    p.manifest.add(&run_file)?;
    crate::io::npy::write_atomic(&run_file, |w| {
        std::io::Write::write_all(w, text.as_bytes())?;
        Ok(())
    })
}

/// Refuses unless `out` holds the run of `record`.
fn check_same_run(out: &Path, record: &RunRecord) -> Result<()> {
    let (what, old) = match checkpoint::latest(&out.join("checkpoints"))? {
        Some((_, path)) => {
            let md = checkpoint::read_metadata(&path)?;
            let text = md.get(checkpoint::RUN_KEY).ok_or_else(|| {
                anyhow!(
                    "{} has no run record (written by an older insclr-cu), so --resume cannot check it is the same run; pass --overwrite to start over",
                    path.display()
                )
            })?;
            (path, text.clone())
        }
        None => {
            let path = out.join(RUN_FILE);
            let text = std::fs::read_to_string(&path).map_err(|_| {
                anyhow!(
                    "OUTPUT_DIR {} is not empty but has no {RUN_FILE} and no checkpoint: it is not a run of insclr-cu train; pass --overwrite to delete its contents, or choose another OUTPUT_DIR",
                    out.display()
                )
            })?;
            (path, text)
        }
    };
    let old: RunRecord = serde_json::from_str(&old)
        .with_context(|| format!("{}: unreadable run record", what.display()))?;
    let diff = record.diff(&old);
    if !diff.is_empty() {
        bail!(
            "--resume refused: {} belongs to another run; what differs (then -> now):\n  {}\npass --overwrite to start over, or choose another OUTPUT_DIR",
            what.display(),
            diff.join("\n  ")
        );
    }
    Ok(())
}

/// The files a run of an older insclr-cu (which kept no manifest) wrote in `out`, as
/// manifest entries: the names train and report give their files, and the checkpoints.
fn legacy_entries(out: &Path) -> BTreeSet<String> {
    let known = [
        RUN_FILE,
        "log.jsonl",
        "plot.svg",
        "skipped.txt",
        "model_final.safetensors",
        "report.html",
        "report.json",
        super::log::DECISIONS_FILE,
    ];
    let mut v: BTreeSet<String> = known
        .iter()
        .filter(|n| out.join(n).is_file())
        .map(|n| n.to_string())
        .collect();
    if let Ok(entries) = std::fs::read_dir(out.join("checkpoints")) {
        v.insert("checkpoints/".to_string());
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = name.starts_with("checkpoint_")
                && (name.ends_with(".safetensors") || name.ends_with(".memory.npz"));
            if ours && e.path().is_file() {
                v.insert(format!("checkpoints/{name}"));
            }
        }
    }
    v
}

/// Lists in a new manifest the files a run of an older insclr-cu wrote in `out`, once
/// `--resume` has found it to be the same run: they are this run's from now on.
fn adopt(out: &Path, manifest: &mut Manifest) -> Result<()> {
    for e in legacy_entries(out) {
        match e.strip_suffix('/') {
            Some(d) => manifest.add_dir(&out.join(d))?,
            None => manifest.add(&out.join(&e))?,
        }
    }
    Ok(())
}

/// Refuses to let `--overwrite` empty `out` when it is the root, home or current folder.
fn check_clearable(out: &Path) -> Result<()> {
    let dir = out
        .canonicalize()
        .with_context(|| format!("resolving OUTPUT_DIR {}", out.display()))?;
    let cwd = std::env::current_dir().and_then(|c| c.canonicalize()).ok();
    let home = std::env::var_os("HOME").and_then(|h| PathBuf::from(h).canonicalize().ok());
    if let Some(why) = never_clear(&dir, cwd.as_deref(), home.as_deref()) {
        bail!(
            "--overwrite refused: OUTPUT_DIR {} ({}) {why}",
            out.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Why the canonical folder `dir` must never be emptied, if it must not.
fn never_clear(dir: &Path, cwd: Option<&Path>, home: Option<&Path>) -> Option<&'static str> {
    if dir.parent().is_none() {
        Some("is the root folder")
    } else if cwd.is_some_and(|c| c.starts_with(dir)) {
        Some("is or holds the current folder")
    } else if home.is_some_and(|h| h.starts_with(dir)) {
        Some("is or holds the home folder")
    } else {
        None
    }
}

/// Removes `*.tmp` files (of a write that failed) in `out` and `out/checkpoints`, and memory
/// banks whose checkpoint does not exist (the write of the `.safetensors` after them failed).
pub fn remove_stale(out: &Path) -> Result<Vec<PathBuf>> {
    let ck = out.join("checkpoints");
    let mut removed = Vec::new();
    for dir in [out, ck.as_path()] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries {
            let p = e?.path();
            let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let orphan = dir == ck
                && checkpoint::memory_step(name)
                    .is_some_and(|s| !checkpoint::checkpoint_path(dir, s).exists());
            if (name.ends_with(".tmp") || orphan) && p.is_file() {
                std::fs::remove_file(&p)
                    .with_context(|| format!("removing stale {}", p.display()))?;
                removed.push(p);
            }
        }
    }
    if !removed.is_empty() {
        let names: Vec<String> = removed.iter().map(|p| p.display().to_string()).collect();
        eprintln!(
            "removed {} stale file(s) of a failed write: {}",
            removed.len(),
            names.join(", ")
        );
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(lr: f64, crc: &str) -> RunRecord {
        let mut config = BTreeMap::new();
        config.insert("SOLVER.BASE_LR".to_string(), Value::from(lr));
        config.insert("SOLVER.MAX_STEP".to_string(), Value::from(lr * 1e4));
        let mut inputs = BTreeMap::new();
        let f = InputFile {
            path: "pool.npz".into(),
            bytes: 10,
            crc32: crc.into(),
        };
        inputs.insert("NEIGHBOR.SRC".to_string(), f);
        RunRecord {
            config,
            inputs,
            ranks: 1,
        }
    }

    /// A record read back from its JSON is the same record: f32 keys such as the Lite models'
    /// PIXEL_MEAN (127 / 255) print with 17 digits, which a best-effort float parser reads one
    /// ulp off, and `--resume` then refused its own run.
    #[test]
    fn a_record_read_back_from_json_is_unchanged() {
        let mut cfg = Config::parse("[NEIGHBOR]\nSRC = \"pool.npz\"\n", "t.toml").unwrap();
        cfg.input.pixel_mean = [0.498_039_22; 3];
        cfg.input.pixel_std = [0.501_960_8; 3];
        let mut config = BTreeMap::new();
        flatten("", serde_json::to_value(&cfg).unwrap(), &mut config);
        let rec = RunRecord {
            config,
            inputs: BTreeMap::new(),
            ranks: 1,
        };
        let back: RunRecord = serde_json::from_str(&rec.to_json().unwrap()).unwrap();
        assert_eq!(rec.diff(&back), Vec::<String>::new());
        // ... and the config it was made from comes back whole.
        assert_eq!(back.to_config().unwrap(), cfg);
    }

    #[test]
    fn diff_names_keys_and_files_but_not_the_keys_that_may_change() {
        let a = record(1e-3, "00000001");
        assert!(a.diff(&a).is_empty());
        let b = record(1e-4, "00000002");
        let d = b.diff(&a);
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(d[0], "SOLVER.BASE_LR: 0.001 -> 0.0001");
        assert!(
            d[1].starts_with("NEIGHBOR.SRC: file pool.npz changed"),
            "{d:?}"
        );
        let back: RunRecord = serde_json::from_str(&a.to_json().unwrap()).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn root_home_and_current_folders_are_never_cleared() {
        let (cwd, home) = (Path::new("/w/repo"), Path::new("/home/me"));
        let why = |d: &str| never_clear(Path::new(d), Some(cwd), Some(home));
        assert_eq!(why("/"), Some("is the root folder"));
        assert_eq!(why("/w/repo"), Some("is or holds the current folder"));
        assert_eq!(why("/w"), Some("is or holds the current folder"));
        assert_eq!(why("/home/me"), Some("is or holds the home folder"));
        assert_eq!(why("/home"), Some("is or holds the home folder"));
        assert_eq!(why("/w/repo/out"), None);
        assert_eq!(why("/home/me/runs/a"), None);
    }
}
