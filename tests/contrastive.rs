//! The contrastive family (kernels/contrastive.cu) against its CPU twin, on the GPU or the
//! emulated GPU: per-row loss sums, pair counts and dL/dS, batch and memory mode, edge sizes.

mod common;

use common::{kernel_device, matches_cpu};
use insclr::backend::{Backend, Contrastive};
use insclr::rng::Rng;

#[test]
fn kernel_contrastive_matches_cpu() {
    let dev = kernel_device("kernel_contrastive_matches_cpu");
    // Rows: one, a warp-ish count; columns around the block's 256 threads and a bank-like width.
    for &(n1, n2) in &[(1, 1), (4, 0), (7, 255), (3, 256), (9, 257), (33, 3000)] {
        for memory in [false, true] {
            for with_grad in [false, true] {
                let what = format!("contrastive n1={n1} n2={n2} memory={memory} grad={with_grad}");
                matches_cpu(&what, &dev, 1e-5, |be| {
                    let mut rng = Rng::new(41 + (n1 * 13 + n2) as u64);
                    // Similarities across both thresholds, some exactly at them; labels with
                    // repeats and, for memory mode, rows labelled <= 0 that must not count.
                    let mut s = rng.vec_f32(n1 * n2, -1.0, 1.0);
                    for v in s.iter_mut().step_by(17) {
                        *v = 0.4;
                    }
                    let y1: Vec<i64> = (0..n1).map(|i| i as i64 % 5 - 1).collect();
                    let y2: Vec<i64> = (0..n2).map(|_| rng.below(6) as i64 - 1).collect();
                    let kept = y1.iter().filter(|&&y| !memory || y > 0).count();
                    let shape = Contrastive {
                        n1,
                        n2,
                        margin: 0.4,
                        pos_th: (1.0 - 1e-6f64) as f32,
                        memory,
                        inv_rows: if kept > 0 { 1.0 / kept as f32 } else { 0.0 },
                    };
                    let (sb, yb1, yb2) = (be.upload(&s)?, be.upload(&y1)?, be.upload(&y2)?);
                    let mut stats = be.upload(&vec![f32::NAN; 3 * n1])?;
                    let mut grad = be.upload(&vec![f32::NAN; n1 * n2])?;
                    let g = with_grad.then_some(&mut grad);
                    be.contrastive(&sb, &yb1, &yb2, g, &mut stats, shape)?;
                    let mut out = vec![("stats".to_string(), be.download::<f32>(&stats)?)];
                    if with_grad {
                        out.push(("dL/dS".into(), be.download::<f32>(&grad)?));
                    }
                    Ok(out)
                });
            }
        }
    }
}

/// Pairs exactly on the loss's two thresholds (spec 4.6, trap G10), with the result written out
/// by hand: a positive counts while S < 1 - 1e-6 (a near-self pair at exactly 1 - 1e-6 does
/// not), a negative while S > m (exactly m does not), and memory mode drops rows labelled <= 0
/// (label 0 included). A comparison flipped in both the kernel and its twin would pass the
/// comparison above; it fails here.
#[test]
fn pairs_exactly_on_the_margin_and_the_self_threshold_are_inactive() {
    let dev = kernel_device("pairs_exactly_on_the_margin_and_the_self_threshold_are_inactive");
    let margin = 0.4f32; // the shipped LOSS.CONTRASTIVE_LOSS.MARGIN
    let pos_th = (1.0 - insclr::loss::POS_EPS) as f32; // as the loss passes it
    let up = |x: f32| f32::from_bits(x.to_bits() + 1);
    let down = |x: f32| f32::from_bits(x.to_bits() - 1);
    // Columns: three with label 1, three with label 2; every row sees the same similarities.
    let row = [pos_th, down(pos_th), 0.5, margin, up(margin), 0.3];
    let y2 = [1i64, 1, 1, 2, 2, 2];
    let y1 = [1i64, 0, 2];
    let s: Vec<f32> = row.repeat(3);
    let f = |v: f32| v as f64;
    // Per row: (loss, positives, negatives, which columns are active: -1 positive, +1 negative).
    let label1 = (
        (1.0 - f(down(pos_th))) + (1.0 - 0.5) + f(up(margin)),
        2,
        1,
        [0, -1, -1, 0, 1, 0],
    );
    let label0 = (
        f(pos_th) + f(down(pos_th)) + 0.5 + f(up(margin)),
        0,
        4,
        [1, 1, 1, 0, 1, 0],
    );
    let label2 = (
        f(pos_th)
            + f(down(pos_th))
            + 0.5
            + (1.0 - f(margin))
            + (1.0 - f(up(margin)))
            + (1.0 - f(0.3)),
        3,
        3,
        [1, 1, 1, -1, -1, -1],
    );
    let dropped = (0.0, 0, 0, [0; 6]);
    for memory in [false, true] {
        let rows = if memory {
            [label1, dropped, label2]
        } else {
            [label1, label0, label2]
        };
        let inv_rows = if memory { 0.5 } else { 1.0 / 3.0 };
        let shape = Contrastive {
            n1: 3,
            n2: 6,
            margin,
            pos_th,
            memory,
            inv_rows,
        };
        let run = |be: &dyn Backend| -> (Vec<f32>, Vec<f32>) {
            let (sb, yb1, yb2) = (
                be.upload(&s).unwrap(),
                be.upload(&y1).unwrap(),
                be.upload(&y2).unwrap(),
            );
            let mut stats = be.upload(&[f32::NAN; 9]).unwrap();
            let mut grad = be.upload(&[f32::NAN; 18]).unwrap();
            be.contrastive(&sb, &yb1, &yb2, Some(&mut grad), &mut stats, shape)
                .unwrap();
            (be.download(&stats).unwrap(), be.download(&grad).unwrap())
        };
        for (name, (stats, grad)) in [
            ("cpu", run(insclr::backend::cpu())),
            ((&dev as &dyn Backend).name(), run(&dev)),
        ] {
            for (i, &(loss, npos, nneg, active)) in rows.iter().enumerate() {
                let what = format!("{name}, memory {memory}, row {i} (label {})", y1[i]);
                let st = &stats[3 * i..3 * i + 3];
                assert_eq!(
                    (st[1], st[2]),
                    (npos as f32, nneg as f32),
                    "{what}: pair counts"
                );
                // The kernel adds the row's f64 terms in another order: equal to rounding.
                assert!(
                    (st[0] as f64 - loss).abs() < 1e-6,
                    "{what}: loss {} != {loss}",
                    st[0]
                );
                let want: Vec<f32> = active.iter().map(|&a| a as f32 * inv_rows).collect();
                assert_eq!(&grad[6 * i..6 * i + 6], &want[..], "{what}: dL/dS");
            }
        }
    }
}
