//! A run directory belongs to one run. `OUTPUT_DIR/run.json` and the metadata of every
//! checkpoint keep a [`RunRecord`]: the resolved config (every key, flattened to
//! `SECTION.KEY`) and the size and CRC-32 of each file the config makes training read.
//! `--resume` continues only when the record of the latest checkpoint (or `run.json` when
//! there is none yet) matches today's; a fresh run needs an empty OUTPUT_DIR, or
//! `--overwrite`, which empties it. When a run starts it also removes the debris of a failed
//! write: `*.tmp` files and memory banks whose checkpoint was never written.

use super::checkpoint;
use super::config::Config;
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
        Ok(RunRecord { config, inputs })
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

/// True when `dir` does not exist or holds nothing.
fn is_empty(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut it) => Ok(it.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("listing OUTPUT_DIR {}", dir.display())),
    }
}

/// Makes `out` ready for the run of `record` (see the module doc): refuses a non-empty folder
/// for a fresh run, another run's folder for `resume`, empties it for `overwrite`, removes
/// stale files, creates it and writes `run.json`. Returns the stale files removed.
pub fn prepare(
    out: &Path,
    record: &RunRecord,
    resume: bool,
    overwrite: bool,
) -> Result<Vec<PathBuf>> {
    if resume && overwrite {
        bail!("--resume continues the run in OUTPUT_DIR and --overwrite deletes it: pass one");
    }
    let mut removed = Vec::new();
    if !is_empty(out)? {
        if overwrite {
            clear(out, record)?;
        } else if !resume {
            bail!(
                "OUTPUT_DIR {} is not empty: pass --resume to continue the run in it, or --overwrite to delete its contents and start over",
                out.display()
            );
        } else {
            check_same_run(out, record)?;
            removed = remove_stale(out)?;
        }
    }
    std::fs::create_dir_all(out)
        .with_context(|| format!("creating OUTPUT_DIR {}", out.display()))?;
    let text = serde_json::to_string_pretty(record)?;
    crate::io::npy::write_atomic(&out.join(RUN_FILE), |w| {
        std::io::Write::write_all(w, text.as_bytes())?;
        Ok(())
    })?;
    Ok(removed)
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

/// Deletes what is inside `out` (not `out` itself), after refusing the folders whose loss is
/// never meant: `/`, one holding the current folder or the home folder, one holding an input.
fn clear(out: &Path, record: &RunRecord) -> Result<()> {
    let inputs: Vec<(&str, &str)> = record
        .inputs
        .iter()
        .map(|(key, f)| (key.as_str(), f.path.trim_end_matches(" (image names)")))
        .collect();
    let dir = check_clearable(out, &inputs)?;
    let mut n = 0;
    for e in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = e?.path();
        // symlink_metadata: a link is removed, never followed.
        let is_dir = std::fs::symlink_metadata(&p)?.is_dir();
        let r = if is_dir {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.with_context(|| format!("--overwrite: removing {}", p.display()))?;
        n += 1;
    }
    eprintln!(
        "--overwrite: removed the {n} entries of OUTPUT_DIR {}",
        out.display()
    );
    Ok(())
}

/// Refuses to let `--overwrite` empty `out` when it is the root, home or current folder or
/// holds one of `inputs` (`(what, path)`: files the run reads); returns its canonical path.
pub fn check_clearable(out: &Path, inputs: &[(&str, &str)]) -> Result<PathBuf> {
    let dir = out
        .canonicalize()
        .with_context(|| format!("resolving OUTPUT_DIR {}", out.display()))?;
    let refuse = |why: &str| -> Result<PathBuf> {
        bail!(
            "--overwrite refused: OUTPUT_DIR {} ({}) {why}",
            out.display(),
            dir.display()
        )
    };
    let cwd = std::env::current_dir().and_then(|c| c.canonicalize()).ok();
    let home = std::env::var_os("HOME").and_then(|h| PathBuf::from(h).canonicalize().ok());
    if let Some(why) = never_clear(&dir, cwd.as_deref(), home.as_deref()) {
        return refuse(why);
    }
    for (what, p) in inputs {
        if Path::new(p)
            .canonicalize()
            .is_ok_and(|p| p.starts_with(&dir))
        {
            return refuse(&format!("holds {what} {p}, which the run reads"));
        }
    }
    Ok(dir)
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
        RunRecord { config, inputs }
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
