//! Finite-difference checks of every layer's backward and of whole small networks end to end
//! (central differences on f32, relative error of the probed gradient vector).

use insclr::backend::{Act, Backend, Buf, Padding};
use insclr::nn::act::Activation;
use insclr::nn::batchnorm::BatchNorm2d;
use insclr::nn::conv::Conv2d;
use insclr::nn::head::{Head, HeadKind};
use insclr::nn::linear::Linear;
use insclr::nn::pool::{GemPool, MaxPool2d};
use insclr::nn::resnet::ResNet;
use insclr::nn::{zero_grads, Arch, Module, Param, ParamKind, RetrievalNet};
use insclr::rng::Rng;

fn host(b: &Buf) -> &[f32] {
    b.host().expect("CPU tests hold host buffers")
}

fn host_mut(b: &mut Buf) -> &mut [f32] {
    b.host_mut().expect("CPU tests hold host buffers")
}

/// A CPU buffer holding `v`.
fn hb(v: Vec<f32>) -> Buf {
    insclr::backend::cpu().upload(&v).unwrap()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// Up to `k` indices of a length-`len` variable (all of them when it is small).
fn probes(rng: &mut Rng, len: usize, k: usize) -> Vec<usize> {
    if len <= k {
        (0..len).collect()
    } else {
        rng.sample(&(0..len).collect::<Vec<_>>(), k)
    }
}

/// Compares `analytic[i]` with `(L(v_i + h) - L(v_i - h)) / 2h` over `idx`, where
/// `loss(i, d)` is the loss with element `i` of the variable moved by `d`.
fn check(
    what: &str,
    analytic: &[f32],
    idx: &[usize],
    h: f32,
    tol: f64,
    loss: impl FnMut(usize, f32) -> f64,
) {
    let (rel, worst) = rel_error(what, analytic, idx, h, loss);
    assert!(
        rel < tol,
        "{what}: relative error {rel:.3e} >= {tol:e}; worst index {} fd {} analytic {}",
        worst.0,
        worst.1,
        worst.2
    );
}

/// The relative error of the probed gradient vector, and the worst probe `(i, fd, analytic)`.
fn rel_error(
    what: &str,
    analytic: &[f32],
    idx: &[usize],
    h: f32,
    mut loss: impl FnMut(usize, f32) -> f64,
) -> (f64, (usize, f64, f64)) {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    let mut worst = (0usize, 0.0f64, 0.0f64);
    for &i in idx {
        let fd = (loss(i, h) - loss(i, -h)) / (2.0 * h as f64);
        let an = analytic[i] as f64;
        num += (fd - an).powi(2);
        den += an * an;
        if (fd - an).abs() > (worst.2 - worst.1).abs() {
            worst = (i, fd, an);
        }
    }
    assert!(
        den > 0.0,
        "{what}: the analytic gradient is zero on every probe"
    );
    ((num / den).sqrt(), worst)
}

/// Moves element `i` of a parameter by `d`, runs `f`, and restores it.
fn nudge<R>(p: &mut Param, i: usize, d: f32, f: impl FnOnce() -> R) -> R {
    host_mut(&mut p.value)[i] += d;
    let r = f();
    host_mut(&mut p.value)[i] -= d;
    r
}

fn grad(p: &Param) -> Vec<f32> {
    host(p.grad.as_ref().expect("trainable")).to_vec()
}

#[test]
fn conv2d_backward_matches_finite_differences() {
    let be = insclr::backend::cpu();
    let mut rng = Rng::new(11);
    // (c_in, c_out, k, stride, padding, groups, h, w)
    let cases = [
        (3, 4, 3, 1, Padding::Sym(1), 1, 7, 6),
        (3, 4, 7, 2, Padding::Sym(3), 1, 11, 9),
        (4, 6, 1, 2, Padding::Sym(0), 1, 6, 7),
        (4, 4, 3, 2, Padding::Same, 2, 8, 7),
        (6, 6, 5, 2, Padding::Same, 6, 9, 10),
        (5, 5, 3, 1, Padding::Same, 5, 6, 6),
        (6, 3, 1, 1, Padding::Same, 1, 5, 4),
    ];
    for (ci, co, k, st, pad, g, h, w) in cases {
        let what = format!("conv {ci}->{co} k{k} s{st} {pad:?} g{g}");
        let mut conv = Conv2d::new(be, &mut rng, "c", ci, co, k, st, pad, g).unwrap();
        let n = 2;
        let x = rng.vec_f32(n * ci * h * w, -1.0, 1.0);
        let (oh, ow) = conv.forward(be, &hb(x.clone()), n, h, w).unwrap();
        let r = rng.vec_f32(n * co * oh * ow, -1.0, 1.0);
        conv.backward(be, &hb(x.clone()), &hb(r.clone()), true)
            .unwrap();
        let (dx, dw) = (host(&conv.dx).to_vec(), grad(&conv.weight));
        let idx = probes(&mut rng, x.len(), 60);
        check(&format!("{what} dx"), &dx, &idx, 1e-2, 1e-3, |i, d| {
            let mut xp = x.clone();
            xp[i] += d;
            conv.forward(be, &hb(xp), n, h, w).unwrap();
            dot(&r, host(&conv.y))
        });
        let idx = probes(&mut rng, dw.len(), 60);
        let xb = hb(x.clone());
        check(&format!("{what} dW"), &dw, &idx, 1e-2, 1e-3, |i, d| {
            host_mut(&mut conv.weight.value)[i] += d;
            conv.forward(be, &xb, n, h, w).unwrap();
            host_mut(&mut conv.weight.value)[i] -= d;
            dot(&r, host(&conv.y))
        });
    }
}

#[test]
fn batchnorm_train_backward_matches_finite_differences() {
    let be = insclr::backend::cpu();
    let mut rng = Rng::new(12);
    for (act, ghost) in [
        (Act::Identity, 1),
        (Act::Relu, 1),
        (Act::Relu6, 1),
        (Act::Identity, 2),
        (Act::Relu6, 2),
    ] {
        let what = format!("batchnorm {act:?} ghost {ghost}");
        let (n, c, hw) = (4, 3, 5);
        let mut bn = BatchNorm2d::new(be, "bn", c, 1e-3, act).unwrap();
        bn.ghost = ghost;
        // gamma 4 / beta 2 spread the outputs across both ReLU6 kinks.
        host_mut(&mut bn.weight.value).copy_from_slice(&[4.0, 3.0, 2.5]);
        host_mut(&mut bn.bias.value).copy_from_slice(&[2.0, 1.0, 3.0]);
        let x = rng.vec_f32(n * c * hw, -2.0, 3.0);
        let r = rng.vec_f32(n * c * hw, -1.0, 1.0);
        let xb = hb(x.clone());
        bn.forward(be, &xb, n, hw, true).unwrap();
        bn.backward(be, &xb, &hb(r.clone())).unwrap();
        let (dx, dg, db) = (host(&bn.dx).to_vec(), grad(&bn.weight), grad(&bn.bias));
        let all: Vec<usize> = (0..x.len()).collect();
        check(&format!("{what} dx"), &dx, &all, 1e-3, 1e-2, |i, d| {
            let mut xp = x.clone();
            xp[i] += d;
            bn.forward(be, &hb(xp), n, hw, true).unwrap();
            dot(&r, host(&bn.y))
        });
        check(
            &format!("{what} dgamma"),
            &dg,
            &[0, 1, 2],
            1e-3,
            1e-2,
            |i, d| {
                host_mut(&mut bn.weight.value)[i] += d;
                bn.forward(be, &xb, n, hw, true).unwrap();
                host_mut(&mut bn.weight.value)[i] -= d;
                dot(&r, host(&bn.y))
            },
        );
        check(
            &format!("{what} dbeta"),
            &db,
            &[0, 1, 2],
            1e-3,
            1e-2,
            |i, d| {
                host_mut(&mut bn.bias.value)[i] += d;
                bn.forward(be, &xb, n, hw, true).unwrap();
                host_mut(&mut bn.bias.value)[i] -= d;
                dot(&r, host(&bn.y))
            },
        );
    }
}

/// Frozen statistics (`MODEL.BACKBONE.FREEZE_BN`): a training forward equals the eval-mode
/// forward, leaves the running statistics alone, and its backward (x, gamma, beta and the
/// residual) matches finite differences.
#[test]
fn frozen_batchnorm_is_eval_mode_and_its_backward_matches_finite_differences() {
    let be = insclr::backend::cpu();
    let mut rng = Rng::new(41);
    for (act, with_res) in [
        (Act::Identity, false),
        (Act::Relu, false),
        (Act::Relu6, false),
        (Act::Relu, true),
        (Act::Identity, true),
    ] {
        let what = format!("frozen batchnorm {act:?} residual {with_res}");
        let (n, c, hw) = (3, 3, 4);
        let mut bn = BatchNorm2d::new(be, "bn", c, 1e-3, act).unwrap();
        bn.frozen = true;
        host_mut(&mut bn.weight.value).copy_from_slice(&[4.0, 3.0, 2.5]);
        host_mut(&mut bn.bias.value).copy_from_slice(&[2.0, 1.0, 3.0]);
        host_mut(&mut bn.running_mean.value).copy_from_slice(&[0.5, -0.3, 0.1]);
        host_mut(&mut bn.running_var.value).copy_from_slice(&[2.0, 0.7, 1.3]);
        let stats =
            |bn: &BatchNorm2d| [host(&bn.running_mean.value), host(&bn.running_var.value)].concat();
        let before = stats(&bn);
        let x = rng.vec_f32(n * c * hw, -2.0, 3.0);
        let res = rng.vec_f32(n * c * hw, -1.0, 1.0);
        let r = rng.vec_f32(n * c * hw, -1.0, 1.0);
        let (xb, resb) = (hb(x.clone()), hb(res.clone()));
        let rb = with_res.then_some(&resb);
        bn.forward_add(be, &xb, rb, n, hw, false).unwrap();
        let eval = host(&bn.y).to_vec();
        bn.forward_add(be, &xb, rb, n, hw, true).unwrap();
        assert_eq!(
            host(&bn.y),
            &eval[..],
            "{what}: train forward differs from eval"
        );
        assert_eq!(stats(&bn), before, "{what}: running statistics moved");
        bn.backward(be, &xb, &hb(r.clone())).unwrap();
        let (dx, dg, db) = (host(&bn.dx).to_vec(), grad(&bn.weight), grad(&bn.bias));
        let all: Vec<usize> = (0..x.len()).collect();
        let run = |bn: &mut BatchNorm2d, x: &[f32], res: &[f32]| {
            let resb = hb(res.to_vec());
            bn.forward_add(be, &hb(x.to_vec()), with_res.then_some(&resb), n, hw, true)
                .unwrap();
            dot(&r, host(&bn.y))
        };
        check(&format!("{what} dx"), &dx, &all, 1e-3, 1e-2, |i, d| {
            let mut xp = x.clone();
            xp[i] += d;
            run(&mut bn, &xp, &res)
        });
        if with_res {
            // The identity activation's residual gradient is dy itself (not written).
            let dres = if act == Act::Identity {
                r.clone()
            } else {
                host(&bn.dres).to_vec()
            };
            check(&format!("{what} dres"), &dres, &all, 1e-3, 1e-2, |i, d| {
                let mut rp = res.clone();
                rp[i] += d;
                run(&mut bn, &x, &rp)
            });
        }
        check(
            &format!("{what} dgamma"),
            &dg,
            &[0, 1, 2],
            1e-3,
            1e-2,
            |i, d| {
                host_mut(&mut bn.weight.value)[i] += d;
                let l = run(&mut bn, &x, &res);
                host_mut(&mut bn.weight.value)[i] -= d;
                l
            },
        );
        check(
            &format!("{what} dbeta"),
            &db,
            &[0, 1, 2],
            1e-3,
            1e-2,
            |i, d| {
                host_mut(&mut bn.bias.value)[i] += d;
                let l = run(&mut bn, &x, &res);
                host_mut(&mut bn.bias.value)[i] -= d;
                l
            },
        );
        assert_eq!(stats(&bn), before, "{what}: running statistics moved");
    }
}

#[test]
fn batchnorm_backward_refuses_an_eval_forward() {
    let be = insclr::backend::cpu();
    let mut bn = BatchNorm2d::new(be, "bn", 2, 1e-5, Act::Relu).unwrap();
    let x = hb(vec![0.5; 8]);
    bn.forward(be, &x, 2, 2, false).unwrap();
    let err = bn.backward(be, &x, &hb(vec![1.0; 8])).unwrap_err();
    assert!(format!("{err:#}").contains("eval-mode"), "{err:#}");
}

#[test]
fn max_pool_and_activations_backward_match_finite_differences() {
    let be = insclr::backend::cpu();
    let mut rng = Rng::new(13);
    // Distinct values 0.01 apart: a 1e-3 step never changes a window's argmax.
    let (n, c, h, w) = (2, 2, 7, 6);
    let mut x: Vec<f32> = (0..n * c * h * w).map(|v| v as f32 * 0.01).collect();
    rng.shuffle(&mut x);
    let mut mp = MaxPool2d::new(3, 2, 1);
    let (oh, ow) = mp.forward(be, &hb(x.clone()), (n, c, h, w)).unwrap();
    let r = rng.vec_f32(n * c * oh * ow, -1.0, 1.0);
    mp.backward(be, &hb(r.clone())).unwrap();
    let dx = host(&mp.dx).to_vec();
    let all: Vec<usize> = (0..x.len()).collect();
    check("max pool dx", &dx, &all, 1e-3, 1e-3, |i, d| {
        let mut xp = x.clone();
        xp[i] += d;
        mp.forward(be, &hb(xp), (n, c, h, w)).unwrap();
        dot(&r, host(&mp.y))
    });

    for act in [Act::Relu, Act::Relu6] {
        // Values at least 0.05 away from the kinks at 0 and 6.
        let x: Vec<f32> = rng
            .vec_f32(64, -3.0, 9.0)
            .into_iter()
            .map(|v| {
                if v.abs() < 0.05 || (v - 6.0).abs() < 0.05 {
                    v + 0.2
                } else {
                    v
                }
            })
            .collect();
        let r = rng.vec_f32(64, -1.0, 1.0);
        let mut a = Activation::new(act);
        a.forward(be, &hb(x.clone())).unwrap();
        a.backward(be, &hb(r.clone())).unwrap();
        let dx = host(&a.dx).to_vec();
        let all: Vec<usize> = (0..64).collect();
        check(&format!("{act:?} dx"), &dx, &all, 1e-3, 1e-3, |i, d| {
            let mut xp = x.clone();
            xp[i] += d;
            a.forward(be, &hb(xp)).unwrap();
            dot(&r, host(&a.y))
        });
    }
}

#[test]
fn linear_gem_and_heads_backward_match_finite_differences() {
    let be = insclr::backend::cpu();
    let mut rng = Rng::new(14);
    let (n, d_in, d_out) = (3, 7, 5);
    for bias in [false, true] {
        let mut fc = Linear::new(be, &mut rng, "fc", d_in, d_out, bias).unwrap();
        let x = rng.vec_f32(n * d_in, -1.0, 1.0);
        let r = rng.vec_f32(n * d_out, -1.0, 1.0);
        let xb = hb(x.clone());
        fc.forward(be, &xb, n).unwrap();
        fc.backward(be, &xb, &hb(r.clone())).unwrap();
        let (dx, dw) = (host(&fc.dx).to_vec(), grad(&fc.weight));
        let all: Vec<usize> = (0..x.len()).collect();
        check("linear dx", &dx, &all, 1e-2, 1e-3, |i, d| {
            let mut xp = x.clone();
            xp[i] += d;
            fc.forward(be, &hb(xp), n).unwrap();
            dot(&r, host(&fc.y))
        });
        let all: Vec<usize> = (0..dw.len()).collect();
        check("linear dW", &dw, &all, 1e-2, 1e-3, |i, d| {
            host_mut(&mut fc.weight.value)[i] += d;
            fc.forward(be, &xb, n).unwrap();
            host_mut(&mut fc.weight.value)[i] -= d;
            dot(&r, host(&fc.y))
        });
        if let Some(b) = fc.bias.as_ref() {
            let db = grad(b);
            let all: Vec<usize> = (0..d_out).collect();
            check("linear db", &db, &all, 1e-2, 1e-3, |i, d| {
                let b = fc.bias.as_mut().unwrap();
                host_mut(&mut b.value)[i] += d;
                fc.forward(be, &xb, n).unwrap();
                let b = fc.bias.as_mut().unwrap();
                host_mut(&mut b.value)[i] -= d;
                dot(&r, host(&fc.y))
            });
        }
    }

    // GeM p = 3 over positive maps.
    let (c, hh, ww) = (4, 3, 5);
    let x = rng.vec_f32(n * c * hh * ww, 0.1, 2.0);
    let r = rng.vec_f32(n * c, -1.0, 1.0);
    let mut gem = GemPool::gem();
    gem.forward(be, &hb(x.clone()), (n, c, hh, ww)).unwrap();
    gem.backward(be, &hb(x.clone()), &hb(r.clone())).unwrap();
    let dx = host(&gem.dx).to_vec();
    let all: Vec<usize> = (0..x.len()).collect();
    check("GeM dx", &dx, &all, 1e-3, 1e-2, |i, d| {
        let mut xp = x.clone();
        xp[i] += d;
        gem.forward(be, &hb(xp), (n, c, hh, ww)).unwrap();
        dot(&r, host(&gem.y))
    });

    for kind in [
        HeadKind::NormLinearNorm,
        HeadKind::LinearNorm,
        HeadKind::L2Only,
    ] {
        let mut head = Head::new(be, &mut rng, kind, d_in, d_out).unwrap();
        let x = rng.vec_f32(n * d_in, 0.0, 1.0);
        let r = rng.vec_f32(n * head.out_dim(), -1.0, 1.0);
        let xb = hb(x.clone());
        head.forward(be, &xb, n).unwrap();
        head.backward(be, &xb, &hb(r.clone())).unwrap();
        let dx = head.dx().clone_host();
        let all: Vec<usize> = (0..x.len()).collect();
        check(&format!("{kind:?} dx"), &dx, &all, 1e-3, 1e-2, |i, d| {
            let mut xp = x.clone();
            xp[i] += d;
            head.forward(be, &hb(xp), n).unwrap();
            dot(&r, host(head.y()))
        });
        let Some(dw) = head.fc.as_ref().map(|fc| grad(&fc.weight)) else {
            continue;
        };
        let all: Vec<usize> = (0..dw.len()).collect();
        check(&format!("{kind:?} dW"), &dw, &all, 1e-3, 1e-2, |i, d| {
            let fc = head.fc.as_mut().unwrap();
            host_mut(&mut fc.weight.value)[i] += d;
            head.forward(be, &xb, n).unwrap();
            let fc = head.fc.as_mut().unwrap();
            host_mut(&mut fc.weight.value)[i] -= d;
            dot(&r, host(head.y()))
        });
    }
}

trait CloneHost {
    fn clone_host(&self) -> Vec<f32>;
}

impl CloneHost for Buf {
    fn clone_host(&self) -> Vec<f32> {
        host(self).to_vec()
    }
}

/// A contrastive-style loss on unit descriptors, smooth everywhere: pairs (0,1), (2,3), ...
/// are positives (pulled together), all other pairs are pushed apart quadratically.
/// Returns the loss and its gradient.
fn contrastive(desc: &[f32], n: usize, d: usize) -> (f64, Vec<f32>) {
    let mut loss = 0.0f64;
    let mut g = vec![0.0f64; n * d];
    for i in 0..n {
        for j in i + 1..n {
            let (a, b) = (&desc[i * d..(i + 1) * d], &desc[j * d..(j + 1) * d]);
            let s = dot(a, b);
            let coef = if i / 2 == j / 2 {
                loss += 1.0 - s;
                -1.0
            } else {
                loss += s * s;
                2.0 * s
            };
            for k in 0..d {
                g[i * d + k] += coef * b[k] as f64;
                g[j * d + k] += coef * a[k] as f64;
            }
        }
    }
    (loss, g.into_iter().map(|v| v as f32).collect())
}

/// Runs the whole network on `x`, returns the loss, and (when `backward`) its gradients.
fn loss_of(
    net: &mut RetrievalNet,
    be: &dyn Backend,
    x: &[f32],
    nhw: (usize, usize, usize),
    backward: bool,
) -> f64 {
    let (n, h, w) = nhw;
    let d = net.head.out_dim();
    let desc = net.forward_train(be, x, n, h, w).unwrap().clone_host();
    let (loss, g) = contrastive(&desc, n, d);
    if backward {
        zero_grads(be, net).unwrap();
        net.backward(be, &hb(g)).unwrap();
    }
    loss
}

/// Probes `per` elements of each named tensor of the whole network. Every BatchNorm beta is
/// set to 1 first, so that most unit-variance BatchNorm outputs sit away from the ReLU kink at
/// 0 (the masks themselves are checked layer by layer above). What remains (kinks crossed by
/// a step, f32 rounding through ~50 layers, divided by 2h) leaves measured errors of 0.2-6%
/// per tensor; a lost gradient path or a wrong index gives errors of order 1.
fn check_network(
    net: &mut RetrievalNet,
    nhw: (usize, usize, usize),
    names: &[&str],
    per: usize,
    h: f32,
    tol: f64,
    seed: u64,
) {
    let be = insclr::backend::cpu();
    let mut rng = Rng::new(seed);
    for p in net.params_mut() {
        if p.kind == ParamKind::BnBias {
            host_mut(&mut p.value).fill(1.0);
        }
    }
    let (n, hh, ww) = nhw;
    let x = rng.vec_f32(n * 3 * hh * ww, -2.0, 2.0);
    loss_of(net, be, &x, nhw, true);
    for name in names {
        let pos = net
            .params()
            .iter()
            .position(|p| p.name == *name)
            .unwrap_or_else(|| panic!("no tensor {name}"));
        let an = grad(net.params()[pos]);
        let idx = probes(&mut rng, an.len(), per);
        check(name, &an, &idx, h, tol, |i, d| {
            let p = net.params_mut().swap_remove(pos) as *mut Param;
            // SAFETY: `p` points into `net`, which outlives this closure call; the forward
            // below reads the parameter only after `nudge` has written it.
            nudge(unsafe { &mut *p }, i, d, || {
                loss_of(net, be, &x, nhw, false)
            })
        });
    }
}

#[test]
fn tiny_resnet_end_to_end_matches_finite_differences() {
    let be = insclr::backend::cpu();
    let mut rng = Rng::new(15);
    let backbone = ResNet::custom(be, &mut rng, [1, 2, 1, 1], 4, false).unwrap();
    let mut net = RetrievalNet::new(
        be,
        &mut rng,
        Box::new(backbone),
        HeadKind::NormLinearNorm,
        16,
    )
    .unwrap();
    let names = [
        "conv1.weight",
        "bn1.weight",
        "layer1.0.conv2.weight",
        "layer1.0.downsample.0.weight",
        "layer2.1.bn1.bias",
        "layer3.0.conv1.weight",
        "layer4.0.bn3.weight",
        "layer4.0.downsample.1.bias",
        "head.fc.weight",
    ];
    check_network(&mut net, (4, 40, 36), &names, 8, 1e-3, 1e-1, 16);
}

/// A whole network with frozen BatchNorm statistics (ImageNet-like running statistics kept
/// through training) matches finite differences end to end.
#[test]
fn tiny_resnet_with_frozen_batchnorm_matches_finite_differences() {
    let be = insclr::backend::cpu();
    let mut rng = Rng::new(25);
    let backbone = ResNet::custom(be, &mut rng, [1, 1, 1, 1], 4, false).unwrap();
    let mut net =
        RetrievalNet::new(be, &mut rng, Box::new(backbone), HeadKind::LinearNorm, 8).unwrap();
    net.set_bn_frozen(true);
    for p in net.params_mut() {
        if p.name.ends_with("running_var") {
            let v = rng.vec_f32(p.numel(), 0.5, 2.0);
            host_mut(&mut p.value).copy_from_slice(&v);
        }
    }
    let names = [
        "conv1.weight",
        "bn1.weight",
        "layer1.0.bn2.bias",
        "layer2.0.downsample.0.weight",
        "layer3.0.bn1.weight",
        "layer4.0.conv2.weight",
        "head.fc.weight",
    ];
    check_network(&mut net, (4, 36, 32), &names, 8, 1e-3, 1e-1, 26);
}

/// Without a head (`MODEL.HEAD.ENABLE = false`) the gradient reaches the backbone through
/// GeM + L2 alone, and matches finite differences end to end.
#[test]
fn tiny_resnet_without_a_head_matches_finite_differences() {
    let be = insclr::backend::cpu();
    let mut rng = Rng::new(35);
    let backbone = ResNet::custom(be, &mut rng, [1, 1, 1, 1], 4, false).unwrap();
    let mut net =
        RetrievalNet::new(be, &mut rng, Box::new(backbone), HeadKind::L2Only, 999).unwrap();
    assert_eq!(net.head.out_dim(), 128);
    assert!(net.head.params().is_empty());
    let names = [
        "conv1.weight",
        "bn1.weight",
        "layer2.0.conv2.weight",
        "layer4.0.conv3.weight",
        "layer4.0.bn3.bias",
    ];
    check_network(&mut net, (4, 36, 32), &names, 8, 1e-3, 1e-1, 36);
}

#[test]
fn efficientnet_lite0_end_to_end_matches_finite_differences() {
    let be = insclr::backend::cpu();
    let mut rng = Rng::new(17);
    let backbone = Arch::EfficientNetLite0.build(be, &mut rng, false).unwrap();
    let mut net = RetrievalNet::new(be, &mut rng, backbone, HeadKind::LinearNorm, 8).unwrap();
    let names = [
        "_conv_stem.weight",
        "_blocks.0._depthwise_conv.weight",
        "_blocks.2._bn1.weight",
        "_blocks.5._expand_conv.weight",
        "_blocks.15._project_conv.weight",
        "_conv_head.weight",
        "_bn1.bias",
        "head.fc.bias",
    ];
    check_network(&mut net, (4, 40, 40), &names, 8, 1e-3, 1e-1, 18);
}

#[test]
fn a_training_step_reuses_its_buffers_and_repeats_exactly() {
    let be = insclr::backend::cpu();
    let mut rng = Rng::new(19);
    let backbone = ResNet::custom(be, &mut rng, [1, 1, 1, 1], 4, false).unwrap();
    let mut net = RetrievalNet::new(
        be,
        &mut rng,
        Box::new(backbone),
        HeadKind::NormLinearNorm,
        8,
    )
    .unwrap();
    net.set_bn_ghost_groups(2);
    let (n, h, w) = (4, 32, 32);
    let x = rng.vec_f32(n * 3 * h * w, -2.0, 2.0);
    loss_of(&mut net, be, &x, (n, h, w), true);
    let ptr_out = host(net.head.y()).as_ptr();
    let ptr_map = host(net.backbone.output()).as_ptr();
    let g1 = grad(net.params()[0]);
    loss_of(&mut net, be, &x, (n, h, w), true);
    assert_eq!(
        host(net.head.y()).as_ptr(),
        ptr_out,
        "descriptor buffer was reallocated"
    );
    assert_eq!(
        host(net.backbone.output()).as_ptr(),
        ptr_map,
        "feature map was reallocated"
    );
    // zero_grads + backward: the same gradient again, not twice it.
    assert_eq!(grad(net.params()[0]), g1);
    assert!(g1.iter().any(|&v| v != 0.0));
    // A batch that does not split into the ghost groups is an error, not a panic.
    let bad = rng.vec_f32(3 * 3 * h * w, -1.0, 1.0);
    assert!(net.forward_train(be, &bad, 3, h, w).is_err());
}
