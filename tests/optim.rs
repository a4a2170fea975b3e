//! The optimiser kernels (Adam, SGD, the gradient norm and scale) against their CPU twins on
//! random arenas with edge sizes and group splits, on the GPU when there is one and on the
//! emulated GPU otherwise. Both sides round op by op, so the updates must agree bit for bit.
//! Also: views of an arena write where they say, and a whole optimiser step on the device
//! gives the CPU's parameters.

mod common;

use common::kernel_device;
use insclr::backend::{Backend, DType, OptimStep};
use insclr::rng::Rng;

/// Around a block (256), and past the norm's 1024 partial sums (256 x 1024 + 1).
const LENS: &[usize] = &[1, 255, 256, 257, 262_145];

type Run = (Vec<f32>, Vec<f32>, Vec<f32>);

fn adam_on(be: &dyn Backend, len: usize, split: usize, t: u64, sgd: bool) -> Run {
    let mut rng = Rng::new(5 + len as u64 + split as u64);
    let mut p = be.upload(&rng.vec_f32(len, -1.0, 1.0)).unwrap();
    let g = be.upload(&rng.vec_f32(len, -0.1, 0.1)).unwrap();
    let mut m = be.upload(&rng.vec_f32(len, -0.01, 0.01)).unwrap();
    let mut v = be.upload(&rng.vec_f32(len, 0.0, 1e-4)).unwrap();
    let s = OptimStep {
        len,
        split,
        lr: [1e-3, 2e-3],
        wd: [1e-4, 0.0],
    };
    if sgd {
        be.sgd(&mut p, &g, &mut m, s, 0.9).unwrap();
    } else {
        be.adam(&mut p, &g, &mut m, &mut v, s, t).unwrap();
    }
    let d = |b| be.download::<f32>(b).unwrap();
    (d(&p), d(&m), d(&v))
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn kernel_optim_matches_cpu_exactly() {
    let dev = kernel_device("kernel_optim_matches_cpu_exactly");
    let dev: &dyn Backend = &dev;
    let cpu = insclr::backend::cpu();
    for &len in LENS {
        for split in [0, len / 3, len] {
            for (t, sgd) in [(1, false), (7, false), (1, true)] {
                let what = format!("len={len} split={split} t={t} sgd={sgd}");
                let (want, got) = (
                    adam_on(cpu, len, split, t, sgd),
                    adam_on(dev, len, split, t, sgd),
                );
                assert!(bits(&got.0) == bits(&want.0), "{what}: parameters differ");
                assert!(
                    bits(&got.1) == bits(&want.1),
                    "{what}: first moments differ"
                );
                assert!(
                    bits(&got.2) == bits(&want.2),
                    "{what}: second moments differ"
                );
            }
        }
        let x = Rng::new(len as u64).vec_f32(len, -3.0, 3.0);
        let want = cpu.sum_squares(&cpu.upload(&x).unwrap()).unwrap();
        let mut xb = dev.upload(&x).unwrap();
        let got = dev.sum_squares(&xb).unwrap();
        assert!(
            (got - want).abs() <= 1e-12 * want,
            "len={len}: sum of squares {got} vs {want}"
        );
        dev.scale(&mut xb, 0.37).unwrap();
        let scaled: Vec<f32> = x.iter().map(|v| v * 0.37).collect();
        assert!(
            bits(&dev.download::<f32>(&xb).unwrap()) == bits(&scaled),
            "len={len}: scale"
        );
    }
    assert_eq!(
        dev.sum_squares(&dev.zeros(DType::F32, 0).unwrap()).unwrap(),
        0.0
    );
}

#[test]
fn arena_views_write_their_own_range() {
    let dev = kernel_device("arena_views_write_their_own_range");
    let dev: &dyn Backend = &dev;
    let arena = dev.arena(DType::F32, 10).unwrap();
    let mut a = dev.view(&arena, 0, 4).unwrap();
    let mut b = dev.view(&arena, 4, 6).unwrap();
    dev.upload_into(&[1.0f32, 2.0, 3.0, 4.0], &mut a).unwrap();
    dev.upload_into(&[5.0f32; 6], &mut b).unwrap();
    dev.zero(&mut a).unwrap();
    assert_eq!(
        dev.download::<f32>(&arena).unwrap(),
        [0.0, 0.0, 0.0, 0.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0]
    );
    assert!(b.is_view_of(&arena, 4) && !b.is_view_of(&arena, 0));
    assert!(dev.view(&arena, 8, 3).is_err(), "a view past the end");
    assert!(
        dev.view(&dev.zeros(DType::F32, 4).unwrap(), 0, 2).is_err(),
        "not an arena"
    );
    assert!(insclr::backend::cpu().arena(DType::F32, 4).is_err());
    // A view keeps the arena's memory alive after the arena's own handle is gone.
    drop(arena);
    assert_eq!(dev.download::<f32>(&b).unwrap(), [5.0; 6]);
}
