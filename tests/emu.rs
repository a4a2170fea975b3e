//! The device's own tests (kernels/selftest.cu): barriers, warp collectives, atomics,
//! conversions and shared memory against their definitions, on the GPU when there is one and on
//! the emulated GPU otherwise, so the emulator is checked against the hardware whenever a GPU
//! is at hand. And the emulator catches what it must: a missing barrier gives a wrong result, a
//! launch that would hang is an error, and the sanitiser build reports out-of-bounds writes.

mod common;

use common::{is_emu, kernel_device, log};
use insclr::backend::cpu::selftest as twin;
use insclr::backend::cuda::selftest::WARP_OUTPUTS;
use insclr::backend::{Backend, CudaBackend};
use insclr::rng::Rng;
use std::process::Command;

fn be(dev: &CudaBackend) -> &dyn Backend {
    dev
}

#[test]
fn barrier_orders_shared_memory_and_its_absence_is_caught() {
    let dev = kernel_device("barrier_orders_shared_memory_and_its_absence_is_caught");
    let b = be(&dev);
    let (blocks, threads) = (3u32, 96u32);
    let n = (blocks * threads) as usize;
    let input: Vec<f32> = (0..n).map(|i| i as f32 + 0.5).collect();
    let want = twin::barrier_f32(&input, threads as usize);
    let x = b.upload(&input).unwrap();
    let mut y = b.upload(&vec![f32::NAN; n]).unwrap();
    dev.selftest_barrier_f32(&x, &mut y, blocks, threads, true)
        .unwrap();
    assert_eq!(b.download::<f32>(&y).unwrap(), want);

    let racy = dev.selftest_barrier_f32(&x, &mut y, blocks, threads, false);
    if is_emu(&dev) && !insclr::backend::cuda::emu::ACCESS_HOOKS {
        log("missing barrier: not asserted in the sanitiser build (no access hooks; the normal build asserts it)");
    } else if is_emu(&dev) {
        // The race checker stops the launch and names both sides: the store of one warp and the
        // load of another, with no barrier between them.
        let err = format!("{:#}", racy.unwrap_err());
        assert!(
            err.contains("shared-memory race")
                && err.contains("wrote stage+")
                && err.contains("read it")
                && err.matches("selftest.cu:").count() == 2
                && err.contains("__syncthreads between them is missing"),
            "{err}"
        );
        log(&format!("missing barrier on emu: {err}"));
    } else {
        racy.unwrap();
        log("missing barrier: not asserted on a GPU (a race may or may not show)");
    }
}

#[test]
fn a_launch_that_would_hang_is_an_error_on_the_emulator() {
    let dev = CudaBackend::emu();
    let b = be(&dev);
    let mut out = b.upload(&[0i32; 32]).unwrap();
    let err = format!("{:#}", dev.selftest_deadlock_i32(&mut out).unwrap_err());
    assert!(
        err.contains("deadlock") && err.contains("__syncthreads") && err.contains("__shfl_sync"),
        "{err}"
    );
    assert!(err.contains("INSCLR_EMU_SEED"), "{err}");
    // The emulator stays usable after a failed launch.
    let x = b.upload(&[1.0f32; 64]).unwrap();
    let mut y = b.upload(&[0.0f32; 64]).unwrap();
    dev.selftest_barrier_f32(&x, &mut y, 1, 64, true).unwrap();
}

#[test]
fn warp_collectives_match_their_definitions() {
    let dev = kernel_device("warp_collectives_match_their_definitions");
    let b = be(&dev);
    let mut rng = Rng::new(5);
    let (blocks, threads) = (2u32, 64u32);
    let n = (blocks * threads) as usize;
    // Large values (some with the top bit set, negative as int) and small ones with repeats.
    let input: Vec<u32> = (0..n)
        .map(|i| match i % 3 {
            0 => (rng.uniform_f32(0.0, 1.0) * 4.0e9) as u32,
            1 => (rng.uniform_f32(0.0, 50.0)) as u32 + 1,
            _ => 0x8000_0000 | (i as u32 * 7919),
        })
        .collect();
    let x = b.upload(&input).unwrap();
    for width in [32usize, 16, 8, 2, 1] {
        let mut out = b.upload(&vec![0xdead_beefu32; n * WARP_OUTPUTS]).unwrap();
        dev.selftest_warp_u32(&x, &mut out, blocks, threads, width as i32)
            .unwrap();
        let got = b.download::<u32>(&out).unwrap();
        for (w, warp) in input.chunks(32).enumerate() {
            for (l, want) in twin::warp_u32(warp, width).iter().enumerate() {
                let t = w * 32 + l;
                let g = &got[t * WARP_OUTPUTS..(t + 1) * WARP_OUTPUTS];
                assert_eq!(g, want, "width {width}, warp {w}, lane {l}");
            }
        }
    }
}

#[test]
fn half_warps_shuffle_independently_and_warp_sums_agree() {
    let dev = kernel_device("half_warps_shuffle_independently_and_warp_sums_agree");
    let b = be(&dev);
    let n = 96usize;
    let input = Rng::new(6).vec_f32(n, -1.0, 1.0);
    let x = b.upload(&input).unwrap();
    let mut out = b.upload(&vec![f32::NAN; 2 * n]).unwrap();
    dev.selftest_shfl_halves_f32(&x, &mut out, 1, n as u32)
        .unwrap();
    let got = b.download::<f32>(&out).unwrap();
    for (t, &(neighbour, sum)) in twin::shfl_halves_f32(&input).iter().enumerate() {
        assert_eq!(got[2 * t], neighbour, "thread {t}");
        assert!(
            (got[2 * t + 1] as f64 - sum).abs() < 1e-5,
            "thread {t}: {} vs {sum}",
            got[2 * t + 1]
        );
    }
}

#[test]
fn syncthreads_count_and_or_reduce_over_the_block() {
    let dev = kernel_device("syncthreads_count_and_or_reduce_over_the_block");
    let b = be(&dev);
    let (blocks, threads) = (3usize, 80usize);
    // Block 0 mixed, block 1 all true, block 2 all false.
    let pred: Vec<i32> = (0..blocks * threads)
        .map(|i| match i / threads {
            0 => (i % 3 == 0) as i32 * 5,
            1 => 1,
            _ => 0,
        })
        .collect();
    let p = b.upload(&pred).unwrap();
    let mut out = b.upload(&vec![-1i32; 3 * blocks * threads]).unwrap();
    dev.selftest_syncthreads_i32(&p, &mut out, blocks as u32, threads as u32)
        .unwrap();
    let got = b.download::<i32>(&out).unwrap();
    let want = twin::syncthreads_i32(&pred, threads);
    for i in 0..blocks * threads {
        assert_eq!(
            &got[3 * i..3 * i + 3],
            &want[3 * i..3 * i + 3],
            "block {} thread {}",
            i / threads,
            i % threads
        );
    }
}

#[test]
fn atomics_count_every_thread_once() {
    let dev = kernel_device("atomics_count_every_thread_once");
    let b = be(&dev);
    let n = 1000usize;
    let vals = Rng::new(7).vec_f32(n, 0.0, 1.0);
    let mut counters = b.upload(&[0i32, i32::MIN, i32::MAX, 0, 0]).unwrap();
    let mut fsum = b.upload(&[0.0f32]).unwrap();
    let v = b.upload(&vals).unwrap();
    let slots = 37usize;
    let mut claims = b.upload(&vec![-1i32; slots]).unwrap();
    dev.selftest_atomics_i32(&mut counters, &mut fsum, &v, &mut claims)
        .unwrap();
    let c = b.download::<i32>(&counters).unwrap();
    assert_eq!(c, twin::atomics_i32(n, slots));
    let sum: f64 = vals.iter().map(|&x| x as f64).sum();
    let got = b.download::<f32>(&fsum).unwrap()[0] as f64;
    assert!((got - sum).abs() < 1e-3, "{got} vs {sum}");
    let claims = b.download::<i32>(&claims).unwrap();
    for (s, &t) in claims.iter().enumerate() {
        assert!(t >= 0 && t as usize % slots == s, "slot {s} claimed by {t}");
    }
}

#[test]
fn bf16_and_fp16_conversions_round_to_nearest_even() {
    let dev = kernel_device("bf16_and_fp16_conversions_round_to_nearest_even");
    let b = be(&dev);
    let mut rng = Rng::new(8);
    let mut input: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -2.5,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        f32::MIN_POSITIVE,
        1e-45,
        65504.0,
        65519.99,
        65520.0,
        6.1e-5,
        5.96e-8,
        2.98e-8,
        2.99e-8,
        f32::from_bits(0x3f80_8000), // a bf16 tie: 1 + 2^-8, rounds to even (1.0)
        f32::from_bits(0x3f81_8000), // a bf16 tie rounding up
        f32::from_bits(0x3f80_1000), // an fp16 tie: 1 + 2^-11
        f32::from_bits(0x3f80_3000), // an fp16 tie rounding up
        f32::NAN,
    ];
    while input.len() < 2048 {
        let e = rng.uniform_f32(-30.0, 20.0);
        let s = if rng.uniform_f32(0.0, 1.0) < 0.5 {
            -1.0
        } else {
            1.0
        };
        input.push(s * rng.uniform_f32(1.0, 2.0) * e.exp2());
    }
    let n = input.len();
    let x = b.upload(&input).unwrap();
    let mut bf = b.upload(&vec![0u32; n / 2]).unwrap();
    let mut hf = b.upload(&vec![0u32; n / 2]).unwrap();
    let mut back = b.upload(&vec![0.0f32; 2 * n]).unwrap();
    dev.selftest_convert_f32(&x, &mut bf, &mut hf, &mut back)
        .unwrap();
    let halves = |words: Vec<u32>| -> Vec<u16> {
        words
            .iter()
            .flat_map(|w| [*w as u16, (*w >> 16) as u16])
            .collect()
    };
    let (bf, hf) = (
        halves(b.download(&bf).unwrap()),
        halves(b.download(&hf).unwrap()),
    );
    let back = b.download::<f32>(&back).unwrap();
    let (want_bf, want_hf, want_back) = twin::convert_f32(&input);
    for (i, &v) in input.iter().enumerate() {
        if v.is_nan() {
            assert!(half::bf16::from_bits(bf[i]).is_nan() && half::f16::from_bits(hf[i]).is_nan());
            assert!(back[2 * i].is_nan() && back[2 * i + 1].is_nan());
            continue;
        }
        assert_eq!(bf[i], want_bf[i], "bf16 of {v:e} ({:#010x})", v.to_bits());
        assert_eq!(hf[i], want_hf[i], "fp16 of {v:e} ({:#010x})", v.to_bits());
        assert_eq!(
            back[2 * i].to_bits(),
            want_back[2 * i].to_bits(),
            "bf16 -> f32 of {v:e}"
        );
        assert_eq!(
            back[2 * i + 1].to_bits(),
            want_back[2 * i + 1].to_bits(),
            "fp16 -> f32 of {v:e}"
        );
    }
}

#[test]
fn dynamic_shared_memory_is_per_block() {
    let dev = kernel_device("dynamic_shared_memory_is_per_block");
    let b = be(&dev);
    let (blocks, threads) = (4usize, 50usize);
    let input = Rng::new(9).vec_f32(blocks * threads, -1.0, 1.0);
    let x = b.upload(&input).unwrap();
    let mut y = b.upload(&vec![f32::NAN; blocks * threads]).unwrap();
    dev.selftest_dynamic_smem_f32(&x, &mut y, blocks as u32, threads as u32)
        .unwrap();
    let got = b.download::<f32>(&y).unwrap();
    assert_eq!(got, twin::dynamic_smem_f32(&input, threads));
}

/// Runs `selftest_big_smem_f32` with `smem` bytes per block and checks every value came back
/// reversed within its block.
fn big_smem_round_trip(dev: &CudaBackend, blocks: usize, smem: usize) {
    let b = be(dev);
    let per_block = smem / 4;
    let input = Rng::new(11).vec_f32(blocks * per_block, -1.0, 1.0);
    let x = b.upload(&input).unwrap();
    let mut y = b.upload(&vec![f32::NAN; blocks * per_block]).unwrap();
    dev.selftest_big_smem_f32(&x, &mut y, blocks as u32, 256, smem as u32)
        .unwrap();
    // The same definition as the small kernel's: each block's slice reversed.
    let want = twin::dynamic_smem_f32(&input, per_block);
    assert!(
        b.download::<f32>(&y).unwrap() == want,
        "{smem} bytes of dynamic shared memory did not round-trip"
    );
}

#[test]
fn dynamic_shared_memory_past_48_kib_opts_in_up_to_227_kib() {
    // On a GPU the first launch over 48 KiB sets the kernel's maximum; the second, larger one
    // raises it; the emulator allocates what the launch asks for, up to the same limit.
    let dev = kernel_device("dynamic_shared_memory_past_48_kib_opts_in_up_to_227_kib");
    big_smem_round_trip(&dev, 3, 100 * 1024);
    big_smem_round_trip(&dev, 2, 227 * 1024);
    log("100 KiB and 227 KiB of dynamic shared memory per block round-tripped");
}

#[test]
fn shared_memory_past_227_kib_is_a_clear_error() {
    let over = 227 * 1024 + 4;
    let mut devs = vec![("emu", CudaBackend::emu())];
    if let Ok(gpu) = CudaBackend::new(0) {
        devs.push(("cuda", gpu));
    }
    for (name, dev) in devs {
        let b = be(&dev);
        let x = b.upload(&vec![1.0f32; over / 4]).unwrap();
        let mut y = b.upload(&vec![0.0f32; over / 4]).unwrap();
        let err = format!(
            "{:#}",
            dev.selftest_big_smem_f32(&x, &mut y, 1, 256, over as u32)
                .unwrap_err()
        );
        assert!(
            err.contains("selftest_big_smem_f32")
                && err.contains(&over.to_string())
                && err.contains("227 KiB"),
            "{name}: {err}"
        );
    }
}

#[test]
fn thread_and_block_coordinates_cover_3d_launches() {
    let dev = kernel_device("thread_and_block_coordinates_cover_3d_launches");
    let b = be(&dev);
    let (grid, block) = ((3u32, 2u32, 2u32), (5u32, 3u32, 2u32));
    let per_block = (block.0 * block.1 * block.2) as usize;
    let total = (grid.0 * grid.1 * grid.2) as usize * per_block;
    let mut out = b.upload(&vec![u32::MAX; 7 * total]).unwrap();
    dev.selftest_coords_u32(&mut out, grid, block).unwrap();
    let got = b.download::<u32>(&out).unwrap();
    let want = twin::coords_u32(grid, block);
    assert_eq!(want.len(), 7 * total);
    for i in 0..total {
        assert_eq!(
            &got[7 * i..7 * i + 7],
            &want[7 * i..7 * i + 7],
            "thread {i}"
        );
    }
}

/// 16x16 b16 bits of random values (bf16 or fp16), packed two per word, and their f32 values.
fn b16_tile(rng: &mut Rng, fp16: bool) -> (Vec<u32>, Vec<f32>) {
    let vals = rng.vec_f32(256, -2.0, 2.0);
    let bits: Vec<u16> = vals
        .iter()
        .map(|&v| {
            if fp16 {
                half::f16::from_f32(v).to_bits()
            } else {
                half::bf16::from_f32(v).to_bits()
            }
        })
        .collect();
    let exact = bits
        .iter()
        .map(|&h| {
            if fp16 {
                half::f16::from_bits(h).to_f32()
            } else {
                half::bf16::from_bits(h).to_f32()
            }
        })
        .collect();
    let words = bits
        .chunks(2)
        .map(|p| p[0] as u32 | (p[1] as u32) << 16)
        .collect();
    (words, exact)
}

#[test]
fn tensor_core_fragments_and_async_copies_give_the_naive_product() {
    let dev = kernel_device("tensor_core_fragments_and_async_copies_give_the_naive_product");
    let be = be(&dev);
    let mut rng = Rng::new(12);
    for variant in 0..=5 {
        let fp16 = variant == 2;
        let (aw, af) = b16_tile(&mut rng, fp16);
        let (bw, bf) = b16_tile(&mut rng, fp16);
        let cf = rng.vec_f32(256, -1.0, 1.0);
        let want = twin::mma_f32(&af, &bf, &cf);
        let (a, b, c) = (
            be.upload(&aw).unwrap(),
            be.upload(&bw).unwrap(),
            be.upload(&cf).unwrap(),
        );
        let mut d = be.upload(&[f32::NAN; 256]).unwrap();
        let run = dev.selftest_mma_f32(&a, &b, &c, &mut d, variant);
        if variant == 4 {
            // ldmatrix read the staging tiles before cp.async's wait: the race checker names the
            // copy and the read.
            if is_emu(&dev) {
                let err = format!("{:#}", run.unwrap_err());
                assert!(
                    err.contains("issued a cp.async into sa+")
                        && err.contains("before a cp.async.wait_group"),
                    "{err}"
                );
            }
            continue;
        }
        run.unwrap();
        let got = be.download::<f32>(&d).unwrap();
        let err = common::rel_err(&got, &want);
        assert!(err < 1e-6, "variant {variant}: relative error {err:e}");
    }
}

#[test]
fn emu_pool_cli_gives_the_cpu_pool() {
    let dir = std::env::temp_dir().join(format!("insclr-emu-pool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (n, d) = (150usize, 48usize);
    let mut x = Rng::new(10).vec_f32(n * d, -1.0, 1.0);
    for row in x.chunks_mut(d) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= norm);
    }
    let feats = dir.join("feats.npy");
    insclr::io::npy::write(&feats, &insclr::io::npy::Array::new(vec![n, d], x).unwrap()).unwrap();
    let pool = |device: &str, precision: &str| {
        let out = dir.join(format!("pool-{device}-{precision}.npz"));
        let run = Command::new(env!("CARGO_BIN_EXE_insclr-cu"))
            .args(["--device", device, "pool", "--k", "12", "--tile", "64"])
            .args(["--precision", precision, "--feats"])
            .arg(&feats)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
        assert!(
            run.status.success(),
            "{device}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(stdout.contains(&format!("backend {device}")), "{stdout}");
        let neighbors = insclr::io::npy::read_npz::<i64>(&out, "neighbor")
            .unwrap()
            .data;
        (std::fs::read(&out).unwrap(), neighbors)
    };
    let (f32_emu, f32_cpu) = (pool("emu", "f32"), pool("cpu", "f32"));
    assert_eq!(f32_emu.0, f32_cpu.0, "emu and cpu pools differ");
    // bf16 descriptors: the tensor-core search gives the CPU's bf16 neighbours, and bf16 keeps
    // almost every f32 neighbour of these well-separated rows.
    let (bf_emu, bf_cpu) = (pool("emu", "bf16"), pool("cpu", "bf16"));
    assert_eq!(bf_emu.1, bf_cpu.1, "emu and cpu bf16 neighbours differ");
    let kept = bf_emu
        .1
        .chunks(12)
        .zip(f32_cpu.1.chunks(12))
        .map(|(b, f)| b.iter().filter(|j| f.contains(j)).count())
        .sum::<usize>();
    log(&format!(
        "bf16 pool kept {kept} of {} f32 neighbours",
        n * 12
    ));
    assert!(
        kept * 100 >= 95 * n * 12,
        "bf16 kept {kept} of {} f32 neighbours",
        n * 12
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- the sanitiser build (scripts/emu-sanitize.sh) -----------------------------------------

/// Runs in a child process: launches the out-of-bounds kernel named by INSCLR_EMU_OOB, which
/// AddressSanitizer must stop.
#[test]
#[ignore = "run by sanitiser_reports_out_of_bounds_writes in a child process"]
fn oob_child() {
    let dev = CudaBackend::emu();
    let b = be(&dev);
    let mut out = b.upload(&[0.0f32; 33]).unwrap();
    // SAFETY: deliberately not; this process exists to be stopped by AddressSanitizer.
    match std::env::var("INSCLR_EMU_OOB").as_deref() {
        Ok("global") => unsafe { dev.selftest_oob_global_f32(&mut out).unwrap() },
        Ok("shared") => unsafe { dev.selftest_oob_shared_f32(&mut out).unwrap() },
        other => panic!("INSCLR_EMU_OOB={other:?}: expected global or shared"),
    }
    println!("oob kernel finished without a report");
}

// Ignored, not passed, in a build without AddressSanitizer: the summary counts it as not run.
#[test]
#[cfg_attr(
    not(insclr_emu_asan),
    ignore = "needs the AddressSanitizer build; scripts/emu-sanitize.sh runs it"
)]
fn sanitiser_reports_out_of_bounds_writes() {
    for (kind, report, kernel) in [
        ("global", "heap-buffer-overflow", "selftest_oob_global_f32"),
        ("shared", "heap-buffer-overflow", "selftest_oob_shared_f32"),
    ] {
        let run = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "oob_child", "--ignored", "--nocapture"])
            .env("INSCLR_EMU_OOB", kind)
            .env("ASAN_OPTIONS", "detect_leaks=0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            !run.status.success(),
            "{kind}: the out-of-bounds kernel ran to the end"
        );
        assert!(
            stderr.contains("AddressSanitizer")
                && stderr.contains(report)
                && stderr.contains("WRITE of size 4"),
            "{kind}: no AddressSanitizer report of the write:\n{stderr}"
        );
        assert!(
            stderr.contains(kernel),
            "{kind}: the report does not name {kernel}:\n{stderr}"
        );
        log(&format!(
            "sanitiser: the {kind} out-of-bounds write in {kernel} was reported"
        ));
    }
}

#[test]
fn emu_results_are_repeatable_for_a_seed() {
    // Float atomics sum in thread order: the same seed gives the same bits.
    let run = || {
        let dev = CudaBackend::emu();
        let b = be(&dev);
        let vals = Rng::new(11).vec_f32(700, 0.0, 1.0);
        let mut counters = b.upload(&[0i32, i32::MIN, i32::MAX, 0, 0]).unwrap();
        let mut fsum = b.upload(&[0.0f32]).unwrap();
        let mut claims = b.upload(&[-1i32; 5]).unwrap();
        let v = b.upload(&vals).unwrap();
        dev.selftest_atomics_i32(&mut counters, &mut fsum, &v, &mut claims)
            .unwrap();
        (
            b.download::<f32>(&fsum).unwrap(),
            b.download::<i32>(&claims).unwrap(),
        )
    };
    let (a, b) = (run(), run());
    assert_eq!(a, b);
}

// ---- the emulator's instruments: the memory counters and the race checker ------------------------

#[test]
fn memory_counters_measure_known_patterns() {
    use insclr::backend::cuda::emu::{count_memory, MemSpace, MemStat, ACCESS_HOOKS};
    if !ACCESS_HOOKS {
        log("memory counters: not asserted in the sanitiser build (no access hooks; the normal build asserts them)");
        return;
    }
    let dev = CudaBackend::emu();
    let b = be(&dev);
    let input: Vec<u32> = (0..512u32).map(|i| i.wrapping_mul(2_654_435_761)).collect();
    let x = b.upload(&input).unwrap();
    // The one row of the pattern's own access: 4-byte loads (the tile is filled with 16-byte
    // ones) or the ldmatrix.
    let run = |pattern: i32, space: MemSpace, op: &str| -> MemStat {
        let mut out = b.upload(&[0u32; 32]).unwrap();
        let (r, stats) = count_memory(|| dev.selftest_access_patterns_u32(&x, &mut out, pattern));
        r.unwrap();
        let mine: Vec<&MemStat> = stats
            .iter()
            .filter(|s| s.kernel == "selftest_access_patterns_u32")
            .filter(|s| s.space == space && s.op == op && (op != "ld" || s.width == 4))
            .collect();
        assert_eq!(mine.len(), 1, "pattern {pattern}: {stats:#?}");
        assert!(mine[0].site.contains("selftest.cu:"), "{:?}", mine[0]);
        mine[0].clone()
    };
    let check = |pattern, space, op, transactions, ideal| {
        let s = run(pattern, space, op);
        assert_eq!(s.requests, 1, "pattern {pattern}: {s:?}");
        assert_eq!(
            (s.transactions, s.ideal),
            (transactions, ideal),
            "pattern {pattern}: {s:?}"
        );
        log(&format!(
            "pattern {pattern}: {} {} at {}: {} transactions, ideal {} ({:.1}x)",
            s.space.name(),
            s.op,
            s.site,
            s.transactions,
            s.ideal,
            s.excess()
        ));
    };
    check(0, MemSpace::Shared, "ld", 1, 1); // conflict-free
    check(1, MemSpace::Shared, "ld", 4, 1); // 4-way bank conflict
    check(2, MemSpace::Global, "ld", 4, 4); // coalesced: 128 bytes in 4 sectors
    check(3, MemSpace::Global, "ld", 32, 4); // strided: a sector per lane, 8x
    check(4, MemSpace::Shared, "ldmatrix.x4", 32, 4); // 8-way: each matrix's rows on 4 banks
    check(5, MemSpace::Shared, "ldmatrix.x4", 4, 4); // XOR swizzle: conflict-free

    // Zero-filled copies read nothing, and still take their turn at their site: each lane's
    // second copy is counted with the other lanes' second ones (before, an odd lane's turns at
    // the site were one fewer, and its copies fell into the wrong requests).
    let s = run(6, MemSpace::Global, "cp.async");
    assert_eq!(
        (s.requests, s.transactions, s.ideal, s.bytes),
        (2, 16 + 16, 8 + 16, 256 + 512),
        "{s:?}"
    );
    let s = run(6, MemSpace::Shared, "cp.async");
    assert_eq!((s.requests, s.transactions, s.ideal), (2, 8, 8), "{s:?}");

    // The fill's 16-byte accesses: 4 requests of a quarter-warp phase each, conflict-free and
    // coalesced; and nothing is counted outside count_memory.
    let (_, stats) = count_memory(|| {
        let mut out = b.upload(&[0u32; 32]).unwrap();
        dev.selftest_access_patterns_u32(&x, &mut out, 0).unwrap();
    });
    let fill = |space: MemSpace, op: &str| {
        stats
            .iter()
            .find(|s| s.space == space && s.op == op && s.width == 16)
            .unwrap_or_else(|| panic!("no 16-byte {op} in {stats:#?}"))
    };
    let (st, ld) = (fill(MemSpace::Shared, "st"), fill(MemSpace::Global, "ld"));
    assert_eq!(
        (st.requests, st.transactions, st.ideal),
        (4, 16, 16),
        "{st:?}"
    );
    assert_eq!(
        (ld.requests, ld.transactions, ld.ideal),
        (4, 64, 64),
        "{ld:?}"
    );
    let mut out = b.upload(&[0u32; 32]).unwrap();
    let ((), outside) = count_memory(|| ());
    dev.selftest_access_patterns_u32(&x, &mut out, 1).unwrap();
    assert!(outside.is_empty(), "{outside:?}");
}

#[test]
fn race_checker_reports_a_missing_barrier_in_a_tiled_tensor_core_loop() {
    let dev = kernel_device("race_checker_reports_a_missing_barrier_in_a_tiled_tensor_core_loop");
    let b = be(&dev);
    let k = 64;
    let mut rng = Rng::new(31);
    let round =
        |v: Vec<f32>| -> Vec<half::bf16> { v.into_iter().map(half::bf16::from_f32).collect() };
    let (a16, b16) = (
        round(rng.vec_f32(32 * k, -1.0, 1.0)),
        round(rng.vec_f32(k * 16, -1.0, 1.0)),
    );
    let mut want = vec![0f64; 32 * 16];
    for i in 0..32 {
        for j in 0..16 {
            want[i * 16 + j] = (0..k)
                .map(|p| a16[i * k + p].to_f64() * b16[p * 16 + j].to_f64())
                .sum();
        }
    }
    let (a, bm) = (b.upload(&a16).unwrap(), b.upload(&b16).unwrap());
    let mut c = b.upload(&[f32::NAN; 32 * 16]).unwrap();
    dev.selftest_tiled_mma_bf16(&a, &bm, &mut c, k, true)
        .unwrap();
    let got = b.download::<f32>(&c).unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!((*g as f64 - w).abs() < 1e-4 * (1.0 + w.abs()), "{g} vs {w}");
    }
    let racy = dev.selftest_tiled_mma_bf16(&a, &bm, &mut c, k, false);
    if is_emu(&dev) {
        // The next k step's copy lands on a tile the other warp is still reading.
        let err = format!("{:#}", racy.unwrap_err());
        assert!(
            err.contains("shared-memory race")
                && err.contains("selftest_tiled_mma_bf16")
                && err.contains("selftest.cu:")
                && (err.contains("cp.async") || err.contains("__syncthreads")),
            "{err}"
        );
        log(&format!("planted race on emu: {err}"));
    } else {
        racy.unwrap();
        log("planted race: not asserted on a GPU (a race may or may not show)");
    }
}

#[test]
fn vector_and_zero_fill_wrappers_follow_the_ptx_definitions() {
    let dev = kernel_device("vector_and_zero_fill_wrappers_follow_the_ptx_definitions");
    let b = be(&dev);
    let input: Vec<u32> = (0..128u32)
        .map(|i| 0x0101_0101u32.wrapping_mul(i + 1) ^ 0x8040_2010)
        .collect();
    let src_bytes: Vec<i32> = (0..32).map(|l| [0, 1, 4, 8, 12, 16][l % 6]).collect();
    let (x, n) = (b.upload(&input).unwrap(), b.upload(&src_bytes).unwrap());
    let mut out = b.upload(&[0xdead_beefu32; 256]).unwrap();
    dev.selftest_vector_u32(&x, &n, &mut out).unwrap();
    let got = b.download::<u32>(&out).unwrap();
    let bytes: Vec<u8> = input.iter().flat_map(|w| w.to_le_bytes()).collect();
    for lane in 0..32 {
        // cp.async with a source size: its bytes, then zeros.
        let want: Vec<u8> = (0..16)
            .map(|i| {
                if i < src_bytes[lane] as usize {
                    bytes[16 * lane + i]
                } else {
                    0
                }
            })
            .collect();
        let have: Vec<u8> = got[4 * lane..4 * lane + 4]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        assert_eq!(have, want, "lane {lane}, {} source bytes", src_bytes[lane]);
        assert_eq!(
            &got[128 + 4 * lane..128 + 4 * lane + 4],
            &input[4 * lane..4 * lane + 4],
            "lane {lane}"
        );
    }
}

#[test]
fn emu_pool_cli_prints_the_memory_counters_with_insclr_emu_memstats() {
    if !insclr::backend::cuda::emu::ACCESS_HOOKS {
        log("memory counters: not asserted in the sanitiser build (no access hooks)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("insclr-emu-memstats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (n, d) = (140usize, 64usize);
    let mut x = Rng::new(14).vec_f32(n * d, -1.0, 1.0);
    for row in x.chunks_mut(d) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= norm);
    }
    let feats = dir.join("feats.npy");
    insclr::io::npy::write(&feats, &insclr::io::npy::Array::new(vec![n, d], x).unwrap()).unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_insclr-cu"))
        .env("INSCLR_EMU_MEMSTATS", "1")
        .args([
            "--device",
            "emu",
            "pool",
            "--k",
            "5",
            "--precision",
            "bf16",
            "--feats",
        ])
        .arg(&feats)
        .arg("--out")
        .arg(dir.join("pool.npz"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    // The bf16 similarity GEMM's rows (the pipelined kernel):
    // its copies and ldmatrix in shared memory, its copies and score stores in global memory,
    // each with a source line.
    let rows: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("matmul_tc") && l.contains("_bf16_f32 "))
        .collect();
    let has = |space: &str, op: &str| {
        rows.iter().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.contains(&space) && f.contains(&op) && l.contains("tc_gemm.cuh:")
        })
    };
    assert!(
        has("shared", "ldmatrix.x4")
            && has("shared", "cp.async")
            && has("global", "cp.async")
            && has("global", "st"),
        "{stderr}"
    );
    assert!(stderr.contains("emulated memory counters"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}
