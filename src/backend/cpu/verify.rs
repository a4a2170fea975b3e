//! Spatial verification on the CPU: the twin of `kernels/verify.cu`, with its arithmetic (exact
//! integer dot products, each f32 product and sum rounded on its own, the same order) and its
//! tie rules, so the matches, inliers and models agree bit for bit. Pairs run in parallel.

use crate::backend::verify::{PairResult, Similarity, VerifyConsts};
use crate::backend::{Checked, Verify, VerifyFeatures, VerifyOut};
use anyhow::Result;
use rayon::prelude::*;

/// One image's features as the twin reads them.
#[derive(Clone, Copy)]
pub struct ImageFeats<'a> {
    pub desc: &'a [i8],
    pub desc_scale: &'a [f32],
    pub xy: &'a [[f32; 2]],
}

impl ImageFeats<'_> {
    fn len(&self) -> usize {
        self.desc_scale.len()
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The two matches hypothesis `h` is drawn from (`m >= 2`).
fn hypothesis_pair(seed: u64, h: usize, m: usize, hypotheses: usize) -> (usize, usize) {
    let (i, j) = if m * (m - 1) <= hypotheses {
        (h / (m - 1), h % (m - 1))
    } else {
        let r = splitmix64(seed ^ splitmix64(h as u64));
        let (hi, lo) = ((r >> 32) as u32, r as u32);
        ((hi % m as u32) as usize, (lo % (m as u32 - 1)) as usize)
    };
    (i, j + (j >= i) as usize)
}

/// The similarity taking `p1 -> q1`, `p2 -> q2` (see the kernel's `similarity_from`).
pub fn similarity_from(
    [p1, p2]: [[f32; 2]; 2],
    [q1, q2]: [[f32; 2]; 2],
    max_scale2: f32,
) -> Option<Similarity> {
    let (dpx, dpy) = (p2[0] - p1[0], p2[1] - p1[1]);
    let (dqx, dqy) = (q2[0] - q1[0], q2[1] - q1[1]);
    let den = dpx * dpx + dpy * dpy;
    if den.is_nan() || den <= 1e-6 {
        return None;
    }
    let a = (dqx * dpx + dqy * dpy) / den;
    let b = (dqy * dpx - dqx * dpy) / den;
    let s2 = a * a + b * b;
    if s2.is_nan() || s2 > max_scale2 || s2 * max_scale2 < 1.0 {
        return None;
    }
    let tx = q1[0] - (a * p1[0] - b * p1[1]);
    let ty = q1[1] - (b * p1[0] + a * p1[1]);
    Some([a, b, tx, ty])
}

/// Whether `m` maps `p` within `sqrt(thr2)` of `q`.
pub fn is_inlier(m: &Similarity, p: [f32; 2], q: [f32; 2], thr2: f32) -> bool {
    let [a, b, tx, ty] = *m;
    let ex = ((a * p[0] - b * p[1]) + tx) - q[0];
    let ey = ((b * p[0] + a * p[1]) + ty) - q[1];
    ex * ex + ey * ey <= thr2
}

/// The least-squares similarity over the matches `s` maps within `thr2` (the kernel's `refine`).
pub fn refine(
    p: &[[f32; 2]],
    q: &[[f32; 2]],
    s: &Similarity,
    thr2: f32,
    max_scale2: f32,
) -> Option<Similarity> {
    let inl: Vec<usize> = (0..p.len())
        .filter(|&i| is_inlier(s, p[i], q[i], thr2))
        .collect();
    if inl.len() < 2 {
        return None;
    }
    let (mut spx, mut spy, mut sqx, mut sqy) = (0f32, 0f32, 0f32, 0f32);
    for &i in &inl {
        spx += p[i][0];
        spy += p[i][1];
        sqx += q[i][0];
        sqy += q[i][1];
    }
    let inv = 1.0 / inl.len() as f32;
    let (mpx, mpy, mqx, mqy) = (spx * inv, spy * inv, sqx * inv, sqy * inv);
    let (mut na, mut nb, mut den) = (0f32, 0f32, 0f32);
    for &i in &inl {
        let (dpx, dpy) = (p[i][0] - mpx, p[i][1] - mpy);
        let (dqx, dqy) = (q[i][0] - mqx, q[i][1] - mqy);
        na += dpx * dqx + dpy * dqy;
        nb += dpx * dqy - dpy * dqx;
        den += dpx * dpx + dpy * dpy;
    }
    if den.is_nan() || den <= 1e-6 {
        return None;
    }
    let (a, b) = (na / den, nb / den);
    let s2 = a * a + b * b;
    if s2.is_nan() || s2 > max_scale2 || s2 * max_scale2 < 1.0 {
        return None;
    }
    Some([a, b, mqx - (a * mpx - b * mpy), mqy - (b * mpx + a * mpy)])
}

/// The IEEE total order of similarities as an unsigned key (the kernel's `sim_key`).
fn sim_key(f: f32) -> u32 {
    let u = f.to_bits();
    if u & 0x8000_0000 != 0 {
        !u
    } else {
        u | 0x8000_0000
    }
}

#[inline(always)]
fn dot_i8(x: &[i8], y: &[i8]) -> i32 {
    x.iter().zip(y).map(|(&a, &b)| a as i32 * b as i32).sum()
}

/// The mutual matches of `a` and `b`, as `(row of a, row of b)` in ascending row of a.
pub fn mutual_matches(
    a: ImageFeats,
    b: ImageFeats,
    dim: usize,
    s: &Verify,
    c: &VerifyConsts,
) -> Vec<(usize, usize)> {
    let (na, nb) = (a.len(), b.len());
    let sim: Vec<f32> = super::wide(
        #[inline(always)]
        || {
            let mut sim = vec![0f32; na * nb];
            for i in 0..na {
                let ra = &a.desc[i * dim..(i + 1) * dim];
                for j in 0..nb {
                    let dot = dot_i8(ra, &b.desc[j * dim..(j + 1) * dim]);
                    sim[i * nb + j] = dot as f32 * a.desc_scale[i] * b.desc_scale[j];
                }
            }
            sim
        },
    );
    let mut col_best = vec![(0u32, 0usize); nb];
    for j in 0..nb {
        for i in 0..na {
            let k = sim_key(sim[i * nb + j]);
            if i == 0 || k > col_best[j].0 {
                col_best[j] = (k, i);
            }
        }
    }
    let mut out = Vec::new();
    for i in 0..na {
        let (mut s1, mut s2, mut b1) = (f32::NEG_INFINITY, f32::NEG_INFINITY, None);
        for (j, &v) in sim[i * nb..(i + 1) * nb].iter().enumerate() {
            if v > s1 {
                s2 = s1;
                s1 = v;
                b1 = Some(j);
            } else if v > s2 {
                s2 = v;
            }
        }
        let Some(j) = b1 else { continue };
        let (d1, d2) = (2.0 - 2.0 * s1, 2.0 - 2.0 * s2);
        let distinct = s2 == f32::NEG_INFINITY || d1 < c.ratio2 * d2;
        if s1 >= s.min_similarity && distinct && col_best[j].1 == i {
            out.push((i, j));
        }
    }
    out
}

/// Verifies one pair: its mutual matches, then RANSAC as the kernel runs it.
pub fn verify_pair(a: ImageFeats, b: ImageFeats, dim: usize, s: &Verify) -> PairResult {
    let c = s.consts();
    let found = mutual_matches(a, b, dim, s, &c);
    let p: Vec<[f32; 2]> = found.iter().map(|&(i, _)| a.xy[i]).collect();
    let q: Vec<[f32; 2]> = found.iter().map(|&(_, j)| b.xy[j]).collect();
    let m = found.len();
    let model_of = |h: usize| {
        let (i, j) = hypothesis_pair(s.seed, h, m, s.hypotheses);
        similarity_from([p[i], p[j]], [q[i], q[j]], c.max_scale2)
    };
    let mut best = (0i32, None);
    if m >= 2 {
        // Every ordered pair once when there are no more of them than hypotheses.
        for h in 0..s.hypotheses.min(m * (m - 1)) {
            let Some(model) = model_of(h) else { continue };
            let count = (0..m)
                .filter(|&k| is_inlier(&model, p[k], q[k], c.thr2))
                .count() as i32;
            if count > best.0 {
                best = (count, Some(h));
            }
        }
    }
    let (mut inliers, mut model) = (best.0, best.1.and_then(model_of).unwrap_or_default());
    if best.1.is_some() {
        if let Some(r) = refine(&p, &q, &model, c.thr2, c.max_scale2) {
            let count = (0..m)
                .filter(|&k| is_inlier(&r, p[k], q[k], c.thr2))
                .count() as i32;
            if count >= inliers {
                (inliers, model) = (count, r);
            }
        }
    }
    PairResult {
        matches: m as i32,
        inliers,
        model,
    }
}

/// The features of image `i` of a batch.
pub fn image<'a>(
    desc: &'a [i8],
    desc_scale: &'a [f32],
    xy: &'a [[f32; 2]],
    offsets: &[usize],
    dim: usize,
    i: usize,
) -> ImageFeats<'a> {
    let r = offsets[i]..offsets[i + 1];
    ImageFeats {
        desc: &desc[r.start * dim..r.end * dim],
        desc_scale: &desc_scale[r.clone()],
        xy: &xy[r],
    }
}

impl crate::backend::VerifyOps for super::CpuBackend {
    fn verify(
        &self,
        f: &VerifyFeatures,
        pairs: &[[u32; 2]],
        out: &mut VerifyOut,
        s: Checked<Verify>,
    ) -> Result<()> {
        let desc: &[i8] = f.desc.host()?;
        let scale: &[f32] = f.desc_scale.host()?;
        let xy: &[f32] = f.xy.host()?;
        let xy: &[[f32; 2]] = bytemuck::cast_slice(xy);
        let results: Vec<PairResult> = pairs
            .par_iter()
            .map(|&[ia, ib]| {
                let im = |i: u32| image(desc, scale, xy, f.offsets, s.dim, i as usize);
                verify_pair(im(ia), im(ib), s.dim, &s)
            })
            .collect();
        let matches: &mut [i32] = out.matches.host_mut()?;
        for (m, r) in matches.iter_mut().zip(&results) {
            *m = r.matches;
        }
        let inliers: &mut [i32] = out.inliers.host_mut()?;
        for (m, r) in inliers.iter_mut().zip(&results) {
            *m = r.inliers;
        }
        let model: &mut [f32] = out.model.host_mut()?;
        for (m, r) in model.chunks_exact_mut(4).zip(&results) {
            m.copy_from_slice(&r.model);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_points_give_the_transform_that_maps_them() {
        // Rotation by 90 degrees, scale 2, shift (5, -3): (1,0) -> (5,-1), (0,1) -> (3,-3).
        let m =
            similarity_from([[1.0, 0.0], [0.0, 1.0]], [[5.0, -1.0], [3.0, -3.0]], 16.0).unwrap();
        assert_eq!(m, [0.0, 2.0, 5.0, -3.0]);
        assert!(is_inlier(&m, [2.0, 2.0], [1.0, 1.0], 0.0));
        assert!(
            similarity_from([[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [1.0, 0.0]], 16.0).is_none()
        );
        // Scale 8 is beyond max_scale 4 (max_scale2 16), 1/8 too.
        assert!(
            similarity_from([[0.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [8.0, 0.0]], 16.0).is_none()
        );
        assert!(
            similarity_from([[0.0, 0.0], [8.0, 0.0]], [[0.0, 0.0], [1.0, 0.0]], 16.0).is_none()
        );
    }

    #[test]
    fn enumerated_hypotheses_cover_every_ordered_pair() {
        let mut seen: Vec<(usize, usize)> = (0..12).map(|h| hypothesis_pair(1, h, 4, 12)).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 12);
        assert!(seen.iter().all(|&(i, j)| i != j && i < 4 && j < 4));
        for h in 0..1000 {
            let (i, j) = hypothesis_pair(7, h, 50, 100);
            assert!(i != j && i < 50 && j < 50);
        }
    }
}
