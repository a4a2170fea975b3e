//! Multi-scale descriptor extraction (spec 6.1, trap G19): each image is loaded as the original
//! evaluators load it (thumbnail to `img_size`, query crop), resized by every scale with
//! bilinear interpolation of the normalised tensor, described by any [`DescriptorNet`], each
//! scale's descriptor L2-normalised, the unit vectors averaged, and the mean re-normalised.
//! Images are decoded in parallel and batched in order of size, so that images of one size go
//! through the network as one batch.

use crate::backend::DType;
use crate::backend::{Backend, Device, Gem, L2Norm, L2_EPS};
use crate::data::image::{
    eval_size, load_exact, load_for_eval, probe, resize_bilinear, scaled_len, Chw, Skipped,
    IMAGENET_MEAN, IMAGENET_STD,
};
use crate::dist::{all_gather, shard, Collective};
use crate::eval::local::{candidates, strongest, Candidate, LocalFeatures, MAX_LOCAL};
use crate::nn::{DescriptorNet, LocalLayer};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The ROxford / RParis evaluator's scales `[1, 1/sqrt(2), 1/2]`.
pub const REVISITED_SCALES: [f64; 3] = [1.0, std::f64::consts::FRAC_1_SQRT_2, 0.5];
/// The GLDv2 evaluator's scales `(1.414, 1.0, 0.7)` (spec 6.3).
pub const GLDV2_SCALES: [f64; 3] = [1.414, 1.0, 0.7];
/// The evaluators' thumbnail size.
pub const IMG_SIZE: u32 = 1024;
/// Default cap on the longest side of a scaled image: 8x the evaluators' largest (1448 px),
/// far below what sends a machine into the OOM killer (`--scales 1000000` did).
pub const MAX_SIDE: usize = 8192;

/// How to extract.
#[derive(Clone, Debug)]
pub struct ExtractConfig {
    /// Longest side after the thumbnail (only downscales).
    pub img_size: u32,
    /// Resize factors of the normalised tensor.
    pub scales: Vec<f64>,
    /// Images decoded and described together.
    pub batch: usize,
    /// L2-normalise each scale's descriptor before averaging (true for trained models; the
    /// original's stage-0 pool features skip it, trap G2).
    pub normalize_each_scale: bool,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Longest side a scaled image may have; a larger one stops the run before any work.
    pub max_side: usize,
    /// Leave unusable images out (listed in [`Extracted::skipped`]) instead of failing.
    pub skip_bad: bool,
    /// Resize every image to exactly `[h, w]` instead of the thumbnail (the candidate pool's
    /// features, G4); query boxes are then not supported.
    pub exact_size: Option<[usize; 2]>,
    /// Local features per image (0: none, at most [`MAX_LOCAL`]): the strongest locations of
    /// the backbone's last map over all scales, in [`Extracted::local`].
    pub local: usize,
    /// The map local features come from.
    pub local_layer: LocalLayer,
}

impl Default for ExtractConfig {
    /// The ROxford / RParis settings: 1024 px, scales `[1, 1/sqrt(2), 1/2]`.
    fn default() -> Self {
        ExtractConfig {
            img_size: IMG_SIZE,
            scales: REVISITED_SCALES.to_vec(),
            batch: 16,
            normalize_each_scale: true,
            progress: false,
            max_side: MAX_SIDE,
            skip_bad: false,
            exact_size: None,
            local: 0,
            local_layer: LocalLayer::Last,
        }
    }
}

/// One image to describe, with its query crop box if any.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageItem {
    /// Image file.
    pub path: PathBuf,
    /// Crop box (x1, y1, x2, y2) applied before the thumbnail (queries).
    pub bbx: Option<[f64; 4]>,
}

/// Descriptors of the usable images of a list: row r is item `rows[r]`. Unusable images have
/// no row (a zero row would rank as a real image) and are listed in `skipped`.
#[derive(Debug)]
pub struct Extracted {
    /// Row-major `rows.len() x dim` unit descriptors.
    pub feats: Vec<f32>,
    /// Descriptor length.
    pub dim: usize,
    /// The item index of each row, ascending.
    pub rows: Vec<usize>,
    /// Images left out, with the reason (only with [`ExtractConfig::skip_bad`]).
    pub skipped: Skipped,
    /// Local features, image i of row i (with [`ExtractConfig::local`] > 0).
    pub local: Option<LocalFeatures>,
}

/// Images that cannot be described (unreadable, truncated, too small for a scale): the error
/// [`extract`] stops with unless [`ExtractConfig::skip_bad`]. Its text lists them.
#[derive(Debug)]
pub struct BadImages(pub Skipped);

impl std::fmt::Display for BadImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&list_bad(&self.0, 50))
    }
}

impl std::error::Error for BadImages {}

/// "N unusable image(s):" and up to `max_listed` of them, one `path: reason` a line.
pub fn list_bad(bad: &Skipped, max_listed: usize) -> String {
    let mut s = format!("{} unusable image(s):", bad.len());
    for (_, p, why) in bad.items.iter().take(max_listed) {
        // Reasons mostly name the file already; say it once.
        let p = p.display().to_string();
        if why.contains(&p) {
            s.push_str(&format!("\n  {why}"));
        } else {
            s.push_str(&format!("\n  {p}: {why}"));
        }
    }
    if bad.len() > max_listed {
        s.push_str(&format!("\n  ... and {} more", bad.len() - max_listed));
    }
    s
}

/// The first `(row, column)` of a row-major `? x dim` matrix holding NaN or an infinity.
pub fn first_non_finite(x: &[f32], dim: usize) -> Option<(usize, usize)> {
    let i = x.iter().position(|v| !v.is_finite())?;
    Some((i / dim.max(1), i % dim.max(1)))
}

/// What the header check says about one image.
enum Check {
    /// Usable; a lower bound on the host bytes describing it takes, and its size `[h, w]` after
    /// the thumbnail (or the exact resize).
    Fine(f64, [usize; 2]),
    /// This image cannot be described (reason inside).
    Bad(anyhow::Error),
    /// The settings cannot work for this image (too large when scaled): stops every run.
    Settings(anyhow::Error),
}

/// Checks one image from its header against the settings: the sizes `load_for_eval` and every
/// scale produce, without decoding.
fn check_one(it: &ImageItem, cfg: &ExtractConfig) -> Check {
    let path = it.path.display();
    let (w, h) = match probe(&it.path) {
        Ok(wh) => wh,
        Err(e) => return Check::Bad(e),
    };
    let (th, tw) = match (cfg.exact_size, eval_size(w, h, it.bbx, cfg.img_size)) {
        (Some([eh, ew]), _) => (eh, ew),
        (None, Ok(s)) => s,
        (None, Err(e)) => return Check::Bad(e.context(format!("cropping {path} ({w}x{h})"))),
    };
    // Decoded RGB bytes and the normalised f32 tensor live while the scales are described.
    let mut need = 3.0 * w as f64 * h as f64 + 12.0 * (th * tw) as f64;
    let mut per_scale: f64 = 0.0;
    for &s in &cfg.scales {
        if !(s.is_finite() && s > 0.0) {
            return Check::Settings(anyhow::anyhow!(
                "scale {s} is not a positive number; scales are like 1,0.7071,0.5"
            ));
        }
        let (sh, sw) = if s == 1.0 {
            (th, tw)
        } else {
            (scaled_len(th, s), scaled_len(tw, s))
        };
        if sh == 0 || sw == 0 {
            return Check::Bad(anyhow::anyhow!(
                "image {path} is too small: {w}x{h} pixels ({tw}x{th} after the thumbnail) become {sw}x{sh} at scale {s}"
            ));
        }
        if sh.max(sw) > cfg.max_side {
            return Check::Settings(anyhow::anyhow!(
                "scale {s} turns {path} ({tw}x{th} after the {} px thumbnail) into {sw}x{sh} pixels, over the limit of {} pixels per side; use smaller --scales or --img-size, or raise the limit with --max-side (or INSCLR_MAX_SIDE) if the memory is there",
                cfg.img_size,
                cfg.max_side
            ));
        }
        // The resized tensor and its copy in the network's batch.
        per_scale = per_scale.max(24.0 * sh as f64 * sw as f64);
    }
    need += per_scale;
    Check::Fine(need, [th, tw])
}

pub use crate::io::mem_available;

/// Checks every image's header against the settings before any work (in parallel): returns the
/// unusable images and each usable one's size `[h, w]` after the thumbnail (`None` for the
/// unusable), or fails when the settings cannot work (a scaled side over `cfg.max_side`, or the
/// largest image clearly needing more memory than is available).
pub fn check_images(
    items: &[ImageItem],
    cfg: &ExtractConfig,
) -> Result<(Skipped, Vec<Option<[usize; 2]>>)> {
    if cfg.scales.is_empty() {
        bail!("no scales given; use e.g. --scales 1,0.7071,0.5");
    }
    let checks: Vec<Check> = items.par_iter().map(|it| check_one(it, cfg)).collect();
    let mut bad = Skipped::default();
    let mut largest: Option<(f64, usize)> = None;
    let mut sizes = vec![None; items.len()];
    for (i, c) in checks.into_iter().enumerate() {
        match c {
            Check::Fine(need, hw) => {
                sizes[i] = Some(hw);
                if largest.is_none_or(|(n, _)| need > n) {
                    largest = Some((need, i));
                }
            }
            Check::Bad(e) => bad.push(i, &items[i].path, &e),
            Check::Settings(e) => return Err(e),
        }
    }
    // A lower bound (input tensors only, one image, no network activations): when even that
    // does not fit, the run would end in the OOM killer hours later.
    if let (Some((need, i)), Some(avail)) = (largest, mem_available()) {
        if need > avail {
            bail!(
                "describing {} at {} px, scales {:?} needs at least {:.1} GiB of memory, but only {:.1} GiB is available (MemAvailable in /proc/meminfo); use smaller --scales or --img-size",
                items[i].path.display(),
                cfg.img_size,
                cfg.scales,
                need / (1u64 << 30) as f64,
                avail / (1u64 << 30) as f64
            );
        }
    }
    let sides: Vec<usize> = sizes.iter().flatten().map(|&[h, w]| h.max(w)).collect();
    if let Some(w) = scale_spread_warning(&sides, cfg.img_size) {
        eprintln!("{w}");
    }
    Ok((bad, sizes))
}

/// The warning for a collection whose images keep very different sizes after the thumbnail
/// (it only downscales): when the largest longest side is over twice the smallest, the same
/// object is described at different scales in different images. A note when the small images
/// are a minority (crops, thumbnails); `None` when the sizes are close.
pub fn scale_spread_warning(sides: &[usize], img_size: u32) -> Option<String> {
    let (&min, &max) = (sides.iter().min()?, sides.iter().max()?);
    if max <= 2 * min {
        return None;
    }
    let small = sides.iter().filter(|&&s| s <= 2 * min).count();
    let large = sides.len() - small;
    if small < large {
        // A minority of small images (the demo's 15% crops): shrinking every image to their
        // size would lose more than it gains, so this is a note, not advice to do so.
        return Some(format!(
            "note: {small} of {} image(s) are described at a smaller scale than the rest: after the {img_size} px thumbnail their longest sides are {min} to {} px, the others' up to {max} px (the thumbnail only downscales). Expected for crops and thumbnails; otherwise describe them apart, or every image at --img-size {min}",
            sides.len(),
            2 * min
        ));
    }
    Some(format!(
        "warning: images are described at different scales: after the {img_size} px thumbnail their longest sides range from {min} to {max} px ({small} of {} image(s) within 2x of the smallest, {large} larger). The thumbnail only downscales, so smaller images keep their size; use --img-size {min} (or smaller) to bring every image to one size",
        sides.len(),
    ))
}

/// Row-wise `x / max(||x||, 1e-12)` on the host, as the backend's `l2norm_fwd`.
pub fn l2_normalize_rows(x: &mut [f32], dim: usize) {
    for row in x.chunks_mut(dim.max(1)) {
        let n = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt() as f32;
        let inv = 1.0 / n.max(L2_EPS);
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// Input pixels per network call on the CPU (four 512 x 512 images, one of 1024 x 1024).
pub const CPU_CALL_PIXELS: usize = 1 << 20;

/// How many `h x w` images go through the network in one call. A call's memory grows with its
/// batch (by the eval forward's reused maps, a few of the network's maps per image). The CPU
/// convolves image by image and gains nothing from a large batch, so its calls hold up to
/// [`CPU_CALL_PIXELS`] (one image at least); a GPU runs faster on larger batches and takes the
/// whole batch.
fn images_per_call(be: &dyn Backend, h: usize, w: usize) -> usize {
    match be.device() {
        Device::Cpu => (CPU_CALL_PIXELS / (h * w).max(1)).max(1),
        _ => usize::MAX,
    }
}

/// Describes already-normalised images at every scale and returns the averaged, re-normalised
/// descriptors (`images.len() x net.out_dim()`). Same-size images share one network call.
pub fn describe_multiscale(
    be: &dyn Backend,
    net: &mut dyn DescriptorNet,
    images: &[&Chw],
    scales: &[f64],
    normalize_each_scale: bool,
) -> Result<Vec<f32>> {
    describe_multiscale_local(
        be,
        net,
        images,
        scales,
        normalize_each_scale,
        (0, LocalLayer::Last),
    )
    .map(|(d, _)| d)
}

/// [`describe_multiscale`] that also keeps, when `local > 0`, each image's `local` strongest
/// locations of the backbone's map over all scales ([`crate::eval::local`]), from the same
/// network calls: image i of the [`LocalFeatures`] is `images[i]`, its size that image's
/// `(h, w)`. An error for a network without a feature map ([`DescriptorNet::feature_map`]).
pub fn describe_multiscale_local(
    be: &dyn Backend,
    net: &mut dyn DescriptorNet,
    images: &[&Chw],
    scales: &[f64],
    normalize_each_scale: bool,
    (local, layer): (usize, LocalLayer),
) -> Result<(Vec<f32>, Option<LocalFeatures>)> {
    if scales.is_empty() {
        bail!("no scales given; use e.g. --scales 1,0.7071,0.5");
    }
    check_local(local)?;
    let dim = net.out_dim();
    let mut acc = vec![0.0f32; images.len() * dim];
    // Candidates of every scale, in scale order: `strongest` breaks ties by that order.
    let mut cands: Vec<Vec<Candidate>> = vec![Vec::new(); if local > 0 { images.len() } else { 0 }];
    let mut channels = 0;
    for &s in scales {
        let resized: Vec<Chw> = images
            .par_iter()
            .map(|x| resize_bilinear(x, s))
            .collect::<Result<_>>()?;
        let mut by_size: BTreeMap<(usize, usize, usize), Vec<usize>> = BTreeMap::new();
        for (i, t) in resized.iter().enumerate() {
            by_size.entry((t.c, t.h, t.w)).or_default().push(i);
        }
        for ((c, h, w), group) in by_size {
            if c != 3 {
                bail!("descriptor networks take 3-channel images, got {c} channels");
            }
            for members in group.chunks(images_per_call(be, h, w)) {
                let mut batch = Vec::with_capacity(members.len() * c * h * w);
                for &i in members {
                    batch.extend_from_slice(&resized[i].data);
                }
                let mut out = net
                    .describe(be, &batch, members.len(), h, w)
                    .with_context(|| {
                        format!(
                            "describing {} image(s) of {w}x{h} at scale {s}",
                            members.len()
                        )
                    })?;
                if out.len() != members.len() * dim {
                    bail!(
                        "the network returned {} values for {} images of dimension {dim}",
                        out.len(),
                        members.len()
                    );
                }
                if local > 0 {
                    channels =
                        map_candidates(be, net, members, (h, w), s, (local, layer), &mut cands)?;
                }
                if normalize_each_scale {
                    l2_normalize_rows(&mut out, dim);
                }
                for (r, &i) in members.iter().enumerate() {
                    for (a, v) in acc[i * dim..(i + 1) * dim]
                        .iter_mut()
                        .zip(&out[r * dim..(r + 1) * dim])
                    {
                        *a += v / scales.len() as f32;
                    }
                }
            }
        }
    }
    l2_normalize_rows(&mut acc, dim);
    if local == 0 {
        return Ok((acc, None));
    }
    let mut feats = LocalFeatures::new(channels);
    for (x, c) in images.iter().zip(cands) {
        // A constant image (blank, one colour) has nothing to locate: the map's differences
        // there are the padding's, which would match any image's borders by chance.
        let flat = x.data.iter().all(|&v| v == x.data[0]);
        let keep = if flat {
            Vec::new()
        } else {
            strongest(c, local)
        };
        feats.push_image([x.h, x.w], &keep);
    }
    Ok((acc, Some(feats)))
}

/// Adds the `local` strongest locations of each image's map of the last network call (images
/// `members`, `h x w` at `scale`) to its candidates; returns the map's channels.
fn map_candidates(
    be: &dyn Backend,
    net: &dyn DescriptorNet,
    members: &[usize],
    (h, w): (usize, usize),
    scale: f64,
    (local, layer): (usize, LocalLayer),
    cands: &mut [Vec<Candidate>],
) -> Result<usize> {
    let Some((map, [n, c, fh, fw])) = net.feature_map(be, layer)? else {
        bail!("{NO_MAP}");
    };
    let per = c * fh * fw;
    if n != members.len() || map.len() != n * per {
        bail!(
            "the feature map holds {} values of {n}x{c}x{fh}x{fw}, not one map per image of the {} described",
            map.len(),
            members.len()
        );
    }
    let found: Vec<Vec<Candidate>> = map
        .par_chunks(per.max(1))
        .map(|m| candidates(m, (c, fh, fw), (h, w), scale, local))
        .collect();
    for (&i, f) in members.iter().zip(found) {
        cands[i].extend(f);
    }
    Ok(c)
}

/// The error for local features of a network without a feature map.
const NO_MAP: &str = "the model has no feature map (as tiny-gem, which pools the pixels); local features need a backbone: resnet50, resnet101, efficientnet-lite0 or resnet-custom with --weights";

/// Refuses a `--local` over [`MAX_LOCAL`].
pub fn check_local(local: usize) -> Result<()> {
    if local > MAX_LOCAL {
        bail!(
            "--local {local} is over the limit of {MAX_LOCAL} local features per image (spatial verification holds a pair's features in GPU shared memory); use --local {MAX_LOCAL} or fewer"
        );
    }
    Ok(())
}

/// A bar of `n` `unit`s labelled `what` on stderr (hidden unless `show`), with rate and ETA.
pub fn progress_bar(n: usize, show: bool, what: &str, unit: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(
        Some(n as u64),
        if show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) = ProgressStyle::with_template(
        &format!("{{msg}} {{bar:30}} {{pos}}/{{len}} {unit} [{{elapsed_precise}} < {{eta_precise}}, {{per_sec}}]"),
    ) {
        pb.set_style(style);
    }
    pb.set_message(what.to_string());
    pb
}

/// [`extract`] split over the ranks of `comm`: each describes its [`shard`] of the items
/// (rank 0 shows the progress of its own), and every rank gets the whole result in item
/// order, the same as one rank's. An unusable image on any rank is every rank's
/// [`BadImages`] error, listing them all.
pub fn extract_on_ranks(
    be: &dyn Backend,
    comm: &dyn Collective,
    net: &mut dyn DescriptorNet,
    items: &[ImageItem],
    cfg: &ExtractConfig,
    what: &str,
) -> Result<Extracted> {
    if comm.world() == 1 {
        return extract(be, net, items, cfg, what);
    }
    let mine = shard(items.len(), comm.rank(), comm.world());
    let cfg_here = ExtractConfig {
        progress: cfg.progress && comm.rank() == 0,
        ..cfg.clone()
    };
    let shifted = |s: Skipped| -> Vec<(usize, String)> {
        s.items
            .into_iter()
            .map(|(i, _, why)| (i + mine.start, why))
            .collect()
    };
    let (part, feats, local) = match extract(be, net, &items[mine.clone()], &cfg_here, what) {
        Ok(x) => (
            RankPart {
                rows: x.rows.iter().map(|r| r + mine.start).collect(),
                skipped: shifted(x.skipped),
                bad: false,
                local: x.local.as_ref().map(LocalShape::of),
            },
            x.feats,
            x.local,
        ),
        Err(e) => match e.downcast::<BadImages>() {
            Ok(BadImages(bad)) => (
                RankPart {
                    rows: Vec::new(),
                    skipped: shifted(bad),
                    bad: true,
                    local: None,
                },
                Vec::new(),
                None,
            ),
            Err(e) => return Err(e),
        },
    };
    let parts = comm.all_gather_bytes(&serde_json::to_vec(&part)?)?;
    let feats = all_gather(comm, &feats)?;
    let parts: Vec<RankPart> = parts
        .iter()
        .map(|p| serde_json::from_slice(p))
        .collect::<std::result::Result<_, _>>()
        .context("reading another rank's extraction")?;
    // Every rank takes part in these gathers (cfg.local is the same on all), also one that
    // stopped on unusable images, so that none waits for another.
    let local = if cfg.local > 0 {
        Some(gather_local(comm, local.as_ref(), &parts)?)
    } else {
        None
    };
    let mut skipped = Skipped::default();
    for (i, why) in parts.iter().flat_map(|p| p.skipped.iter().cloned()) {
        skipped.items.push((i, items[i].path.clone(), why));
    }
    if parts.iter().any(|p| p.bad) {
        return Err(BadImages(skipped).into());
    }
    Ok(Extracted {
        feats,
        dim: net.out_dim(),
        rows: parts.into_iter().flat_map(|p| p.rows).collect(),
        skipped,
        local,
    })
}

/// What a rank of [`extract_on_ranks`] sends the others besides its descriptors.
#[derive(serde::Serialize, serde::Deserialize)]
struct RankPart {
    /// Item indices of its rows, ascending.
    rows: Vec<usize>,
    /// Items left out (or unusable, with `bad`), with the reason.
    skipped: Vec<(usize, String)>,
    /// It stopped on unusable images.
    bad: bool,
    /// The integer part of its local features; their values follow as raw bits.
    local: Option<LocalShape>,
}

/// A rank's local features apart from their values: integers, exact in JSON.
#[derive(serde::Serialize, serde::Deserialize)]
struct LocalShape {
    dim: usize,
    /// Features per image.
    counts: Vec<usize>,
    image_size: Vec<[usize; 2]>,
}

impl LocalShape {
    fn of(l: &LocalFeatures) -> Self {
        LocalShape {
            dim: l.dim,
            counts: l.offsets.windows(2).map(|w| w[1] - w[0]).collect(),
            image_size: l.image_size.clone(),
        }
    }
}

/// Floats per local feature on the wire: desc_scale, x, y, scale, strength.
const LOCAL_FLOATS: usize = 5;

/// Every rank's local features, in rank order. The values travel as raw bytes (not JSON
/// text), so that the joined features are the bits each rank computed and 2 ranks write the
/// file of 1.
fn gather_local(
    comm: &dyn Collective,
    mine: Option<&LocalFeatures>,
    parts: &[RankPart],
) -> Result<LocalFeatures> {
    let empty = LocalFeatures::new(0);
    let mine = mine.unwrap_or(&empty);
    let mut floats = Vec::with_capacity(LOCAL_FLOATS * mine.len());
    for r in 0..mine.len() {
        floats.extend_from_slice(&[
            mine.desc_scale[r],
            mine.xy[r][0],
            mine.xy[r][1],
            mine.scale[r],
            mine.strength[r],
        ]);
    }
    let desc = all_gather(comm, &mine.desc)?;
    let floats = all_gather(comm, &floats)?;
    // A rank with no image has no map to take the length from.
    let dim = parts
        .iter()
        .filter_map(|p| p.local.as_ref())
        .map(|l| l.dim)
        .max()
        .unwrap_or(0);
    let mut out = LocalFeatures::new(dim);
    let mut total = 0;
    for (rank, l) in parts.iter().enumerate() {
        let Some(l) = &l.local else { continue };
        if l.dim != dim && !l.counts.is_empty() {
            bail!(
                "rank {rank} sent local features of length {}, another {dim}; every rank must run the same model",
                l.dim
            );
        }
        for &n in &l.counts {
            total += n;
            out.offsets.push(total);
        }
        out.image_size.extend_from_slice(&l.image_size);
    }
    if desc.len() != total * dim || floats.len() != total * LOCAL_FLOATS {
        bail!(
            "the ranks sent {} descriptor values and {} others for {total} local features of length {dim}",
            desc.len(),
            floats.len()
        );
    }
    out.desc = desc;
    for f in floats.chunks_exact(LOCAL_FLOATS) {
        out.desc_scale.push(f[0]);
        out.xy.push([f[1], f[2]]);
        out.scale.push(f[3]);
        out.strength.push(f[4]);
    }
    Ok(out)
}

/// Extracts descriptors of every usable item (spec 6.1), batched, with a progress bar labelled
/// `what`. Every header is checked first ([`check_images`]), so a bad file or bad settings stop
/// the run before the work; an image whose data fails to decode later stops it at that batch.
/// Either way the error is [`BadImages`], unless `cfg.skip_bad` leaves such images out.
pub fn extract(
    be: &dyn Backend,
    net: &mut dyn DescriptorNet,
    items: &[ImageItem],
    cfg: &ExtractConfig,
    what: &str,
) -> Result<Extracted> {
    if let (Some(_), Some(it)) = (cfg.exact_size, items.iter().find(|it| it.bbx.is_some())) {
        bail!(
            "{} has a query box, but an exact resize has no crop step; describe queries with the thumbnail",
            it.path.display()
        );
    }
    check_local(cfg.local)?;
    let (mut skipped, sizes) = check_images(items, cfg)?;
    if !skipped.is_empty() && !cfg.skip_bad {
        return Err(BadImages(skipped).into());
    }
    let mut left_out = vec![false; items.len()];
    for (i, _, _) in &skipped.items {
        left_out[*i] = true;
    }
    // Images of one size share a network call (`describe_multiscale`), so batches are formed
    // in order of size: a collection of mixed orientations then makes full batches of one size
    // instead of several small calls per batch (a GPU's time per image falls with the batch).
    // Largest area first: the first batch sizes the network's buffers, and every later one fits
    // in them (on the CPU, fresh buffers cost a page fault per 4 KiB). A stable sort keeps item
    // order within a size; rows return to item order at the end.
    let mut todo: Vec<usize> = (0..items.len()).filter(|&i| !left_out[i]).collect();
    todo.sort_by_key(|&i| sizes[i].map(|[h, w]| (std::cmp::Reverse(h * w), h, w)));
    let dim = net.out_dim();
    let mut feats = Vec::with_capacity(todo.len() * dim);
    let mut rows = Vec::with_capacity(todo.len());
    let mut local = (cfg.local > 0).then(|| LocalFeatures::new(0));
    let norm = net.input_norm();
    let pb = progress_bar(items.len(), cfg.progress, what, "images");
    pb.inc(skipped.len() as u64);
    for chunk in todo.chunks(cfg.batch.max(1)) {
        let loaded: Vec<Result<Chw>> = chunk
            .par_iter()
            .map(|&i| match cfg.exact_size {
                Some([h, w]) => load_exact(&items[i].path, h, w, norm),
                None => load_for_eval(&items[i].path, items[i].bbx, cfg.img_size, norm),
            })
            .collect();
        let mut ok_idx = Vec::new();
        let mut ok_img = Vec::new();
        let mut failed = Skipped::default();
        for (&i, r) in chunk.iter().zip(loaded) {
            match r {
                Ok(t) => {
                    ok_idx.push(i);
                    ok_img.push(t);
                }
                Err(e) => failed.push(i, &items[i].path, &e),
            }
        }
        if !failed.is_empty() && !cfg.skip_bad {
            return Err(BadImages(failed).into());
        }
        skipped.items.append(&mut failed.items);
        let refs: Vec<&Chw> = ok_img.iter().collect();
        let (d, l) = describe_multiscale_local(
            be,
            net,
            &refs,
            &cfg.scales,
            cfg.normalize_each_scale,
            (cfg.local, cfg.local_layer),
        )
        .with_context(|| {
            format!(
                "describing {} images from {}",
                ok_idx.len(),
                items[chunk[0]].path.display()
            )
        })?;
        if let (Some(all), Some(l)) = (local.as_mut(), l) {
            all.append(&l)?;
        }
        // A model that makes NaN (broken weights) must not produce a file that scores.
        if let Some((r, c)) = first_non_finite(&d, dim) {
            bail!(
                "the descriptor of {} has a non-finite value ({}) in column {c}; the model or its weights are broken",
                items[ok_idx[r]].path.display(),
                d[r * dim + c]
            );
        }
        feats.extend_from_slice(&d);
        rows.extend_from_slice(&ok_idx);
        pb.inc(chunk.len() as u64);
    }
    pb.finish();
    skipped.items.sort_by_key(|(i, _, _)| *i);
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&r| rows[r]);
    Ok(Extracted {
        feats: order
            .iter()
            .flat_map(|&r| &feats[r * dim..(r + 1) * dim])
            .copied()
            .collect(),
        dim,
        rows: order.iter().map(|&r| rows[r]).collect(),
        skipped,
        local: local.map(|l| l.select_images(&order)),
    })
}

/// The built-in baseline model `tiny-gem`: GeM (p = 3) over each RGB channel of the input
/// pixels (un-normalised back to [0, 1]), then L2. A 3-d colour descriptor with no learned
/// weights: it exercises extraction and evaluation end to end until the `nn` backbones plug in
/// through [`DescriptorNet`], and gives a floor any trained model must beat.
#[derive(Clone, Copy, Debug, Default)]
pub struct TinyGem;

impl DescriptorNet for TinyGem {
    fn out_dim(&self) -> usize {
        3
    }

    fn describe(
        &mut self,
        be: &dyn Backend,
        x: &[f32],
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<Vec<f32>> {
        let hw = h * w;
        if x.len() != n * 3 * hw {
            bail!(
                "tiny-gem: input holds {} values, expected {n}x3x{h}x{w}",
                x.len()
            );
        }
        let raw: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let c = (i / hw) % 3;
                v * IMAGENET_STD[c] + IMAGENET_MEAN[c]
            })
            .collect();
        let xb = be.upload(&raw)?;
        let mut pooled = be.zeros(DType::F32, n * 3)?;
        be.gem_fwd(&xb, &mut pooled, Gem::new(n, 3, h, w))?;
        let mut y = be.zeros(DType::F32, n * 3)?;
        be.l2norm_fwd(&pooled, &mut y, L2Norm::new(n, 3))?;
        be.download::<f32>(&y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Returns the same vector for every image, whatever its size.
    struct Constant(Vec<f32>);
    impl DescriptorNet for Constant {
        fn out_dim(&self) -> usize {
            self.0.len()
        }
        fn describe(
            &mut self,
            _: &dyn Backend,
            _: &[f32],
            n: usize,
            _: usize,
            _: usize,
        ) -> Result<Vec<f32>> {
            Ok(self.0.repeat(n))
        }
    }

    fn random_image(rng: &mut Rng, h: usize, w: usize) -> Chw {
        Chw {
            c: 3,
            h,
            w,
            data: rng.vec_f32(3 * h * w, -2.0, 2.0),
        }
    }

    #[test]
    fn multiscale_of_a_constant_model_equals_single_scale() {
        let be = crate::backend::cpu();
        let mut rng = Rng::new(5);
        let imgs = [
            random_image(&mut rng, 37, 50),
            random_image(&mut rng, 20, 20),
        ];
        let refs: Vec<&Chw> = imgs.iter().collect();
        let mut net = Constant(vec![3.0, -4.0, 0.5, 1.0]);
        let multi = describe_multiscale(be, &mut net, &refs, &REVISITED_SCALES, true).unwrap();
        let single = describe_multiscale(be, &mut net, &refs, &[1.0], true).unwrap();
        assert_eq!(multi.len(), 8);
        for (a, b) in multi.iter().zip(&single) {
            assert!((a - b).abs() < 1e-6, "{multi:?} vs {single:?}");
        }
        // Without per-scale normalisation the scale mean of a constant is still that constant.
        let raw = describe_multiscale(be, &mut net, &refs, &GLDV2_SCALES, false).unwrap();
        for (a, b) in raw.iter().zip(&single) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn tiny_gem_rows_are_unit_norm_and_scale_matters_only_through_content() {
        let be = crate::backend::cpu();
        let mut rng = Rng::new(9);
        let imgs = [
            random_image(&mut rng, 64, 48),
            random_image(&mut rng, 31, 77),
        ];
        let refs: Vec<&Chw> = imgs.iter().collect();
        let d = describe_multiscale(be, &mut TinyGem, &refs, &REVISITED_SCALES, true).unwrap();
        for row in d.chunks(3) {
            let n: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((n - 1.0).abs() < 1e-5, "{row:?}");
        }
        // A flat-colour image looks the same at every scale: multi-scale == single scale.
        let mut flat = Chw {
            c: 3,
            h: 40,
            w: 30,
            data: vec![0.0; 3600],
        };
        for (i, v) in flat.data.iter_mut().enumerate() {
            *v = [0.3, -0.2, 1.1][i / 1200];
        }
        let m = describe_multiscale(be, &mut TinyGem, &[&flat], &REVISITED_SCALES, true).unwrap();
        let s = describe_multiscale(be, &mut TinyGem, &[&flat], &[1.0], true).unwrap();
        for (a, b) in m.iter().zip(&s) {
            assert!((a - b).abs() < 1e-6);
        }
        // A random image is not scale-invariant under GeM: the test above could fail.
        let s0 = describe_multiscale(be, &mut TinyGem, &refs[..1], &[1.0], true).unwrap();
        let s1 = describe_multiscale(be, &mut TinyGem, &refs[..1], &[0.5], true).unwrap();
        assert!(s0.iter().zip(&s1).any(|(a, b)| (a - b).abs() > 1e-5));
    }

    #[test]
    fn extract_refuses_or_leaves_out_unreadable_and_too_small_images() {
        let be = crate::backend::cpu();
        let dir = std::env::temp_dir().join(format!("insclr-extract-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut rng = Rng::new(3);
        let mut items = Vec::new();
        for k in 0..5 {
            let p = dir.join(format!("im{k}.png"));
            let img = image::RgbImage::from_fn(23 + k, 17, |_, _| {
                image::Rgb([
                    rng.below(256) as u8,
                    rng.below(256) as u8,
                    rng.below(256) as u8,
                ])
            });
            img.save(&p).unwrap();
            items.push(ImageItem { path: p, bbx: None });
        }
        std::fs::write(dir.join("bad.jpg"), b"nope").unwrap();
        image::RgbImage::new(1, 1)
            .save(dir.join("dot.png"))
            .unwrap();
        for (at, name) in [(2, "bad.jpg"), (5, "dot.png")] {
            let path = dir.join(name);
            items.insert(at, ImageItem { path, bbx: None });
        }
        items[4].bbx = Some([2.0, 3.0, 15.0, 12.0]);
        let mut cfg = ExtractConfig {
            batch: 4,
            ..Default::default()
        };
        let e = extract(be, &mut TinyGem, &items, &cfg, "test").unwrap_err();
        let bad = &e.downcast_ref::<BadImages>().expect("a BadImages error").0;
        assert_eq!(bad.items.iter().map(|b| b.0).collect::<Vec<_>>(), [2, 5]);
        assert!(bad.items[1].2.contains("dot.png"), "{e}");

        cfg.skip_bad = true;
        let out = extract(be, &mut TinyGem, &items, &cfg, "test").unwrap();
        assert_eq!(out.rows, [0, 1, 3, 4, 6]);
        assert_eq!(out.feats.len(), 5 * 3);
        assert_eq!(out.skipped.len(), 2);
        for (i, row) in out.feats.chunks(3).enumerate() {
            let n: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((n - 1.0).abs() < 1e-5, "row {i}: {row:?}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    /// TinyGem that records the batch shape `(n, h, w)` of every call.
    #[derive(Default)]
    struct Recording(Vec<(usize, usize, usize)>);
    impl DescriptorNet for Recording {
        fn out_dim(&self) -> usize {
            3
        }
        fn describe(
            &mut self,
            be: &dyn Backend,
            x: &[f32],
            n: usize,
            h: usize,
            w: usize,
        ) -> Result<Vec<f32>> {
            self.0.push((n, h, w));
            TinyGem.describe(be, x, n, h, w)
        }
    }

    #[test]
    fn batches_hold_one_size_and_rows_keep_item_order() {
        let be = crate::backend::cpu();
        let dir = std::env::temp_dir().join(format!("insclr-sizes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut rng = Rng::new(8);
        // Landscape and portrait alternate, as in a photo collection.
        let items: Vec<ImageItem> = (0..8)
            .map(|k| {
                let (w, h) = if k % 2 == 0 { (30, 20) } else { (20, 30) };
                let p = dir.join(format!("im{k}.png"));
                image::RgbImage::from_fn(w, h, |_, _| {
                    image::Rgb([rng.below(256) as u8, rng.below(256) as u8, 7])
                })
                .save(&p)
                .unwrap();
                ImageItem { path: p, bbx: None }
            })
            .collect();
        let cfg = |batch| ExtractConfig {
            batch,
            scales: vec![1.0],
            ..Default::default()
        };
        let mut net = Recording::default();
        let out = extract(be, &mut net, &items, &cfg(2), "test").unwrap();
        assert_eq!(net.0, [(2, 20, 30), (2, 20, 30), (2, 30, 20), (2, 30, 20)]);
        assert_eq!(out.rows, (0..8).collect::<Vec<_>>());
        let alone = extract(be, &mut TinyGem, &items, &cfg(1), "test").unwrap();
        assert_eq!(alone.rows, out.rows);
        for (a, b) in out.feats.iter().zip(&alone.feats) {
            assert!((a - b).abs() < 1e-6, "{:?} vs {:?}", out.feats, alone.feats);
        }
        // A larger image anywhere in the list goes first, so its batch sizes the buffers.
        let big = dir.join("big.png");
        image::RgbImage::from_pixel(40, 40, image::Rgb([9, 99, 199]))
            .save(&big)
            .unwrap();
        let mut with_big = items.clone();
        with_big.insert(
            5,
            ImageItem {
                path: big,
                bbx: None,
            },
        );
        let mut net = Recording::default();
        let out = extract(be, &mut net, &with_big, &cfg(1), "test").unwrap();
        assert_eq!(net.0[0], (1, 40, 40), "{:?}", net.0);
        assert_eq!(out.rows, (0..9).collect::<Vec<_>>());
        std::fs::remove_dir_all(&dir).ok();
    }

    /// TinyGem whose feature map is its input: one cell per pixel, the 3 channels.
    #[derive(Default)]
    struct PixelMap(Option<(Vec<f32>, [usize; 4])>);
    impl DescriptorNet for PixelMap {
        fn out_dim(&self) -> usize {
            3
        }
        fn describe(
            &mut self,
            be: &dyn Backend,
            x: &[f32],
            n: usize,
            h: usize,
            w: usize,
        ) -> Result<Vec<f32>> {
            self.0 = Some((x.to_vec(), [n, 3, h, w]));
            TinyGem.describe(be, x, n, h, w)
        }
        fn feature_map(
            &self,
            _: &dyn Backend,
            _: LocalLayer,
        ) -> Result<Option<(Vec<f32>, [usize; 4])>> {
            Ok(self.0.clone())
        }
    }

    #[test]
    fn local_features_are_the_strongest_cells_over_scales_in_image_order() {
        let be = crate::backend::cpu();
        // One bright pixel at row 2, column 5; a blank image has no features at all.
        let mut dot = Chw {
            c: 3,
            h: 6,
            w: 8,
            data: vec![0.0; 3 * 48],
        };
        for ch in 0..3 {
            dot.data[ch * 48 + 2 * 8 + 5] = 1.0 + ch as f32;
        }
        let blank = Chw {
            c: 3,
            h: 4,
            w: 4,
            data: vec![0.0; 48],
        };
        let imgs = [&blank, &dot];
        let (d, l) = describe_multiscale_local(
            be,
            &mut PixelMap::default(),
            &imgs,
            &[0.5, 1.0],
            true,
            (3, LocalLayer::Last),
        )
        .unwrap();
        let (plain, _) = describe_multiscale_local(
            be,
            &mut PixelMap::default(),
            &imgs,
            &[0.5, 1.0],
            true,
            (0, LocalLayer::Last),
        )
        .unwrap();
        assert_eq!(d, plain, "local features do not change the descriptors");
        let l = l.unwrap();
        assert_eq!((l.dim, l.images()), (3, 2));
        assert_eq!(l.image_size, vec![[4, 4], [6, 8]]);
        assert_eq!(l.range(0), 0..0, "a blank image has no features");
        let r = l.range(1);
        assert!(!r.is_empty() && r.len() <= 3, "{r:?}");
        // The sharp peak of scale 1 beats the blurred ones of scale 0.5; its centre is in the
        // described image's pixels at every scale.
        assert_eq!((l.scale[r.start], l.xy[r.start]), (1.0, [5.5, 2.5]));
        for i in r {
            let [x, y] = l.xy[i];
            assert!(
                (0.0..=8.0).contains(&x) && (0.0..=6.0).contains(&y),
                "{x},{y}"
            );
        }
        let none = describe_multiscale_local(
            be,
            &mut PixelMap::default(),
            &imgs,
            &[1.0],
            true,
            (0, LocalLayer::Last),
        );
        assert!(none.unwrap().1.is_none());
        let e =
            describe_multiscale_local(be, &mut TinyGem, &imgs, &[1.0], true, (2, LocalLayer::Last))
                .unwrap_err();
        assert!(format!("{e:#}").contains("tiny-gem"), "{e:#}");
        let e = describe_multiscale_local(
            be,
            &mut TinyGem,
            &imgs,
            &[1.0],
            true,
            (MAX_LOCAL + 1, LocalLayer::Last),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("--local 256 or fewer"), "{e:#}");
    }

    #[test]
    fn extracted_local_features_follow_the_rows_of_the_descriptors() {
        let be = crate::backend::cpu();
        let dir = std::env::temp_dir().join(format!("insclr-local-rows-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut rng = Rng::new(4);
        // Small images first: extraction goes largest first, so rows are reordered at the end.
        let sizes = [(9u32, 7u32), (12, 10), (9, 7), (15, 11)];
        let mut items: Vec<ImageItem> = sizes
            .iter()
            .enumerate()
            .map(|(k, &(w, h))| {
                let p = dir.join(format!("im{k}.png"));
                image::RgbImage::from_fn(w, h, |_, _| {
                    image::Rgb([rng.below(256) as u8, rng.below(256) as u8, 7])
                })
                .save(&p)
                .unwrap();
                ImageItem { path: p, bbx: None }
            })
            .collect();
        std::fs::write(dir.join("bad.jpg"), b"nope").unwrap();
        items.insert(
            1,
            ImageItem {
                path: dir.join("bad.jpg"),
                bbx: None,
            },
        );
        let cfg = ExtractConfig {
            batch: 2,
            scales: vec![1.0, 0.5],
            skip_bad: true,
            local: 4,
            ..Default::default()
        };
        let out = extract(be, &mut PixelMap::default(), &items, &cfg, "test").unwrap();
        assert_eq!(out.rows, [0, 2, 3, 4]);
        let l = out.local.unwrap();
        assert_eq!(l.images(), 4);
        let want: Vec<[usize; 2]> = [0, 1, 2, 3]
            .iter()
            .map(|&k| [sizes[k].1 as usize, sizes[k].0 as usize])
            .collect();
        assert_eq!(l.image_size, want);
        for i in 0..4 {
            assert_eq!(l.range(i).len(), 4, "image {i}");
        }
        let none = extract(
            be,
            &mut PixelMap::default(),
            &items,
            &ExtractConfig { local: 0, ..cfg },
            "test",
        );
        assert!(none.unwrap().local.is_none());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn cpu_calls_are_capped_by_pixels_and_hold_one_image_at_least() {
        let be = crate::backend::cpu();
        assert_eq!(images_per_call(be, 512, 512), 4);
        assert_eq!(images_per_call(be, 1024, 768), 1);
        assert_eq!(images_per_call(be, 4000, 3000), 1);
        assert_eq!(images_per_call(be, 20, 30), CPU_CALL_PIXELS / 600);
    }

    #[test]
    fn a_wide_spread_of_sizes_is_warned_about_once_with_the_advice() {
        assert_eq!(scale_spread_warning(&[], 1024), None);
        assert_eq!(scale_spread_warning(&[300, 600, 450], 1024), None);
        let w = scale_spread_warning(&[300, 1024, 500, 1024], 1024).unwrap();
        assert!(w.contains("from 300 to 1024 px"), "{w}");
        assert!(
            w.contains("2 of 4 image(s) within 2x of the smallest, 2 larger"),
            "{w}"
        );
        assert!(w.contains("use --img-size 300"), "{w}");
        // A minority of small images is a note, not advice to shrink the rest.
        let w = scale_spread_warning(&[28, 512, 512, 400], 512).unwrap();
        assert!(w.starts_with("note: 1 of 4 image(s)"), "{w}");
        assert!(w.contains("28 to 56 px, the others' up to 512 px"), "{w}");
        assert!(!w.contains("use --img-size"), "{w}");
    }

    #[test]
    fn non_finite_values_are_found_by_row_and_column() {
        assert_eq!(first_non_finite(&[1.0, 2.0, 3.0, 4.0], 2), None);
        assert_eq!(
            first_non_finite(&[1.0, 2.0, 3.0, f32::NAN, f32::INFINITY, 0.0], 2),
            Some((1, 1))
        );
    }
}
