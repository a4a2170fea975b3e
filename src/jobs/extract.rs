//! Describe images: multi-scale descriptors of a folder or list of images, written as `.npy`
//! (`insclr-cu extract`).

use crate::backend::{self, f32_needs, Backend, DType, DeviceChoice, Op};
use crate::data::image::{list_images, Skipped};
use crate::dist;
use crate::eval::extract::{self, BadImages, ExtractConfig, ImageItem};
use crate::eval::local::LocalFeatures;
use crate::io::paths::{check_outputs, Named};
use crate::io::{self, npy};
use crate::nn::net::{DescriptorChoice, LoadChoice};
use crate::nn::DescriptorNet;
use crate::nn::LocalLayer;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// How images become descriptors: what `extract` and `search` share, so that a search
/// describes its queries exactly as the index was described. Field names follow the flags.
#[derive(Clone, Debug)]
pub struct DescribeOptions {
    /// resnet50, resnet101, efficientnet-lite0, resnet-custom (layout read from the weights),
    /// auto (the backbone a model file of `train` records) or tiny-gem (GeM of the pixels);
    /// `None`: auto with weights, else tiny-gem.
    pub model: Option<String>,
    /// Weights of `model` (.safetensors or .pth).
    pub weights: Option<PathBuf>,
    /// The trained head, the backbone's raw GeM, or the head when the file has one.
    pub descriptor: DescriptorChoice,
    /// imagenet, lite, or `MEAN/STD` of v/255; `None`: the weights' recorded one.
    pub pixel_norm: Option<String>,
    /// Longest side a scaled image may have.
    pub max_side: usize,
    /// Resize factors of the normalised image.
    pub scales: Vec<f64>,
    /// Longest image side after the thumbnail (only downscales).
    pub img_size: u32,
    /// Resize every image to exactly `[h, w]` instead of the thumbnail (spec G4).
    pub exact_size: Option<[usize; 2]>,
    /// Images decoded and described together.
    pub batch: usize,
    /// Average the raw per-scale descriptors (spec G2); the mean is still L2-normalised.
    pub raw_scales: bool,
    /// No progress bar.
    pub quiet: bool,
    /// The map local features come from (`extract --local`, `match`, `search --rerank`).
    pub local_layer: LocalLayer,
    /// What the backbone and GeM compute in: f32, or bf16 (tensor cores on a GPU).
    pub precision: DType,
    /// In f32, convolutions on TF32 tensor cores where the backend has them (a CUDA GPU, or its
    /// emulator), as PyTorch's f32 convolutions run; false keeps them exact f32
    /// ([`Backend::set_tf32`]).
    pub tf32: bool,
}

impl Default for DescribeOptions {
    /// The command line's defaults: tiny-gem, 1024 px, scales `[1, 1/sqrt(2), 1/2]`.
    fn default() -> Self {
        DescribeOptions {
            model: None,
            weights: None,
            descriptor: DescriptorChoice::Auto,
            pixel_norm: None,
            max_side: extract::MAX_SIDE,
            scales: extract::REVISITED_SCALES.to_vec(),
            img_size: extract::IMG_SIZE,
            exact_size: None,
            batch: 16,
            raw_scales: false,
            quiet: false,
            local_layer: LocalLayer::Last,
            precision: DType::F32,
            tf32: true,
        }
    }
}

impl DescribeOptions {
    /// The model these options name, with its default.
    pub fn model_name(&self) -> &str {
        model_name(self.model.as_deref(), self.weights.as_deref())
    }

    /// What describing with these options needs of a backend: the model's ops on f32
    /// ([`model_ops`]), and in bf16 the backbone's and the casts on bf16.
    pub fn needs(&self) -> Vec<(Op, DType)> {
        let mut needs = f32_needs(model_ops(self.model_name()));
        if self.precision != DType::F32 {
            let low = crate::nn::LOW_PRECISION_OPS.iter();
            let eval = low.filter(|&&o| crate::nn::EVAL_OPS.contains(&o) || o == Op::Cast);
            needs.extend(eval.map(|&o| (o, self.precision)));
        }
        needs
    }

    /// Loads the descriptor network on `be`, with what it is (also printed), and sets `be`'s
    /// convolutions to TF32 or exact f32 as `tf32` says.
    pub fn load(&self, be: &dyn Backend) -> Result<(Box<dyn DescriptorNet>, String)> {
        be.set_tf32(self.tf32);
        let choice = load_choice(self.descriptor, self.pixel_norm.as_deref(), self.precision)?;
        let (net, what) =
            crate::eval::load_model(be, self.model.as_deref(), self.weights.as_deref(), choice)?;
        let tf32 = if be.tf32() && self.precision == DType::F32 {
            ", TF32 convolutions"
        } else {
            ""
        };
        eprintln!("model: {what}{tf32}");
        Ok((net, what))
    }

    /// The extraction settings of these options.
    pub fn config(&self, skip_bad: bool) -> ExtractConfig {
        ExtractConfig {
            img_size: self.img_size,
            scales: self.scales.clone(),
            batch: self.batch,
            normalize_each_scale: !self.raw_scales,
            progress: !self.quiet,
            max_side: self.max_side,
            skip_bad,
            exact_size: self.exact_size,
            // An output of `extract` (`ExtractOptions::local`), not a way of describing.
            local: 0,
            local_layer: self.local_layer,
        }
    }
}

/// What [`extract()`] describes and where it writes.
#[derive(Clone, Debug, Default)]
pub struct ExtractOptions {
    pub describe: DescribeOptions,
    /// A folder (every image under it, sorted), a text file with one path per line, or GLDv2's
    /// train_clean.csv.
    pub images: PathBuf,
    /// Prefix of the relative paths in an `images` list; `None`: the list's folder.
    pub root: Option<PathBuf>,
    /// The descriptors (`.npy`, N x D float32); the image of each row goes beside it as
    /// `.txt`, unusable images as `.bad.txt`.
    pub out: PathBuf,
    /// Leave unusable images out (listed in `.bad.txt`) instead of failing.
    pub skip_bad: bool,
    /// Ranks to split the images over (0 or 1: one): GPUs with `--device cuda`, threads with
    /// cpu / emu ([`crate::dist::launch`]). The matrix is the same as one rank's.
    pub gpus: usize,
    /// Local features per image (0: none): the strongest locations of the backbone's last map
    /// over all scales, written to `<out stem>.local.npz` ([`local_path`]) with the rows of the
    /// `.npy`. At most [`crate::eval::local::MAX_LOCAL`].
    pub local: usize,
}

/// Where `extract` writes the local features of the descriptors `out`: `<out stem>.local.npz`.
pub fn local_path(out: &Path) -> PathBuf {
    out.with_extension("local.npz")
}

/// The local features `extract --local` wrote beside the descriptors `feats` (`rows` of them),
/// refused when missing, when older than `feats` (an `extract` without `--local` rewrote the
/// matrix after them) or when their image count differs.
pub fn read_local_beside(feats: &Path, rows: usize) -> Result<LocalFeatures> {
    let p = local_path(feats);
    let again = format!("extract {} again with --local N", feats.display());
    let modified = |f: &Path| {
        std::fs::metadata(f)
            .and_then(|m| m.modified())
            .with_context(|| format!("reading {}", f.display()))
    };
    if !p.exists() {
        bail!(
            "the local features of {}: {} is missing; {again}",
            feats.display(),
            p.display()
        );
    }
    if modified(&p)? < modified(feats)? {
        bail!(
            "{} is older than {}: its rows may belong to an earlier matrix; {again}",
            p.display(),
            feats.display()
        );
    }
    let l = LocalFeatures::load(&p)?;
    if l.images() != rows {
        bail!(
            "{} holds local features of {} images but {} has {rows} rows; {again}",
            p.display(),
            l.images(),
            feats.display()
        );
    }
    Ok(l)
}

/// What [`extract()`] wrote of local features.
#[derive(Clone, Debug)]
pub struct LocalReport {
    /// Features in all.
    pub features: usize,
    pub images: usize,
    /// Descriptor length (the backbone's channels).
    pub dim: usize,
    pub path: PathBuf,
}

/// What [`extract()`] wrote.
#[derive(Clone, Debug)]
pub struct ExtractReport {
    /// Rows written (images described).
    pub rows: usize,
    pub dim: usize,
    /// The model's name as the options give it.
    pub model: String,
    /// The row list beside the descriptors.
    pub order: PathBuf,
    /// Images left out (with `skip_bad`).
    pub skipped: usize,
    pub images_per_second: f64,
    /// The local features, when asked for.
    pub local: Option<LocalReport>,
}

impl ExtractReport {
    /// The line `insclr-cu extract` prints: what went where, how fast.
    pub fn summary(&self, out: &Path) -> String {
        format!(
            "wrote {} ({} x {}, {}) and {}: {:.1} images/s",
            out.display(),
            self.rows,
            self.dim,
            self.model,
            self.order.display(),
            self.images_per_second
        )
    }

    /// The line `insclr-cu extract --local` prints after [`ExtractReport::summary`].
    pub fn local_summary(&self) -> Option<String> {
        let l = self.local.as_ref()?;
        Some(format!(
            "local features: {} in {} images (dim {}) -> {}",
            l.features,
            l.images,
            l.dim,
            l.path.display()
        ))
    }
}

/// Describes the images of `opts.images` and writes the descriptors, their row list and the
/// list of unusable images. Without `skip_bad` an unusable image stops the run before anything
/// is written but the list of unusable images.
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// use insclr::jobs::{extract, ExtractOptions};
/// let dir = std::env::temp_dir().join(format!("insclr-doc-extract-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let report = extract(
///     &ExtractOptions {
///         images: "tests/data/gldv2/train".into(),
///         out: dir.join("feats.npy"),
///         describe: insclr::jobs::DescribeOptions { img_size: 64, quiet: true, ..Default::default() },
///         ..Default::default()
///     },
///     insclr::backend::DeviceChoice::Cpu,
/// )?;
/// assert_eq!((report.rows, report.dim), (44, 3)); // tiny-gem: GeM of the RGB pixels
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
pub fn extract(opts: &ExtractOptions, device: DeviceChoice) -> Result<ExtractReport> {
    io::check_writable(&opts.out)?;
    let model = opts.describe.model_name().to_string();
    extract::check_local(opts.local)?;
    if opts.local > 0 && model == "tiny-gem" {
        bail!(
            "--local {}: tiny-gem has no feature map; local features need a backbone: give --weights (and --model resnet50, resnet101, efficientnet-lite0 or resnet-custom)",
            opts.local
        );
    }
    let paths = if opts.images.is_dir() {
        list_images(&opts.images)?
    } else {
        let root = opts.root.clone().unwrap_or_else(|| {
            opts.images
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default()
        });
        crate::data::image_paths(&root, Some(&opts.images))?
    };
    let bad_list = opts.out.with_extension("bad.txt");
    let order = opts.out.with_extension("txt");
    let local_file = local_path(&opts.out);
    let mut inputs = vec![Named::new("--images", &opts.images)];
    inputs.extend(
        opts.describe
            .weights
            .iter()
            .map(|w| Named::new("--weights", w)),
    );
    inputs.extend(paths.iter().map(|p| Named::new("the image", p)));
    check_outputs(
        &inputs,
        &[
            Named::new("--out", &opts.out),
            Named::new("its row list", &order),
            Named::new("its list of unusable images", &bad_list),
            Named::new("its local features", &local_file),
        ],
    )?;
    let items: Vec<ImageItem> = paths
        .iter()
        .map(|p| ImageItem {
            path: p.clone(),
            bbx: None,
        })
        .collect();
    let cfg = ExtractConfig {
        local: opts.local,
        ..opts.describe.config(opts.skip_bad)
    };
    let t0 = std::time::Instant::now();
    let described = dist::launch::on_ranks(opts.gpus, device, |comm, gpu| {
        let (be, chosen) = backend::select_on(device, &opts.describe.needs(), gpu)?;
        if comm.rank() == 0 {
            eprintln!("backend: {chosen}{}", dist::launch::ranks_note(comm));
        }
        let (mut net, _) = opts.describe.load(be.as_ref())?;
        extract::extract_on_ranks(be.as_ref(), comm, net.as_mut(), &items, &cfg, "extract")
    });
    if !dist::launch::is_rank_zero()? {
        // A launched rank > 0: rank 0 writes the files.
        let out = described?;
        return Ok(ExtractReport {
            rows: out.rows.len(),
            dim: out.dim,
            model,
            order,
            skipped: out.skipped.len(),
            images_per_second: out.rows.len() as f64 / t0.elapsed().as_secs_f64().max(1e-9),
            local: None,
        });
    }
    let out = match described {
        Ok(out) => out,
        Err(e) => {
            let Some(BadImages(bad)) = e.downcast_ref::<BadImages>() else {
                return Err(e);
            };
            eprintln!("{}", extract::list_bad(bad, 50));
            write_bad_list(&bad_list, bad)?;
            bail!(
                "{} unusable image(s), listed in {}; nothing written to {}. Fix or remove them, or pass --skip-bad to leave them out",
                bad.len(),
                bad_list.display(),
                opts.out.display()
            );
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    let n = out.rows.len();
    if let Some(l) = out.local.as_ref().filter(|l| l.images() != n) {
        bail!(
            "local features of {} images for {n} descriptors; nothing written to {}",
            l.images(),
            opts.out.display()
        );
    }
    let arr = npy::Array::new(vec![n, out.dim], out.feats)?;
    npy::write(&opts.out, &arr)?;
    npy::write_atomic(&order, |w| {
        use std::io::Write;
        for &i in &out.rows {
            writeln!(w, "{}", paths[i].display())?;
        }
        Ok(())
    })?;
    let local = match out.local {
        Some(l) => {
            l.save(&local_file)?;
            Some(LocalReport {
                features: l.len(),
                images: l.images(),
                dim: l.dim,
                path: local_file,
            })
        }
        // A file of an earlier run stays (it is not this run's to delete); its readers refuse
        // it as older than this matrix ([`read_local_beside`]).
        None => None,
    };
    if opts.skip_bad {
        // Written even when empty, so the files beside the matrix always describe this run.
        write_bad_list(&bad_list, &out.skipped)?;
    } else if bad_list.exists() {
        std::fs::remove_file(&bad_list)
            .with_context(|| format!("removing the stale {}", bad_list.display()))?;
    }
    if !out.skipped.is_empty() {
        eprintln!(
            "warning: {}\nleft out of {} (listed in {})",
            extract::list_bad(&out.skipped, 50),
            opts.out.display(),
            bad_list.display()
        );
    }
    Ok(ExtractReport {
        rows: n,
        dim: out.dim,
        model,
        order,
        skipped: out.skipped.len(),
        images_per_second: n as f64 / secs.max(1e-9),
        local,
    })
}

/// `<out>.bad.txt`: one `path<TAB>reason` line per unusable image.
fn write_bad_list(path: &Path, bad: &Skipped) -> Result<()> {
    npy::write_atomic(path, |w| {
        use std::io::Write;
        for (_, p, why) in &bad.items {
            writeln!(w, "{}\t{}", p.display(), why.replace(['\n', '\t'], " "))?;
        }
        Ok(())
    })
}

/// The ops describing images with `model` needs: tiny-gem pools pixels, a backbone runs every
/// eval-mode layer.
pub fn model_ops(model: &str) -> &'static [Op] {
    if model == "tiny-gem" {
        &[Op::GemFwd, Op::L2normFwd]
    } else {
        crate::nn::EVAL_OPS
    }
}

/// The load choices of a descriptor choice, a pixel normalisation's text and a precision.
pub fn load_choice(
    descriptor: DescriptorChoice,
    pixel_norm: Option<&str>,
    precision: DType,
) -> Result<LoadChoice> {
    Ok(LoadChoice {
        descriptor,
        precision,
        pixel_norm: pixel_norm
            .map(crate::nn::meta::parse_pixel_norm)
            .transpose()
            .context("--pixel-norm")?,
    })
}

/// The model `model` names, with its default: `auto` with weights, else `tiny-gem`.
pub fn model_name<'a>(model: Option<&'a str>, weights: Option<&Path>) -> &'a str {
    match (model, weights) {
        (Some(m), _) => m,
        (None, Some(_)) => "auto",
        (None, None) => "tiny-gem",
    }
}
