//! Spatial verification of image pairs from local features (kernels/verify.cu): mutual
//! nearest-neighbour matches of int8 descriptors with a ratio test, then RANSAC over a
//! similarity transform. Integer similarities and unfused geometry make every backend decide
//! the same matches, inliers and model.

use super::{check_dtypes, check_len, not_implemented, Backend, Buf, Checked, DType, Op};
use anyhow::{bail, Result};

/// Most local features of one image the kernel holds in shared memory.
pub const VERIFY_MAX_FEATURES: usize = 256;

/// The settings of a verification.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Verify {
    /// Descriptor length, a multiple of 4.
    pub dim: usize,
    /// A match's similarity floor.
    pub min_similarity: f32,
    /// Lowe's ratio on descriptor distances: the best must be closer than `ratio` times the
    /// runner-up (1 keeps all but exact ties).
    pub ratio: f32,
    /// A match is an inlier when the model maps it within this many pixels of its partner.
    pub inlier_px: f32,
    /// Largest scale change a model may have (and its inverse the smallest).
    pub max_scale: f32,
    /// RANSAC hypotheses per pair (every ordered pair of matches when there are fewer).
    pub hypotheses: usize,
    pub seed: u64,
}

impl Default for Verify {
    /// Settings chosen on the benchmark photos and a rotated crop (docs/verify.md): every
    /// mutual match but exact ties, inliers within 3/4 of a stride-32 feature cell.
    fn default() -> Self {
        Verify {
            dim: 0,
            min_similarity: 0.0,
            ratio: 1.0,
            inlier_px: 24.0,
            max_scale: 4.0,
            hypotheses: 1024,
            seed: 0,
        }
    }
}

/// The f32 constants the kernel and its twin compare with, computed once here.
#[derive(Clone, Copy, Debug)]
pub struct VerifyConsts {
    pub ratio2: f32,
    pub thr2: f32,
    pub max_scale2: f32,
}

impl Verify {
    pub fn consts(&self) -> VerifyConsts {
        VerifyConsts {
            ratio2: self.ratio * self.ratio,
            thr2: self.inlier_px * self.inlier_px,
            max_scale2: self.max_scale * self.max_scale,
        }
    }

    fn check(
        self,
        feats: (&Buf, &Buf, &Buf),
        offsets: &[usize],
        pairs: &[[u32; 2]],
        out: (&Buf, &Buf, &Buf),
    ) -> Result<Checked<Self>> {
        let (desc, scale, xy) = feats;
        let (matches, inliers, model) = out;
        if self.dim == 0 || self.dim % 4 != 0 {
            bail!(
                "verification: descriptor length {} is not a positive multiple of 4",
                self.dim
            );
        }
        if !(self.ratio > 0.0 && self.inlier_px >= 0.0 && self.max_scale >= 1.0) {
            bail!("{self:?}: ratio must be > 0, inlier_px >= 0, max_scale >= 1");
        }
        if self.hypotheses > i32::MAX as usize {
            bail!("verification: {} hypotheses", self.hypotheses);
        }
        let total = scale.len();
        check_len(&self, total * self.dim, &[desc])?;
        check_len(&self, total * 2, &[xy])?;
        if offsets.first() != Some(&0)
            || offsets.last() != Some(&total)
            || offsets.windows(2).any(|w| w[1] < w[0])
        {
            bail!("verification: offsets do not split the {total} features into images");
        }
        if let Some(w) = offsets
            .windows(2)
            .find(|w| w[1] - w[0] > VERIFY_MAX_FEATURES)
        {
            bail!(
                "verification: an image has {} features, at most {VERIFY_MAX_FEATURES}",
                w[1] - w[0]
            );
        }
        let images = offsets.len() - 1;
        if let Some(p) = pairs.iter().flatten().find(|&&i| i as usize >= images) {
            bail!("verification: pair names image {p} of {images}");
        }
        check_len(&self, pairs.len(), &[matches, inliers])?;
        check_len(&self, pairs.len() * 4, &[model])?;
        check_dtypes(
            &self,
            &[
                (desc, DType::I8),
                (scale, DType::F32),
                (xy, DType::F32),
                (matches, DType::I32),
                (inliers, DType::I32),
                (model, DType::F32),
            ],
        )?;
        Ok(Checked(self))
    }
}

/// `q = [a -b; b a] p + t`, as `[a, b, tx, ty]`.
pub type Similarity = [f32; 4];

/// What verifying one pair found.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PairResult {
    /// Mutual matches.
    pub matches: i32,
    /// Matches the best model maps within `inlier_px` (0 without a model).
    pub inliers: i32,
    /// The best model (zeros without one).
    pub model: Similarity,
}

/// The features a verification reads: `desc` (`total x dim` i8), `desc_scale` (`total` f32),
/// `xy` (`total x 2` f32), image i's rows `offsets[i]..offsets[i + 1]`.
pub struct VerifyFeatures<'a> {
    pub desc: &'a Buf,
    pub desc_scale: &'a Buf,
    pub xy: &'a Buf,
    pub offsets: &'a [usize],
}

/// Per pair: the mutual matches' count (i32), the inliers of the best model (i32) and the
/// model `(a, b, tx, ty)` (4 x f32), `q = [a -b; b a] p + t`.
pub struct VerifyOut<'a> {
    pub matches: &'a mut Buf,
    pub inliers: &'a mut Buf,
    pub model: &'a mut Buf,
}

/// What a backend implements for this family.
pub trait VerifyOps {
    /// See [`Verify`].
    fn verify(
        &self,
        _f: &VerifyFeatures,
        _pairs: &[[u32; 2]],
        _out: &mut VerifyOut,
        _s: Checked<Verify>,
    ) -> Result<()> {
        Err(not_implemented(Op::Verify))
    }
}

impl dyn Backend + '_ {
    /// Verifies every pair `(a, b)` of images of `f`: matches, inliers, model ([`VerifyOut`]).
    pub fn verify(
        &self,
        f: &VerifyFeatures,
        pairs: &[[u32; 2]],
        out: &mut VerifyOut,
        s: Verify,
    ) -> Result<()> {
        let s = s.check(
            (f.desc, f.desc_scale, f.xy),
            f.offsets,
            pairs,
            (&*out.matches, &*out.inliers, &*out.model),
        )?;
        self.require(Op::Verify, DType::I8)?;
        self.verify_ops().verify(f, pairs, out, s)
    }
}
