//! The verify family (kernels/verify.cu) against its CPU twin, on the GPU or the emulated GPU:
//! the same mutual matches, inliers and model bits for every pair, at the edge sizes (no
//! features, one, fewer than the model needs, all at one point, the most an image may keep),
//! and a planted transform found with its inliers.

mod common;

use common::kernel_device;
use insclr::backend::{Backend, Verify, VerifyFeatures, VerifyOut, VERIFY_MAX_FEATURES};
use insclr::eval::local::{Candidate, LocalFeatures};
use insclr::rng::Rng;

/// Per pair: (matches, inliers, model bits).
type Found = Vec<(i32, i32, [u32; 4])>;

fn verify_on(be: &dyn Backend, l: &LocalFeatures, pairs: &[[u32; 2]], s: Verify) -> Found {
    let desc = be.upload(&l.desc).unwrap();
    let scale = be.upload(&l.desc_scale).unwrap();
    let xy: Vec<f32> = l.xy.iter().flatten().copied().collect();
    let xy = be.upload(&xy).unwrap();
    let mut matches = be.upload(&vec![-7i32; pairs.len()]).unwrap();
    let mut inliers = be.upload(&vec![-7i32; pairs.len()]).unwrap();
    let mut model = be.upload(&vec![f32::NAN; 4 * pairs.len()]).unwrap();
    be.verify(
        &VerifyFeatures {
            desc: &desc,
            desc_scale: &scale,
            xy: &xy,
            offsets: &l.offsets,
        },
        pairs,
        &mut VerifyOut {
            matches: &mut matches,
            inliers: &mut inliers,
            model: &mut model,
        },
        s,
    )
    .unwrap();
    let (m, i, md): (Vec<i32>, Vec<i32>, Vec<f32>) = (
        be.download(&matches).unwrap(),
        be.download(&inliers).unwrap(),
        be.download(&model).unwrap(),
    );
    (0..pairs.len())
        .map(|p| {
            let b = |k: usize| md[4 * p + k].to_bits();
            (m[p], i[p], [b(0), b(1), b(2), b(3)])
        })
        .collect()
}

fn feature(xy: [f32; 2], desc: Vec<f32>) -> Candidate {
    Candidate {
        strength: 1.0,
        xy,
        scale: 1.0,
        desc,
    }
}

/// `n` random features in a 640 x 480 image, and their copies under `model` (a, b, tx, ty)
/// with descriptor noise `noise` and position noise of a pixel, plus `outliers` unrelated
/// features in the copy.
fn planted(
    rng: &mut Rng,
    n: usize,
    dim: usize,
    model: [f32; 4],
    noise: f32,
    outliers: usize,
) -> (Vec<Candidate>, Vec<Candidate>) {
    let [a, b, tx, ty] = model;
    let mut left = Vec::new();
    let mut right = Vec::new();
    for _ in 0..n {
        let p = [rng.uniform_f32(0.0, 640.0), rng.uniform_f32(0.0, 480.0)];
        let d = rng.vec_f32(dim, -1.0, 1.0);
        let q = [
            a * p[0] - b * p[1] + tx + rng.uniform_f32(-1.0, 1.0),
            b * p[0] + a * p[1] + ty + rng.uniform_f32(-1.0, 1.0),
        ];
        let dq = d.iter().map(|v| v + noise * rng.normal()).collect();
        left.push(feature(p, d));
        right.push(feature(q, dq));
    }
    for _ in 0..outliers {
        let q = [rng.uniform_f32(0.0, 640.0), rng.uniform_f32(0.0, 480.0)];
        right.push(feature(q, rng.vec_f32(dim, -1.0, 1.0)));
    }
    (left, right)
}

fn settings(dim: usize) -> Verify {
    Verify {
        dim,
        min_similarity: 0.3,
        ratio: 0.95,
        inlier_px: 6.0,
        hypotheses: 300,
        seed: 11,
        ..Verify::default()
    }
}

/// A collection with every edge case as images, and pairs over all of them.
fn edge_collection(rng: &mut Rng, dim: usize) -> LocalFeatures {
    let mut l = LocalFeatures::new(dim);
    // 0: no features. 1: one. 2: two at one point. 3: blank (all descriptors equal).
    l.push_image([480, 640], &[]);
    l.push_image(
        [480, 640],
        &[feature([3.0, 4.0], rng.vec_f32(dim, -1.0, 1.0))],
    );
    let d = rng.vec_f32(dim, -1.0, 1.0);
    l.push_image(
        [480, 640],
        &[
            feature([10.0, 10.0], d.clone()),
            feature([10.0, 10.0], rng.vec_f32(dim, -1.0, 1.0)),
        ],
    );
    let flat = vec![0.5f32; dim];
    let blank: Vec<Candidate> = (0..20)
        .map(|k| feature([k as f32 * 30.0, 100.0], flat.clone()))
        .collect();
    l.push_image([480, 640], &blank);
    // 4, 5: a planted pair at the most features an image may keep; 6, 7: a small one.
    let rot = [0.8f32, 0.45, 37.0, -12.0];
    let (a, b) = planted(rng, 200, dim, rot, 0.3, VERIFY_MAX_FEATURES - 200);
    let a: Vec<Candidate> = a
        .into_iter()
        .chain((0..VERIFY_MAX_FEATURES - 200).map(|_| {
            feature(
                [rng.uniform_f32(0.0, 640.0), rng.uniform_f32(0.0, 480.0)],
                rng.vec_f32(dim, -1.0, 1.0),
            )
        }))
        .collect();
    l.push_image([480, 640], &a);
    l.push_image([480, 640], &b);
    let (a, b) = planted(rng, 5, dim, [1.0, 0.0, 4.0, 4.0], 0.1, 3);
    l.push_image([480, 640], &a);
    l.push_image([480, 640], &b);
    // 8: the copy of 2's first point, elsewhere.
    l.push_image([480, 640], &[feature([300.0, 200.0], d)]);
    // 9, 10: two halves of one image moved by two shifts, as many matches each: hypotheses of
    // either tie (552 ordered pairs: 2 or 3 a thread), and the first decides which model wins.
    let (a1, b1) = planted(rng, 12, dim, [1.0, 0.0, 50.0, 0.0], 0.05, 0);
    let (a2, b2) = planted(rng, 12, dim, [1.0, 0.0, -60.0, 30.0], 0.05, 0);
    l.push_image([480, 640], &[a1, a2].concat());
    l.push_image([480, 640], &[b1, b2].concat());
    l
}

#[test]
fn kernel_verify_matches_cpu() {
    let dev = kernel_device("kernel_verify_matches_cpu");
    let mut rng = Rng::new(29);
    for &dim in &[4usize, 12, 132] {
        let l = edge_collection(&mut rng, dim);
        let n = l.images() as u32;
        let big = |i: u32| i == 4 || i == 5;
        let settings = [
            settings(dim),
            Verify {
                // Small pairs' 5 x 4 ordered pairs enumerated, the large ones' drawn.
                hypotheses: 5000,
                ratio: 1.0,
                min_similarity: -1.0,
                ..settings(dim)
            },
            Verify {
                hypotheses: 0,
                ..settings(dim)
            },
        ];
        for (si, s) in settings.into_iter().enumerate() {
            // Every pair of the small images; the two largest (64k similarities a pair, slow
            // on the emulator) with each other, themselves and the empty and blank images,
            // once.
            let with_big = dim == 132 && si < 2;
            let pairs: Vec<[u32; 2]> = (0..n)
                .flat_map(|a| (0..n).map(move |b| [a, b]))
                .filter(|&[a, b]| {
                    !(big(a) || big(b))
                        || (with_big && [a, b].iter().all(|&i| big(i) || i == 0 || i == 3))
                })
                .collect();
            let want = verify_on(insclr::backend::cpu(), &l, &pairs, s);
            let got = verify_on(&dev, &l, &pairs, s);
            for (p, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, w, "dim {dim}, pair {:?}, {s:?}", pairs[p]);
            }
            let at = |a: u32, b: u32| want[pairs.iter().position(|&p| p == [a, b]).unwrap()];
            for other in (0..n).filter(|&o| !big(o)) {
                assert_eq!(at(0, other), (0, 0, [0; 4]), "no features: nothing");
                assert_eq!(at(1, other).1, 0, "one feature is below the model's two");
                assert_eq!(at(2, other).1, 0, "two features at one point fix no model");
                if other != 3 {
                    // Its identical features tie as anyone's best: no ratio test passes, and
                    // at most its first feature is some feature's mutual best.
                    assert_eq!(at(other, 3).0, 0, "matches into a blank image");
                    assert!(at(3, other).0 <= 1, "a blank image's matches");
                }
                assert_eq!(at(3, other).1, 0, "a blank image verifies nothing");
            }
            if s.hypotheses > 0 && dim >= 12 {
                assert!(at(9, 10).1 >= 8, "two equal clusters: {:?}", at(9, 10));
            }
            if with_big {
                assert!(at(4, 5).1 >= 150, "planted pair: {:?}", at(4, 5));
                assert!(at(6, 7).1 >= 4, "small planted pair: {:?}", at(6, 7));
                assert_eq!(
                    at(4, 4).1 as usize,
                    VERIFY_MAX_FEATURES,
                    "an image with itself"
                );
            }
            if s.hypotheses == 0 {
                assert!(want.iter().all(|r| r.1 == 0));
            }
        }
    }
}

#[test]
fn a_planted_transform_is_recovered_and_unrelated_images_are_not() {
    let mut rng = Rng::new(30);
    let dim = 128;
    // Rotation by 30 degrees, scale 0.7, a shift.
    let (s, c) = (0.7f32 * 0.5, 0.7f32 * 0.866_025_4);
    let truth = [c, s, 120.0, -40.0];
    let (a, b) = planted(&mut rng, 60, dim, truth, 0.4, 40);
    let (other, _) = planted(&mut rng, 100, dim, truth, 0.0, 0);
    let mut l = LocalFeatures::new(dim);
    l.push_image([480, 640], &a);
    l.push_image([480, 640], &b);
    l.push_image([480, 640], &other);
    let found = verify_on(insclr::backend::cpu(), &l, &[[0, 1], [0, 2]], settings(dim));
    let (_, inliers, bits) = found[0];
    let model = bits.map(f32::from_bits);
    assert!(inliers >= 50, "{found:?}");
    for (k, (m, t)) in model.iter().zip(truth).enumerate() {
        let tol = if k < 2 { 0.02 } else { 4.0 };
        assert!(
            (m - t).abs() <= tol,
            "parameter {k}: {m} vs {t} ({model:?})"
        );
    }
    assert!(
        found[1].1 * 5 <= inliers,
        "unrelated pair {:?} vs {inliers}",
        found[1]
    );
}

#[test]
fn bad_shapes_are_refused() {
    let be = insclr::backend::cpu();
    let mut l = LocalFeatures::new(6);
    l.push_image([10, 10], &[feature([1.0, 1.0], vec![1.0; 6])]);
    let desc = be.upload(&l.desc).unwrap();
    let scale = be.upload(&l.desc_scale).unwrap();
    let xy = be.upload(&[1.0f32, 1.0]).unwrap();
    let mut m = be.upload(&[0i32]).unwrap();
    let mut i = be.upload(&[0i32]).unwrap();
    let mut md = be.upload(&[0f32; 4]).unwrap();
    let f = VerifyFeatures {
        desc: &desc,
        desc_scale: &scale,
        xy: &xy,
        offsets: &l.offsets,
    };
    let mut out = VerifyOut {
        matches: &mut m,
        inliers: &mut i,
        model: &mut md,
    };
    let e = be.verify(&f, &[[0, 0]], &mut out, settings(6)).unwrap_err();
    assert!(format!("{e:#}").contains("multiple of 4"), "{e:#}");
    let e = be.verify(&f, &[[0, 1]], &mut out, settings(4)).unwrap_err();
    assert!(
        format!("{e:#}").contains("6"),
        "4-long rows of 6 values: {e:#}"
    );
    let e = be.verify(&f, &[[0, 1]], &mut out, settings(6)).unwrap_err();
    assert!(format!("{e:#}").contains("multiple of 4"), "{e:#}");
}
