//! The backbone's layer kernels (elementwise, image conversion, max pooling, BatchNorm,
//! convolution) against their CPU twins on random inputs with edge sizes, on the GPU when there
//! is one and on the emulated GPU otherwise (`INSCLR_REQUIRE_GPU=1` demands the GPU). The
//! twins' own finite-difference checks are in tests/nn_grad.rs.

mod common;

use common::{
    download_f32, kernel_device, matches_cpu, poisoned_as, upload_as, Outputs, TrainedBn,
    FLOAT_DTYPES,
};
use insclr::backend::cuda::record::Event;
use insclr::backend::{
    Act, ActMask, Backend, BatchNorm, BnEvalParams, BnTrainParams, Buf, Conv, CudaBackend, DType,
    Device, ImageToTensor, MaxPool, Padding,
};
use insclr::rng::Rng;
use insclr::train::augment::to_tensor;

const ACTS: [Act; 3] = [Act::Identity, Act::Relu, Act::Relu6];

/// Lengths around a block (256) and one past the grid-stride launch's cap would be too slow on
/// the emulator; a thread's second trip round the loop is covered by the pooling tests' sizes.
const ELTWISE_LENS: &[usize] = &[1, 255, 256, 257, 10_000];

#[test]
fn kernel_eltwise_matches_cpu() {
    let dev = kernel_device("kernel_eltwise_matches_cpu");
    for (dt, tol) in FLOAT_DTYPES {
        for &len in ELTWISE_LENS {
            for act in ACTS {
                matches_cpu(
                    &format!("eltwise {dt} len={len} {act:?}"),
                    &dev,
                    tol,
                    |be| {
                        let mut rng = Rng::new(31 + len as u64);
                        // Around both ReLU6 corners, with exact zeros and sixes.
                        let mut xh = rng.vec_f32(len, -2.0, 8.0);
                        xh.iter_mut().step_by(7).for_each(|v| *v = 0.0);
                        xh.iter_mut().skip(3).step_by(11).for_each(|v| *v = 6.0);
                        let x = upload_as(be, &xh, dt)?;
                        let b = upload_as(be, &rng.vec_f32(len, -1.0, 1.0), dt)?;
                        let dy = upload_as(be, &rng.vec_f32(len, -1.0, 1.0), dt)?;
                        let (mut sum, mut y, mut dx) = (
                            poisoned_as(be, len, dt),
                            poisoned_as(be, len, dt),
                            poisoned_as(be, len, dt),
                        );
                        be.add_fwd(&x, &b, &mut sum)?;
                        be.act_fwd(&x, &mut y, act)?;
                        be.act_bwd(&y, &dy, &mut dx, act)?;
                        Ok(vec![
                            ("a+b".into(), download_f32(be, &sum)?),
                            ("act(x)".into(), download_f32(be, &y)?),
                            ("dx".into(), download_f32(be, &dx)?),
                        ])
                    },
                );
            }
        }
    }
}

/// (n, c, h, w, k, stride, pad): a 1x1 map, ResNet's stem window on maps the general kernels take
/// (odd sides; even ones whose width is not a multiple of 8) and on maps the stem kernels take
/// (even height, width a multiple of 8: one cell of 2 x 8 inputs, which is the map's first and
/// last row and column of cells at once; 56 x 56, 7 cells a row; 288 cells, more than a block of
/// 256; a narrow map of many rows), windows that tile exactly, overlap by two, or skip cells, a
/// padding of k - 1, and more planes than the grid has blocks along them (1024: blocks walk
/// planes 1024 apart), for both kinds of kernel.
const MAXPOOL_SIZES: &[(usize, usize, usize, usize, usize, usize, usize)] = &[
    (1, 1, 1, 1, 1, 1, 0),
    (2, 3, 7, 9, 3, 2, 1),
    (1, 3, 10, 12, 3, 2, 1),
    (2, 3, 2, 8, 3, 2, 1),
    (1, 4, 56, 56, 3, 2, 1),
    (1, 2, 64, 72, 3, 2, 1),
    (3, 5, 40, 8, 3, 2, 1),
    (3, 5, 8, 8, 2, 2, 0),
    (1, 2, 5, 6, 3, 1, 1),
    (2, 2, 9, 9, 2, 3, 1),
    (1, 1, 4, 7, 3, 1, 2),
    (2, 515, 5, 3, 3, 2, 1),
    (2, 515, 4, 8, 3, 2, 1),
];

/// Every output of the max pool, bit for bit the CPU's (a window's maximum is one of its values,
/// a place is exact, and dx adds the same values in the same order), for f32 and bf16: y, the
/// eval forward's y, the argmax bytes and dx.
#[test]
fn kernel_maxpool_matches_cpu() {
    let dev = kernel_device("kernel_maxpool_matches_cpu");
    for (dt, _) in FLOAT_DTYPES {
        for &(n, c, h, w, k, stride, pad) in MAXPOOL_SIZES {
            let s = MaxPool::new(n, c, h, w, k, stride, pad).unwrap();
            let (len, out) = (n * c * h * w, n * c * s.oh * s.ow);
            let what = format!("max pool {dt} {n}x{c}x{h}x{w} k={k} s={stride} p={pad}");
            let case = |be: &dyn Backend| -> anyhow::Result<Vec<(&str, Vec<u32>)>> {
                let mut rng = Rng::new(41 + len as u64);
                // Values on a coarse grid so that windows tie (the first maximum takes the
                // gradient), a NaN, which wins its windows, and -inf over the first plane's top
                // two rows and the second plane's left two columns, so that the windows along
                // the top and the left have nothing but -inf and padding (the first real cell
                // takes them).
                let mut xh: Vec<f32> = rng
                    .vec_f32(len, -4.0, 4.0)
                    .iter()
                    .map(|v| v.round() * 0.5)
                    .collect();
                if len > 10 {
                    xh[len / 2] = f32::NAN;
                }
                xh[..(2 * w).min(h * w)].fill(f32::NEG_INFINITY);
                if n * c > 1 {
                    for row in xh[h * w..2 * h * w].chunks_mut(w) {
                        row[..2.min(w)].fill(f32::NEG_INFINITY);
                    }
                }
                let x = upload_as(be, &xh, dt)?;
                let dy = upload_as(be, &rng.vec_f32(out, -1.0, 1.0), dt)?;
                let (mut y, mut dx) = (poisoned_as(be, out, dt), poisoned_as(be, len, dt));
                let mut argmax = Buf::empty(DType::U8);
                be.maxpool_fwd(&x, &mut y, Some(&mut argmax), s)?;
                be.maxpool_bwd(&argmax, &dy, &mut dx, s)?;
                // The eval forward (no argmax) writes the same y.
                let mut y_eval = poisoned_as(be, out, dt);
                be.maxpool_fwd(&x, &mut y_eval, None, s)?;
                // A NaN as one value: its payload may not survive bf16's rounding (as in PyTorch).
                let bits = |b: &Buf| -> anyhow::Result<Vec<u32>> {
                    Ok(download_f32(be, b)?
                        .iter()
                        .map(|v| if v.is_nan() { u32::MAX } else { v.to_bits() })
                        .collect())
                };
                let places = be
                    .download::<u8>(&argmax)?
                    .iter()
                    .map(|&a| a as u32)
                    .collect();
                Ok(vec![
                    ("y", bits(&y)?),
                    ("y (eval)", bits(&y_eval)?),
                    ("argmax", places),
                    ("dx", bits(&dx)?),
                ])
            };
            let want = case(insclr::backend::cpu()).unwrap();
            let dev: &dyn Backend = &dev;
            let got = case(dev).unwrap_or_else(|e| panic!("{what} on {}: {e:#}", dev.name()));
            for ((name, w), (_, g)) in want.iter().zip(&got) {
                if let Some(i) = (0..w.len()).find(|&i| w[i] != g[i]) {
                    panic!(
                        "{what}: {name}[{i}] is {:#x} on {}, {:#x} on the CPU",
                        g[i],
                        dev.name(),
                        w[i]
                    );
                }
            }
        }
    }
}

/// (n, c, hw, ghost): one channel of three values (with two, the normalised values are +-1
/// whatever x, so dx is zero up to rounding and has no reference to match), odd plane sizes
/// around a warp and a block (256 threads), ghost groups, and a 7x7 map with many channels.
/// The kernels read vectors of 16 bytes where hw allows (4 f32, 8 bf16), else 8 bytes, else one
/// value: 196 (14x14) takes 16 bytes in f32 and 8 in bf16, 10 takes 8 bytes in f32 and single
/// values in bf16. A pair's values are cut into runs of at least 1024 vectors (one block each,
/// tests/plan.rs checks the grids): 4 x 5000 values are 5 runs (f32) or 3 (bf16) per channel,
/// ending inside planes; each of the 2 groups of 3 x 4096 is 3 runs (f32, one plane each) or 2
/// (bf16, ending mid-plane).
const BN_SIZES: &[(usize, usize, usize, usize)] = &[
    (3, 1, 1, 1),
    (1, 3, 33, 1),
    (4, 5, 31, 2),
    (3, 2, 513, 1),
    (8, 6, 10, 4),
    (2, 70, 49, 1),
    (2, 3, 196, 1),
    (4, 2, 5000, 1),
    (6, 1, 4096, 2),
];

/// f32 and bf16 activations (parameters and statistics f32 for both).
#[test]
fn kernel_batchnorm_matches_cpu() {
    let dev = kernel_device("kernel_batchnorm_matches_cpu");
    for ((dt, tol), &(n, c, hw, ghost)) in FLOAT_DTYPES
        .into_iter()
        .flat_map(|d| BN_SIZES.iter().map(move |s| (d, s)))
    {
        for (act, with_res) in ACTS.into_iter().flat_map(|a| [(a, false), (a, true)]) {
            let s = BatchNorm {
                ghost,
                ..BatchNorm::new(n, c, hw, 1e-5, act)
            };
            let what =
                format!("batchnorm {dt} {n}x{c}x{hw} ghost={ghost} {act:?} residual={with_res}");
            matches_cpu(&what, &dev, tol, |be| bn_case(be, dt, s, with_res));
        }
    }
}

/// One BatchNorm case on `be`: the training forward, the eval forward, the backward and the
/// frozen-statistics backward of `s` in `dt`, with a residual when `with_res`; every output.
fn bn_case(be: &dyn Backend, dt: DType, s: BatchNorm, with_res: bool) -> anyhow::Result<Outputs> {
    let (n, c, hw, ghost) = (s.n, s.c, s.hw, s.ghost);
    let len = n * c * hw;
    let mut rng = Rng::new(51 + len as u64 + s.ghost as u64);
    // A large mean on channel 0 (the variance must not cancel), spread elsewhere. In
    // bf16 a mean of 100 would round the values to steps of 0.5, tie them, and make
    // the gradient zero up to rounding (nothing to compare): a smaller mean there.
    let offset = if dt == DType::F32 { 100.0 } else { 4.0 };
    let mut xh = rng.vec_f32(len, -3.0, 5.0);
    for i in 0..n {
        xh[i * c * hw..(i * c + 1) * hw]
            .iter_mut()
            .for_each(|v| *v += offset);
    }
    let x = upload_as(be, &xh, dt)?;
    let gamma = be.upload(&rng.vec_f32(c, 0.5, 1.5))?;
    let beta = be.upload(&rng.vec_f32(c, -0.5, 0.5))?;
    let mut rm = be.upload(&rng.vec_f32(c, -1.0, 1.0))?;
    let mut rv = be.upload(&rng.vec_f32(c, 0.5, 2.0))?;
    let (mut sm, mut si) = (poisoned(be, ghost * c), poisoned(be, ghost * c));
    let mut y = poisoned_as(be, len, dt);
    // A residual of the activation's scale, so the sum crosses ReLU6's corners.
    let res = upload_as(be, &rng.vec_f32(len, -3.0, 6.0), dt)?;
    let res = with_res.then_some(&res);
    // CUDA keeps act'(y) after a residual where y's vectors are 16 bytes and reads it in place of
    // y: compared with the CPU's here, bit for bit with reading y below.
    let mut mask = ActMask::new();
    be.batchnorm_fwd_train(
        &x,
        &gamma,
        &beta,
        (&mut rm, &mut rv),
        (&mut sm, &mut si),
        res,
        &mut y,
        Some(&mut mask),
        s,
    )?;
    let mut y_eval = poisoned_as(be, len, dt);
    be.batchnorm_fwd_eval(&x, &gamma, &beta, &rm, &rv, res, &mut y_eval, s)?;
    let dy = upload_as(be, &rng.vec_f32(len, -1.0, 1.0), dt)?;
    let mut dx = poisoned_as(be, len, dt);
    let mut dres = poisoned_as(be, len, dt);
    // Parameter gradients accumulate onto what is there.
    let mut dgamma = be.upload(&vec![0.25; c])?;
    let mut dbeta = be.upload(&vec![-0.5; c])?;
    be.batchnorm_bwd(
        &x,
        &y,
        &dy,
        (&gamma, &beta),
        (&sm, &si),
        Some(&mask),
        &mut dx,
        with_res.then_some(&mut dres),
        (&mut dgamma, &mut dbeta),
        s,
    )?;
    // Frozen statistics: the eval-mode forward's backward.
    let mut dx_eval = poisoned_as(be, len, dt);
    let mut dres_eval = poisoned_as(be, len, dt);
    let mut dgamma_eval = be.upload(&vec![0.25; c])?;
    let mut dbeta_eval = be.upload(&vec![-0.5; c])?;
    be.batchnorm_bwd_eval(
        &x,
        &y_eval,
        &dy,
        &gamma,
        (&rm, &rv),
        &mut dx_eval,
        with_res.then_some(&mut dres_eval),
        (&mut dgamma_eval, &mut dbeta_eval),
        s,
    )?;
    let mut out = Vec::new();
    for (name, b) in [
        ("eval dx", &dx_eval),
        ("eval dgamma", &dgamma_eval),
        ("eval dbeta", &dbeta_eval),
        ("y", &y),
        ("running mean", &rm),
        ("running var", &rv),
        ("saved mean", &sm),
        ("saved invstd", &si),
        ("eval y", &y_eval),
        ("dx", &dx),
        ("dgamma", &dgamma),
        ("dbeta", &dbeta),
    ] {
        out.push((name.to_string(), download_f32(be, b)?));
    }
    if with_res {
        out.push(("dres".into(), download_f32(be, &dres)?));
        out.push(("eval dres".into(), download_f32(be, &dres_eval)?));
    }
    Ok(out)
}

/// On an emulated GPU of 1 or 2 multiprocessors (4 to 6 BatchNorm blocks each at once) the
/// launcher picks the runs per pair that fill its waves (src/backend/cuda/norm.rs's bn_chunks),
/// which for these shapes differ between the forward and backward kernels and from the most it
/// may take (what the 132-SM default takes). Each split matches the CPU, and a second run gives
/// the same bits: the partials are merged in a fixed order, whatever order the blocks ran in.
#[test]
fn batchnorm_matches_cpu_and_repeats_bit_for_bit_on_small_gpus() {
    let shapes = [(4, 3, 5000, 1), (2, 3, 4096, 1), (6, 2, 4096, 3)];
    let gpu = kernel_device("batchnorm_matches_cpu_and_repeats_bit_for_bit_on_small_gpus");
    let small = [1, 2].map(|sms| (CudaBackend::emu_with_sms(sms), sms));
    let devices = std::iter::once((&gpu, 0)).chain(small.iter().map(|(d, sms)| (d, *sms)));
    for (dev, sms) in devices {
        let on = match sms {
            0 => (&gpu as &dyn Backend).name().to_string(),
            _ => format!("emu of {sms} SMs"),
        };
        for (dt, tol) in FLOAT_DTYPES {
            for &(n, c, hw, ghost) in &shapes {
                let s = BatchNorm {
                    ghost,
                    ..BatchNorm::new(n, c, hw, 1e-5, Act::Relu)
                };
                let what = format!("batchnorm {dt} {n}x{c}x{hw} ghost={ghost} on {on}");
                matches_cpu(&what, dev, tol, |be| bn_case(be, dt, s, true));
                let (a, b) = (
                    bn_case(dev, dt, s, true).unwrap(),
                    bn_case(dev, dt, s, true).unwrap(),
                );
                for ((name, a), (_, b)) in a.iter().zip(&b) {
                    let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{what}: {name} differs between two runs");
                }
            }
        }
    }
}

/// `data` in `dtype` on `be`, `offset` elements into a larger allocation on a device (a view of
/// an arena, as the parameters are), so that its address is only as aligned as the offset makes
/// it.
fn at_offset(be: &dyn Backend, data: &[f32], dtype: DType, offset: usize) -> anyhow::Result<Buf> {
    if be.device() == insclr::backend::Device::Cpu {
        return upload_as(be, data, dtype);
    }
    let arena = be.arena(dtype, data.len() + offset)?;
    let mut view = be.view(&arena, offset, data.len())?;
    match dtype {
        DType::BF16 => {
            let h: Vec<half::bf16> = data.iter().map(|&v| half::bf16::from_f32(v)).collect();
            be.upload_into(&h, &mut view)?
        }
        _ => be.upload_into(data, &mut view)?,
    }
    Ok(view)
}

/// A training BatchNorm backward's inputs: x, y, dy, (gamma, beta), the saved (mean, invstd).
type BnBackward<'a> = (
    &'a Buf,
    &'a Buf,
    &'a Buf,
    (&'a Buf, &'a Buf),
    (&'a Buf, &'a Buf),
);

/// One training backward of `s` into fresh buffers, the parameter gradients from zero: the bits
/// of dx, dres (poisoned unless `with_dres`), dgamma and dbeta.
fn bn_backward_bits(
    be: &dyn Backend,
    (x, y, dy, params, saved): BnBackward,
    mask: Option<&ActMask>,
    with_dres: bool,
    s: BatchNorm,
) -> [Vec<u32>; 4] {
    let (len, dt) = (s.n * s.c * s.hw, x.dtype());
    let (mut dx, mut dres) = (poisoned_as(be, len, dt), poisoned_as(be, len, dt));
    let zeros = || be.upload(&vec![0.0; s.c]).unwrap();
    let (mut dg, mut db) = (zeros(), zeros());
    be.batchnorm_bwd(
        x,
        y,
        dy,
        params,
        saved,
        mask,
        &mut dx,
        with_dres.then_some(&mut dres),
        (&mut dg, &mut db),
        s,
    )
    .unwrap();
    [&dx, &dres, &dg, &db].map(|b| {
        download_f32(be, b)
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    })
}

/// Without a residual the backward recomputes y from x (kernels/norm.cu, BnAffine) instead of
/// reading it: dx, dgamma and dbeta bit for bit those of the backward that reads y (asked for
/// the residual's gradient, it does), for every activation, both dtypes and every size. That one
/// writes dz = dy act'(y) in its first pass and takes dx from it in the second: dz must be
/// exactly dy or 0 (act' is 0 or 1, so no rounding to the activations' type).
#[test]
fn kernel_batchnorm_backward_recomputes_y_bit_for_bit() {
    let dev = kernel_device("kernel_batchnorm_backward_recomputes_y_bit_for_bit");
    let be: &dyn Backend = &dev;
    for (dt, _) in FLOAT_DTYPES {
        for &(n, c, hw, ghost) in BN_SIZES {
            for act in ACTS {
                let s = BatchNorm {
                    ghost,
                    ..BatchNorm::new(n, c, hw, 1e-5, act)
                };
                let len = n * c * hw;
                let mut rng = Rng::new(71 + len as u64);
                let x = upload_as(be, &rng.vec_f32(len, -3.0, 5.0), dt).unwrap();
                let dy = upload_as(be, &rng.vec_f32(len, -1.0, 1.0), dt).unwrap();
                let gamma = be.upload(&rng.vec_f32(c, 0.5, 1.5)).unwrap();
                let beta = be.upload(&rng.vec_f32(c, -0.5, 0.5)).unwrap();
                let (mut rm, mut rv) = (
                    be.upload(&vec![0.0; c]).unwrap(),
                    be.upload(&vec![1.0; c]).unwrap(),
                );
                let (mut sm, mut si) = (poisoned(be, ghost * c), poisoned(be, ghost * c));
                let mut y = poisoned_as(be, len, dt);
                be.batchnorm_fwd_train(
                    &x,
                    &gamma,
                    &beta,
                    (&mut rm, &mut rv),
                    (&mut sm, &mut si),
                    None,
                    &mut y,
                    None,
                    s,
                )
                .unwrap();
                let backward = |with_dres: bool| {
                    let bwd = (&x, &y, &dy, (&gamma, &beta), (&sm, &si));
                    bn_backward_bits(be, bwd, None, with_dres, s)
                };
                let ([dx0, _, dg0, db0], [dx, dres, dg, db]) = (backward(false), backward(true));
                assert!(
                    [dx0, dg0, db0] == [dx, dg, db],
                    "batchnorm {dt} {n}x{c}x{hw} ghost={ghost} {act:?}: the recomputed y's gradients differ"
                );
                let (yv, dyv) = (
                    download_f32(be, &y).unwrap(),
                    download_f32(be, &dy).unwrap(),
                );
                let dz: Vec<u32> = yv
                    .iter()
                    .zip(&dyv)
                    .map(|(&y, &g)| {
                        let pass = match act {
                            Act::Identity => true,
                            Act::Relu => y > 0.0,
                            Act::Relu6 => y > 0.0 && y < 6.0,
                        };
                        (g * if pass { 1.0 } else { 0.0 }).to_bits()
                    })
                    .collect();
                assert!(
                    dres == dz,
                    "batchnorm {dt} {n}x{c}x{hw} ghost={ghost} {act:?}: dres is not dy act'(y)"
                );
            }
        }
    }
}

/// After a residual, the forward keeps act'(y) a bit a value where y's vectors are 16 bytes, and
/// the backward's reduce pass reads it in place of y: dx, dres, dgamma and dbeta bit for bit those
/// of the backward that reads y, for every size, both ReLUs (with the identity there is no mask:
/// dres is dy) and both dtypes, with dy's infinities and NaNs passed as the y path passes them. A
/// backward of another shape refuses the mask.
#[test]
fn kernel_batchnorm_backward_reads_the_forward_mask_bit_for_bit() {
    let dev = kernel_device("kernel_batchnorm_backward_reads_the_forward_mask_bit_for_bit");
    let be: &dyn Backend = &dev;
    let mut kept = 0;
    for (dt, _) in FLOAT_DTYPES {
        for &(n, c, hw, ghost) in BN_SIZES {
            for act in ACTS {
                let s = BatchNorm {
                    ghost,
                    ..BatchNorm::new(n, c, hw, 1e-5, act)
                };
                let len = n * c * hw;
                let mut rng = Rng::new(83 + len as u64);
                let x = upload_as(be, &rng.vec_f32(len, -3.0, 5.0), dt).unwrap();
                let res = upload_as(be, &rng.vec_f32(len, -3.0, 6.0), dt).unwrap();
                let mut dyh = rng.vec_f32(len, -1.0, 1.0);
                dyh[len / 2] = f32::INFINITY;
                dyh[len - 1] = f32::NAN;
                let dy = upload_as(be, &dyh, dt).unwrap();
                let gamma = be.upload(&rng.vec_f32(c, 0.5, 1.5)).unwrap();
                let beta = be.upload(&rng.vec_f32(c, -0.5, 0.5)).unwrap();
                let (mut rm, mut rv) = (
                    be.upload(&vec![0.0; c]).unwrap(),
                    be.upload(&vec![1.0; c]).unwrap(),
                );
                let (mut sm, mut si) = (poisoned(be, ghost * c), poisoned(be, ghost * c));
                let mut y = poisoned_as(be, len, dt);
                let mut mask = ActMask::new();
                be.batchnorm_fwd_train(
                    &x,
                    &gamma,
                    &beta,
                    (&mut rm, &mut rv),
                    (&mut sm, &mut si),
                    Some(&res),
                    &mut y,
                    Some(&mut mask),
                    s,
                )
                .unwrap();
                let what = format!("batchnorm {dt} {n}x{c}x{hw} ghost={ghost} {act:?}");
                let full = hw % (16 / dt.size()) == 0;
                assert_eq!(
                    mask.kept(),
                    full && act != Act::Identity,
                    "{what}: mask kept"
                );
                kept += mask.kept() as usize;
                let backward = |mask: Option<&ActMask>| {
                    let bwd = (&x, &y, &dy, (&gamma, &beta), (&sm, &si));
                    bn_backward_bits(be, bwd, mask, true, s)
                };
                assert!(
                    backward(Some(&mask)) == backward(None),
                    "{what}: the mask's gradients differ from y's"
                );
                if mask.kept() {
                    let other = BatchNorm { n: n * 2, ..s };
                    let big = |v: f32| upload_as(be, &vec![v; 2 * len], dt).unwrap();
                    let (x2, dy2) = (big(1.0), big(1.0));
                    let (mut dx2, mut dres2) = (big(0.0), big(0.0));
                    let (mut dg, mut db) = (
                        be.upload(&vec![0.0; c]).unwrap(),
                        be.upload(&vec![0.0; c]).unwrap(),
                    );
                    let (sm2, si2) = (
                        be.upload(&vec![0.0; ghost * c]).unwrap(),
                        be.upload(&vec![1.0; ghost * c]).unwrap(),
                    );
                    let err = be
                        .batchnorm_bwd(
                            &x2,
                            &x2,
                            &dy2,
                            (&gamma, &beta),
                            (&sm2, &si2),
                            Some(&mask),
                            &mut dx2,
                            Some(&mut dres2),
                            (&mut dg, &mut db),
                            other,
                        )
                        .unwrap_err();
                    assert!(
                        format!("{err:#}").contains("activation mask"),
                        "{what}: {err:#}"
                    );
                }
            }
        }
    }
    assert!(kept >= 10, "only {kept} cases kept a mask");
}

/// Buffers 1, 2 or 4 elements past a 16-byte boundary: the kernels' vectors narrow to what every
/// buffer's address allows (a misaligned vector access faults on a GPU and fails on the emulator).
#[test]
fn kernel_batchnorm_takes_buffers_at_any_alignment() {
    let dev = kernel_device("kernel_batchnorm_takes_buffers_at_any_alignment");
    let (n, c, hw) = (2, 3, 4096);
    let len = n * c * hw;
    for (dt, tol) in FLOAT_DTYPES {
        for offset in [1, 2, 4] {
            let s = BatchNorm::new(n, c, hw, 1e-5, Act::Relu);
            let what = format!("batchnorm {dt} {n}x{c}x{hw}, buffers {offset} elements in");
            matches_cpu(&what, &dev, tol, |be| {
                let mut rng = Rng::new(61 + offset as u64);
                let x = at_offset(be, &rng.vec_f32(len, -3.0, 5.0), dt, offset)?;
                let res = at_offset(be, &rng.vec_f32(len, -3.0, 3.0), dt, 16 - offset)?;
                let dy = at_offset(be, &rng.vec_f32(len, -1.0, 1.0), dt, offset)?;
                let nan = vec![f32::NAN; len];
                let (mut y, mut dx, mut dres, mut y_eval) = (
                    at_offset(be, &nan, dt, offset)?,
                    at_offset(be, &nan, dt, offset)?,
                    at_offset(be, &nan, dt, 0)?,
                    at_offset(be, &nan, dt, offset)?,
                );
                let gamma = be.upload(&rng.vec_f32(c, 0.5, 1.5))?;
                let beta = be.upload(&rng.vec_f32(c, -0.5, 0.5))?;
                let (mut rm, mut rv) = (be.upload(&vec![0.0; c])?, be.upload(&vec![1.0; c])?);
                let (mut sm, mut si) = (poisoned(be, c), poisoned(be, c));
                let (mut dg, mut db) = (be.upload(&vec![0.0; c])?, be.upload(&vec![0.0; c])?);
                let mut mask = ActMask::new();
                be.batchnorm_fwd_train(
                    &x,
                    &gamma,
                    &beta,
                    (&mut rm, &mut rv),
                    (&mut sm, &mut si),
                    Some(&res),
                    &mut y,
                    Some(&mut mask),
                    s,
                )?;
                // Vectors narrower than 16 bytes: no mask kept (its layout is a byte per 16).
                assert!(
                    !mask.kept() || offset * dt.size() % 16 == 0,
                    "{dt}: a mask at offset {offset}"
                );
                be.batchnorm_bwd(
                    &x,
                    &y,
                    &dy,
                    (&gamma, &beta),
                    (&sm, &si),
                    Some(&mask),
                    &mut dx,
                    Some(&mut dres),
                    (&mut dg, &mut db),
                    s,
                )?;
                be.batchnorm_fwd_eval(&x, &gamma, &beta, &rm, &rv, Some(&res), &mut y_eval, s)?;
                let mut out = Vec::new();
                for (name, b) in [
                    ("y", &y),
                    ("dx", &dx),
                    ("dres", &dres),
                    ("dgamma", &dg),
                    ("dbeta", &db),
                    ("eval y", &y_eval),
                ] {
                    out.push((name.to_string(), download_f32(be, b)?));
                }
                Ok(out)
            });
        }
    }
}

fn poisoned(be: &dyn Backend, len: usize) -> Buf {
    poisoned_as(be, len, DType::F32)
}

type ConvCase = (
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    Padding,
    usize,
);

/// (n, c_in, h, w, c_out, k, stride, padding, groups): a 1x1 map, 3x3 "same" layers, ResNet's
/// stem on a small image, 1x1 layers across the 64-wide tile (stride 1 and the stride-2
/// shortcut), TF "SAME" with odd sizes, a weight gradient split over several blocks of k, and
/// depthwise layers (EfficientNet's 3x3 and 5x5, stride 1 and 2).
#[rustfmt::skip]
const CONV_SIZES: &[ConvCase] = &[
    (1, 1, 1, 1, 1, 1, 1, Padding::Sym(0), 1),
    (2, 3, 9, 9, 5, 3, 1, Padding::Sym(1), 1),
    (2, 3, 23, 20, 8, 7, 2, Padding::Sym(3), 1),
    (1, 17, 8, 8, 65, 1, 1, Padding::Sym(0), 1),
    (2, 66, 7, 7, 33, 1, 2, Padding::Sym(0), 1),
    (2, 5, 9, 8, 6, 3, 2, Padding::Same, 1),
    (1, 70, 6, 6, 3, 3, 1, Padding::Sym(1), 1),
    (4, 2, 20, 20, 2, 3, 1, Padding::Sym(1), 1),
    (2, 8, 9, 9, 8, 3, 1, Padding::Sym(1), 8),
    (1, 5, 10, 11, 5, 5, 2, Padding::Same, 5),
    (2, 3, 7, 7, 3, 3, 2, Padding::Same, 3),
    // 1x1, stride 1, channels and pixels multiples of 8: bf16 takes the pipelined GEMMs (64-row
    // and 128-row tiles, partial tiles in every dimension, a pixel tail inside each image of the
    // weight gradient's reduction).
    (2, 16, 4, 4, 24, 1, 1, Padding::Sym(0), 1),
    (3, 136, 4, 6, 72, 1, 1, Padding::Sym(0), 1),
    (2, 40, 10, 8, 200, 1, 1, Padding::Sym(0), 1),
    // ... and one whose weight gradient splits each image's 576 pixels into parts (256, 256, 64).
    (1, 16, 24, 24, 24, 1, 1, Padding::Sym(0), 1),
    // Dense, not 1x1 stride 1 on aligned maps: bf16 transposes to NHWC and runs the
    // channels-last implicit GEMMs (the data gradient with c_out % 8 == 0).
    // c_in 8 and 24 put several taps in one 32-deep k tile, 72 (through the data gradient's dy)
    // straddles taps, 64 and 136 keep whole tiles per tap; c_out 16 and 8 take 64-row tiles,
    // 72 and 136 a partial 128-row one; odd maps with padding put window rows and columns outside
    // the image on every side; 156 pixels a partial second column tile; "SAME" pads one side
    // more; a 1x1 padded by 1 makes the data gradient's padding -1; 1x1 stride 2 (the
    // shortcut), 1x1 on a 7 x 7 map (49 pixels: the transposes' 2-byte path) and a 7x7 stride 2.
    (2, 8, 9, 7, 16, 3, 1, Padding::Sym(1), 1),
    (2, 24, 11, 10, 40, 3, 2, Padding::Same, 1),
    (2, 64, 10, 12, 72, 3, 1, Padding::Sym(1), 1),
    (1, 136, 5, 6, 16, 3, 1, Padding::Sym(1), 1),
    (1, 8, 13, 12, 8, 5, 1, Padding::Sym(2), 1),
    (1, 16, 8, 9, 24, 3, 1, Padding::Sym(0), 1),
    (1, 8, 5, 5, 8, 1, 1, Padding::Sym(1), 1),
    (1, 16, 9, 9, 24, 1, 2, Padding::Sym(0), 1),
    (2, 40, 7, 7, 8, 1, 1, Padding::Sym(0), 1),
    (1, 32, 12, 12, 136, 7, 2, Padding::Sym(3), 1),
    // The channels-last weight gradient's pixel walk (c_out % 8 == 0): a 32-pixel k tile spans
    // two 4 x 4 images, or 32 images of one pixel each (a 3x3 at stride 2 on a 3 x 3 map); 585
    // pixels in three splits of 224, 224 and 137, each starting inside an image.
    (5, 16, 4, 4, 16, 3, 1, Padding::Sym(1), 1),
    (40, 8, 3, 3, 24, 3, 2, Padding::Sym(0), 1),
    // Pixel tiles across images whose rows take no vector (7 x 7, 49 pixels): the forward's and
    // the data gradient's tiles hold whole images (16-byte spans) and the ends of images cut by
    // the tile (elements).
    (5, 16, 7, 7, 24, 3, 1, Padding::Sym(1), 1),
    // ... and 110-pixel images, two to a tile's worth, in f32's 8-byte vectors: where the
    // second image starts (x = 110), x / 110 rounds just below 1 in f32 and only the added half
    // finds the image (tc_gemm.cuh's ImageCols).
    (2, 8, 10, 11, 16, 3, 1, Padding::Sym(1), 1),
    (3, 16, 15, 13, 24, 3, 1, Padding::Sym(1), 1),
    // The data gradient by stride phases (stride > 1, c_out % 8 == 0; the cases above at stride
    // 2 too): stride 3 with a 3x3 (one tap a phase along each axis) and stride 4 with a 2x2,
    // whose phases 2 and 3 along each axis have no tap (zeros); a stride-2 3x3 onto 72 input
    // channels (the 128-row product, partial).
    (2, 8, 10, 9, 16, 3, 3, Padding::Sym(1), 1),
    (2, 72, 9, 9, 16, 3, 2, Padding::Sym(1), 1),
    (1, 16, 9, 11, 8, 2, 4, Padding::Sym(1), 1),
    // Channel counts that are not runs of 8 (the stem's 3 above, 1, 5, 17, 66, 70) take the
    // channels-last forward and weight gradient with zero-padded channels; a kernel over 8 x 8
    // keeps bf16's element gathers for all three passes.
    (1, 8, 12, 11, 16, 9, 1, Padding::Sym(4), 1),
];

/// The kernels `kernel_conv_matches_cpu` runs, by name: the implicit GEMMs and the depthwise
/// kernels, each in f32 and bf16, and bf16's pipelined kernels.
const CONV_KERNELS: [&str; 37] = [
    "conv2d_fwd_f32",
    "conv2d_bwd_data_f32",
    "conv2d_bwd_weight_f32",
    "conv2d_fwd_bf16",
    "conv2d_bwd_data_bf16",
    "conv2d_bwd_weight_bf16",
    "conv2d_depthwise_fwd_f32",
    "conv2d_depthwise_bwd_data_f32",
    "conv2d_depthwise_bwd_weight_f32",
    "conv2d_depthwise_fwd_bf16",
    "conv2d_depthwise_bwd_data_bf16",
    "conv2d_depthwise_bwd_weight_bf16",
    "conv2d_1x1_fwd_bf16",
    "conv2d_1x1_fwd_m64_bf16",
    "conv2d_1x1_bwd_data_bf16",
    "conv2d_1x1_bwd_data_m64_bf16",
    "conv2d_1x1_bwd_weight_bf16",
    "conv2d_1x1_bwd_weight_m64_bf16",
    "conv2d_to_nhwc_bf16",
    "conv2d_to_nhwc8_bf16",
    "conv2d_nhwc_fwd_bf16",
    "conv2d_nhwc_fwd_m64_bf16",
    "conv2d_nhwc_bwd_data_bf16",
    "conv2d_nhwc_bwd_data_m64_bf16",
    "conv2d_nhwc_bwd_weight_bf16",
    "conv2d_nhwc_bwd_weight_m64_bf16",
    "conv2d_bwd_weight_reduce_krsc_f32",
    "conv2d_phase_weight_bf16",
    "conv2d_nhwc_bwd_data_phase_bf16",
    "conv2d_nhwc_bwd_data_phase_m64_bf16",
    "conv2d_1x1_fwd_bn_eval_bf16",
    "conv2d_1x1_fwd_bn_eval_m64_bf16",
    "conv2d_nhwc_fwd_bn_eval_bf16",
    "conv2d_nhwc_fwd_bn_eval_m64_bf16",
    "conv2d_fwd_bn_eval_f32",
    "conv2d_depthwise_fwd_bn_eval_f32",
    "conv2d_depthwise_fwd_bn_eval_bf16",
];

/// f32 (SIMT) and bf16 (tensor cores; activations and weights bf16, the weight gradient f32).
#[test]
fn kernel_conv_matches_cpu() {
    for k in CONV_KERNELS {
        assert!(
            insclr::backend::cuda::emu::KERNELS
                .iter()
                .any(|&(_, name)| name == k),
            "{k} is not built"
        );
    }
    let dev = kernel_device("kernel_conv_matches_cpu");
    for (dt, tol) in FLOAT_DTYPES {
        for &(n, c_in, h, w, c_out, k, stride, padding, groups) in CONV_SIZES {
            let s = Conv::new(n, c_in, h, w, c_out, k, stride, padding, groups).unwrap();
            let what = format!(
                "conv {dt} {n}x{c_in}x{h}x{w} -> {c_out} k={k} s={stride} {padding:?} g={groups}"
            );
            matches_cpu(&what, &dev, tol, |be| conv_passes(be, s, dt));
        }
    }
}

/// The three passes of `s` on random inputs in `dt`: y, dx and dw (accumulated onto 0.5).
fn conv_passes(be: &dyn Backend, s: Conv, dt: DType) -> anyhow::Result<common::Outputs> {
    let (lx, lw, ly) = s.sizes();
    let mut rng = Rng::new(61 + lx as u64 + lw as u64);
    let x = upload_as(be, &rng.vec_f32(lx, -1.0, 1.0), dt)?;
    let wt = upload_as(be, &rng.vec_f32(lw, -0.5, 0.5), dt)?;
    let dy = upload_as(be, &rng.vec_f32(ly, -1.0, 1.0), dt)?;
    let (mut y, mut dx) = (poisoned_as(be, ly, dt), poisoned_as(be, lx, dt));
    // The weight gradient accumulates onto what is there.
    let mut dw = be.upload(&vec![0.5; lw])?;
    // The data gradient added onto a residual's (random) gradient: every path's epilogue with
    // beta = 1, or its add after the fact.
    let mut dx_sum = upload_as(be, &rng.vec_f32(lx, -1.0, 1.0), dt)?;
    be.conv2d_fwd(&x, &wt, &mut y, s)?;
    be.conv2d_bwd_data(&dy, &wt, &mut dx, s)?;
    be.conv2d_bwd_data_add(&dy, &wt, &mut dx_sum, s)?;
    be.conv2d_bwd_weight(&x, &dy, &mut dw, s)?;
    Ok(vec![
        ("y".into(), download_f32(be, &y)?),
        ("dx".into(), download_f32(be, &dx)?),
        ("dx added".into(), download_f32(be, &dx_sum)?),
        ("dw".into(), be.download::<f32>(&dw)?),
    ])
}

/// A data gradient added onto dx (ResNet's residual branch) is bit for bit the data gradient
/// written to a buffer and then added with `add_fwd`, on every path: the pipelined kernels'
/// epilogues round the gradient before they add, as a stored gradient is.
#[test]
fn kernel_conv_data_gradient_added_is_the_gradient_then_an_add() {
    let dev = kernel_device("kernel_conv_data_gradient_added_is_the_gradient_then_an_add");
    let be: &dyn Backend = &dev;
    for (dt, _) in FLOAT_DTYPES {
        for &(n, c_in, h, w, c_out, k, stride, padding, groups) in CONV_SIZES {
            let s = Conv::new(n, c_in, h, w, c_out, k, stride, padding, groups).unwrap();
            let (lx, lw, ly) = s.sizes();
            let mut rng = Rng::new(7 + lx as u64);
            let wt = upload_as(be, &rng.vec_f32(lw, -0.5, 0.5), dt).unwrap();
            let dy = upload_as(be, &rng.vec_f32(ly, -1.0, 1.0), dt).unwrap();
            let old = rng.vec_f32(lx, -1.0, 1.0);
            let (old_buf, mut fused) = (
                upload_as(be, &old, dt).unwrap(),
                upload_as(be, &old, dt).unwrap(),
            );
            let (mut grad, mut sum) = (poisoned_as(be, lx, dt), poisoned_as(be, lx, dt));
            be.conv2d_bwd_data(&dy, &wt, &mut grad, s).unwrap();
            be.add_fwd(&old_buf, &grad, &mut sum).unwrap();
            be.conv2d_bwd_data_add(&dy, &wt, &mut fused, s).unwrap();
            let (want, got) = (
                download_f32(be, &sum).unwrap(),
                download_f32(be, &fused).unwrap(),
            );
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(
                bits(&want) == bits(&got),
                "conv {dt} {n}x{c_in}x{h}x{w} -> {c_out} k={k} s={stride} {padding:?} g={groups}: \
                 the added data gradient differs from the gradient then an add"
            );
        }
    }
}

/// `conv2d_bwd` (both backward passes in one op: CUDA's channels-last kernels transpose dy once
/// for both) is bit for bit `conv2d_bwd_weight` and then `conv2d_bwd_data` or
/// `conv2d_bwd_data_add`, on every shape, in bf16, f32 on TF32 and exact f32; where both passes
/// run channels-last, dy's transposes are one, not two (the plan device counts them).
#[test]
fn kernel_conv_backward_in_one_op_is_the_two_passes() {
    let dev = kernel_device("kernel_conv_backward_in_one_op_is_the_two_passes");
    let run =
        |be: &dyn Backend, s: Conv, dt: DType, add: bool, one: bool| -> anyhow::Result<Outputs> {
            let (lx, lw, ly) = s.sizes();
            let mut rng = Rng::new(151 + lx as u64 + ly as u64);
            let x = upload_as(be, &rng.vec_f32(lx, -1.0, 1.0), dt)?;
            let wt = upload_as(be, &rng.vec_f32(lw, -0.5, 0.5), dt)?;
            let dy = upload_as(be, &rng.vec_f32(ly, -1.0, 1.0), dt)?;
            let mut dw = be.upload(&vec![0.5; lw])?;
            let mut dx = upload_as(be, &rng.vec_f32(lx, -1.0, 1.0), dt)?;
            if one {
                be.conv2d_bwd(&x, &dy, &wt, &mut dw, Some(&mut dx), add, s)?;
            } else {
                be.conv2d_bwd_weight(&x, &dy, &mut dw, s)?;
                if add {
                    be.conv2d_bwd_data_add(&dy, &wt, &mut dx, s)?;
                } else {
                    be.conv2d_bwd_data(&dy, &wt, &mut dx, s)?;
                }
            }
            Ok(vec![
                ("dw".into(), be.download(&dw)?),
                ("dx".into(), download_f32(be, &dx)?),
            ])
        };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (dt, tf32) in [
        (DType::BF16, false),
        (DType::F32, true),
        (DType::F32, false),
    ] {
        dev.set_tf32(tf32);
        for (i, &(n, c_in, h, w, c_out, k, stride, padding, groups)) in
            CONV_SIZES.iter().enumerate()
        {
            let s = Conv::new(n, c_in, h, w, c_out, k, stride, padding, groups).unwrap();
            let add = i % 2 == 1;
            let what = format!(
                "{dt} tf32={tf32} conv {n}x{c_in}x{h}x{w} -> {c_out} k={k} s={stride} add={add}"
            );
            let one = run(&dev, s, dt, add, true).unwrap_or_else(|e| panic!("{what}: {e:#}"));
            let two = run(&dev, s, dt, add, false).unwrap();
            for ((name, a), (_, b)) in one.iter().zip(&two) {
                assert!(
                    bits(a) == bits(b),
                    "{what}: {name} differs from the two ops'"
                );
            }
        }
    }
    // A 3x3 in bf16: the two ops transpose dy twice (and x, and the weight), the one op once.
    let s = Conv::new(2, 16, 9, 9, 24, 3, 1, Padding::Sym(1), 1).unwrap();
    let transposes = |one: bool| {
        let plan = CudaBackend::plan();
        let rec = plan.recorder().unwrap();
        rec.set_recording(true);
        run(&plan, s, DType::BF16, false, one).unwrap();
        rec.take()
            .into_iter()
            .filter(|e| matches!(e, Event::Launch { kernel, .. } if kernel.starts_with("conv2d_to_nhwc")))
            .count()
    };
    assert_eq!((transposes(false), transposes(true)), (4, 3));
}

/// A forward with eval-mode BatchNorm, its residual and its activation applied in the
/// convolution's epilogue gives bit for bit the forward into a buffer and then BatchNorm's own
/// eval kernel, on every shape of both dtypes but bf16's dense kernels over 8 x 8 (those must
/// fuse: f32's implicit GEMM, bf16's pipelined kernels, the depthwise kernels); there (a bf16 9 x
/// 9) the backend says it did not fuse and writes nothing. Both are within tolerance of the CPU's
/// two ops.
#[test]
fn kernel_conv_then_eval_batchnorm_in_one_kernel_is_the_two_ops() {
    let dev = kernel_device("kernel_conv_then_eval_batchnorm_in_one_kernel_is_the_two_ops");
    for (dt, tol) in FLOAT_DTYPES {
        for (i, &(n, c_in, h, w, c_out, k, stride, padding, groups)) in
            CONV_SIZES.iter().enumerate()
        {
            let s = Conv::new(n, c_in, h, w, c_out, k, stride, padding, groups).unwrap();
            let (act, with_res) = (ACTS[i % 3], i % 2 == 0);
            let what = format!(
                "conv {dt} {n}x{c_in}x{h}x{w} -> {c_out} k={k} s={stride} {padding:?} g={groups} \
             + batchnorm {act:?} residual={with_res}"
            );
            let fuses = s.is_depthwise() || (groups == 1 && (dt == DType::F32 || k <= 8));
            matches_cpu(&what, &dev, tol, |be| {
                let (lx, lw, ly) = s.sizes();
                let mut rng = Rng::new(83 + lx as u64 + ly as u64);
                let x = upload_as(be, &rng.vec_f32(lx, -1.0, 1.0), dt)?;
                let wt = upload_as(be, &rng.vec_f32(lw, -0.5, 0.5), dt)?;
                let c = s.c_out;
                let gamma = be.upload(&rng.vec_f32(c, 0.5, 1.5))?;
                let beta = be.upload(&rng.vec_f32(c, -0.5, 0.5))?;
                let mean = be.upload(&rng.vec_f32(c, -1.0, 1.0))?;
                let var = be.upload(&rng.vec_f32(c, 0.5, 2.0))?;
                let res = upload_as(be, &rng.vec_f32(ly, -3.0, 6.0), dt)?;
                let res = with_res.then_some(&res);
                let b = BatchNorm::new(n, c, s.oh * s.ow, 1e-5, act);
                let bn = BnEvalParams {
                    gamma: &gamma,
                    beta: &beta,
                    mean: &mean,
                    var: &var,
                };
                let (mut z, mut two) = (poisoned_as(be, ly, dt), poisoned_as(be, ly, dt));
                be.conv2d_fwd(&x, &wt, &mut z, s)?;
                be.batchnorm_fwd_eval(&z, &gamma, &beta, &mean, &var, res, &mut two, b)?;
                let mut one = poisoned_as(be, ly, dt);
                let fused = be.conv2d_fwd_bn_eval(&x, &wt, bn, res, &mut one, s, b)?;
                let (two, one) = (download_f32(be, &two)?, download_f32(be, &one)?);
                if be.device() != Device::Cpu {
                    assert_eq!(fused, fuses, "{what}: fused");
                }
                if fused {
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert!(
                        bits(&one) == bits(&two),
                        "{what}: the fused kernel differs from the two ops on {}",
                        be.name()
                    );
                } else {
                    assert!(
                        one.iter().all(|v| v.is_nan()),
                        "{what}: not fused, yet something was written"
                    );
                }
                Ok(vec![("y".into(), two)])
            });
        }
    }
}

/// A training forward whose BatchNorm statistics come from the convolution's epilogue
/// (`conv2d_fwd_bn_train`: the `_bn_stats` forwards, `batchnorm_merge_stats_f32`, then
/// BatchNorm's apply pass alone) against the two ops on the same device (`conv2d_fwd`, then
/// `batchnorm_fwd_train` with its own statistics pass), on every dense shape of CONV_SIZES in
/// bf16 and in f32 on TF32, with statistics groups of 1 to 10 images: the convolution's output
/// is bit for bit the same, the saved and running statistics agree to f32 rounding, and y to its
/// dtype's (a bf16 value may round the other way); every shape whose forward runs on the pipelined
/// kernels fuses (the others, and the CPU, say no and write nothing). The statistics are also
/// checked against f64 ones of the stored output. The plan device confirms every `_bn_stats`
/// kernel launches, and no statistics pass beside them.
#[test]
fn kernel_conv_then_train_batchnorm_takes_its_statistics_from_the_epilogue() {
    let dev =
        kernel_device("kernel_conv_then_train_batchnorm_takes_its_statistics_from_the_epilogue");
    let cases = || {
        CONV_SIZES.iter().enumerate().filter_map(
            |(i, &(n, c_in, h, w, c_out, k, stride, padding, groups))| {
                let s = Conv::new(n, c_in, h, w, c_out, k, stride, padding, groups).unwrap();
                let ghost = match n {
                    40 => 4,
                    n if n % 2 == 0 && i % 2 == 0 => 2,
                    _ => 1,
                };
                // Training statistics need two values per group.
                (groups == 1 && n / ghost * s.oh * s.ow >= 2).then_some((i, s, ghost))
            },
        )
    };
    // Both forwards of one case: (fused?, outputs of the fused one, of the two ops).
    let run = |be: &dyn Backend,
               i: usize,
               s: Conv,
               ghost: usize,
               dt: DType|
     -> anyhow::Result<(bool, Outputs, Outputs)> {
        let (lx, lw, ly) = s.sizes();
        let mut rng = Rng::new(131 + lx as u64 + ly as u64);
        let x = upload_as(be, &rng.vec_f32(lx, -1.0, 1.0), dt)?;
        let wt = upload_as(be, &rng.vec_f32(lw, -0.5, 0.5), dt)?;
        let c = s.c_out;
        let gamma = be.upload(&rng.vec_f32(c, 0.5, 1.5))?;
        let beta = be.upload(&rng.vec_f32(c, -0.5, 0.5))?;
        let (rm, rv) = (rng.vec_f32(c, -1.0, 1.0), rng.vec_f32(c, 0.5, 2.0));
        let res = upload_as(be, &rng.vec_f32(ly, -3.0, 6.0), dt)?;
        let res = (i % 2 == 1).then_some(&res);
        let b = BatchNorm {
            ghost,
            ..BatchNorm::new(s.n, c, s.oh * s.ow, 1e-5, ACTS[i % 3])
        };
        let outputs = |fused: bool| -> anyhow::Result<(bool, Outputs)> {
            let (mut z, mut y) = (poisoned_as(be, ly, dt), poisoned_as(be, ly, dt));
            let (mut rmean, mut rvar) = (be.upload(&rm)?, be.upload(&rv)?);
            let (mut mean, mut invstd) = (
                be.zeros(DType::F32, ghost * c)?,
                be.zeros(DType::F32, ghost * c)?,
            );
            let mut mask = ActMask::new();
            let ran = if fused {
                let bn = BnTrainParams {
                    gamma: &gamma,
                    beta: &beta,
                    running: (&mut rmean, &mut rvar),
                    saved: (&mut mean, &mut invstd),
                    mask: Some(&mut mask),
                };
                be.conv2d_fwd_bn_train(&x, &wt, &mut z, bn, res, &mut y, s, b)?
            } else {
                be.conv2d_fwd(&x, &wt, &mut z, s)?;
                let (running, saved) = ((&mut rmean, &mut rvar), (&mut mean, &mut invstd));
                let mask = Some(&mut mask);
                be.batchnorm_fwd_train(&z, &gamma, &beta, running, saved, res, &mut y, mask, b)?;
                true
            };
            Ok((
                ran,
                vec![
                    ("mask kept".into(), vec![mask.kept() as u8 as f32]),
                    ("z".into(), download_f32(be, &z)?),
                    ("y".into(), download_f32(be, &y)?),
                    ("saved mean".into(), be.download(&mean)?),
                    ("saved invstd".into(), be.download(&invstd)?),
                    ("running mean".into(), be.download(&rmean)?),
                    ("running var".into(), be.download(&rvar)?),
                ],
            ))
        };
        let (fused, one) = outputs(true)?;
        let (_, two) = outputs(false)?;
        Ok((fused, one, two))
    };
    let tf32_dev = kernel_device(
        "kernel_conv_then_train_batchnorm_takes_its_statistics_from_the_epilogue (TF32)",
    );
    tf32_dev.set_tf32(true);
    for (dt, be) in [(DType::BF16, &dev), (DType::F32, &tf32_dev)] {
        for (i, s, ghost) in cases() {
            let what = format!(
                "{dt} conv {}x{}x{}x{} -> {} k={} s={} + train batchnorm, {ghost} groups",
                s.n, s.c_in, s.h, s.w, s.c_out, s.kh, s.stride
            );
            let (fused, one, two) =
                run(be, i, s, ghost, dt).unwrap_or_else(|e| panic!("{what}: {e:#}"));
            assert_eq!(fused, s.kh <= 8 && s.kw <= 8, "{what}: fused");
            if !fused {
                assert!(
                    one[1].1.iter().all(|v| v.is_nan()) && one[0].1 == [0.0],
                    "{what}: not fused, yet z or the mask was written"
                );
                continue;
            }
            // act'(y) kept after a residual and an activation where y's vectors are 16 bytes, by
            // the fused path as by the two ops (the backward tests check its bits).
            let keeps =
                i % 2 == 1 && ACTS[i % 3] != Act::Identity && (s.oh * s.ow) % (16 / dt.size()) == 0;
            assert_eq!(one[0].1, [keeps as u8 as f32], "{what}: mask kept");
            let (one, two) = (&one[1..], &two[1..]);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(
                bits(&one[0].1) == bits(&two[0].1),
                "{what}: z differs from conv2d_fwd's"
            );
            for ((name, got), (_, want)) in one.iter().zip(two).skip(1) {
                let tol = if name == "y" && dt == DType::BF16 {
                    4e-3
                } else {
                    2e-6
                };
                let err = common::rel_err(got, want);
                assert!(
                    err < tol,
                    "{what}: {name} differs from the two ops' by {err:e}"
                );
            }
            // The saved statistics against f64 ones of the stored output, group by group.
            let (z, mean, invstd) = (&one[0].1, &one[2].1, &one[3].1);
            let (per, hw) = (s.n / ghost, s.oh * s.ow);
            for g in 0..ghost {
                for ch in 0..s.c_out {
                    let vals: Vec<f64> = (g * per..(g + 1) * per)
                        .flat_map(|img| {
                            z[(img * s.c_out + ch) * hw..][..hw]
                                .iter()
                                .map(|&v| v as f64)
                        })
                        .collect();
                    let m = vals.iter().sum::<f64>() / vals.len() as f64;
                    let var = vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / vals.len() as f64;
                    let (gm, gi) = (
                        mean[g * s.c_out + ch] as f64,
                        invstd[g * s.c_out + ch] as f64,
                    );
                    let want_i = 1.0 / (var + 1e-5).sqrt();
                    assert!(
                        (gm - m).abs() <= 1e-5 * (m.abs() + var.sqrt() + 1e-3),
                        "{what}: group {g} channel {ch}: mean {gm} vs {m}"
                    );
                    assert!(
                        (gi - want_i).abs() <= 2e-5 * want_i,
                        "{what}: group {g} channel {ch}: invstd {gi} vs {want_i}"
                    );
                }
            }
        }
    }
    // The CPU has no such kernel: it says so and writes nothing.
    let (i, s, ghost) = cases().next().unwrap();
    let (fused, one, _) = run(insclr::backend::cpu(), i, s, ghost, DType::F32).unwrap();
    assert!(
        !fused && one[1].1.iter().all(|v| v.is_nan()),
        "the CPU fused"
    );
    // The launches: every _bn_stats forward and the merge, no statistics pass.
    let mut seen = std::collections::BTreeSet::new();
    for tf32 in [false, true] {
        let dt = if tf32 { DType::F32 } else { DType::BF16 };
        for (i, s, ghost) in cases().filter(|(_, s, _)| s.kh <= 8 && s.kw <= 8) {
            let plan = CudaBackend::plan();
            plan.set_tf32(tf32);
            let rec = plan.recorder().unwrap();
            let be: &dyn Backend = &plan;
            let (lx, lw, ly) = s.sizes();
            let (x, wt) = (be.zeros(dt, lx).unwrap(), be.zeros(dt, lw).unwrap());
            let (mut z, mut y) = (be.zeros(dt, ly).unwrap(), be.zeros(dt, ly).unwrap());
            let c = s.c_out;
            let (gamma, beta) = (
                be.zeros(DType::F32, c).unwrap(),
                be.zeros(DType::F32, c).unwrap(),
            );
            let (mut rm, mut rv) = (
                be.zeros(DType::F32, c).unwrap(),
                be.zeros(DType::F32, c).unwrap(),
            );
            let (mut m, mut v) = (
                be.zeros(DType::F32, ghost * c).unwrap(),
                be.zeros(DType::F32, ghost * c).unwrap(),
            );
            let b = BatchNorm {
                ghost,
                ..BatchNorm::new(s.n, c, s.oh * s.ow, 1e-5, ACTS[i % 3])
            };
            let bn = BnTrainParams {
                gamma: &gamma,
                beta: &beta,
                running: (&mut rm, &mut rv),
                saved: (&mut m, &mut v),
                mask: None,
            };
            rec.set_recording(true);
            assert!(be
                .conv2d_fwd_bn_train(&x, &wt, &mut z, bn, None, &mut y, s, b)
                .unwrap());
            for e in rec.take() {
                if let Event::Launch { kernel, .. } = e {
                    seen.insert(kernel);
                }
            }
        }
    }
    for dt in ["bf16", "tf32"] {
        for k in [
            "conv2d_1x1_fwd_bn_stats",
            "conv2d_1x1_fwd_bn_stats_m64",
            "conv2d_nhwc_fwd_bn_stats",
            "conv2d_nhwc_fwd_bn_stats_m64",
        ] {
            let k = format!("{k}_{dt}");
            assert!(seen.contains(&k), "no case launched {k}: {seen:?}");
        }
    }
    assert!(seen.contains("batchnorm_merge_stats_f32"), "{seen:?}");
    assert!(
        !seen
            .iter()
            .any(|k| k.starts_with("batchnorm_fwd_train_stats")),
        "a statistics pass ran: {seen:?}"
    );
}

/// A 1x1 data gradient that writes a training BatchNorm's dy takes that BatchNorm's backward
/// reduce pass in its epilogue (`conv2d_1x1_bwd_data_bn_sums_*`), in both of its modes. After a
/// residual (added onto the identity path's gradient, as a ResNet block's conv1 does for the block
/// before; act' from the forward's mask): dz bit for bit the two ops' (conv2d_bwd_data_add, then
/// batchnorm_bwd's residual gradient), the identity path's gradient left as it was. Without one
/// (a bottleneck's conv3 for its bn2; act' of y recomputed from x): dz bit for bit the two ops'
/// dy times act' of the forward's y, and dx also channels-last. Then dx and the parameter
/// gradients from its sums within the sums' rounding (another order) of the two ops'. 64- and
/// 128-row tiles, partial row and pixel tiles, statistics groups; bf16 and f32 on TF32; 1x1 GEMMs
/// and 3x3 channels-last products (of a channels-last dy). After a residual without an activation
/// (no mask) nothing is fused or written.
#[test]
fn kernel_conv_data_gradient_takes_the_next_batchnorm_backward_sums() {
    let dev = kernel_device("kernel_conv_data_gradient_takes_the_next_batchnorm_backward_sums");
    let tf32_dev =
        kernel_device("kernel_conv_data_gradient_takes_the_next_batchnorm_backward_sums (TF32)");
    tf32_dev.set_tf32(true);
    let cases = bn_sums_cases();
    for (dt, be) in [(DType::BF16, &dev), (DType::F32, &tf32_dev)] {
        let be: &dyn Backend = be;
        for &(n, c, h, w, c_out, k, ghost, act, mode) in &cases {
            let what = format!(
                "{dt} {k}x{k} {n}x{c}x{h}x{w} <- {c_out}, {ghost} groups, {act:?}, {mode:?}"
            );
            let s = sums_conv(n, c, h, w, c_out, k);
            let b = BatchNorm {
                ghost,
                dx_nhwc: mode == SumsMode::NhwcDx,
                ..BatchNorm::new(n, c, h * w, 1e-5, act)
            };
            let residual = mode == SumsMode::Residual;
            let (lx, lw, ly) = s.sizes();
            let mut rng = Rng::new(977 + lx as u64);
            let up = |v: Vec<f32>| upload_as(be, &v, dt).unwrap();
            let x = up(rng.vec_f32(lx, -2.0, 2.0));
            let res = up(rng.vec_f32(lx, -1.0, 1.0));
            let bn = TrainedBn::new(be, &x, residual.then_some(&res), b, &mut rng);
            let (params, saved) = bn.params();
            let (y, mask) = (&bn.y, &bn.mask);
            let zeros = |len: usize| be.upload(&vec![0.0f32; len]).unwrap();
            let wt = up(rng.vec_f32(lw, -0.5, 0.5));
            let dy = up(rng.vec_f32(ly, -1.0, 1.0));
            let identity = rng.vec_f32(lx, -1.0, 1.0);
            // The two ops.
            let mut dy_bn = up(identity.clone());
            if residual {
                be.conv2d_bwd_data_add(&dy, &wt, &mut dy_bn, s).unwrap();
            } else {
                be.conv2d_bwd_data(&dy, &wt, &mut dy_bn, s).unwrap();
            }
            let (mut dx, mut dres) = (poisoned_as(be, lx, dt), poisoned_as(be, lx, dt));
            let (mut dg, mut db) = (zeros(c), zeros(c));
            let dres_arg = (residual && act != Act::Identity).then_some(&mut dres);
            be.batchnorm_bwd(
                &x,
                y,
                &dy_bn,
                params,
                saved,
                Some(mask),
                &mut dx,
                dres_arg,
                (&mut dg, &mut db),
                b,
            )
            .unwrap();
            // The fused data gradient, then the second pass alone.
            let identity_buf = up(identity.clone());
            let (mut dz, mut partial) = (poisoned_as(be, lx, dt), Buf::empty(DType::F32));
            let sums = bn.sums(&x, residual);
            let res_arg = residual.then_some(&identity_buf);
            let runs = be
                .conv2d_bwd_data_bn_sums(&dy, &wt, res_arg, &mut dz, sums, &mut partial, s, b)
                .unwrap_or_else(|e| panic!("{what}: {e:#}"));
            let got = |buf: &Buf| download_f32(be, buf).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let Some(runs) = runs else {
                assert!(residual && act == Act::Identity, "{what}: not fused");
                assert!(
                    got(&dz).iter().all(|v| v.is_nan()),
                    "{what}: not fused, yet dz was written"
                );
                continue;
            };
            if residual {
                assert_ne!(act, Act::Identity, "{what}: fused without a mask");
                assert!(mask.kept(), "{what}: fused, yet the forward kept no mask");
                assert!(
                    bits(&got(&dz)) == bits(&got(&dres)),
                    "{what}: dz differs from the two ops' dres"
                );
                assert!(
                    bits(&got(&identity_buf)) == bits(&got(&up(identity.clone()))),
                    "{what}: the identity path's gradient was written"
                );
            } else {
                // dy (as the two ops' data gradient stored it) times act' of the forward's y.
                let act_grad = |y: f32| match act {
                    Act::Identity => 1.0,
                    Act::Relu => (y > 0.0) as u8 as f32,
                    Act::Relu6 => (y > 0.0 && y < 6.0) as u8 as f32,
                };
                let want: Vec<f32> = got(&dy_bn)
                    .iter()
                    .zip(got(y))
                    .map(|(&g, y)| g * act_grad(y))
                    .collect();
                assert!(
                    bits(&got(&dz)) == bits(&want),
                    "{what}: dz differs from the two ops' dy times act'(y)"
                );
            }
            let (mut dx2, mut dg2, mut db2) = (poisoned_as(be, lx, dt), zeros(c), zeros(c));
            be.batchnorm_bwd_summed(
                &x,
                &dz,
                params,
                saved,
                (&partial, runs),
                &mut dx2,
                (&mut dg2, &mut db2),
                b,
            )
            .unwrap_or_else(|e| panic!("{what}: {e:#}"));
            let dx_tol = if dt == DType::BF16 { 4e-3 } else { 1e-5 };
            for (name, got_v, want_v, tol) in [
                ("dx", got(&dx2), got(&dx), dx_tol),
                ("dgamma", got(&dg2), got(&dg), 1e-5),
                ("dbeta", got(&db2), got(&db), 1e-5),
            ] {
                let err = common::rel_err(&got_v, &want_v);
                assert!(
                    err < tol,
                    "{what}: {name} differs from the two ops' by {err:e}"
                );
            }
            // Sums of another run count are refused, naming the count.
            let e = be
                .batchnorm_bwd_summed(
                    &x,
                    &dz,
                    params,
                    saved,
                    (&partial, runs + 1),
                    &mut dx2,
                    (&mut dg2, &mut db2),
                    b,
                )
                .unwrap_err();
            assert!(format!("{e:#}").contains("runs a pair"), "{what}: {e:#}");
        }
    }
    // The cases above ran every variant: the plan device records the same launches.
    let plan = CudaBackend::plan();
    plan.set_tf32(true);
    let be: &dyn Backend = &plan;
    let rec = plan.recorder().unwrap();
    for dt in [DType::BF16, DType::F32] {
        for &(n, c, h, w, c_out, k, ghost, act, mode) in &cases {
            let s = sums_conv(n, c, h, w, c_out, k);
            let b = BatchNorm {
                ghost,
                dx_nhwc: mode == SumsMode::NhwcDx,
                ..BatchNorm::new(n, c, h * w, 1e-5, act)
            };
            let residual = mode == SumsMode::Residual;
            let (lx, lw, ly) = s.sizes();
            let act_buf = |len: usize| be.zeros(dt, len).unwrap();
            let chan = |len: usize| be.zeros(DType::F32, len).unwrap();
            let (x, res, wt, dy) = (act_buf(lx), act_buf(lx), act_buf(lw), act_buf(ly));
            let (mut dz, mut dx, mut dg, mut db) = (act_buf(lx), act_buf(lx), chan(c), chan(c));
            let bn = TrainedBn::new(be, &x, residual.then_some(&res), b, &mut Rng::new(1));
            let (params, saved) = bn.params();
            let mut partial = Buf::empty(DType::F32);
            rec.set_recording(true);
            let sums = bn.sums(&x, residual);
            let res_arg = residual.then_some(&res);
            if let Some(runs) = be
                .conv2d_bwd_data_bn_sums(&dy, &wt, res_arg, &mut dz, sums, &mut partial, s, b)
                .unwrap()
            {
                let sums = (&partial, runs);
                be.batchnorm_bwd_summed(
                    &x,
                    &dz,
                    params,
                    saved,
                    sums,
                    &mut dx,
                    (&mut dg, &mut db),
                    b,
                )
                .unwrap();
            }
            rec.set_recording(false);
        }
    }
    let seen: std::collections::BTreeSet<String> = rec
        .take()
        .into_iter()
        .filter_map(|e| match e {
            Event::Launch { kernel, .. } => Some(kernel),
            _ => None,
        })
        .collect();
    for k in [
        "conv2d_1x1_bwd_data_bn_sums_bf16",
        "conv2d_1x1_bwd_data_bn_sums_m64_bf16",
        "conv2d_1x1_bwd_data_bn_sums_tf32",
        "conv2d_1x1_bwd_data_bn_sums_m64_tf32",
        "conv2d_nhwc_bwd_data_bn_sums_bf16",
        "conv2d_nhwc_bwd_data_bn_sums_m64_bf16",
        "conv2d_nhwc_bwd_data_bn_sums_tf32",
        "conv2d_nhwc_bwd_data_bn_sums_m64_tf32",
        "batchnorm_merge_sums_f32",
        "batchnorm_bwd_bf16",
        "batchnorm_bwd_f32",
        "batchnorm_bwd_pairs_f32",
        "batchnorm_bwd_nhwc_bf16",
        "batchnorm_bwd_nhwc_f32",
    ] {
        assert!(seen.contains(k), "no case launches {k}: {seen:?}");
    }
}

/// How a case of `kernel_conv_data_gradient_takes_the_next_batchnorm_backward_sums` runs its
/// BatchNorm: a residual into y (act' from the mask), or none (act' recomputed), dx NCHW or
/// channels-last.
#[derive(Clone, Copy, Debug, PartialEq)]
enum SumsMode {
    Residual,
    Plain,
    NhwcDx,
}

/// (n, BatchNorm's channels = the convolution's c_in, h, w, c_out, kernel size, statistics
/// groups, act, mode)
type SumsCase = (
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    Act,
    SumsMode,
);

/// 1x1 GEMMs (a bottleneck's conv1 and conv3) and 3x3 channels-last products of a channels-last
/// dy (its conv2).
fn bn_sums_cases() -> Vec<SumsCase> {
    use SumsMode::*;
    vec![
        (2, 16, 4, 4, 24, 1, 1, Act::Relu, Residual),
        (3, 136, 4, 6, 72, 1, 3, Act::Relu6, Residual),
        (2, 40, 10, 8, 200, 1, 2, Act::Relu, Residual),
        (1, 16, 24, 24, 24, 1, 1, Act::Relu, Residual),
        (4, 72, 10, 20, 32, 1, 2, Act::Relu, Residual),
        (2, 16, 4, 4, 24, 1, 1, Act::Identity, Residual),
        (2, 16, 4, 4, 24, 1, 1, Act::Relu, Plain),
        (3, 136, 4, 6, 72, 1, 3, Act::Relu6, Plain),
        (2, 40, 10, 8, 200, 1, 2, Act::Relu, NhwcDx),
        (4, 72, 10, 20, 32, 1, 2, Act::Relu6, NhwcDx),
        (2, 16, 4, 4, 24, 1, 1, Act::Identity, Plain),
        (2, 16, 4, 4, 24, 3, 1, Act::Relu, Plain),
        (3, 136, 4, 6, 72, 3, 3, Act::Relu6, Plain),
        (2, 40, 10, 8, 200, 3, 2, Act::Relu, NhwcDx),
        (1, 24, 12, 12, 16, 3, 1, Act::Relu, Residual),
        // Channels-last pixel tiles that run on from one image into the next (a statistics
        // group's images, tc_gemm.cuh's ImageCols): 168-pixel images over 128-pixel tiles, and
        // 40-pixel ones, three to a tile, in two groups.
        (3, 16, 12, 14, 24, 3, 1, Act::Relu, Plain),
        (4, 24, 4, 10, 16, 3, 2, Act::Relu, Residual),
    ]
}

/// A case's convolution: a 1x1, or a 3x3 (padding 1) that reads its dy channels-last.
fn sums_conv(n: usize, c: usize, h: usize, w: usize, c_out: usize, k: usize) -> Conv {
    let s = Conv::new(n, c, h, w, c_out, k, 1, Padding::Sym(k / 2), 1).unwrap();
    s.nhwc_grad(k > 1)
}

/// The bf16 1x1 weight gradient sums groups of whole images when a GPU holds fewer blocks than
/// the batch has images (a batch of 64 on an H200 for the widest layers). On an emulated GPU of
/// one or two multiprocessors, 7 images make such groups from a test's small layer: 2 to 7
/// images a group, the last one short for most of them, each image a segment of the product's
/// reduction. Both tile heights (c_out 40: 64-row tiles; 72: 128-row).
#[test]
fn kernel_conv_1x1_weight_gradient_over_groups_of_images_matches_cpu() {
    let tol = FLOAT_DTYPES
        .iter()
        .find(|(dt, _)| *dt == DType::BF16)
        .unwrap()
        .1;
    for sms in [1, 2] {
        let dev = CudaBackend::emu_with_sms(sms);
        for c_out in [40, 72] {
            let s = Conv::new(7, 40, 8, 8, c_out, 1, 1, Padding::Sym(0), 1).unwrap();
            let what = format!("conv bf16 7x40x8x8 -> {c_out} 1x1 on {sms} emulated SMs");
            matches_cpu(&what, &dev, tol, |be| conv_passes(be, s, DType::BF16));
        }
    }
}

/// Weight gradients whose reduction splits into more parts than `conv2d_bwd_weight_reduce_f32`
/// has rows (8 a block): each row sums four parts at a time and then the rest, and the rows are
/// added in order, for a weight of fewer than 32 elements (one partial block) and one of 592
/// (18.5 blocks). The parts come from the GPU's 132 slots (the emulator's default): the plan
/// checks the counts, so that the test keeps covering both loops of every row.
#[test]
fn kernel_conv_weight_gradient_in_many_parts_matches_cpu() {
    let dev = kernel_device("kernel_conv_weight_gradient_in_many_parts_matches_cpu");
    let tol = |dt| FLOAT_DTYPES.iter().find(|(d, _)| *d == dt).unwrap().1;
    // f32 on FP32 (no TF32: the implicit GEMM's split reduction) and bf16's 1x1 products.
    dev.set_tf32(false);
    let cases = [
        // The implicit GEMM's parts: 15 weights, 49 parts of 256 pixels.
        (
            DType::F32,
            Conv::new(4, 3, 56, 56, 5, 1, 1, Padding::Sym(0), 1).unwrap(),
        ),
        // The 1x1 products on tensor cores: parts of one image (592 weights, 36 parts).
        // (TF32's take the same split and reduction.)
        (
            DType::BF16,
            Conv::new(1, 16, 96, 96, 37, 1, 1, Padding::Sym(0), 1).unwrap(),
        ),
    ];
    for (dt, s) in cases {
        let what = format!("{dt} weight gradient of {s:?}");
        let plan = CudaBackend::plan();
        plan.set_tf32(false);
        let rec = plan.recorder().unwrap();
        rec.set_recording(true);
        let be: &dyn Backend = &plan;
        let (lx, lw, ly) = s.sizes();
        let x = upload_as(be, &vec![0.0; lx], dt).unwrap();
        let dy = upload_as(be, &vec![0.0; ly], dt).unwrap();
        let mut dw = be.upload(&vec![0.0f32; lw]).unwrap();
        be.conv2d_bwd_weight(&x, &dy, &mut dw, s).unwrap();
        let parts: Vec<usize> = rec
            .take()
            .into_iter()
            .filter_map(|e| match e {
                Event::Launch {
                    kernel,
                    work: Some(w),
                    ..
                } if kernel == "conv2d_bwd_weight_reduce_f32" => {
                    w.shape.split(' ').next().and_then(|p| p.parse().ok())
                }
                _ => None,
            })
            .collect();
        assert!(
            matches!(parts[..], [p] if p >= 33),
            "{what}: one reduction of at least 33 parts expected, got {parts:?}"
        );
        matches_cpu(&what, &dev, tol(dt), |be| conv_passes(be, s, dt));
    }
}

/// f32 convolutions on TF32 tensor cores (`Backend::set_tf32`). 1x1, stride 1, 4-float rows:
/// 4 pixels with 4 channels (one chunk), 36 and 196 pixels (a 14 x 14 map, no 8-float rows), a
/// 64-row and a partial second 128-row tile of outputs and of the data gradient's channels, and
/// a weight gradient whose 576 pixels split into parts. Channels-last (every other dense kernel
/// up to 8 x 8): the stem (3 channels padded to 4) and 6 channels (padded to 8), 4 channels (four
/// taps a 16-deep k tile), 136 (a partial 64-row tile), 3x3 at stride 1 and 2 ("SAME"), a 5x5 onto
/// 136 channels, the 1x1 shortcut at stride 2 and a 1x1 on a 7 x 7 map (49 pixels); the data
/// gradient by stride phases onto 72 channels (the 128-row product), at stride 3 (one tap a
/// phase) and at stride 4 with a 2x2 kernel (phases without a tap: zeros).
#[rustfmt::skip]
const TF32_SIZES: &[ConvCase] = &[
    (2, 4, 2, 2, 5, 1, 1, Padding::Sym(0), 1),
    (1, 12, 6, 6, 65, 1, 1, Padding::Sym(0), 1),
    (1, 8, 14, 14, 72, 1, 1, Padding::Sym(0), 1),
    (3, 68, 4, 7, 130, 1, 1, Padding::Sym(0), 1),
    (2, 136, 10, 8, 200, 1, 1, Padding::Sym(0), 1),
    (1, 16, 24, 24, 24, 1, 1, Padding::Sym(0), 1),
    (2, 3, 23, 20, 8, 7, 2, Padding::Sym(3), 1),
    (1, 6, 8, 9, 6, 3, 1, Padding::Sym(1), 1),
    (2, 8, 9, 7, 16, 3, 1, Padding::Sym(1), 1),
    (2, 24, 11, 10, 40, 3, 2, Padding::Same, 1),
    (1, 136, 5, 6, 16, 3, 1, Padding::Sym(1), 1),
    (2, 64, 10, 12, 72, 3, 1, Padding::Sym(1), 1),
    (1, 4, 12, 11, 136, 5, 1, Padding::Sym(2), 1),
    (1, 16, 9, 9, 24, 1, 2, Padding::Sym(0), 1),
    (2, 40, 7, 7, 8, 1, 1, Padding::Sym(0), 1),
    (2, 72, 9, 9, 16, 3, 2, Padding::Sym(1), 1),
    (2, 8, 10, 9, 16, 3, 3, Padding::Sym(1), 1),
    (1, 16, 9, 11, 8, 2, 4, Padding::Sym(1), 1),
];

/// `v` rounded to TF32 as the kernels round it (to nearest, ties away from zero: cvt.rna).
fn tf32(v: f32) -> f32 {
    if v.is_finite() {
        f32::from_bits((v.to_bits() + 0x1000) & !0x1fff)
    } else {
        v
    }
}

/// The TF32 kernels (forward, with eval BatchNorm, data gradient written and added, weight
/// gradient) match the CPU twin run on TF32-rounded inputs to f32 accumulation's tolerance:
/// their products are exactly those of rounded inputs (rounding by truncation instead would be
/// off by ~1e-4); against the exact f32 convolution they are off by TF32's error, not more. The
/// gradients of a layer whose c_out is not a run of 4 have no TF32 kernel and stay exact f32.
/// Every forward launches a `_tf32` kernel.
#[test]
fn kernel_tf32_convolutions_are_the_cpu_on_tf32_rounded_inputs() {
    let dev = kernel_device("kernel_tf32_convolutions_are_the_cpu_on_tf32_rounded_inputs");
    dev.set_tf32(true);
    let run = |be: &dyn Backend, s: Conv, round: bool| -> anyhow::Result<Outputs> {
        let (lx, lw, ly) = s.sizes();
        let mut rng = Rng::new(97 + lx as u64 + ly as u64);
        let mut input = |len, lo, hi| {
            let v = rng.vec_f32(len, lo, hi);
            be.upload(&if round {
                v.iter().map(|&x| tf32(x)).collect()
            } else {
                v
            })
        };
        let (x, wt, dy) = (
            input(lx, -1.0, 1.0)?,
            input(lw, -0.5, 0.5)?,
            input(ly, -1.0, 1.0)?,
        );
        let c = s.c_out;
        let mut chan = |lo, hi| be.upload(&rng.vec_f32(c, lo, hi));
        let (gamma, beta, mean, var) = (
            chan(0.5, 1.5)?,
            chan(-0.5, 0.5)?,
            chan(-1.0, 1.0)?,
            chan(0.5, 2.0)?,
        );
        let res = be.upload(&rng.vec_f32(ly, -3.0, 6.0))?;
        let old = rng.vec_f32(lx, -1.0, 1.0);
        let (mut y, mut y_bn, mut dx) = (
            poisoned_as(be, ly, DType::F32),
            poisoned_as(be, ly, DType::F32),
            poisoned_as(be, lx, DType::F32),
        );
        let mut dx_sum = be.upload(&old)?;
        let mut dw = be.upload(&vec![0.5; lw])?;
        be.conv2d_fwd(&x, &wt, &mut y, s)?;
        let b = BatchNorm::new(s.n, c, s.oh * s.ow, 1e-5, Act::Relu);
        let bn = BnEvalParams {
            gamma: &gamma,
            beta: &beta,
            mean: &mean,
            var: &var,
        };
        if !be.conv2d_fwd_bn_eval(&x, &wt, bn, Some(&res), &mut y_bn, s, b)? {
            let mut z = poisoned_as(be, ly, DType::F32);
            be.conv2d_fwd(&x, &wt, &mut z, s)?;
            be.batchnorm_fwd_eval(&z, &gamma, &beta, &mean, &var, Some(&res), &mut y_bn, b)?;
        }
        be.conv2d_bwd_data(&dy, &wt, &mut dx, s)?;
        be.conv2d_bwd_data_add(&dy, &wt, &mut dx_sum, s)?;
        be.conv2d_bwd_weight(&x, &dy, &mut dw, s)?;
        Ok(vec![
            ("y".into(), be.download(&y)?),
            ("y with batchnorm".into(), be.download(&y_bn)?),
            ("dx".into(), be.download(&dx)?),
            ("dx added".into(), be.download(&dx_sum)?),
            ("dw".into(), be.download(&dw)?),
        ])
    };
    let cpu = insclr::backend::cpu();
    for &(n, c_in, h, w, c_out, k, stride, padding, groups) in TF32_SIZES {
        let s = Conv::new(n, c_in, h, w, c_out, k, stride, padding, groups).unwrap();
        let what = format!("tf32 conv {n}x{c_in}x{h}x{w} -> {c_out} k={k} s={stride} {padding:?}");
        let one_by_one =
            k == 1 && stride == 1 && c_in % 4 == 0 && (h * w) % 4 == 0 && s.pad_top == 0;
        let gradients_on_tf32 = one_by_one || c_out % 4 == 0;
        let got = run(&dev, s, false).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        let rounded = run(cpu, s, true).unwrap();
        let exact = run(cpu, s, false).unwrap();
        for (((name, g), (_, r)), (_, e)) in got.iter().zip(&rounded).zip(&exact) {
            let on_tf32 = match name.as_str() {
                "dw" | "dx" | "dx added" => gradients_on_tf32,
                _ => true,
            };
            let (to_rounded, to_exact) = (common::rel_err(g, r), common::rel_err(g, e));
            if !on_tf32 {
                assert!(
                    to_exact < 1e-5,
                    "{what}: {name} (exact f32) differs from the CPU by {to_exact:e}"
                );
                continue;
            }
            assert!(
                to_rounded < 1e-5,
                "{what}: {name} differs from the CPU on TF32 inputs by {to_rounded:e}"
            );
            assert!(
                to_exact < 2e-3,
                "{what}: {name} differs from the exact f32 result by {to_exact:e}"
            );
            // The weight gradient's 0.5 start and the added gradient's old values dilute the
            // rounding's share of those two; the others must show it.
            if name == "y" || name == "dx" {
                assert!(
                    to_exact > 1e-5,
                    "{what}: {name} is exact f32 ({to_exact:e}): TF32 did not run"
                );
            }
        }
    }
    // The launches: every TF32 kernel, and no SIMT f32 forward.
    let mut seen = std::collections::BTreeSet::new();
    for &(n, c_in, h, w, c_out, k, stride, padding, groups) in TF32_SIZES {
        let s = Conv::new(n, c_in, h, w, c_out, k, stride, padding, groups).unwrap();
        let plan = CudaBackend::plan();
        plan.set_tf32(true);
        let rec = plan.recorder().unwrap();
        rec.set_recording(true);
        run(&plan, s, false).unwrap();
        for e in rec.take() {
            if let Event::Launch { kernel, .. } = e {
                seen.insert(kernel);
            }
        }
    }
    let tf32_kernels = [
        "conv2d_1x1_fwd_tf32",
        "conv2d_1x1_fwd_m64_tf32",
        "conv2d_1x1_fwd_bn_eval_tf32",
        "conv2d_1x1_fwd_bn_eval_m64_tf32",
        "conv2d_1x1_bwd_data_tf32",
        "conv2d_1x1_bwd_data_m64_tf32",
        "conv2d_1x1_bwd_weight_tf32",
        "conv2d_1x1_bwd_weight_m64_tf32",
        "conv2d_nhwc_fwd_tf32",
        "conv2d_nhwc_fwd_m64_tf32",
        "conv2d_nhwc_fwd_bn_eval_tf32",
        "conv2d_nhwc_fwd_bn_eval_m64_tf32",
        "conv2d_nhwc_bwd_data_tf32",
        "conv2d_nhwc_bwd_data_m64_tf32",
        "conv2d_nhwc_bwd_weight_tf32",
        "conv2d_nhwc_bwd_weight_m64_tf32",
        "conv2d_nhwc_bwd_data_phase_tf32",
        "conv2d_nhwc_bwd_data_phase_m64_tf32",
        "conv2d_phase_weight_f32",
        "conv2d_to_nhwc_f32",
    ];
    for k in tf32_kernels {
        assert!(seen.contains(k), "no case launched {k}: {seen:?}");
    }
    for k in ["conv2d_fwd_f32", "conv2d_fwd_bn_eval_f32"] {
        assert!(
            !seen.contains(k),
            "an f32 forward ran off the tensor cores ({k})"
        );
    }
}

/// Every kernel of `CONV_KERNELS` is launched by some case of `CONV_SIZES`, so the comparison
/// above covers each: the plan device records the launchers' launches without running them.
#[test]
fn conv_sizes_launch_every_conv_kernel() {
    let mut seen = std::collections::BTreeSet::new();
    for (dt, _) in FLOAT_DTYPES {
        for &(n, c_in, h, w, c_out, k, stride, padding, groups) in CONV_SIZES {
            let s = Conv::new(n, c_in, h, w, c_out, k, stride, padding, groups).unwrap();
            let (lx, lw, ly) = s.sizes();
            let cuda = CudaBackend::plan();
            let be: &dyn Backend = &cuda;
            let (x, wt, dy) = (
                be.zeros(dt, lx).unwrap(),
                be.zeros(dt, lw).unwrap(),
                be.zeros(dt, ly).unwrap(),
            );
            let (mut y, mut dx) = (be.zeros(dt, ly).unwrap(), be.zeros(dt, lx).unwrap());
            let mut dw = be.zeros(DType::F32, lw).unwrap();
            let rec = cuda.recorder().unwrap();
            rec.set_recording(true);
            be.conv2d_fwd(&x, &wt, &mut y, s).unwrap();
            be.conv2d_bwd_data(&dy, &wt, &mut dx, s).unwrap();
            be.conv2d_bwd_weight(&x, &dy, &mut dw, s).unwrap();
            let chan = be.zeros(DType::F32, s.c_out).unwrap();
            let bn = BnEvalParams {
                gamma: &chan,
                beta: &chan,
                mean: &chan,
                var: &chan,
            };
            let b = BatchNorm::new(s.n, s.c_out, s.oh * s.ow, 1e-5, Act::Relu);
            be.conv2d_fwd_bn_eval(&x, &wt, bn, None, &mut y, s, b)
                .unwrap();
            for e in rec.take() {
                if let Event::Launch { kernel, .. } = e {
                    seen.insert(kernel);
                }
            }
        }
    }
    for k in CONV_KERNELS {
        assert!(seen.contains(k), "no case of CONV_SIZES launches {k}");
    }
}

#[test]
fn grouped_conv_without_a_kernel_is_a_clear_error() {
    let dev = kernel_device("grouped_conv_without_a_kernel_is_a_clear_error");
    let be: &dyn Backend = &dev;
    let s = Conv::new(1, 4, 5, 5, 4, 3, 1, Padding::Sym(1), 2).unwrap();
    let (lx, lw, ly) = s.sizes();
    let (x, wt, mut y) = (poisoned(be, lx), poisoned(be, lw), poisoned(be, ly));
    let err = be.conv2d_fwd(&x, &wt, &mut y, s).unwrap_err();
    assert!(format!("{err:#}").contains("groups = 2"), "{err:#}");
}

/// (n, h, w): one pixel, planes around a block (256) and not a multiple of anything.
/// Pixel counts that are a multiple of 8 (both vector paths: 16 x 16, 8 x 12, and 64 x 72, more
/// groups than a block has threads), of 4 only (f32's vectors, bf16 a pixel at a time: 2 x 2),
/// and of neither (1 x 1, 17 x 15, 33 x 65).
const IMAGE_SIZES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (2, 16, 16),
    (3, 17, 15),
    (2, 33, 65),
    (3, 8, 12),
    (1, 2, 2),
    (2, 64, 72),
];

/// The device's tensor bit for bit the CPU twin's, f32 and bf16 (the f32 value rounded, as a
/// cast of it rounds); the f32 twin is the training pipeline's ToTensor + Normalize.
#[test]
fn kernel_image_to_tensor_matches_cpu_exactly() {
    let dev = kernel_device("kernel_image_to_tensor_matches_cpu_exactly");
    let dev: &dyn Backend = &dev;
    let cpu = insclr::backend::cpu();
    let (mean, std) = ([0.485f32, 0.456, 0.406], [0.229f32, 0.224, 0.225]);
    for &(n, h, w) in IMAGE_SIZES {
        let mut rng = Rng::new(91 + (n * h * w) as u64);
        // Every byte value occurs (0 and 255 included) once the batch is large enough.
        let bytes: Vec<u8> = (0..n * h * w * 3)
            .map(|i| {
                if i < 256 {
                    i as u8
                } else {
                    rng.below(256) as u8
                }
            })
            .collect();
        let s = ImageToTensor { n, h, w, mean, std };
        let run = |be: &dyn Backend, dtype: DType| -> Vec<u32> {
            let rgb = be.upload(&bytes).unwrap();
            let mut out = poisoned_as(be, n * 3 * h * w, dtype);
            be.image_to_tensor(&rgb, &mut out, s).unwrap();
            match dtype {
                DType::F32 => be
                    .download::<f32>(&out)
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect(),
                _ => be
                    .download::<half::bf16>(&out)
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits() as u32)
                    .collect(),
            }
        };
        let want = run(cpu, DType::F32);
        assert!(
            run(dev, DType::F32) == want,
            "{n}x{h}x{w}: the device's tensor differs from the CPU's"
        );
        let rounded: Vec<u32> = want
            .iter()
            .map(|&b| half::bf16::from_f32(f32::from_bits(b)).to_bits() as u32)
            .collect();
        assert!(
            run(cpu, DType::BF16) == rounded,
            "{n}x{h}x{w}: the CPU's bf16 tensor is not its f32 one rounded"
        );
        assert!(
            run(dev, DType::BF16) == rounded,
            "{n}x{h}x{w}: the device's bf16 tensor differs from the CPU's"
        );
        // The twin is the training pipeline's ToTensor + Normalize, image by image.
        for i in 0..n {
            let img = image::RgbImage::from_raw(
                w as u32,
                h as u32,
                bytes[i * h * w * 3..(i + 1) * h * w * 3].to_vec(),
            )
            .unwrap();
            let mut t = vec![0f32; 3 * h * w];
            to_tensor(&img, mean, std, &mut t);
            let t: Vec<u32> = t.iter().map(|v| v.to_bits()).collect();
            assert!(
                t == want[i * 3 * h * w..(i + 1) * 3 * h * w],
                "image {i}: not to_tensor's"
            );
        }
    }
}

/// f32 -> bf16 -> f32 on the device against the CPU twin, bit for bit: ties both ways, signed
/// zeros, subnormals, the largest finite f32 (which rounds up to infinity), infinities, NaN.
#[test]
fn kernel_cast_matches_cpu_exactly() {
    let dev = kernel_device("kernel_cast_matches_cpu_exactly");
    let dev: &dyn Backend = &dev;
    let cpu = insclr::backend::cpu();
    let special = [
        0.0f32,
        -0.0,
        1.0,
        f32::from_bits(0x3f80_8000), // halfway, even below: rounds down
        f32::from_bits(0x3f81_8000), // halfway, odd below: rounds up
        f32::from_bits(0x3f80_8001), // just past halfway
        f32::from_bits(0x0000_0001), // smallest subnormal
        f32::from_bits(0x807f_ffff), // largest negative subnormal
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ];
    for &len in ELTWISE_LENS {
        let mut rng = Rng::new(53 + len as u64);
        // Random bit patterns cover every exponent; a third of them are plain values.
        let x: Vec<f32> = (0..len)
            .map(|i| match i % 3 {
                _ if i < special.len() => special[i],
                0 => f32::from_bits(rng.below(u32::MAX as usize) as u32),
                _ => rng.vec_f32(1, -100.0, 100.0)[0],
            })
            .collect();
        let run = |be: &dyn Backend| -> (Vec<u16>, Vec<f32>) {
            let xs = be.upload(&x).unwrap();
            let mut half = poisoned_as(be, len, DType::BF16);
            be.cast(&xs, &mut half).unwrap();
            let mut back = poisoned_as(be, len, DType::F32);
            be.cast(&half, &mut back).unwrap();
            let bits = be.download::<half::bf16>(&half).unwrap();
            (
                bits.iter().map(|v| v.to_bits()).collect(),
                be.download::<f32>(&back).unwrap(),
            )
        };
        let ((want_h, want_f), (got_h, got_f)) = (run(cpu), run(dev));
        for i in 0..len {
            let (w, g) = (
                half::bf16::from_bits(want_h[i]),
                half::bf16::from_bits(got_h[i]),
            );
            let same = if x[i].is_nan() {
                w.is_nan() && g.is_nan() && got_f[i].is_nan() && want_f[i].is_nan()
            } else {
                w.to_bits() == g.to_bits() && got_f[i].to_bits() == want_f[i].to_bits()
            };
            assert!(
                same,
                "len {len}, element {i}: {:e} ({:#010x}) cast to bf16 {:#06x} on the device, {:#06x} on the CPU; back {:e} / {:e}",
                x[i],
                x[i].to_bits(),
                g.to_bits(),
                w.to_bits(),
                got_f[i],
                want_f[i]
            );
            // The twin is round to nearest even, checked against the rule itself.
            if x[i].is_finite() {
                let r = want_f[i] as f64;
                let step =
                    2f64.powi(r.abs().max(f32::MIN_POSITIVE as f64).log2().floor() as i32 - 7);
                assert!(
                    r.is_infinite() || (r - x[i] as f64).abs() <= step / 2.0 * 1.000_001,
                    "{:e} rounded to {r:e}",
                    x[i]
                );
            }
        }
    }
    let wrong = dev.cast(
        &dev.upload(&[1.0f32]).unwrap(),
        &mut dev.upload(&[2.0f32]).unwrap(),
    );
    assert!(format!("{:#}", wrong.unwrap_err()).contains("not a cast between f32 and bf16"));
}

/// (n, c, h, w, c_out, stride, ghost, residual) of a BatchNorm of `n x c x h x w` whose output
/// feeds a 3x3 convolution to `c_out` channels alone, and whether the BatchNorm after that
/// convolution adds a residual: 35 pixels (the tiles' 2-byte path, a partial tile), 72 pixels
/// (16-byte path, a second pixel tile) with 72 channels (a partial second channel tile) in 2
/// statistics groups and a residual, a stride-2 convolution (its data gradient by phases), 4
/// groups.
type NhwcCase = (usize, usize, usize, usize, usize, usize, usize, bool);
const NHWC_CASES: &[NhwcCase] = &[
    (2, 8, 5, 7, 16, 1, 1, false),
    (4, 72, 9, 8, 8, 1, 2, true),
    (4, 16, 8, 8, 24, 2, 4, false),
];

/// BatchNorm (ReLU) writing its output channels-last for the convolution after it, which reads
/// it so (`BatchNorm::y_nhwc`, `Conv::x_nhwc`), and the BatchNorm after that convolution writing
/// its backward's dx channels-last, the convolution's dy (`BatchNorm::dx_nhwc`, `Conv::dy_nhwc`;
/// with a residual added in one case, whose gradient stays NCHW): on the GPU bit for bit what the NCHW ops give (the first BatchNorm's statistics from a 1x1
/// convolution's epilogue as in a ResNet block, and from its own pass; the convolution's
/// forward, forward with BatchNorm, backward in one op and pass by pass; both BatchNorms'
/// backward); and the CPU twin, which transposes, agrees.
#[test]
fn kernel_channels_last_batchnorm_output_feeds_its_convolution() {
    let bf16_dev = kernel_device("kernel_channels_last_batchnorm_output_feeds_its_convolution");
    let tf32_dev =
        kernel_device("kernel_channels_last_batchnorm_output_feeds_its_convolution (TF32)");
    tf32_dev.set_tf32(true);
    // The CPU computes f32 exactly, the GPU on TF32 tensor cores (10-bit mantissas) through two
    // convolutions: the gap grows in BatchNorms' backward sums, which cancel (3% on a dgamma); a
    // wrongly placed value is off by order 1. The NCHW ops on the GPU are the exact check.
    for (dt, dev, tol) in [
        (DType::BF16, &bf16_dev, 1e-2),
        (DType::F32, &tf32_dev, 6e-2),
    ] {
        for &case in NHWC_CASES {
            let (n, c, h, w, c_out, stride, ghost, residual) = case;
            let what = format!(
                "{dt} batchnorm {n}x{c}x{h}x{w} ({ghost} groups) -> 3x3/{stride} to {c_out} (residual: {residual})"
            );
            let s2 = Conv::new(n, c, h, w, c_out, 3, stride, Padding::Sym(1), 1).unwrap();
            let be: &dyn Backend = dev;
            assert!(
                be.conv_reads_nhwc(&s2, dt) && be.conv_reads_dy_nhwc(&s2, dt),
                "{what}: the convolution does not read channels-last"
            );
            let run = |be: &dyn Backend, nhwc| {
                channels_last_chain(be, dt, case, nhwc).unwrap_or_else(|e| panic!("{what}: {e:#}"))
            };
            let (nchw, nhwc) = (run(dev, false), run(dev, true));
            for ((name, want), (_, got)) in nchw.iter().zip(&nhwc) {
                let first = got
                    .iter()
                    .zip(want)
                    .position(|(g, w)| g.to_bits() != w.to_bits());
                assert!(
                    got.len() == want.len() && first.is_none(),
                    "{what}: {name} differs from the NCHW ops' (first at {first:?}: {:?})",
                    first.map(|i| (got[i], want[i]))
                );
            }
            matches_cpu(&what, dev, tol, |be| {
                channels_last_chain(be, dt, case, true)
            });
        }
    }
}

/// A 1x1 convolution with training BatchNorm (ReLU) in one op and the same BatchNorm alone on
/// its output, each writing y channels-last when `nhwc`, then a 3x3 convolution of y (forward,
/// forward with training BatchNorm, a residual added where the case has one), the backward of
/// that BatchNorm (dx channels-last when `nhwc`, the residual's gradient NCHW), the 3x3's
/// backward from it, and the first BatchNorm's backward of its data gradient: every output, the
/// channels-last ones downloaded as NCHW.
fn channels_last_chain(
    be: &dyn Backend,
    dt: DType,
    (n, c, h, w, c_out, stride, ghost, residual): NhwcCase,
    nhwc: bool,
) -> anyhow::Result<Outputs> {
    let s1 = Conv::new(n, 8, h, w, c, 1, 1, Padding::Sym(0), 1)?;
    let s2 = Conv::new(n, c, h, w, c_out, 3, stride, Padding::Sym(1), 1)?.nhwc_input(nhwc);
    let (lx, lw1, ly) = s1.sizes();
    let (_, lw2, lz) = s2.sizes();
    let mut rng = Rng::new(171 + ly as u64);
    let x = upload_as(be, &rng.vec_f32(lx, -1.0, 1.0), dt)?;
    let w1 = upload_as(be, &rng.vec_f32(lw1, -0.5, 0.5), dt)?;
    let w2 = upload_as(be, &rng.vec_f32(lw2, -0.2, 0.2), dt)?;
    let chan = |be: &dyn Backend, rng: &mut Rng, c, lo, hi| be.upload(&rng.vec_f32(c, lo, hi));
    let (gamma, beta) = (
        chan(be, &mut rng, c, 0.5, 1.5)?,
        chan(be, &mut rng, c, -0.5, 0.5)?,
    );
    let (mut rm, mut rv) = (
        chan(be, &mut rng, c, -1.0, 1.0)?,
        chan(be, &mut rng, c, 0.5, 2.0)?,
    );
    let (mut rm_own, mut rv_own) = (
        be.upload(&be.download::<f32>(&rm)?)?,
        be.upload(&be.download::<f32>(&rv)?)?,
    );
    let (mut sm, mut si) = (poisoned(be, ghost * c), poisoned(be, ghost * c));
    let (mut sm_own, mut si_own) = (poisoned(be, ghost * c), poisoned(be, ghost * c));
    let b = BatchNorm {
        ghost,
        y_nhwc: nhwc,
        ..BatchNorm::new(n, c, h * w, 1e-5, Act::Relu)
    };
    let (mut z, mut y, mut y_own) = (
        poisoned_as(be, ly, dt),
        poisoned_as(be, ly, dt),
        poisoned_as(be, ly, dt),
    );
    let bn = BnTrainParams {
        gamma: &gamma,
        beta: &beta,
        running: (&mut rm, &mut rv),
        saved: (&mut sm, &mut si),
        mask: None,
    };
    if !be.conv2d_fwd_bn_train(&x, &w1, &mut z, bn, None, &mut y, s1, b)? {
        // The CPU has no fused op: its two ops.
        anyhow::ensure!(
            be.device() == Device::Cpu,
            "the GPU did not fuse the 1x1's BatchNorm"
        );
        be.conv2d_fwd(&x, &w1, &mut z, s1)?;
        let (running, saved) = ((&mut rm, &mut rv), (&mut sm, &mut si));
        be.batchnorm_fwd_train(&z, &gamma, &beta, running, saved, None, &mut y, None, b)?;
    }
    let (own_running, own_saved) = ((&mut rm_own, &mut rv_own), (&mut sm_own, &mut si_own));
    be.batchnorm_fwd_train(
        &z,
        &gamma,
        &beta,
        own_running,
        own_saved,
        None,
        &mut y_own,
        None,
        b,
    )?;
    // The 3x3: forward, forward with training BatchNorm (NCHW output), backward.
    let (g2, b2) = (
        chan(be, &mut rng, c_out, 0.5, 1.5)?,
        chan(be, &mut rng, c_out, -0.5, 0.5)?,
    );
    let (mut rm2, mut rv2) = (
        chan(be, &mut rng, c_out, -1.0, 1.0)?,
        chan(be, &mut rng, c_out, 0.5, 2.0)?,
    );
    let (mut sm2, mut si2) = (poisoned(be, ghost * c_out), poisoned(be, ghost * c_out));
    let (mut y2, mut z3, mut y3) = (
        poisoned_as(be, lz, dt),
        poisoned_as(be, lz, dt),
        poisoned_as(be, lz, dt),
    );
    be.conv2d_fwd(&y, &w2, &mut y2, s2)?;
    let b2s = BatchNorm {
        ghost,
        ..BatchNorm::new(n, c_out, s2.oh * s2.ow, 1e-5, Act::Relu)
    };
    let bn2 = BnTrainParams {
        gamma: &g2,
        beta: &b2,
        running: (&mut rm2, &mut rv2),
        saved: (&mut sm2, &mut si2),
        mask: None,
    };
    let res = match residual {
        true => Some(upload_as(be, &rng.vec_f32(lz, -1.0, 1.0), dt)?),
        false => None,
    };
    if !be.conv2d_fwd_bn_train(&y, &w2, &mut z3, bn2, res.as_ref(), &mut y3, s2, b2s)? {
        be.conv2d_fwd(&y, &w2, &mut z3, s2)?;
        let (running, saved) = ((&mut rm2, &mut rv2), (&mut sm2, &mut si2));
        let res = res.as_ref();
        be.batchnorm_fwd_train(&z3, &g2, &b2, running, saved, res, &mut y3, None, b2s)?;
    }
    // The 3x3's dy from its BatchNorm's backward, channels-last when `nhwc` (dx_nhwc, dy_nhwc).
    let dy3 = upload_as(be, &rng.vec_f32(lz, -1.0, 1.0), dt)?;
    let mut dy2 = poisoned_as(be, lz, dt);
    let mut dres = residual.then(|| poisoned_as(be, lz, dt));
    let (mut dg2, mut db2) = (
        be.upload(&vec![0.25; c_out])?,
        be.upload(&vec![-0.5; c_out])?,
    );
    let b2_back = BatchNorm {
        dx_nhwc: nhwc,
        ..b2s
    };
    be.batchnorm_bwd(
        &z3,
        &y3,
        &dy3,
        (&g2, &b2),
        (&sm2, &si2),
        None,
        &mut dy2,
        dres.as_mut(),
        (&mut dg2, &mut db2),
        b2_back,
    )?;
    let mut dw2 = be.upload(&vec![0.5; lw2])?;
    let mut dx2 = poisoned_as(be, ly, dt);
    let s2_back = s2.nhwc_grad(nhwc);
    be.conv2d_bwd(&y, &dy2, &w2, &mut dw2, Some(&mut dx2), false, s2_back)?;
    // The passes one at a time (the weight gradient alone, the data gradient added).
    let mut dw2_alone = be.upload(&vec![0.5; lw2])?;
    be.conv2d_bwd_weight(&y, &dy2, &mut dw2_alone, s2_back)?;
    let mut dx2_added = upload_as(be, &vec![0.25; ly], dt)?;
    be.conv2d_bwd_data_add(&dy2, &w2, &mut dx2_added, s2_back)?;
    // BatchNorm's backward of the data gradient (reads x and dy: y's layout is only its shape's).
    let mut dx1 = poisoned_as(be, ly, dt);
    let (mut dg, mut db) = (be.upload(&vec![0.25; c])?, be.upload(&vec![-0.5; c])?);
    be.batchnorm_bwd(
        &z,
        &y,
        &dx2,
        (&gamma, &beta),
        (&sm, &si),
        None,
        &mut dx1,
        None,
        (&mut dg, &mut db),
        b,
    )?;
    let nchw = |be: &dyn Backend, y: &Buf, c: usize, hw: usize| -> anyhow::Result<Vec<f32>> {
        let v = download_f32(be, y)?;
        if !nhwc {
            return Ok(v);
        }
        Ok((0..v.len())
            .map(|i| {
                let (img, ch, p) = (i / (c * hw), i / hw % c, i % hw);
                v[(img * hw + p) * c + ch]
            })
            .collect())
    };
    let mut out: Outputs = vec![
        ("y".into(), nchw(be, &y, c, h * w)?),
        ("y by its own pass".into(), nchw(be, &y_own, c, h * w)?),
        (
            "conv dy from its batchnorm".into(),
            nchw(be, &dy2, c_out, s2.oh * s2.ow)?,
        ),
    ];
    for (name, b) in [
        ("z", &z),
        ("running mean", &rm),
        ("running var", &rv),
        ("saved mean", &sm),
        ("saved invstd", &si),
        ("running mean, own pass", &rm_own),
        ("saved invstd, own pass", &si_own),
        ("conv y", &y2),
        ("conv z", &z3),
        ("conv + batchnorm y", &y3),
        ("conv saved invstd", &si2),
        ("conv batchnorm dgamma", &dg2),
        ("conv batchnorm dbeta", &db2),
        ("conv dw", &dw2),
        ("conv dx", &dx2),
        ("conv dw alone", &dw2_alone),
        ("conv dx added", &dx2_added),
        ("batchnorm dx", &dx1),
        ("batchnorm dgamma", &dg),
        ("batchnorm dbeta", &db),
    ] {
        out.push((name.to_string(), download_f32(be, b)?));
    }
    if let Some(dres) = &dres {
        out.push(("conv batchnorm dres".into(), download_f32(be, dres)?));
    }
    Ok(out)
}
