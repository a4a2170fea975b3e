//! The project's shell scripts, where they can be checked without their whole run.

use std::path::Path;
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
