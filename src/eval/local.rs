//! Local features for spatial verification: the strongest locations of the backbone's last
//! feature map, at every extraction scale, each with the centre of its cell in the described
//! image's pixels and its channel vector, L2-normalised and quantised to int8.
//!
//! Selection: a location's strength is the L2 norm of its channel vector (post-ReLU
//! activations: strong where the network sees structure); the `n` strongest over all scales are
//! kept, ties by scale order then raster order. Locations of norm 0 are never features, and a
//! constant image (blank, one colour) has none: its map differs only where the padding is.
//!
//! Storage (`.npz`, numpy reads it): int8 descriptors with one f32 factor per row
//! (`value = q * desc_scale`, the largest magnitude mapped to 127). Integer descriptors make
//! every similarity an exact integer dot product, the same on the CPU and on any GPU whatever
//! the order of the sum, so matching decides the same pairs everywhere (`backend::verify`).

use crate::io::npy::{self, Array, NpzEntry};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Most local features one image may keep: the verification kernel holds a pair's features in
/// shared memory (`backend::VERIFY_MAX_FEATURES`).
pub const MAX_LOCAL: usize = crate::backend::VERIFY_MAX_FEATURES;

/// The local features of a list of images, row ranges by image (`offsets`), in the row order
/// of the global descriptors they were extracted with.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LocalFeatures {
    /// Descriptor length (the feature map's channels).
    pub dim: usize,
    /// `total x dim` quantised unit descriptors.
    pub desc: Vec<i8>,
    /// Per row: the factor that turns `desc` back into the unit vector.
    pub desc_scale: Vec<f32>,
    /// Per row: `(x, y)` of the cell's centre in the described image's pixels (after the
    /// thumbnail and any query crop).
    pub xy: Vec<[f32; 2]>,
    /// Per row: the extraction scale it came from.
    pub scale: Vec<f32>,
    /// Per row: its strength (the channel vector's L2 norm).
    pub strength: Vec<f32>,
    /// Image i's rows are `offsets[i]..offsets[i + 1]`.
    pub offsets: Vec<usize>,
    /// Per image: `(h, w)` of the described image.
    pub image_size: Vec<[usize; 2]>,
}

/// One location of a feature map, before the strongest are chosen.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub strength: f32,
    pub xy: [f32; 2],
    pub scale: f32,
    /// The channel vector, not yet normalised.
    pub desc: Vec<f32>,
}

/// The locations of one image's `c x fh x fw` map (from a `in_h x in_w` input at `scale`)
/// with non-zero strength, strongest first, at most `n` of them.
pub fn candidates(
    map: &[f32],
    (c, fh, fw): (usize, usize, usize),
    (in_h, in_w): (usize, usize),
    scale: f64,
    n: usize,
) -> Vec<Candidate> {
    let plane = fh * fw;
    let mut norm2 = vec![0f32; plane];
    for ch in map.chunks_exact(plane).take(c) {
        for (s, v) in norm2.iter_mut().zip(ch) {
            *s += v * v;
        }
    }
    let mut order: Vec<usize> = (0..plane).filter(|&p| norm2[p] > 0.0).collect();
    order.sort_by(|&a, &b| norm2[b].total_cmp(&norm2[a]).then(a.cmp(&b)));
    order.truncate(n);
    let (sy, sx) = (in_h as f64 / fh as f64, in_w as f64 / fw as f64);
    order
        .into_iter()
        .map(|p| {
            let (r, col) = (p / fw, p % fw);
            Candidate {
                strength: norm2[p].sqrt(),
                xy: [
                    ((col as f64 + 0.5) * sx / scale) as f32,
                    ((r as f64 + 0.5) * sy / scale) as f32,
                ],
                scale: scale as f32,
                desc: (0..c).map(|ch| map[ch * plane + p]).collect(),
            }
        })
        .collect()
}

/// Keeps the `n` strongest of candidates gathered scale by scale (ties: the earlier one).
/// Strongest first, as the file keeps them.
pub fn strongest(mut cands: Vec<Candidate>, n: usize) -> Vec<Candidate> {
    // A stable sort: equal strengths keep their order.
    cands.sort_by(|a, b| b.strength.total_cmp(&a.strength));
    cands.truncate(n);
    cands
}

/// `x` L2-normalised and quantised: `(q, f)` with `q[i] * f` the unit vector's entry; the
/// largest magnitude maps to 127. A zero vector gives zeros and factor 0.
pub fn quantize(x: &[f32]) -> (Vec<i8>, f32) {
    let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt();
    let peak = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if norm == 0.0 || peak == 0.0 || !norm.is_finite() {
        return (vec![0; x.len()], 0.0);
    }
    let q = x
        .iter()
        .map(|v| (v / peak * 127.0).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (q, peak / norm / 127.0)
}

impl LocalFeatures {
    /// No images yet, descriptors of length `dim`.
    pub fn new(dim: usize) -> Self {
        LocalFeatures {
            dim,
            offsets: vec![0],
            ..Default::default()
        }
    }

    /// Number of images.
    pub fn images(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Total number of features.
    pub fn len(&self) -> usize {
        self.desc_scale.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Image i's rows.
    pub fn range(&self, i: usize) -> std::ops::Range<usize> {
        self.offsets[i]..self.offsets[i + 1]
    }

    /// Appends an image of `size` `(h, w)` with its chosen features.
    pub fn push_image(&mut self, size: [usize; 2], feats: &[Candidate]) {
        for f in feats {
            let (q, s) = quantize(&f.desc);
            self.desc.extend_from_slice(&q);
            self.desc_scale.push(s);
            self.xy.push(f.xy);
            self.scale.push(f.scale);
            self.strength.push(f.strength);
        }
        self.image_size.push(size);
        self.offsets.push(self.len());
    }

    /// Appends every image of `other` (same `dim`).
    pub fn append(&mut self, other: &LocalFeatures) -> Result<()> {
        if other.dim != self.dim && other.images() > 0 && self.images() > 0 {
            bail!(
                "local features of length {} and {} cannot be joined",
                self.dim,
                other.dim
            );
        }
        if self.images() == 0 {
            self.dim = other.dim;
        }
        let base = self.len();
        self.desc.extend_from_slice(&other.desc);
        self.desc_scale.extend_from_slice(&other.desc_scale);
        self.xy.extend_from_slice(&other.xy);
        self.scale.extend_from_slice(&other.scale);
        self.strength.extend_from_slice(&other.strength);
        self.image_size.extend_from_slice(&other.image_size);
        self.offsets
            .extend(other.offsets.iter().skip(1).map(|o| o + base));
        Ok(())
    }

    /// The images `rows` (in that order) as a file of their own.
    pub fn select_images(&self, rows: &[usize]) -> LocalFeatures {
        let mut out = LocalFeatures::new(self.dim);
        for &i in rows {
            let r = self.range(i);
            out.desc
                .extend_from_slice(&self.desc[r.start * self.dim..r.end * self.dim]);
            out.desc_scale
                .extend_from_slice(&self.desc_scale[r.clone()]);
            out.xy.extend_from_slice(&self.xy[r.clone()]);
            out.scale.extend_from_slice(&self.scale[r.clone()]);
            out.strength.extend_from_slice(&self.strength[r]);
            out.image_size.push(self.image_size[i]);
            out.offsets.push(out.len());
        }
        out
    }

    /// Writes the `.npz` (arrays `desc` int8, `desc_scale`, `xy`, `scale`, `strength` f32,
    /// `offsets`, `image_size` int64), atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let total = self.len();
        let i64s = |v: Vec<usize>| v.into_iter().map(|x| x as i64).collect::<Vec<_>>();
        let desc = Array::new(vec![total, self.dim], self.desc.clone())?;
        let desc_scale = Array::new(vec![total], self.desc_scale.clone())?;
        let xy = Array::new(vec![total, 2], self.xy.iter().flatten().copied().collect())?;
        let scale = Array::new(vec![total], self.scale.clone())?;
        let strength = Array::new(vec![total], self.strength.clone())?;
        let offsets = Array::new(vec![self.offsets.len()], i64s(self.offsets.clone()))?;
        let size = Array::new(
            vec![self.images(), 2],
            i64s(self.image_size.iter().flatten().copied().collect()),
        )?;
        npy::write_npz(
            path,
            &[
                NpzEntry::I8("desc", &desc),
                NpzEntry::F32("desc_scale", &desc_scale),
                NpzEntry::F32("xy", &xy),
                NpzEntry::F32("scale", &scale),
                NpzEntry::F32("strength", &strength),
                NpzEntry::I64("offsets", &offsets),
                NpzEntry::I64("image_size", &size),
            ],
        )
        .with_context(|| format!("writing local features {}", path.display()))
    }

    /// Reads a file of [`LocalFeatures::save`], checking that its arrays agree.
    pub fn load(path: &Path) -> Result<LocalFeatures> {
        let name = path.display().to_string();
        let desc = npy::read_npz::<i8>(path, "desc")?;
        let (total, dim) = desc.dims2(&format!("{name}[desc]"))?;
        let desc_scale = npy::read_npz::<f32>(path, "desc_scale")?.data;
        let xy = npy::read_npz::<f32>(path, "xy")?.data;
        let scale = npy::read_npz::<f32>(path, "scale")?.data;
        let strength = npy::read_npz::<f32>(path, "strength")?.data;
        let offsets = npy::read_npz::<i64>(path, "offsets")?.data;
        let size = npy::read_npz::<i64>(path, "image_size")?.data;
        let corrupt = |what: &str| {
            anyhow::anyhow!(
                "{name}: {what}; the file is not one `insclr-cu extract --local` wrote, extract again"
            )
        };
        if desc_scale.len() != total
            || xy.len() != 2 * total
            || scale.len() != total
            || strength.len() != total
        {
            return Err(corrupt("the per-feature arrays disagree in length"));
        }
        if offsets.first() != Some(&0)
            || offsets.last() != Some(&(total as i64))
            || offsets.windows(2).any(|w| w[1] < w[0])
            || size.len() != 2 * (offsets.len() - 1)
        {
            return Err(corrupt("offsets do not split the features into images"));
        }
        if offsets
            .windows(2)
            .any(|w| (w[1] - w[0]) as usize > MAX_LOCAL)
        {
            return Err(corrupt(&format!(
                "an image has more than {MAX_LOCAL} features"
            )));
        }
        if let Some(p) = xy.iter().chain(&desc_scale).position(|v| !v.is_finite()) {
            return Err(corrupt(&format!(
                "value {p} of xy/desc_scale is not finite"
            )));
        }
        Ok(LocalFeatures {
            dim,
            desc: desc.data,
            desc_scale,
            xy: xy.chunks_exact(2).map(|c| [c[0], c[1]]).collect(),
            scale,
            strength,
            offsets: offsets.into_iter().map(|o| o as usize).collect(),
            image_size: size
                .chunks_exact(2)
                .map(|c| [c[0].max(0) as usize, c[1].max(0) as usize])
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantised_unit_vectors_keep_their_dot_products() {
        let mut rng = crate::rng::Rng::new(5);
        let x: Vec<f32> = (0..512).map(|_| rng.normal()).collect();
        let y: Vec<f32> = x.iter().map(|v| v + 0.5 * rng.normal()).collect();
        let unit = |v: &[f32]| {
            let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
            v.iter().map(|a| a / n).collect::<Vec<f32>>()
        };
        let exact: f32 = unit(&x).iter().zip(unit(&y)).map(|(a, b)| a * b).sum();
        let ((qx, fx), (qy, fy)) = (quantize(&x), quantize(&y));
        let dot: i32 = qx.iter().zip(&qy).map(|(&a, &b)| a as i32 * b as i32).sum();
        let approx = dot as f32 * fx * fy;
        assert!((approx - exact).abs() < 0.01, "{approx} vs {exact}");
        assert_eq!(quantize(&[0.0; 4]), (vec![0; 4], 0.0));
    }

    #[test]
    fn the_strongest_cells_are_kept_with_their_centres() {
        // 2 channels, 2 x 3 map from a 40 x 60 input at scale 0.5: cells are 20 px of the
        // scaled image, 40 px of the described one.
        let map = [
            1.0, 0.0, 3.0, 0.0, 0.0, 0.0, //
            0.0, 0.0, 4.0, 0.0, 2.0, 0.0,
        ];
        let c = candidates(&map, (2, 2, 3), (40, 60), 0.5, 10);
        assert_eq!(c.len(), 3, "zero cells are not features");
        assert_eq!(c[0].strength, 5.0);
        assert_eq!(c[0].xy, [100.0, 20.0]);
        assert_eq!(c[0].desc, vec![3.0, 4.0]);
        assert_eq!(c[1].xy, [60.0, 60.0]);
        assert_eq!(c[2].xy, [20.0, 20.0]);
        let s = strongest(c.into_iter().rev().collect(), 2);
        assert_eq!(
            s.iter().map(|f| f.strength).collect::<Vec<_>>(),
            vec![5.0, 2.0]
        );
    }

    #[test]
    fn files_round_trip_and_bad_offsets_are_refused() {
        let dir = std::env::temp_dir().join(format!("insclr-local-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.local.npz");
        let mut l = LocalFeatures::new(3);
        let cand = |s: f32| Candidate {
            strength: s,
            xy: [s, 2.0 * s],
            scale: 1.0,
            desc: vec![s, -1.0, 0.5],
        };
        l.push_image([10, 20], &[cand(1.0), cand(2.0)]);
        l.push_image([5, 5], &[]);
        l.push_image([7, 8], &[cand(3.0)]);
        l.save(&f).unwrap();
        assert_eq!(LocalFeatures::load(&f).unwrap(), l);
        let two = l.select_images(&[2, 0]);
        assert_eq!(two.offsets, vec![0, 1, 3]);
        assert_eq!(two.image_size, vec![[7, 8], [10, 20]]);
        let mut joined = l.select_images(&[0]);
        joined.append(&l.select_images(&[1, 2])).unwrap();
        assert_eq!(joined, l);
        let mut bad = l.clone();
        bad.offsets[1] = 3;
        bad.offsets[2] = 2;
        bad.save(&f).unwrap();
        let e = format!("{:#}", LocalFeatures::load(&f).unwrap_err());
        assert!(e.contains("offsets"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
