//! The optimiser kernels (Adam, SGD, the gradient norm and scale) against their CPU twins on
//! random arenas with edge sizes and group splits, on the GPU when there is one and on the
//! emulated GPU otherwise. Both sides round op by op, so the updates must agree bit for bit.
//! Also: views of an arena write where they say, and the optimiser zeroes the gradients in
//! their arena at once.

mod common;

use common::kernel_device;
use insclr::backend::cuda::record::Event;
use insclr::backend::{Backend, CudaBackend, DType, OptimStep};
use insclr::nn::{Module, Param, ParamKind};
use insclr::rng::Rng;
use insclr::train::config::Solver;
use insclr::train::optim::Optimizer;

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

struct Net(Vec<Param>);

impl Module for Net {
    fn params(&self) -> Vec<&Param> {
        self.0.iter().collect()
    }
    fn params_mut(&mut self) -> Vec<&mut Param> {
        self.0.iter_mut().collect()
    }
}

/// A weight, a bias and a running statistic (no gradient), as a layer has them.
fn net(be: &dyn Backend) -> Net {
    let p = |name: &str, n: usize, kind| Param::new(be, name, &[n], kind, &vec![0.5; n]).unwrap();
    Net(vec![
        p("fc.weight", 300, ParamKind::Weight),
        p("fc.bias", 7, ParamKind::Bias),
        p("bn.running_mean", 7, ParamKind::Running),
    ])
}

/// On a device the trainable tensors' gradients are views of one arena: the optimiser zeroes
/// them all in one memset (where one a tensor was ResNet-101's 314), and each reads zero after
/// it; a gradient given its own buffer after the optimiser was made is refused, not left stale.
#[test]
fn the_optimiser_zeroes_every_gradient_in_one_memset() {
    let dev = kernel_device("the_optimiser_zeroes_every_gradient_in_one_memset");
    let be: &dyn Backend = &dev;
    let mut m = net(be);
    let mut opt = Optimizer::new(&Solver::default(), be, &mut m).unwrap();
    for p in m.params_mut() {
        if let Some(g) = p.grad.as_mut() {
            be.upload_into(&vec![1.5f32; g.len()], g).unwrap();
        }
    }
    opt.zero_grads(be, &mut m).unwrap();
    for p in m.params() {
        if let Some(g) = &p.grad {
            assert!(
                be.download::<f32>(g).unwrap().iter().all(|&v| v == 0.0),
                "{}: not zeroed",
                p.name
            );
        }
    }
    assert!(m.0[2].grad.is_none(), "a running statistic has no gradient");

    let plan = CudaBackend::plan();
    let mut m = net(&plan);
    let mut opt = Optimizer::new(&Solver::default(), &plan, &mut m).unwrap();
    let rec = plan.recorder().unwrap();
    rec.set_recording(true);
    opt.zero_grads(&plan, &mut m).unwrap();
    let events = rec.take();
    assert_eq!(events.len(), 1, "{events:?}: not one memset of the arena");
    // 300 + 7 floats: the weight's and the bias's gradients.
    assert!(
        matches!(events[0], Event::Memset { bytes: 1228 }),
        "{events:?}"
    );

    m.0[0].grad = Some(plan.zeros(DType::F32, 300).unwrap());
    let err = opt.zero_grads(&plan, &mut m).unwrap_err();
    assert!(
        err.to_string().contains("fc.weight was replaced"),
        "{err:#}"
    );
}
