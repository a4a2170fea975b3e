//! The training images of a stage: their paths (dataset index = position in the list), decoded
//! copies when cached, and which ones could not be decoded.
//!
//! Images that do not decode (or have no pixels) are skipped, counted and listed: training
//! never makes them anchors, and removes them from every candidate-pool row
//! ([`crate::mining::CandidatePool::without`]) so they never enter a tuple or mining.

use super::image::{decode_all, decode_rgb, Skipped};
use super::image_paths;
use anyhow::{bail, Result};
use image::RgbImage;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// The training images: paths (dataset index = position), decoded copies when cached, and
/// which ones could not be decoded.
pub struct Dataset {
    pub paths: Vec<PathBuf>,
    cache: Vec<Option<RgbImage>>,
    /// `bad[i]`: image `i` did not decode and is never used.
    pub bad: Vec<bool>,
    pub skipped: Skipped,
}

impl Dataset {
    /// Lists `root` (every image, sorted) or the list file `list` (paths relative to `root`),
    /// decodes everything once (to find corrupt files) and keeps the images when `cache`
    /// (otherwise each step decodes its images again, as the original's data loader).
    pub fn open(root: &Path, list: Option<&Path>, cache: bool) -> Result<Dataset> {
        let paths = image_paths(root, list)?;
        let mut bad = vec![true; paths.len()];
        let mut imgs: Vec<Option<RgbImage>> = vec![None; paths.len()];
        let skipped = if cache {
            let (ok, mut skipped) = decode_all(&paths);
            for (i, img) in ok {
                if let Err(e) = non_empty(&img) {
                    skipped.push(i, &paths[i], &e);
                    continue;
                }
                bad[i] = false;
                imgs[i] = Some(img);
            }
            skipped
        } else {
            // One decode per image to find the corrupt ones, keeping nothing (GLDv2-sized
            // lists do not fit in memory decoded).
            let errs: Vec<Option<anyhow::Error>> = paths
                .par_iter()
                .map(|p| decode_rgb(p).and_then(|img| non_empty(&img)).err())
                .collect();
            let mut skipped = Skipped::default();
            for (i, e) in errs.into_iter().enumerate() {
                match e {
                    None => bad[i] = false,
                    Some(e) => skipped.push(i, &paths[i], &e),
                }
            }
            skipped
        };
        Ok(Dataset {
            paths,
            cache: imgs,
            bad,
            skipped,
        })
    }

    /// A dataset of in-memory images (tests, generated data).
    pub fn from_images(images: Vec<RgbImage>) -> Dataset {
        let n = images.len();
        Dataset {
            paths: (0..n)
                .map(|i| PathBuf::from(format!("<image {i}>")))
                .collect(),
            cache: images.into_iter().map(Some).collect(),
            bad: vec![false; n],
            skipped: Skipped::default(),
        }
    }

    /// Number of images (dataset size N, bad ones included).
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// True when there is no image.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    pub fn image(&self, i: usize) -> Result<std::borrow::Cow<'_, RgbImage>> {
        match &self.cache[i] {
            Some(img) => Ok(std::borrow::Cow::Borrowed(img)),
            None => Ok(std::borrow::Cow::Owned(decode_rgb(&self.paths[i])?)),
        }
    }
}

/// A 0-pixel image cannot be cropped; it is skipped like a corrupt one.
fn non_empty(img: &RgbImage) -> Result<()> {
    if img.width() == 0 || img.height() == 0 {
        bail!("image has no pixels ({}x{})", img.width(), img.height());
    }
    Ok(())
}
