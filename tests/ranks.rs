//! Issue 30: work split over ranks gives what one rank gives. `extract` over 2 and 3 ranks
//! writes the matrix, row list and list of unusable images of 1 rank, byte for byte (a small
//! ResNet, on the CPU and on the emulated GPU); the candidate pool with its database split over
//! 2 and 3 ranks is the pool of 1 rank (ties included). The training step's equivalence and a
//! dead rank are in tests/train.rs; `train --gpus 2` end to end in tests/scripts.rs.

mod common;

use insclr::backend::{CpuBackend, DType, DeviceChoice};
use insclr::dist::threads;
use insclr::jobs::{extract, DescribeOptions, ExtractOptions};
use insclr::mining::CandidatePool;
use insclr::rng::Rng;
use std::path::{Path, PathBuf};

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("insclr-ranks-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// 13 images of mixed sizes (so batches group by size differently on each rank) and one
/// corrupt file among them, which lands in the middle rank's share.
fn images(dir: &Path) -> PathBuf {
    let root = dir.join("images");
    std::fs::create_dir_all(&root).unwrap();
    let mut r = Rng::new(9);
    for i in 0..13u32 {
        let (w, h) = (24 + 8 * (i % 3), 20 + 4 * (i % 2));
        let img = image::RgbImage::from_fn(w, h, |_, _| {
            image::Rgb([r.below(256) as u8, r.below(256) as u8, r.below(256) as u8])
        });
        img.save(root.join(format!("im{i:02}.png"))).unwrap();
    }
    std::fs::write(root.join("im06b.jpg"), b"not an image").unwrap();
    root
}

fn files(out: &Path) -> Vec<Vec<u8>> {
    ["npy", "txt", "bad.txt"]
        .iter()
        .map(|e| std::fs::read(out.with_extension(e)).unwrap())
        .collect()
}

fn extract_matches_one_rank(device: DeviceChoice, tag: &str) {
    let dir = tmpdir(tag);
    let (model, root) = (common::small_model(&dir), images(&dir));
    let options = |out: &Path, gpus: usize, skip_bad: bool| ExtractOptions {
        describe: DescribeOptions {
            model: Some("resnet-custom".into()),
            weights: Some(model.clone()),
            img_size: 32,
            batch: 4,
            quiet: true,
            ..Default::default()
        },
        images: root.clone(),
        out: out.to_path_buf(),
        skip_bad,
        gpus,
        ..Default::default()
    };
    let run = |gpus: usize| {
        let out = dir.join(format!("feats-{gpus}.npy"));
        let report = extract(&options(&out, gpus, true), device).unwrap();
        assert_eq!((report.rows, report.skipped), (13, 1), "{gpus} ranks");
        files(&out)
    };
    let one = run(1);
    assert!(String::from_utf8_lossy(&one[2]).contains("im06b.jpg"));
    for gpus in [2, 3] {
        assert!(
            run(gpus) == one,
            "{tag}: {gpus} ranks wrote other files than 1 rank"
        );
    }
    // Without --skip-bad every rank stops on the corrupt file, listed once, nothing written.
    let out = dir.join("strict.npy");
    let e = extract(&options(&out, 3, false), device).unwrap_err();
    assert!(format!("{e:#}").contains("1 unusable image(s)"), "{e:#}");
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn extract_over_ranks_writes_what_one_rank_writes_on_the_cpu() {
    extract_matches_one_rank(DeviceChoice::Cpu, "extract-cpu");
}

#[test]
fn extract_over_ranks_writes_what_one_rank_writes_on_emu() {
    common::log("RAN extract_over_ranks_writes_what_one_rank_writes_on_emu on emu");
    extract_matches_one_rank(DeviceChoice::Emu, "extract-emu");
}

/// Unit rows with exact duplicates (ties broken by index) and near-duplicates.
fn pool_feats(n: usize, d: usize) -> Vec<f32> {
    let mut r = Rng::new(21);
    let mut x: Vec<f32> = Vec::with_capacity(n * d);
    for i in 0..n {
        let row: Vec<f32> = if i % 7 == 3 {
            x[(i - 3) * d..(i - 2) * d].to_vec()
        } else {
            (0..d).map(|_| r.normal()).collect()
        };
        let nrm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        x.extend(row.iter().map(|v| v / nrm));
    }
    x
}

#[test]
fn a_pool_split_over_ranks_is_the_pool_of_one_rank() {
    let (n, d) = (61, 8);
    let x = pool_feats(n, d);
    let cpu = CpuBackend::new();
    let emu = insclr::backend::CudaBackend::emu();
    for (k, block) in [(1, 61), (5, 7), (12, 1), (12, 100), (40, 9)] {
        let want = CandidatePool::compute(&cpu, &x, n, d, k, 16, &mut |_| {}).unwrap();
        for world in [2, 3] {
            for (name, be) in [
                ("cpu", &cpu as &dyn insclr::backend::Backend),
                ("emu", &emu),
            ] {
                let got = threads::run(world, |comm| {
                    let mut rows = 0;
                    let p = CandidatePool::compute_on_ranks(
                        be,
                        comm,
                        &x,
                        n,
                        d,
                        k,
                        16,
                        DType::F32,
                        8 * k * world * block,
                        &mut |t| rows += t,
                    )?;
                    assert_eq!(rows, n, "progress counts every query once");
                    Ok(p)
                })
                .unwrap();
                for (rank, p) in got.iter().enumerate() {
                    assert!(
                        *p == want,
                        "k {k}, blocks of {block} queries, {world} ranks on {name}: rank {rank}'s pool differs"
                    );
                }
            }
        }
    }
}

/// The NCCL path with a world of one (`RANK=0 WORLD_SIZE=1`, what torchrun with one process
/// sets): on a machine with a GPU and libnccl a stage trains through it (every collective of
/// the step runs on NCCL); without them the command stops with an error that says what is
/// missing and where to get it, and does not panic. The GPU protocol's runner sets
/// `INSCLR_REQUIRE_GPU=1`, which turns a missing GPU or libnccl there into a failure.
#[test]
fn nccl_with_a_world_of_one_trains_or_says_what_is_missing() {
    let dir = tmpdir("nccl");
    common::write_group_pngs(&dir.join("images"));
    let feats = dir.join("feats.npy");
    let images = dir.join("images");
    extract(
        &ExtractOptions {
            describe: DescribeOptions {
                img_size: 32,
                quiet: true,
                ..Default::default()
            },
            images,
            out: feats.clone(),
            ..Default::default()
        },
        DeviceChoice::Cpu,
    )
    .unwrap();
    insclr::jobs::pool(
        &insclr::jobs::PoolOptions {
            feats,
            k: 2,
            out: dir.join("pool.npz"),
            ..Default::default()
        },
        DeviceChoice::Cpu,
    )
    .unwrap();
    let stage = dir.join("stage.toml");
    std::fs::write(&stage, common::tiny_stage_toml(&dir, 2, 1e-3, "random", "")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_insclr-cu"))
        .args(["--device", "cuda", "train", "--quiet", "--config"])
        .arg(&stage)
        .env("RANK", "0")
        .env("WORLD_SIZE", "1")
        .env("MASTER_PORT", port.to_string())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!text.contains("panicked"), "{text}");
    let gpu =
        insclr::backend::cuda::driver_present() && insclr::backend::CudaBackend::new(0).is_ok();
    let nccl = insclr::dist::nccl::nccl_present();
    if gpu && nccl {
        common::log("RAN nccl_with_a_world_of_one_trains_or_says_what_is_missing on cuda (NCCL)");
        assert!(o.status.success(), "{text}");
        assert!(text.contains("trained 2 steps"), "{text}");
    } else {
        assert!(
            std::env::var("INSCLR_REQUIRE_GPU").as_deref() != Ok("1"),
            "INSCLR_REQUIRE_GPU=1 but GPU {gpu}, libnccl {nccl}: {text}"
        );
        common::log(&format!(
            "RAN nccl_with_a_world_of_one_trains_or_says_what_is_missing without NCCL (GPU {gpu}, libnccl {nccl}): checks the error"
        ));
        assert!(!o.status.success(), "{text}");
        let said = if gpu {
            "libnccl.so.2 not found"
        } else {
            "no CUDA driver"
        };
        assert!(text.contains(said) && text.contains("rank 0"), "{text}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `--gpus 2 --device cuda` starts one process per GPU and waits for them; when a rank exits
/// with an error the launcher says which and stops the others (here, without a GPU or libnccl,
/// the ranks stop at their start with the reason, and the launcher names the first it saw
/// exit).
#[test]
fn the_gpu_launcher_names_a_rank_that_failed() {
    let gpu =
        insclr::backend::cuda::driver_present() && insclr::backend::CudaBackend::new(0).is_ok();
    if gpu && insclr::dist::nccl::nccl_present() {
        common::log("the_gpu_launcher_names_a_rank_that_failed: a GPU with libnccl is here; the rank would not fail, nothing to check");
        return;
    }
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_insclr-cu"))
        .args([
            "--device",
            "cuda",
            "train",
            "--gpus",
            "2",
            "--config",
            "configs/demo.toml",
        ])
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!o.status.success(), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    // (The launcher may stop one rank before it prints.)
    assert!(
        text.contains("no CUDA driver") || text.contains("libnccl.so.2 not found"),
        "a rank says why: {text}"
    );
    assert!(
        text.contains("of 2 exited with") && text.contains("the other ranks were stopped"),
        "{text}"
    );
}
