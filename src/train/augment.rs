//! The training views (spec 4.3): `RandomResizedCrop(size, scale, ratio=(0.75, 1.33))` with
//! torchvision's sampling *and its fallback* (frequent with the base stages' scale upper bound
//! 1.33 > 1, G17), `RandomHorizontalFlip(0.5)`, then normalisation; and the no-DA view, an exact
//! `Resize((h, w))` ignoring the aspect ratio (G4).
//!
//! Resampling is a triangle (bilinear) filter widened on downscale, as PIL's bilinear
//! resize with antialiasing; not bit-identical to PIL (G25 style: random views are not matched
//! bit for bit anyway).

pub use crate::data::image::resize_exact;
use crate::rng::Rng;
use image::{imageops, RgbImage};

/// torchvision's default aspect-ratio range as the original writes it (not 3/4, 4/3).
pub const RATIO: (f64, f64) = (0.75, 1.33);

/// A crop box: `top, left, height, width` in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropBox {
    pub top: u32,
    pub left: u32,
    pub h: u32,
    pub w: u32,
}

/// Python's `round` (half to even), which torchvision applies to the crop sides.
fn round_half_even(x: f64) -> i64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && (r as i64) % 2 != 0 {
        (r - x.signum()) as i64
    } else {
        r as i64
    }
}

/// torchvision `RandomResizedCrop.get_params` for a `width x height` image: up to 10 draws of
/// an area fraction in `scale` and a log-uniform aspect ratio in `ratio`; the first box that
/// fits is placed uniformly; otherwise the centre crop of the fallback.
pub fn rrc_params(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut Rng,
) -> CropBox {
    let (wf, hf) = (width as f64, height as f64);
    let area = wf * hf;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * (scale.0 + (scale.1 - scale.0) * rng.uniform());
        let ar = (lr0 + (lr1 - lr0) * rng.uniform()).exp();
        let w = round_half_even((target * ar).sqrt());
        let h = round_half_even((target / ar).sqrt());
        if 0 < w && w <= width as i64 && 0 < h && h <= height as i64 {
            let (w, h) = (w as u32, h as u32);
            // torch.randint(0, H - h + 1): inclusive of H - h.
            let top = rng.below((height - h + 1) as usize) as u32;
            let left = rng.below((width - w + 1) as usize) as u32;
            return CropBox { top, left, h, w };
        }
    }
    let in_ratio = wf / hf;
    let (w, h) = if in_ratio < ratio.0 {
        (width, round_half_even(wf / ratio.0) as u32)
    } else if in_ratio > ratio.1 {
        (round_half_even(hf * ratio.1) as u32, height)
    } else {
        (width, height)
    };
    let (w, h) = (w.clamp(1, width), h.clamp(1, height));
    CropBox {
        top: (height - h) / 2,
        left: (width - w) / 2,
        h,
        w,
    }
}

/// One augmented training view: random resized crop to `size` (`[h, w]`), flip with p = 0.5.
pub fn train_view(img: &RgbImage, size: [usize; 2], scale: (f64, f64), rng: &mut Rng) -> RgbImage {
    let b = rrc_params(img.width(), img.height(), scale, RATIO, rng);
    let crop = imageops::crop_imm(img, b.left, b.top, b.w, b.h).to_image();
    let mut out = resize_exact(&crop, size[0], size[1]);
    if rng.uniform() < 0.5 {
        imageops::flip_horizontal_in_place(&mut out);
    }
    out
}

/// `ToTensor` + `Normalize(mean, std)` into `out` (`3 x h x w`, channel-major).
pub fn to_tensor(img: &RgbImage, mean: [f32; 3], std: [f32; 3], out: &mut [f32]) {
    let hw = (img.width() * img.height()) as usize;
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * hw + i] = (px[c] as f32 / 255.0 - mean[c]) / std[c];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_rounding_is_half_to_even() {
        let r: Vec<i64> = [0.5, 1.5, 2.5, 2.4, 2.6, 3.5]
            .iter()
            .map(|&x| round_half_even(x))
            .collect();
        assert_eq!(r, vec![0, 2, 2, 2, 3, 4]);
    }

    #[test]
    fn crops_stay_inside_and_cover_the_requested_area() {
        let mut rng = Rng::new(3);
        let (w, h) = (200u32, 120u32);
        for _ in 0..2000 {
            let b = rrc_params(w, h, (0.4, 1.0), RATIO, &mut rng);
            assert!(b.w >= 1 && b.h >= 1);
            assert!(
                b.left + b.w <= w && b.top + b.h <= h,
                "{b:?} outside {w}x{h}"
            );
        }
        // Sampled (non-fallback) boxes have area within the scale range up to rounding.
        let mut rng = Rng::new(4);
        let mut seen_left_edge = (false, false);
        for _ in 0..5000 {
            let b = rrc_params(w, h, (0.1, 0.2), RATIO, &mut rng);
            let frac = (b.w * b.h) as f64 / (w * h) as f64;
            assert!((0.08..0.23).contains(&frac), "area fraction {frac}");
            let ar = b.w as f64 / b.h as f64;
            assert!((0.68..1.45).contains(&ar), "aspect {ar}");
            seen_left_edge.0 |= b.left == 0;
            seen_left_edge.1 |= b.left + b.w == w;
        }
        assert!(
            seen_left_edge.0 && seen_left_edge.1,
            "both extreme positions are reachable"
        );
    }

    #[test]
    fn scale_above_one_falls_back_to_a_centre_crop() {
        // Every draw asks for more area than the image has: always the fallback.
        let mut rng = Rng::new(5);
        for _ in 0..100 {
            // Wide image, ratio 2 > 1.33: full height, width round(h * 1.33).
            let b = rrc_params(300, 150, (1.5, 2.0), RATIO, &mut rng);
            assert_eq!((b.h, b.w), (150, 200));
            assert_eq!((b.top, b.left), (0, 50));
            // Tall image, ratio 0.5 < 0.75: full width, height round(w / 0.75).
            let b = rrc_params(150, 300, (1.5, 2.0), RATIO, &mut rng);
            assert_eq!((b.w, b.h), (150, 200));
            assert_eq!((b.top, b.left), (50, 0));
            // In-range ratio: the whole image.
            let b = rrc_params(100, 90, (1.5, 2.0), RATIO, &mut rng);
            assert_eq!(
                b,
                CropBox {
                    top: 0,
                    left: 0,
                    h: 90,
                    w: 100
                }
            );
        }
        // The base stages' (0.75, 1.33) falls back often but not always.
        let mut rng = Rng::new(6);
        let full = (0..1000)
            .filter(|_| {
                rrc_params(100, 90, (0.75, 1.33), RATIO, &mut rng)
                    == CropBox {
                        top: 0,
                        left: 0,
                        h: 90,
                        w: 100,
                    }
            })
            .count();
        assert!(full > 0 && full < 1000, "fallback count {full}");
    }

    #[test]
    fn views_have_the_requested_size_and_are_seeded() {
        let img = RgbImage::from_fn(64, 40, |x, y| image::Rgb([x as u8 * 3, y as u8 * 5, 7]));
        let a = train_view(&img, [24, 32], (0.4, 1.0), &mut Rng::new(9));
        let b = train_view(&img, [24, 32], (0.4, 1.0), &mut Rng::new(9));
        assert_eq!((a.width(), a.height()), (32, 24));
        assert_eq!(a, b);
        let mut t = vec![0.0; 3 * 24 * 32];
        to_tensor(&a, [0.5; 3], [0.25; 3], &mut t);
        assert!((t[2 * 24 * 32] - (7.0 / 255.0 - 0.5) / 0.25).abs() < 1e-6);
        let n = resize_exact(&img, 50, 10);
        assert_eq!((n.width(), n.height()), (10, 50));
    }
}
