//! Moving named tensors (from `.pth` / `.safetensors`, see [`crate::io`]) into a model's
//! parameters and back out, with torchvision's `load_state_dict` rules: a leading `module.`
//! (DataParallel) is stripped when the first key has it, `num_batches_tracked` is ignored
//! (our BatchNorm uses a fixed momentum, so the count is never read), chosen prefixes such as
//! the ImageNet classifier (`fc.`, `_fc.`) can be skipped, and every missing, unexpected and
//! mis-shaped tensor is named.

use super::{Module, Param};
use crate::backend::Backend;
use crate::io::tensor::{SourceDType, Tensor, TensorData};
use anyhow::{bail, Result};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

/// How strictly to match file tensors to model parameters.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// When true, a missing or unexpected tensor is an error (torch's `strict=True`); when
    /// false they are only reported (`strict=False`). A shape mismatch is always an error,
    /// as in torch.
    pub strict: bool,
    /// File tensors whose name (after `module.` stripping) starts with one of these are
    /// skipped, e.g. `["fc.", "_fc."]` to load an ImageNet backbone without its classifier.
    pub skip_prefixes: Vec<String>,
}

impl LoadOptions {
    /// Every tensor must match (torch `strict=True`).
    pub fn strict() -> Self {
        LoadOptions {
            strict: true,
            skip_prefixes: Vec::new(),
        }
    }

    /// InsCLR's ImageNet initialisation: `strict=False`, the classifier (`fc.` torchvision,
    /// `_fc.` EfficientNet) skipped.
    pub fn backbone() -> Self {
        LoadOptions {
            strict: false,
            skip_prefixes: vec!["fc.".into(), "_fc.".into()],
        }
    }
}

/// What [`load_into`] did, tensor by tensor.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    /// True when a leading `module.` was stripped from the file's names.
    pub stripped_module_prefix: bool,
    /// Model parameters filled from the file.
    pub loaded: Vec<String>,
    /// Model parameters the file does not have (left as they were).
    pub missing: Vec<String>,
    /// File tensors the model does not have.
    pub unexpected: Vec<String>,
    /// (name, model shape, file shape) of tensors present in both with different shapes.
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// File tensors skipped on purpose (`num_batches_tracked`, skipped prefixes).
    pub skipped: Vec<String>,
}

impl LoadReport {
    /// True when every model parameter was loaded and every file tensor was used or skipped.
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

/// The first few names and a count: a model of the wrong architecture misses hundreds of
/// tensors, and the first names say enough.
fn list(f: &mut fmt::Formatter<'_>, what: &str, names: &[String]) -> fmt::Result {
    const SHOWN: usize = 5;
    if !names.is_empty() {
        write!(f, "\n  {what} ({}): ", names.len())?;
        write!(f, "{}", names[..names.len().min(SHOWN)].join(", "))?;
        if names.len() > SHOWN {
            write!(f, ", ... and {} more", names.len() - SHOWN)?;
        }
    }
    Ok(())
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "loaded {} tensors, skipped {}{}",
            self.loaded.len(),
            self.skipped.len(),
            if self.stripped_module_prefix {
                " (stripped 'module.')"
            } else {
                ""
            }
        )?;
        list(f, "missing from the file", &self.missing)?;
        list(f, "unexpected in the file", &self.unexpected)?;
        let mm: Vec<String> = self
            .mismatched
            .iter()
            .map(|(n, m, t)| format!("{n} (model {m:?}, file {t:?})"))
            .collect();
        list(f, "shape mismatch", &mm)
    }
}

/// Loads `tensors` into `model`'s parameters by name (see the module doc for the rules).
/// Nothing is written unless the load succeeds: an error leaves the model untouched.
pub fn load_into(
    model: &mut dyn Module,
    be: &dyn Backend,
    tensors: &[Tensor],
    opts: &LoadOptions,
) -> Result<LoadReport> {
    let mut report = LoadReport {
        stripped_module_prefix: tensors
            .first()
            .is_some_and(|t| t.name.starts_with("module.")),
        ..Default::default()
    };
    let mut by_name: HashMap<&str, &Tensor> = HashMap::new();
    for t in tensors {
        let name = match report.stripped_module_prefix {
            true => t.name.strip_prefix("module.").unwrap_or(&t.name),
            false => &t.name,
        };
        if name.ends_with("num_batches_tracked")
            || opts.skip_prefixes.iter().any(|p| name.starts_with(p))
        {
            report.skipped.push(name.to_string());
            continue;
        }
        if by_name.insert(name, t).is_some() {
            bail!("tensor {name} appears twice in the file");
        }
    }
    let mut params = model.params_mut();
    let model_names: HashSet<String> = params.iter().map(|p| p.name.clone()).collect();
    let mut fills: Vec<(usize, &[f32])> = Vec::new();
    for (i, p) in params.iter().enumerate() {
        let Some(t) = by_name.get(p.name.as_str()) else {
            report.missing.push(p.name.clone());
            continue;
        };
        if t.shape != p.shape {
            report
                .mismatched
                .push((p.name.clone(), p.shape.clone(), t.shape.clone()));
            continue;
        }
        match &t.data {
            TensorData::F32(v) => fills.push((i, v)),
            TensorData::I64(_) => bail!(
                "tensor {} is {} in the file; the model wants floats",
                p.name,
                t.source
            ),
        }
    }
    // File order, as the file lists them.
    for t in tensors {
        let name = match report.stripped_module_prefix {
            true => t.name.strip_prefix("module.").unwrap_or(&t.name),
            false => &t.name,
        };
        if by_name.contains_key(name) && !model_names.contains(name) {
            report.unexpected.push(name.to_string());
        }
    }
    if !report.mismatched.is_empty()
        || (opts.strict && !(report.missing.is_empty() && report.unexpected.is_empty()))
    {
        bail!("the weights do not fit the model: {report}");
    }
    for (i, data) in fills {
        let p: &mut Param = params[i];
        // Into the existing buffer: a parameter may be a view of the optimiser's arena.
        be.upload_into(data, &mut p.value)?;
        report.loaded.push(p.name.clone());
    }
    Ok(report)
}

/// Reads a weight file by extension: `.safetensors`, else PyTorch `.pth` / `.pt`.
pub fn read_any(path: &Path) -> Result<Vec<Tensor>> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => crate::io::safetensors::read(path),
        _ => crate::io::pth::read(path),
    }
}

/// The model's parameters and buffers as named host tensors, for a `.safetensors` checkpoint.
/// A `num_batches_tracked` = 0 is added beside each BatchNorm's `running_mean`, so that
/// torchvision's strict `load_state_dict` accepts the file (we do not count batches; torch
/// reads the count only when momentum is None, which InsCLR never uses).
pub fn export(model: &dyn Module, be: &dyn Backend) -> Result<Vec<Tensor>> {
    let mut out = Vec::new();
    for p in model.params() {
        let v = be.download::<f32>(&p.value)?;
        out.push(Tensor::new(
            p.name.clone(),
            p.shape.clone(),
            TensorData::F32(v),
            SourceDType::F32,
        )?);
        if let Some(bn) = p.name.strip_suffix(".running_mean") {
            out.push(Tensor::new(
                format!("{bn}.num_batches_tracked"),
                vec![],
                TensorData::I64(vec![0]),
                SourceDType::I64,
            )?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ParamKind;

    /// A conv + BN + classifier, with torchvision names.
    struct Toy {
        p: Vec<Param>,
    }

    fn param(name: &str, shape: &[usize], kind: ParamKind, fill: f32) -> Param {
        let n = shape.iter().product();
        Param {
            name: name.into(),
            shape: shape.to_vec(),
            kind,
            value: crate::backend::cpu().upload(&vec![fill; n]).unwrap(),
            grad: None,
        }
    }

    impl Toy {
        fn new(fill: f32) -> Self {
            Toy {
                p: vec![
                    param("conv1.weight", &[2, 1, 3], ParamKind::Weight, fill),
                    param("bn1.weight", &[2], ParamKind::BnWeight, fill),
                    param("bn1.bias", &[2], ParamKind::BnBias, fill),
                    param("bn1.running_mean", &[2], ParamKind::Running, fill),
                    param("bn1.running_var", &[2], ParamKind::Running, fill),
                    param("fc.weight", &[3, 2], ParamKind::Weight, fill),
                ],
            }
        }
        fn values(&self) -> Vec<Vec<f32>> {
            self.p
                .iter()
                .map(|p| crate::backend::cpu().download::<f32>(&p.value).unwrap())
                .collect()
        }
    }

    impl Module for Toy {
        fn params(&self) -> Vec<&Param> {
            self.p.iter().collect()
        }
        fn params_mut(&mut self) -> Vec<&mut Param> {
            self.p.iter_mut().collect()
        }
    }

    fn counting(model: &Toy) -> Vec<Tensor> {
        let mut k = 0.0;
        model
            .p
            .iter()
            .map(|p| {
                let v: Vec<f32> = (0..p.numel())
                    .map(|_| {
                        k += 1.0;
                        k
                    })
                    .collect();
                Tensor::new(
                    &p.name,
                    p.shape.clone(),
                    TensorData::F32(v),
                    SourceDType::F32,
                )
                .unwrap()
            })
            .collect()
    }

    #[test]
    fn exact_load_with_module_prefix_and_num_batches_tracked() {
        let be = crate::backend::cpu();
        let mut m = Toy::new(0.0);
        let mut t = counting(&m);
        for x in &mut t {
            x.name = format!("module.{}", x.name);
        }
        t.push(
            Tensor::new(
                "module.bn1.num_batches_tracked",
                vec![],
                TensorData::I64(vec![5]),
                SourceDType::I64,
            )
            .unwrap(),
        );
        let r = load_into(&mut m, be, &t, &LoadOptions::strict()).unwrap();
        assert!(r.is_exact() && r.stripped_module_prefix, "{r}");
        assert_eq!(r.loaded.len(), 6);
        assert_eq!(r.skipped, ["bn1.num_batches_tracked"]);
        let want: Vec<Vec<f32>> = t[..6]
            .iter()
            .map(|t| t.as_f32().unwrap().to_vec())
            .collect();
        assert_eq!(m.values(), want);
    }

    #[test]
    fn every_missing_extra_and_misshaped_tensor_is_named() {
        let be = crate::backend::cpu();
        let mut m = Toy::new(0.25);
        let mut t = counting(&m);
        t.remove(1); // bn1.weight missing
        t.remove(1); // bn1.bias missing
        t[0].shape = vec![2, 3, 1]; // conv1.weight mis-shaped
        t.push(
            Tensor::new(
                "layer9.extra",
                vec![1],
                TensorData::F32(vec![1.0]),
                SourceDType::F32,
            )
            .unwrap(),
        );
        let before = m.values();
        let e = load_into(&mut m, be, &t, &LoadOptions::strict())
            .unwrap_err()
            .to_string();
        for name in ["bn1.weight", "bn1.bias", "layer9.extra", "conv1.weight"] {
            assert!(e.contains(name), "{name} not named in: {e}");
        }
        assert!(e.contains("[2, 1, 3]") && e.contains("[2, 3, 1]"), "{e}");
        assert_eq!(m.values(), before, "a failed load must not touch the model");

        // strict=False still refuses a shape mismatch...
        assert!(load_into(&mut m, be, &t, &LoadOptions::backbone()).is_err());
        // ...and reports, not fails, missing / unexpected ones.
        t[0].shape = vec![2, 1, 3];
        let r = load_into(&mut m, be, &t, &LoadOptions::backbone()).unwrap();
        assert_eq!(r.missing, ["bn1.weight", "bn1.bias", "fc.weight"]);
        assert_eq!(r.unexpected, ["layer9.extra"]);
        assert_eq!(r.skipped, ["fc.weight"]);
        assert_eq!(r.loaded.len(), 3);
        assert_eq!(
            m.values()[1],
            before[1],
            "missing tensors are left as they were"
        );
        assert_eq!(m.values()[0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn integer_tensor_for_a_float_param_is_an_error() {
        let be = crate::backend::cpu();
        let mut m = Toy::new(0.0);
        let mut t = counting(&m);
        t[1].data = TensorData::I64(vec![1, 2]);
        t[1].source = SourceDType::I64;
        let e = load_into(&mut m, be, &t, &LoadOptions::strict())
            .unwrap_err()
            .to_string();
        assert!(e.contains("bn1.weight") && e.contains("int64"), "{e}");
    }

    #[test]
    fn export_then_safetensors_then_load_round_trips() {
        let be = crate::backend::cpu();
        let mut a = Toy::new(0.0);
        let t = counting(&a);
        load_into(&mut a, be, &t, &LoadOptions::strict()).unwrap();
        let out = export(&a, be).unwrap();
        assert_eq!(out.len(), 7);
        assert!(out.iter().any(|t| t.name == "bn1.num_batches_tracked"));
        let bytes = crate::io::safetensors::to_bytes(&out, None).unwrap();
        let back = crate::io::safetensors::from_bytes(&bytes).unwrap();
        let mut b = Toy::new(-1.0);
        let r = load_into(&mut b, be, &back, &LoadOptions::strict()).unwrap();
        assert!(r.is_exact(), "{r}");
        assert_eq!(a.values(), b.values());
    }

    #[test]
    fn fixture_pth_loads_into_a_matching_model() {
        // The fixture's names are module.conv.weight [3,2], module.conv.bias [2], ...
        let be = crate::backend::cpu();
        let t = crate::io::pth::read_bytes(crate::io::pickle_fixtures::LEGACY_PTH).unwrap();
        let mut m = Toy {
            p: vec![
                param("conv.weight", &[3, 2], ParamKind::Weight, 0.0),
                param("conv.bias", &[2], ParamKind::Bias, 0.0),
                param("bn.running_mean", &[3], ParamKind::Running, 0.0),
                param("bn.running_var", &[2, 2], ParamKind::Running, 0.0),
            ],
        };
        let r = load_into(&mut m, be, &t, &LoadOptions::default()).unwrap();
        assert!(r.stripped_module_prefix);
        assert_eq!(r.unexpected, ["fc.weight"]);
        assert_eq!(r.skipped, ["bn.num_batches_tracked"]);
        assert!(r.missing.is_empty());
        assert_eq!(m.values()[0], [0., 3., 1., 4., 2., 5.]);
        assert_eq!(m.values()[3], [1.0, -2.0, 0.5, 65504.0]);
    }
}
