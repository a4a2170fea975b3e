//! The project's shell scripts, where they can be checked without their whole run.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `scripts/demo.sh` runs the binary from wherever cargo builds it: with `CARGO_TARGET_DIR`
/// set (absolute or relative), not `target/release`. `timeout` keeps a script that ignores
/// `--print-binary` (and starts the whole demo) from hanging the test.
#[test]
fn demo_finds_the_binary_under_cargo_target_dir() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cases = [
        (
            Some("/tmp/insclr-elsewhere"),
            "/tmp/insclr-elsewhere/release/insclr-cu".to_string(),
        ),
        (
            Some("rel/tgt"),
            format!("{}/rel/tgt/release/insclr-cu", root.display()),
        ),
        (None, format!("{}/target/release/insclr-cu", root.display())),
    ];
    for (dir, want) in cases {
        let mut cmd = Command::new("timeout");
        cmd.args(["60", "bash", "scripts/demo.sh", "--print-binary"])
            .current_dir(root)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET_DIR");
        if let Some(d) = dir {
            cmd.env("CARGO_TARGET_DIR", d);
        }
        let out = cmd.output().expect("running bash scripts/demo.sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{dir:?}: {:?}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.trim(), want, "CARGO_TARGET_DIR={dir:?}");
    }
}

/// `scripts/profile.sh` where Nsight Systems is not installed (CI) says so and fails, before
/// building or running anything.
#[test]
fn profile_without_nsys_says_what_is_missing() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("timeout")
        .args([
            "60",
            "bash",
            "scripts/profile.sh",
            "configs/demo.toml",
            "2",
            "/bin/false",
        ])
        .current_dir(root)
        .env("PATH", "/usr/bin:/bin")
        .output()
        .expect("running bash scripts/profile.sh");
    let err = String::from_utf8_lossy(&out.stderr);
    if Command::new("sh")
        .args(["-c", "command -v nsys"])
        .env("PATH", "/usr/bin:/bin")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("nsys is installed here: the missing-nsys message is not checked");
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("nsys (Nsight Systems) is not on PATH"),
        "{err}"
    );
}

/// `scripts/mutate-kernels.py --check`: every kernel mutant's original text is still found
/// exactly once in its file, and every `kernels/*.cu` has mutants. A kernel edit that moves a
/// mutant's text fails here, naming the mutant to update (the whole mutation run is not part of
/// `cargo test`: it rebuilds the kernels once per mutant).
#[test]
fn kernel_mutants_still_apply() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .args(["scripts/mutate-kernels.py", "--check"])
        .current_dir(root)
        .output()
        .expect("running python3 scripts/mutate-kernels.py --check");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The device runner's plan for `profile` (its dry run): exit status, stdout, stderr.
fn device_dry_run(profile: &str, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new("timeout");
    cmd.args(["60", "bash", "scripts/device-run.sh", profile, "--dry-run"])
        .current_dir(root);
    // The defaults are what is checked, not whatever the environment overrides.
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("INSCLR_DEVICE_")) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let out = cmd
        .output()
        .expect("running bash scripts/device-run.sh --dry-run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One device call may run 600 s; the runner's phases, with their grace and margin, must fit
/// 540 s in every profile (the last GPU run's limits added up to 890 s).
#[test]
fn device_profiles_fit_one_call() {
    for profile in ["full", "perf"] {
        let (code, out, err) = device_dry_run(profile, &[]);
        assert_eq!(code, Some(0), "{profile}: {out}{err}");
        let total: u32 = out
            .lines()
            .find_map(|l| l.strip_prefix("| **total** | **"))
            .and_then(|l| l.split("**").next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{profile}: no total in\n{out}"));
        assert!(total <= 540, "{profile}: {total} s\n{out}");
        // Every phase the runner knows is in the plan with its limit.
        for phase in [
            "unpack", "tests", "bench", "step", "torch", "ncu", "summary",
        ] {
            assert!(
                out.contains(&format!("| {phase} | ")),
                "{profile}: {phase}\n{out}"
            );
        }
    }
    // CONTRIBUTING.md's table says the same totals.
    let totals: Vec<String> = ["full", "perf"]
        .iter()
        .map(|p| {
            let (_, out, _) = device_dry_run(p, &[]);
            let line = out
                .lines()
                .find(|l| l.starts_with("| **total** | **"))
                .unwrap();
            line.split("**").nth(3).unwrap().to_string()
        })
        .collect();
    let contributing =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("CONTRIBUTING.md"))
            .unwrap();
    let row = format!("| total | {} | {} |", totals[0], totals[1]);
    assert!(contributing.contains(&row), "CONTRIBUTING.md lacks {row:?}");
    // A limit raised past the budget is refused by the dry run.
    let (code, out, err) = device_dry_run("perf", &[("INSCLR_DEVICE_BENCH_S", "400")]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("over budget: 780 s > 540 s"), "{err}");
}

/// A stand-in GPU machine in `dir`: the runner staged as scripts/device-check.sh stages it,
/// with stand-in binaries (shell scripts, compressed), and a PATH folder of ordinary tools only
/// (no nvidia-smi, ncu, compute-sanitizer or PyTorch). Returns the PATH folder.
fn stand_in_device(dir: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    let (stage, bin, path) = (
        dir.join(".device"),
        dir.join(".device/bin"),
        dir.join("path"),
    );
    for d in [&bin, &path, &dir.join("scripts"), &dir.join("benches")] {
        std::fs::create_dir_all(d).unwrap();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (from, to) in [
        ("scripts/device-run.sh", ".device/run.sh"),
        ("scripts/torch-baseline.py", "scripts/torch-baseline.py"),
        ("benches/conv_shapes.txt", "benches/conv_shapes.txt"),
    ] {
        std::fs::copy(root.join(from), dir.join(to)).unwrap();
    }
    std::fs::write(
        stage.join("BUILD"),
        format!(
            "commit=0123abc\nbuild_root={}\nbuilt=2026-12-01T00:00:00Z\narchs=90;90a\nstaging_s=1\n",
            dir.join("build-machine").display()
        ),
    )
    .unwrap();
    std::fs::write(
        stage.join("resources.txt"),
        "conv  conv2d_fwd_bf16  90  125\n",
    )
    .unwrap();
    let pass = "#!/bin/sh\necho 'RAN x on cuda (stand-in)'\necho 'test result: ok. 1 passed'\n";
    let fakes = [
        ("test-kernels", pass),
        // Overruns the tests' limit: killed, reported, the call fails.
        ("test-layers", "#!/bin/sh\nsleep 60\n"),
        ("test-nn_device", pass),
        ("test-emu", pass),
        ("test-pipeline", pass),
        (
            "bench-kernels",
            "#!/bin/sh\necho \"kernels: $* fast=$INSCLR_BENCH_FAST families=$INSCLR_BENCH_FAMILIES nets=$INSCLR_BENCH_CONV_NETS\"\nprintf '| kernel |\\n|---|\\n| stand-in conv |\\n' > \"$INSCLR_BENCH_TABLE\"\n",
        ),
        (
            "bench-train_step",
            "#!/bin/sh\necho \"step: $* profile=$INSCLR_PROFILE\"\nprintf '| training step (ours) |\\n|---|\\n| stand-in step |\\n' > \"$INSCLR_BENCH_TABLE\"\n",
        ),
        ("insclr-cu", pass),
    ];
    for (name, body) in fakes {
        let f = bin.join(name);
        std::fs::write(&f, body).unwrap();
        let ok = Command::new("gzip").arg(&f).status().unwrap().success();
        assert!(ok, "gzip {name}");
    }
    let tools = "bash sh env timeout gzip gunzip cat sed awk grep tr paste date mkdir ls rm ln \
                 tee head tail sort basename dirname sha256sum chmod xargs wc cut find true sleep";
    for t in tools.split_whitespace() {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .unwrap();
        let target = String::from_utf8_lossy(&found.stdout).trim().to_string();
        assert!(!target.is_empty(), "{t} is not installed");
        std::os::unix::fs::symlink(target, path.join(t)).unwrap();
    }
    // python3 as its real binary: a pyenv shim needs more than this PATH.
    if let Ok(o) = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
    {
        let exe = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if !exe.is_empty() {
            std::os::unix::fs::symlink(exe, path.join("python3")).unwrap();
        }
    }
    path
}

/// Runs the stand-in machine's runner: exit status, summary.md, the runner's output and
/// bench.log.
fn run_stand_in(dir: &Path, path: &Path, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out_dir = dir.join("out");
    let run = Command::new(path.join("timeout"))
        .args(["120", "bash", ".device/run.sh", "perf"])
        .current_dir(dir)
        .env_clear()
        .env("PATH", path)
        .env("HOME", dir)
        .env("OUT", &out_dir)
        .envs(env.iter().copied())
        .output()
        .expect("running the device runner");
    let read = |f: &str| std::fs::read_to_string(out_dir.join(f)).unwrap_or_default();
    let log = format!(
        "{}{}\n--- bench.log\n{}--- ncu.log\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
        read("bench.log"),
        read("ncu.log")
    );
    (run.status.code(), read("summary.md"), log)
}

/// The runner on a machine that has none of the tools it can use, with stand-in binaries:
/// every phase still runs, says what is missing, stamps its table, and a test that overruns
/// its limit fails the call without stopping the phases after it.
#[test]
fn device_runner_goes_on_without_its_tools() {
    let dir = std::env::temp_dir().join(format!("insclr-device-run-{}", std::process::id()));
    let path = stand_in_device(&dir);
    let (code, summary, log) = run_stand_in(&dir, &path, &[("INSCLR_DEVICE_TESTS_S", "3")]);
    assert_eq!(code, Some(1), "{summary}{log}");
    for want in [
        "# insclr-cu device run, profile perf",
        // BUILD is read as text: its ';' is not a command separator.
        "- commit: 0123abc (built 2026-12-01T00:00:00Z, archs 90;90a; staged in 1 s)",
        "- GPU: nvidia-smi unavailable",
        "- clocks before: nvidia-smi not found",
        "- clocks after: nvidia-smi not found",
        "- the tests ran out of their time",
        "- test-kernels: pass (test result: ok. 1 passed)",
        "- test-layers: FAIL (exit none (did not finish))",
        "| stand-in conv |",
        "| stand-in step |",
        "SKIPPED PyTorch baseline",
        "- not run: ncu not found",
        "_binary: commit 0123abc, resources.txt sha256 ",
        "conv  conv2d_fwd_bf16  90  125",
        // The plan, with the tests' limit as overridden: 510 s less 37.
        "| **total** | **473** |",
    ] {
        assert!(summary.contains(want), "{want:?} not in\n{summary}\n{log}");
    }
    // The perf profile's benchmarks: fast mode, the convolutions of the two ResNets, and the
    // step with its per-kernel breakdown.
    assert!(
        log.contains(
            "kernels: --bench (conv/cuda/(conv2d|sgemm_cublas|gemm_cublas_bf16)|layers/cuda/batchnorm)_ fast=1 families=conv,layers nets=resnet101,resnet50"
        ),
        "{log}"
    );
    assert!(log.contains("step: --bench cuda profile=1"), "{log}");
    // Only what the profile runs was unpacked.
    let bin = dir.join(".device/bin");
    assert!(bin.join("test-pipeline.gz").exists() && bin.join("test-kernels").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The Nsight Compute phase with a stand-in `ncu`: metrics this ncu does not list are left
/// out (and said), each selection is one run, and the report's raw CSV becomes one table row
/// per launch with the derived ratios.
#[test]
fn device_runner_tables_nsight_compute_metrics() {
    let dir = std::env::temp_dir().join(format!("insclr-device-ncu-{}", std::process::id()));
    let path = stand_in_device(&dir);
    let has_python = path.join("python3").exists();
    // Knows every metric of the runner's list but the HMMA instruction count.
    let known = "gpu__time_duration sm__cycles_elapsed sm__pipe_tensor_op_hmma_cycles_active \
        smsp__inst_executed smsp__inst_issued \
        l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st \
        l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st \
        l1tex__t_sectors_pipe_lsu_mem_global_op_ld l1tex__t_requests_pipe_lsu_mem_global_op_ld \
        l1tex__t_sectors_pipe_lsu_mem_global_op_st l1tex__t_requests_pipe_lsu_mem_global_op_st \
        smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active \
        smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active \
        smsp__average_warps_issue_stalled_barrier_per_issue_active \
        smsp__average_warps_issue_stalled_mio_throttle_per_issue_active \
        smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active \
        smsp__average_warps_issue_stalled_lg_throttle_per_issue_active \
        smsp__average_warps_issue_stalled_wait_per_issue_active \
        smsp__average_warps_issue_stalled_not_selected_per_issue_active \
        smsp__average_warps_issue_stalled_no_instruction_per_issue_active \
        smsp__average_warps_issue_stalled_dispatch_stall_per_issue_active \
        smsp__average_warps_issue_stalled_selected_per_issue_active \
        sm__warps_active dram__throughput sm__throughput";
    let csv = [
        r#""ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","gpu__time_duration.sum","sm__cycles_elapsed.avg.per_second","sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active","smsp__inst_issued.sum","l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum","l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum","l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum","l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum","smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio","smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio","smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio","smsp__average_warps_issue_stalled_wait_per_issue_active.ratio","sm__warps_active.avg.pct_of_peak_sustained_active","launch__registers_per_thread""#,
        r#""","","","","","","","","","","","usecond","cycle/nsecond","%","inst","","","sector","request","inst","inst","inst","inst","%","register/thread""#,
        r#""0","1","bench-kernels","gpu","conv2d_fwd_bf16","1","7","(256, 1, 1)","(392, 2, 1)","0","9.0","1.2345","1.75","12.5","3,000,000","100","400","800","200","2.5","0.5","1.5","0.25","18.6","125""#,
    ]
    .join("\n");
    std::fs::write(dir.join("report.csv"), csv + "\n").unwrap();
    let ncu = format!(
        "#!/bin/sh\ncase \"$1\" in\n  --version) echo 'Version 2025.3 (stand-in)'; exit 0 ;;\n  --query-metrics) echo 'Device gh100'; for m in {known}; do echo \"$m Counter unit description\"; done; exit 0 ;;\n  --import) cat {csv}; exit 0 ;;\nesac\nwhile [ $# -gt 0 ]; do\n  case \"$1\" in\n    --metrics) echo \"metrics: $2\" ;;\n    -o) echo report > \"$2.ncu-rep\" ;;\n  esac\n  shift\ndone\n",
        csv = dir.join("report.csv").display()
    );
    let ncu_path = path.join("ncu");
    std::fs::write(&ncu_path, ncu).unwrap();
    let ok = Command::new("chmod")
        .arg("+x")
        .arg(&ncu_path)
        .status()
        .unwrap();
    assert!(ok.success());
    let (code, summary, log) = run_stand_in(
        &dir,
        &path,
        &[
            ("INSCLR_DEVICE_TESTS_S", "0"),
            ("INSCLR_DEVICE_BENCH_S", "0"),
            ("INSCLR_DEVICE_TORCH_S", "0"),
            ("INSCLR_DEVICE_STEP_S", "0"),
            ("INSCLR_DEVICE_NCU_SELECT", "conv/cuda/a$;conv/cuda/b$"),
        ],
    );
    assert_eq!(code, Some(0), "{summary}{log}");
    for want in [
        "- Version 2025.3 (stand-in) at ",
        "- metrics this ncu does not know (left out): sm__inst_executed_pipe_tensor_op_hmma.sum",
        "- selection 1: exit 0",
        "- selection 2: exit 0, 0 benchmarks launched so far: `conv/cuda/b$`",
    ] {
        assert!(summary.contains(want), "{want:?} not in\n{summary}\n{log}");
    }
    // Asked for every known metric and the launch statistics, not the unknown one.
    let asked: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix("metrics: "))
        .collect();
    assert_eq!(asked.len(), 2, "{log}");
    for metric in asked[0].split(',') {
        let base = metric.split('.').next().unwrap();
        assert!(
            known.split_whitespace().any(|k| k == base) || base.starts_with("launch__"),
            "{metric}"
        );
    }
    // 31 in the runner's list, less the one this ncu does not know.
    assert_eq!(asked[0].split(',').count(), 30, "{}", asked[0]);
    if has_python {
        // 1.2345 us, 1.75 cycles per ns (scaled units, read from the units row), conflicts
        // 100 / 400 wavefronts, 800 sectors / 200 requests, stalls ordered by their ratio;
        // metrics the CSV lacks are n/a.
        let row = "| ncu-1#0 | conv2d_fwd_bf16 | (392, 2, 1) / (256, 1, 1) | 125 | 1.2 | 1.75 | 12.5 | 3.00 | 0.25, n/a | 4.00, n/a | 18.6 | n/a | n/a | long_scoreboard 2.50, mio_throttle 1.50, barrier 0.50 |";
        assert!(summary.contains(row), "{row:?} not in\n{summary}\n{log}");
        assert!(
            summary.contains("| ncu-2#0 | conv2d_fwd_bf16 |"),
            "{summary}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
