//! The GPU build: every `kernels/*.cu` into a compressed fatbin with nvcc, ptxas's resource
//! report parsed and checked for spills, and `$OUT_DIR/kernels.rs` written for the crate to embed.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One family's fatbin and the resources ptxas reported for its kernels.
pub struct Compiled {
    family: String,
    fatbin: PathBuf,
    resources: Vec<KernelResources>,
}

#[derive(Default)]
struct KernelResources {
    name: String,
    arch: String,
    registers: u32,
    smem_bytes: u32,
    stack_bytes: u32,
    spill_store_bytes: u32,
    spill_load_bytes: u32,
}

/// The virtual arch whose PTX the fatbins carry for GPUs newer than every listed one: the last
/// portable one (`90a`/`100f` PTX is not forward-compatible), or the last if all are specific.
fn ptx_arch(archs: &[String]) -> &str {
    archs
        .iter()
        .rev()
        .find(|a| a.chars().all(|c| c.is_ascii_digit()))
        .unwrap_or_else(|| archs.last().unwrap())
}

/// Compiles every source in parallel; a failure is a build error with `require`, else warnings.
pub fn compile_all(
    nvcc: &Path,
    sources: &[PathBuf],
    archs: &[String],
    out_dir: &Path,
    require: bool,
) -> Vec<Compiled> {
    // One thread per file: nvcc is single-threaded and the files are independent.
    let results: Vec<Result<Compiled, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = sources
            .iter()
            .map(|src| s.spawn(move || compile_one(nvcc, src, archs, out_dir)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ok = Vec::new();
    let mut failures = Vec::new();
    for r in results {
        match r {
            Ok(c) => ok.push(c),
            Err(e) => failures.push(e),
        }
    }
    for c in &ok {
        let source = fs::read_to_string(sources.iter().find(|p| stem(p) == c.family).unwrap())
            .unwrap_or_default();
        for k in &c.resources {
            println!(
                "insclr kernel {} sm_{}: {} registers, {} B smem, {} B stack, spill {} B store / {} B load",
                k.name, k.arch, k.registers, k.smem_bytes, k.stack_bytes, k.spill_store_bytes, k.spill_load_bytes
            );
            if k.spill_store_bytes + k.spill_load_bytes > 0 {
                let allowed = source.contains(&format!("allow-spill: {}", k.name));
                let msg = format!(
                    "kernel {} (kernels/{}.cu, sm_{}) spills {} B store / {} B load; reduce register \
                     pressure or add `// allow-spill: {} <reason>` to its source",
                    k.name, c.family, k.arch, k.spill_store_bytes, k.spill_load_bytes, k.name
                );
                if !allowed && require {
                    failures.push(msg);
                } else if !allowed {
                    println!("cargo:warning={msg}");
                }
            }
        }
    }
    if !failures.is_empty() {
        let all = failures.join("\n\n");
        if require {
            panic!("INSCLR_REQUIRE_NVCC=1 and the CUDA kernels did not build cleanly:\n\n{all}");
        }
        for line in all.lines().filter(|l| !l.trim().is_empty()).take(40) {
            println!("cargo:warning={line}");
        }
    }
    ok
}

fn stem(p: &Path) -> String {
    p.file_stem().unwrap().to_string_lossy().into_owned()
}

fn compile_one(
    nvcc: &Path,
    src: &Path,
    archs: &[String],
    out_dir: &Path,
) -> Result<Compiled, String> {
    let family = stem(src);
    let fatbin = out_dir.join(format!("{family}.fatbin"));
    let mut cmd = Command::new(nvcc);
    cmd.arg("-fatbin")
        .args(["-std=c++17", "-O3", "-lineinfo", "-Xptxas", "-v"])
        .arg("-I")
        .arg(src.parent().unwrap());
    // No --use_fast_math: the kernels are checked against their CPU twins at 1e-5.
    // Every test binary embeds every fatbin, and scripts/device-check.sh carries them all to the
    // GPU machine in 60 MiB: compressed, sm_90 + sm_90a take 0.86 MB instead of 4.9 MB (a single
    // uncompressed sm_90 took 2.6 MB). The driver inflates them at load; CUDA 13's modes need
    // driver 580+, which CUDA 13 code needs anyway.
    cmd.arg("--compress-mode=size");
    for a in archs {
        cmd.arg(format!("-gencode=arch=compute_{a},code=sm_{a}"));
    }
    let ptx = ptx_arch(archs);
    cmd.arg(format!("-gencode=arch=compute_{ptx},code=compute_{ptx}"));
    cmd.arg("-o").arg(&fatbin).arg(src);
    let out = cmd
        .output()
        .map_err(|e| format!("could not run {}: {e}", nvcc.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(format!(
            "nvcc failed on {} ({}):\n{}{}",
            src.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            stderr
        ));
    }
    // ptxas reports one arch after the other; a kernel's archs side by side read better.
    let mut resources = parse_ptxas(&stderr);
    resources.sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
    Ok(Compiled {
        family,
        fatbin,
        resources,
    })
}

/// Parses the `-Xptxas -v` report: "Compiling entry function 'X' for 'sm_90'", then an unprefixed
/// "N bytes stack frame, N bytes spill stores, N bytes spill loads", then "Used N registers, used N
/// barriers[, N bytes smem]" (smem is omitted when zero).
fn parse_ptxas(stderr: &str) -> Vec<KernelResources> {
    let mut all: Vec<KernelResources> = Vec::new();
    for line in stderr.lines() {
        let info = line.split("ptxas info    : ").nth(1).unwrap_or(line.trim());
        if let Some(rest) = info.strip_prefix("Compiling entry function '") {
            let mut parts = rest.split('\'');
            let name = parts.next().unwrap_or_default().to_string();
            let arch = parts
                .nth(1)
                .unwrap_or_default()
                .trim_start_matches("sm_")
                .to_string();
            all.push(KernelResources {
                name,
                arch,
                ..Default::default()
            });
            continue;
        }
        let Some(k) = all.last_mut() else { continue };
        let num_before = |key: &str| -> Option<u32> {
            let idx = info.find(key)?;
            info[..idx]
                .split([' ', ','])
                .rev()
                .find(|t| !t.is_empty())?
                .parse()
                .ok()
        };
        if info.contains("stack frame") {
            k.stack_bytes = num_before(" bytes stack frame").unwrap_or(0);
            k.spill_store_bytes = num_before(" bytes spill stores").unwrap_or(0);
            k.spill_load_bytes = num_before(" bytes spill loads").unwrap_or(0);
        }
        if info.starts_with("Used ") {
            k.registers = num_before(" registers").unwrap_or(0);
            k.smem_bytes = num_before(" bytes smem").unwrap_or(0);
        }
    }
    all
}

/// Writes `$OUT_DIR/kernels.rs` (the fatbins to embed) and `kernel_resources.tsv`.
pub fn write_embed(out_dir: &Path, compiled: &[Compiled], archs: &[String]) {
    let mut rs = String::new();
    writeln!(rs, "/// Target SM versions the kernels were built for.").unwrap();
    writeln!(rs, "pub const ARCHS: &[&str] = &{:?};", archs).unwrap();
    writeln!(
        rs,
        "/// The virtual arch of the PTX in the fatbins (JIT-compiled on newer GPUs)."
    )
    .unwrap();
    writeln!(rs, "pub const PTX_ARCH: &str = {:?};", ptx_arch(archs)).unwrap();
    writeln!(
        rs,
        "/// (family, fatbin) for every `kernels/<family>.cu` that compiled."
    )
    .unwrap();
    writeln!(rs, "pub const FATBINS: &[(&str, &[u8])] = &[").unwrap();
    for c in compiled {
        writeln!(
            rs,
            "    ({:?}, include_bytes!({:?})),",
            c.family,
            c.fatbin.display().to_string()
        )
        .unwrap();
    }
    writeln!(rs, "];").unwrap();
    let mut tsv = String::from("family\tkernel\tarch\tregisters\tsmem_bytes\tstack_bytes\tspill_store_bytes\tspill_load_bytes\n");
    for c in compiled {
        for k in &c.resources {
            writeln!(
                tsv,
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                c.family,
                k.name,
                k.arch,
                k.registers,
                k.smem_bytes,
                k.stack_bytes,
                k.spill_store_bytes,
                k.spill_load_bytes
            )
            .unwrap();
        }
    }
    fs::write(out_dir.join("kernel_resources.tsv"), &tsv).unwrap();
    writeln!(
        rs,
        "/// The ptxas resource report, one kernel per line (tab-separated, with a header)."
    )
    .unwrap();
    writeln!(
        rs,
        "pub const RESOURCES_TSV: &str = include_str!(\"kernel_resources.tsv\");"
    )
    .unwrap();
    fs::write(out_dir.join("kernels.rs"), rs).unwrap();
}
