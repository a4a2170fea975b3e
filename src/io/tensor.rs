//! Named host tensors as weight files hold them: what `.pth` import produces and `.safetensors`
//! export consumes. Floating tensors are kept as f32 (f16 / bf16 / f64 are converted on read,
//! the project trains in f32); integer tensors (e.g. BatchNorm's `num_batches_tracked`) as i64.

use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::fmt;

/// The element type a tensor had in the file it came from (before conversion).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceDType {
    /// float64 (read as f32).
    F64,
    /// float32.
    F32,
    /// float16 (read as f32).
    F16,
    /// bfloat16 (read as f32).
    BF16,
    /// int64.
    I64,
    /// int32 (read as i64).
    I32,
    /// int16 (read as i64).
    I16,
    /// int8 (read as i64).
    I8,
    /// uint8 (read as i64).
    U8,
    /// bool (read as i64 0 / 1).
    Bool,
}

impl SourceDType {
    /// Bytes per element in the file.
    pub fn size(self) -> usize {
        match self {
            SourceDType::F64 | SourceDType::I64 => 8,
            SourceDType::F32 | SourceDType::I32 => 4,
            SourceDType::F16 | SourceDType::BF16 | SourceDType::I16 => 2,
            SourceDType::I8 | SourceDType::U8 | SourceDType::Bool => 1,
        }
    }

    /// True for floating-point types (read as f32).
    pub fn is_float(self) -> bool {
        matches!(
            self,
            SourceDType::F64 | SourceDType::F32 | SourceDType::F16 | SourceDType::BF16
        )
    }

    /// Decodes little-endian elements: floats to f32, integers to i64.
    pub fn decode(self, raw: &[u8]) -> TensorData {
        use SourceDType::*;
        macro_rules! conv {
            ($n:expr, $f:expr) => {
                raw.chunks_exact($n)
                    .map(|c| $f(c.try_into().expect("chunks_exact yields whole elements")))
                    .collect()
            };
        }
        match self {
            F32 => TensorData::F32(conv!(4, f32::from_le_bytes)),
            F64 => TensorData::F32(conv!(8, |b| f64::from_le_bytes(b) as f32)),
            F16 => TensorData::F32(conv!(2, |b| half::f16::from_le_bytes(b).to_f32())),
            BF16 => TensorData::F32(conv!(2, |b| half::bf16::from_le_bytes(b).to_f32())),
            I64 => TensorData::I64(conv!(8, i64::from_le_bytes)),
            I32 => TensorData::I64(conv!(4, |b| i32::from_le_bytes(b) as i64)),
            I16 => TensorData::I64(conv!(2, |b| i16::from_le_bytes(b) as i64)),
            I8 => TensorData::I64(raw.iter().map(|&b| b as i8 as i64).collect()),
            U8 | Bool => TensorData::I64(raw.iter().map(|&b| b as i64).collect()),
        }
    }
}

impl fmt::Display for SourceDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            SourceDType::F64 => "float64",
            SourceDType::F32 => "float32",
            SourceDType::F16 => "float16",
            SourceDType::BF16 => "bfloat16",
            SourceDType::I64 => "int64",
            SourceDType::I32 => "int32",
            SourceDType::I16 => "int16",
            SourceDType::I8 => "int8",
            SourceDType::U8 => "uint8",
            SourceDType::Bool => "bool",
        };
        f.pad(s)
    }
}

/// The values of a tensor, contiguous and row-major.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// Floating values.
    F32(Vec<f32>),
    /// Integer values.
    I64(Vec<i64>),
}

impl TensorData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
        }
    }

    /// True when there is no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Gathers `index` (element positions) into a new tensor of the same kind.
    pub fn gather(&self, index: &[usize]) -> TensorData {
        match self {
            TensorData::F32(v) => TensorData::F32(index.iter().map(|&i| v[i]).collect()),
            TensorData::I64(v) => TensorData::I64(index.iter().map(|&i| v[i]).collect()),
        }
    }
}

/// A named, contiguous tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Name as in the file (e.g. `layer1.0.conv1.weight`).
    pub name: String,
    /// Dimensions, outermost first; empty for a scalar.
    pub shape: Vec<usize>,
    /// Contiguous row-major values.
    pub data: TensorData,
    /// The element type in the file it was read from.
    pub source: SourceDType,
}

impl Tensor {
    /// A tensor; errors when `data` does not hold the product of `shape`.
    pub fn new(
        name: impl Into<String>,
        shape: Vec<usize>,
        data: TensorData,
        source: SourceDType,
    ) -> Result<Self> {
        let name = name.into();
        let want = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if want != Some(data.len()) {
            let want = want.map_or("more than usize::MAX".into(), |w| w.to_string());
            bail!(
                "tensor {name}: shape {shape:?} needs {want} elements, data has {}",
                data.len()
            );
        }
        Ok(Tensor {
            name,
            shape,
            data,
            source,
        })
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The f32 values, if this is a floating tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            TensorData::I64(_) => None,
        }
    }
}

/// Counts per source dtype, for summaries: (tensors, elements).
pub fn dtype_summary(tensors: &[Tensor]) -> BTreeMap<SourceDType, (usize, usize)> {
    let mut m = BTreeMap::new();
    for t in tensors {
        let e = m.entry(t.source).or_insert((0, 0));
        e.0 += 1;
        e.1 += t.numel();
    }
    m
}
