//! Spatial verification jobs: re-rank a candidate pool by local-feature inliers
//! (`insclr-cu verify`), and verify two photos with a picture of their inlier matches
//! (`insclr-cu match`).

use super::extract::DescribeOptions;
use crate::backend::cpu::verify::{image, is_inlier, mutual_matches};
use crate::backend::verify::PairResult;
use crate::backend::{self, DeviceChoice, Op, Verify};
use crate::eval::extract::{self, ImageItem};
use crate::eval::local::{LocalFeatures, MAX_LOCAL};
use crate::eval::verify::{rerank_pool, verify_pairs, OnBackend, Rerank, PAIRS_PER_CALL};
use crate::io::npy::{self, Array, NpzEntry};
use crate::io::paths::{check_outputs, Named};
use crate::mining::pool::CandidatePool;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What [`verify_pool`] reads and writes.
#[derive(Clone, Debug)]
pub struct VerifyPoolOptions {
    /// The candidate pool (`insclr-cu pool`'s `.npz`).
    pub pool: PathBuf,
    /// The local features of the pool's images (`insclr-cu extract --local`), same rows.
    pub local: PathBuf,
    /// The verified pool, read by `train` like any other.
    pub out: PathBuf,
    /// Neighbours verified per image (the rest keep their place).
    pub top: usize,
    /// Inliers a neighbour needs to move up.
    pub min_inliers: i32,
    /// Matching and RANSAC settings (`dim` is taken from the file).
    pub verify: Verify,
    /// Show a progress bar.
    pub progress: bool,
}

impl Default for VerifyPoolOptions {
    fn default() -> Self {
        let r = Rerank::new(100, 0);
        VerifyPoolOptions {
            pool: PathBuf::new(),
            local: PathBuf::new(),
            out: PathBuf::new(),
            top: r.top,
            min_inliers: r.min_inliers,
            verify: r.verify,
            progress: true,
        }
    }
}

/// What [`verify_pool`] did.
#[derive(Clone, Debug)]
pub struct VerifyPoolReport {
    pub images: usize,
    /// Pairs verified (by this run; a resumed run counts only its own).
    pub pairs: usize,
    /// Images whose top neighbours changed order.
    pub reordered: usize,
    /// Images whose first neighbour has at least `min_inliers`.
    pub first_verified: usize,
    /// Rows taken from an interrupted run.
    pub resumed_rows: usize,
    pub seconds: f64,
}

/// Where an interrupted [`verify_pool`] keeps the inliers of the rows it finished.
fn partial_paths(out: &Path) -> (PathBuf, PathBuf) {
    let with = |ext: &str| {
        let mut s = out.as_os_str().to_owned();
        s.push(ext);
        PathBuf::from(s)
    };
    (with(".partial.npz"), with(".partial.json"))
}

/// How often the inliers found so far are saved.
const SAVE_EVERY_S: f64 = 60.0;

/// Re-ranks each image's first `top` neighbours of a candidate pool by their inliers against
/// it and writes the pool (`neighbor` reordered, `similarity` still each neighbour's global
/// similarity). Progress is saved every minute beside the output (`.partial.npz/.json`): a run
/// of the same inputs and settings continues from there.
pub fn verify_pool(opts: &VerifyPoolOptions, device: DeviceChoice) -> Result<VerifyPoolReport> {
    crate::io::check_writable(&opts.out)?;
    let (partial_npz, partial_json) = partial_paths(&opts.out);
    check_outputs(
        &[
            Named::new("--pool", &opts.pool),
            Named::new("--local", &opts.local),
        ],
        &[
            Named::new("--out", &opts.out),
            Named::new("its progress file", &partial_npz),
            Named::new("its progress file", &partial_json),
        ],
    )?;
    let local = LocalFeatures::load(&opts.local)?;
    let pool = CandidatePool::load(&opts.pool, local.images()).with_context(|| {
        format!(
            "{} must describe the pool's images in its rows (extract them with the list the pool was built from)",
            opts.local.display()
        )
    })?;
    let (n, t) = (pool.n, opts.top.min(pool.k));
    if t == 0 {
        bail!("--top 0 verifies nothing; give the neighbours to verify per image");
    }
    let s = Verify {
        dim: local.dim,
        ..opts.verify
    };
    let (be, chosen) = backend::select(device, &[(Op::Verify, backend::DType::I8)])?;
    eprintln!("backend: {chosen}");
    let key = progress_key(opts, t, &s)?;
    let mut inliers = resume(&partial_npz, &partial_json, &key, t)?;
    let resumed_rows = inliers.len() / t;
    if resumed_rows > 0 {
        eprintln!(
            "verify: resuming after {resumed_rows} of {n} images ({})",
            partial_json.display()
        );
    }
    let pb = extract::progress_bar(n * t, opts.progress, "verifying", "pairs");
    pb.inc((resumed_rows * t) as u64);
    let t0 = Instant::now();
    // Uploaded once: the rows are verified block by block, saving progress in between.
    let on_backend = OnBackend::new(be.as_ref(), &local)?;
    let mut saved = Instant::now();
    let rows_per_call = (PAIRS_PER_CALL / t).max(1) * 4;
    let mut row = resumed_rows;
    while row < n {
        let end = (row + rows_per_call).min(n);
        let pairs: Vec<[u32; 2]> = (row..end)
            .flat_map(|i| pool.neighbors(i)[..t].iter().map(move |&j| [i as u32, j]))
            .collect();
        let found = on_backend.verify(be.as_ref(), &pairs, s, &mut |k| pb.inc(k as u64))?;
        inliers.extend(found.iter().map(|f: &PairResult| f.inliers));
        row = end;
        if row < n && saved.elapsed().as_secs_f64() > SAVE_EVERY_S {
            save_partial(&partial_npz, &partial_json, &key, &inliers)?;
            saved = Instant::now();
        }
    }
    pb.finish_and_clear();
    let seconds = t0.elapsed().as_secs_f64();
    let (out, reordered, first_verified) = rerank_pool(&pool, &inliers, t, opts.min_inliers);
    out.save(&opts.out)?;
    for p in [&partial_npz, &partial_json] {
        if p.exists() {
            std::fs::remove_file(p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(VerifyPoolReport {
        images: n,
        pairs: (n - resumed_rows) * t,
        reordered,
        first_verified,
        resumed_rows,
        seconds,
    })
}

/// What a saved progress must have been made from to be continued.
fn progress_key(opts: &VerifyPoolOptions, t: usize, s: &Verify) -> Result<serde_json::Value> {
    Ok(serde_json::json!({
        "pool": file_key(&opts.pool)?, "local": file_key(&opts.local)?, "top": t,
        "min_inliers": opts.min_inliers, "verify": format!("{s:?}"),
    }))
}

/// A file's identity for resuming: its path, size and modification time.
fn file_key(p: &Path) -> Result<String> {
    let m = std::fs::metadata(p).with_context(|| format!("reading {}", p.display()))?;
    let modified = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok(format!("{} {} {modified}", p.display(), m.len()))
}

fn save_partial(npz: &Path, json: &Path, key: &serde_json::Value, inliers: &[i32]) -> Result<()> {
    let a = Array::new(
        vec![inliers.len()],
        inliers.iter().map(|&v| v as i64).collect(),
    )?;
    npy::write_npz(npz, &[NpzEntry::I64("inliers", &a)])?;
    let doc = serde_json::json!({"key": key, "pairs": inliers.len()});
    npy::write_atomic(json, |w| Ok(serde_json::to_writer_pretty(&mut *w, &doc)?))
}

/// The inliers an interrupted run of the same inputs and settings saved (whole rows), or none.
fn resume(npz: &Path, json: &Path, key: &serde_json::Value, t: usize) -> Result<Vec<i32>> {
    let Ok(text) = std::fs::read_to_string(json) else {
        return Ok(Vec::new());
    };
    let doc: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a progress file; delete it", json.display()))?;
    if doc["key"] != *key {
        eprintln!(
            "verify: {} is the progress of other inputs or settings; starting over",
            json.display()
        );
        return Ok(Vec::new());
    }
    let a = npy::read_npz::<i64>(npz, "inliers")?;
    let pairs = doc["pairs"].as_u64().unwrap_or(0) as usize;
    if a.data.len() != pairs || pairs % t != 0 {
        bail!(
            "{} holds {} results but {} says {pairs}; delete both to start over",
            npz.display(),
            a.data.len(),
            json.display()
        );
    }
    Ok(a.data.into_iter().map(|v| v as i32).collect())
}

/// What [`match_images`] compares, and how.
#[derive(Clone, Debug)]
pub struct MatchOptions {
    pub a: PathBuf,
    pub b: PathBuf,
    /// The model and extraction settings.
    pub describe: DescribeOptions,
    /// Local features per image.
    pub local: usize,
    pub verify: Verify,
    /// Write the picture (SVG: both images side by side, inlier matches drawn) here.
    pub svg: Option<PathBuf>,
}

/// What [`match_images`] found.
#[derive(Clone, Debug)]
pub struct MatchReport {
    pub features: [usize; 2],
    pub result: PairResult,
    /// Each inlier's points: in A's and B's described image, pixels.
    pub inliers: Vec<([f32; 2], [f32; 2])>,
    /// The mutual matches that are not inliers.
    pub outliers: Vec<([f32; 2], [f32; 2])>,
    /// The model's scale and rotation (degrees).
    pub scale: f32,
    pub rotation_deg: f32,
}

/// Describes two images' local features, verifies the pair and, with `svg`, draws it.
pub fn match_images(opts: &MatchOptions, device: DeviceChoice) -> Result<MatchReport> {
    if opts.local == 0 || opts.local > MAX_LOCAL {
        bail!(
            "--local {}: give 1 to {MAX_LOCAL} features per image",
            opts.local
        );
    }
    let outputs: Vec<Named> = opts.svg.iter().map(|p| Named::new("--svg", p)).collect();
    check_outputs(
        &[
            Named::new("image A", &opts.a),
            Named::new("image B", &opts.b),
        ],
        &outputs,
    )?;
    if let Some(p) = &opts.svg {
        crate::io::check_writable(p)?;
    }
    let d = &opts.describe;
    let mut needs = d.needs();
    needs.extend(backend::f32_needs(&[Op::Verify]));
    let (be, chosen) = backend::select(device, &needs)?;
    eprintln!("backend: {chosen}");
    let (mut net, _) = d.load(be.as_ref())?;
    let items: Vec<ImageItem> = [&opts.a, &opts.b]
        .iter()
        .map(|p| ImageItem {
            path: p.to_path_buf(),
            bbx: None,
        })
        .collect();
    let cfg = extract::ExtractConfig {
        local: opts.local,
        ..d.config(false)
    };
    let got = extract::extract(be.as_ref(), net.as_mut(), &items, &cfg, "describing")?;
    let local = got
        .local
        .context("the extraction returned no local features")?;
    let s = Verify {
        dim: local.dim,
        ..opts.verify
    };
    let result = verify_pairs(be.as_ref(), &local, &[[0, 1]], s, &mut |_| {})?[0];
    let xy = |i: usize| {
        image(
            &local.desc,
            &local.desc_scale,
            &local.xy,
            &local.offsets,
            local.dim,
            i,
        )
    };
    let (fa, fb) = (xy(0), xy(1));
    let c = s.consts();
    let (mut inliers, mut outliers) = (Vec::new(), Vec::new());
    for (i, j) in mutual_matches(fa, fb, local.dim, &s, &c) {
        let pq = (fa.xy[i], fb.xy[j]);
        if result.inliers > 0 && is_inlier(&result.model, pq.0, pq.1, c.thr2) {
            inliers.push(pq);
        } else {
            outliers.push(pq);
        }
    }
    if inliers.len() != result.inliers as usize {
        bail!(
            "the backend counted {} inliers but its model maps {} matches within {} px; the backends disagree (report this)",
            result.inliers,
            inliers.len(),
            s.inlier_px
        );
    }
    let [a, b, _, _] = result.model;
    let report = MatchReport {
        features: [local.range(0).len(), local.range(1).len()],
        result,
        inliers,
        outliers,
        scale: (a * a + b * b).sqrt(),
        rotation_deg: b.atan2(a).to_degrees(),
    };
    if let Some(p) = &opts.svg {
        let svg = draw(&opts.a, &opts.b, &local, &report)?;
        npy::write_atomic(p, |w| {
            std::io::Write::write_all(w, svg.as_bytes())?;
            Ok(())
        })?;
    }
    Ok(report)
}

/// The two described images side by side (JPEG inside the SVG), inliers as green lines,
/// other mutual matches as thin red ones.
fn draw(a: &Path, b: &Path, local: &LocalFeatures, r: &MatchReport) -> Result<String> {
    let [ha, wa] = local.image_size[0];
    let [hb, wb] = local.image_size[1];
    let gap = 10.0;
    let (w, h) = (wa as f32 + gap + wb as f32, ha.max(hb) as f32);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" viewBox=\"0 0 {w} {}\">\n",
        h + 30.0,
        h + 30.0
    );
    for (path, x, (iw, ih)) in [(a, 0.0, (wa, ha)), (b, wa as f32 + gap, (wb, hb))] {
        s += &format!(
            "<image x=\"{x}\" y=\"0\" width=\"{iw}\" height=\"{ih}\" href=\"data:image/jpeg;base64,{}\"/>\n",
            jpeg_base64(path, iw as u32, ih as u32)?
        );
    }
    let off = wa as f32 + gap;
    for (pairs, colour, width) in [(&r.outliers, "#e0301e", 1.0), (&r.inliers, "#18c03c", 2.0)] {
        for (p, q) in pairs {
            s += &format!(
                "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{colour}\" stroke-width=\"{width}\" stroke-opacity=\"0.85\"/>\n",
                p[0],
                p[1],
                q[0] + off,
                q[1]
            );
        }
    }
    s += &format!(
        "<text x=\"4\" y=\"{}\" font-family=\"sans-serif\" font-size=\"16\">{} inliers of {} mutual matches (scale {:.2}, rotation {:.0} deg)</text>\n</svg>\n",
        h + 22.0,
        r.result.inliers,
        r.result.matches,
        r.scale,
        r.rotation_deg
    );
    Ok(s)
}

/// The image at `path` resized to `w x h`, as base64 JPEG.
fn jpeg_base64(path: &Path, w: u32, h: u32) -> Result<String> {
    let img = image::open(path)
        .with_context(|| format!("reading {}", path.display()))?
        .to_rgb8();
    let img = image::imageops::resize(
        &img,
        w.max(1),
        h.max(1),
        image::imageops::FilterType::Triangle,
    );
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 85)
        .encode_image(&img)
        .with_context(|| format!("encoding {}", path.display()))?;
    Ok(base64(&bytes))
}

fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let v = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= c.len() {
                s.push(ABC[(v >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::local::Candidate;

    /// 6 images: 0-2 with their copies 3-5 (shifted features, the same descriptors), in a pool
    /// whose rows list the copy last.
    fn collection(dir: &Path) -> VerifyPoolOptions {
        let mut rng = crate::rng::Rng::new(3);
        let dim = 16;
        let mut l = LocalFeatures::new(dim);
        let images: Vec<Vec<Candidate>> = (0..3)
            .map(|_| {
                (0..12)
                    .map(|_| Candidate {
                        strength: 1.0,
                        xy: [rng.uniform_f32(0.0, 300.0), rng.uniform_f32(0.0, 200.0)],
                        scale: 1.0,
                        desc: rng.vec_f32(dim, -1.0, 1.0),
                    })
                    .collect()
            })
            .collect();
        for im in &images {
            l.push_image([200, 300], im);
        }
        for im in &images {
            let moved: Vec<Candidate> = im
                .iter()
                .map(|c| Candidate {
                    xy: [c.xy[0] + 20.0, c.xy[1] - 5.0],
                    ..c.clone()
                })
                .collect();
            l.push_image([200, 300], &moved);
        }
        let copy = |i: usize| (i + 3) % 6;
        let mut neighbor = Vec::new();
        for i in 0..6u32 {
            let others: Vec<u32> = (0..6u32)
                .filter(|&j| j != i && j as usize != copy(i as usize))
                .take(2)
                .collect();
            neighbor.extend(others);
            neighbor.push(copy(i as usize) as u32);
        }
        let pool = CandidatePool {
            n: 6,
            k: 3,
            similarity: vec![0.5; 18],
            neighbor,
        };
        let opts = VerifyPoolOptions {
            pool: dir.join("pool.npz"),
            local: dir.join("feats.local.npz"),
            out: dir.join("verified.npz"),
            top: 3,
            progress: false,
            ..Default::default()
        };
        pool.save(&opts.pool).unwrap();
        l.save(&opts.local).unwrap();
        opts
    }

    #[test]
    fn copies_move_first_on_every_backend_and_an_interrupted_run_resumes() {
        let dir = std::env::temp_dir().join(format!("insclr-verify-job-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let opts = collection(&dir);
        let r = verify_pool(&opts, DeviceChoice::Cpu).unwrap();
        assert_eq!(
            (r.images, r.pairs, r.reordered, r.first_verified),
            (6, 18, 6, 6)
        );
        let full = CandidatePool::load(&opts.out, 6).unwrap();
        for i in 0..6 {
            assert_eq!(full.neighbors(i)[0] as usize, (i + 3) % 6, "row {i}");
        }
        let emu = VerifyPoolOptions {
            out: dir.join("emu.npz"),
            ..opts.clone()
        };
        verify_pool(&emu, DeviceChoice::Emu).unwrap();
        assert_eq!(CandidatePool::load(&emu.out, 6).unwrap(), full);

        // Progress of rows 0-1 saved as an interrupted run leaves it: the next run takes it.
        let s = Verify {
            dim: 16,
            ..opts.verify
        };
        let local = LocalFeatures::load(&opts.local).unwrap();
        let again = VerifyPoolOptions {
            out: dir.join("again.npz"),
            ..opts.clone()
        };
        let (npz, json) = partial_paths(&again.out);
        // Rows 0-1, in the pool's order: what the interrupted run would have saved.
        let orig = CandidatePool::load(&opts.pool, 6).unwrap();
        let pairs: Vec<[u32; 2]> = (0..2u32)
            .flat_map(|i| orig.neighbors(i as usize).iter().map(move |&j| [i, j]))
            .collect();
        let done_orig: Vec<i32> =
            verify_pairs(crate::backend::cpu(), &local, &pairs, s, &mut |_| {})
                .unwrap()
                .iter()
                .map(|f| f.inliers)
                .collect();
        save_partial(
            &npz,
            &json,
            &progress_key(&again, 3, &s).unwrap(),
            &done_orig,
        )
        .unwrap();
        let r = verify_pool(&again, DeviceChoice::Cpu).unwrap();
        assert_eq!((r.resumed_rows, r.pairs), (2, 12));
        assert_eq!(CandidatePool::load(&again.out, 6).unwrap(), full);
        assert!(
            !npz.exists() && !json.exists(),
            "progress files removed when done"
        );

        // Progress of other settings is not taken.
        let other = Verify { seed: 9, ..s };
        save_partial(
            &npz,
            &json,
            &progress_key(&again, 3, &other).unwrap(),
            &done_orig,
        )
        .unwrap();
        assert_eq!(
            verify_pool(&again, DeviceChoice::Cpu).unwrap().resumed_rows,
            0
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn base64_pads_as_rfc_4648() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
    }
}
