//! How the head's linear layer starts (`MODEL.HEAD.INIT`): the original's random init, the
//! identity (a square head then returns the L2-normalised GeM descriptor at step 0), or
//! PCA-whitening learned from the stage-0 descriptors. Not in the paper: offered because a
//! random head scrambles a good ImageNet descriptor before the first step.
//!
//! The PCA is computed on the CPU in f64: the `C x C` covariance, then a cyclic Jacobi
//! eigen-decomposition (no linear-algebra dependency; `O(C^3)` per sweep, some seconds per
//! sweep at C = 1280, once per run).

use anyhow::{bail, Result};
use rayon::prelude::*;

/// `MODEL.HEAD.INIT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadInit {
    /// PyTorch's default init (the original's; the default).
    Random,
    /// Weight = identity (needs `IN = OUT`), bias 0.
    Identity,
    /// PCA-whitening of `MODEL.HEAD.INIT_FEATS`.
    Pca,
}

impl HeadInit {
    /// Parses `random`, `identity` or `pca`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "random" => Ok(HeadInit::Random),
            "identity" => Ok(HeadInit::Identity),
            "pca" => Ok(HeadInit::Pca),
            _ => bail!(
                "MODEL.HEAD.INIT = {s:?}: use \"random\" (the original's), \"identity\" or \"pca\""
            ),
        }
    }
}

/// Eigen-decomposition of the symmetric `n x n` row-major matrix `a` (destroyed): eigenvalues
/// in decreasing order and the matching unit eigenvectors as the rows of an `n x n` matrix.
pub fn symmetric_eigen(a: &mut [f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), n * n, "symmetric_eigen: matrix is not {n} x {n}");
    // Rows of `vt` are the eigenvectors (V transposed), so each rotation touches two
    // contiguous rows.
    let mut vt = vec![0.0f64; n * n];
    for i in 0..n {
        vt[i * n + i] = 1.0;
    }
    let total: f64 = a.iter().map(|v| v * v).sum();
    for _sweep in 0..64 {
        let off: f64 = (0..n)
            .flat_map(|p| (p + 1..n).map(move |q| (p, q)))
            .map(|(p, q)| a[p * n + q] * a[p * n + q])
            .sum();
        if off <= 1e-30 * total || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let (app, aqq) = (a[p * n + p], a[q * n + q]);
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // A' = P^T A P: rows p and q off the 2x2 block, mirrored into the columns by
                // symmetry; the block itself in closed form (a'_pq = 0).
                for k in 0..n {
                    if k == p || k == q {
                        continue;
                    }
                    let (akp, akq) = (a[p * n + k], a[q * n + k]);
                    let (np, nq) = (c * akp - s * akq, s * akp + c * akq);
                    a[p * n + k] = np;
                    a[q * n + k] = nq;
                    a[k * n + p] = np;
                    a[k * n + q] = nq;
                }
                a[p * n + p] = app - t * apq;
                a[q * n + q] = aqq + t * apq;
                a[p * n + q] = 0.0;
                a[q * n + p] = 0.0;
                let (rp, rq) = (p * n, q * n);
                for k in 0..n {
                    let (vp, vq) = (vt[rp + k], vt[rq + k]);
                    vt[rp + k] = c * vp - s * vq;
                    vt[rq + k] = s * vp + c * vq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j * n + j].total_cmp(&a[i * n + i]));
    let vals = order.iter().map(|&i| a[i * n + i]).collect();
    let mut vecs = Vec::with_capacity(n * n);
    for &i in &order {
        let row = &vt[i * n..(i + 1) * n];
        // A fixed sign (largest component positive) makes the result reproducible.
        let big = row
            .iter()
            .fold(0.0f64, |m, &v| if v.abs() > m.abs() { v } else { m });
        let sign = if big < 0.0 { -1.0 } else { 1.0 };
        vecs.extend(row.iter().map(|v| v * sign));
    }
    (vals, vecs)
}

/// A linear layer's initial values: `weight` is `out x in` (PyTorch layout), `bias` `out`.
#[derive(Clone, Debug)]
pub struct LinearInit {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// The `c x c` identity with a zero bias.
pub fn identity(c: usize) -> LinearInit {
    let mut weight = vec![0.0f32; c * c];
    for i in 0..c {
        weight[i * c + i] = 1.0;
    }
    LinearInit {
        weight,
        bias: vec![0.0; c],
    }
}

/// PCA-whitening of the `n x c` rows `x` to `d <= c` outputs: weight row `i` is the `i`-th
/// principal direction over `sqrt(eigenvalue_i + eps)` with `eps = 1e-6 x` the largest
/// eigenvalue (so directions the data does not span stay finite), and `bias = -W mean`, so
/// `W x + bias` has zero mean and unit diagonal covariance on `x`.
pub fn pca_whitening(x: &[f32], n: usize, c: usize, d: usize) -> Result<LinearInit> {
    if x.len() != n * c {
        bail!("PCA: {} values are not {n} rows of {c}", x.len());
    }
    if d == 0 || d > c {
        bail!("PCA keeps 1 to {c} directions (the descriptor width), not {d}");
    }
    if n < 2 {
        bail!("PCA needs at least 2 descriptors, got {n}");
    }
    let mut mean = vec![0.0f64; c];
    for row in x.chunks(c) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    // Covariance (1/n), one row per task; rows of the centred data are recomputed on the fly.
    let mut cov = vec![0.0f64; c * c];
    cov.par_chunks_mut(c).enumerate().for_each(|(i, out)| {
        for row in x.chunks(c) {
            let xi = row[i] as f64 - mean[i];
            if xi == 0.0 {
                continue;
            }
            for ((o, &v), m) in out.iter_mut().zip(row).zip(&mean) {
                *o += xi * (v as f64 - m);
            }
        }
        out.iter_mut().for_each(|o| *o /= n as f64);
    });
    let (vals, vecs) = symmetric_eigen(&mut cov, c);
    let eps = 1e-6 * vals[0].max(f64::MIN_POSITIVE);
    let mut weight = Vec::with_capacity(d * c);
    let mut bias = Vec::with_capacity(d);
    for i in 0..d {
        let scale = 1.0 / (vals[i].max(0.0) + eps).sqrt();
        let dir = &vecs[i * c..(i + 1) * c];
        weight.extend(dir.iter().map(|v| (v * scale) as f32));
        let proj: f64 = dir.iter().zip(&mean).map(|(v, m)| v * m).sum();
        bias.push((-proj * scale) as f32);
    }
    Ok(LinearInit { weight, bias })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_recovers_eigenpairs() {
        let n = 7;
        let mut a = vec![0.0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] =
                    1.0 / (1.0 + i as f64 + j as f64) + if i == j { i as f64 } else { 0.0 };
            }
        }
        let orig = a.clone();
        let (vals, vecs) = symmetric_eigen(&mut a, n);
        assert!(vals.windows(2).all(|w| w[0] >= w[1]), "{vals:?}");
        for k in 0..n {
            let v = &vecs[k * n..(k + 1) * n];
            let norm: f64 = v.iter().map(|x| x * x).sum();
            assert!((norm - 1.0).abs() < 1e-12);
            for i in 0..n {
                let av: f64 = (0..n).map(|j| orig[i * n + j] * v[j]).sum();
                assert!((av - vals[k] * v[i]).abs() < 1e-10, "pair {k} row {i}");
            }
        }
    }
}
