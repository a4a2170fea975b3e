//! Image decoding and the evaluation-side geometry of the original (spec 6.1): decode any file
//! to RGB, PIL-style `thumbnail` (aspect kept, only downscales, antialiased Lanczos), PIL-style
//! `crop` with float boxes, ImageNet normalisation to a CHW tensor, and bilinear resize of that
//! tensor with a scale factor (`torch.nn.functional.interpolate`, `align_corners=False`).

use anyhow::{bail, Context, Result};
use image::{imageops::FilterType, RgbImage};
use std::path::{Path, PathBuf};

/// torchvision's ImageNet mean, RGB.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// torchvision's ImageNet standard deviation, RGB.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// File extensions treated as images when a folder is listed.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp", "ppm", "pgm", "pnm",
];

/// Reads a whole image file and guesses its format from the bytes. A JPEG that stops before
/// its end-of-image marker is refused here: the JPEG decoder would fill the missing part with
/// grey and say nothing (PIL refuses such files too: "image file is truncated").
fn open_image(path: &Path) -> Result<image::ImageReader<std::io::Cursor<Vec<u8>>>> {
    let bytes = std::fs::read(path).with_context(|| format!("opening image {}", path.display()))?;
    let n = bytes.len();
    if image::guess_format(&bytes).ok() == Some(image::ImageFormat::Jpeg)
        && !jpeg_is_complete(&bytes)
    {
        bail!(
            "image {} is truncated: its JPEG data stops at byte {n} without the end-of-image marker (a partial download or copy?); fetch it again or drop it from the list",
            path.display()
        );
    }
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .with_context(|| format!("reading image {}", path.display()))?;
    Ok(reader)
}

/// Why decoding failed, in words: a file that ends early says "truncated".
fn decode_error(path: &Path, e: image::ImageError) -> anyhow::Error {
    if let image::ImageError::IoError(io) = &e {
        if io.kind() == std::io::ErrorKind::UnexpectedEof {
            return anyhow::anyhow!(
                "image {} is truncated: the file ends before its image data does ({e}); fetch it again or drop it from the list",
                path.display()
            );
        }
    }
    if let image::ImageError::Limits(_) = &e {
        // The header was read (the decoder sized the image from it): say how large it is.
        let size = image::ImageReader::open(path)
            .ok()
            .and_then(|r| r.with_guessed_format().ok())
            .and_then(|r| r.into_dimensions().ok())
            .map_or("its size".to_string(), |(w, h)| format!("{w} x {h} pixels"));
        return anyhow::anyhow!(
            "image {} is too large: {size}, more than the decoder will hold in memory ({e}); downscale it, or drop it from the list",
            path.display()
        );
    }
    anyhow::Error::new(e).context(format!(
        "decoding image {}: corrupt or unsupported format (supported: {}); re-encode it or drop it from the list",
        path.display(),
        IMAGE_EXTENSIONS.join(", ")
    ))
}

/// True when a JPEG's marker stream reaches its end-of-image marker (FF D9). Walks the segments
/// (skipping each one's length) and the entropy-coded data after each start-of-scan, where FF 00
/// is a stuffed byte and FF D0..D7 restart markers; stray bytes between segments are skipped as
/// libjpeg does. Data after the end marker (camera trailers) is allowed.
pub fn jpeg_is_complete(b: &[u8]) -> bool {
    let mut i = 2; // after SOI
    while i + 1 < b.len() {
        if b[i] != 0xFF {
            i += 1;
            continue;
        }
        let m = b[i + 1];
        match m {
            0xD9 => return true,
            // Fill bytes, stuffed zero, restart markers, TEM: no length follows.
            0xFF => i += 1,
            0x00 | 0xD0..=0xD8 | 0x01 => i += 2,
            _ => {
                let Some(len) = b.get(i + 2..i + 4) else {
                    return false;
                };
                // A start-of-scan's entropy-coded data follows its header: the byte-by-byte
                // scan above walks it until the next real marker.
                i += 2 + u16::from_be_bytes([len[0], len[1]]) as usize;
            }
        }
    }
    false
}

/// Width and height of an image file from its header, after the same checks as
/// [`decode_rgb`] short of decoding (a truncated JPEG is refused): cheap enough to run over
/// a whole list before hours of extraction.
pub fn probe(path: &Path) -> Result<(u32, u32)> {
    open_image(path)?
        .into_dimensions()
        .map_err(|e| decode_error(path, e))
}

/// Decodes any supported image file (format guessed from its bytes, not its name) to 8-bit RGB,
/// as PIL's `Image.open(path).convert("RGB")` does for grey, palette, alpha and 16-bit files.
/// A truncated file is an error that says so.
pub fn decode_rgb(path: &Path) -> Result<RgbImage> {
    let img = open_image(path)?
        .decode()
        .map_err(|e| decode_error(path, e))?;
    Ok(img.to_rgb8())
}

/// Files that could not be used, with the reason; long jobs skip them and report them at the end.
#[derive(Debug, Default, Clone)]
pub struct Skipped {
    /// (position in the input list, file, one-line reason).
    pub items: Vec<(usize, PathBuf, String)>,
}

impl Skipped {
    /// Records one skipped file.
    pub fn push(&mut self, index: usize, path: &Path, err: &anyhow::Error) {
        self.items
            .push((index, path.to_path_buf(), format!("{err:#}")));
    }

    /// Number of skipped files.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing was skipped.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// A human summary: the count, then up to `max_listed` files with their reasons.
    pub fn summary(&self, max_listed: usize) -> String {
        let mut s = format!("{} image(s) skipped", self.items.len());
        for (i, p, why) in self.items.iter().take(max_listed) {
            s.push_str(&format!("\n  #{i} {}: {why}", p.display()));
        }
        if self.items.len() > max_listed {
            s.push_str(&format!(
                "\n  ... and {} more",
                self.items.len() - max_listed
            ));
        }
        s
    }
}

/// Decodes every file, returning the images that decoded (with their list positions) and the
/// ones that did not, so a job keeps going past a corrupt file but says so.
pub fn decode_all(paths: &[PathBuf]) -> (Vec<(usize, RgbImage)>, Skipped) {
    use rayon::prelude::*;
    let results: Vec<(usize, Result<RgbImage>)> = paths
        .par_iter()
        .enumerate()
        .map(|(i, p)| (i, decode_rgb(p)))
        .collect();
    let mut ok = Vec::new();
    let mut skipped = Skipped::default();
    for (i, r) in results {
        match r {
            Ok(img) => ok.push((i, img)),
            Err(e) => skipped.push(i, &paths[i], &e),
        }
    }
    (ok, skipped)
}

/// Lists the image files of a folder (recursively), sorted by path, for `extract --images DIR`.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).with_context(|| format!("listing folder {}", d.display()))?;
        for e in entries {
            let p = e
                .with_context(|| format!("listing folder {}", d.display()))?
                .path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    if out.is_empty() {
        bail!(
            "no image files ({}) under {}",
            IMAGE_EXTENSIONS.join(", "),
            dir.display()
        );
    }
    Ok(out)
}

/// The size PIL's `Image.thumbnail((max_w, max_h))` picks (Pillow >= 9): aspect ratio kept,
/// rounded to the side whose aspect error is smallest, never upscaled. `None` means unchanged.
pub fn thumbnail_size(w: u32, h: u32, max_w: u32, max_h: u32) -> Option<(u32, u32)> {
    if max_w >= w && max_h >= h {
        return None;
    }
    let aspect = w as f64 / h as f64;
    let (x, y) = (max_w as f64, max_h as f64);
    // Pillow's `round_aspect`: of floor and ceil, the one with the smaller aspect error, >= 1.
    let pick = |v: f64, err: &dyn Fn(f64) -> f64| -> u32 {
        let (lo, hi) = (v.floor(), v.ceil());
        let best = if err(hi) < err(lo) { hi } else { lo };
        best.max(1.0) as u32
    };
    if x / y >= aspect {
        let nx = pick(y * aspect, &|n| (aspect - n / y).abs());
        Some((nx, max_h))
    } else {
        let ny = pick(x / aspect, &|n| {
            if n == 0.0 {
                0.0
            } else {
                (aspect - x / n).abs()
            }
        });
        Some((max_w, ny))
    }
}

/// PIL's `thumbnail((size, size), ANTIALIAS)`: fit inside `size x size` keeping the aspect ratio,
/// only ever downscaling, with an antialiased Lanczos-3 filter. `size` may be fractional (the
/// query-crop rule passes `1024 * max(crop) / max(full)`); PIL floors it.
///
/// Deliberate difference: Pillow's thumbnail also uses JPEG draft decoding and a box `reduce`
/// pre-pass (`reducing_gap = 2`) for large factors; we resample the full image once. Measured
/// against Pillow 13.0 on six demo photos: sizes identical; mean absolute difference 0.002-0.52
/// grey levels; max 4-17, and 27 on a JPEG reduced 5x (where Pillow decodes a JPEG draft).
pub fn thumbnail(img: &RgbImage, size: f64) -> RgbImage {
    let s = size.floor().max(1.0) as u32;
    match thumbnail_size(img.width(), img.height(), s, s) {
        None => img.clone(),
        Some((w, h)) => image::imageops::resize(img, w, h, FilterType::Lanczos3),
    }
}

/// Python's `round` (half to even), which PIL's `crop` applies to float boxes.
fn round_half_even(v: f64) -> i64 {
    let r = v.round();
    if (v - v.trunc()).abs() == 0.5 && (r as i64) % 2 != 0 {
        (r - v.signum()) as i64
    } else {
        r as i64
    }
}

/// A float box rounded as PIL's `crop` rounds it: (left, top, width, height), never empty.
fn crop_box(bbx: [f64; 4]) -> Result<(i64, i64, u32, u32)> {
    let [x0, y0, x1, y1] = bbx.map(round_half_even);
    if x1 <= x0 || y1 <= y0 {
        bail!(
            "crop box {bbx:?} is empty after rounding to ({x0}, {y0}, {x1}, {y1}); boxes are (x1, y1, x2, y2) with x2 > x1 and y2 > y1"
        );
    }
    Ok((x0, y0, (x1 - x0) as u32, (y1 - y0) as u32))
}

/// PIL's `Image.crop((x1, y1, x2, y2))`: float coordinates rounded half-to-even, the right and
/// bottom edges exclusive; parts of the box outside the image are black, as in PIL.
pub fn crop(img: &RgbImage, bbx: [f64; 4]) -> Result<RgbImage> {
    let (x0, y0, w, h) = crop_box(bbx)?;
    let mut out = RgbImage::new(w, h);
    for y in 0..h {
        let sy = y0 + y as i64;
        if sy < 0 || sy >= img.height() as i64 {
            continue;
        }
        for x in 0..w {
            let sx = x0 + x as i64;
            if sx >= 0 && sx < img.width() as i64 {
                out.put_pixel(x, y, *img.get_pixel(sx as u32, sy as u32));
            }
        }
    }
    Ok(out)
}

/// A `channels x height x width` f32 tensor (one image of an NCHW batch).
#[derive(Clone, Debug, PartialEq)]
pub struct Chw {
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// `c * h * w` values, channel-major.
    pub data: Vec<f32>,
}

/// Per-channel input normalisation `(v / 255 - mean) / std` that a model's weights expect.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PixelNorm {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl PixelNorm {
    /// torchvision's ImageNet statistics (ResNets, the original's transforms).
    pub const IMAGENET: PixelNorm = PixelNorm {
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    };
    /// The EfficientNet-Lite weights' `(x - 127) / 128`.
    pub const LITE: PixelNorm = PixelNorm {
        mean: [127.0 / 255.0; 3],
        std: [128.0 / 255.0; 3],
    };
}

/// torchvision `ToTensor` + `Normalize(mean, std)`: `(v / 255 - mean) / std`.
pub fn normalize(img: &RgbImage, norm: PixelNorm) -> Chw {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut data = vec![0.0f32; 3 * h * w];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            data[c * h * w + i] = (px[c] as f32 / 255.0 - norm.mean[c]) / norm.std[c];
        }
    }
    Chw { c: 3, h, w, data }
}

/// [`normalize`] with the ImageNet statistics.
pub fn normalize_imagenet(img: &RgbImage) -> Chw {
    normalize(img, PixelNorm::IMAGENET)
}

/// Output length of `interpolate(scale_factor = s)` along a side: `floor(s * size)`.
pub fn scaled_len(size: usize, s: f64) -> usize {
    (s * size as f64).floor() as usize
}

/// Source index table of PyTorch's bilinear `align_corners=False` when the scale factor is
/// given (its reciprocal maps coordinates, not the size ratio; spec G18).
fn bilinear_taps(in_len: usize, out_len: usize, s: f64) -> Vec<(usize, usize, f32)> {
    let inv = 1.0 / s;
    (0..out_len)
        .map(|o| {
            let src = ((o as f64 + 0.5) * inv - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(in_len - 1);
            let i1 = if i0 + 1 < in_len { i0 + 1 } else { i0 };
            (i0, i1, (src - i0 as f64) as f32)
        })
        .collect()
}

/// `F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)` on one CHW tensor
/// (no antialias, as the original). Scale 1 returns the input unchanged.
pub fn resize_bilinear(x: &Chw, s: f64) -> Result<Chw> {
    if !(s.is_finite() && s > 0.0) {
        bail!("scale {s} is not a positive number; scales are like 1,0.7071,0.5");
    }
    if s == 1.0 {
        return Ok(x.clone());
    }
    let (oh, ow) = (scaled_len(x.h, s), scaled_len(x.w, s));
    if oh == 0 || ow == 0 {
        bail!(
            "scale {s} turns a {}x{} image into {oh}x{ow}; use a larger scale or image",
            x.w,
            x.h
        );
    }
    let ty = bilinear_taps(x.h, oh, s);
    let tx = bilinear_taps(x.w, ow, s);
    let mut data = vec![0.0f32; x.c * oh * ow];
    for c in 0..x.c {
        let src = &x.data[c * x.h * x.w..(c + 1) * x.h * x.w];
        let dst = &mut data[c * oh * ow..(c + 1) * oh * ow];
        for (oy, &(y0, y1, ly)) in ty.iter().enumerate() {
            let (r0, r1) = (
                &src[y0 * x.w..(y0 + 1) * x.w],
                &src[y1 * x.w..(y1 + 1) * x.w],
            );
            for (ox, &(x0, x1, lx)) in tx.iter().enumerate() {
                let top = r0[x0] * (1.0 - lx) + r0[x1] * lx;
                let bot = r1[x0] * (1.0 - lx) + r1[x1] * lx;
                dst[oy * ow + ox] = top * (1.0 - ly) + bot * ly;
            }
        }
    }
    Ok(Chw {
        c: x.c,
        h: oh,
        w: ow,
        data,
    })
}

/// The `(height, width)` of the tensor [`load_for_eval`] makes from a `w x h` image, without
/// decoding it: crop to `bbx`, then thumbnail. Lets a job check every image's sizes up front.
pub fn eval_size(w: u32, h: u32, bbx: Option<[f64; 4]>, img_size: u32) -> Result<(usize, usize)> {
    let (w, h, size) = match bbx {
        None => (w, h, img_size as f64),
        Some(b) => {
            let (_, _, cw, ch) = crop_box(b)?;
            let size = img_size as f64 * cw.max(ch) as f64 / w.max(h).max(1) as f64;
            (cw, ch, size)
        }
    };
    let s = size.floor().max(1.0) as u32;
    let (tw, th) = thumbnail_size(w, h, s, s).unwrap_or((w, h));
    Ok((th as usize, tw as usize))
}

/// Resizes to exactly `(h, w)` with a bilinear (triangle) filter, antialiased on downscale.
pub fn resize_exact(img: &RgbImage, h: usize, w: usize) -> RgbImage {
    if img.width() as usize == w && img.height() as usize == h {
        return img.clone();
    }
    image::imageops::resize(img, w as u32, h as u32, FilterType::Triangle)
}

/// The candidate pool's loading (spec 4.1, G4): decode, resize to exactly `(h, w)` (the aspect
/// ratio is not kept), normalise.
pub fn load_exact(path: &Path, h: usize, w: usize, norm: PixelNorm) -> Result<Chw> {
    Ok(normalize(&resize_exact(&decode_rgb(path)?, h, w), norm))
}

/// The original's evaluation loading (spec 6.1): decode, crop to `bbx` when given (queries),
/// thumbnail to `img_size` (scaled by `max(crop) / max(full)` for crops), normalise.
pub fn load_for_eval(
    path: &Path,
    bbx: Option<[f64; 4]>,
    img_size: u32,
    norm: PixelNorm,
) -> Result<Chw> {
    let full = decode_rgb(path)?;
    let img = match bbx {
        None => thumbnail(&full, img_size as f64),
        Some(b) => {
            let c = crop(&full, b).with_context(|| format!("cropping {}", path.display()))?;
            let full_max = full.width().max(full.height()) as f64;
            let size = img_size as f64 * c.width().max(c.height()) as f64 / full_max;
            thumbnail(&c, size)
        }
    };
    Ok(normalize(&img, norm))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnail_size_matches_pillow() {
        // Values computed by hand from Pillow's round_aspect rule.
        assert_eq!(thumbnail_size(800, 600, 1024, 1024), None);
        assert_eq!(thumbnail_size(2048, 1536, 1024, 1024), Some((1024, 768)));
        assert_eq!(thumbnail_size(1000, 3000, 1024, 1024), Some((341, 1024)));
        // 1500/1001 * 1024 = 1534.47 wide is too wide: fits height-bound the other way.
        assert_eq!(thumbnail_size(1001, 1500, 1024, 1024), Some((683, 1024)));
        assert_eq!(thumbnail_size(5000, 2, 100, 100), Some((100, 1)));
    }

    #[test]
    fn crop_rounds_half_to_even_and_pads_black() {
        let mut img = RgbImage::new(4, 3);
        for (x, y, p) in img.enumerate_pixels_mut() {
            *p = image::Rgb([(10 * x + y) as u8 + 1, 0, 0]);
        }
        // 0.5 -> 0, 2.5 -> 2, 1.5 -> 2, 3.5 -> 4.
        let c = crop(&img, [0.5, 1.5, 2.5, 3.5]).unwrap();
        assert_eq!((c.width(), c.height()), (2, 2));
        assert_eq!(c.get_pixel(0, 0)[0], 3); // (0, 2)
        assert_eq!(c.get_pixel(1, 0)[0], 13); // (1, 2)
        assert_eq!(c.get_pixel(0, 1)[0], 0); // row 3 is outside: black
        assert!(crop(&img, [2.0, 0.0, 2.4, 3.0]).is_err());
    }

    #[test]
    fn bilinear_matches_hand_computed_torch_values() {
        // A 1-row input halves to 0 rows: an error naming the sizes, not an empty tensor.
        let x = Chw {
            c: 1,
            h: 1,
            w: 4,
            data: vec![0.0, 1.0, 2.0, 3.0],
        };
        assert!(resize_bilinear(&x, 0.5).is_err());
        let x2 = Chw {
            c: 1,
            h: 2,
            w: 4,
            data: vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
        };
        let y2 = resize_bilinear(&x2, 0.5).unwrap();
        assert_eq!((y2.h, y2.w), (1, 2));
        // src x = (o + 0.5) * 2 - 0.5 = 0.5, 2.5; src y = 0.5 -> rows averaged.
        assert_eq!(y2.data, vec![2.5, 4.5]);
        // Upscaling by 2: src = (o + 0.5) / 2 - 0.5 -> -0.25 (clamped 0), 0.25, 0.75, 1.25, ...
        let y3 = resize_bilinear(&x2, 2.0).unwrap();
        assert_eq!((y3.h, y3.w), (4, 8));
        let row0: Vec<f32> = y3.data[..8].to_vec();
        assert_eq!(row0, vec![0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0]);
        // 1/sqrt(2) of 5 -> floor(3.5355) = 3.
        assert_eq!(scaled_len(5, std::f64::consts::FRAC_1_SQRT_2), 3);
    }

    #[test]
    fn normalisation_and_decode_errors_name_the_file() {
        let img = RgbImage::from_pixel(2, 1, image::Rgb([255, 0, 128]));
        let t = normalize_imagenet(&img);
        assert_eq!((t.c, t.h, t.w), (3, 1, 2));
        assert!((t.data[0] - (1.0 - 0.485) / 0.229).abs() < 1e-6);
        assert!((t.data[2] - (0.0 - 0.456) / 0.224).abs() < 1e-6);
        assert!((t.data[4] - (128.0 / 255.0 - 0.406) / 0.225).abs() < 1e-6);
        let dir = std::env::temp_dir().join(format!("insclr-img-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("broken.jpg");
        std::fs::write(&bad, b"\xff\xd8\xff\xe0 definitely not a jpeg").unwrap();
        let err = format!("{:#}", decode_rgb(&bad).unwrap_err());
        assert!(err.contains("broken.jpg"), "{err}");
        let good = dir.join("ok.png");
        img.save(&good).unwrap();
        let (ok, skipped) = decode_all(&[good.clone(), bad.clone(), dir.join("missing.png")]);
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].0, 0);
        assert_eq!(skipped.len(), 2);
        assert!(skipped.summary(5).contains("missing.png"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_jpeg_cut_short_is_truncated_and_eval_size_matches_loading() {
        let mut rng = crate::rng::Rng::new(7);
        let img = RgbImage::from_fn(64, 48, |_, _| {
            image::Rgb([rng.below(256) as u8, rng.below(256) as u8, 90])
        });
        let mut jpg = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut jpg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
        assert!(jpeg_is_complete(&jpg));
        // A trailer after the end marker (cameras append them) is fine.
        let mut trailer = jpg.clone();
        trailer.extend_from_slice(b"\xff\xda trailing bytes");
        assert!(jpeg_is_complete(&trailer));
        for cut in [jpg.len() - 2, jpg.len() / 2, 300, 3] {
            assert!(!jpeg_is_complete(&jpg[..cut]), "cut at {cut}");
        }
        let dir = std::env::temp_dir().join(format!("insclr-trunc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let half = dir.join("half.jpg");
        std::fs::write(&half, &jpg[..jpg.len() / 2]).unwrap();
        for e in [decode_rgb(&half).unwrap_err(), probe(&half).unwrap_err()] {
            let e = format!("{e:#}");
            assert!(e.contains("half.jpg is truncated"), "{e}");
        }
        // eval_size predicts the tensor load_for_eval makes, with and without a crop.
        let big = dir.join("big.png");
        RgbImage::new(300, 170).save(&big).unwrap();
        assert_eq!(probe(&big).unwrap(), (300, 170));
        for bbx in [None, Some([10.4, 3.0, 250.5, 99.0])] {
            let t = load_for_eval(&big, bbx, 128, PixelNorm::IMAGENET).unwrap();
            assert_eq!(eval_size(300, 170, bbx, 128).unwrap(), (t.h, t.w));
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
