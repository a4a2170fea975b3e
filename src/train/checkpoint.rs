//! Resumable checkpoints of a stage: `checkpoint_<step:07>.safetensors` holds every model tensor
//! under its torchvision name (loadable by torch as a state dict, like the original's
//! `model_%07d.pth`), the optimiser state as `optimizer.<exp_avg|exp_avg_sq|momentum_buffer>.<name>`,
//! and in its metadata the step, the seed and Adam's step count. The memory banks go beside it
//! in `checkpoint_<step:07>.memory.npz` (rows + write counters), written first, so a
//! `.safetensors` that exists always has its banks. Both files are written atomically, and
//! when the `.safetensors` cannot be written its banks are removed again (a full disk must
//! not fill up further with banks nobody can load). The metadata also keeps the run record
//! (see [`super::run_dir`]) under [`RUN_KEY`], so `--resume` can tell whose checkpoint it is.
//!
//! The random state needs no tensor: every random stream of step `t` is derived from
//! `(seed, t)` (see [`super::streams`]), and the sampler is replayed, so `(seed, step)`
//! restores it.

use super::optim::{Optimizer, Rule};
use crate::backend::{Backend, DType};
use crate::io::npy::{self, Array, NpzEntry};
use crate::io::tensor::{SourceDType, Tensor, TensorData};
use crate::memory::IndexedBank;
use crate::nn::weights::{export, load_into, LoadOptions};
use crate::nn::Module;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A `.safetensors` file's metadata, read from its header only (checkpoints are large).
pub use crate::io::safetensors::read_metadata;

const PREFIX: &str = "checkpoint_";
const OPT: &str = "optimizer.";

/// Metadata key of the run record (JSON of [`super::run_dir::RunRecord`]).
pub const RUN_KEY: &str = "insclr.run";

/// The checkpoint file of `step` in `dir`.
pub fn checkpoint_path(dir: &Path, step: usize) -> PathBuf {
    dir.join(format!("{PREFIX}{step:07}.safetensors"))
}

/// The memory-bank file beside a checkpoint.
pub fn memory_path(dir: &Path, step: usize) -> PathBuf {
    dir.join(format!("{PREFIX}{step:07}.memory.npz"))
}

/// The step of a memory-bank file name (`checkpoint_0000012.memory.npz` -> 12).
pub fn memory_step(name: &str) -> Option<usize> {
    name.strip_prefix(PREFIX)?
        .strip_suffix(".memory.npz")?
        .parse()
        .ok()
}

/// What a checkpoint restores besides the model and optimiser.
#[derive(Debug)]
pub struct Restored {
    /// Steps completed.
    pub step: usize,
    /// The run's seed.
    pub seed: u64,
    /// Memory banks by name (`da`, `noda`).
    pub banks: Vec<(String, IndexedBank)>,
}

fn f32_tensor(name: String, data: &[f32]) -> Result<Tensor> {
    Tensor::new(
        name,
        vec![data.len()],
        TensorData::F32(data.to_vec()),
        SourceDType::F32,
    )
}

/// Writes the checkpoint of `step` (and its banks) into `dir`, with the run record `run` and
/// the entries of `model_meta` (what the model is, [`crate::nn::meta`]) in its metadata;
/// returns the `.safetensors` path.
#[allow(clippy::too_many_arguments)]
pub fn save(
    dir: &Path,
    step: usize,
    seed: u64,
    run: Option<&str>,
    model_meta: &HashMap<String, String>,
    be: &dyn Backend,
    model: &dyn Module,
    opt: &Optimizer,
    banks: &[(&str, &IndexedBank)],
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut arrays_f = Vec::new();
    let mut arrays_i = Vec::new();
    for (name, b) in banks {
        let (rows, counter) = b.parts(be)?;
        arrays_f.push((name.to_string(), Array::new(vec![b.len(), b.dim()], rows)?));
        arrays_i.push((
            format!("{name}_counter"),
            Array::new(vec![b.len()], counter.iter().map(|&c| c as i64).collect())?,
        ));
    }
    let mut entries: Vec<NpzEntry> = arrays_f
        .iter()
        .map(|(n, a)| NpzEntry::F32(n.as_str(), a))
        .collect();
    entries.extend(arrays_i.iter().map(|(n, a)| NpzEntry::I64(n.as_str(), a)));
    npy::write_npz(&memory_path(dir, step), &entries)?;

    let mut tensors = export(model, be)?;
    let (m_name, v_name) = match opt.rule {
        Rule::Adam => ("exp_avg", Some("exp_avg_sq")),
        Rule::Sgd { .. } => ("momentum_buffer", None),
    };
    let (m, v) = (be.download::<f32>(&opt.m)?, be.download::<f32>(&opt.v)?);
    for s in &opt.slots {
        let r = s.offset..s.offset + s.len;
        tensors.push(f32_tensor(
            format!("{OPT}{m_name}.{}", s.name),
            &m[r.clone()],
        )?);
        if let Some(v_name) = v_name {
            tensors.push(f32_tensor(format!("{OPT}{v_name}.{}", s.name), &v[r])?);
        }
    }
    let mut meta = model_meta.clone();
    meta.insert("insclr.step".to_string(), step.to_string());
    meta.insert("insclr.seed".to_string(), seed.to_string());
    meta.insert("insclr.optimizer_t".to_string(), opt.t.to_string());
    meta.insert(
        "insclr.banks".to_string(),
        banks.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(","),
    );
    if let Some(run) = run {
        meta.insert(RUN_KEY.to_string(), run.to_string());
    }
    let path = checkpoint_path(dir, step);
    if let Err(e) = crate::io::safetensors::write(&path, &tensors, Some(meta)) {
        // Banks without their checkpoint are never loaded; a checkpoint of this step written
        // before (a run resumed from an earlier one) still owns them.
        if !path.is_file() {
            let _ = std::fs::remove_file(memory_path(dir, step));
        }
        return Err(e);
    }
    Ok(path)
}

/// The checkpoint in `dir` with the largest step, if any.
pub fn latest(dir: &Path) -> Result<Option<(usize, PathBuf)>> {
    if !dir.exists() {
        return Ok(None);
    }
    let mut best: Option<(usize, PathBuf)> = None;
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = e?.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(step) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_suffix(".safetensors"))
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        if best.as_ref().is_none_or(|(b, _)| step > *b) {
            best = Some((step, p));
        }
    }
    Ok(best)
}

fn meta<'a>(m: &'a HashMap<String, String>, key: &str, path: &Path) -> Result<&'a str> {
    m.get(key).map(String::as_str).ok_or_else(|| {
        anyhow!(
            "{}: no '{key}' in the metadata; not a training checkpoint of insclr-cu train (a model-only file cannot be resumed)",
            path.display()
        )
    })
}

/// Restores `model` and `opt` from a checkpoint and returns the step, seed and banks (storing
/// `bank_dtype`; the file holds them as f32, which is exact for bf16 banks).
pub fn load(
    path: &Path,
    be: &dyn Backend,
    model: &mut dyn Module,
    opt: &mut Optimizer,
    bank_dtype: DType,
) -> Result<Restored> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, st) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow!("{}: not a safetensors file: {e}", path.display()))?;
    let md = st.metadata().clone().unwrap_or_default();
    let parse = |k: &str| -> Result<u64> {
        let v = meta(&md, k, path)?;
        v.parse::<u64>()
            .map_err(|_| anyhow!("{}: metadata {k} = {v:?} is not a number", path.display()))
    };
    let step = parse("insclr.step")? as usize;
    let seed = parse("insclr.seed")?;
    let t = parse("insclr.optimizer_t")?;
    let bank_names: Vec<String> = meta(&md, "insclr.banks", path)?
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();

    let tensors = crate::io::safetensors::from_bytes(&bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    let (opt_t, model_t): (Vec<Tensor>, Vec<Tensor>) =
        tensors.into_iter().partition(|t| t.name.starts_with(OPT));
    load_into(model, be, &model_t, &LoadOptions::strict())
        .with_context(|| format!("loading the model from {}", path.display()))?;
    let by_name: HashMap<&str, &Tensor> = opt_t.iter().map(|t| (t.name.as_str(), t)).collect();
    let (m_name, v_name) = match opt.rule {
        Rule::Adam => ("exp_avg", Some("exp_avg_sq")),
        Rule::Sgd { .. } => ("momentum_buffer", None),
    };
    let get = |kind: &str, name: &str, len: usize| -> Result<Vec<f32>> {
        let key = format!("{OPT}{kind}.{name}");
        let t = by_name.get(key.as_str()).ok_or_else(|| {
            anyhow!(
                "{}: no optimiser tensor {key}; the checkpoint was written with another SOLVER.NAME or model",
                path.display()
            )
        })?;
        match t.as_f32() {
            Some(v) if v.len() == len => Ok(v.to_vec()),
            _ => bail!("{}: {key} does not hold {len} floats", path.display()),
        }
    };
    let (mut m, mut v) = (vec![0f32; opt.m.len()], vec![0f32; opt.v.len()]);
    for s in &opt.slots {
        let r = s.offset..s.offset + s.len;
        m[r.clone()].copy_from_slice(&get(m_name, &s.name, s.len)?);
        if let Some(v_name) = v_name {
            v[r].copy_from_slice(&get(v_name, &s.name, s.len)?);
        }
    }
    be.upload_into(&m, &mut opt.m)?;
    be.upload_into(&v, &mut opt.v)?;
    opt.t = t;

    let mut banks = Vec::new();
    if !bank_names.is_empty() {
        let mp = path
            .parent()
            .map(|d| memory_path(d, step))
            .ok_or_else(|| anyhow!("{} has no folder", path.display()))?;
        for name in bank_names {
            let rows = npy::read_npz::<f32>(&mp, &name)?;
            let (_, d) = rows.dims2(&format!("{}[{name}]", mp.display()))?;
            let counter = npy::read_npz::<i64>(&mp, &format!("{name}_counter"))?;
            let counter = counter.data.iter().map(|&c| c.max(0) as u32).collect();
            let bank = IndexedBank::from_parts(be, d, &rows.data, counter, bank_dtype)
                .with_context(|| format!("{}[{name}]", mp.display()))?;
            banks.push((name, bank));
        }
    }
    Ok(Restored { step, seed, banks })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Param, ParamKind};
    use crate::train::config::Solver;

    struct Toy(Vec<Param>);
    impl Module for Toy {
        fn params(&self) -> Vec<&Param> {
            self.0.iter().collect()
        }
        fn params_mut(&mut self) -> Vec<&mut Param> {
            self.0.iter_mut().collect()
        }
    }

    fn toy(be: &dyn crate::backend::Backend, w: &[f32]) -> Toy {
        Toy(vec![
            Param::new(be, "conv1.weight", &[2, 2], ParamKind::Weight, w).unwrap(),
            Param::new(be, "bn1.bias", &[2], ParamKind::BnBias, &[0.1, 0.2]).unwrap(),
            Param::new(
                be,
                "bn1.running_mean",
                &[2],
                ParamKind::Running,
                &[5.0, 6.0],
            )
            .unwrap(),
        ])
    }

    fn values(m: &Toy) -> Vec<Vec<f32>> {
        m.0.iter()
            .map(|p| crate::backend::cpu().download::<f32>(&p.value).unwrap())
            .collect()
    }

    #[test]
    fn round_trip_restores_model_optimiser_banks_and_step() {
        let be = crate::backend::cpu();
        let dir = std::env::temp_dir().join(format!("insclr-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut m = toy(be, &[1.0, 2.0, 3.0, 4.0]);
        let cfg = Solver {
            name: "adam".into(),
            ..Solver::default()
        };
        let mut opt = Optimizer::new(&cfg, be, &mut m).unwrap();
        for p in m.0.iter_mut().filter(|p| p.kind.trainable()) {
            p.grad = Some(be.upload(&vec![0.5; p.numel()]).unwrap());
        }
        opt.step(be, &mut m, 1.0).unwrap();
        let mut bank = IndexedBank::new(be, 3, 2).unwrap();
        let rows = be.upload(&[1.0f32, 0.0, 0.0, 1.0, 0.6, 0.8]).unwrap();
        bank.write(be, &[2, 0, 2], &rows).unwrap();
        save(
            &dir,
            7,
            42,
            None,
            &HashMap::new(),
            be,
            &m,
            &opt,
            &[("da", &bank)],
        )
        .unwrap();
        save(
            &dir,
            12,
            42,
            Some("{}"),
            &HashMap::new(),
            be,
            &m,
            &opt,
            &[("da", &bank)],
        )
        .unwrap();
        std::fs::write(dir.join("checkpoint_x.safetensors"), b"junk").unwrap();
        let (step, path) = latest(&dir).unwrap().unwrap();
        assert_eq!((step, path.clone()), (12, checkpoint_path(&dir, 12)));

        let mut fresh = toy(be, &[0.0; 4]);
        let mut opt2 = Optimizer::new(&cfg, be, &mut fresh).unwrap();
        let r = load(&path, be, &mut fresh, &mut opt2, DType::F32).unwrap();
        assert_eq!(read_metadata(&path).unwrap()[RUN_KEY], "{}");
        assert_eq!(memory_step("checkpoint_0000012.memory.npz"), Some(12));
        assert_eq!((r.step, r.seed), (12, 42));
        assert_eq!(values(&fresh), values(&m));
        assert_eq!(opt2.t, opt.t);
        assert_eq!(opt2.slots, opt.slots);
        assert_eq!(
            be.download::<f32>(&opt2.m).unwrap(),
            be.download::<f32>(&opt.m).unwrap()
        );
        assert_eq!(
            be.download::<f32>(&opt2.v).unwrap(),
            be.download::<f32>(&opt.v).unwrap()
        );
        assert_eq!(r.banks.len(), 1);
        let b = &r.banks[0].1;
        assert_eq!(b.parts(be).unwrap(), bank.parts(be).unwrap());
        assert_eq!((b.counter(2), b.counter(1)), (2, 0));

        // A model-only export (model_final) cannot be resumed, and says why.
        let only = dir.join("checkpoint_0000099.safetensors");
        crate::io::safetensors::write(&only, &export(&m, be).unwrap(), None).unwrap();
        let e = format!(
            "{:#}",
            load(&only, be, &mut fresh, &mut opt2, DType::F32).unwrap_err()
        );
        assert!(
            e.contains("insclr.step") && e.contains("cannot be resumed"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A checkpoint whose `.safetensors` cannot be written leaves neither its banks nor a
    /// temporary file behind (the rename fails: a non-empty folder has the checkpoint's name).
    #[test]
    fn failed_save_leaves_no_banks_and_no_temporary_file() {
        let be = crate::backend::cpu();
        let dir = std::env::temp_dir().join(format!("insclr-ckpt-fail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let blocker = checkpoint_path(&dir, 3);
        std::fs::create_dir_all(blocker.join("x")).unwrap();
        let mut m = toy(be, &[1.0, 2.0, 3.0, 4.0]);
        let opt = Optimizer::new(&Solver::default(), be, &mut m).unwrap();
        let bank = IndexedBank::new(be, 3, 2).unwrap();
        assert!(save(
            &dir,
            3,
            1,
            None,
            &HashMap::new(),
            be,
            &m,
            &opt,
            &[("da", &bank)]
        )
        .is_err());
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["checkpoint_0000003.safetensors"], "only the blocker");
        std::fs::remove_dir_all(&dir).ok();
    }
}
