//! Reads revisitop's official ground truth (`gnd_roxford5k.pkl`, `gnd_rparis6k.pkl`): a pickled
//! dict `{imlist, qimlist, gnd: [{easy, hard, junk, bbx}]}`. The per-query entries are numpy
//! arrays in the distributed files (int64 indices; `bbx` a float array or list), and plain lists
//! in files re-saved by other tools; both are read. numpy arrays are decoded from the symbolic
//! tree of [`crate::io::pickle`] as numpy pickles them: `_reconstruct` + `BUILD` with state
//! `(version, shape, dtype, fortran, raw bytes)`, protocol 5's `_frombuffer`, and `scalar`.

use super::revisited::{Gnd, QueryGnd};
use crate::io::pickle::{self, Value};
use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;

/// A numpy dtype reduced to what decoding needs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Dtype {
    /// Kind `i`, `u`, `f` or `b`, item size in bytes, big-endian.
    Num { kind: u8, size: usize, big: bool },
    /// `O`: Python objects (the raw state is a list).
    Object,
}

fn is_numpy_global(v: &Value, name: &str) -> bool {
    matches!(v, Value::Global { module, name: n }
        if n == name && (module == "numpy" || module.starts_with("numpy.")))
}

/// `numpy.dtype('<i8', False, True)` (+ `BUILD` state whose second item is the byte order).
fn dtype(v: &Value) -> Result<Dtype> {
    let (inner, state) = match v {
        Value::Build { obj, state } => (obj.as_ref(), Some(state.as_ref())),
        other => (other, None),
    };
    let Value::Reduce { callable, args } = inner else {
        bail!("expected a numpy dtype, found a {}", inner.kind());
    };
    if !is_numpy_global(callable, "dtype") {
        bail!("expected numpy.dtype(...), found a call of {callable:?}");
    }
    let code = args
        .as_seq()
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("numpy.dtype without a type code: {args:?}"))?;
    let order = state
        .and_then(Value::as_seq)
        .and_then(|s| s.get(1))
        .and_then(Value::as_str)
        .unwrap_or("|");
    let code = code.trim_start_matches(['<', '>', '|', '=']);
    if code == "O" || code == "O8" {
        return Ok(Dtype::Object);
    }
    let kind = code.as_bytes().first().copied().unwrap_or(b'?');
    let size: usize = code.get(1..).and_then(|s| s.parse().ok()).unwrap_or(0);
    let ok = matches!(
        (kind, size),
        (b'i' | b'u', 1 | 2 | 4 | 8) | (b'f', 4 | 8) | (b'b', 1)
    );
    if !ok {
        bail!("numpy dtype '{code}' is not supported here (integers, floats and bools are)");
    }
    Ok(Dtype::Num {
        kind,
        size,
        big: order == ">",
    })
}

fn decode_raw(dt: Dtype, raw: &[u8]) -> Result<Vec<f64>> {
    let Dtype::Num { kind, size, big } = dt else {
        bail!("object arrays carry a list, not raw bytes");
    };
    if raw.len() % size != 0 {
        bail!(
            "numpy array data of {} bytes is not a multiple of its item size {size}",
            raw.len()
        );
    }
    Ok(raw
        .chunks(size)
        .map(|c| {
            let mut b = [0u8; 8];
            if big {
                for (i, &x) in c.iter().rev().enumerate() {
                    b[i] = x;
                }
            } else {
                b[..size].copy_from_slice(c);
            }
            match (kind, size) {
                (b'f', 4) => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
                (b'f', _) => f64::from_le_bytes(b),
                (b'u', _) | (b'b', _) => u64::from_le_bytes(b) as f64,
                // Sign-extend from `size` bytes.
                _ => {
                    let shift = 64 - 8 * size as u32;
                    ((i64::from_le_bytes(b) << shift) >> shift) as f64
                }
            }
        })
        .collect())
}

/// The numbers of a 1-D numpy array, a numpy scalar, a Python number, or a list / tuple of
/// any of those (flattened).
pub fn numbers(v: &Value) -> Result<Vec<f64>> {
    match v {
        Value::Int(i) => Ok(vec![*i as f64]),
        Value::Float(f) => Ok(vec![*f]),
        Value::Bool(b) => Ok(vec![*b as u8 as f64]),
        Value::List(items) | Value::Tuple(items) => {
            let mut out = Vec::with_capacity(items.len());
            for it in items {
                out.extend(numbers(it)?);
            }
            Ok(out)
        }
        // ndarray: _reconstruct(ndarray, (0,), b'b') then BUILD (version, shape, dtype, fortran, raw).
        Value::Build { obj, state } => {
            let is_array = matches!(obj.as_ref(), Value::Reduce { callable, .. } if is_numpy_global(callable, "_reconstruct"));
            if !is_array {
                bail!("expected a numpy array, found a built {:?}", obj);
            }
            let st = state
                .as_seq()
                .ok_or_else(|| anyhow!("numpy array state is a {}", state.kind()))?;
            // Version 1 states start with the version number; older ones do not.
            let st = if st.len() == 5 { &st[1..] } else { st };
            let [shape, dt, fortran, raw] = st else {
                bail!("numpy array state has {} items, expected 4 or 5", st.len());
            };
            let shape: Vec<f64> = numbers(shape)?;
            if shape.len() > 1 && fortran.as_int() == Some(1) {
                bail!("Fortran-ordered numpy arrays of more than one dimension are not supported");
            }
            let dt = dtype(dt)?;
            let vals = match (dt, raw) {
                (Dtype::Object, Value::List(_)) => numbers(raw)?,
                (Dtype::Object, other) => bail!("object array data is a {}", other.kind()),
                (_, Value::Bytes(b)) => decode_raw(dt, b)?,
                // Python 3 at protocol 2 writes empty bytes as `builtins.bytes()`.
                (_, Value::Reduce { callable, args })
                    if callable.is_global("builtins", "bytes")
                        && args.as_seq().is_some_and(|a| a.is_empty()) =>
                {
                    Vec::new()
                }
                (_, other) => bail!("numpy array data is a {}, expected bytes", other.kind()),
            };
            let n: f64 = shape.iter().product();
            if vals.len() as f64 != n {
                bail!("numpy array of shape {shape:?} holds {} values", vals.len());
            }
            Ok(vals)
        }
        Value::Reduce { callable, args } => {
            let a = args.as_seq().unwrap_or(&[]);
            if is_numpy_global(callable, "_frombuffer") {
                // Protocol 5: _frombuffer(buffer, dtype, shape, order).
                let (Some(buf), Some(dt)) = (a.first().and_then(Value::as_bytes), a.get(1)) else {
                    bail!("numpy _frombuffer with unexpected arguments {args:?}");
                };
                decode_raw(dtype(dt)?, buf)
            } else if is_numpy_global(callable, "scalar") {
                // numpy scalar: scalar(dtype, raw bytes).
                let (Some(dt), Some(buf)) = (a.first(), a.get(1).and_then(Value::as_bytes)) else {
                    bail!("numpy scalar with unexpected arguments {args:?}");
                };
                decode_raw(dtype(dt)?, buf)
            } else {
                bail!("expected numbers, found a call of {callable:?}")
            }
        }
        other => bail!("expected numbers, found a {}", other.kind()),
    }
}

fn indices(v: Option<&Value>, what: &str) -> Result<Vec<usize>> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    numbers(v)
        .with_context(|| format!("reading '{what}'"))?
        .into_iter()
        .map(|x| {
            if x >= 0.0 && x.fract() == 0.0 {
                Ok(x as usize)
            } else {
                Err(anyhow!("'{what}' holds {x}, which is not an image index"))
            }
        })
        .collect()
}

fn strings(v: Option<&Value>, what: &str) -> Result<Vec<String>> {
    let items = v
        .and_then(Value::as_seq)
        .ok_or_else(|| anyhow!("no list '{what}'"))?;
    items
        .iter()
        .map(|s| match s {
            Value::Str(s) => Ok(s.clone()),
            Value::Bytes(b) => Ok(String::from_utf8_lossy(b).into_owned()),
            other => Err(anyhow!("'{what}' holds a {}, expected names", other.kind())),
        })
        .collect()
}

/// Interprets an unpickled revisitop ground truth; `name` is used in errors.
pub fn gnd_from_value(root: &Value, name: &str) -> Result<Gnd> {
    let root = root.unbuilt();
    if root.as_dict().is_none() {
        bail!(
            "{name}: the pickle holds a {}, not revisitop's dict {{imlist, qimlist, gnd}}",
            root.kind()
        );
    }
    let imlist = strings(root.get("imlist"), "imlist").with_context(|| name.to_string())?;
    let qimlist = strings(root.get("qimlist"), "qimlist").with_context(|| name.to_string())?;
    let entries = root
        .get("gnd")
        .and_then(Value::as_seq)
        .ok_or_else(|| anyhow!("{name}: no list 'gnd'"))?;
    let mut gnd = Vec::with_capacity(entries.len());
    for (q, e) in entries.iter().enumerate() {
        let e = e.unbuilt();
        let ctx = || format!("{name}: gnd[{q}]");
        if e.as_dict().is_none() {
            bail!("{}: a {}, expected a dict", ctx(), e.kind());
        }
        let bbx = match e.get("bbx") {
            None | Some(Value::None) => None,
            Some(b) => {
                let v = numbers(b).with_context(|| format!("{}: reading 'bbx'", ctx()))?;
                let arr: [f64; 4] = v.try_into().map_err(|v: Vec<f64>| {
                    anyhow!("{}: bbx has {} numbers, expected 4", ctx(), v.len())
                })?;
                Some(arr)
            }
        };
        gnd.push(QueryGnd {
            easy: indices(e.get("easy"), "easy").with_context(ctx)?,
            hard: indices(e.get("hard"), "hard").with_context(ctx)?,
            junk: indices(e.get("junk"), "junk").with_context(ctx)?,
            bbx,
        });
    }
    let g = Gnd {
        imlist,
        qimlist,
        gnd,
    };
    g.validate(name)?;
    Ok(g)
}

/// Reads `gnd_roxford5k.pkl` / `gnd_rparis6k.pkl` (or any pickle of the same structure).
pub fn read(path: &Path) -> Result<Gnd> {
    let v = pickle::read_file(path)?;
    gnd_from_value(&v, &path.display().to_string())
}

/// Reads a revisitop ground-truth pickle held in memory; `name` is used in errors.
pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Gnd> {
    let v = pickle::parse(bytes).with_context(|| format!("parsing pickle {name}"))?;
    gnd_from_value(&v, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-assembles pickle opcodes the way CPython + numpy write them (no numpy needed).
    #[derive(Default)]
    struct P(Vec<u8>);

    impl P {
        fn op(&mut self, b: &[u8]) -> &mut Self {
            self.0.extend_from_slice(b);
            self
        }
        fn str(&mut self, s: &str) -> &mut Self {
            self.op(b"X")
                .op(&(s.len() as u32).to_le_bytes())
                .op(s.as_bytes())
        }
        fn int(&mut self, i: i32) -> &mut Self {
            self.op(b"J").op(&i.to_le_bytes())
        }
        fn float(&mut self, f: f64) -> &mut Self {
            self.op(b"G").op(&f.to_be_bytes())
        }
        fn global(&mut self, m: &str, n: &str) -> &mut Self {
            self.op(b"c")
                .op(m.as_bytes())
                .op(b"\n")
                .op(n.as_bytes())
                .op(b"\n")
        }
        /// Protocol 3+ bytes, or protocol 2's `_codecs.encode(latin1 str, "latin1")`.
        fn bytes(&mut self, b: &[u8], p2: bool) -> &mut Self {
            if p2 && b.is_empty() {
                self.global("__builtin__", "bytes").op(b")R")
            } else if p2 {
                let latin1: String = b.iter().map(|&c| c as char).collect();
                self.global("_codecs", "encode")
                    .str(&latin1)
                    .str("latin1")
                    .op(b"\x86R")
            } else {
                self.op(b"B").op(&(b.len() as u32).to_le_bytes()).op(b)
            }
        }
        fn dtype(&mut self, code: &str, order: &str) -> &mut Self {
            self.global("numpy", "dtype").str(code).op(b"\x89\x88\x87R");
            self.op(b"(")
                .int(3)
                .str(order)
                .op(b"NNN")
                .int(-1)
                .int(-1)
                .int(0)
                .op(b"tb")
        }
        /// `numpy.array(vals, dtype)` as numpy's `__reduce__` pickles it.
        fn array(&mut self, raw: &[u8], n: usize, code: &str, order: &str, p2: bool) -> &mut Self {
            self.global("numpy.core.multiarray", "_reconstruct")
                .global("numpy", "ndarray")
                .int(0)
                .op(b"\x85")
                .bytes(b"b", p2)
                .op(b"\x87R(")
                .int(1)
                .int(n as i32)
                .op(b"\x85")
                .dtype(code, order)
                .op(b"\x89")
                .bytes(raw, p2)
                .op(b"tb")
        }
        fn i64s(&mut self, v: &[i64], p2: bool) -> &mut Self {
            let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            self.array(&raw, v.len(), "i8", "<", p2)
        }
        fn list_ints(&mut self, v: &[i32]) -> &mut Self {
            self.op(b"](");
            for &x in v {
                self.int(x);
            }
            self.op(b"e")
        }
    }

    fn gnd_pickle(bad_index: bool) -> Vec<u8> {
        let mut p = P::default();
        p.op(b"\x80\x03}(").str("gnd").op(b"](");
        // Query 0: numpy int64 arrays (an empty junk), float64 bbx array.
        p.op(b"}(").str("bbx");
        let raw: Vec<u8> = [10.5f64, 20.0, 110.25, 220.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        p.array(&raw, 4, "f8", "<", false);
        p.str("easy")
            .i64s(&[0, if bad_index { 9 } else { 3 }], false);
        p.str("hard").i64s(&[2], false);
        p.str("junk").i64s(&[], false).op(b"u");
        // Query 1: plain lists, bbx a list of floats.
        p.op(b"}(")
            .str("bbx")
            .op(b"](")
            .float(1.0)
            .float(2.0)
            .float(3.0)
            .float(4.5)
            .op(b"e");
        p.str("easy")
            .list_ints(&[1])
            .str("hard")
            .list_ints(&[])
            .str("junk")
            .list_ints(&[0, 2])
            .op(b"u");
        // Query 2: protocol-2 style bytes, big-endian int32, a memoised dtype reused via BINGET.
        p.op(b"}(").str("bbx").op(b"N").str("easy");
        let be32: Vec<u8> = [3i32, 1].iter().flat_map(|x| x.to_be_bytes()).collect();
        p.global("numpy.core.multiarray", "_reconstruct")
            .global("numpy", "ndarray")
            .int(0)
            .op(b"\x85");
        p.bytes(b"b", true)
            .op(b"\x87R(")
            .int(1)
            .int(2)
            .op(b"\x85")
            .dtype("i4", ">")
            .op(b"q\x07");
        p.op(b"\x89").bytes(&be32, true).op(b"tb");
        p.str("hard")
            .global("numpy.core.multiarray", "_reconstruct")
            .global("numpy", "ndarray");
        p.int(0)
            .op(b"\x85")
            .bytes(b"b", true)
            .op(b"\x87R(")
            .int(1)
            .int(1)
            .op(b"\x85h\x07\x89");
        p.bytes(&2i32.to_be_bytes(), true).op(b"tb");
        p.str("junk").i64s(&[], true).op(b"u");
        p.op(b"e");
        p.str("imlist")
            .op(b"](")
            .str("a")
            .str("b")
            .str("c")
            .str("d")
            .op(b"e");
        p.str("qimlist")
            .op(b"](")
            .str("q0")
            .str("q1")
            .str("q2")
            .op(b"e");
        p.op(b"u.");
        p.0
    }

    #[test]
    fn reads_numpy_arrays_and_lists_in_the_official_structure() {
        let v = pickle::parse(&gnd_pickle(false)).unwrap();
        let g = gnd_from_value(&v, "gnd_test.pkl").unwrap();
        assert_eq!(g.imlist, ["a", "b", "c", "d"]);
        assert_eq!(g.qimlist, ["q0", "q1", "q2"]);
        let want = [
            QueryGnd {
                easy: vec![0, 3],
                hard: vec![2],
                junk: vec![],
                bbx: Some([10.5, 20.0, 110.25, 220.0]),
            },
            QueryGnd {
                easy: vec![1],
                hard: vec![],
                junk: vec![0, 2],
                bbx: Some([1.0, 2.0, 3.0, 4.5]),
            },
            QueryGnd {
                easy: vec![3, 1],
                hard: vec![2],
                junk: vec![],
                bbx: None,
            },
        ];
        assert_eq!(g.gnd, want);
        let dir = std::env::temp_dir().join(format!("insclr-gndpkl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gnd_roxford5k.pkl");
        std::fs::write(&path, gnd_pickle(false)).unwrap();
        assert_eq!(read(&path).unwrap(), g);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_indices_and_shapes_are_errors() {
        let v = pickle::parse(&gnd_pickle(true)).unwrap();
        let err = format!("{:#}", gnd_from_value(&v, "gnd_test.pkl").unwrap_err());
        assert!(err.contains("database image 9"), "{err}");
        assert!(gnd_from_value(&Value::List(vec![]), "x.pkl").is_err());
        let mut p = P::default();
        p.op(b"\x80\x03")
            .op(b"](")
            .float(1.0)
            .float(2.0)
            .float(0.5)
            .op(b"e.");
        let v = pickle::parse(&p.0).unwrap();
        assert_eq!(numbers(&v).unwrap(), vec![1.0, 2.0, 0.5]);
        assert!(indices(Some(&v), "easy").is_err());
    }

    /// A dtype code that is empty or starts with a multi-byte character used to panic on
    /// `code[1..]`.
    #[test]
    fn empty_or_non_ascii_dtype_codes_are_errors() {
        for code in ["", "<", "\u{e9}8"] {
            let mut p = P::default();
            p.op(b"\x80\x02").dtype(code, "<").op(b".");
            let v = pickle::parse(&p.0).unwrap();
            let e = dtype(&v).unwrap_err().to_string();
            assert!(e.contains("not supported"), "{code:?}: {e}");
        }
        assert!(from_bytes(b"\x80\x02N.", "g.pkl").is_err());
    }
}
