//! Compiles every `kernels/*.cu` twice: into a fatbin with nvcc (embedded, for GPUs;
//! `build/nvcc.rs`), and with the host C++ compiler into the emulated device (`build/emu.rs`),
//! which needs no nvcc.
//!
//! nvcc is looked up in `$NVCC`, `.cuda-tools/bin` (scripts/install-cuda-tools.sh),
//! `$CUDA_HOME/bin`, then `PATH`. Without nvcc the crate still builds: a cargo warning, no
//! kernels embedded, and the CUDA backend says "built without kernels" at run time.
//! `INSCLR_REQUIRE_NVCC=1` turns a missing nvcc, a compile error or an unexplained register
//! spill into a build failure. `INSCLR_CUDA_ARCHS` (default `90;90a`) lists SM versions, e.g.
//! `80;90;90a`: machine code for each, plus PTX of the highest that is not arch-specific, for
//! newer GPUs. `90a` is sm_90 with the Hopper-only instructions (wgmma, TMA multicast,
//! setmaxnreg); its machine code runs only on sm_90 GPUs and its PTX on none newer, so it sits
//! beside sm_90 instead of replacing it.
//!
//! The `-Xptxas -v` resource report (registers, shared memory, spills per kernel) is parsed,
//! printed by `insclr-cu info --kernels`, and written to `$OUT_DIR/kernel_resources.tsv`.
//! A kernel may spill only if its source has a line `// allow-spill: <kernel> <reason>`.
//!
//! When cargo reruns this script (every kernel through nvcc and the C++ compiler: minutes, then
//! the crate again): when `kernels/`, this file or `build/` change, when one of the variables
//! above (or `CXX`) changes, or when the nvcc it used changes on disk. Not when `PATH` changes:
//! a shell, an IDE and a script rarely agree on `PATH`, and each difference cost a full rebuild.
//! So an nvcc that appears after a build that found none (or an earlier one on `PATH`) is not
//! noticed by itself: scripts/install-cuda-tools.sh touches this file when it installs one;
//! otherwise `touch build.rs`, or build with `NVCC=/path/to/nvcc`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

#[path = "build/emu.rs"]
mod emu;
#[path = "build/nvcc.rs"]
mod nvcc;

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build");
    // Not PATH (see the top of this file): the nvcc found through it is watched below instead.
    for var in [
        "NVCC",
        "CUDA_HOME",
        "INSCLR_REQUIRE_NVCC",
        "INSCLR_CUDA_ARCHS",
        "INSCLR_EMU_SANITIZE",
        "CXX",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let require = env::var("INSCLR_REQUIRE_NVCC").is_ok_and(|v| v == "1");
    let archs = parse_archs(&env::var("INSCLR_CUDA_ARCHS").unwrap_or_else(|_| "90;90a".into()));

    let mut sources: Vec<PathBuf> = fs::read_dir(manifest.join("kernels"))
        .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    sources.retain(|p| p.extension().is_some_and(|e| e == "cu"));
    sources.sort();
    for entry in fs::read_dir(manifest.join("kernels"))
        .into_iter()
        .flatten()
        .flatten()
    {
        println!("cargo:rerun-if-changed={}", entry.path().display());
    }

    emu::build(&manifest.join("kernels"), &out_dir, &sources);

    let compiled = match find_nvcc(&manifest) {
        None => {
            let msg = "nvcc not found ($NVCC, .cuda-tools/bin, $CUDA_HOME/bin, PATH): building \
                       without CUDA kernels; run scripts/install-cuda-tools.sh to get one (an nvcc \
                       installed otherwise: `touch build.rs` or set NVCC, since a change of PATH \
                       alone does not rerun the build script)";
            if require {
                panic!("INSCLR_REQUIRE_NVCC=1: {msg}");
            }
            println!("cargo:warning={msg}");
            Vec::new()
        }
        Some(path) => {
            watch_nvcc(&path);
            nvcc::compile_all(&path, &sources, &archs, &out_dir, require)
        }
    };
    nvcc::write_embed(&out_dir, &compiled, &archs);
}

fn parse_archs(spec: &str) -> Vec<String> {
    let archs: Vec<String> = spec
        .split([';', ','])
        .map(|s| s.trim().trim_start_matches("sm_").to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for a in &archs {
        let digits = a.trim_end_matches(['a', 'f']);
        assert!(
            !digits.is_empty()
                && digits.chars().all(|c| c.is_ascii_digit())
                && a.len() - digits.len() <= 1,
            "INSCLR_CUDA_ARCHS: '{a}' is not an SM version; use e.g. 80;90 or 90;90a"
        );
    }
    assert!(
        !archs.is_empty(),
        "INSCLR_CUDA_ARCHS is empty; use e.g. 90 or 90;90a"
    );
    archs
}

fn find_nvcc(manifest: &Path) -> Option<PathBuf> {
    if let Ok(p) = env::var("NVCC") {
        return Some(PathBuf::from(p));
    }
    let local = manifest.join(".cuda-tools/bin/nvcc");
    if local.is_file() {
        return Some(local);
    }
    if let Ok(home) = env::var("CUDA_HOME") {
        let p = PathBuf::from(home).join("bin/nvcc");
        if p.is_file() {
            return Some(p);
        }
    }
    in_path("nvcc")
}

/// `name` in the first `PATH` directory that has it.
fn in_path(name: &str) -> Option<PathBuf> {
    env::var_os("PATH").and_then(|paths| {
        env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Reruns this script when the nvcc it used changes on disk (a new toolkit in its place).
/// `$NVCC` may be a bare name, which runs the one on `PATH`. Only files that exist are named:
/// cargo reruns a script on every build while a path it watches is missing. A symlink's target
/// is named too (`.cuda-tools/bin` is one).
fn watch_nvcc(nvcc: &Path) {
    let file = if nvcc.components().count() == 1 {
        in_path(&nvcc.to_string_lossy())
    } else {
        Some(nvcc.to_path_buf())
    };
    let Some(file) = file.filter(|f| f.is_file()) else {
        return;
    };
    println!("cargo:rerun-if-changed={}", file.display());
    if let Ok(real) = fs::canonicalize(&file) {
        if real != file {
            println!("cargo:rerun-if-changed={}", real.display());
        }
    }
}
