//! A small pickle reader (protocols 0-5, as CPython writes them) that turns a pickle into a
//! [`Value`] tree. It never imports or calls anything: globals, reductions, `BUILD`s and
//! persistent ids stay symbolic, for the caller to interpret (PyTorch checkpoints, revisitop
//! ground-truth files, numpy arrays).
//!
//! The VM keeps its objects in an arena while it runs, so that a memoised container that is
//! filled later (`EMPTY_DICT, BINPUT, MARK, ..., SETITEMS`) and a memoised object that is
//! `BUILD` later are seen filled / built through every reference, as in Python. The tree is
//! materialised at `STOP`; a shared object appears once per reference (a copy), a cycle is an
//! error.
//!
//! Two normalisations keep callers simple, and are the only places where this reader deviates
//! from a literal opcode tree: `collections.OrderedDict()` (a `REDUCE` with no arguments) is a
//! [`Value::Dict`], since `Dict` keeps insertion order anyway; `_codecs.encode(s, "latin1")`,
//! which is how Python 3 writes `bytes` at protocols 0-2, is [`Value::Bytes`]; and
//! `set([...])` / `frozenset([...])` (protocols 0-3) are [`Value::Set`], as at protocol 4.
//! Python 2 module names (`__builtin__`, `copy_reg`) are read as their Python 3 names.

use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;

/// A Python value as a pickle describes it, without executing anything.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A wider integer (`LONG1` / `LONG4`), as little-endian two's-complement bytes, e.g.
    /// legacy torch's magic number.
    BigInt(Vec<u8>),
    /// A float.
    Float(f64),
    /// A unicode string.
    Str(String),
    /// `bytes`, `bytearray`, or a Python 2 `str` (`STRING`/`BINSTRING` opcodes).
    Bytes(Vec<u8>),
    /// A list.
    List(Vec<Value>),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A dict (or OrderedDict) as its (key, value) pairs in insertion order.
    Dict(Vec<(Value, Value)>),
    /// A set or frozenset, as its items in pickle order.
    Set(Vec<Value>),
    /// A reference to `module.name` (`GLOBAL` / `STACK_GLOBAL` / `INST`).
    Global {
        /// Module path, e.g. `torch._utils`.
        module: String,
        /// Attribute name, e.g. `_rebuild_tensor_v2`.
        name: String,
    },
    /// `callable(*args)` (`REDUCE`, `INST`, `OBJ`); `args` is normally a tuple.
    Reduce {
        /// What is called (normally a [`Value::Global`]).
        callable: Box<Value>,
        /// Its arguments.
        args: Box<Value>,
    },
    /// `cls.__new__(cls, *args, **kwargs)` (`NEWOBJ`, `NEWOBJ_EX`; `kwargs` only for the latter).
    NewObj {
        /// The class.
        cls: Box<Value>,
        /// Positional arguments (a tuple).
        args: Box<Value>,
        /// Keyword arguments (a dict), for `NEWOBJ_EX`.
        kwargs: Option<Box<Value>>,
    },
    /// `obj.__setstate__(state)` or `obj.__dict__.update(state)` (`BUILD`).
    Build {
        /// The object being built.
        obj: Box<Value>,
        /// Its state (often a dict of attributes).
        state: Box<Value>,
    },
    /// An object the pickler stored out of band (`PERSID` / `BINPERSID`), e.g. a torch storage.
    PersistentId(Box<Value>),
}

impl Value {
    /// A short name of the variant, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Set(_) => "set",
            Value::Global { .. } => "global",
            Value::Reduce { .. } => "reduce",
            Value::NewObj { .. } => "newobj",
            Value::Build { .. } => "build",
            Value::PersistentId(_) => "persistent id",
        }
    }

    /// The string, if this is a `str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is an `int` (or a `bool`, as in Python).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// The number as f64, if this is a `float` or an `int`.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// The bytes, if this is `bytes`.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The items, if this is a list or a tuple.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::List(v) | Value::Tuple(v) => Some(v),
            _ => None,
        }
    }

    /// The (key, value) pairs, if this is a dict.
    pub fn as_dict(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// The value under string key `key`, if this is a dict that has it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_dict()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// True if this is the global `module.name`.
    pub fn is_global(&self, module: &str, name: &str) -> bool {
        matches!(self, Value::Global { module: m, name: n } if m == module && n == name)
    }

    /// The object under any number of `BUILD`s (e.g. a state dict whose `_metadata` was set
    /// by `BUILD`).
    pub fn unbuilt(&self) -> &Value {
        let mut v = self;
        while let Value::Build { obj, .. } = v {
            v = obj;
        }
        v
    }
}

/// Reads the pickle that fills the whole of `bytes` (trailing bytes are an error).
pub fn parse(bytes: &[u8]) -> Result<Value> {
    let (v, used) = parse_prefix(bytes)?;
    if used != bytes.len() {
        bail!(
            "pickle ends (STOP) at byte {used} but the input has {} bytes",
            bytes.len()
        );
    }
    Ok(v)
}

/// Reads one pickle from the start of `bytes`; returns it and the number of bytes it used
/// (files such as legacy `.pth` hold several pickles back to back).
pub fn parse_prefix(bytes: &[u8]) -> Result<(Value, usize)> {
    let mut vm = Vm::new(bytes);
    let root = vm.run()?;
    let v = vm.materialise(root)?;
    Ok((v, vm.pos))
}

/// Reads the pickle file at `path` (one pickle, the whole file).
pub fn read_file(path: &Path) -> Result<Value> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading pickle {}", path.display()))?;
    parse(&bytes).with_context(|| format!("parsing pickle {}", path.display()))
}

/// An object in the VM's arena; children are arena indices.
#[derive(Clone, Debug)]
enum Node {
    None,
    Bool(bool),
    Int(i64),
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<usize>),
    Tuple(Vec<usize>),
    Dict(Vec<(usize, usize)>),
    Set(Vec<usize>),
    Global(String, String),
    Reduce(usize, usize),
    NewObj(usize, usize, Option<usize>),
    Build(usize, usize),
    PersId(usize),
}

/// Stack entry: an object or a MARK.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Slot {
    Obj(usize),
    Mark,
}

struct Vm<'a> {
    b: &'a [u8],
    pos: usize,
    /// Offset of the opcode being executed, for errors.
    op_at: usize,
    nodes: Vec<Node>,
    stack: Vec<Slot>,
    memo: std::collections::HashMap<u64, usize>,
}

/// Refuse to materialise more than this many bytes of values per byte of input, beyond a
/// fixed 64 MiB (shared references are copied; a hostile pickle could otherwise expand
/// exponentially, or copy one long string a million times).
const EXPANSION_LIMIT: usize = 64;
/// Deepest nesting accepted when materialising.
const MAX_DEPTH: usize = 512;

impl<'a> Vm<'a> {
    fn new(b: &'a [u8]) -> Self {
        Vm {
            b,
            pos: 0,
            op_at: 0,
            nodes: Vec::new(),
            stack: Vec::new(),
            memo: Default::default(),
        }
    }

    fn err(&self, what: impl std::fmt::Display) -> anyhow::Error {
        anyhow!(
            "pickle: {what} (opcode 0x{:02x} at byte {})",
            self.b.get(self.op_at).copied().unwrap_or(0),
            self.op_at
        )
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                self.err(format!(
                    "truncated: needs {n} more bytes at byte {}, input has {}",
                    self.pos,
                    self.b.len()
                ))
            })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    fn len_u64(&mut self) -> Result<usize> {
        let n = self.u64()?;
        usize::try_from(n).map_err(|_| self.err(format!("length {n} does not fit in memory")))
    }

    /// A text line up to (not including) `\n`, for protocol-0 opcodes.
    fn line(&mut self) -> Result<&'a [u8]> {
        let rest = &self.b[self.pos..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| self.err("truncated: text argument has no newline"))?;
        self.pos += n + 1;
        Ok(&rest[..n])
    }
    fn line_str(&mut self) -> Result<&'a str> {
        let l = self.line()?;
        std::str::from_utf8(l).map_err(|_| self.err("text argument is not UTF-8"))
    }

    fn utf8(&self, s: &[u8]) -> Result<String> {
        String::from_utf8(s.to_vec()).map_err(|_| self.err("string is not valid UTF-8"))
    }

    fn alloc(&mut self, n: Node) -> usize {
        self.nodes.push(n);
        self.nodes.len() - 1
    }
    fn push(&mut self, n: Node) {
        let i = self.alloc(n);
        self.stack.push(Slot::Obj(i));
    }
    fn pop(&mut self) -> Result<usize> {
        match self.stack.pop() {
            Some(Slot::Obj(i)) => Ok(i),
            Some(Slot::Mark) => Err(self.err("expected an object on the stack, found a MARK")),
            None => Err(self.err("stack underflow")),
        }
    }
    fn top(&self) -> Result<usize> {
        match self.stack.last() {
            Some(Slot::Obj(i)) => Ok(*i),
            Some(Slot::Mark) => Err(self.err("expected an object on the stack, found a MARK")),
            None => Err(self.err("stack underflow")),
        }
    }
    /// Pops everything above the topmost MARK, and the MARK.
    fn pop_mark(&mut self) -> Result<Vec<usize>> {
        let m = self
            .stack
            .iter()
            .rposition(|s| *s == Slot::Mark)
            .ok_or_else(|| self.err("no MARK on the stack"))?;
        let items = self.stack[m + 1..]
            .iter()
            .map(|s| match s {
                Slot::Obj(i) => *i,
                Slot::Mark => unreachable!("rposition found the last MARK"),
            })
            .collect();
        self.stack.truncate(m);
        Ok(items)
    }

    fn memo_put(&mut self, k: u64) -> Result<()> {
        let i = self.top()?;
        self.memo.insert(k, i);
        Ok(())
    }
    fn memo_get(&mut self, k: u64) -> Result<()> {
        let i = *self
            .memo
            .get(&k)
            .ok_or_else(|| self.err(format!("memo key {k} was never stored")))?;
        self.stack.push(Slot::Obj(i));
        Ok(())
    }

    fn int_from_le(&self, bytes: &[u8]) -> Result<i64> {
        if bytes.is_empty() {
            return Ok(0);
        }
        if bytes.len() > 8 {
            // Accept wide encodings of values that still fit (sign extension only).
            let (lo, hi) = bytes.split_at(8);
            let fill = if lo[7] & 0x80 != 0 { 0xff } else { 0 };
            if hi.iter().any(|&c| c != fill) {
                return Err(self.err(format!(
                    "integer of {} bytes does not fit in 64 bits",
                    bytes.len()
                )));
            }
            return self.int_from_le(lo);
        }
        let fill = if bytes[bytes.len() - 1] & 0x80 != 0 {
            0xff
        } else {
            0
        };
        let mut a = [fill; 8];
        a[..bytes.len()].copy_from_slice(bytes);
        Ok(i64::from_le_bytes(a))
    }

    fn add_items(&mut self, target: usize, items: Vec<usize>) -> Result<()> {
        match &mut self.nodes[target] {
            Node::List(v) | Node::Set(v) => {
                v.extend(items);
                Ok(())
            }
            other => {
                let k = node_kind(other);
                Err(self.err(format!("cannot append to a {k}")))
            }
        }
    }

    fn set_items(&mut self, target: usize, kv: Vec<usize>) -> Result<()> {
        if kv.len() % 2 != 0 {
            return Err(self.err(format!("odd number of items ({}) for a dict", kv.len())));
        }
        match &mut self.nodes[target] {
            Node::Dict(d) => {
                d.extend(kv.chunks_exact(2).map(|c| (c[0], c[1])));
                Ok(())
            }
            other => {
                let k = node_kind(other);
                Err(self.err(format!("cannot set items on a {k}")))
            }
        }
    }

    fn is_global(&self, i: usize, module: &str, name: &str) -> bool {
        matches!(&self.nodes[i], Node::Global(m, n) if m == module && n == name)
    }

    fn reduce(&mut self, callable: usize, args: usize) -> Result<()> {
        let empty_args = matches!(&self.nodes[args], Node::Tuple(v) if v.is_empty());
        if self.is_global(callable, "collections", "OrderedDict") && empty_args {
            self.push(Node::Dict(Vec::new()));
            return Ok(());
        }
        let set_fn = self.is_global(callable, "builtins", "set")
            || self.is_global(callable, "builtins", "frozenset");
        if set_fn {
            if let Node::Tuple(a) = &self.nodes[args] {
                if let [l] = a[..] {
                    if let Node::List(items) = &self.nodes[l] {
                        let items = items.clone();
                        self.push(Node::Set(items));
                        return Ok(());
                    }
                }
            }
        }
        if self.is_global(callable, "_codecs", "encode") {
            if let Node::Tuple(a) = &self.nodes[args] {
                if let [s, enc] = a[..] {
                    if let (Node::Str(s), Node::Str(enc)) = (&self.nodes[s], &self.nodes[enc]) {
                        if enc == "latin1" || enc == "latin-1" {
                            let bytes: Option<Vec<u8>> =
                                s.chars().map(|c| u8::try_from(c as u32).ok()).collect();
                            if let Some(b) = bytes {
                                self.push(Node::Bytes(b));
                                return Ok(());
                            }
                        }
                    }
                }
            }
        }
        self.push(Node::Reduce(callable, args));
        Ok(())
    }

    /// Runs to STOP; returns the arena index of the result.
    fn run(&mut self) -> Result<usize> {
        loop {
            self.op_at = self.pos;
            let op = self
                .take(1)
                .map_err(|_| self.err("truncated: input ends before STOP"))?[0];
            match op {
                0x80 => {
                    // PROTO
                    let p = self.u8()?;
                    if p > 5 {
                        return Err(self.err(format!("unsupported pickle protocol {p}")));
                    }
                }
                0x95 => {
                    // FRAME: a length hint only.
                    self.u64()?;
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Slot::Mark),
                b'0' => {
                    // POP
                    if self.stack.pop().is_none() {
                        return Err(self.err("stack underflow"));
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let i = self.top()?;
                    self.stack.push(Slot::Obj(i));
                }
                // Numbers.
                b'N' => self.push(Node::None),
                0x88 => self.push(Node::Bool(true)),
                0x89 => self.push(Node::Bool(false)),
                b'K' => {
                    let v = self.u8()? as i64;
                    self.push(Node::Int(v));
                }
                b'M' => {
                    let v = self.u16()? as i64;
                    self.push(Node::Int(v));
                }
                b'J' => {
                    let v = self.u32()? as i32 as i64;
                    self.push(Node::Int(v));
                }
                0x8a | 0x8b => {
                    // LONG1, LONG4
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        self.u32()? as usize
                    };
                    let s = self.take(n)?;
                    let v = match self.int_from_le(s) {
                        Ok(v) => Node::Int(v),
                        Err(_) => Node::BigInt(s.to_vec()),
                    };
                    self.push(v);
                }
                b'I' => {
                    let l = self.line_str()?;
                    let n = match l {
                        "00" => Node::Bool(false),
                        "01" => Node::Bool(true),
                        _ => Node::Int(
                            l.parse()
                                .map_err(|_| self.err(format!("bad INT text {l:?}")))?,
                        ),
                    };
                    self.push(n);
                }
                b'L' => {
                    let l = self.line_str()?;
                    let t = l.strip_suffix('L').unwrap_or(l);
                    let v = t.parse().map_err(|_| {
                        self.err(format!("LONG {l:?} is not an integer that fits in 64 bits"))
                    })?;
                    self.push(Node::Int(v));
                }
                b'G' => {
                    let s = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(s);
                    self.push(Node::Float(f64::from_be_bytes(a)));
                }
                b'F' => {
                    let l = self.line_str()?;
                    let v = l
                        .parse()
                        .map_err(|_| self.err(format!("bad FLOAT text {l:?}")))?;
                    self.push(Node::Float(v));
                }
                // Strings and bytes.
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.u32()? as usize,
                        0x8c => self.u8()? as usize,
                        _ => self.len_u64()?,
                    };
                    let s = self.take(n)?;
                    let s = self.utf8(s)?;
                    self.push(Node::Str(s));
                }
                b'V' => {
                    let l = self.line()?;
                    let s = raw_unicode_unescape(l).map_err(|e| self.err(e))?;
                    self.push(Node::Str(s));
                }
                b'B' | b'C' | 0x8e | 0x96 | b'T' | b'U' => {
                    // BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8, BINSTRING,
                    // SHORT_BINSTRING (a Python 2 str: bytes).
                    let n = match op {
                        b'B' => self.u32()? as usize,
                        b'T' => {
                            let n = self.u32()? as i32;
                            usize::try_from(n)
                                .map_err(|_| self.err(format!("negative length {n}")))?
                        }
                        b'C' | b'U' => self.u8()? as usize,
                        _ => self.len_u64()?,
                    };
                    let s = self.take(n)?.to_vec();
                    self.push(Node::Bytes(s));
                }
                b'S' => {
                    let l = self.line()?;
                    let s = string_unescape(l).map_err(|e| self.err(e))?;
                    self.push(Node::Bytes(s));
                }
                // Containers.
                b']' => self.push(Node::List(Vec::new())),
                b'}' => self.push(Node::Dict(Vec::new())),
                b')' => self.push(Node::Tuple(Vec::new())),
                0x8f => self.push(Node::Set(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Node::List(items));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Node::Tuple(items));
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Node::Set(items));
                }
                b'd' => {
                    let kv = self.pop_mark()?;
                    let d = self.alloc(Node::Dict(Vec::new()));
                    self.set_items(d, kv)?;
                    self.stack.push(Slot::Obj(d));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Node::Tuple(items));
                }
                b'a' => {
                    let v = self.pop()?;
                    let l = self.top()?;
                    self.add_items(l, vec![v])?;
                }
                b'e' | 0x90 => {
                    // APPENDS, ADDITEMS
                    let items = self.pop_mark()?;
                    let l = self.top()?;
                    self.add_items(l, items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?;
                    self.set_items(d, vec![k, v])?;
                }
                b'u' => {
                    let kv = self.pop_mark()?;
                    let d = self.top()?;
                    self.set_items(d, kv)?;
                }
                // Memo.
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'q' => {
                    let k = self.u8()? as u64;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.u32()? as u64;
                    self.memo_put(k)?;
                }
                b'p' => {
                    let l = self.line_str()?;
                    let k = l
                        .parse()
                        .map_err(|_| self.err(format!("bad PUT index {l:?}")))?;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.u8()? as u64;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.u32()? as u64;
                    self.memo_get(k)?;
                }
                b'g' => {
                    let l = self.line_str()?;
                    let k = l
                        .parse()
                        .map_err(|_| self.err(format!("bad GET index {l:?}")))?;
                    self.memo_get(k)?;
                }
                // Objects.
                b'c' => {
                    let module = py3_module(self.line_str()?).to_string();
                    let name = self.line_str()?.to_string();
                    self.push(Node::Global(module, name));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&self.nodes[module], &self.nodes[name]) {
                        (Node::Str(m), Node::Str(n)) => {
                            let g = Node::Global(m.clone(), n.clone());
                            self.push(g);
                        }
                        _ => return Err(self.err("STACK_GLOBAL needs two strings")),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.reduce(callable, args)?;
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.push(Node::NewObj(cls, args, None));
                }
                0x92 => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.push(Node::NewObj(cls, args, Some(kwargs)));
                }
                b'i' => {
                    let module = py3_module(self.line_str()?).to_string();
                    let name = self.line_str()?.to_string();
                    let items = self.pop_mark()?;
                    let cls = self.alloc(Node::Global(module, name));
                    let args = self.alloc(Node::Tuple(items));
                    self.push(Node::Reduce(cls, args));
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err(self.err("OBJ without a class"));
                    }
                    let cls = items.remove(0);
                    let args = self.alloc(Node::Tuple(items));
                    self.push(Node::Reduce(cls, args));
                }
                b'b' => {
                    // BUILD mutates the object in place, so memo references see it built:
                    // move the object to a fresh slot and put the Build where it was.
                    let state = self.pop()?;
                    let obj = self.top()?;
                    let moved = self.nodes[obj].clone();
                    let inner = self.alloc(moved);
                    self.nodes[obj] = Node::Build(inner, state);
                }
                b'P' => {
                    let l = self.line()?;
                    let s = self.utf8(l)?;
                    let id = self.alloc(Node::Str(s));
                    self.push(Node::PersId(id));
                }
                b'Q' => {
                    let id = self.pop()?;
                    self.push(Node::PersId(id));
                }
                0x82..=0x84 => {
                    return Err(self.err("extension registry codes (EXT1/2/4) are not supported"))
                }
                0x97 | 0x98 => {
                    return Err(self.err(
                        "out-of-band buffers (NEXT_BUFFER / READONLY_BUFFER) are not supported",
                    ))
                }
                _ => return Err(self.err(format!("unknown opcode 0x{op:02x}"))),
            }
        }
    }

    fn materialise(&self, root: usize) -> Result<Value> {
        let mut budget = self.b.len().saturating_mul(EXPANSION_LIMIT).max(1 << 26);
        let mut on_path = vec![false; self.nodes.len()];
        self.mat(root, 0, &mut budget, &mut on_path)
    }

    fn mat(
        &self,
        i: usize,
        depth: usize,
        budget: &mut usize,
        on_path: &mut [bool],
    ) -> Result<Value> {
        if depth > MAX_DEPTH {
            bail!("pickle: nesting deeper than {MAX_DEPTH} levels");
        }
        let cost = size_of::<Value>()
            + match &self.nodes[i] {
                Node::BigInt(b) | Node::Bytes(b) => b.len(),
                Node::Str(s) => s.len(),
                Node::Global(m, n) => m.len() + n.len(),
                _ => 0,
            };
        *budget = budget.checked_sub(cost).ok_or_else(|| {
            anyhow!("pickle: shared references expand to too many values; refusing")
        })?;
        if on_path[i] {
            bail!("pickle: recursive structure (an object contains itself); not supported");
        }
        on_path[i] = true;
        let mut m = |j: usize| self.mat(j, depth + 1, budget, on_path);
        let v = match &self.nodes[i] {
            Node::None => Value::None,
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(x) => Value::Int(*x),
            Node::BigInt(b) => Value::BigInt(b.clone()),
            Node::Float(x) => Value::Float(*x),
            Node::Str(s) => Value::Str(s.clone()),
            Node::Bytes(b) => Value::Bytes(b.clone()),
            Node::List(v) => Value::List(v.iter().map(|&j| m(j)).collect::<Result<_>>()?),
            Node::Tuple(v) => Value::Tuple(v.iter().map(|&j| m(j)).collect::<Result<_>>()?),
            Node::Set(v) => Value::Set(v.iter().map(|&j| m(j)).collect::<Result<_>>()?),
            Node::Dict(d) => Value::Dict(
                d.iter()
                    .map(|&(k, v)| Ok((m(k)?, m(v)?)))
                    .collect::<Result<_>>()?,
            ),
            Node::Global(module, name) => Value::Global {
                module: module.clone(),
                name: name.clone(),
            },
            Node::Reduce(c, a) => Value::Reduce {
                callable: Box::new(m(*c)?),
                args: Box::new(m(*a)?),
            },
            Node::NewObj(c, a, k) => Value::NewObj {
                cls: Box::new(m(*c)?),
                args: Box::new(m(*a)?),
                kwargs: match k {
                    Some(k) => Some(Box::new(m(*k)?)),
                    None => None,
                },
            },
            Node::Build(o, s) => Value::Build {
                obj: Box::new(m(*o)?),
                state: Box::new(m(*s)?),
            },
            Node::PersId(p) => Value::PersistentId(Box::new(m(*p)?)),
        };
        on_path[i] = false;
        Ok(v)
    }
}

/// Python 3 writes Python 2 module names at protocols 0-2 (`fix_imports`); map the common
/// ones back, as Python's unpickler does.
fn py3_module(m: &str) -> &str {
    match m {
        "__builtin__" => "builtins",
        "copy_reg" => "copyreg",
        other => other,
    }
}

fn node_kind(n: &Node) -> &'static str {
    match n {
        Node::None => "None",
        Node::Bool(_) => "bool",
        Node::Int(_) | Node::BigInt(_) => "int",
        Node::Float(_) => "float",
        Node::Str(_) => "str",
        Node::Bytes(_) => "bytes",
        Node::List(_) => "list",
        Node::Tuple(_) => "tuple",
        Node::Dict(_) => "dict",
        Node::Set(_) => "set",
        Node::Global(..) => "global",
        Node::Reduce(..) => "reduce",
        Node::NewObj(..) => "newobj",
        Node::Build(..) => "build",
        Node::PersId(_) => "persistent id",
    }
}

/// Decodes protocol 0's `UNICODE` argument (raw-unicode-escape: `\uXXXX`, `\UXXXXXXXX`,
/// everything else a Latin-1 byte).
fn raw_unicode_unescape(l: &[u8]) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(l.len());
    let mut i = 0;
    while i < l.len() {
        let c = l[i];
        if c == b'\\' && i + 1 < l.len() && (l[i + 1] == b'u' || l[i + 1] == b'U') {
            let n = if l[i + 1] == b'u' { 4 } else { 8 };
            let hex = l
                .get(i + 2..i + 2 + n)
                .ok_or("truncated \\u escape in UNICODE")?;
            let hex = std::str::from_utf8(hex).map_err(|_| "bad \\u escape in UNICODE")?;
            let cp = u32::from_str_radix(hex, 16).map_err(|_| "bad \\u escape in UNICODE")?;
            out.push(char::from_u32(cp).ok_or("\\u escape is not a character")?);
            i += 2 + n;
        } else {
            out.push(c as char);
            i += 1;
        }
    }
    Ok(out)
}

/// Decodes protocol 0's `STRING` argument: a quoted Python 2 `repr` of a byte string.
fn string_unescape(l: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let q = *l.first().ok_or("empty STRING")?;
    if l.len() < 2 || (q != b'\'' && q != b'"') || l[l.len() - 1] != q {
        return Err("STRING argument is not quoted".into());
    }
    let s = &l[1..l.len() - 1];
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] != b'\\' {
            out.push(s[i]);
            i += 1;
            continue;
        }
        let e = *s.get(i + 1).ok_or("STRING ends in a backslash")?;
        i += 2;
        match e {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'\\' | b'\'' | b'"' => out.push(e),
            b'x' => {
                let h = s.get(i..i + 2).ok_or("truncated \\x escape in STRING")?;
                let h = std::str::from_utf8(h).map_err(|_| "bad \\x escape")?;
                out.push(u8::from_str_radix(h, 16).map_err(|_| "bad \\x escape")?);
                i += 2;
            }
            b'0'..=b'7' => {
                let mut v = (e - b'0') as u32;
                let mut n = 1;
                while n < 3 && i < s.len() && (b'0'..=b'7').contains(&s[i]) {
                    v = v * 8 + (s[i] - b'0') as u32;
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            _ => {
                out.push(b'\\');
                out.push(e);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::pickle_fixtures as fx;

    fn s(x: &str) -> Value {
        Value::Str(x.into())
    }
    fn ints(v: &[i64]) -> Vec<Value> {
        v.iter().map(|&i| Value::Int(i)).collect()
    }

    /// The dict every BASIC_P* fixture holds, as this reader must see it.
    fn check_basic(v: &Value, proto: u8) {
        let g = |k: &str| {
            v.get(k)
                .unwrap_or_else(|| panic!("protocol {proto}: key {k} missing"))
        };
        assert_eq!(g("int_small"), &Value::Int(7));
        assert_eq!(g("int_2"), &Value::Int(1000));
        assert_eq!(g("int_4"), &Value::Int(-123456));
        assert_eq!(g("int_big"), &Value::Int(1 << 40));
        assert_eq!(g("int_neg_big"), &Value::Int(-(1 << 62)));
        assert_eq!(g("float"), &Value::Float(1.5));
        assert_eq!(g("neg_float"), &Value::Float(-0.1));
        assert_eq!(g("str"), &s("h\u{e9}llo \u{2713}"));
        assert_eq!(g("bytes"), &Value::Bytes(vec![0, 1, 255]));
        assert_eq!(g("bool_t"), &Value::Bool(true));
        assert_eq!(g("bool_f"), &Value::Bool(false));
        assert_eq!(g("none"), &Value::None);
        assert_eq!(
            g("list"),
            &Value::List(vec![
                Value::Int(1),
                Value::List(ints(&[2, 3])),
                Value::Tuple(ints(&[4]))
            ])
        );
        assert_eq!(g("tuple0"), &Value::Tuple(vec![]));
        for n in 1..=4 {
            let want: Vec<i64> = (1..=n).collect();
            assert_eq!(g(&format!("tuple{n}")), &Value::Tuple(ints(&want)));
        }
        let nine = Value::List(ints(&[9]));
        assert_eq!(g("shared"), &Value::List(vec![nine.clone(), nine]));
        assert_eq!(g("set"), &Value::Set(ints(&[5])));
        assert_eq!(g("frozenset"), &Value::Set(ints(&[6])));
        let big: Vec<i64> = (0..1500).collect();
        assert_eq!(g("big_list"), &Value::List(ints(&big)));
        assert_eq!(
            g("odict"),
            &Value::Dict(vec![(s("b"), Value::Int(2)), (s("a"), Value::Int(1))])
        );
        // A plain class instance: protocol 0 goes through copyreg._reconstructor, 2+ NEWOBJ;
        // either way the attribute dict arrives through BUILD.
        let point = g("point");
        let Value::Build { obj, state } = point else {
            panic!("protocol {proto}: point is {point:?}")
        };
        assert_eq!(
            **state,
            Value::Dict(vec![(s("x"), Value::Int(3)), (s("y"), Value::Int(-4))])
        );
        let geom = Value::Global {
            module: "geom".into(),
            name: "Point".into(),
        };
        match &**obj {
            Value::NewObj { cls, args, kwargs } => {
                assert!(proto >= 2);
                assert_eq!(**cls, geom);
                assert_eq!(**args, Value::Tuple(vec![]));
                assert!(kwargs.is_none());
            }
            Value::Reduce { callable, args } => {
                assert_eq!(proto, 0);
                assert!(callable.is_global("copyreg", "_reconstructor"));
                assert_eq!(args.as_seq().unwrap()[0], geom);
            }
            o => panic!("protocol {proto}: point object is {o:?}"),
        }
        let keys: Vec<&str> = v
            .as_dict()
            .unwrap()
            .iter()
            .map(|(k, _)| k.as_str().unwrap())
            .collect();
        assert_eq!(keys.len(), 24, "protocol {proto}");
        assert_eq!(keys[0], "int_small");
        assert_eq!(keys[23], "odict");
    }

    #[test]
    fn basic_values_at_every_protocol() {
        for (p, bytes) in [
            (0, fx::BASIC_P0),
            (2, fx::BASIC_P2),
            (4, fx::BASIC_P4),
            (5, fx::BASIC_P5),
        ] {
            let v = parse(bytes).unwrap_or_else(|e| panic!("protocol {p}: {e:#}"));
            check_basic(&v, p);
        }
    }

    #[test]
    fn bytearray_protocol_5() {
        let v = parse(fx::BYTEARRAY_P5).unwrap();
        assert_eq!(v, Value::Bytes(b"ab\0".to_vec()));
    }

    #[test]
    fn torch_state_dict_persistent_ids() {
        let v = parse(fx::TORCH_STATE_P2).unwrap();
        let Value::Build { obj, state } = &v else {
            panic!("state dict is {v:?}")
        };
        assert!(state.get("_metadata").is_some());
        let d = obj.as_dict().unwrap();
        assert_eq!(d.len(), 6);
        assert_eq!(d[0].0, s("module.conv.weight"));
        let Value::Reduce { callable, args } = &d[0].1 else {
            panic!("tensor is {:?}", d[0].1)
        };
        assert!(callable.is_global("torch._utils", "_rebuild_tensor_v2"));
        let a = args.as_seq().unwrap();
        let Value::PersistentId(pid) = &a[0] else {
            panic!("storage is {:?}", a[0])
        };
        let pid = pid.as_seq().unwrap();
        assert_eq!(pid[0], s("storage"));
        assert!(pid[1].is_global("torch", "FloatStorage"));
        assert_eq!(pid[2], s("140001"));
        assert_eq!(pid[4], Value::Int(12));
        assert_eq!(a[2], Value::Tuple(ints(&[3, 2])));
        assert_eq!(a[3], Value::Tuple(ints(&[1, 3])));
        // The empty backward-hooks OrderedDict, reached through a memo reference.
        assert_eq!(a[5], Value::Dict(vec![]));
        // num_batches_tracked: a 0-d tensor.
        let Value::Reduce { args, .. } = &d[4].1 else {
            panic!()
        };
        assert_eq!(args.as_seq().unwrap()[2], Value::Tuple(vec![]));
    }

    #[test]
    fn legacy_pth_is_pickles_back_to_back() {
        let b = fx::LEGACY_PTH;
        let (magic, n1) = parse_prefix(b).unwrap();
        // 0x1950a86a20f9469cfc6c is wider than i64.
        let want = 0x1950a86a20f9469cfc6cu128.to_le_bytes()[..10].to_vec();
        assert_eq!(magic, Value::BigInt(want));
        let (proto, n2) = parse_prefix(&b[n1..]).unwrap();
        assert_eq!(proto, Value::Int(1001));
        let (info, _) = parse_prefix(&b[n1 + n2..]).unwrap();
        assert_eq!(info.get("little_endian"), Some(&Value::Bool(true)));
    }

    #[test]
    fn memo_sees_containers_filled_after_put() {
        // protocol 2: [] BINPUT 0, MARK 1 2 APPENDS, then BINGET 0 into a tuple with it.
        let b = b"\x80\x02]q\x00(K\x01K\x02eh\x00\x86q\x01.";
        let v = parse(b).unwrap();
        let l = Value::List(ints(&[1, 2]));
        assert_eq!(v, Value::Tuple(vec![l.clone(), l]));
    }

    #[test]
    fn unknown_opcode_names_opcode_and_offset() {
        let e = parse(b"\x80\x02K\x01\xff.").unwrap_err().to_string();
        assert!(e.contains("0xff") && e.contains("byte 4"), "{e}");
    }

    #[test]
    fn truncated_and_corrupt_inputs_are_errors() {
        for bytes in [fx::BASIC_P0, fx::BASIC_P2, fx::BASIC_P4, fx::TORCH_STATE_P2] {
            for cut in [0, 1, 2, 3, 10, bytes.len() / 2, bytes.len() - 1] {
                assert!(parse(&bytes[..cut]).is_err(), "cut at {cut} parsed");
            }
            // Flip bytes all over: must never panic (an error or, rarely, another value).
            let mut rng = crate::rng::Rng::new(7);
            for _ in 0..300 {
                let mut c = bytes.to_vec();
                let i = rng.below(c.len());
                c[i] ^= 1 << rng.below(8);
                let _ = parse(&c);
            }
        }
        let e = parse(b"\x80\x02K\x01").unwrap_err().to_string();
        assert!(e.contains("before STOP"), "{e}");
        let e = parse(b"\x80\x02X\xff\xff\xff\x7f.")
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = parse(b"\x80\x02h\x05.").unwrap_err().to_string();
        assert!(e.contains("memo key 5"), "{e}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // [[[[...]]]] 100,000 levels: EMPTY_LIST x N, then APPEND x (N - 1).
        let n = 100_000;
        let mut b = b"\x80\x02".to_vec();
        b.extend(std::iter::repeat_n(b']', n));
        b.extend(std::iter::repeat_n(b'a', n - 1));
        b.push(b'.');
        let e = parse(&b).unwrap_err().to_string();
        assert!(e.contains("deeper than"), "{e}");
        // 500 levels are fine.
        let mut b = b"\x80\x02".to_vec();
        b.extend(std::iter::repeat_n(b']', 500));
        b.extend(std::iter::repeat_n(b'a', 499));
        b.push(b'.');
        let mut v = &parse(&b).unwrap();
        let mut depth = 1;
        while let Value::List(l) = v {
            match l.first() {
                Some(x) => {
                    v = x;
                    depth += 1;
                }
                None => break,
            }
        }
        assert_eq!(depth, 500);
    }

    #[test]
    fn exponential_sharing_is_refused() {
        // L0 = []; L(i) = [L(i-1), L(i-1)]: 60 levels would copy 2^60 lists.
        let mut b = b"\x80\x02]q\x00".to_vec();
        for i in 1u8..60 {
            b.extend([b'(', b'h', i - 1, b'h', i - 1, b'l', b'q', i]);
        }
        b.push(b'.');
        let e = parse(&b).unwrap_err().to_string();
        assert!(e.contains("too many values"), "{e}");
    }

    #[test]
    fn huge_declared_lengths_are_errors() {
        // BINUNICODE8, BINBYTES8, BYTEARRAY8, LONG4, BINUNICODE, BINBYTES claiming far more
        // than the input holds.
        for op in [
            &b"\x8d\xff\xff\xff\xff\xff\xff\xff\x7f"[..],
            b"\x8e\x00\x00\x00\x00\x00\x01\x00\x00",
            b"\x96\xff\xff\xff\xff\xff\xff\xff\xff",
            b"\x8b\xff\xff\xff\xff",
            b"X\x00\x00\x00\x80",
            b"B\xff\xff\xff\xff",
            b"T\xff\xff\xff\xff",
        ] {
            let mut b = b"\x80\x04".to_vec();
            b.extend_from_slice(op);
            b.extend_from_slice(b"abc.");
            let e = parse(&b).unwrap_err().to_string();
            assert!(
                e.contains("truncated") || e.contains("negative length") || e.contains("fit"),
                "{op:?}: {e}"
            );
        }
    }

    #[test]
    fn one_long_string_shared_many_times_is_refused() {
        // s = 'x' * 100_000; [s] * 100_000 would copy 10 GB when materialised.
        let mut b = b"\x80\x04X".to_vec();
        b.extend_from_slice(&100_000u32.to_le_bytes());
        b.extend(std::iter::repeat_n(b'x', 100_000));
        b.extend_from_slice(b"\x94(");
        for _ in 0..100_000 {
            b.extend_from_slice(b"h\x00");
        }
        b.extend_from_slice(b"l.");
        // POP the string first so only the list is the result.
        let at = b.iter().position(|&c| c == b'(').unwrap();
        b.insert(at, b'0');
        let e = parse(&b).unwrap_err().to_string();
        assert!(e.contains("too many values"), "{e}");
    }

    #[test]
    fn cycles_and_trailing_bytes_are_errors() {
        // L = []; L.append(L)
        let e = parse(b"\x80\x02]q\x00h\x00a.").unwrap_err().to_string();
        assert!(e.contains("recursive"), "{e}");
        let e = parse(b"\x80\x02N.N").unwrap_err().to_string();
        assert!(e.contains("at byte 4") && e.contains("5 bytes"), "{e}");
    }
}
