//! PyTorch `.pth` / `.pt` checkpoints, read without PyTorch: the zip format that `torch.save`
//! writes since 1.6 (torchvision's files: `<name>/data.pkl` + `<name>/data/<key>`) and the
//! legacy format before it (the EfficientNet-Lite0 file: pickles of the magic number, the
//! protocol version and system info, the object pickle, the list of storage keys, then each
//! storage as an int64 element count and its raw little-endian bytes, in key order).
//!
//! Tensors are rebuilt from `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`
//! (also `_rebuild_tensor` and `_rebuild_parameter`), with any strides, made contiguous. The
//! state dict is the top-level dict, or its `"model"` / `"state_dict"` entry when present
//! (InsCLR checkpoints keep it under `"model"`). Names are kept as in the file; stripping
//! `module.` is the loader's job ([`crate::nn::weights`]).

use super::pickle::{self, Value};
use super::tensor::{SourceDType, Tensor, TensorData};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// Legacy torch serialisation's magic number (`torch/serialization.py`).
const LEGACY_MAGIC: u128 = 0x1950a86a20f9469cfc6c;
/// The largest `data.pkl` read: a state dict's pickle holds tensor names, shapes and strides
/// (torchvision's ResNet-101: 40 KB); the tensors live in entries of their own.
const MAX_PICKLE: usize = 64 << 20;
/// Legacy torch serialisation's protocol version.
const LEGACY_PROTOCOL: i64 = 1001;

/// Reads the state dict of the `.pth` file at `path`, in file order.
pub fn read(path: &Path) -> Result<Vec<Tensor>> {
    super::check_file_memory(path)?;
    let bytes = std::fs::read(path)
        .with_context(|| format!("reading {}: check the path", path.display()))?;
    read_bytes(&bytes).with_context(|| {
        format!(
            "{}: not a readable PyTorch checkpoint (truncated or corrupted? re-download it)",
            path.display()
        )
    })
}

/// Reads a `.pth` held in memory (zip or legacy format, told apart by the first bytes).
pub fn read_bytes(bytes: &[u8]) -> Result<Vec<Tensor>> {
    if bytes.starts_with(b"PK\x03\x04") {
        read_zip(bytes)
    } else if bytes.first() == Some(&0x80) {
        read_legacy(bytes)
    } else {
        bail!(
            "unknown file format: starts with {:02x?}; expected a zip (PK..) or a legacy torch pickle (0x80)",
            &bytes[..bytes.len().min(4)]
        )
    }
}

/// A storage as a persistent id names it.
struct StorageRef {
    key: String,
    dtype: SourceDType,
    numel: usize,
    /// Legacy view of a root storage: (element offset, element count).
    view: Option<(usize, usize)>,
}

/// A tensor before its storage is read.
struct Pending {
    name: String,
    storage: StorageRef,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

fn storage_dtype(v: &Value) -> Result<SourceDType> {
    let Value::Global { module, name } = v else {
        bail!("storage type is a {}, expected a torch.*Storage", v.kind());
    };
    if module != "torch" {
        bail!("storage type {module}.{name} is not a torch storage");
    }
    Ok(match name.as_str() {
        "FloatStorage" => SourceDType::F32,
        "DoubleStorage" => SourceDType::F64,
        "HalfStorage" => SourceDType::F16,
        "BFloat16Storage" => SourceDType::BF16,
        "LongStorage" => SourceDType::I64,
        "IntStorage" => SourceDType::I32,
        "ShortStorage" => SourceDType::I16,
        "CharStorage" => SourceDType::I8,
        "ByteStorage" => SourceDType::U8,
        "BoolStorage" => SourceDType::Bool,
        other => bail!("unsupported storage type torch.{other}"),
    })
}

fn usize_of(v: &Value, what: &str) -> Result<usize> {
    let i = v
        .as_int()
        .ok_or_else(|| anyhow!("{what} is a {}, expected an int", v.kind()))?;
    usize::try_from(i).map_err(|_| anyhow!("{what} is {i}, expected >= 0"))
}

fn usizes_of(v: &Value, what: &str) -> Result<Vec<usize>> {
    v.as_seq()
        .ok_or_else(|| anyhow!("{what} is a {}, expected a tuple", v.kind()))?
        .iter()
        .map(|x| usize_of(x, what))
        .collect()
}

fn storage_ref(v: &Value) -> Result<StorageRef> {
    let Value::PersistentId(pid) = v else {
        bail!("tensor storage is a {}, expected a persistent id", v.kind());
    };
    let t = pid
        .as_seq()
        .ok_or_else(|| anyhow!("storage persistent id is a {}", pid.kind()))?;
    if t.len() < 5 || t[0].as_str() != Some("storage") {
        bail!("storage persistent id {t:?} is not ('storage', type, key, location, size, ...)");
    }
    let dtype = storage_dtype(&t[1])?;
    let key = t[2]
        .as_str()
        .ok_or_else(|| anyhow!("storage key is a {}", t[2].kind()))?
        .to_string();
    let numel = usize_of(&t[4], "storage size")?;
    let view = match t.get(5) {
        None | Some(Value::None) => None,
        Some(Value::Tuple(vm)) if vm.len() == 3 => Some((
            usize_of(&vm[1], "storage view offset")?,
            usize_of(&vm[2], "storage view size")?,
        )),
        Some(o) => bail!("storage view metadata {o:?} is not (key, offset, size)"),
    };
    Ok(StorageRef {
        key,
        dtype,
        numel,
        view,
    })
}

fn pending_tensor(name: &str, v: &Value) -> Result<Pending> {
    let Value::Reduce { callable, args } = v else {
        bail!("entry {name} is a {}, expected a tensor", v.kind());
    };
    let a = args
        .as_seq()
        .ok_or_else(|| anyhow!("entry {name}: rebuild arguments are a {}", args.kind()))?;
    let Value::Global { module, name: f } = &**callable else {
        bail!("entry {name}: rebuilt by a {}", callable.kind());
    };
    match (module.as_str(), f.as_str()) {
        ("torch._utils", "_rebuild_parameter") | ("torch._utils", "_rebuild_parameter_v2") => {
            let data = a
                .first()
                .ok_or_else(|| anyhow!("entry {name}: _rebuild_parameter without data"))?;
            pending_tensor(name, data)
        }
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            if a.len() < 4 {
                bail!("entry {name}: {f} has {} arguments, expected >= 4", a.len());
            }
            let storage = storage_ref(&a[0]).with_context(|| format!("entry {name}"))?;
            let offset = usize_of(&a[1], "storage offset")?;
            let size = usizes_of(&a[2], "tensor size")?;
            let stride = usizes_of(&a[3], "tensor stride")?;
            if size.len() != stride.len() {
                bail!("entry {name}: size {size:?} and stride {stride:?} differ in rank");
            }
            Ok(Pending {
                name: name.to_string(),
                storage,
                offset,
                size,
                stride,
            })
        }
        (m, f) => bail!("entry {name}: rebuilt by {m}.{f}, which is not a plain tensor"),
    }
}

/// The state dict inside a checkpoint's top-level object, as pending tensors in file order.
fn state_dict(root: &Value) -> Result<Vec<Pending>> {
    let mut d = root.unbuilt();
    for key in ["model", "state_dict"] {
        if let Some(inner) = d.get(key) {
            d = inner.unbuilt();
            break;
        }
    }
    let items = d.as_dict().ok_or_else(|| {
        anyhow!(
            "top-level object is a {}, expected a state dict (or a dict with \"model\")",
            d.kind()
        )
    })?;
    items
        .iter()
        .map(|(k, v)| {
            let name = k
                .as_str()
                .ok_or_else(|| anyhow!("state dict key is a {}, expected a str", k.kind()))?;
            pending_tensor(name, v)
        })
        .collect()
}

/// Materialises each pending tensor from its storage's decoded elements.
fn build(pending: Vec<Pending>, storages: &HashMap<String, TensorData>) -> Result<Vec<Tensor>> {
    pending
        .into_iter()
        .map(|p| {
            let data = storages.get(&p.storage.key).ok_or_else(|| {
                anyhow!("tensor {}: storage {} is missing", p.name, p.storage.key)
            })?;
            let (base, avail) = match p.storage.view {
                Some((off, n)) => (off, n),
                None => (0, data.len()),
            };
            if base.checked_add(avail).is_none_or(|end| end > data.len()) {
                bail!(
                    "tensor {}: storage view of {avail} elements at {base} reaches past storage {} of {} elements",
                    p.name,
                    p.storage.key,
                    data.len()
                );
            }
            let numel = p
                .size
                .iter()
                .try_fold(1usize, |a, &s| a.checked_mul(s))
                .ok_or_else(|| anyhow!("tensor {}: size {:?} overflows", p.name, p.size))?;
            // Only broadcast views (stride 0) hold fewer elements than they show; state dicts
            // do not have them, and refusing them bounds what a corrupted size can allocate.
            if numel > avail {
                bail!(
                    "tensor {}: size {:?} declares {numel} elements but its storage {} holds {avail}",
                    p.name,
                    p.size,
                    p.storage.key
                );
            }
            let mut index = Vec::with_capacity(numel);
            if numel > 0 {
                // Largest element touched, checked before any gather.
                let last = p
                    .size
                    .iter()
                    .zip(&p.stride)
                    .try_fold(p.offset, |a, (&s, &st)| {
                        (s - 1).checked_mul(st).and_then(|x| x.checked_add(a))
                    });
                match last {
                    Some(l) if l < avail => {}
                    _ => bail!(
                        "tensor {}: size {:?} stride {:?} offset {} reaches past its storage {} of {} elements",
                        p.name, p.size, p.stride, p.offset, p.storage.key, avail
                    ),
                }
                let mut idx = vec![0usize; p.size.len()];
                for _ in 0..numel {
                    let off: usize = idx.iter().zip(&p.stride).map(|(i, s)| i * s).sum();
                    index.push(base + p.offset + off);
                    for d in (0..idx.len()).rev() {
                        idx[d] += 1;
                        if idx[d] < p.size[d] {
                            break;
                        }
                        idx[d] = 0;
                    }
                }
            }
            Tensor::new(p.name, p.size, data.gather(&index), p.storage.dtype)
        })
        .collect()
}

/// The dtype and size of each storage key, from every persistent id in `root` (legacy files
/// store every storage the object references, e.g. an optimiser's beside the model's),
/// checking that references to one storage agree.
fn storage_types(root: &Value) -> Result<HashMap<String, (SourceDType, usize)>> {
    fn walk(v: &Value, m: &mut HashMap<String, (SourceDType, usize)>) -> Result<()> {
        match v {
            Value::PersistentId(_) => {
                let s = storage_ref(v)?;
                let e = m.entry(s.key.clone()).or_insert((s.dtype, s.numel));
                if *e != (s.dtype, s.numel) {
                    bail!(
                        "storage {} is referenced as {} x {} and as {} x {}",
                        s.key,
                        e.1,
                        e.0,
                        s.numel,
                        s.dtype
                    );
                }
            }
            Value::List(x) | Value::Tuple(x) | Value::Set(x) => {
                for i in x {
                    walk(i, m)?;
                }
            }
            Value::Dict(d) => {
                for (k, i) in d {
                    walk(k, m)?;
                    walk(i, m)?;
                }
            }
            Value::Reduce { callable, args } => {
                walk(callable, m)?;
                walk(args, m)?;
            }
            Value::NewObj { cls, args, kwargs } => {
                walk(cls, m)?;
                walk(args, m)?;
                if let Some(k) = kwargs {
                    walk(k, m)?;
                }
            }
            Value::Build { obj, state } => {
                walk(obj, m)?;
                walk(state, m)?;
            }
            _ => {}
        }
        Ok(())
    }
    let mut m = HashMap::new();
    walk(root, &mut m)?;
    Ok(m)
}

type Zip<'a> = zip::ZipArchive<std::io::Cursor<&'a [u8]>>;

/// An entry's bytes; `max` bounds what the caller needs (`what` says why, for the error).
/// The declared size is checked against `max` and against what the compressed size makes
/// possible before anything is allocated, and at most that many bytes are inflated: an entry
/// that inflates past its declared size is refused, never read to its end.
fn read_entry(zip: &mut Zip, name: &str, max: usize, what: &str) -> Result<Vec<u8>> {
    let f = zip
        .by_name(name)
        .with_context(|| format!("zip entry {name}"))?;
    let size = crate::io::npy::zip_entry_size(&f, &format!("zip entry {name}"))?;
    if size > max as u64 {
        bail!(
            "zip entry {name} declares {} uncompressed, but {what} ({}); the file is corrupted or was made to exhaust memory",
            crate::io::npy::human_bytes(size as u128),
            crate::io::npy::human_bytes(max as u128)
        );
    }
    let mut v = Vec::with_capacity(size as usize);
    f.take(size + 1)
        .read_to_end(&mut v)
        .with_context(|| format!("reading zip entry {name}"))?;
    if v.len() as u64 != size {
        bail!(
            "zip entry {name} holds {} bytes but its header declares {size}; the archive is corrupted",
            v.len()
        );
    }
    Ok(v)
}

fn read_zip(bytes: &[u8]) -> Result<Vec<Tensor>> {
    let mut cursor = std::io::Cursor::new(bytes);
    crate::io::npy::check_zip_end(&mut cursor, "checkpoint")?;
    let mut zip = zip::ZipArchive::new(cursor).context("opening zip")?;
    let pkl_name = zip
        .file_names()
        .find(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
        .map(str::to_string)
        .ok_or_else(|| anyhow!("zip has no <name>/data.pkl: not a torch checkpoint"))?;
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];
    if let Ok(order) = read_entry(
        &mut zip,
        &format!("{prefix}byteorder"),
        16,
        "it says little",
    ) {
        if order.trim_ascii() != b"little" {
            bail!(
                "checkpoint byte order is {:?}; only little-endian is supported",
                String::from_utf8_lossy(&order)
            );
        }
    }
    let pkl = read_entry(
        &mut zip,
        &pkl_name,
        MAX_PICKLE,
        "a state dict's pickle holds names and shapes, at most",
    )?;
    let root = pickle::parse(&pkl).with_context(|| format!("parsing {pkl_name}"))?;
    let pending = state_dict(&root)?;
    let types = storage_types(&root)?;
    let used: std::collections::HashSet<&str> =
        pending.iter().map(|p| p.storage.key.as_str()).collect();
    let mut storages = HashMap::new();
    for (key, (dtype, numel)) in types {
        if !used.contains(key.as_str()) {
            continue;
        }
        let name = format!("{prefix}data/{key}");
        let want = numel
            .checked_mul(dtype.size())
            .ok_or_else(|| anyhow!("storage {key}: {numel} elements overflow"))?;
        let need = format!("storage {key} of {numel} x {dtype} needs");
        let raw = read_entry(&mut zip, &name, want, &need)?;
        if raw.len() < want {
            bail!(
                "zip entry {name} holds {} bytes; storage {key} needs {numel} x {} = {want}",
                raw.len(),
                dtype
            );
        }
        storages.insert(key, dtype.decode(&raw[..want]));
    }
    build(pending, &storages)
}

fn read_legacy(bytes: &[u8]) -> Result<Vec<Tensor>> {
    let mut pos = 0;
    let mut next = |what: &str| -> Result<Value> {
        let (v, n) = pickle::parse_prefix(&bytes[pos..])
            .with_context(|| format!("legacy torch file: reading the {what} at byte {pos}"))?;
        pos += n;
        Ok(v)
    };
    let magic = next("magic number")?;
    let want = LEGACY_MAGIC.to_le_bytes()[..10].to_vec();
    if magic != Value::BigInt(want) {
        bail!("legacy torch file: bad magic number {magic:?}; not a torch checkpoint");
    }
    let proto = next("protocol version")?;
    if proto.as_int() != Some(LEGACY_PROTOCOL) {
        bail!("legacy torch file: protocol {proto:?}, expected {LEGACY_PROTOCOL}");
    }
    let info = next("system info")?;
    if info.get("little_endian") != Some(&Value::Bool(true)) {
        bail!("legacy torch file: not written little-endian ({info:?}); unsupported");
    }
    let root = next("object pickle")?;
    let keys_v = next("storage key list")?;
    let pending = state_dict(&root)?;
    let types = storage_types(&root)?;
    let keys = keys_v
        .as_seq()
        .ok_or_else(|| anyhow!("legacy torch file: storage key list is a {}", keys_v.kind()))?;
    let mut storages = HashMap::new();
    for k in keys {
        let key = k
            .as_str()
            .ok_or_else(|| anyhow!("legacy torch file: storage key is a {}", k.kind()))?;
        let &(dtype, numel) = types
            .get(key)
            .ok_or_else(|| anyhow!("legacy torch file: storage {key} is referenced nowhere"))?;
        let head = bytes.get(pos..pos + 8).ok_or_else(|| {
            anyhow!("legacy torch file: truncated at byte {pos}, in the size of storage {key}")
        })?;
        let n = i64::from_le_bytes(head.try_into().expect("8-byte slice"));
        if usize::try_from(n).ok() != Some(numel) {
            bail!("legacy torch file: storage {key} has {n} elements at byte {pos}, its tensors say {numel}");
        }
        pos += 8;
        let raw = numel
            .checked_mul(dtype.size())
            .and_then(|len| bytes.get(pos..pos.checked_add(len)?));
        let len = raw.map_or(0, <[u8]>::len);
        let raw = raw.ok_or_else(|| {
            anyhow!(
                "legacy torch file: truncated: storage {key} needs {numel} x {dtype} at byte {pos}, file has {} bytes",
                bytes.len()
            )
        })?;
        pos += len;
        storages.insert(key.to_string(), dtype.decode(raw));
    }
    if pos != bytes.len() {
        bail!(
            "legacy torch file: {} unexpected bytes after the last storage (byte {pos})",
            bytes.len() - pos
        );
    }
    build(pending, &storages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::pickle_fixtures as fx;
    use std::io::Write;

    /// What the fixture state dict holds (scripts/gen-pickle-fixtures.py), after rebuild.
    fn check_fixture(t: &[Tensor]) {
        let names: Vec<&str> = t.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "module.conv.weight",
                "module.conv.bias",
                "module.bn.running_mean",
                "module.bn.running_var",
                "module.bn.num_batches_tracked",
                "module.fc.weight"
            ]
        );
        // Storage 0..12, viewed (3,2) with strides (1,3): row i is [i, i+3].
        assert_eq!(t[0].shape, [3, 2]);
        assert_eq!(t[0].as_f32().unwrap(), [0., 3., 1., 4., 2., 5.]);
        assert_eq!(t[1].as_f32().unwrap(), [6., 8.]);
        assert_eq!(t[2].source, SourceDType::F64);
        assert_eq!(t[2].as_f32().unwrap(), [0.5, -1.25, 3.0]);
        assert_eq!(t[3].source, SourceDType::F16);
        assert_eq!(t[3].as_f32().unwrap(), [1.0, -2.0, 0.5, 65504.0]);
        assert_eq!(t[4].shape, Vec::<usize>::new());
        assert_eq!(t[4].data, TensorData::I64(vec![7]));
        assert_eq!(t[5].as_f32().unwrap(), [1., 2., 5., 6.]);
    }

    fn zip_pth() -> Vec<u8> {
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut z = zip::ZipWriter::new(&mut buf);
            let o = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored);
            let mut put = |name: &str, data: &[u8]| {
                z.start_file(name, o).unwrap();
                z.write_all(data).unwrap();
            };
            put("ckpt/data.pkl", fx::TORCH_STATE_P2);
            put("ckpt/byteorder", b"little");
            put("ckpt/data/140001", fx::STORAGE_140001);
            put("ckpt/data/140002", fx::STORAGE_140002);
            put("ckpt/data/140003", fx::STORAGE_140003);
            put("ckpt/data/140004", fx::STORAGE_140004);
            put("ckpt/version", b"3\n");
            z.finish().unwrap();
        }
        buf.into_inner()
    }

    #[test]
    fn legacy_format_with_strides_offsets_and_dtypes() {
        check_fixture(&read_bytes(fx::LEGACY_PTH).unwrap());
    }

    #[test]
    fn checkpoint_model_key_is_read_and_other_storages_skipped() {
        check_fixture(&read_bytes(fx::LEGACY_CHECKPOINT_PTH).unwrap());
    }

    #[test]
    fn zip_format_with_strides_offsets_and_dtypes() {
        check_fixture(&read_bytes(&zip_pth()).unwrap());
    }

    #[test]
    fn truncated_or_flipped_files_are_errors_not_panics() {
        for bytes in [fx::LEGACY_PTH.to_vec(), zip_pth()] {
            for cut in (0..bytes.len()).step_by(97).chain([bytes.len() - 1]) {
                assert!(read_bytes(&bytes[..cut]).is_err(), "cut at {cut} read");
            }
            let mut rng = crate::rng::Rng::new(11);
            for _ in 0..400 {
                let mut c = bytes.clone();
                let i = rng.below(c.len());
                c[i] ^= 1 << rng.below(8);
                let _ = read_bytes(&c);
            }
        }
    }

    #[test]
    fn zip_entry_sizes_that_cannot_be_true_are_named() {
        // data.pkl is the first entry: declare 4 GB uncompressed in its local header (offset
        // 22) and its central directory entry (24 in; the end record, last 22 bytes, holds the
        // directory's offset at 16), for a stored entry of a few hundred bytes.
        let mut b = zip_pth();
        b[22..26].copy_from_slice(&u32::MAX.to_le_bytes());
        let eocd = b.len() - 22;
        let cd = u32::from_le_bytes(b[eocd + 16..eocd + 20].try_into().unwrap()) as usize;
        b[cd + 24..cd + 28].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = format!("{:#}", read_bytes(&b).unwrap_err());
        assert!(
            e.contains("ckpt/data.pkl") && e.contains("cannot expand"),
            "{e}"
        );
        // An end record declaring 60000 entries in a 1.5 KB file.
        let mut b = zip_pth();
        let eocd = b.len() - 22;
        b[eocd + 10..eocd + 12].copy_from_slice(&60000u16.to_le_bytes());
        let e = format!("{:#}", read_bytes(&b).unwrap_err());
        assert!(e.contains("60000 entries"), "{e}");
    }

    /// A 64 KB file whose storage entry inflates to 64 MiB for a tensor of a few floats (the
    /// same in a 1 MB file reached 1 GiB): refused from the entry's declared size, before
    /// anything is inflated; the same bytes stored uncompressed are refused too.
    #[test]
    fn a_storage_entry_larger_than_its_tensor_is_refused_unread() {
        for method in [
            zip::CompressionMethod::Deflated,
            zip::CompressionMethod::Stored,
        ] {
            let mut buf = std::io::Cursor::new(Vec::new());
            {
                let mut z = zip::ZipWriter::new(&mut buf);
                let o = zip::write::SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Stored);
                let big = zip::write::SimpleFileOptions::default()
                    .compression_method(method)
                    .large_file(true);
                z.start_file("ckpt/data.pkl", o).unwrap();
                z.write_all(fx::TORCH_STATE_P2).unwrap();
                z.start_file("ckpt/data/140001", big).unwrap();
                z.write_all(fx::STORAGE_140001).unwrap();
                let zeros = vec![0u8; 1 << 20];
                for _ in 0..64 {
                    z.write_all(&zeros).unwrap();
                }
                for (name, data) in [
                    ("ckpt/data/140002", fx::STORAGE_140002),
                    ("ckpt/data/140003", fx::STORAGE_140003),
                    ("ckpt/data/140004", fx::STORAGE_140004),
                ] {
                    z.start_file(name, o).unwrap();
                    z.write_all(data).unwrap();
                }
                z.finish().unwrap();
            }
            let b = buf.into_inner();
            let e = format!("{:#}", read_bytes(&b).unwrap_err());
            assert!(
                e.contains("ckpt/data/140001")
                    && e.contains("declares 67.1 MB")
                    && e.contains("storage 140001 of 12 x float32 needs (48 bytes)"),
                "{method:?}: {e}"
            );
        }
    }

    #[test]
    fn missing_storage_entry_is_named() {
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut z = zip::ZipWriter::new(&mut buf);
            let o = zip::write::SimpleFileOptions::default();
            z.start_file("a/data.pkl", o).unwrap();
            z.write_all(fx::TORCH_STATE_P2).unwrap();
            z.finish().unwrap();
        }
        let e = format!("{:#}", read_bytes(&buf.into_inner()).unwrap_err());
        assert!(e.contains("a/data/1400"), "{e}");
    }
}
