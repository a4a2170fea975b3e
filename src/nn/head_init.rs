//! How the head's linear layer starts (`MODEL.HEAD.INIT`): the original's random init, the
//! identity (a square head then returns the L2-normalised GeM descriptor at step 0), or
//! PCA-whitening learned from the stage-0 descriptors. Not in the paper: offered because a
//! random head scrambles a good ImageNet descriptor before the first step.
//!
//! The PCA is computed on the CPU in f64: the `C x C` covariance, then a symmetric
//! eigen-decomposition written here (Householder + QL; no linear-algebra dependency).

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
///
/// Householder reduction to a tridiagonal matrix, then the implicit QL iteration (the
/// EISPACK `tred2` / `tql2` pair): `O(n^3)` once, against several `O(n^3)` sweeps for Jacobi.
/// `v` holds the transformation column-major (`v[c * n + r]` is row `r`, column `c`), so every
/// inner loop walks memory in order and the eigenvectors come out as contiguous rows.
pub fn symmetric_eigen(a: &mut [f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), n * n, "symmetric_eigen: matrix is not {n} x {n}");
    if n == 0 {
        return (Vec::new(), Vec::new());
    }
    // Symmetric: the column-major view of `a` is `a` itself.
    let v = a;
    let ix = |r: usize, c: usize| c * n + r;
    let mut d: Vec<f64> = (0..n).map(|j| v[ix(n - 1, j)]).collect();
    let mut e = vec![0.0f64; n];

    // tred2: Householder tridiagonalisation, accumulating the transformations in v.
    for i in (1..n).rev() {
        let scale: f64 = d[..i].iter().map(|x| x.abs()).sum();
        let mut h = 0.0f64;
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[ix(i - 1, j)];
                v[ix(i, j)] = 0.0;
                v[ix(j, i)] = 0.0;
            }
        } else {
            for dk in d[..i].iter_mut() {
                *dk /= scale;
                h += *dk * *dk;
            }
            let f = d[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            e[..i].iter_mut().for_each(|x| *x = 0.0);
            for j in 0..i {
                let f = d[j];
                v[ix(j, i)] = f;
                let mut g = e[j] + v[ix(j, j)] * f;
                for k in j + 1..i {
                    g += v[ix(k, j)] * d[k];
                    e[k] += v[ix(k, j)] * f;
                }
                e[j] = g;
            }
            let mut f = 0.0f64;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                let (f, g) = (d[j], e[j]);
                for k in j..i {
                    v[ix(k, j)] -= f * e[k] + g * d[k];
                }
                d[j] = v[ix(i - 1, j)];
                v[ix(i, j)] = 0.0;
            }
        }
        d[i] = h;
    }
    for i in 0..n - 1 {
        v[ix(n - 1, i)] = v[ix(i, i)];
        v[ix(i, i)] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = v[ix(k, i + 1)] / h;
            }
            for j in 0..=i {
                let g: f64 = (0..=i).map(|k| v[ix(k, i + 1)] * v[ix(k, j)]).sum();
                for k in 0..=i {
                    v[ix(k, j)] -= g * d[k];
                }
            }
        }
        for k in 0..=i {
            v[ix(k, i + 1)] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[ix(n - 1, j)];
        v[ix(n - 1, j)] = 0.0;
    }
    v[ix(n - 1, n - 1)] = 1.0;
    e[0] = 0.0;

    // tql2: implicit QL on the tridiagonal (d, e), rotating the columns of v.
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let (mut f, mut tst1) = (0.0f64, 0.0f64);
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n - 1 && e[m].abs() > eps * tst1 {
            m += 1;
        }
        if m > l {
            for _iter in 0..64 {
                let g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let h = g - d[l];
                for di in d[l + 2..].iter_mut() {
                    *di -= h;
                }
                f += h;
                p = d[m];
                let (mut c, mut c2, mut c3) = (1.0f64, 1.0f64, 1.0f64);
                let el1 = e[l + 1];
                let (mut s, mut s2) = (0.0f64, 0.0f64);
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    let g = c * e[i];
                    let h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    let (lo, hi) = v.split_at_mut((i + 1) * n);
                    let (vi, vi1) = (&mut lo[i * n..], &mut hi[..n]);
                    for (a, b) in vi.iter_mut().zip(vi1.iter_mut()) {
                        let h = *b;
                        *b = s * *a + c * h;
                        *a = c * *a - s * h;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }

    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| d[j].total_cmp(&d[i]));
    let vals = order.iter().map(|&i| d[i]).collect();
    let mut vecs = Vec::with_capacity(n * n);
    for &i in &order {
        let col = &v[i * n..(i + 1) * n];
        // A fixed sign (largest component positive) makes the result reproducible.
        let big = col
            .iter()
            .fold(0.0f64, |m, &x| if x.abs() > m.abs() { x } else { m });
        let sign = if big < 0.0 { -1.0 } else { 1.0 };
        vecs.extend(col.iter().map(|x| x * sign));
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

    /// `A v = lambda v` for every returned pair, unit orthogonal vectors, decreasing values.
    fn check_eigen(orig: &[f64], n: usize) {
        let mut a = orig.to_vec();
        let (vals, vecs) = symmetric_eigen(&mut a, n);
        assert!(vals.windows(2).all(|w| w[0] >= w[1]), "{vals:?}");
        let scale = orig.iter().fold(1.0f64, |m, x| m.max(x.abs()));
        for k in 0..n {
            let v = &vecs[k * n..(k + 1) * n];
            for l in 0..n {
                let dot: f64 = v
                    .iter()
                    .zip(&vecs[l * n..(l + 1) * n])
                    .map(|(a, b)| a * b)
                    .sum();
                let want = if k == l { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-10, "n {n}: <v{k}, v{l}> = {dot}");
            }
            for i in 0..n {
                let av: f64 = (0..n).map(|j| orig[i * n + j] * v[j]).sum();
                assert!(
                    (av - vals[k] * v[i]).abs() < 1e-10 * scale,
                    "n {n}: pair {k} row {i}: {av} vs {}",
                    vals[k] * v[i]
                );
            }
        }
    }

    #[test]
    fn eigen_decomposition_recovers_eigenpairs() {
        // A Hilbert-like matrix plus a diagonal, a random covariance, repeated eigenvalues
        // (the identity, a diagonal with ties, a rank-1 matrix) and the 1 x 1 case.
        let n = 7;
        let hilbert: Vec<f64> = (0..n * n)
            .map(|t| {
                let (i, j) = (t / n, t % n);
                1.0 / (1.0 + (i + j) as f64) + if i == j { i as f64 } else { 0.0 }
            })
            .collect();
        check_eigen(&hilbert, n);
        let mut rng = crate::rng::Rng::new(3);
        let (m, k) = (40, 60);
        let x = rng.vec_f32(k * m, -1.0, 1.0);
        let cov: Vec<f64> = (0..m * m)
            .map(|t| {
                let (i, j) = (t / m, t % m);
                (0..k)
                    .map(|r| x[r * m + i] as f64 * x[r * m + j] as f64)
                    .sum::<f64>()
                    / k as f64
            })
            .collect();
        check_eigen(&cov, m);
        let eye: Vec<f64> = (0..25)
            .map(|t| if t % 6 == 0 { 1.0 } else { 0.0 })
            .collect();
        check_eigen(&eye, 5);
        let ties: Vec<f64> = (0..16)
            .map(|t| {
                if t % 5 == 0 {
                    [2.0, 1.0, 2.0, 1.0][t / 5]
                } else {
                    0.0
                }
            })
            .collect();
        check_eigen(&ties, 4);
        let u = [1.0, -2.0, 0.5, 3.0, 0.0];
        let rank1: Vec<f64> = (0..25).map(|t| u[t / 5] * u[t % 5]).collect();
        check_eigen(&rank1, 5);
        check_eigen(&[4.0], 1);
    }
}
