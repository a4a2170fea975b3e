//! Helpers shared by the integration tests: the device kernel tests run on, one harness that
//! compares a case on that device with the CPU twin, error norms, finite differences.
#![allow(dead_code)]

use insclr::backend::{ActMask, Backend, BatchNorm, BnBwdSums, Buf, CudaBackend, DType};
use insclr::rng::Rng;

fn require_gpu() -> bool {
    std::env::var("INSCLR_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// Written to the stderr handle directly: libtest captures `eprintln!` of passing tests, and
/// where a kernel test ran (or that it was skipped) must be visible in the test log.
pub fn log(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The device kernel tests run on: the real GPU when there is one, else the emulated GPU.
/// `INSCLR_REQUIRE_GPU=1` (the GPU machine's runner) turns the fallback into a failure. The
/// choice is logged as `RAN <test> on <device>`.
pub fn kernel_device(test: &str) -> CudaBackend {
    match CudaBackend::new(0) {
        Ok(gpu) => {
            log(&format!(
                "RAN {test} on cuda ({})",
                (&gpu as &dyn Backend).describe()
            ));
            gpu
        }
        Err(e) => {
            if require_gpu() {
                panic!("{test}: INSCLR_REQUIRE_GPU=1 but no CUDA backend: {e:#}");
            }
            log(&format!("RAN {test} on emu (no GPU: {e:#})"));
            CudaBackend::emu()
        }
    }
}

/// True when `be` is the emulator (a few checks run only there: a GPU would hang, or its race
/// might happen to give the right answer).
pub fn is_emu(be: &CudaBackend) -> bool {
    be.info().is_none()
}

/// Named outputs of one run of a case, on the host.
pub type Outputs = Vec<(String, Vec<f32>)>;

/// Runs `case` on the CPU (the oracle) and on `dev`, and requires every output to match by
/// relative norm error below `tol` (DESIGN.md: 1e-5 for f32). A case makes its inputs from
/// its own seeded generator, so both runs see the same numbers, and poisons what it wants the
/// kernel to write (see [`poisoned_as`]).
pub fn matches_cpu(
    what: &str,
    dev: &dyn Backend,
    tol: f64,
    case: impl Fn(&dyn Backend) -> anyhow::Result<Outputs>,
) {
    let want = case(insclr::backend::cpu()).unwrap_or_else(|e| panic!("{what} on cpu: {e:#}"));
    let got = case(dev).unwrap_or_else(|e| panic!("{what} on {}: {e:#}", dev.name()));
    assert_eq!(want.len(), got.len(), "{what}: output count");
    for ((name, w), (_, g)) in want.iter().zip(&got) {
        let err = rel_err(g, w);
        assert!(
            err < tol,
            "{what}: {name} on {} differs from the CPU twin by {err:e} (tolerance {tol:e})",
            dev.name()
        );
    }
}

/// ||a - b|| / max(||b||, tiny), in f64. Every value of `a` must be finite.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        assert!(
            x.is_finite(),
            "non-finite value {x} (poisoned output not overwritten?)"
        );
        num += (x as f64 - y as f64).powi(2);
        den += (y as f64).powi(2);
    }
    num.sqrt() / den.sqrt().max(1e-30)
}

/// `data` as a buffer of `dtype` (f32, or bf16 rounded to nearest even).
pub fn upload_as(be: &dyn Backend, data: &[f32], dtype: DType) -> anyhow::Result<Buf> {
    match dtype {
        DType::F32 => be.upload(data),
        DType::BF16 => {
            let h: Vec<half::bf16> = data.iter().map(|&v| half::bf16::from_f32(v)).collect();
            be.upload(&h)
        }
        other => anyhow::bail!("upload_as: {other} is not a float dtype"),
    }
}

/// A float buffer's elements as f32.
pub fn download_f32(be: &dyn Backend, b: &Buf) -> anyhow::Result<Vec<f32>> {
    match b.dtype() {
        DType::BF16 => Ok(be
            .download::<half::bf16>(b)?
            .iter()
            .map(|v| v.to_f32())
            .collect()),
        _ => be.download::<f32>(b),
    }
}

/// A buffer of `len` NaNs in `dtype`, so that any element a kernel forgets to write shows up.
pub fn poisoned_as(be: &dyn Backend, len: usize, dtype: DType) -> Buf {
    upload_as(be, &vec![f32::NAN; len], dtype).expect("upload")
}

/// The float dtypes a kernel test covers, with DESIGN.md's tolerance for each.
pub const FLOAT_DTYPES: [(DType, f64); 2] = [(DType::F32, 1e-5), (DType::BF16, 1e-2)];

/// Central finite difference of `f` with respect to every element of `x`.
pub fn numeric_grad(x: &[f32], h: f32, mut f: impl FnMut(&[f32]) -> f64) -> Vec<f32> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = xp[i];
            xp[i] = orig + h;
            let up = f(&xp);
            xp[i] = orig - h;
            let down = f(&xp);
            xp[i] = orig;
            ((up - down) / (2.0 * h as f64)) as f32
        })
        .collect()
}

/// 8 small PNGs `img_0.png` .. `img_7.png` in `img`: 4 colour groups (stripes of a width per
/// group), noise per image; the tiny training sets of the run tests.
pub fn write_group_pngs(img: &std::path::Path) {
    std::fs::create_dir_all(img).unwrap();
    let mut r = insclr::rng::Rng::new(3);
    for i in 0..8u32 {
        let g = i % 4;
        let im = image::RgbImage::from_fn(36, 32, |x, y| {
            let s = if (x / (3 + g) + y / 5) % 2 == 0 {
                50
            } else {
                0
            };
            let nz = r.below(30) as u32;
            image::Rgb([
                (40 * g + s + nz) as u8,
                (200 - 40 * g) as u8,
                (s + nz) as u8,
            ])
        });
        im.save(img.join(format!("img_{i}.png"))).unwrap();
    }
}

/// The TOML of a tiny base stage (resnet-custom of base width 4, XBM v1, a checkpoint every 2
/// steps) training on the images under `dir/images` with the pool `dir/pool.npz` and writing
/// into `dir/out`; `input` adds lines to its `[INPUT]` section.
pub fn tiny_stage_toml(
    dir: &std::path::Path,
    max_step: usize,
    lr: f64,
    pretrain: &str,
    input: &str,
) -> String {
    format!(
        r#"
OUTPUT_DIR = "{out}"
SEED = 3
[DATA]
ROOT = "{root}"
[INPUT]
TRAIN_IMG_SIZE = [32, 32]
NOAUG_IMG_SIZE = [32, 32]
{input}
[MODEL]
PRETRAIN = "{pretrain}"
[MODEL.BACKBONE]
NAME = "resnet-custom"
STAGES = [1, 1, 1, 1]
BASE_WIDTH = 4
[MODEL.HEAD]
OUT_DIM = 8
[SOLVER]
NAME = "adam"
BASE_LR = {lr:?}
IMS_PER_BATCH = 2
STEPS = [100]
MAX_STEP = {max_step}
CHECKPOINT_PERIOD = 2
[NEIGHBOR]
SRC = "{pool}"
K = 2
[XBM]
ENABLE = true
VERSION = "v1"
SIZE = 0
FEATURE_DIM = 8
START_STEP = 0
GET_STEP = 1
GET_SIZE = 4
POTENTIAL_POSITIVE = 2
"#,
        out = dir.join("out").display(),
        root = dir.join("images").display(),
        pool = dir.join("pool.npz").display(),
    )
}

/// A 4-wide ResNet (128 channels out) with a 16-d head, written to `dir/model.safetensors` as
/// `train` writes its final model: a small real network for extraction tests.
pub fn small_model(dir: &std::path::Path) -> std::path::PathBuf {
    use insclr::nn::{head::HeadKind, resnet::ResNet, weights, RetrievalNet};
    let be = insclr::backend::cpu();
    let mut rng = insclr::rng::Rng::new(5);
    let backbone = ResNet::custom(be, &mut rng, [1, 1, 1, 1], 4, false).unwrap();
    let net = RetrievalNet::new(
        be,
        &mut rng,
        Box::new(backbone),
        HeadKind::NormLinearNorm,
        16,
    )
    .unwrap();
    let path = dir.join("model.safetensors");
    insclr::io::safetensors::write(&path, &weights::export(&net, be).unwrap(), None).unwrap();
    path
}

/// A training BatchNorm after its forward over `x` (plus `res`, where a residual goes into y),
/// with random gamma and beta: what a data gradient that takes its backward reduce pass reads
/// (`Backend::conv2d_bwd_data_bn_sums`), and y and the act' mask the forward kept.
pub struct TrainedBn {
    pub gamma: Buf,
    pub beta: Buf,
    pub mean: Buf,
    pub invstd: Buf,
    pub y: Buf,
    pub mask: ActMask,
}

impl TrainedBn {
    /// The forward over `b`'s shape (its channels-last dx is the backward's business: unset here).
    pub fn new(be: &dyn Backend, x: &Buf, res: Option<&Buf>, b: BatchNorm, rng: &mut Rng) -> Self {
        let c = b.c;
        let gamma = be.upload(&rng.vec_f32(c, 0.5, 1.5)).unwrap();
        let beta = be.upload(&rng.vec_f32(c, -0.5, 0.5)).unwrap();
        let (mut rm, mut rv) = (
            be.upload(&vec![0.0; c]).unwrap(),
            be.upload(&vec![1.0; c]).unwrap(),
        );
        let zeros = || be.upload(&vec![0.0f32; b.ghost * c]).unwrap();
        let (mut mean, mut invstd) = (zeros(), zeros());
        let (mut y, mut mask) = (poisoned_as(be, x.len(), x.dtype()), ActMask::new());
        let fwd = BatchNorm {
            dx_nhwc: false,
            ..b
        };
        be.batchnorm_fwd_train(
            x,
            &gamma,
            &beta,
            (&mut rm, &mut rv),
            (&mut mean, &mut invstd),
            res,
            &mut y,
            Some(&mut mask),
            fwd,
        )
        .unwrap();
        TrainedBn {
            gamma,
            beta,
            mean,
            invstd,
            y,
            mask,
        }
    }

    /// (gamma, beta) and the saved (mean, invstd).
    pub fn params(&self) -> ((&Buf, &Buf), (&Buf, &Buf)) {
        ((&self.gamma, &self.beta), (&self.mean, &self.invstd))
    }

    /// What the fused data gradient reads of it, `x` its input; the mask after a residual.
    pub fn sums<'a>(&'a self, x: &'a Buf, residual: bool) -> BnBwdSums<'a> {
        let (params, saved) = self.params();
        BnBwdSums {
            x,
            params,
            saved,
            mask: residual.then_some(&self.mask),
        }
    }
}
