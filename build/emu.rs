//! The emulated device: every `kernels/<family>.cu` compiled a second time by the host C++
//! compiler against `kernels/emu/emu.cuh`, linked into the crate with the runtime
//! (`kernels/emu/runtime.cpp`). Needs no nvcc.
//!
//! Each source is preprocessed, then two markers the header leaves are rewritten (see emu.cuh):
//! `__global__` (an `extern "C"` kernel is registered under its name) and `__shared__` (each
//! declaration becomes a fresh, poisoned per-block allocation); the `.cu`'s own code goes in a
//! namespace of its family (every family links into one library). A table of the family's
//! kernels, with a trampoline per kernel that unpacks a `cuLaunchKernel` argument array, is
//! appended.
//!
//! `INSCLR_EMU_SANITIZE=address` builds the emulated kernels with AddressSanitizer (and links its
//! runtime into every binary of the crate), so an out-of-bounds global or shared access aborts
//! with a report, as compute-sanitizer's memcheck would on a GPU.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

const GLOBAL: &str = "INSCLR_EMU_GLOBAL";
const SHARED: &str = "INSCLR_EMU_SHARED";

/// Compiles the emulated kernels and the runtime into a static library and tells cargo to link
/// it. Panics with the compiler's or the rewriter's message when a kernel does not build.
pub fn build(kernels_dir: &Path, out_dir: &Path, sources: &[PathBuf]) {
    let emu_dir = kernels_dir.join("emu");
    let work = out_dir.join("emu");
    fs::create_dir_all(&work).expect("create OUT_DIR/emu");
    let sanitize = std::env::var("INSCLR_EMU_SANITIZE").unwrap_or_default();
    if !sanitize.is_empty() && sanitize != "address" {
        panic!("INSCLR_EMU_SANITIZE={sanitize}: only `address` is supported");
    }
    let asan = sanitize == "address";

    let mut families: Vec<(String, Vec<String>)> = Vec::new();
    let mut units = Vec::new();
    for src in sources {
        let family = src.file_stem().unwrap().to_string_lossy().into_owned();
        let pre = preprocess(kernels_dir, &emu_dir, src);
        let mut unit =
            rewrite(&pre, &src.display().to_string(), &family).unwrap_or_else(|(offset, msg)| {
                panic!("emulated build of {}: {msg}", location(&pre, offset))
            });
        for (other, names) in &families {
            if let Some(dup) = unit.kernels.iter().find(|k| names.contains(k)) {
                panic!("kernel {dup} is defined in both kernels/{other}.cu and kernels/{family}.cu; kernel names must be unique");
            }
        }
        append_registry(&mut unit.text, &family, &unit.kernels);
        let path = work.join(format!("{family}.emu.cpp"));
        fs::write(&path, &unit.text).expect("write the rewritten kernel source");
        units.push(path);
        families.push((family, unit.kernels));
    }
    let registry = work.join("registry.cpp");
    fs::write(&registry, registry_source(&families)).expect("write registry.cpp");

    // The kernels get ThreadSanitizer's instrumentation without its runtime: every load and store
    // calls a hook that kernels/emu/runtime.cpp defines (the race checker and the memory
    // counters). AddressSanitizer cannot be combined with it, so its build has no hooks.
    let mut kernels = compiler();
    kernels.include(&emu_dir).files(&units);
    if asan {
        kernels
            .flag("-fsanitize=address")
            .flag("-fno-omit-frame-pointer");
    } else {
        kernels
            .flag("-fsanitize=thread")
            .flag("--param=tsan-instrument-func-entry-exit=0")
            .flag("--param=tsan-distinguish-volatile=1");
    }
    let objects = kernels.compile_intermediates();

    let mut b = compiler();
    b.include(&emu_dir)
        .file(emu_dir.join("runtime.cpp"))
        .file(&registry);
    for o in &objects {
        b.object(o);
    }
    if asan {
        b.flag("-fsanitize=address").flag("-fno-omit-frame-pointer");
        // rustc links with -nodefaultlibs, so the runtime is named explicitly; it must also be
        // the first library loaded, which scripts/emu-sanitize.sh arranges with LD_PRELOAD.
        println!("cargo:rustc-link-lib=dylib=asan");
    }
    b.compile("insclr_emu");
    println!("cargo::rustc-check-cfg=cfg(insclr_emu_asan)");
    if asan {
        println!("cargo:rustc-cfg=insclr_emu_asan");
    }
    write_kernel_list(out_dir, &families);
}

fn compiler() -> cc::Build {
    let mut b = cc::Build::new();
    b.cpp(true)
        .std("c++17")
        .opt_level(2)
        .warnings(false)
        .flag("-Wall")
        .flag("-Wno-unknown-pragmas")
        .flag("-Wno-unused-function")
        .flag("-fno-strict-aliasing");
    b
}

fn preprocess(kernels_dir: &Path, emu_dir: &Path, src: &Path) -> String {
    let mut cmd = compiler().get_compiler().to_command();
    cmd.args(["-E", "-x", "c++", "-std=c++17"])
        .arg("-include")
        .arg(emu_dir.join("emu.cuh"))
        .arg("-I")
        .arg(kernels_dir)
        .arg("-I")
        .arg(emu_dir.join("include"))
        .arg(src);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run the C++ compiler for the emulated kernels: {e}"));
    if !out.status.success() {
        panic!(
            "preprocessing {} for the emulated device failed:\n{}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).expect("preprocessed kernel source is not UTF-8")
}

/// The rewritten translation unit and the `extern "C"` kernels it defines.
pub struct Unit {
    pub text: String,
    pub kernels: Vec<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Brace {
    /// `namespace x {` or `extern "C" {`: declarations here are at namespace scope.
    Namespace,
    ExternC,
    /// A function or class body, an initializer.
    Other,
}

/// The namespace a family's own code is compiled in: every family links into one library, and
/// a helper of one name in two `.cu` files (an inline function, a template) must not merge.
fn family_namespace(family: &str) -> String {
    format!("insclr_family_{family}")
}

/// Rewrites the markers of a preprocessed source, and puts the code of `main` (the `.cu`
/// itself, not its headers) in the family's namespace; `extern "C"` kernels keep their names.
/// On error, the byte offset and a message.
pub fn rewrite(pre: &str, main: &str, family: &str) -> Result<Unit, (usize, String)> {
    let b = pre.as_bytes();
    let mut out = String::with_capacity(pre.len() + 4096);
    let mut kernels: Vec<String> = Vec::new();
    let mut braces: Vec<Brace> = Vec::new();
    let mut in_main = false;
    let mut wrap_depth = 0;
    let mut i = 0;
    let mut line_start = true;
    while i < b.len() {
        let c = b[i];
        if line_start && c == b'#' {
            // Line markers and pragmas pass through whole; a marker may enter or leave main.
            let end = pre[i..].find('\n').map_or(b.len(), |n| i + n + 1);
            let line = &pre[i..end];
            if let Some(file) = marker_file(line) {
                let to_main = file == main;
                if in_main && !to_main {
                    // Leaving the .cu for a header: only at file scope, where the wrapper opened.
                    if braces.len() != wrap_depth {
                        return Err((
                            i,
                            "an #include inside a block; include headers at file scope".into(),
                        ));
                    }
                    out.push_str("}\n");
                    braces.pop();
                }
                // The wrapper's line goes before the marker, so line numbers stay right.
                if to_main && !in_main {
                    out.push_str(&format!("namespace {} {{\n", family_namespace(family)));
                    braces.push(Brace::Namespace);
                    wrap_depth = braces.len();
                }
                out.push_str(line);
                in_main = to_main;
            } else {
                out.push_str(line);
            }
            i = end;
            continue;
        }
        line_start = c == b'\n' || (line_start && (c == b' ' || c == b'\t'));
        match c {
            b'"' | b'\'' => {
                let end = literal_end(b, i);
                out.push_str(&pre[i..end]);
                i = end;
            }
            b'{' => {
                braces.push(brace_kind(&out));
                out.push('{');
                i += 1;
            }
            b'}' => {
                braces.pop();
                out.push('}');
                i += 1;
            }
            _ if c == b'_' || c.is_ascii_alphabetic() => {
                let end = ident_end(b, i);
                let word = &pre[i..end];
                if word == GLOBAL {
                    let extern_c = out.trim_end().ends_with("extern \"C\"")
                        || braces.last() == Some(&Brace::ExternC);
                    if extern_c {
                        let name = kernel_name(&pre[end..]).ok_or((
                            i,
                            "expected `void name(` after `extern \"C\" __global__`".to_string(),
                        ))?;
                        if !kernels.contains(&name) {
                            kernels.push(name);
                        }
                    }
                    i = end;
                } else if word == SHARED {
                    let semi = statement_end(b, end)
                        .ok_or((i, "a __shared__ declaration without its `;`".to_string()))?;
                    if !braces.contains(&Brace::Other) {
                        return Err((
                            i,
                            "declare __shared__ variables inside a kernel or device function"
                                .into(),
                        ));
                    }
                    let is_extern = trailing_word(&out) == Some("extern");
                    if is_extern {
                        let keep = out.trim_end().len() - "extern".len();
                        out.truncate(keep);
                    }
                    let decl = &pre[end..semi];
                    out.push_str(&shared_declaration(decl, is_extern).map_err(|m| (i, m))?);
                    // Keep the line count, so the compiler's messages point at the source lines.
                    for _ in decl.matches('\n') {
                        out.push('\n');
                    }
                    i = semi + 1;
                } else {
                    out.push_str(word);
                    i = end;
                }
            }
            _ => {
                let ch = pre[i..].chars().next().unwrap();
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    if in_main {
        out.push_str("}\n");
    }
    Ok(Unit { text: out, kernels })
}

/// The file of a line marker (`# 12 "kernels/pool.cu" 2`), or None for other directives.
fn marker_file(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("# ")?;
    let (num, rest) = rest.split_once(' ')?;
    num.parse::<u64>().ok()?;
    rest.split('"').nth(1)
}

fn literal_end(b: &[u8], start: usize) -> usize {
    let quote = b[start];
    let mut i = start + 1;
    while i < b.len() && b[i] != quote && b[i] != b'\n' {
        i += if b[i] == b'\\' { 2 } else { 1 };
    }
    (i + 1).min(b.len())
}

fn ident_end(b: &[u8], start: usize) -> usize {
    let mut i = start;
    while i < b.len() && (b[i] == b'_' || b[i].is_ascii_alphanumeric()) {
        i += 1;
    }
    i
}

fn trailing_word(s: &str) -> Option<&str> {
    let t = s.trim_end();
    let start = t
        .rfind(|c: char| !(c == '_' || c.is_ascii_alphanumeric()))
        .map_or(0, |p| p + 1);
    (start < t.len()).then(|| &t[start..])
}

fn brace_kind(before: &str) -> Brace {
    let t = before.trim_end();
    if t.ends_with("extern \"C\"") {
        return Brace::ExternC;
    }
    // `namespace`, `namespace name` or `namespace a::b`.
    let head = t.trim_end_matches(|c: char| c == '_' || c == ':' || c.is_ascii_alphanumeric());
    let head = if head.len() == t.len() {
        t
    } else {
        head.trim_end()
    };
    if head.ends_with("namespace") || t.ends_with("namespace") {
        Brace::Namespace
    } else {
        Brace::Other
    }
}

fn kernel_name(after: &str) -> Option<String> {
    let rest = after.trim_start().strip_prefix("void")?;
    let rest = rest.trim_start();
    let end = rest
        .find(|c: char| !(c == '_' || c.is_ascii_alphanumeric()))
        .unwrap_or(rest.len());
    let name = &rest[..end];
    (!name.is_empty() && rest[end..].trim_start().starts_with('(')).then(|| name.to_string())
}

fn statement_end(b: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0i32;
    for (k, &c) in b.iter().enumerate().skip(start) {
        match c {
            b'(' | b'[' => depth += 1,
            b')' | b']' => depth -= 1,
            b';' if depth == 0 => return Some(k),
            b'{' | b'}' => return None,
            _ => {}
        }
    }
    None
}

/// `__shared__ T name[dims];` (or `extern __shared__ T name[];`) as a runtime allocation.
fn shared_declaration(decl: &str, is_extern: bool) -> Result<String, String> {
    let flat: String = decl.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.contains('=') {
        return Err(format!(
            "`__shared__ {flat}`: shared variables cannot have an initializer"
        ));
    }
    let mut depth = 0;
    for c in flat.chars() {
        match c {
            '(' | '[' | '<' => depth += 1,
            ')' | ']' | '>' => depth -= 1,
            ',' if depth == 0 => {
                return Err(format!(
                    "`__shared__ {flat}`: declare one shared variable per declaration"
                ))
            }
            _ => {}
        }
    }
    let (ty, align) = take_alignment(&flat);
    // Trailing `[..]` groups are the dimensions, the identifier before them the name.
    let mut rest = ty.trim_end().to_string();
    let mut dims = String::new();
    while rest.ends_with(']') {
        let open = matching_open(&rest).ok_or(format!("`__shared__ {flat}`: unbalanced `[`"))?;
        dims.insert_str(0, &rest[open..]);
        rest.truncate(open);
        rest = rest.trim_end().to_string();
    }
    let name = trailing_word(&rest)
        .ok_or(format!("`__shared__ {flat}`: no variable name"))?
        .to_string();
    let ty = rest[..rest.len() - name.len()].trim().to_string();
    if ty.is_empty() {
        return Err(format!("`__shared__ {flat}`: no type"));
    }
    if is_extern {
        if dims.replace(' ', "") != "[]" {
            return Err(format!(
                "`extern __shared__ {flat}`: dynamic shared memory is declared as `T name[]`"
            ));
        }
        return Ok(format!(
            "{ty}* const {name} = static_cast<{ty}*>(::insclr_emu::dynamic_shared());"
        ));
    }
    let align = match align {
        Some(a) => format!("(({a}) > alignof({ty}) ? ({a}) : alignof({ty}))"),
        None => format!("alignof({ty})"),
    };
    Ok(format!(
        "static char insclr_emu_key_{name}; auto& {name} = *static_cast<{ty} (*){dims}>(\
         ::insclr_emu::block_shared(&insclr_emu_key_{name}, sizeof({ty}{dims}), {align}, \"{name}\"));"
    ))
}

/// Removes `__attribute__((aligned(N)))` / `alignas(N)` from a declaration; returns N.
fn take_alignment(decl: &str) -> (String, Option<String>) {
    for key in ["__attribute__", "alignas"] {
        if let Some(start) = decl.find(key) {
            let open = start + key.len() + decl[start + key.len()..].find('(').unwrap_or(0);
            if let Some(close) = matching_close(decl, open) {
                let inner = &decl[open..=close];
                let align = if key == "alignas" {
                    Some(inner[1..inner.len() - 1].to_string())
                } else {
                    inner.find("aligned").and_then(|p| {
                        let o = p + inner[p..].find('(')?;
                        let c = matching_close(inner, o)?;
                        Some(inner[o + 1..c].to_string())
                    })
                };
                let rest = format!("{} {}", &decl[..start], &decl[close + 1..]);
                let (rest, more) = take_alignment(&rest);
                return (rest, align.or(more));
            }
        }
    }
    (decl.to_string(), None)
}

fn matching_close(s: &str, open: usize) -> Option<usize> {
    let mut depth = 0;
    for (k, c) in s.char_indices().skip_while(|&(k, _)| k < open) {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(k);
                }
            }
            _ => {}
        }
    }
    None
}

fn matching_open(s: &str) -> Option<usize> {
    let mut depth = 0;
    for (k, c) in s.char_indices().rev() {
        match c {
            ']' => depth += 1,
            '[' => {
                depth -= 1;
                if depth == 0 {
                    return Some(k);
                }
            }
            _ => {}
        }
    }
    None
}

/// `file:line` of a byte offset in preprocessed text, from its line markers.
fn location(pre: &str, offset: usize) -> String {
    let (mut file, mut line) = ("<preprocessed>".to_string(), 1usize);
    for l in pre[..offset.min(pre.len())].split_inclusive('\n') {
        let mut parts = l.trim_end().splitn(3, ' ');
        if parts.next() == Some("#") {
            if let (Some(n), Some(f)) = (parts.next().and_then(|n| n.parse().ok()), parts.next()) {
                line = n;
                file = f.split('"').nth(1).unwrap_or(f).to_string();
                continue;
            }
        }
        if l.ends_with('\n') {
            line += 1;
        }
    }
    format!("{file}:{line}")
}

fn append_registry(text: &mut String, family: &str, kernels: &[String]) {
    let ns = family_namespace(family);
    let entry = |k: &str| format!("::insclr_emu::Entry<decltype(&{ns}::{k}), &{ns}::{k}>");
    text.push_str("\n// ---- registry written by build.rs ----\n");
    if kernels.is_empty() {
        writeln!(
            text,
            "static const ::insclr_emu::Kernel* const insclr_emu_kernels = nullptr;"
        )
        .unwrap();
    } else {
        writeln!(
            text,
            "static const ::insclr_emu::Kernel insclr_emu_kernels[] = {{"
        )
        .unwrap();
        for k in kernels {
            let e = entry(k);
            writeln!(text, "    {{\"{k}\", &{e}::call, {e}::nargs, {e}::sizes}},").unwrap();
        }
        writeln!(text, "}};").unwrap();
    }
    writeln!(
        text,
        "extern \"C\" const ::insclr_emu::Family insclr_emu_family_{family} = {{\"{family}\", insclr_emu_kernels, {}u}};",
        kernels.len()
    )
    .unwrap();
}

fn registry_source(families: &[(String, Vec<String>)]) -> String {
    let mut s = String::from(
        "// Written by build.rs: every emulated kernel family.\n#include \"emu.cuh\"\n",
    );
    for (f, _) in families {
        writeln!(
            s,
            "extern \"C\" const ::insclr_emu::Family insclr_emu_family_{f};"
        )
        .unwrap();
    }
    s.push_str("extern \"C\" const ::insclr_emu::Family* const insclr_emu_families[] = {");
    for (f, _) in families {
        write!(s, "&insclr_emu_family_{f}, ").unwrap();
    }
    s.push_str("nullptr};\n");
    writeln!(
        s,
        "extern \"C\" const unsigned int insclr_emu_family_count = {}u;",
        families.len()
    )
    .unwrap();
    s
}

/// `emu_kernels.rs`: the (family, kernel) pairs, for `info` and the backend's op table.
fn write_kernel_list(out_dir: &Path, families: &[(String, Vec<String>)]) {
    let mut rs = String::from("/// (family, kernel) for every emulated kernel.\npub const KERNELS: &[(&str, &str)] = &[\n");
    for (f, ks) in families {
        for k in ks {
            writeln!(rs, "    ({f:?}, {k:?}),").unwrap();
        }
    }
    rs.push_str("];\n");
    fs::write(out_dir.join("emu_kernels.rs"), rs).expect("write emu_kernels.rs");
}
