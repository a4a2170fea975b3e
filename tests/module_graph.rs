//! The files of `src/` depend on each other without circles, and in the layers `src/lib.rs`
//! states. Reads the sources (no `cargo modules`, no parser crate: std only, so it also runs as
//! `rustc --test tests/module_graph.rs`).
//!
//! The graph has one node per file under `src/`. An edge A -> B means code in A names an item
//! that B defines, through
//! - a `use` path: `use crate::..`, `use super::..`, `use self::..`, `use insclr::..` (in the
//!   binary), or one starting with a module in scope (a child module, `use device::Args`), or
//! - a path in code that starts the same way: `super::emu::free(p)`,
//!   `crate::backend::Device`, `driver::Gpu::open(0)`, `occupancy::MODEL_SMS` after
//!   `use super::occupancy`.
//!
//! A path goes to the file of its longest module prefix; the item after it is followed through
//! re-exports (`pub use x::Name`, `pub use x::*`) to the file that defines it, so naming
//! `crate::backend::cuda::DevMem` is an edge to `cuda/device.rs`, not to `cuda/mod.rs`.
//! Comments, doc links and strings are not code. Inline modules (`mod tests { .. }`) belong to
//! their file, and their `super` is the file's module.
//!
//! Not edges, the module tree: what a file says about the modules under it (its descendants):
//! declaring them (`mod device;`), re-exporting their items (`pub use device::DevMem`) and
//! building on them (`driver::Gpu::open` in `cuda/mod.rs`, `trait Backend: GemmOps` in
//! `backend/mod.rs`); a file is its children's facade. Edges are what a file uses from a file
//! above it or beside it: a child using what its parent defines (`super::Backend`,
//! `use super::*`), a sibling's item (`super::device::Args`), anything elsewhere in the crate.
//! A `use` that names only a module (`use crate::backend::cuda;`,
//! `use super::occupancy::{self, ..}`) is no edge by itself; the paths through it are.
//! So a circle is files that need each other where neither contains the other: `emu.rs` and
//! `device.rs`, not `backend/mod.rs` and `backend/gemm.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

// ---- sources without comments and literals ------------------------------------------------

/// `src` with comments removed and string / char literals emptied, newlines kept (so line
/// numbers stay).
fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let newlines = |from: usize, to: usize| "\n".repeat(src[from..to].matches('\n').count());
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < b.len() {
        let rest = &src[i..];
        let after_ident = i > 0 && ident(b[i - 1]);
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            let (mut depth, mut j) = (1, i + 2);
            while j < b.len() && depth > 0 {
                if src[j..].starts_with("/*") {
                    depth += 1;
                    j += 2;
                } else if src[j..].starts_with("*/") {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            out.push_str(&newlines(i, j));
            i = j;
        } else if !after_ident
            && (rest.starts_with("r#\"") || rest.starts_with("r\"") || rest.starts_with("br"))
            && raw_string_end(rest).is_some()
        {
            let j = i + raw_string_end(rest).unwrap();
            out.push_str("\"\"");
            out.push_str(&newlines(i, j));
            i = j;
        } else if b[i] == b'"' || (!after_ident && rest.starts_with("b\"")) {
            let mut j = i + if b[i] == b'b' { 2 } else { 1 };
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            out.push_str("\"\"");
            out.push_str(&newlines(i, j.min(b.len())));
            i = j + 1;
        } else if b[i] == b'\'' {
            // A char literal ('a', '\n', '\u{1F600}', '"'), else a lifetime or label ('a).
            let close = if rest[1..].starts_with('\\') {
                rest.get(3..).and_then(|r| r.find('\'')).map(|k| k + 4)
            } else {
                rest[1..]
                    .char_indices()
                    .nth(1)
                    .filter(|&(_, c)| c == '\'')
                    .map(|(k, _)| k + 2)
            };
            match close {
                Some(len) => {
                    out.push_str("' '");
                    i += len;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The length of the raw string literal (`r"..."`, `r#".."#`, `br".."`) at the start of `s`.
fn raw_string_end(s: &str) -> Option<usize> {
    let s2 = s.strip_prefix('b').unwrap_or(s);
    let lead = s.len() - s2.len();
    let s3 = s2.strip_prefix('r')?;
    let hashes = s3.len() - s3.trim_start_matches('#').len();
    let body = s3[hashes..].strip_prefix('"')?;
    let close = format!("\"{}", "#".repeat(hashes));
    let end = body.find(&close)?;
    Some(lead + 1 + hashes + 1 + end + close.len())
}

// ---- tokens ----------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Tok {
    text: String,
    line: usize,
}

fn tokens(code: &str) -> Vec<Tok> {
    let b = code.as_bytes();
    let mut toks = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            line += 1;
            i += 1;
        } else if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] >= 0x80) {
                i += 1;
            }
            let mut text = code[start..i].to_string();
            if text == "r" && b.get(i) == Some(&b'#') {
                // r#ident
                let s = i + 1;
                i = s;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                text = code[s..i].to_string();
            }
            toks.push(Tok { text, line });
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                if b[i] == b'.' && !b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    break;
                }
                i += 1;
            }
        } else if code[i..].starts_with("::") {
            toks.push(Tok {
                text: "::".into(),
                line,
            });
            i += 2;
        } else {
            toks.push(Tok {
                text: (c as char).to_string(),
                line,
            });
            i += 1;
        }
    }
    toks
}

fn is_ident(t: &str) -> bool {
    t.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

// ---- what a file says ----------------------------------------------------------------------

/// One name a `use` brings in: `segs` as written (`super`, `crate`, a module in scope...),
/// then `Name(alias)` or a glob.
#[derive(Clone, Debug)]
struct UseLeaf {
    /// The module (inline modules included) the `use` sits in.
    module: Vec<String>,
    segs: Vec<String>,
    /// The name it binds; None for a glob.
    binds: Option<String>,
    public: bool,
    line: usize,
}

/// A path in code (outside `use`): `super::emu::free`, `crate::backend::Device`.
#[derive(Clone, Debug)]
struct CodePath {
    module: Vec<String>,
    segs: Vec<String>,
    line: usize,
}

struct FileInfo {
    rel: String,
    /// Its module path, the crate first (`insclr` or `insclr-cu`).
    module: Vec<String>,
    uses: Vec<UseLeaf>,
    paths: Vec<CodePath>,
    /// Child modules declared with `mod name;`.
    children: Vec<String>,
    /// Inline modules (full paths).
    inline: Vec<Vec<String>>,
    /// Items each module of this file (itself, its inline modules) defines at its top level.
    defines: HashMap<Vec<String>, BTreeSet<String>>,
}

fn parse_use_tree(
    toks: &[Tok],
    i: &mut usize,
    prefix: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, Option<String>)>,
) {
    let start_len = prefix.len();
    loop {
        let t = toks[*i].text.as_str();
        match t {
            "{" => {
                *i += 1;
                loop {
                    if toks[*i].text == "}" {
                        *i += 1;
                        break;
                    }
                    parse_use_tree(toks, i, prefix, out);
                    if toks[*i].text == "," {
                        *i += 1;
                    }
                }
                break;
            }
            "*" => {
                *i += 1;
                out.push((prefix.clone(), None));
                break;
            }
            "::" => {
                if prefix.is_empty() {
                    prefix.push("::".into());
                }
                *i += 1;
            }
            _ if is_ident(t) => {
                *i += 1;
                if toks[*i].text == "::" {
                    prefix.push(t.to_string());
                    continue;
                }
                let mut segs = prefix.clone();
                let name = if t == "self" {
                    segs.last().cloned().unwrap_or_default()
                } else {
                    segs.push(t.to_string());
                    t.to_string()
                };
                let binds = if toks[*i].text == "as" {
                    *i += 2;
                    toks[*i - 1].text.clone()
                } else {
                    name
                };
                out.push((segs, Some(binds)));
                break;
            }
            _ => break,
        }
    }
    prefix.truncate(start_len);
}

const ITEM_KEYWORDS: &[&str] = &[
    "fn", "struct", "enum", "trait", "type", "const", "static", "union", "mod",
];

fn parse_file(rel: &str, module: Vec<String>, src: &str) -> FileInfo {
    let toks = tokens(&strip(src));
    let mut info = FileInfo {
        rel: rel.to_string(),
        module: module.clone(),
        uses: Vec::new(),
        paths: Vec::new(),
        children: Vec::new(),
        inline: Vec::new(),
        defines: HashMap::new(),
    };
    // (module path, brace depth of its body)
    let mut stack: Vec<(Vec<String>, usize)> = vec![(module, 0)];
    let mut depth = 0;
    let mut i = 0;
    while i < toks.len() {
        let t = toks[i].text.as_str();
        let prev = if i > 0 { toks[i - 1].text.as_str() } else { "" };
        let (cur, body_depth) = stack.last().cloned().unwrap();
        match t {
            "{" => depth += 1,
            "}" => {
                if depth == body_depth && stack.len() > 1 {
                    stack.pop();
                }
                depth -= 1;
            }
            "use" if prev != "::" => {
                let public = prev == "pub"
                    || (prev == ")" && {
                        let open = toks[..i].iter().rposition(|t| t.text == "(");
                        open.is_some_and(|o| o > 0 && toks[o - 1].text == "pub")
                    });
                let line = toks[i].line;
                i += 1;
                let mut leaves = Vec::new();
                parse_use_tree(&toks, &mut i, &mut Vec::new(), &mut leaves);
                for (segs, binds) in leaves {
                    info.uses.push(UseLeaf {
                        module: cur.clone(),
                        segs,
                        binds,
                        public,
                        line,
                    });
                }
                continue;
            }
            "macro_rules"
                if depth == body_depth && toks.get(i + 1).is_some_and(|t| t.text == "!") =>
            {
                let name = toks[i + 2].text.clone();
                info.defines.entry(cur.clone()).or_default().insert(name);
            }
            _ if ITEM_KEYWORDS.contains(&t) && prev != "::" => {
                // `const fn f`, `static mut X`, `const unsafe fn f`: the name comes later.
                let mut k = i + 1;
                while toks.get(k).is_some_and(|t| {
                    ["mut", "unsafe", "async", "extern"].contains(&t.text.as_str())
                }) {
                    k += 1;
                }
                let Some(name) = toks.get(k).map(|t| t.text.clone()) else {
                    break;
                };
                if !is_ident(&name) || ITEM_KEYWORDS.contains(&name.as_str()) {
                    i = k;
                    continue;
                }
                let i_name = k;
                if depth == body_depth {
                    info.defines
                        .entry(cur.clone())
                        .or_default()
                        .insert(name.clone());
                }
                if t == "mod" {
                    match toks.get(i_name + 1).map(|t| t.text.as_str()) {
                        Some(";") if stack.len() == 1 => info.children.push(name),
                        Some("{") => {
                            let mut path = cur.clone();
                            path.push(name);
                            info.inline.push(path.clone());
                            depth += 1;
                            stack.push((path, depth));
                            i = i_name + 2;
                            continue;
                        }
                        _ => {}
                    }
                }
                i = i_name + 1;
                continue;
            }
            _ if is_ident(t)
                && prev != "::"
                && prev != "."
                && toks.get(i + 1).is_some_and(|t| t.text == "::") =>
            {
                let line = toks[i].line;
                let mut segs = vec![t.to_string()];
                let mut j = i + 1;
                while j + 1 < toks.len() && toks[j].text == "::" && is_ident(&toks[j + 1].text) {
                    segs.push(toks[j + 1].text.clone());
                    j += 2;
                }
                if segs.len() > 1 {
                    info.paths.push(CodePath {
                        module: cur.clone(),
                        segs,
                        line,
                    });
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    info
}

// ---- the crate's modules and how a path resolves -------------------------------------------

struct Crate {
    files: Vec<FileInfo>,
    /// Module path -> index of the file it lives in (files and inline modules).
    module_file: HashMap<Vec<String>, usize>,
}

/// Where a path ends: a file (the module that defines or owns the item), or nowhere in the
/// crate (std, another crate, a local type's associated item).
#[derive(Clone, Debug, PartialEq)]
enum Target {
    /// The path names a module itself.
    Module(Vec<String>),
    /// An item of this module (the item's name, when known).
    Item(Vec<String>),
    Outside,
}

const LIB: &str = "insclr";
const BIN: &str = "insclr-cu";

impl Crate {
    fn load(root: &Path) -> Crate {
        let mut files = Vec::new();
        let mut module_file = HashMap::new();
        let mut queue: VecDeque<(PathBuf, Vec<String>)> = VecDeque::from([
            (root.join("src/lib.rs"), vec![LIB.to_string()]),
            (root.join("src/main.rs"), vec![BIN.to_string()]),
        ]);
        while let Some((path, module)) = queue.pop_front() {
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let src = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
            let info = parse_file(&rel, module.clone(), &src);
            let idx = files.len();
            module_file.insert(module.clone(), idx);
            for m in &info.inline {
                module_file.insert(m.clone(), idx);
            }
            let stem = path.file_stem().unwrap().to_str().unwrap();
            let dir = if ["lib", "main", "mod"].contains(&stem) {
                path.parent().unwrap().to_path_buf()
            } else {
                path.with_extension("")
            };
            for child in &info.children {
                let flat = dir.join(format!("{child}.rs"));
                let file = if flat.is_file() {
                    flat
                } else {
                    dir.join(child).join("mod.rs")
                };
                let mut m = module.clone();
                m.push(child.clone());
                queue.push_back((file, m));
            }
            files.push(info);
        }
        Crate { files, module_file }
    }

    fn is_module(&self, m: &[String]) -> bool {
        self.module_file.contains_key(m)
    }

    fn file_of(&self, m: &[String]) -> usize {
        self.module_file[m]
    }

    /// Resolves `segs`, written in module `ctx`, to what it names in the crate.
    fn resolve(&self, ctx: &[String], segs: &[String], depth: usize) -> Target {
        if depth > 16 || segs.is_empty() {
            return Target::Outside;
        }
        let first = segs[0].as_str();
        let (mut module, mut rest): (Vec<String>, &[String]) = match first {
            "crate" => (ctx[..1].to_vec(), &segs[1..]),
            "self" => (ctx.to_vec(), &segs[1..]),
            "super" => {
                let mut m = ctx.to_vec();
                let mut k = 0;
                while segs.get(k).is_some_and(|s| s == "super") {
                    m.pop();
                    k += 1;
                }
                (m, &segs[k..])
            }
            LIB if ctx[0] == BIN => (vec![LIB.to_string()], &segs[1..]),
            _ => {
                // A name in scope: a child module, or one a `use` of this module binds.
                let mut child = ctx.to_vec();
                child.push(first.to_string());
                if self.is_module(&child) {
                    (child, &segs[1..])
                } else {
                    let file = &self.files[self.file_of(ctx)];
                    let here = || file.uses.iter().filter(|u| u.module == ctx);
                    let bound = here().find(|u| u.binds.as_deref() == Some(first));
                    // A module a glob brings in: `use super::*;` then `device::Args`.
                    let globbed = || {
                        here().filter(|u| u.binds.is_none()).find_map(|u| {
                            match self.resolve(&u.module, &u.segs, depth + 1) {
                                Target::Module(mut g) => {
                                    g.push(first.to_string());
                                    self.is_module(&g).then_some(g)
                                }
                                _ => None,
                            }
                        })
                    };
                    match bound.map(|u| self.resolve(&u.module, &u.segs, depth + 1)) {
                        Some(Target::Module(m)) => (m, &segs[1..]),
                        None => match globbed() {
                            Some(m) => (m, &segs[1..]),
                            None => return Target::Outside,
                        },
                        _ => return Target::Outside,
                    }
                }
            }
        };
        if module.is_empty() {
            return Target::Outside;
        }
        while let Some(next) = rest.first() {
            let mut child = module.clone();
            child.push(next.clone());
            if next == "super" {
                module.pop();
            } else if next == "self" {
            } else if self.is_module(&child) {
                module = child;
            } else {
                break;
            }
            rest = &rest[1..];
        }
        let Some(name) = rest.first() else {
            return Target::Module(module);
        };
        self.follow(&module, name, depth)
            .unwrap_or(Target::Item(module))
    }

    /// Where module `m`'s item `name` is defined: `m`, or where a re-export of it leads.
    fn follow(&self, m: &[String], name: &str, depth: usize) -> Option<Target> {
        let file = &self.files[self.file_of(m)];
        if file.defines.get(m).is_some_and(|d| d.contains(name)) {
            return Some(Target::Item(m.to_vec()));
        }
        let reexports = || file.uses.iter().filter(|u| u.module == m && u.public);
        if let Some(u) = reexports().find(|u| u.binds.as_deref() == Some(name)) {
            return Some(self.resolve(&u.module, &u.segs, depth + 1));
        }
        for u in reexports().filter(|u| u.binds.is_none()) {
            if let Target::Module(g) = self.resolve(&u.module, &u.segs, depth + 1) {
                if let Some(t) = self.follow(&g, name, depth + 1) {
                    return Some(t);
                }
            }
        }
        None
    }
}

// ---- the graph ------------------------------------------------------------------------------

/// One reason for an edge: the line and the path as written.
#[derive(Clone, Debug)]
struct Why {
    line: usize,
    path: String,
}

struct Graph {
    names: Vec<String>,
    modules: Vec<Vec<String>>,
    edges: BTreeMap<(usize, usize), Vec<Why>>,
}

impl Graph {
    fn of(krate: &Crate) -> Graph {
        let mut edges: BTreeMap<(usize, usize), Vec<Why>> = BTreeMap::new();
        for (a, file) in krate.files.iter().enumerate() {
            let mut add = |ctx: &[String], segs: &[String], line: usize, glob: bool| {
                let to = match krate.resolve(ctx, segs, 0) {
                    Target::Item(m) => m,
                    Target::Module(m) if glob => m,
                    _ => return,
                };
                let b = krate.file_of(&to);
                // The module tree: a file and what it uses of its descendants.
                if a == b || to.starts_with(&file.module) {
                    return;
                }
                let mut path = segs.join("::");
                if glob {
                    path.push_str("::*");
                }
                edges.entry((a, b)).or_default().push(Why { line, path });
            };
            for u in &file.uses {
                add(&u.module, &u.segs, u.line, u.binds.is_none());
            }
            for p in &file.paths {
                add(&p.module, &p.segs, p.line, false);
            }
        }
        Graph {
            names: krate.files.iter().map(|f| f.rel.clone()).collect(),
            modules: krate.files.iter().map(|f| f.module.clone()).collect(),
            edges,
        }
    }

    fn successors(&self, a: usize) -> impl Iterator<Item = usize> + '_ {
        self.edges.range((a, 0)..(a + 1, 0)).map(|(&(_, b), _)| b)
    }

    /// The strongly connected components with more than one file (Tarjan).
    fn circles(&self) -> Vec<Vec<usize>> {
        struct St<'g> {
            g: &'g Graph,
            index: Vec<Option<usize>>,
            low: Vec<usize>,
            on: Vec<bool>,
            stack: Vec<usize>,
            next: usize,
            out: Vec<Vec<usize>>,
        }
        fn visit(s: &mut St, v: usize) {
            s.index[v] = Some(s.next);
            s.low[v] = s.next;
            s.next += 1;
            s.stack.push(v);
            s.on[v] = true;
            let succ: Vec<usize> = s.g.successors(v).collect();
            for w in succ {
                match s.index[w] {
                    None => {
                        visit(s, w);
                        s.low[v] = s.low[v].min(s.low[w]);
                    }
                    Some(iw) if s.on[w] => s.low[v] = s.low[v].min(iw),
                    _ => {}
                }
            }
            if Some(s.low[v]) == s.index[v] {
                let mut comp = Vec::new();
                loop {
                    let w = s.stack.pop().unwrap();
                    s.on[w] = false;
                    comp.push(w);
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    comp.sort();
                    s.out.push(comp);
                }
            }
        }
        let n = self.names.len();
        let mut s = St {
            g: self,
            index: vec![None; n],
            low: vec![0; n],
            on: vec![false; n],
            stack: Vec::new(),
            next: 0,
            out: Vec::new(),
        };
        for v in 0..n {
            if s.index[v].is_none() {
                visit(&mut s, v);
            }
        }
        s.out.sort();
        s.out
    }

    /// A shortest circle through `from` inside `comp`.
    fn circle_through(&self, from: usize, comp: &[usize]) -> Vec<usize> {
        let mut prev: HashMap<usize, usize> = HashMap::new();
        let mut queue = VecDeque::from([from]);
        while let Some(v) = queue.pop_front() {
            for w in self.successors(v).filter(|w| comp.contains(w)) {
                if w == from {
                    let mut path = vec![v];
                    while let Some(&p) = prev.get(path.last().unwrap()) {
                        path.push(p);
                    }
                    path.reverse();
                    return path;
                }
                if let std::collections::hash_map::Entry::Vacant(e) = prev.entry(w) {
                    e.insert(v);
                    queue.push_back(w);
                }
            }
        }
        unreachable!("{} is in a strongly connected component", self.names[from])
    }

    /// A circle written out edge by edge, with the lines that make each edge.
    fn describe(&self, circle: &[usize]) -> String {
        let mut s = String::new();
        let names: Vec<&str> = circle.iter().map(|&v| self.names[v].as_str()).collect();
        writeln!(s, "  {} -> {}", names.join(" -> "), names[0]).unwrap();
        for (k, &a) in circle.iter().enumerate() {
            let b = circle[(k + 1) % circle.len()];
            let why = &self.edges[&(a, b)];
            let shown: Vec<String> = why
                .iter()
                .take(3)
                .map(|w| format!("{}:{} `{}`", self.names[a], w.line, w.path))
                .collect();
            let more = if why.len() > 3 {
                format!(" (+{} more)", why.len() - 3)
            } else {
                String::new()
            };
            writeln!(
                s,
                "    {} -> {}: {}{more}",
                self.names[a],
                self.names[b],
                shown.join(", ")
            )
            .unwrap();
        }
        s
    }

    fn report_circles(&self) -> String {
        let mut s = String::new();
        for comp in self.circles() {
            let list: Vec<&str> = comp.iter().map(|&v| self.names[v].as_str()).collect();
            writeln!(s, "files that depend on each other: {}", list.join(", ")).unwrap();
            // One circle per file of the component, each written once.
            let mut seen = BTreeSet::new();
            for &v in &comp {
                let c = self.circle_through(v, &comp);
                let mut key = c.clone();
                let min = key.iter().enumerate().min_by_key(|&(_, x)| *x).unwrap().0;
                key.rotate_left(min);
                if seen.insert(key) {
                    s.push_str(&self.describe(&c));
                }
            }
        }
        s
    }
}

/// The graph of this checkout's `src/`, read once for all the tests.
fn graph() -> &'static Graph {
    static GRAPH: OnceLock<Graph> = OnceLock::new();
    GRAPH.get_or_init(|| Graph::of(&Crate::load(Path::new(env!("CARGO_MANIFEST_DIR")))))
}

// ---- the tests ------------------------------------------------------------------------------

#[test]
fn no_file_of_src_depends_on_itself_through_others() {
    let g = graph();
    let report = g.report_circles();
    assert!(
        report.is_empty(),
        "import circles in src/ (see tests/module_graph.rs for what counts):\n{report}"
    );
}

/// The layers of the crate doc (src/lib.rs), from the bottom: a module uses only modules of its
/// own layer and those below. The binary (`main.rs`, `cli/`) is above them all.
const LAYERS: &[&[&str]] = &[
    &["rng"],
    &["backend"],
    &["io", "data", "knn", "dist"],
    &["nn"],
    &["mining", "memory", "loss"],
    &["train", "eval", "plan"],
    &["report"],
    &["jobs"],
];

fn layer_of(module: &[String]) -> usize {
    if module[0] == BIN {
        return LAYERS.len();
    }
    let Some(top) = module.get(1) else {
        return LAYERS.len();
    };
    LAYERS
        .iter()
        .position(|l| l.contains(&top.as_str()))
        .unwrap_or_else(|| panic!("src/{top}: add it to LAYERS in tests/module_graph.rs (and to the layers in src/lib.rs)"))
}

fn upward(g: &Graph, from: impl Fn(&[String]) -> bool) -> String {
    let mut bad = String::new();
    for (&(a, b), why) in &g.edges {
        let (la, lb) = (layer_of(&g.modules[a]), layer_of(&g.modules[b]));
        if lb > la && from(&g.modules[a]) {
            let shown: Vec<String> = why
                .iter()
                .take(3)
                .map(|w| format!("{}:{} `{}`", g.names[a], w.line, w.path))
                .collect();
            writeln!(
                bad,
                "  {} (layer {la}) uses {} (layer {lb}): {}",
                g.names[a],
                g.names[b],
                shown.join(", ")
            )
            .unwrap();
        }
    }
    bad
}

#[test]
fn modules_depend_only_on_their_layer_and_those_below() {
    let bad = upward(graph(), |_| true);
    assert!(
        bad.is_empty(),
        "upward dependencies (layers in tests/module_graph.rs, bottom first: {LAYERS:?}):\n{bad}"
    );
}

/// The backend (every op, on the CPU and the GPU) knows nothing above it: no network, method,
/// training, file format or data set.
#[test]
fn the_backend_knows_nothing_above_it() {
    let bad = upward(graph(), |m| m.get(1).is_some_and(|t| t == "backend"));
    assert!(bad.is_empty(), "src/backend uses modules above it:\n{bad}");
}

/// The reader itself, on small sources: what is an edge and what is not.
#[test]
fn the_reader_sees_edges_and_only_edges() {
    let code = strip("let s = \"crate::a::b\"; // super::x\n/* crate::y */ let c = '\"'; f::<'a>(r#\"x\"#); super::z::w()");
    assert!(
        !code.contains("crate::a") && !code.contains("super::x") && !code.contains("crate::y"),
        "{code}"
    );
    assert!(code.contains("super::z::w"), "{code}");
    assert_eq!(code.matches('\n').count(), 1);

    let f = parse_file(
        "x.rs",
        vec![LIB.into(), "x".into()],
        "use super::{a::{self, B as C}, d::*};\npub(crate) use self::e::F;\nmod g;\nmod tests {\n use super::*;\n fn t() { crate::h::i(); }\n}\nfn j() -> a::K { todo!() }\n",
    );
    let uses: Vec<String> = f
        .uses
        .iter()
        .map(|u| {
            format!(
                "{}={:?}{}",
                u.segs.join("::"),
                u.binds,
                if u.public { " pub" } else { "" }
            )
        })
        .collect();
    assert_eq!(
        uses,
        [
            "super::a=Some(\"a\")",
            "super::a::B=Some(\"C\")",
            "super::d=None",
            "self::e::F=Some(\"F\") pub",
            "super=None",
        ]
    );
    assert_eq!(f.children, ["g"]);
    assert_eq!(
        f.inline,
        [vec![LIB.to_string(), "x".into(), "tests".into()]]
    );
    let paths: Vec<String> = f
        .paths
        .iter()
        .map(|p| format!("{}@{}", p.segs.join("::"), p.module.join("::")))
        .collect();
    assert_eq!(paths, ["crate::h::i@insclr::x::tests", "a::K@insclr::x"]);
}

/// The graph of today's tree has the edges the tests above rely on, so that a reader that
/// silently found nothing would not pass.
#[test]
fn the_graph_has_the_edges_it_should() {
    let g = graph();
    let has = |a: &str, b: &str| {
        g.edges
            .keys()
            .any(|&(x, y)| g.names[x] == a && g.names[y] == b)
    };
    assert!(g.edges.len() > 300, "only {} edges", g.edges.len());
    assert!(has(
        "src/backend/cuda/driver.rs",
        "src/backend/cuda/device.rs"
    ));
    assert!(has("src/nn/resnet.rs", "src/nn/backbone.rs"));
    assert!(has("src/main.rs", "src/backend/mod.rs"));
    assert!(
        !has("src/backend/cuda/mod.rs", "src/backend/cuda/conv.rs"),
        "declaring a child is no edge"
    );
}

/// Every edge with the lines that make it:
/// `cargo test --test module_graph -- --ignored --nocapture`.
#[test]
#[ignore]
fn print_the_graph() {
    let g = graph();
    for (&(a, b), why) in &g.edges {
        println!(
            "{} -> {} : {}",
            g.names[a],
            g.names[b],
            why.iter()
                .map(|w| format!("{}@{}", w.path, w.line))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// The rules on a small crate written to a temporary folder: the module tree is no edge, a
/// re-export is followed to the file that defines the item, and a circle is named with its lines.
#[test]
fn the_rules_on_a_small_crate() {
    let root = std::env::temp_dir().join(format!("insclr-module-graph-{}", std::process::id()));
    let write = |path: &str, text: &str| {
        let p = root.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    };
    write("src/lib.rs", "pub mod a;\npub mod z;\n");
    write("src/main.rs", "fn main() { insclr::z::k(); }\n");
    // The parent declares, re-exports and builds on its children: no edges.
    write(
        "src/a/mod.rs",
        "mod b;\nmod c;\npub use b::B;\npub trait T: c::C {}\nfn f() { b::g(); }\n",
    );
    write(
        "src/a/b.rs",
        "use super::T;\npub struct B;\npub fn g() {}\n",
    );
    write(
        "src/a/c.rs",
        "use super::*;\npub trait C {}\npub fn h() { b::g() } // super::z\n",
    );
    write(
        "src/z.rs",
        "use crate::a::B;\npub fn k() { crate::a::b::g(); }\n#[cfg(test)]\nmod tests { use super::*; }\n",
    );
    let edges = |g: &Graph| -> Vec<String> {
        let short = |v: usize| g.names[v].trim_start_matches("src/").to_string();
        g.edges
            .keys()
            .map(|&(a, b)| format!("{} -> {}", short(a), short(b)))
            .collect()
    };
    let g = Graph::of(&Crate::load(&root));
    let mut got = edges(&g);
    got.sort();
    assert_eq!(
        got,
        [
            "a/b.rs -> a/mod.rs",
            "a/c.rs -> a/b.rs",
            "a/c.rs -> a/mod.rs",
            "main.rs -> z.rs",
            "z.rs -> a/b.rs",
        ]
    );
    assert!(g.report_circles().is_empty());

    write(
        "src/a/b.rs",
        "use super::T;\npub struct B;\npub fn g() {}\nfn m() { super::c::h(); }\n",
    );
    let report = Graph::of(&Crate::load(&root)).report_circles();
    fs::remove_dir_all(&root).unwrap();
    assert_eq!(
        report,
        "files that depend on each other: src/a/b.rs, src/a/c.rs\n  src/a/b.rs -> src/a/c.rs -> src/a/b.rs\n    src/a/b.rs -> src/a/c.rs: src/a/b.rs:4 `super::c::h`\n    src/a/c.rs -> src/a/b.rs: src/a/c.rs:3 `b::g`\n",
    );
}
