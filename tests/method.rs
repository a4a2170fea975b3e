//! End-to-end checks of the method's command line: `insclr-cu pool`.

use insclr::backend::CpuBackend;
use insclr::io::npy::{self, Array};
use insclr::mining::CandidatePool;
use insclr::rng::Rng;
use std::path::PathBuf;
use std::process::Command;

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("insclr-method-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn unit_rows(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n)
        .flat_map(|_| {
            let v: Vec<f32> = (0..d).map(|_| r.normal()).collect();
            let nrm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
            v.into_iter().map(move |a| a / nrm)
        })
        .collect()
}

fn pool_cmd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_insclr-cu"))
        .arg("pool")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn pool_cli_writes_the_pool_and_warns_on_non_unit_rows() {
    let dir = tmpdir("cli");
    let (n, d, k) = (50, 8, 5);
    let mut x = unit_rows(n, d, 3);
    x[0] *= 2.0;
    x[7 * d + 3] += 0.1;
    let feats = dir.join("f.npy");
    npy::write(&feats, &Array::new(vec![n, d], x.clone()).unwrap()).unwrap();
    let out = dir.join("p.npz");
    let o = pool_cmd(&[
        "--feats",
        feats.to_str().unwrap(),
        "--k",
        "5",
        "--out",
        out.to_str().unwrap(),
        "--tile",
        "7",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("warning: 2 of 50 descriptors"), "{stderr}");
    let got = CandidatePool::load(&out, n).unwrap();
    let want = CandidatePool::compute(&CpuBackend::new(), &x, n, d, k, 16, &mut |_| {}).unwrap();
    assert_eq!(got, want);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn pool_cli_errors_name_the_problem() {
    let dir = tmpdir("err");
    let feats = dir.join("f.npy");
    npy::write(&feats, &Array::new(vec![4, 2], unit_rows(4, 2, 1)).unwrap()).unwrap();
    let out = dir.join("p.npz");
    let o = pool_cmd(&[
        "--feats",
        feats.to_str().unwrap(),
        "--k",
        "4",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("k = 4") && stderr.contains("n-1 = 3"),
        "{stderr}"
    );
    let missing = dir.join("missing.npy");
    let o = pool_cmd(&[
        "--feats",
        missing.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("missing.npy"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}
