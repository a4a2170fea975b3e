//! The contrastive loss of InsCLR (spec 4.6), value and gradient, in batch and memory mode.
//!
//! `S = X1 X2^T`, the per-pair masks with `dL/dS` (`be.contrastive`) and `dX1 = (dL/dS) X2`
//! all run on the backend; only the per-row loss sums and pair counts come back to the host.
//!
//! ```text
//! L = (1/n) sum_i [ sum_{j: y2j == y1i, S_ij < 1 - eps} (1 - S_ij) + sum_{j: y2j != y1i, S_ij > m} S_ij ]
//! ```
//! The negative term is `S`, not `S - m` (trap G10: same gradient as a hinge, the value differs
//! by m per active pair); the mean is over rows, not pairs. Memory mode drops rows with label
//! <= 0; batch mode keeps them. Deliberate difference: with no row left (every label <= 0) the
//! original divides by zero and raises; here the loss is 0 with a zero gradient.

use crate::backend::{Backend, Buf, Contrastive, DType, MatMul};
use anyhow::{bail, Result};

/// `LOSS.CONTRASTIVE_LOSS.MARGIN` of every shipped config.
pub const MARGIN: f32 = 0.4;
/// Positive pairs with `S >= 1 - POS_EPS` count as self pairs and are skipped.
pub const POS_EPS: f64 = 1e-6;

/// Value and pair statistics of one loss evaluation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossOut {
    /// The loss.
    pub value: f32,
    /// Rows averaged over (after the memory-mode filter).
    pub rows: usize,
    /// Active positive pairs per row (the original's `avg_pos` log).
    pub avg_pos: f32,
    /// Active negative pairs per row (the original's `avg_neg` log).
    pub avg_neg: f32,
}

/// Loss of the `n1 x n2` similarity block `s` on the backend (`be.contrastive`: one pass for the
/// value, the pair counts and, into `ds` when given, `dL/dS`); only the per-row sums come back.
/// A row counts unless `memory` is set and its label is <= 0.
fn evaluate(
    be: &dyn Backend,
    s: &Buf,
    y1: &[i64],
    y2: &[i64],
    memory: bool,
    margin: f32,
    ds: Option<&mut Buf>,
) -> Result<LossOut> {
    let n = y1.iter().filter(|&&y| !memory || y > 0).count();
    let shape = Contrastive {
        n1: y1.len(),
        n2: y2.len(),
        margin,
        // The original compares an f32 tensor with Python floats, i.e. with their f32 roundings.
        pos_th: (1.0 - POS_EPS) as f32,
        memory,
        inv_rows: if n > 0 { 1.0 / n as f32 } else { 0.0 },
    };
    let (yb1, yb2) = (be.upload(y1)?, be.upload(y2)?);
    let mut stats = be.zeros(DType::F32, 3 * y1.len())?;
    be.contrastive(s, &yb1, &yb2, ds, &mut stats, shape)?;
    let st = be.download::<f32>(&stats)?;
    let (mut total, mut npos, mut nneg) = (0f64, 0f64, 0f64);
    for row in st.chunks(3) {
        total += row[0] as f64;
        npos += row[1] as f64;
        nneg += row[2] as f64;
    }
    let per = |c: f64| if n > 0 { (c / n as f64) as f32 } else { 0.0 };
    Ok(LossOut {
        value: per(total),
        rows: n,
        avg_pos: per(npos),
        avg_neg: per(nneg),
    })
}

fn check_rows(what: &str, buf: &Buf, rows: usize, d: usize) -> Result<()> {
    if buf.len() != rows * d {
        bail!(
            "contrastive loss: {what} holds {} values, expected {rows} rows x {d}",
            buf.len()
        );
    }
    Ok(())
}

/// Batch mode, `contrastive(F, y, F, y)`: every row of `x` (`y.len() x d`) against every row,
/// labels <= 0 included. When `dx` is given it receives `dL/dX` (X appears on both sides, so
/// `dX = (G + G^T) X` with `G = dL/dS`).
pub fn contrastive_batch(
    be: &dyn Backend,
    x: &Buf,
    y: &[i64],
    d: usize,
    margin: f32,
    dx: Option<&mut Buf>,
) -> Result<LossOut> {
    let n = y.len();
    check_rows("X", x, n, d)?;
    let mut sb = be.zeros(DType::F32, n * n)?;
    be.matmul(x, x, &mut sb, MatMul::new(n, n, d).tb())?;
    let Some(dx) = dx else {
        return evaluate(be, &sb, y, y, false, margin, None);
    };
    check_rows("dX", dx, n, d)?;
    let mut g = be.zeros(DType::F32, n * n)?;
    let out = evaluate(be, &sb, y, y, false, margin, Some(&mut g))?;
    // X is on both sides of S = X X^T: dX = G X + G^T X.
    be.matmul(&g, x, dx, MatMul::new(n, d, n))?;
    be.matmul(&g, x, dx, MatMul::new(n, d, n).ta().accumulate())?;
    Ok(out)
}

/// The reference side of memory mode: gathered memory features and their labels.
#[derive(Clone, Copy)]
pub struct Memory<'a> {
    /// `y.len() x d` features (no gradient).
    pub x: &'a Buf,
    /// Their labels: tuple labels for positives, `N + 1` for negatives.
    pub y: &'a [i64],
}

/// Memory mode, `contrastive(F, y1, M, y2)`: rows of `x1` (`y1.len() x d`) with label > 0
/// against the memory `x2` (`y2.len() x d`, no gradient). When `dx1` is given it receives
/// `dL/dX1` for all rows (zero for dropped rows).
pub fn contrastive_memory(
    be: &dyn Backend,
    x1: &Buf,
    y1: &[i64],
    mem: Memory,
    d: usize,
    margin: f32,
    dx1: Option<&mut Buf>,
) -> Result<LossOut> {
    let (x2, y2) = (mem.x, mem.y);
    let (n1, n2) = (y1.len(), y2.len());
    check_rows("X1", x1, n1, d)?;
    check_rows("memory", x2, n2, d)?;
    // All rows are scored (one GEMM); dropped rows are masked by the loss kernel.
    let mut sb = be.zeros(DType::F32, n1 * n2)?;
    be.matmul(x1, x2, &mut sb, MatMul::new(n1, n2, d).tb())?;
    let Some(dx1) = dx1 else {
        return evaluate(be, &sb, y1, y2, true, margin, None);
    };
    check_rows("dX1", dx1, n1, d)?;
    let mut g = be.zeros(DType::F32, n1 * n2)?;
    let out = evaluate(be, &sb, y1, y2, true, margin, Some(&mut g))?;
    be.matmul(&g, x2, dx1, MatMul::new(n1, d, n2))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn units(deg: &[f64]) -> Vec<f32> {
        deg.iter()
            .flat_map(|a| [a.to_radians().cos() as f32, a.to_radians().sin() as f32])
            .collect()
    }

    #[test]
    fn spec_batch_mode_vector() {
        let be = crate::backend::cpu();
        let x = be.upload(&units(&[0.0, 30.0, 50.0])).unwrap();
        let out = contrastive_batch(be, &x, &[1, 1, 2], 2, MARGIN, None).unwrap();
        assert!((out.value - 1.144303).abs() < 1e-5, "{}", out.value);
        assert_eq!(out.rows, 3);
        // Rows: pos 0-1; neg 0-2, 1-2 (cos 50 = 0.643, cos 20 = 0.940 > 0.4).
        assert!((out.avg_pos - 2.0 / 3.0).abs() < 1e-6);
        assert!((out.avg_neg - 4.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn spec_memory_mode_vector() {
        let be = crate::backend::cpu();
        let x = be.upload(&units(&[0.0, 30.0, 50.0])).unwrap();
        let m = be.upload(&units(&[10.0, 40.0, 200.0])).unwrap();
        let out = contrastive_memory(
            be,
            &x,
            &[1, 1, -1],
            Memory {
                x: &m,
                y: &[1, 4, 4],
            },
            2,
            MARGIN,
            None,
        )
        .unwrap();
        assert!((out.value - 0.913176).abs() < 1e-5, "{}", out.value);
        assert_eq!(out.rows, 2);
    }

    #[test]
    fn self_pairs_are_not_positives_and_no_rows_gives_zero() {
        let be = crate::backend::cpu();
        let x = be.upload(&units(&[0.0, 0.0])).unwrap();
        // Identical features, same label: S = 1 >= 1 - 1e-6, nothing active.
        let out = contrastive_batch(be, &x, &[3, 3], 2, MARGIN, None).unwrap();
        assert_eq!(out.value, 0.0);
        let mut dx = be.zeros(DType::F32, 4).unwrap();
        let out = contrastive_memory(
            be,
            &x,
            &[-1, 0],
            Memory { x: &x, y: &[1, 1] },
            2,
            MARGIN,
            Some(&mut dx),
        )
        .unwrap();
        assert_eq!((out.value, out.rows), (0.0, 0));
        assert_eq!(be.download::<f32>(&dx).unwrap(), vec![0.0; 4]);
    }

    /// Random rows whose similarities (and squared norms) stay 0.05 away from both
    /// thresholds, so a +-1e-2 step never switches a pair on or off (the loss is piecewise
    /// quadratic in X: central differences are exact up to rounding).
    fn safe_inputs(d: usize, y1: &[i64], y2: &[i64], batch: bool) -> (Vec<f32>, Vec<f32>) {
        let (n1, n2) = (y1.len(), y2.len());
        for seed in 0..10_000 {
            let mut r = Rng::new(seed);
            let x1: Vec<f32> = (0..n1 * d).map(|_| 0.45 * r.normal()).collect();
            let x2: Vec<f32> = if batch {
                x1.clone()
            } else {
                (0..n2 * d).map(|_| 0.45 * r.normal()).collect()
            };
            let (mut safe, mut pos, mut neg) = (true, false, false);
            for i in (0..n1).filter(|&i| batch || y1[i] > 0) {
                for j in 0..n2 {
                    let s: f32 = (0..d).map(|t| x1[i * d + t] * x2[j * d + t]).sum();
                    safe &= (s - MARGIN).abs() > 0.05 && (s - 1.0).abs() > 0.05;
                    pos |= y1[i] == y2[j] && s < 1.0 && i != j;
                    neg |= y1[i] != y2[j] && s > MARGIN;
                }
            }
            // Both terms active (and a non-self positive pair), else the check proves little.
            if safe && pos && neg {
                return (x1, x2);
            }
        }
        panic!("no safe finite-difference input found");
    }

    fn fd_check(batch: bool) {
        let be = crate::backend::cpu();
        let d = 6;
        let y1: Vec<i64> = if batch {
            vec![1, 1, 2, -1, 2]
        } else {
            vec![1, -2, 2, 1]
        };
        let y2: Vec<i64> = if batch {
            y1.clone()
        } else {
            vec![1, 2, 7, 1, 2, 7]
        };
        let (x1, x2) = safe_inputs(d, &y1, &y2, batch);
        let n1 = y1.len();
        let eval = |x: &[f32], dx: Option<&mut Buf>| -> LossOut {
            let xb = be.upload(x).unwrap();
            if batch {
                contrastive_batch(be, &xb, &y1, d, MARGIN, dx).unwrap()
            } else {
                let mb = be.upload(&x2).unwrap();
                contrastive_memory(be, &xb, &y1, Memory { x: &mb, y: &y2 }, d, MARGIN, dx).unwrap()
            }
        };
        let mut dxb = be.zeros(DType::F32, n1 * d).unwrap();
        let base = eval(&x1, Some(&mut dxb));
        assert!(
            base.avg_pos > 0.0 && base.avg_neg > 0.0,
            "both terms must be active"
        );
        let dx = be.download::<f32>(&dxb).unwrap();
        let h = 1e-2f32;
        let mut max_err = 0f32;
        for p in 0..n1 * d {
            let mut xp = x1.clone();
            xp[p] += h;
            let mut xm = x1.clone();
            xm[p] -= h;
            let num = (eval(&xp, None).value - eval(&xm, None).value) / (2.0 * h);
            max_err = max_err.max((num - dx[p]).abs());
        }
        let scale = dx.iter().map(|v| v.abs()).fold(0f32, f32::max);
        assert!(scale > 0.1, "gradient unexpectedly small: {scale}");
        assert!(
            max_err < 1e-3 * scale.max(1.0),
            "max |fd - analytic| = {max_err}"
        );
        if !batch {
            // The dropped row (label -2) gets no gradient.
            assert!(dx[d..2 * d].iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn memory_copy_of_self_adds_one_but_no_gradient_through_l2norm() {
        // Trap G9: the batch is written to memory before it is read, so a row can meet its own
        // (detached) copy as a negative: S = 1 > m adds 1 to the row's sum, yet the gradient
        // dL/dy = y / n is parallel to y and vanishes through the L2 normalisation.
        use crate::backend::L2Norm;
        let be = crate::backend::cpu();
        let v = be.upload(&[0.3, -1.2, 0.5, 2.0]).unwrap();
        let mut y = be.zeros(DType::F32, 4).unwrap();
        be.l2norm_fwd(&v, &mut y, L2Norm::new(1, 4)).unwrap();
        let mem = be.upload(&be.download::<f32>(&y).unwrap()).unwrap();
        let mut dy = be.zeros(DType::F32, 4).unwrap();
        let out = contrastive_memory(
            be,
            &y,
            &[3],
            Memory { x: &mem, y: &[100] },
            4,
            MARGIN,
            Some(&mut dy),
        )
        .unwrap();
        assert!((out.value - 1.0).abs() < 1e-6, "{}", out.value);
        let dyv = be.download::<f32>(&dy).unwrap();
        assert!(
            dyv.iter().map(|a| a.abs()).sum::<f32>() > 0.5,
            "dL/dy itself is not zero"
        );
        let mut dv = be.zeros(DType::F32, 4).unwrap();
        be.l2norm_bwd(&v, &dy, &mut dv, L2Norm::new(1, 4)).unwrap();
        assert!(be
            .download::<f32>(&dv)
            .unwrap()
            .iter()
            .all(|a| a.abs() < 1e-6));
    }

    #[test]
    fn batch_gradient_matches_finite_differences() {
        fd_check(true);
    }

    #[test]
    fn memory_gradient_matches_finite_differences() {
        fd_check(false);
    }
}
