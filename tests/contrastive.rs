//! The contrastive family (kernels/contrastive.cu) against its CPU twin, on the GPU or the
//! emulated GPU: per-row loss sums, pair counts and dL/dS, batch and memory mode, edge sizes.

mod common;

use common::{kernel_device, matches_cpu};
use insclr::backend::Contrastive;
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
