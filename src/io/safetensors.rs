//! `.safetensors` checkpoints: f32 and i64 tensors under their original (torchvision) names,
//! so that `safetensors.torch.load_file` + `load_state_dict` work on the Python side. The
//! format stores no order: tensors come back sorted by their position in the file.

use super::tensor::{SourceDType, Tensor, TensorData};
use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// Serialises `tensors` to safetensors bytes; `metadata` goes to the header's `__metadata__`.
pub fn to_bytes(tensors: &[Tensor], metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    let raw: Vec<(&str, Dtype, &[usize], &[u8])> = tensors
        .iter()
        .map(|t| match &t.data {
            TensorData::F32(v) => (
                t.name.as_str(),
                Dtype::F32,
                &t.shape[..],
                bytemuck::cast_slice::<f32, u8>(v),
            ),
            TensorData::I64(v) => (
                t.name.as_str(),
                Dtype::I64,
                &t.shape[..],
                bytemuck::cast_slice::<i64, u8>(v),
            ),
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    for (name, ..) in &raw {
        if !seen.insert(*name) {
            bail!("tensor name {name} appears twice; safetensors needs unique names");
        }
    }
    let views = raw
        .iter()
        .map(|&(name, dt, shape, data)| {
            TensorView::new(dt, shape.to_vec(), data)
                .map(|v| (name, v))
                .map_err(|e| anyhow!("tensor {name}: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut bytes = safetensors::serialize(views, metadata)
        .map_err(|e| anyhow!("serialising safetensors: {e}"))?;
    sort_header(&mut bytes)?;
    Ok(bytes)
}

/// Rewrites the header with every JSON object's keys sorted. The safetensors crate writes
/// `__metadata__` in a HashMap's order, which changes from process to process, so the same
/// model would give files of different bytes (and checksums). serde_json's map is ordered by
/// key (its `preserve_order` feature is off), so parsing and printing the header sorts it; the
/// header keeps its length (the same entries, compact), so the data offsets stay valid.
fn sort_header(bytes: &mut [u8]) -> Result<()> {
    let n = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let header = bytes
        .get(8..8 + n)
        .context("safetensors header longer than the file")?;
    let value: serde_json::Value = serde_json::from_slice(header)?;
    let text = serde_json::to_string(&value)?;
    if text.len() > n {
        bail!(
            "sorted safetensors header is {} bytes, over the {n} reserved",
            text.len()
        );
    }
    bytes[8..8 + text.len()].copy_from_slice(text.as_bytes());
    bytes[8 + text.len()..8 + n].fill(b' ');
    Ok(())
}

/// Writes `tensors` to `path` atomically (a temporary file renamed into place).
pub fn write(
    path: &Path,
    tensors: &[Tensor],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes = to_bytes(tensors, metadata)?;
    crate::io::npy::write_atomic(path, |w| {
        w.write_all(&bytes)?;
        Ok(())
    })
    .with_context(|| format!("writing {}", path.display()))
}

/// Bytes per element of the dtypes this reader decodes (others are refused later by name).
fn dtype_size(d: &str) -> Option<u128> {
    Some(match d {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
        _ => return None,
    })
}

/// Checks the header length and every tensor's offsets and size against the bytes the file
/// holds, with errors that say which number is wrong (the safetensors crate checks the same
/// but reports only an error kind).
fn check_layout(bytes: &[u8]) -> Result<()> {
    let not_st = "the file is truncated or not a .safetensors";
    let Some(head) = bytes.get(..8) else {
        bail!(
            "{} bytes are too few for a .safetensors file (8-byte header length first); {not_st}",
            bytes.len()
        );
    };
    let mut n = [0u8; 8];
    n.copy_from_slice(head);
    let n = u64::from_le_bytes(n);
    let rest = bytes.len() as u64 - 8;
    if n > rest {
        bail!(
            "header declares a {} JSON header but the file holds {} bytes; {not_st}",
            crate::io::npy::human_bytes(n as u128),
            bytes.len()
        );
    }
    let (json, data) = bytes[8..].split_at(n as usize);
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(json)
        .map_err(|e| anyhow!("the JSON header is not an object of tensors ({e}); {not_st}"))?;
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let offsets = info
            .get("data_offsets")
            .and_then(|v| v.as_array())
            .and_then(|a| match a[..] {
                [ref s, ref e] => Some((s.as_u64()?, e.as_u64()?)),
                _ => None,
            })
            .ok_or_else(|| anyhow!("tensor {name}: no data_offsets [start, end] in the header"))?;
        if offsets.0 > offsets.1 || offsets.1 > data.len() as u64 {
            bail!(
                "tensor {name}: data_offsets [{}, {}] reach past the {} bytes of data in the file; {not_st}",
                offsets.0,
                offsets.1,
                data.len()
            );
        }
        let dtype = info.get("dtype").and_then(|v| v.as_str()).unwrap_or("?");
        let shape = info
            .get("shape")
            .and_then(|v| v.as_array())
            .ok_or_else(|| anyhow!("tensor {name}: no shape in the header"))?;
        let elem = dtype_size(dtype);
        let declared = shape.iter().try_fold(elem.unwrap_or(1), |a, d| {
            d.as_u64().and_then(|d| a.checked_mul(d as u128))
        });
        let Some(declared) = declared else {
            bail!("tensor {name}: shape {shape:?} is not a list of sizes that fit in memory");
        };
        let held = (offsets.1 - offsets.0) as u128;
        if elem.is_some() && declared != held {
            bail!(
                "tensor {name}: shape {shape:?} of {dtype} declares {} but its data_offsets hold {held} bytes",
                crate::io::npy::human_bytes(declared)
            );
        }
    }
    Ok(())
}

/// Reads safetensors bytes; f16 / bf16 / f64 become f32, integer types i64.
pub fn from_bytes(bytes: &[u8]) -> Result<Vec<Tensor>> {
    check_layout(bytes)?;
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| anyhow!("not a valid safetensors file: {e}"))?;
    let mut out: Vec<(usize, Tensor)> = Vec::new();
    for (name, view) in st.iter() {
        let source = match view.dtype() {
            Dtype::F32 => SourceDType::F32,
            Dtype::F64 => SourceDType::F64,
            Dtype::F16 => SourceDType::F16,
            Dtype::BF16 => SourceDType::BF16,
            Dtype::I64 => SourceDType::I64,
            Dtype::I32 => SourceDType::I32,
            Dtype::I16 => SourceDType::I16,
            Dtype::I8 => SourceDType::I8,
            Dtype::U8 => SourceDType::U8,
            Dtype::BOOL => SourceDType::Bool,
            other => bail!("tensor {name}: unsupported dtype {other:?}"),
        };
        let data = view.data();
        // Position in the file, to return tensors in a stable order.
        let at = (data.as_ptr() as usize).wrapping_sub(bytes.as_ptr() as usize);
        let t = Tensor::new(name, view.shape().to_vec(), source.decode(data), source)?;
        out.push((at, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
    Ok(out.into_iter().map(|(_, t)| t).collect())
}

/// Reads the safetensors file at `path`.
pub fn read(path: &Path) -> Result<Vec<Tensor>> {
    super::check_file_memory(path)?;
    let bytes = std::fs::read(path)
        .with_context(|| format!("reading {}: check the path", path.display()))?;
    from_bytes(&bytes).with_context(|| format!("{}", path.display()))
}

/// The metadata of a `.safetensors` file, read from its header only (checkpoints are large).
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    use std::io::Read;
    let bad = |why: &str| anyhow!("{}: not a safetensors file ({why})", path.display());
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .map_err(|_| bad("shorter than 8 bytes"))?;
    let n = u64::from_le_bytes(n);
    // safetensors caps its header at 100 MB.
    if n > 100_000_000 {
        return Err(bad("header larger than 100 MB"));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|_| bad("truncated header"))?;
    let v: serde_json::Value =
        serde_json::from_slice(&header).map_err(|_| bad("header is not JSON"))?;
    Ok(v.get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Tensor> {
        vec![
            Tensor::new(
                "layer1.0.conv1.weight",
                vec![2, 1, 1, 3],
                TensorData::F32(vec![0.5, -1.0, 2.0, 3.25, -0.0, 1e-8]),
                SourceDType::F32,
            )
            .unwrap(),
            Tensor::new(
                "bn1.num_batches_tracked",
                vec![],
                TensorData::I64(vec![123456789012]),
                SourceDType::I64,
            )
            .unwrap(),
            Tensor::new(
                "empty",
                vec![0, 4],
                TensorData::F32(vec![]),
                SourceDType::F32,
            )
            .unwrap(),
        ]
    }

    #[test]
    fn the_same_tensors_and_metadata_give_the_same_bytes() {
        // Each HashMap gets its own hash seed, so unsorted headers would differ between these.
        let meta = || -> HashMap<String, String> {
            (0..16)
                .map(|i| (format!("key{i}"), format!("{i}")))
                .collect()
        };
        let a = to_bytes(&sample(), Some(meta())).unwrap();
        let b = to_bytes(&sample(), Some(meta())).unwrap();
        assert_eq!(a, b);
        let (_, m) = safetensors::SafeTensors::read_metadata(&a).unwrap();
        assert_eq!(m.metadata().as_ref().unwrap(), &meta());
        let st = safetensors::SafeTensors::deserialize(&a).unwrap();
        assert_eq!(
            st.tensor("layer1.0.conv1.weight").unwrap().shape(),
            [2, 1, 1, 3]
        );
    }

    #[test]
    fn round_trip_keeps_names_shapes_values() {
        let t = sample();
        let bytes = to_bytes(&t, None).unwrap();
        let mut back = from_bytes(&bytes).unwrap();
        back.sort_by(|a, b| a.name.cmp(&b.name));
        let mut want = t.clone();
        want.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(back, want);
    }

    #[test]
    fn file_round_trip_and_corruption() {
        let dir = std::env::temp_dir().join(format!("insclr-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("w.safetensors");
        write(&p, &sample(), None).unwrap();
        assert_eq!(read(&p).unwrap().len(), 3);
        let bytes = std::fs::read(&p).unwrap();
        for cut in [0, 7, 8, 20, bytes.len() - 1] {
            assert!(from_bytes(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let e = format!("{:#}", read(&dir.join("nope.safetensors")).unwrap_err());
        assert!(e.contains("nope.safetensors"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn huge_header_length_and_offsets_past_the_file_are_named() {
        let bytes = to_bytes(&sample(), None).unwrap();
        // A truncated file whose first 8 bytes declare a 2^62-byte header.
        let mut b = bytes[..40].to_vec();
        b[..8].copy_from_slice(&(1u64 << 62).to_le_bytes());
        let e = from_bytes(&b).unwrap_err().to_string();
        assert!(
            e.contains("4.6 EB JSON header") && e.contains("holds 40 bytes"),
            "{e}"
        );
        // Offsets beyond the data: the tensor and the numbers are named.
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let json = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
        let bad = json.replacen(
            "\"data_offsets\":[8,8]",
            "\"data_offsets\":[8,4000000000000]",
            1,
        );
        assert_ne!(bad, json, "{json}");
        let mut b = (bad.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(bad.as_bytes());
        b.extend_from_slice(&bytes[8 + n..]);
        let e = from_bytes(&b).unwrap_err().to_string();
        assert!(
            e.contains("tensor empty") && e.contains("4000000000000") && e.contains("reach past"),
            "{e}"
        );
        // Shapes that overflow are errors too, not a panic.
        let bad = json.replacen("[0,4]", "[18446744073709551615,18446744073709551615]", 1);
        let mut b = (bad.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(bad.as_bytes());
        b.extend_from_slice(&bytes[8 + n..]);
        let e = from_bytes(&b).unwrap_err().to_string();
        assert!(e.contains("tensor empty"), "{e}");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let mut t = sample();
        t[1].name = t[0].name.clone();
        t[1].data = TensorData::I64(vec![1; 6]);
        t[1].shape = vec![6];
        let e = to_bytes(&t, None).unwrap_err().to_string();
        assert!(e.contains("appears twice"), "{e}");
    }
}
