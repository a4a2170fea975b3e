//! numpy `.npy` arrays (format 1.0/2.0/3.0, little-endian, C order) and `.npz` archives of them,
//! for the dtypes this project writes: f32 (`<f4`) and i64 (`<i8`). Readers accept what numpy
//! writes by default; anything else is a clear error naming the file and what was found.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

/// An element type that can live in a `.npy` file.
pub trait NpyElem: bytemuck::Pod {
    /// The numpy `descr`, e.g. `<f4`.
    const DESCR: &'static str;
}
impl NpyElem for f32 {
    const DESCR: &'static str = "<f4";
}
impl NpyElem for i64 {
    const DESCR: &'static str = "<i8";
}

/// A dense C-order array read from or written to `.npy`.
#[derive(Clone, Debug, PartialEq)]
pub struct Array<T> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

impl<T: NpyElem> Array<T> {
    /// An array of the given shape; errors when `data` does not hold the product of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<T>) -> Result<Self> {
        let want: usize = shape.iter().product();
        if want != data.len() {
            bail!(
                "array of shape {shape:?} needs {want} elements, got {}",
                data.len()
            );
        }
        Ok(Array { shape, data })
    }

    /// (rows, cols) of a 2-D array, or an error naming `what`.
    pub fn dims2(&self, what: &str) -> Result<(usize, usize)> {
        match self.shape[..] {
            [r, c] => Ok((r, c)),
            _ => bail!("{what}: expected a 2-D array, got shape {:?}", self.shape),
        }
    }
}

fn header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let shape_str = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_str}, }}");
    // Magic (6) + version (2) + header length (2) + dict + padding + '\n', a multiple of 64.
    let unpadded = 10 + dict.len() + 1;
    let pad = unpadded.div_ceil(64) * 64 - unpadded;
    let mut h = Vec::with_capacity(unpadded + pad);
    h.extend_from_slice(b"\x93NUMPY\x01\x00");
    h.extend_from_slice(&((dict.len() + pad + 1) as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h.extend(std::iter::repeat_n(b' ', pad));
    h.push(b'\n');
    h
}

/// Writes `a` as `.npy` to any writer.
pub fn write_to<T: NpyElem, W: Write>(w: &mut W, a: &Array<T>) -> Result<()> {
    w.write_all(&header(T::DESCR, &a.shape))?;
    w.write_all(bytemuck::cast_slice(&a.data))?;
    Ok(())
}

/// Reads a `.npy` from any reader; `name` is used in errors.
pub fn read_from<T: NpyElem, R: Read>(r: &mut R, name: &str) -> Result<Array<T>> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)
        .with_context(|| format!("{name}: too short for a .npy file"))?;
    if &magic[..6] != b"\x93NUMPY" {
        bail!("{name}: not a .npy file (bad magic); save it with numpy.save");
    }
    let hlen = if magic[6] == 1 {
        let mut b = [0u8; 2];
        r.read_exact(&mut b)?;
        u16::from_le_bytes(b) as usize
    } else {
        let mut b = [0u8; 4];
        r.read_exact(&mut b)?;
        u32::from_le_bytes(b) as usize
    };
    let mut hb = vec![0u8; hlen];
    r.read_exact(&mut hb)
        .with_context(|| format!("{name}: truncated .npy header"))?;
    let h = String::from_utf8_lossy(&hb);
    let field = |key: &str| -> Option<&str> {
        let i = h.find(&format!("'{key}'"))?;
        let rest = h[i + key.len() + 2..]
            .trim_start()
            .strip_prefix(':')?
            .trim_start();
        Some(rest)
    };
    let descr = field("descr")
        .and_then(|s| s.strip_prefix('\''))
        .and_then(|s| s.split('\'').next())
        .with_context(|| format!("{name}: .npy header has no descr: {h}"))?;
    if descr != T::DESCR && !(descr == "|i8" && T::DESCR == "<i8") {
        bail!(
            "{name}: dtype {descr}, expected {} (convert with arr.astype(...) before saving)",
            T::DESCR
        );
    }
    if field("fortran_order").is_some_and(|s| s.starts_with("True")) {
        bail!("{name}: Fortran-ordered array; save numpy.ascontiguousarray(arr) instead");
    }
    let shape_str = field("shape")
        .and_then(|s| s.strip_prefix('('))
        .and_then(|s| s.split(')').next())
        .with_context(|| format!("{name}: .npy header has no shape: {h}"))?;
    let shape: Vec<usize> = shape_str
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .with_context(|| format!("{name}: bad shape entry '{s}'"))
        })
        .collect::<Result<_>>()?;
    let n: usize = shape.iter().product();
    let mut data = vec![T::zeroed(); n];
    r.read_exact(bytemuck::cast_slice_mut(&mut data))
        .with_context(|| {
            format!(
                "{name}: truncated: shape {shape:?} needs {} bytes of data",
                n * size_of::<T>()
            )
        })?;
    Ok(Array { shape, data })
}

/// Writes `a` to `path` as `.npy`, atomically (a temporary file renamed into place).
pub fn write<T: NpyElem>(path: &Path, a: &Array<T>) -> Result<()> {
    write_atomic(path, |w| write_to(w, a))
}

/// Reads a `.npy` file.
pub fn read<T: NpyElem>(path: &Path) -> Result<Array<T>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    read_from(&mut BufReader::new(f), &path.display().to_string())
}

/// One named array of an `.npz` archive.
pub enum NpzEntry<'a> {
    F32(&'a str, &'a Array<f32>),
    I64(&'a str, &'a Array<i64>),
}

/// Writes an uncompressed `.npz` (numpy.savez) atomically; numpy.load reads it back.
pub fn write_npz(path: &Path, entries: &[NpzEntry]) -> Result<()> {
    write_atomic(path, |file| {
        let mut z = zip::ZipWriter::new(file);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(true);
        for e in entries {
            match e {
                NpzEntry::F32(n, a) => {
                    z.start_file(format!("{n}.npy"), opts)?;
                    write_to(&mut z, a)?;
                }
                NpzEntry::I64(n, a) => {
                    z.start_file(format!("{n}.npy"), opts)?;
                    write_to(&mut z, a)?;
                }
            }
        }
        z.finish()?;
        Ok(())
    })
}

/// Reads array `key` from an `.npz` archive (stored or deflated, as numpy.savez[_compressed]).
pub fn read_npz<T: NpyElem>(path: &Path, key: &str) -> Result<Array<T>> {
    let name = path.display().to_string();
    let f = File::open(path).with_context(|| format!("opening {name}"))?;
    let mut z = zip::ZipArchive::new(BufReader::new(f))
        .with_context(|| format!("{name}: not an .npz (zip) archive"))?;
    let names: Vec<String> = z
        .file_names()
        .map(|n| n.trim_end_matches(".npy").to_string())
        .collect();
    let entry = z
        .by_name(&format!("{key}.npy"))
        .with_context(|| format!("{name}: no array '{key}' (it holds {names:?})"))?;
    let array = read_from(&mut BufReader::new(entry), &format!("{name}[{key}]"));
    array
}

/// Writes through `fill` into `path.tmp`, syncs, then renames over `path`, so a crash never
/// leaves a half-written file under the real name. When any of it fails the temporary file is
/// removed: a disk that filled up must not stay full of it.
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let r = write_then_rename(&tmp, path, fill);
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

fn write_then_rename(
    tmp: &Path,
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<()> {
    let f = File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut w = BufWriter::new(f);
    fill(&mut w).with_context(|| format!("writing {}", tmp.display()))?;
    let f = w
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.sync_all()
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_and_npz_round_trip() {
        let dir = std::env::temp_dir().join(format!("insclr-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = Array::new(vec![3, 2], vec![1.0f32, -2.0, 3.5, 0.0, 1e-7, 9.0]).unwrap();
        let i = Array::new(vec![4], vec![0i64, -1, 1 << 40, 7]).unwrap();
        write(&dir.join("a.npy"), &f).unwrap();
        assert_eq!(read::<f32>(&dir.join("a.npy")).unwrap(), f);
        assert!(read::<i64>(&dir.join("a.npy"))
            .unwrap_err()
            .to_string()
            .contains("dtype <f4"));
        write_npz(
            &dir.join("p.npz"),
            &[
                NpzEntry::I64("neighbor", &i),
                NpzEntry::F32("similarity", &f),
            ],
        )
        .unwrap();
        assert_eq!(read_npz::<i64>(&dir.join("p.npz"), "neighbor").unwrap(), i);
        assert_eq!(
            read_npz::<f32>(&dir.join("p.npz"), "similarity").unwrap(),
            f
        );
        let err = read_npz::<f32>(&dir.join("p.npz"), "feature")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no array 'feature'"), "{err}");
        // Header is 64-byte aligned as numpy requires.
        let bytes = std::fs::read(dir.join("a.npy")).unwrap();
        assert_eq!((bytes.len() - 24) % 64, 0);
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A write that fails (a full disk, simulated by `fill` failing half way) leaves neither
    /// the temporary file nor a file under the real name.
    #[test]
    fn failed_atomic_write_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("insclr-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.npy");
        let e = write_atomic(&path, |w| {
            std::io::Write::write_all(w, &[0u8; 100_000])?;
            anyhow::bail!("No space left on device (simulated)")
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("No space left"), "{e:#}");
        assert!(!path.exists());
        assert!(!dir.join("a.npy.tmp").exists(), "the temporary file stays");
        std::fs::remove_dir_all(&dir).ok();
    }
}
