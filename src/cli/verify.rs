//! `insclr-cu verify` and `insclr-cu match`: the flags of [`insclr::jobs::verify_pool()`] and
//! [`insclr::jobs::match_images()`], and the verification settings `eval` and `search` share.

use anyhow::Result;
use insclr::backend::{DeviceChoice, Verify};
use insclr::eval::verify::{Rerank, DEFAULT_MIN_INLIERS};
use insclr::jobs::{self, MatchOptions, VerifyPoolOptions};
use std::path::PathBuf;

/// Matching and RANSAC settings (docs/verify.md).
#[derive(clap::Args, Clone)]
pub struct VerifySettings {
    /// A match's descriptor similarity floor.
    #[arg(long, default_value_t = Verify::default().min_similarity)]
    min_similarity: f32,
    /// Lowe's ratio test on descriptor distances (1 keeps all but exact ties).
    #[arg(long, default_value_t = Verify::default().ratio)]
    ratio: f32,
    /// A match is an inlier when the model maps it within this many pixels (of the described
    /// image, after the thumbnail).
    #[arg(long, default_value_t = Verify::default().inlier_px)]
    inlier_px: f32,
    /// Largest scale change between the two images a model may have.
    #[arg(long, default_value_t = Verify::default().max_scale)]
    max_scale: f32,
    /// RANSAC hypotheses per pair (every pair of matches when there are fewer).
    #[arg(long, default_value_t = Verify::default().hypotheses)]
    hypotheses: usize,
    /// Seed of the hypotheses: the same seed gives the same inliers on every backend.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Inliers a neighbour needs to move up the list.
    #[arg(long, default_value_t = DEFAULT_MIN_INLIERS)]
    pub min_inliers: i32,
}

impl VerifySettings {
    pub fn verify(&self) -> Verify {
        Verify {
            dim: 0,
            min_similarity: self.min_similarity,
            ratio: self.ratio,
            inlier_px: self.inlier_px,
            max_scale: self.max_scale,
            hypotheses: self.hypotheses,
            seed: self.seed,
        }
    }
}

/// Arguments of `insclr-cu verify`.
#[derive(clap::Args)]
pub struct Args {
    /// The candidate pool (.npz of insclr-cu pool).
    #[arg(long)]
    pool: PathBuf,
    /// The local features of the pool's images (.local.npz of insclr-cu extract --local).
    #[arg(long)]
    local: PathBuf,
    /// Neighbours verified per image; the others keep their place.
    #[arg(long, default_value_t = 100)]
    top: usize,
    /// The verified pool (.npz; train and pipeline read it like any other).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    settings: VerifySettings,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: Args, device: DeviceChoice) -> Result<()> {
    let opts = VerifyPoolOptions {
        pool: args.pool,
        local: args.local,
        out: args.out,
        top: args.top,
        min_inliers: args.settings.min_inliers,
        verify: args.settings.verify(),
        progress: !args.quiet,
    };
    let r = jobs::verify_pool(&opts, device)?;
    println!(
        "verify: {} images, top {}: {} pairs in {:.1} s ({:.0} pairs/s){}; {} lists reordered, {} with a verified first neighbour; wrote {}",
        r.images,
        opts.top,
        r.pairs,
        r.seconds,
        r.pairs as f64 / r.seconds.max(1e-9),
        if r.resumed_rows > 0 {
            format!(" after resuming at image {}", r.resumed_rows)
        } else {
            String::new()
        },
        r.reordered,
        r.first_verified,
        opts.out.display()
    );
    Ok(())
}

/// Arguments of `insclr-cu match`.
#[derive(clap::Args)]
pub struct MatchArgs {
    /// The two images.
    a: PathBuf,
    b: PathBuf,
    #[command(flatten)]
    describe: super::extract::DescribeArgs,
    /// Local features per image.
    #[arg(long, default_value_t = 128)]
    local: usize,
    #[command(flatten)]
    settings: VerifySettings,
    /// Write a picture of the two images with their inlier matches (green) and the other
    /// mutual matches (red) here (.svg).
    #[arg(long)]
    svg: Option<PathBuf>,
}

pub fn run_match(args: MatchArgs, device: DeviceChoice) -> Result<()> {
    let opts = MatchOptions {
        a: args.a,
        b: args.b,
        describe: args.describe.options(),
        local: args.local,
        verify: args.settings.verify(),
        svg: args.svg,
    };
    let r = jobs::match_images(&opts, device)?;
    let verified = r.result.inliers >= args.settings.min_inliers;
    println!(
        "match: {} inliers of {} mutual matches ({} and {} features){}; {}",
        r.result.inliers,
        r.result.matches,
        r.features[0],
        r.features[1],
        if r.result.inliers > 0 {
            format!(", scale {:.2}, rotation {:.1} deg", r.scale, r.rotation_deg)
        } else {
            String::new()
        },
        if verified {
            format!("verified (>= {} inliers)", args.settings.min_inliers)
        } else {
            format!("not verified (< {} inliers)", args.settings.min_inliers)
        }
    );
    if let Some(p) = &opts.svg {
        println!("wrote {}", p.display());
    }
    Ok(())
}

/// `--rerank R` of `eval` and `search` (and its settings).
#[derive(clap::Args)]
pub struct RerankArgs {
    /// Re-rank each query's first R results by spatial verification: those with at least
    /// --min-inliers inliers move to the front, most first. The queries' local features are
    /// extracted with their descriptors; the database's (eval: also extracted, or read from the
    /// .local.npz beside --db-feats / --query-feats; search: the .local.npz beside --index).
    #[arg(long, value_name = "R")]
    rerank: Option<usize>,
    /// Local features per image when extracting for --rerank.
    #[arg(long, default_value_t = 128)]
    local: usize,
    #[command(flatten)]
    settings: VerifySettings,
}

impl RerankArgs {
    /// The re-ranking asked for, and the local features per image to extract.
    pub fn rerank(&self) -> (Option<Rerank>, usize) {
        let r = self.rerank.map(|top| Rerank {
            top,
            min_inliers: self.settings.min_inliers,
            verify: self.settings.verify(),
        });
        (r, self.local)
    }
}
