//! numpy `.npy` arrays (format 1.0/2.0/3.0, little-endian, C order) and `.npz` archives of them,
//! for the dtypes this project writes: f32 (`<f4`), i64 (`<i8`) and i8 (`|i1`, quantised local
//! descriptors). Readers accept what numpy
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
impl NpyElem for i8 {
    const DESCR: &'static str = "|i1";
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
        let want = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if want != Some(data.len()) {
            let want = want.map_or("more than usize::MAX".into(), |w| w.to_string());
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

/// numpy writes headers of a few hundred bytes; a longer one is a corrupted length field.
const MAX_HEADER: usize = 1 << 20;

/// A byte count for messages, e.g. `8.2 TB`.
pub(crate) fn human_bytes(n: u128) -> String {
    let units = ["bytes", "KB", "MB", "GB", "TB", "PB", "EB"];
    let mut x = n as f64;
    let mut u = 0;
    while x >= 1000.0 && u + 1 < units.len() {
        x /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} bytes")
    } else {
        format!("{x:.1} {}", units[u])
    }
}

/// Reads the magic, version and header dict; returns the shape and the bytes it declares,
/// and how many bytes the header took. `len` is the input's size when known: every declared
/// size is checked against it before anything is allocated.
fn read_header<T: NpyElem, R: Read>(
    r: &mut R,
    name: &str,
    len: Option<u64>,
) -> Result<(Vec<usize>, u64, u64)> {
    let not_npy = "the file is truncated or not an .npy";
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)
        .with_context(|| format!("{name}: too short for a .npy file"))?;
    if &magic[..6] != b"\x93NUMPY" {
        bail!("{name}: not a .npy file (bad magic); save it with numpy.save");
    }
    let (hlen, at) = match magic[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)
                .with_context(|| format!("{name}: truncated .npy header"))?;
            (u16::from_le_bytes(b) as u64, 10u64)
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b)
                .with_context(|| format!("{name}: truncated .npy header"))?;
            (u32::from_le_bytes(b) as u64, 12)
        }
        v => bail!("{name}: .npy format version {v} is not one numpy writes (1, 2 or 3)"),
    };
    if let Some(len) = len {
        if at + hlen > len {
            bail!("{name}: header declares {hlen} header bytes but the file holds {len} bytes; {not_npy}");
        }
    }
    if hlen > MAX_HEADER as u64 {
        bail!(
            "{name}: header declares {hlen} header bytes (numpy writes a few hundred); {not_npy}"
        );
    }
    let mut hb = vec![0u8; hlen as usize];
    r.read_exact(&mut hb)
        .with_context(|| format!("{name}: truncated .npy header"))?;
    let h = String::from_utf8_lossy(&hb);
    let field = |key: &str| -> Option<&str> {
        let i = h.find(&format!("'{key}'"))?;
        let rest = h
            .get(i + key.len() + 2..)?
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
    // u128 holds the product of any handful of u64 dimensions; an overflow is still an error.
    let bytes = shape
        .iter()
        .try_fold(size_of::<T>() as u128, |a, &d| a.checked_mul(d as u128));
    let dims = shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(" x ");
    let declared = |b: Option<u128>| {
        let size = b.map_or("more than 2^128 bytes".into(), human_bytes);
        format!("{name}: header declares {dims} {descr} ({size})")
    };
    let data = at + hlen;
    if let (Some(b), Some(len)) = (bytes, len) {
        // Both sides in whole-file bytes: the data bytes alone beside the file's size read as
        // a file longer than declared being called truncated.
        let total = data as u128 + b;
        let row = match shape.first() {
            Some(&r) if r > 0 => b / r as u128,
            _ => 0,
        };
        let rows = |diff: u128| match row {
            r if r > 0 && diff % r == 0 => format!(" ({} row(s))", diff / r),
            _ => String::new(),
        };
        if total > len as u128 {
            let short = total - len as u128;
            bail!(
                "{}, {total} bytes with its {data}-byte header, but the file holds {len} bytes: {short} bytes{} short of what it declares; {not_npy}",
                declared(bytes),
                rows(short)
            );
        }
        if total < len as u128 {
            let extra = len as u128 - total;
            bail!(
                "{}, {total} bytes with its {data}-byte header, but the file holds {len} bytes, {extra} more than that{}: longer than declared; the header and the data disagree",
                declared(bytes),
                rows(extra)
            );
        }
    }
    match bytes.and_then(|b| usize::try_from(b).ok()) {
        Some(b) => Ok((shape, b as u64, data)),
        None => bail!(
            "{}, more than this machine can address; {not_npy}",
            declared(bytes)
        ),
    }
}

/// Reads `n` elements; with `known` the input was checked to hold them and they are read in
/// one go, otherwise in chunks, so a lying header cannot make us allocate what is not there.
fn read_data<T: NpyElem, R: Read>(r: &mut R, n: usize, known: bool) -> Result<Vec<T>> {
    if known {
        let mut data = vec![T::zeroed(); n];
        r.read_exact(bytemuck::cast_slice_mut(&mut data))?;
        return Ok(data);
    }
    let chunk = ((1 << 20) / size_of::<T>()).max(1);
    let mut data: Vec<T> = Vec::new();
    while data.len() < n {
        let start = data.len();
        let take = (n - start).min(chunk.max(start));
        data.resize(start + take, T::zeroed());
        r.read_exact(bytemuck::cast_slice_mut(&mut data[start..]))?;
    }
    Ok(data)
}

/// Reads a `.npy` of `len` bytes (when known) from `r`; `name` is used in errors.
fn read_sized<T: NpyElem, R: Read>(r: &mut R, name: &str, len: Option<u64>) -> Result<Array<T>> {
    let (shape, bytes, _) = read_header::<T, R>(r, name, len)?;
    // read_header checked that `bytes` fits in usize.
    let n = bytes as usize / size_of::<T>();
    // Small arrays fit anywhere; /proc/meminfo is read only for the large ones.
    if len.is_some() && bytes > 1 << 26 {
        // The file holds what the header declares (checked above), so this is its true size.
        crate::io::check_memory(
            bytes as f64,
            &format!("reading {name} ({shape:?})"),
            "free memory, or split the array",
        )?;
    }
    let data = read_data(r, n, len.is_some()).with_context(|| {
        format!("{name}: truncated: shape {shape:?} needs {bytes} bytes of data")
    })?;
    Ok(Array { shape, data })
}

/// Reads a `.npy` from any reader (its length unknown); `name` is used in errors.
pub fn read_from<T: NpyElem, R: Read>(r: &mut R, name: &str) -> Result<Array<T>> {
    read_sized(r, name, None)
}

/// Reads a `.npy` held in memory; `name` is used in errors.
pub fn from_bytes<T: NpyElem>(bytes: &[u8], name: &str) -> Result<Array<T>> {
    read_sized(&mut &bytes[..], name, Some(bytes.len() as u64))
}

/// Writes `a` to `path` as `.npy`, atomically (a temporary file renamed into place).
pub fn write<T: NpyElem>(path: &Path, a: &Array<T>) -> Result<()> {
    write_atomic(path, |w| write_to(w, a))
}

/// Reads a `.npy` file.
pub fn read<T: NpyElem>(path: &Path) -> Result<Array<T>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata()?.len();
    read_sized(
        &mut BufReader::new(f),
        &path.display().to_string(),
        Some(len),
    )
}

/// One named array of an `.npz` archive.
pub enum NpzEntry<'a> {
    F32(&'a str, &'a Array<f32>),
    I64(&'a str, &'a Array<i64>),
    I8(&'a str, &'a Array<i8>),
}

/// A writer that keeps the first error and lets every later write and seek succeed without
/// effect. The zip writer finalises its archive when dropped and, when that fails, prints a
/// raw `ZipWriter drop failed: Io(...)` to stderr; behind this sink it cannot fail, and the
/// one error comes back through [`write_npz`], with the file named.
struct FirstError<W> {
    inner: W,
    error: Option<std::io::Error>,
    pos: u64,
}

impl<W: Write + std::io::Seek> Write for FirstError<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.error.is_none() {
            match self.inner.write(buf) {
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) => self.error = Some(e),
            }
        }
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.error.is_none() {
            if let Err(e) = self.inner.flush() {
                self.error = Some(e);
            }
        }
        Ok(())
    }
}

impl<W: Write + std::io::Seek> std::io::Seek for FirstError<W> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        if self.error.is_none() {
            match self.inner.seek(to) {
                Ok(p) => {
                    self.pos = p;
                    return Ok(p);
                }
                Err(e) => self.error = Some(e),
            }
        }
        // Positions stay consistent for the zip writer, which only ever seeks to offsets it
        // has written.
        self.pos = match to {
            std::io::SeekFrom::Start(p) => p,
            std::io::SeekFrom::Current(d) => self.pos.saturating_add_signed(d),
            std::io::SeekFrom::End(d) => self.pos.saturating_add_signed(d),
        };
        Ok(self.pos)
    }
}

/// Writes an uncompressed `.npz` (numpy.savez) atomically; numpy.load reads it back.
pub fn write_npz(path: &Path, entries: &[NpzEntry]) -> Result<()> {
    write_atomic(path, |file| {
        let mut sink = FirstError {
            inner: file,
            error: None,
            pos: 0,
        };
        fill_npz(&mut sink, entries)?;
        match sink.error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    })
}

fn fill_npz<W: Write + std::io::Seek>(file: W, entries: &[NpzEntry]) -> Result<()> {
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
            NpzEntry::I8(n, a) => {
                z.start_file(format!("{n}.npy"), opts)?;
                write_to(&mut z, a)?;
            }
        }
    }
    z.finish()?;
    Ok(())
}

/// Deflate expands at most 1032:1, which bounds a compressed entry's true size.
pub const MAX_DEFLATE_RATIO: u64 = 1032;

/// The uncompressed size a zip entry may truly have: its declared size, when the compressed
/// size makes that possible, else an error naming the entry.
pub(crate) fn zip_entry_size(f: &zip::read::ZipFile<'_, impl Read>, what: &str) -> Result<u64> {
    let (size, packed) = (f.size(), f.compressed_size());
    let most = match f.compression() {
        zip::CompressionMethod::Stored => packed,
        _ => packed.saturating_mul(MAX_DEFLATE_RATIO),
    };
    if size > most {
        bail!(
            "{what}: zip entry declares {} uncompressed but holds {} compressed ({:?}), which cannot expand that far; the archive is corrupted",
            human_bytes(size as u128),
            human_bytes(packed as u128),
            f.compression()
        );
    }
    Ok(size)
}

/// Checks the entry counts of a zip's end-of-central-directory record against the file size:
/// the zip crate sizes a table by them before reading any entry (up to 65535 x ~200 bytes,
/// however small the file). Zip64 counts are left to the crate, which bounds them itself.
pub(crate) fn check_zip_end<R: Read + std::io::Seek>(r: &mut R, name: &str) -> Result<()> {
    use std::io::SeekFrom;
    let len = r.seek(SeekFrom::End(0))?;
    // The record is 22 bytes plus a comment of at most 65535.
    let tail_len = len.min(22 + 65535);
    r.seek(SeekFrom::Start(len - tail_len))?;
    let mut tail = Vec::with_capacity(tail_len as usize);
    r.by_ref().take(tail_len).read_to_end(&mut tail)?;
    r.seek(SeekFrom::Start(0))?;
    // The crate tries every record it finds, from the end: check each in the tail. (Data
    // that happens to hold the signature and a count too large for a file under 3 MB is
    // refused too; at 2^-32 per position, accepted.)
    let records = (0..tail.len().saturating_sub(21)).filter(|&p| &tail[p..p + 4] == b"PK\x05\x06");
    for p in records {
        // 0xFFFF means "see the zip64 record" only when a zip64 locator precedes this one.
        let zip64 = match p.checked_sub(20) {
            Some(l) => &tail[l..l + 4] == b"PK\x06\x07",
            // The locator would start before the bytes read: possible only if the file has more.
            None => len > tail_len,
        };
        for at in [p + 8, p + 10] {
            let count = u16::from_le_bytes([tail[at], tail[at + 1]]);
            // Each central directory entry takes at least 46 bytes.
            if !(zip64 && count == u16::MAX) && count as u64 * 46 > len {
                bail!(
                    "{name}: zip directory declares {count} entries but the file holds {len} bytes; the file is truncated or not a zip"
                );
            }
        }
    }
    Ok(())
}

/// Reads array `key` from an `.npz` archive (stored or deflated, as `numpy.savez[_compressed]`).
pub fn read_npz<T: NpyElem>(path: &Path, key: &str) -> Result<Array<T>> {
    let name = path.display().to_string();
    let f = File::open(path).with_context(|| format!("opening {name}"))?;
    read_npz_from(BufReader::new(f), &name, key)
}

/// Reads array `key` from an `.npz` archive held by any seekable reader; `name` is used in
/// errors.
pub fn read_npz_from<T: NpyElem, R: Read + std::io::Seek>(
    r: R,
    name: &str,
    key: &str,
) -> Result<Array<T>> {
    let mut r = r;
    check_zip_end(&mut r, name)?;
    let mut z =
        zip::ZipArchive::new(r).with_context(|| format!("{name}: not an .npz (zip) archive"))?;
    let names: Vec<String> = z
        .file_names()
        .map(|n| n.trim_end_matches(".npy").to_string())
        .collect();
    let mut entry = z
        .by_name(&format!("{key}.npy"))
        .with_context(|| format!("{name}: no array '{key}' (it holds {names:?})"))?;
    let what = format!("{name}[{key}]");
    let size = zip_entry_size(&entry, &what)?;
    let array = read_sized(&mut entry, &what, Some(size))?;
    // Reading past the end makes the zip reader check the CRC, and shows an entry longer
    // than its header says.
    let mut rest = [0u8; 1];
    if entry
        .read(&mut rest)
        .with_context(|| format!("{what}: corrupted zip entry"))?
        != 0
    {
        bail!("{what}: zip entry holds more than the {size} bytes its header declares");
    }
    Ok(array)
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

    /// A 74-byte `.npy` whose header claims 10^12 x 2048 floats (8 PB): an error naming the sizes,
    /// not a capacity-overflow panic or an abort.
    #[test]
    fn huge_shape_in_a_tiny_file_is_a_clear_error() {
        let dict = format!(
            "{:63}\n",
            "{'descr': '<f4', 'shape': (1000000000000, 2048), }"
        );
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        b.extend_from_slice(dict.as_bytes());
        assert_eq!(b.len(), 74);
        let e = from_bytes::<f32>(&b, "feats.npy").unwrap_err().to_string();
        assert!(
            e.contains("feats.npy")
                && e.contains("1000000000000 x 2048")
                && e.contains("8.2 PB")
                && e.contains("holds 74 bytes"),
            "{e}"
        );
        // The same through a file, and a product that overflows even u128 maths in usize.
        let dir = std::env::temp_dir().join(format!("insclr-npy-huge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("feats.npy"), &b).unwrap();
        let e = format!("{:#}", read::<f32>(&dir.join("feats.npy")).unwrap_err());
        assert!(e.contains("holds 74 bytes"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
        let big = "{'descr': '<f4', 'fortran_order': False, 'shape': (18446744073709551615, 18446744073709551615, 4), }";
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(big.len() as u16 + 1).to_le_bytes());
        b.extend_from_slice(big.as_bytes());
        b.push(b'\n');
        let e = from_bytes::<f32>(&b, "x.npy").unwrap_err().to_string();
        assert!(e.contains("more than 2^128 bytes"), "{e}");
        // A stream of unknown length is read in bounded chunks, so the lie shows as truncation.
        let e = format!(
            "{:#}",
            read_from::<f32, _>(&mut &b[..], "s.npy").unwrap_err()
        );
        assert!(e.contains("s.npy"), "{e}");
    }

    /// A file one row short of its header is short; one a row longer is longer: both sides
    /// of the message count the whole file (it used to set the data bytes beside the file's
    /// size, so a short file read as longer than declared and still "truncated").
    #[test]
    fn a_row_short_or_a_row_long_is_said_so() {
        let mut v = Vec::new();
        write_to(&mut v, &Array::new(vec![3, 2], vec![1.0f32; 6]).unwrap()).unwrap();
        let e = from_bytes::<f32>(&v[..v.len() - 8], "a.npy")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("152 bytes with its 128-byte header")
                && e.contains("holds 144 bytes: 8 bytes (1 row(s)) short of what it declares"),
            "{e}"
        );
        let mut long = v.clone();
        long.extend_from_slice(&[0; 8]);
        let e = from_bytes::<f32>(&long, "a.npy").unwrap_err().to_string();
        assert!(
            e.contains("holds 160 bytes, 8 more than that (1 row(s)): longer than declared"),
            "{e}"
        );
    }

    #[test]
    fn header_length_past_the_file_and_trailing_bytes_are_errors() {
        let mut v = Vec::new();
        write_to(&mut v, &Array::new(vec![2], vec![1.0f32, 2.0]).unwrap()).unwrap();
        let mut long = v.clone();
        long[8..10].copy_from_slice(&u16::MAX.to_le_bytes());
        let e = from_bytes::<f32>(&long, "a.npy").unwrap_err().to_string();
        assert!(e.contains("65535 header bytes"), "{e}");
        let mut v3 = v.clone();
        v3[6] = 7;
        let e = from_bytes::<f32>(&v3, "a.npy").unwrap_err().to_string();
        assert!(e.contains("version 7"), "{e}");
        v.extend_from_slice(&[0; 4]);
        let e = from_bytes::<f32>(&v, "a.npy").unwrap_err().to_string();
        assert!(e.contains("4 more than that"), "{e}");
    }

    #[test]
    fn npz_entry_declaring_more_than_it_holds_is_named() {
        let a = Array::new(vec![4], vec![0i64, -1, 1 << 40, 7]).unwrap();
        let mut npy = Vec::new();
        write_to(&mut npy, &a).unwrap();
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut z = zip::ZipWriter::new(&mut buf);
        let o = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file("neighbor.npy", o).unwrap();
        z.write_all(&npy).unwrap();
        z.finish().unwrap();
        let mut b = buf.into_inner();
        // Uncompressed size in the local header (offset 22) and the central directory entry
        // (24 into it; the end record, last 22 bytes, holds its offset at 16): 4 GB.
        b[22..26].copy_from_slice(&u32::MAX.to_le_bytes());
        let eocd = b.len() - 22;
        let cd = u32::from_le_bytes(b[eocd + 16..eocd + 20].try_into().unwrap()) as usize;
        b[cd + 24..cd + 28].copy_from_slice(&u32::MAX.to_le_bytes());
        let r = read_npz_from::<i64, _>(std::io::Cursor::new(&b), "p.npz", "neighbor");
        let e = format!("{:#}", r.unwrap_err());
        assert!(
            e.contains("p.npz[neighbor]") && e.contains("cannot expand"),
            "{e}"
        );
    }
}
