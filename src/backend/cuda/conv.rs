//! Launchers for kernels/conv.cu: dense convolutions (groups = 1) as implicit GEMMs, depthwise
//! convolutions with their own kernels. Other groupings have no kernel and are an error.

use super::device::{Args, DevMem, Launch};
use super::norm::{bn_merge_chunks, BnStats};
use super::work::{conv_shape, Unit, Work};
use super::{int, CudaBackend};
use crate::backend::conv::bwd_by_passes;
use crate::backend::{
    Backend, BatchNorm, BnBwdSums, BnEvalParams, BnTrainParams, Buf, Checked, Conv, ConvOps, DType,
    Op,
};
use anyhow::{bail, Result};

/// The implicit GEMM's block tile: f32 SIMT (`CONV_BM`, `CONV_BN`, `CONV_BK` in
/// kernels/conv.cu), bf16 tensor cores (`CTC_BM`, `CTC_BN`, `CTC_BK`); 256 threads either way.
fn tile(dtype: DType) -> (usize, usize, usize) {
    match dtype {
        DType::BF16 => (128, 128, 32),
        _ => (64, 64, 16),
    }
}
const GEMM_THREADS: u32 = 256;

/// Which kernel a shape takes.
enum Path {
    Gemm,
    /// A 1x1, stride-1, unpadded bf16 convolution whose channel rows are 16-byte aligned: plain
    /// GEMMs on the pipelined tensor-core mainloop (`conv2d_1x1_*_bf16` in kernels/conv.cu). In
    /// f32 the same on TF32 tensor cores (`conv2d_1x1_*_tf32`) when the backend allows TF32
    /// ([`crate::backend::Backend::set_tf32`]).
    OneByOne,
    /// Any other dense bf16 convolution whose kernel is at most 8 x 8: NCHW -> NHWC transposes
    /// into scratch, then an implicit GEMM over channels-last activations on the same mainloop
    /// (`conv2d_nhwc_*`). The forward and the weight gradient read the input's channels in
    /// 16-byte runs, zero-padded to a multiple of 8 ([`padded`]: ResNet's stem, 3 channels, runs
    /// as 8); the data gradient takes it with c_out % 8 == 0 (at a stride over 1 by stride
    /// phases, up to 8), the weight gradient with c_out % 8 == 0; the other passes keep the
    /// element gather (`conv2d_*_bf16`), as do kernels over 8 x 8. In f32 with TF32 allowed
    /// the same passes take the `_tf32` kernels, in runs of 4 channels instead of 8.
    Nhwc,
    Depthwise,
}

/// `tf32`: f32 convolutions may take the TF32 kernels.
fn path(s: &Conv, dtype: DType, tf32: bool) -> Result<Path> {
    let plain = s.kh == 1 && s.kw == 1 && s.stride == 1 && s.pad_top == 0 && s.pad_left == 0;
    // 16-byte rows: 8 bf16 or 4 f32.
    let run = chunk(dtype);
    let aligned = s.c_in % run == 0 && (s.h * s.w) % run == 0 && s.oh == s.h && s.ow == s.w;
    let tensor_cores = dtype == DType::BF16 || (dtype == DType::F32 && tf32);
    let gathered = s.kh <= 8 && s.kw <= 8;
    if s.groups == 1 && tensor_cores && plain && aligned {
        Ok(Path::OneByOne)
    } else if s.groups == 1 && tensor_cores && gathered {
        Ok(Path::Nhwc)
    } else if s.groups == 1 {
        Ok(Path::Gemm)
    } else if s.is_depthwise() {
        Ok(Path::Depthwise)
    } else {
        bail!(
            "conv: groups = {} with {} -> {} channels has no CUDA kernel (dense and depthwise only); run with --device cpu",
            s.groups,
            s.c_in,
            s.c_out
        )
    }
}

/// The eval-mode BatchNorm (+ residual, activation) a forward applies in its epilogue
/// (`conv2d_{1x1,nhwc}_fwd_bn_eval[_m64]_bf16`, `conv2d_fwd_bn_eval_f32`,
/// `conv2d_depthwise_fwd_bn_eval_<dtype>`): the kernels' trailing arguments.
struct BnPost<'a> {
    bn: BnEvalParams<'a>,
    residual: Option<&'a Buf>,
    s: &'a BatchNorm,
}

impl BnPost<'_> {
    /// gamma, beta, mean, var, res (or null), eps, act.
    fn args(&self, args: Args) -> Result<Args> {
        let res = self.residual.map(|r| r.dev()).transpose()?;
        Ok(args
            .ptr(self.bn.gamma.dev()?)
            .ptr(self.bn.beta.dev()?)
            .ptr(self.bn.mean.dev()?)
            .ptr(self.bn.var.dev()?)
            .opt_ptr(res)
            .f32(self.s.eps)
            .i32(self.s.act.code()))
    }

    /// What it reads beyond the convolution: the four per-channel tensors and the residual.
    fn bytes(&self) -> usize {
        let res = self.residual.map_or(0, |r| r.len() * r.dtype().size());
        4 * self.s.c * 4 + res
    }
}

/// The activation operand of a channels-last product: an NCHW buffer its launcher transposes
/// into scratch, or a channels-last one made already (a layer's dy, which both backward passes
/// read: [`ConvOps::conv2d_bwd`]; an input a BatchNorm wrote channels-last: `Conv::x_nhwc`).
#[derive(Clone, Copy)]
enum Activation<'a> {
    Nchw(&'a Buf),
    Nhwc(&'a DevMem, DType),
}

impl Activation<'_> {
    fn dtype(&self) -> DType {
        match self {
            Activation::Nchw(b) => b.dtype(),
            Activation::Nhwc(_, dtype) => *dtype,
        }
    }

    /// Where the kernel reads it: the NCHW buffer's copy at byte `at` of `scratch`, or the
    /// channels-last buffer.
    fn nhwc<'b>(&'b self, scratch: &'b DevMem, at: usize) -> (&'b DevMem, usize) {
        match self {
            Activation::Nchw(_) => (scratch, at),
            Activation::Nhwc(m, _) => (m, 0),
        }
    }

    /// Its copy's bytes in the launcher's scratch: `bytes`, or none when made already.
    fn scratch_bytes(&self, bytes: usize) -> usize {
        match self {
            Activation::Nchw(_) => bytes.next_multiple_of(256),
            Activation::Nhwc(..) => 0,
        }
    }

    /// Transposes an NCHW buffer into byte `at` of `scratch` (`planes` images of `channels` x
    /// `pixels`, rows padded to `padded`); nothing for a channels-last one.
    fn transpose(
        &self,
        be: &CudaBackend,
        (scratch, at): (&DevMem, usize),
        planes: usize,
        channels: (usize, usize),
        pixels: usize,
    ) -> Result<()> {
        match self {
            Activation::Nchw(b) => be.to_nhwc(
                b.dtype(),
                b.dev()?,
                scratch,
                at,
                planes,
                channels,
                pixels,
                1,
            ),
            Activation::Nhwc(..) => Ok(()),
        }
    }
}

/// What a pipelined product's epilogue does besides storing C.
enum EpiloguePost<'a> {
    /// Eval-mode BatchNorm (+ residual, activation) applied to y: `*_fwd_bn_eval_*`.
    Eval(BnPost<'a>),
    /// Training BatchNorm's partial statistics of y into `partial`, one (count, mean, m2) per
    /// (group, channel), image and pixel tile (three planes of runs x pairs floats), `groups`
    /// statistics groups of `per` images: `*_fwd_bn_stats_*` (tc_gemm.cuh's BnStatsPost).
    Stats {
        partial: &'a DevMem,
        per: usize,
        groups: usize,
    },
    /// A data gradient's: the backward reduce pass of the BatchNorm whose dy it writes,
    /// `*_bwd_data_bn_sums_*` (tc_gemm.cuh's BnBwdSumsPost).
    Sums(SumsPost<'a>),
}

/// [`EpiloguePost::Sums`]: the residual branch's gradient the product is added to (after a
/// residual), the BatchNorm's input, act' mask (after a residual) and parameters, where the sums
/// go (2 floats a pair and run), `per` images a statistics group; `bytes` what it moves beyond the
/// product.
struct SumsPost<'a> {
    res: Option<&'a DevMem>,
    bn: BnBwdSums<'a>,
    mask: Option<&'a DevMem>,
    partial: &'a DevMem,
    b: &'a BatchNorm,
    bytes: usize,
}

impl EpiloguePost<'_> {
    /// The kernel's op: `fwd_bn_eval`, `fwd_bn_stats` or `bwd_data_bn_sums`.
    fn op(&self) -> &'static str {
        match self {
            EpiloguePost::Eval(_) => "fwd_bn_eval",
            EpiloguePost::Stats { .. } => "fwd_bn_stats",
            EpiloguePost::Sums(_) => "bwd_data_bn_sums",
        }
    }

    /// The images a product may span: a statistics group's (every image where the post-op
    /// keeps no statistics), and 1 for training BatchNorm's statistics: with their runs across
    /// images, tests/train.rs's bf16 stage lost its exact agreement with the CPU (step-1 loss
    /// 3.9066 against 4.0271) and the cause is not found yet.
    fn group(&self, images: usize) -> usize {
        match self {
            EpiloguePost::Eval(_) => images,
            EpiloguePost::Stats { .. } => 1,
            EpiloguePost::Sums(p) => p.b.n / p.b.ghost,
        }
    }

    /// The kernel's trailing arguments, for products of `span` images each (blockIdx.z).
    fn args(&self, args: Args, span: usize) -> Result<Args> {
        match self {
            EpiloguePost::Eval(p) => p.args(args),
            EpiloguePost::Stats {
                partial,
                per,
                groups,
            } => Ok(args
                .ptr(partial)
                .i32((*per / span) as i32)
                .i32(*groups as i32)),
            EpiloguePost::Sums(p) => Ok(args
                .opt_ptr(p.res)
                .ptr(p.bn.x.dev()?)
                .opt_ptr(p.mask)
                .ptr(p.bn.params.0.dev()?)
                .ptr(p.bn.params.1.dev()?)
                .ptr(p.bn.saved.0.dev()?)
                .ptr(p.bn.saved.1.dev()?)
                .ptr(p.partial)
                .i32((p.b.n / p.b.ghost / span) as i32)
                .i32(p.b.ghost as i32)
                .i32(p.b.act.code())),
        }
    }

    /// What it reads or writes beyond the convolution, for a launch of `cfg` over `channels`.
    fn bytes(&self, cfg: &Launch, channels: usize) -> usize {
        match self {
            EpiloguePost::Eval(p) => p.bytes(),
            EpiloguePost::Stats { .. } => {
                stats_partial_bytes(cfg.grid.0 as usize * cfg.grid.2 as usize, channels)
            }
            EpiloguePost::Sums(p) => p.bytes,
        }
    }
}

/// Pixel columns of a pipelined kernel's block tile (BN in kernels/conv.cu's 1x1 and
/// channels-last products).
const PIXEL_TILE: usize = 128;

/// The images a pipelined forward's or data gradient's pixel tiles run across (kernels/conv.cu's
/// `span`, 1x1 and channels-last): all `group` images (of a statistics group, or the batch) where
/// an image's `hw` pixels would leave its last tile part empty; 1 where whole tiles cover an
/// image already.
fn image_span(group: usize, hw: usize) -> usize {
    if hw % PIXEL_TILE == 0 {
        1
    } else {
        group.max(1)
    }
}

/// The images a product on `path` spans in `dtype`: [`image_span`], but one for the TF32 1x1
/// kernels (kernels/conv.cu's conv1x1_fwd says why).
fn product_span(path: &Path, dtype: DType, group: usize, hw: usize) -> usize {
    match path {
        Path::OneByOne if dtype != DType::BF16 => 1,
        _ => image_span(group, hw),
    }
}

/// The pixel tiles of `per` images (a statistics group) of `hw` pixels each on `path` in
/// `dtype`: the runs of a (group, channel) pair's partial statistics or sums.
fn pixel_runs(path: &Path, dtype: DType, per: usize, hw: usize) -> usize {
    let span = product_span(path, dtype, per, hw);
    per / span * (span * hw).div_ceil(PIXEL_TILE)
}

/// The rows of a pipelined kernel's block tile for a product of `m` rows (BM in kernels/conv.cu).
fn row_tile(m: usize) -> usize {
    if m <= 64 {
        64
    } else {
        128
    }
}

/// The share of a pipelined forward's or data gradient's block tiles (`cfg`: pixel tiles x row
/// tiles x products) that its `m` x `pixels` outputs fill ([`Work::fill`]).
fn tile_fill(cfg: &Launch, m: usize, pixels: usize) -> f64 {
    let rows = row_tile(m);
    let (x, y, z) = (
        cfg.grid.0 as usize,
        cfg.grid.1 as usize,
        cfg.grid.2 as usize,
    );
    let tiled = x * PIXEL_TILE * z * y * rows;
    if tiled == 0 {
        1.0
    } else {
        (m * pixels) as f64 / tiled as f64
    }
}

/// The `_bn_stats` forwards' partial statistics: 3 floats per channel, product and pixel tile
/// (`tiles` = products x tiles per product).
fn stats_partial_bytes(tiles: usize, channels: usize) -> usize {
    tiles * channels * 3 * 4
}

/// The most channels whose maps the fused depthwise forward stages in shared memory (48 KB).
const DEPTHWISE_MAPS_MAX: usize = 48 * 1024 / 8;

/// The epilogue's beta of a data gradient: 1 adds it onto what dx holds, 0 overwrites dx.
fn beta(add: bool) -> f32 {
    if add {
        1.0
    } else {
        0.0
    }
}

/// The product a channels-last forward or weight gradient runs for `s` in `dtype`: its input
/// channels zero-padded to a multiple of 8 (4 in f32), so that a 16-byte copy is channels of one
/// (pixel, tap). The zeros add nothing to the output and their weight gradient is never read back.
fn padded(s: &Conv, dtype: DType) -> Conv {
    Conv {
        c_in: s.c_in.next_multiple_of(chunk(dtype)),
        ..*s
    }
}

/// Elements of `dtype` in 16 bytes: the channel runs of the channels-last kernels' copies.
fn chunk(dtype: DType) -> usize {
    16 / dtype.size()
}

/// The shape arguments every conv kernel ends with: n, c_in, h, w, c_out, kh, kw, stride,
/// pad_top, pad_left, oh, ow. Also checks that every size the kernels index fits their `int`:
/// the implicit GEMMs' M, N and K (plus a tile, which a block's last indices run past) and the
/// element counts. Addresses are computed in 64 bits, so the GEMMs' M x K and K x N products
/// (the never-stored im2col matrices, 10G elements for ResNet's stem at batch 64) need not fit.
fn shape_args(args: Args, s: &Conv) -> Result<Args> {
    let (x, w, y) = s.sizes();
    int(x, "conv input elements")?;
    int(w, "conv weight elements")?;
    int(y, "conv output elements")?;
    const TILE: usize = 128;
    int(s.n * s.oh * s.ow + TILE, "conv output positions")?;
    int(s.n * s.h * s.w + TILE, "conv input positions")?;
    int(s.c_in.max(s.c_out) * s.kh * s.kw + TILE, "conv taps")?;
    Ok(args.i32s(
        [
            s.n, s.c_in, s.h, s.w, s.c_out, s.kh, s.kw, s.stride, s.pad_top, s.pad_left, s.oh, s.ow,
        ]
        .map(|v| v as i64),
    ))
}

/// The tensor-core kernels' suffix and unit for operands of `dtype`: bf16, or f32 on TF32.
fn tensor_math(dtype: DType) -> (&'static str, Unit) {
    match dtype {
        DType::BF16 => ("bf16", Unit::TensorBf16),
        _ => ("tf32", Unit::TensorTf32),
    }
}

/// The 1x1 kernels' tiles: 128 x 128 (four 64 x 64 warps; eight 64 x 32 for the weight
/// gradient), or 64 x 128 (four 64 x 32 warps) when the GEMM's M is at most 64; three stages of
/// (BM + 128) rows of 64 bytes (32 bf16 or 16 f32) in dynamic shared memory, as tc_gemm.cuh's
/// `SmemSize`. `dtype`: the operands' (bf16, or f32 for the TF32 kernels).
fn one_by_one_launch(op: &str, m: usize, n: usize, batch: usize, dtype: DType) -> (String, Launch) {
    pipelined_launch("1x1", op, m, n, batch, dtype)
}

/// A kernel `conv2d_{family}_{op}[_m64]_<bf16|tf32>` on the pipelined mainloop: tiles as
/// [`one_by_one_launch`]'s, `n` the columns of each of `batch` products, `dtype` the operands'.
fn pipelined_launch(
    family: &str,
    op: &str,
    m: usize,
    n: usize,
    batch: usize,
    dtype: DType,
) -> (String, Launch) {
    let bm = row_tile(m);
    let rows = if bm == 64 { "_m64" } else { "" };
    // Warps of 64 x 64, but eight 64 x 32 for the 128-row weight gradients and four 64 x 32 for
    // the 64-row products other than bf16's channels-last gathers; the TF32 channels-last
    // kernels have 64 x 32 warps throughout (conv.cu's entry points).
    let tf32 = dtype == DType::F32;
    let threads = match (bm, op) {
        (128, _) if family == "nhwc" && tf32 => 256,
        (128, "bwd_weight") => 256,
        (64, _) if family == "nhwc" && op != "bwd_weight" && !tf32 => 64,
        _ => 128,
    };
    let cfg = Launch {
        grid: (
            n.div_ceil(PIXEL_TILE) as u32,
            m.div_ceil(bm) as u32,
            batch as u32,
        ),
        block: (threads, 1, 1),
        smem: ((bm + 128) * 64 * 3) as u32,
    };
    let suffix = tensor_math(dtype).0;
    (format!("conv2d_{family}_{op}{rows}_{suffix}"), cfg)
}

/// How the 1x1 weight gradient splits `images` x `pixels` to give about `want` splits: `(per, 1,
/// 0)` for groups of `per` whole images, or `(1, parts, part_len)` for `parts` parts of every
/// image, `part_len` pixels each (a multiple of 32, at least 256), when the images are fewer than
/// `want`.
fn one_by_one_splits(images: usize, pixels: usize, want: usize) -> (usize, usize, usize) {
    let want = want.max(1);
    if want <= images {
        return (images.div_ceil(want), 1, 0);
    }
    // Whole parts per image, so that the splits stay within one wave.
    let parts = (want / images).min(pixels.div_ceil(256)).max(1);
    if parts == 1 {
        return (1, 1, 0);
    }
    let part_len = (pixels.div_ceil(parts).div_ceil(32) * 32).max(256);
    (1, pixels.div_ceil(part_len), part_len)
}

/// The grid of an `m x n` implicit GEMM in `dtype`, `splits` deep.
fn gemm_launch(dtype: DType, m: usize, n: usize, splits: usize) -> Launch {
    let (tm, tn, _) = tile(dtype);
    Launch {
        grid: (n.div_ceil(tn) as u32, m.div_ceil(tm) as u32, splits as u32),
        block: (GEMM_THREADS, 1, 1),
        smem: 0,
    }
}

/// How the weight gradient's reduction over the batch's `k` output positions is split: into the
/// count of parts (each at least 256 positions, a multiple of the K tile `tile_k`) that makes the
/// product quickest in a model of its waves and its partial sums. With `splits` parts the `tiles`
/// x `splits` blocks run in ceil(blocks / `slots`) waves, `slots` the blocks the GPU holds at
/// once, and the last wave's empty slots are time lost: the product takes `k / eff` in units of
/// one tile's multiply-adds per position, eff = blocks / (waves x slots). Each part writes its
/// output tile as f32 partial sums, which the reduce reads back: 8 bytes an output element a part,
/// `4 balance` in the same units, `balance` the FLOPs the math unit does while DRAM moves a byte
/// (`Unit::flops_per_dram_byte`). A rule that only filled one wave (blocks <= slots) left 36
/// tiles at 108 of an H200's 132 slots (eff 0.82; 7 parts: 0.95) and 144 tiles in 1.09 waves
/// (eff 0.55; 4 parts: 0.87). At most 8 waves of blocks, which bounds the partial sums' scratch
/// at 8 x `slots` tiles. Returns `(splits, k_per_split)`.
fn weight_grad_splits(
    tiles: usize,
    k: usize,
    tile_k: usize,
    slots: usize,
    balance: usize,
) -> (usize, usize) {
    let (tiles, slots) = (tiles.max(1), slots.max(1));
    let split = |want: usize| {
        let per = (k.div_ceil(want).div_ceil(tile_k) * tile_k).max(tile_k);
        (k.div_ceil(per).max(1), per)
    };
    let cost = |splits: usize| {
        let blocks = tiles * splits;
        let eff = blocks as f64 / (blocks.div_ceil(slots) * slots) as f64;
        k as f64 / eff + (4 * balance * splits) as f64
    };
    let mut best = split(1);
    for want in 2..=(k / 256).min(8 * slots / tiles) {
        // No count past this one can cost less: its partial sums alone take what the best
        // count's waves lose.
        if (4 * balance * want) as f64 >= cost(best.0) - k as f64 {
            break;
        }
        let candidate = split(want);
        if cost(candidate.0) < cost(best.0) {
            best = candidate;
        }
    }
    best
}

impl ConvOps for CudaBackend {
    /// The channels-last kernels' shapes whose input channels need no padding and whose weight
    /// gradient runs channels-last too (c_out in 16-byte runs).
    fn reads_nhwc(&self, s: &Conv, dtype: DType) -> bool {
        matches!(self.path(s, dtype), Ok(Path::Nhwc))
            && s.c_in % chunk(dtype) == 0
            && s.c_out % chunk(dtype) == 0
    }

    /// The channels-last kernels' shapes whose data gradient and weight gradient both run
    /// channels-last (c_out in 16-byte runs; stride phases up to 8).
    fn reads_dy_nhwc(&self, s: &Conv, dtype: DType) -> bool {
        matches!(self.path(s, dtype), Ok(Path::Nhwc))
            && s.c_out % chunk(dtype) == 0
            && s.stride <= 8
    }

    fn conv2d_fwd(&self, x: &Buf, w: &Buf, y: &mut Buf, s: Checked<Conv>) -> Result<()> {
        let input = self.input(x, &s)?;
        let (path, total) = (self.path(&s, x.dtype())?, s.sizes().2);
        if total == 0 {
            return Ok(());
        }
        let args = shape_args(
            Args::new().ptr(x.dev()?).ptr(w.dev()?).ptr(y.dev_mut()?),
            &s,
        )?;
        let (kernel, cfg) = match path {
            Path::OneByOne => return self.conv1x1(x, w, y, &s, "fwd", false, None),
            Path::Nhwc => return self.conv_nhwc(input, w, y, &s, "fwd", false, None),
            Path::Gemm => (
                Op::Conv2dFwd.kernel(x.dtype()),
                gemm_launch(x.dtype(), s.c_out, s.n * s.oh * s.ow, 1),
            ),
            Path::Depthwise => (
                format!("conv2d_depthwise_fwd_{}", x.dtype()),
                Launch::grid_stride(total),
            ),
        };
        let (ex, ew, ey) = s.sizes();
        let args = args.work(Work::conv(&s, x.dtype(), (ex + ew + ey) * x.dtype().size()));
        // SAFETY: arguments match conv2d_fwd_<dtype> / conv2d_depthwise_fwd_<dtype>(x, w, y,
        // shape...); the shape was checked: x, w, y hold its input, weight and output sizes, in
        // one dtype.
        unsafe { self.launch(&kernel, cfg, args) }
    }

    fn conv2d_fwd_bn_eval(
        &self,
        x: &Buf,
        w: &Buf,
        bn: BnEvalParams,
        residual: Option<&Buf>,
        y: &mut Buf,
        s: Checked<Conv>,
        b: Checked<BatchNorm>,
    ) -> Result<bool> {
        self.input(x, &s)?;
        let path = self.path(&s, x.dtype())?;
        let fuses = match path {
            Path::OneByOne | Path::Nhwc => true,
            Path::Gemm => x.dtype() == DType::F32,
            // Every channel's map in shared memory (8 bytes each; 48 KB without an opt-in).
            Path::Depthwise => s.c_out <= DEPTHWISE_MAPS_MAX,
        };
        if !fuses {
            return Ok(false);
        }
        let (ex, ew, ey) = s.sizes();
        if ey == 0 {
            return Ok(true);
        }
        let post = BnPost {
            bn,
            residual,
            s: &b,
        };
        let (kernel, cfg) = match path {
            Path::OneByOne | Path::Nhwc => {
                return self
                    .pipelined_fwd(&path, x, w, y, &s, &EpiloguePost::Eval(post))
                    .map(|()| true)
            }
            Path::Gemm => (
                "conv2d_fwd_bn_eval_f32".to_string(),
                gemm_launch(x.dtype(), s.c_out, s.n * s.oh * s.ow, 1),
            ),
            // Fewer blocks than the plain kernel's grid-stride launch, each of which stages every
            // channel's map first: a few hundred outputs a thread.
            Path::Depthwise => (
                format!("conv2d_depthwise_fwd_bn_eval_{}", x.dtype()),
                Launch {
                    grid: (ey.div_ceil(256).clamp(1, 2048) as u32, 1, 1),
                    block: (256, 1, 1),
                    smem: (s.c_out * 8) as u32,
                },
            ),
        };
        let args = shape_args(
            Args::new().ptr(x.dev()?).ptr(w.dev()?).ptr(y.dev_mut()?),
            &s,
        )?;
        let bytes = (ex + ew + ey) * x.dtype().size() + post.bytes();
        let args = post.args(args)?.work(Work::conv(&s, x.dtype(), bytes));
        // SAFETY: arguments match conv2d_fwd_bn_eval_f32 / conv2d_depthwise_fwd_bn_eval_<dtype>(x,
        // w, y, shape..., gamma, beta, mean, var, res, eps, act); the shapes were checked: x, w, y
        // (and res) hold the convolution's input, weight and output sizes in x's dtype, the four
        // per-channel tensors c_out f32 each; the depthwise kernel's dynamic shared memory holds
        // c_out float2 (c_out <= DEPTHWISE_MAPS_MAX).
        unsafe { self.launch(&kernel, cfg, args)? };
        Ok(true)
    }

    /// The 1x1 and channels-last forwards' `_bn_stats` kernels, then batchnorm_merge_stats_f32
    /// (to a few runs per pair) and `batchnorm_fwd_train_<dtype>` (kernels/norm.cu), which
    /// merges those and reads z once.
    fn conv2d_fwd_bn_train(
        &self,
        x: &Buf,
        w: &Buf,
        z: &mut Buf,
        bn: BnTrainParams,
        residual: Option<&Buf>,
        y: &mut Buf,
        s: Checked<Conv>,
        b: Checked<BatchNorm>,
    ) -> Result<bool> {
        let path = self.path(&s, x.dtype())?;
        if !matches!(path, Path::OneByOne | Path::Nhwc) {
            return Ok(false);
        }
        if b.c == 0 {
            return Ok(true);
        }
        let per = b.n / b.ghost;
        let runs = per * (s.oh * s.ow).div_ceil(PIXEL_TILE); // one product an image (group())
        let pairs = b.ghost * b.c;
        let chunks = bn_merge_chunks(pairs, runs);
        let partial_bytes = stats_partial_bytes(runs * b.ghost, b.c);
        let merged_at = partial_bytes.next_multiple_of(256);
        let affine_at = (merged_at + pairs * chunks * 3 * 4).next_multiple_of(256);
        int(runs, "batchnorm statistics runs")?;
        self.with_outer_scratch(affine_at + pairs * 8, |stats| {
            let post = EpiloguePost::Stats {
                partial: stats,
                per,
                groups: b.ghost,
            };
            self.pipelined_fwd(&path, x, w, z, &s, &post)?;
            self.bn_merge(3, stats, (stats, merged_at), (pairs, runs, chunks))?;
            let split = self.bn_apply_split(&b, z, y, residual)?;
            let merged = BnStats {
                partial: stats,
                at: merged_at,
                runs: chunks,
                shifted: false,
                affine_at,
            };
            self.bn_train_apply(z, bn, residual, y, &b, &split, merged)
        })?;
        Ok(true)
    }

    fn conv2d_bwd_data(&self, dy: &Buf, w: &Buf, dx: &mut Buf, s: Checked<Conv>) -> Result<()> {
        self.bwd_data(dy, w, dx, &s, false)
    }

    fn conv2d_bwd_data_add(&self, dy: &Buf, w: &Buf, dx: &mut Buf, s: Checked<Conv>) -> Result<()> {
        self.bwd_data(dy, w, dx, &s, true)
    }

    /// The 1x1 data gradients (NCHW, 16-byte rows) and the stride-1 channels-last ones of a
    /// channels-last dy (dx's rows whole 16-byte vectors) fuse it: a run is a pixel tile (of an
    /// image, or of a span of images whose tiles run from one into the next).
    fn bn_sums_runs(&self, s: &Conv, b: &BatchNorm, dtype: DType) -> Option<usize> {
        let path = self.path(s, dtype).ok()?;
        let fused = match path {
            Path::OneByOne => !s.x_nhwc && !s.dy_nhwc,
            Path::Nhwc => {
                s.dy_nhwc
                    && s.stride == 1
                    && s.c_out % chunk(dtype) == 0
                    && (s.h * s.w * dtype.size()) % 16 == 0
            }
            _ => false,
        };
        (fused && b.ghost > 0).then(|| pixel_runs(&path, dtype, b.n / b.ghost, s.h * s.w))
    }

    /// `conv2d_1x1_bwd_data_bn_sums[_m64]_<bf16|tf32>` or
    /// `conv2d_nhwc_bwd_data_bn_sums[_m64]_<bf16|tf32>` (tc_gemm.cuh's BnBwdSumsPost).
    fn conv2d_bwd_data_bn_sums(
        &self,
        dy: &Buf,
        w: &Buf,
        res: Option<&Buf>,
        dz: &mut Buf,
        bn: BnBwdSums,
        partial: &mut Buf,
        s: Checked<Conv>,
        b: Checked<BatchNorm>,
    ) -> Result<()> {
        let dtype = dy.dtype();
        let ex = s.sizes().0;
        if ex == 0 {
            return Ok(());
        }
        let mask_bytes = ex * dtype.size() / 16;
        let mask = match (res, bn.mask) {
            (None, _) => None,
            (Some(_), Some(m)) if m.bits.len() == mask_bytes => Some(m.bits.dev()?),
            (Some(_), m) => bail!(
                "conv data gradient + batchnorm sums: the activation mask holds {} bytes, this shape's is {mask_bytes} (a forward of another shape kept it)",
                m.map_or(0, |m| m.bits.len())
            ),
        };
        // BatchNorm's x read, the sums written; after a residual res and the mask read.
        let residual_bytes = if res.is_some() {
            ex * dtype.size() + mask_bytes
        } else {
            0
        };
        let sums_bytes = partial.len() * 4;
        let post = EpiloguePost::Sums(SumsPost {
            res: res.map(|r| r.dev()).transpose()?,
            bn,
            mask,
            partial: partial.dev_mut()?,
            b: &b,
            bytes: ex * dtype.size() + residual_bytes + sums_bytes,
        });
        // What the launchers' SAFETY relies on besides the product's shape, checked by
        // `Backend::conv2d_bwd_data_bn_sums` (and the mask above): res (where given), bn.x and dz
        // n x c_in x hw of dy's dtype, gamma and beta c_in f32, the saved statistics ghost x c_in
        // f32 (ghost divides n), the mask (with res) a byte per 16 bytes of dz, partial 2 floats
        // per (pair, run) with runs = this grid's pixel tiles of a group (bn_sums_runs);
        // bn_sums_runs found dz's rows whole 16-byte vectors.
        match self.path(&s, dtype)? {
            Path::OneByOne => self.conv1x1(dy, w, dz, &s, "bwd_data", false, Some(&post)),
            _ => self.conv_nhwc(
                self.grad(dy, &s)?,
                w,
                dz,
                &s,
                "bwd_data",
                false,
                Some(&post),
            ),
        }
    }

    /// Where both passes run channels-last (dy's channels in 16-byte runs, a dx wanted), dy is
    /// transposed once into the outer scratch and both read that copy; otherwise the two ops.
    fn conv2d_bwd(
        &self,
        x: &Buf,
        dy: &Buf,
        w: &Buf,
        dw: &mut Buf,
        dx: Option<&mut Buf>,
        add: bool,
        s: Checked<Conv>,
    ) -> Result<()> {
        let dtype = dy.dtype();
        let (ex, ew, ey) = s.sizes();
        let shared = matches!(self.path(&s, dtype)?, Path::Nhwc)
            && s.c_out % chunk(dtype) == 0
            && s.stride <= 8
            && [ex, ew, ey].iter().all(|&e| e > 0);
        let dx = match dx {
            Some(dx) if shared => dx,
            dx => return bwd_by_passes(self, x, dy, w, dw, dx, add, s),
        };
        let x = self.input(x, &s)?;
        let mut both = |dy_nhwc: Activation| -> Result<()> {
            self.conv_nhwc_bwd_weight(x, dy_nhwc, dw, &s)?;
            if s.stride == 1 {
                self.conv_nhwc(dy_nhwc, w, dx, &s, "bwd_data", add, None)
            } else {
                self.conv_nhwc_bwd_data_phases(dy_nhwc, w, dx, &s, add)
            }
        };
        match self.grad(dy, &s)? {
            Activation::Nchw(_) => self.with_outer_scratch(ey * dtype.size(), |copy| {
                let ch = (s.c_out, s.c_out);
                Activation::Nchw(dy).transpose(self, (copy, 0), s.n, ch, s.oh * s.ow)?;
                both(Activation::Nhwc(copy, dtype))
            }),
            dy_nhwc => both(dy_nhwc),
        }
    }

    fn conv2d_bwd_weight(&self, x: &Buf, dy: &Buf, dw: &mut Buf, s: Checked<Conv>) -> Result<()> {
        let (input, grad) = (self.input(x, &s)?, self.grad(dy, &s)?);
        let path = self.path(&s, x.dtype())?;
        let (m, n, k) = (s.c_out, s.c_in * s.kh * s.kw, s.n * s.oh * s.ow);
        if m * n == 0 || k == 0 {
            return Ok(());
        }
        let (ex, ew, ey) = s.sizes();
        match path {
            Path::OneByOne => return self.conv1x1_bwd_weight(x, dy, dw, &s),
            Path::Nhwc if s.c_out % chunk(x.dtype()) == 0 => {
                return self.conv_nhwc_bwd_weight(input, grad, dw, &s)
            }
            _ => {}
        }
        if let Path::Depthwise = path {
            // dw is f32 and accumulated: read and written.
            let bytes = (ex + ey) * x.dtype().size() + 2 * ew * 4;
            let args = shape_args(
                Args::new().ptr(x.dev()?).ptr(dy.dev()?).ptr(dw.dev_mut()?),
                &s,
            )?
            .work(Work::conv(&s, x.dtype(), bytes));
            // SAFETY: arguments match conv2d_depthwise_bwd_weight_<dtype>(x, dy, dw, shape...);
            // the shape was checked (x, dy of one dtype, dw f32); one 256-thread block per
            // channel.
            return unsafe {
                self.launch(
                    &format!("conv2d_depthwise_bwd_weight_{}", x.dtype()),
                    Launch::linear(s.c_out as u32, 256),
                    args,
                )
            };
        }
        let (tm, tn, tk) = tile(x.dtype());
        let tiles = m.div_ceil(tm) * n.div_ceil(tn);
        let kernel = Op::Conv2dBwdWeight.kernel(x.dtype());
        let slots = self.resident_blocks(&kernel, GEMM_THREADS, 0);
        let balance = Work::unit_of(x.dtype()).flops_per_dram_byte();
        let (splits, per) = weight_grad_splits(tiles, k, tk, slots, balance);
        let partial_bytes = splits * m * n * std::mem::size_of::<f32>();
        self.with_scratch(partial_bytes, |partial| {
            let args = Args::new()
                .ptr(x.dev()?)
                .ptr(dy.dev()?)
                .ptr(partial)
                .i32(per as i32);
            let bytes = (ex + ey) * x.dtype().size() + partial_bytes;
            let args = shape_args(args, &s)?.work(Work::conv(&s, x.dtype(), bytes));
            // SAFETY: arguments match conv2d_bwd_weight_<dtype>(x, dy, partial, k_per_split,
            // shape...); x and dy hold the checked input and output sizes, partial holds splits x
            // m x n floats, and splits * per covers the k positions.
            unsafe { self.launch(&kernel, gemm_launch(x.dtype(), m, n, splits), args)? };
            self.reduce_weight_splits(partial, dw, m, n, splits)
        })
    }
}

impl CudaBackend {
    /// Which kernel a shape takes on this backend (TF32 as [`Backend::set_tf32`] allows).
    fn path(&self, s: &Conv, dtype: DType) -> Result<Path> {
        path(s, dtype, self.tf32())
    }

    /// The input `x` of `s` as the channels-last kernels take it; a channels-last one only
    /// where [`ConvOps::reads_nhwc`] said so (every other kernel reads NCHW).
    fn input<'a>(&self, x: &'a Buf, s: &Conv) -> Result<Activation<'a>> {
        if !s.x_nhwc {
            return Ok(Activation::Nchw(x));
        }
        if !self.reads_nhwc(s, x.dtype()) {
            bail!("{s:?}: no CUDA kernel reads this convolution's input channels-last; give it NCHW (ConvOps::reads_nhwc)");
        }
        Ok(Activation::Nhwc(x.dev()?, x.dtype()))
    }

    /// The output's gradient `dy` of `s` as the channels-last kernels take it; a channels-last
    /// one only where [`ConvOps::reads_dy_nhwc`] said so.
    fn grad<'a>(&self, dy: &'a Buf, s: &Conv) -> Result<Activation<'a>> {
        if !s.dy_nhwc {
            return Ok(Activation::Nchw(dy));
        }
        if !self.reads_dy_nhwc(s, dy.dtype()) {
            bail!("{s:?}: no CUDA kernel reads this convolution's output gradient channels-last; give it NCHW (ConvOps::reads_dy_nhwc)");
        }
        Ok(Activation::Nhwc(dy.dev()?, dy.dtype()))
    }

    /// A forward with `post` in its epilogue on the 1x1 or channels-last kernels (`path`).
    fn pipelined_fwd(
        &self,
        path: &Path,
        x: &Buf,
        w: &Buf,
        y: &mut Buf,
        s: &Conv,
        post: &EpiloguePost,
    ) -> Result<()> {
        match path {
            Path::OneByOne => self.conv1x1(x, w, y, s, "fwd", false, Some(post)),
            _ => self.conv_nhwc(self.input(x, s)?, w, y, s, "fwd", false, Some(post)),
        }
    }

    /// The data gradient into dx, or added onto what dx holds (`add`): the pipelined kernels
    /// add it in their epilogue (beta = 1: the stored value rounded, then added and rounded
    /// again, as a separate add would); the element gathers and the depthwise kernel write it
    /// into scratch and `add_fwd_<dtype>` adds it to dx in place.
    fn bwd_data(&self, dy: &Buf, w: &Buf, dx: &mut Buf, s: &Conv, add: bool) -> Result<()> {
        let grad = self.grad(dy, s)?;
        let (path, total) = (self.path(s, dy.dtype())?, s.sizes().0);
        if total == 0 {
            return Ok(());
        }
        let (kernel, cfg) = match path {
            Path::OneByOne => return self.conv1x1(dy, w, dx, s, "bwd_data", add, None),
            Path::Nhwc if s.stride == 1 && s.c_out % chunk(dy.dtype()) == 0 => {
                return self.conv_nhwc(grad, w, dx, s, "bwd_data", add, None)
            }
            Path::Nhwc if s.c_out % chunk(dy.dtype()) == 0 && s.stride <= 8 => {
                return self.conv_nhwc_bwd_data_phases(grad, w, dx, s, add)
            }
            Path::Gemm | Path::Nhwc => (
                Op::Conv2dBwdData.kernel(dy.dtype()),
                gemm_launch(dy.dtype(), s.c_in, s.n * s.h * s.w, 1),
            ),
            Path::Depthwise => (
                format!("conv2d_depthwise_bwd_data_{}", dy.dtype()),
                Launch::grid_stride(total),
            ),
        };
        let (ex, ew, ey) = s.sizes();
        let size = dy.dtype().size();
        let launch = |out: &DevMem| -> Result<()> {
            let args = shape_args(Args::new().ptr(dy.dev()?).ptr(w.dev()?).ptr(out), s)?;
            let args = args.work(Work::conv(s, dy.dtype(), (ex + ew + ey) * size));
            // SAFETY: arguments match conv2d_bwd_data_<dtype> / conv2d_depthwise_bwd_data_<dtype>(dy,
            // w, dx, shape...); the shape was checked: dy, w hold its output and weight sizes, in
            // one dtype, and `out` (dx or scratch) its input size.
            unsafe { self.launch(&kernel, cfg, args) }
        };
        if !add {
            return launch(dx.dev_mut()?);
        }
        self.with_scratch(ex * size, |grad| {
            launch(grad)?;
            let d = dx.dev_mut()?;
            let args = Args::new()
                .ptr(d)
                .ptr(grad)
                .ptr(d)
                .i64(ex as i64)
                .work(Work::traffic(3 * ex * size, format!("{ex}")));
            // SAFETY: arguments match add_fwd_<dtype>(a, b, y, n) with y = a = dx (the kernel
            // reads each element before writing it, in the same thread), b the gradient in
            // scratch; both hold ex elements of dy's dtype (checked).
            unsafe {
                self.launch(
                    &Op::AddFwd.kernel(dy.dtype()),
                    Launch::grid_stride(ex),
                    args,
                )
            }
        })
    }

    /// `dw +=` the `splits` partial weight gradients of `m x n` floats each, added in split order
    /// (conv2d_bwd_weight_reduce_f32): deterministic, no atomics.
    fn reduce_weight_splits(
        &self,
        partial: &DevMem,
        dw: &mut Buf,
        m: usize,
        n: usize,
        splits: usize,
    ) -> Result<()> {
        let len = m * n;
        // The partial sums read, dw read and written.
        let traffic = (splits + 2) * len * std::mem::size_of::<f32>();
        let args = Args::new()
            .ptr(partial)
            .ptr(dw.dev_mut()?)
            .i32(int(len, "conv weight elements")?)
            .i32(splits as i32)
            .work(Work::traffic(traffic, format!("{splits} x {m}x{n}")));
        // 32 elements a block, a row of a warp per split up to 8 (kernels/conv.cu).
        let rows = splits.clamp(1, 8) as u32;
        let cfg = Launch::linear(len.div_ceil(32).clamp(1, 1 << 16) as u32, rows * 32);
        // SAFETY: arguments match conv2d_bwd_weight_reduce_f32(partial, dw, len, splits);
        // partial holds splits x len floats and dw len (the callers' checked shape); blocks of
        // 32 to 256 threads, whole warps.
        unsafe { self.launch("conv2d_bwd_weight_reduce_f32", cfg, args) }
    }

    /// `dst[plane][p'][c] = src[plane][c][p]` for `planes` planes of `channels x pixels` bf16
    /// (`conv2d_to_nhwc_bf16`; `conv2d_to_nhwc8_bf16` for fewer than 8 channels) or f32
    /// (`conv2d_to_nhwc_f32`), into `dst` at byte `at`, each of dst's rows `padded` (a multiple of
    /// 8 in bf16, of 4 in f32, at least `channels`) long with zeros past `channels`; `flip` > 1
    /// reverses p within groups of `flip` (see kernels/conv.cu).
    #[allow(clippy::too_many_arguments)]
    fn to_nhwc(
        &self,
        dtype: DType,
        src: &DevMem,
        dst: &DevMem,
        at: usize,
        planes: usize,
        (channels, padded): (usize, usize),
        pixels: usize,
        flip: usize,
    ) -> Result<()> {
        let (read, written) = (planes * channels * pixels, planes * padded * pixels);
        let traffic = Work::traffic(
            (read + written) * dtype.size(),
            format!("{planes} x {channels}x{pixels}"),
        );
        if dtype == DType::BF16 && padded == 8 && channels < 8 && flip == 1 {
            let cfg = Launch {
                grid: (pixels.div_ceil(256) as u32, planes as u32, 1),
                block: (256, 1, 1),
                smem: 0,
            };
            if planes > 65535 {
                bail!(
                    "conv: {planes} planes are more than the narrow transpose's grid takes (65535)"
                );
            }
            let args = Args::new()
                .ptr(src)
                .ptr_at(dst, at)
                .i32(channels as i32)
                .i32(int(pixels, "conv transpose pixels")?)
                .work(traffic);
            // SAFETY: arguments match conv2d_to_nhwc8_bf16(src, dst, channels, pixels) with
            // gridDim.y = planes; src holds planes x channels x pixels bf16, dst planes x 8 x
            // pixels from `at` (a 256-byte aligned offset); channels < 8.
            return unsafe { self.launch("conv2d_to_nhwc8_bf16", cfg, args) };
        }
        // Square tiles of 64 bf16 or 32 f32 (a 128-byte row either way).
        let (tile, kernel) = match dtype {
            DType::BF16 => (64, "conv2d_to_nhwc_bf16"),
            _ => (32, "conv2d_to_nhwc_f32"),
        };
        let cfg = Launch {
            grid: (
                pixels.div_ceil(tile) as u32,
                padded.div_ceil(tile) as u32,
                planes as u32,
            ),
            block: (256, 1, 1),
            smem: 0,
        };
        let args = Args::new()
            .ptr(src)
            .ptr_at(dst, at)
            .i32(int(channels, "conv transpose channels")?)
            .i32(int(pixels, "conv transpose pixels")?)
            .i32(int(flip, "conv taps")?)
            .i32(int(padded, "conv padded channels")?)
            .work(traffic);
        debug_assert!(padded % chunk(dtype) == 0 && padded >= channels);
        // SAFETY: arguments match conv2d_to_nhwc_{bf16,f32}(src, dst, channels, pixels, flip,
        // padded); the callers pass src holding planes x channels x pixels of dtype and dst
        // planes x padded x pixels from `at` (256-byte aligned), padded a multiple of a 16-byte run
        // and >= channels.
        unsafe { self.launch(kernel, cfg, args) }
    }

    /// A dense bf16 forward (`op` "fwd": `input` x, `out` y) or stride-1 data gradient
    /// ("bwd_data": dy, dx) as a channels-last implicit GEMM: the input and the weight
    /// transposed into scratch (KRSC; for the forward x's channels [`padded`]; for the data
    /// gradient the weight's taps flipped and its channel axes swapped), then one product per
    /// image, or per span of images whose pixel tiles run from one image into the next where an
    /// image's pixels are no whole number of tiles ([`image_span`]; kernels/conv.cu, `conv2d_nhwc_*`).
    /// `add`: the data gradient is added onto what `out` holds (the epilogue's beta = 1).
    /// `post`: what the epilogue does besides storing ([`EpiloguePost`]).
    #[allow(clippy::too_many_arguments)]
    fn conv_nhwc(
        &self,
        input: Activation,
        w: &Buf,
        out: &mut Buf,
        layer: &Conv,
        op: &str,
        add: bool,
        post: Option<&EpiloguePost>,
    ) -> Result<()> {
        let fwd = op == "fwd";
        // The product's shape: the data gradient's input channels (c_out) are runs of 8 already.
        let dtype = input.dtype();
        let s = &if fwd { padded(layer, dtype) } else { *layer };
        shape_args(Args::new(), s)?; // every size the kernels index fits an int
        let (ex, ew, ey) = s.sizes();
        let taps = s.kh * s.kw;
        // The product's shape as the forward of `input`: its channels and map, the output's.
        let (c, h, wd, m, oh, ow) = if fwd {
            (s.c_in, s.h, s.w, s.c_out, s.oh, s.ow)
        } else {
            (s.c_out, s.oh, s.ow, s.c_in, s.h, s.w)
        };
        let (stride, pad_top, pad_left) = if fwd {
            (s.stride as i64, s.pad_top as i64, s.pad_left as i64)
        } else {
            (
                1,
                s.kh as i64 - 1 - s.pad_top as i64,
                s.kw as i64 - 1 - s.pad_left as i64,
            )
        };
        let w_at = input.scratch_bytes(s.n * c * h * wd * dtype.size());
        let bytes = w_at + ew * dtype.size();
        let kernel_op = post.map_or(op, |p| p.op());
        let span = product_span(
            &Path::Nhwc,
            dtype,
            post.map_or(s.n, |p| p.group(s.n)),
            oh * ow,
        );
        let (kernel, cfg) =
            pipelined_launch("nhwc", kernel_op, m, span * oh * ow, s.n / span, dtype);
        // The input's own channel count: the transposes write the forward's padding.
        let real = if fwd { layer.c_in } else { c };
        self.with_scratch(bytes, |scratch| {
            input.transpose(self, (scratch, 0), s.n, (real, c), h * wd)?;
            if fwd {
                self.to_nhwc(dtype, w.dev()?, scratch, w_at, s.c_out, (real, c), taps, 1)?;
            } else {
                let ch = (s.c_out, s.c_out);
                self.to_nhwc(dtype, w.dev()?, scratch, w_at, 1, ch, s.c_in * taps, taps)?;
            }
            let (input_mem, input_at) = input.nhwc(scratch, 0);
            let args = Args::new()
                .ptr_at(input_mem, input_at)
                .ptr_at(scratch, w_at)
                .ptr(out.dev_mut()?)
                .i32s([c, h, wd, m, s.kh, s.kw].map(|v| v as i64))
                .i32s([stride, pad_top, pad_left, oh as i64, ow as i64])
                .i32(span as i32);
            let args = match post {
                Some(p) => p.args(args, span)?,
                None if fwd => args,
                None => args.f32(beta(add)),
            };
            let read_back = if add { ex } else { 0 };
            let extra = post.map_or(0, |p| p.bytes(&cfg, m));
            let args = args.work(
                Work::conv_on(
                    s,
                    tensor_math(dtype).1,
                    (ex + ew + ey + read_back) * dtype.size() + extra,
                )
                .in_tiles(tile_fill(&cfg, m, s.n * oh * ow)),
            );
            // SAFETY: arguments match conv2d_nhwc_{fwd,bwd_data}[_m64]_<bf16|tf32>(in_nhwc, w,
            // out, c_in, h, w, c_out, kh, kw, stride, pad_top, pad_left, oh, ow, span[, beta]) for
            // the product as the forward of `input` (span divides n: 1 or a statistics group or the
            // batch; the grid n / span products), or conv2d_nhwc_fwd_bn_eval[_m64]_<bf16|tf32>(...,
            // gamma, beta, mean, var, res, eps, act) with the BatchNorm checked against the
            // output (per-channel f32 tensors of c_out, res as y), or
            // conv2d_nhwc_fwd_bn_stats[_m64]_<bf16|tf32>(..., partial, per, groups) (3 floats per
            // channel, product and pixel tile, groups x per x span = n), or
            // conv2d_nhwc_bwd_data_bn_sums[_m64]_<bf16|tf32>(..., res, bn_x, mask, gamma, beta,
            // save_mean, save_invstd, partial, per, groups, act) (their sizes: the caller,
            // ConvOps::conv2d_bwd_data_bn_sums); the NHWC input (n x h x w x c) is
            // at byte 0 of scratch or the caller's copy, the transposed weight at w_at of
            // scratch, both in the operands' type, `out` the
            // checked output (n x m x oh x ow); c a multiple of 16 bytes of channels (padded, or
            // the caller's c_out), path() checked kh, kw <= 8, shape_args every size against int.
            unsafe { self.launch(&kernel, cfg, args) }
        })
    }

    /// The data gradient at stride S > 1 by stride phases (kernels/conv.cu): dy and the flipped
    /// weight transposed into scratch, then per phase (py, px) of dx's pixels that some tap
    /// reaches its sub-kernel gathered (`conv2d_phase_weight_bf16`) and the stride-1 forward of
    /// dy with it written into those pixels (`conv2d_nhwc_bwd_data_phase[_m64]_bf16`); dx is
    /// zeroed first when some phase has pixels but no tap (a 1x1 at stride 2). The products'
    /// multiply-adds add up to the forward's: none multiplies a zero of the stride.
    fn conv_nhwc_bwd_data_phases(
        &self,
        dy: Activation,
        w: &Buf,
        dx: &mut Buf,
        s: &Conv,
        add: bool,
    ) -> Result<()> {
        shape_args(Args::new(), s)?; // every size the kernels index fits an int
        let st = s.stride;
        let (_, ew, ey) = s.sizes();
        let taps = s.kh * s.kw;
        // Along one axis, for phase p: the sub-kernel's first tap in the flipped weight, its tap
        // count, and the padding of the stride-1 product over dy.
        let axis = |p: usize, pad: usize, k: usize| -> (usize, usize, i64) {
            let rho = (p + pad) % st;
            let count = if rho < k { (k - rho).div_ceil(st) } else { 0 };
            let first = if count > 0 {
                k - 1 - rho - st * (count - 1)
            } else {
                0
            };
            let ahead = ((p + pad - rho) / st) as i64;
            (first, count, count as i64 - 1 - ahead)
        };
        let grid = |p: usize, len: usize| if len > p { (len - p).div_ceil(st) } else { 0 };
        let phases: Vec<_> = (0..st * st)
            .map(|i| (i / st, i % st))
            .filter(|&(py, px)| grid(py, s.h) * grid(px, s.w) > 0)
            .map(|(py, px)| {
                let (r0, jr, pad_top) = axis(py, s.pad_top, s.kh);
                let (s0, js, pad_left) = axis(px, s.pad_left, s.kw);
                ((py, px), (r0, s0), (jr, js), (pad_top, pad_left))
            })
            .collect();
        // Added onto dx, a phase without taps adds nothing.
        if !add && phases.iter().any(|&(_, _, (jr, js), _)| jr * js == 0) {
            crate::backend::Backend::zero(self, dx)?;
        }
        let (dtype, size) = (dy.dtype(), dy.dtype().size());
        let wf_at = dy.scratch_bytes(ey * size);
        let wp_at = wf_at + (ew * size).next_multiple_of(256);
        self.with_scratch(wp_at + ew * size, |scratch| {
            let ch = (s.c_out, s.c_out);
            dy.transpose(self, (scratch, 0), s.n, ch, s.oh * s.ow)?;
            self.to_nhwc(dtype, w.dev()?, scratch, wf_at, 1, ch, s.c_in * taps, taps)?;
            for &((py, px), first, (jr, js), (pad_top, pad_left)) in &phases {
                if jr * js == 0 {
                    continue;
                }
                let (ha, wa) = (grid(py, s.h), grid(px, s.w));
                self.phase_weight(dtype, scratch, wf_at, wp_at, s, first, (jr, js))?;
                let (kernel, cfg) =
                    pipelined_launch("nhwc", "bwd_data_phase", s.c_in, ha * wa, s.n, dtype);
                let macs = s.n * ha * wa * s.c_in * jr * js * s.c_out;
                let bytes = s.n * s.c_out * s.oh * s.ow
                    + s.c_in * jr * js * s.c_out
                    + s.n * s.c_in * ha * wa * (1 + add as usize);
                let work = Work {
                    flops: 2.0 * macs as f64,
                    bytes: (bytes * size) as f64,
                    unit: tensor_math(dtype).1,
                    shape: format!("{} phase {py},{px}", conv_shape(s)),
                    fill: tile_fill(&cfg, s.c_in, s.n * ha * wa),
                };
                let (dy_mem, dy_at) = dy.nhwc(scratch, 0);
                let args = Args::new()
                    .ptr_at(dy_mem, dy_at)
                    .ptr_at(scratch, wp_at)
                    .ptr(dx.dev_mut()?)
                    .i32s([s.c_out, s.oh, s.ow, s.c_in, jr, js, 1].map(|v| v as i64))
                    .i32s([pad_top, pad_left, ha as i64, wa as i64])
                    .i32s([s.h, s.w, st, py, px].map(|v| v as i64))
                    .f32(beta(add))
                    .work(work);
                // SAFETY: arguments match conv2d_nhwc_bwd_data_phase[_m64]_<bf16|tf32>(dy_nhwc,
                // w, dx, c_in, h, w, c_out, kh, kw, stride, pad_top, pad_left, oh, ow, dx_h, dx_w,
                // dx_stride, py, px, beta) for the phase's stride-1 product over dy (c_out channels, oh
                // x ow) with a jr x js sub-kernel (<= the layer's <= 8 x 8) onto its ha x wa
                // pixels of dx (n x c_in x h x w, checked, dy's type); c_out in 16-byte runs (the
                // caller), shape_args every size.
                unsafe { self.launch(&kernel, cfg, args)? };
            }
            Ok(())
        })
    }

    /// One stride phase's sub-kernel (`conv2d_phase_weight_<bf16|f32>`): rows (ci, first +
    /// stride j, ...) of the flipped KRSC weight at `from`, written at `to` as c_in x jr x js x
    /// c_out.
    #[allow(clippy::too_many_arguments)]
    fn phase_weight(
        &self,
        dtype: DType,
        scratch: &DevMem,
        from: usize,
        to: usize,
        s: &Conv,
        (r0, s0): (usize, usize),
        (jr, js): (usize, usize),
    ) -> Result<()> {
        let elems = s.c_in * jr * js * s.c_out;
        let args = Args::new()
            .ptr_at(scratch, from)
            .ptr_at(scratch, to)
            .i32s([s.c_in, s.c_out, s.kh, s.kw, s.stride, r0, s0, jr, js].map(|v| v as i64))
            .work(Work::traffic(
                2 * elems * dtype.size(),
                format!("{}x{}x{}x{}", s.c_in, jr, js, s.c_out),
            ));
        // SAFETY: arguments match conv2d_phase_weight_<dtype>(w_flipped, dst, c_in, c_out, kh,
        // kw, stride, r0, s0, jr, js); scratch holds the flipped weight (c_in x kh x kw x c_out,
        // dtype) at `from` and room for the sub-kernel at `to`; the taps r0 + stride (jr - 1) <
        // kh and s0 + stride (js - 1) < kw (conv_nhwc_bwd_data_phases), c_out in 16-byte runs.
        unsafe {
            self.launch(
                &format!("conv2d_phase_weight_{dtype}"),
                Launch::grid_stride(elems / chunk(dtype)),
                args,
            )
        }
    }

    /// The weight gradient as a channels-last product (`conv2d_nhwc_bwd_weight[_m64]_<bf16|tf32>`): x
    /// (its channels [`padded`]) and dy transposed into scratch, the batch's output pixels split
    /// into as many parts as fill the GPU's resident blocks in one wave beside the output's tiles
    /// (at least 256 pixels each, as the element gather's), each part's sum in KRSC order, then
    /// `conv2d_bwd_weight_reduce_krsc_f32` adds the parts' real channels into dw in order.
    fn conv_nhwc_bwd_weight(
        &self,
        x: Activation,
        dy: Activation,
        dw: &mut Buf,
        layer: &Conv,
    ) -> Result<()> {
        let dtype = x.dtype();
        let s = &padded(layer, dtype);
        // Every size the kernels index fits an int, also the offsets of the rows past the batch's
        // last pixel (up to 31 more), which run on into the images after it before they are masked.
        shape_args(Args::new(), s)?;
        let past = 31 / (s.oh * s.ow).max(1) + 1;
        int((s.n + past) * s.h * s.w * s.c_in, "conv input elements")?;
        let (m, n, pixels) = (s.c_out, s.kh * s.kw * s.c_in, s.n * s.oh * s.ow);
        let (kernel, probe) = pipelined_launch("nhwc", "bwd_weight", m, n, 1, dtype);
        let tiles = (probe.grid.0 * probe.grid.1) as usize;
        let slots = self.resident_blocks(&kernel, probe.block.0, probe.smem);
        let balance = tensor_math(dtype).1.flops_per_dram_byte();
        let (splits, per) = weight_grad_splits(tiles, pixels, 32, slots, balance);
        let cfg = Launch {
            grid: (probe.grid.0, probe.grid.1, splits as u32),
            ..probe
        };
        let (ex, _, ey) = s.sizes();
        let size = dtype.size();
        // Scratch: dy's copy and x's (unless made already), the partial sums.
        let x_at = dy.scratch_bytes(ey * size);
        let partial_at = x_at + x.scratch_bytes(ex * size);
        let partial_bytes = splits * m * n * std::mem::size_of::<f32>();
        self.with_scratch(partial_at + partial_bytes, |scratch| {
            let (xc, dyc) = ((layer.c_in, s.c_in), (s.c_out, s.c_out));
            dy.transpose(self, (scratch, 0), s.n, dyc, s.oh * s.ow)?;
            x.transpose(self, (scratch, x_at), s.n, xc, s.h * s.w)?;
            let ((x_mem, x_off), (dy_mem, dy_off)) = (x.nhwc(scratch, x_at), dy.nhwc(scratch, 0));
            let args = Args::new()
                .ptr_at(x_mem, x_off)
                .ptr_at(dy_mem, dy_off)
                .ptr_at(scratch, partial_at)
                .i32(per as i32);
            let bytes = (ex + ey) * size + partial_bytes;
            let args = shape_args(args, s)?.work(Work::conv_on(s, tensor_math(dtype).1, bytes));
            // SAFETY: arguments match conv2d_nhwc_bwd_weight[_m64]_<bf16|tf32>(x_nhwc, dy_nhwc,
            // partial, per, n, c_in, h, w, c_out, kh, kw, stride, pad_top, pad_left, oh, ow);
            // scratch holds the NHWC input at x_at and the output gradient at byte 0 (or the
            // caller's channels-last buffers, of the same layouts: an x_nhwc input has c_in in
            // 16-byte runs, reads_nhwc), both in x's type, and splits x c_out x K floats at
            // partial_at; c_in in 16-byte runs (padded), the caller checked c_out's,
            // shape_args and the check above every size against int; the splits cover every
            // output pixel once, `per` a multiple of 32 (whole k tiles of either type).
            unsafe { self.launch(&kernel, cfg, args)? };
            self.reduce_krsc_splits(scratch, partial_at, dw, layer, splits, s.c_in)
        })
    }

    /// `dw +=` the channels-last weight gradient's `splits` partial sums (c_out x kh*kw x
    /// `padded` each), added in split order into dw's (c_out, c_in, kh, kw) order: one block per
    /// 32 channels of an output channel (kh * kw <= 64, path()'s kernel limit).
    fn reduce_krsc_splits(
        &self,
        scratch: &DevMem,
        at: usize,
        dw: &mut Buf,
        s: &Conv,
        splits: usize,
        padded: usize,
    ) -> Result<()> {
        let len = s.c_out * s.c_in * s.kh * s.kw;
        // The partial sums read (a padded row's zeros share its sectors), dw read and written.
        let traffic =
            (splits * s.c_out * s.kh * s.kw * padded + 2 * len) * std::mem::size_of::<f32>();
        if s.c_out > 65535 {
            bail!("conv: {} output channels are more than the weight gradient's reduction grid takes (65535)", s.c_out);
        }
        // A warp a tap, up to 32 (kernels/conv.cu).
        let cfg = Launch {
            grid: (s.c_in.div_ceil(32) as u32, s.c_out as u32, 1),
            block: (32 * (s.kh * s.kw).clamp(1, 32) as u32, 1, 1),
            smem: 0,
        };
        let args = Args::new()
            .ptr_at(scratch, at)
            .ptr(dw.dev_mut()?)
            .i32(int(s.c_in, "conv c_in")?)
            .i32(int(s.kh * s.kw, "conv taps")?)
            .i32(int(splits, "conv weight splits")?)
            .i32(int(padded, "conv padded channels")?)
            .work(Work::traffic(
                traffic,
                format!("{splits} x {}x{}", s.c_out, len / s.c_out.max(1)),
            ));
        // SAFETY: arguments match conv2d_bwd_weight_reduce_krsc_f32(partial, dw, c_in, taps,
        // splits, padded) with gridDim.y = c_out; scratch holds splits x c_out x taps x padded
        // floats from `at`, dw len floats (the checked weight size); taps <= 64 fits the
        // kernel's shared run.
        unsafe { self.launch("conv2d_bwd_weight_reduce_krsc_f32", cfg, args) }
    }

    /// A 1x1 forward (`op` "fwd": `input` x, `out` y) or data gradient ("bwd_data": dy, dx): one
    /// product per image, M = c_out or c_in.
    /// ... `add`: the data gradient is added onto what `out` holds (its epilogue's beta = 1).
    /// `post`: the forward applies eval-mode BatchNorm in its epilogue (`*_fwd_bn_eval_*`).
    #[allow(clippy::too_many_arguments)]
    fn conv1x1(
        &self,
        input: &Buf,
        w: &Buf,
        out: &mut Buf,
        s: &Conv,
        op: &str,
        add: bool,
        post: Option<&EpiloguePost>,
    ) -> Result<()> {
        let fwd = op == "fwd";
        let m = if fwd { s.c_out } else { s.c_in };
        let kernel_op = post.map_or(op, |p| p.op());
        let dtype = input.dtype();
        let hw = s.h * s.w;
        let group = post.map_or(s.n, |p| p.group(s.n));
        let span = product_span(&Path::OneByOne, dtype, group, hw);
        let (kernel, cfg) = one_by_one_launch(kernel_op, m, span * hw, s.n / span, dtype);
        let (ex, ew, ey) = s.sizes();
        let read_back = if add { ex } else { 0 };
        let args = Args::new()
            .ptr(input.dev()?)
            .ptr(w.dev()?)
            .ptr(out.dev_mut()?)
            .i32(int(s.c_in, "conv c_in")?)
            .i32(int(s.c_out, "conv c_out")?)
            .i32(int(hw, "conv h*w")?)
            .i32(span as i32);
        int(span * hw + PIXEL_TILE, "conv 1x1 pixels of a product")?;
        let args = match post {
            Some(p) => p.args(args, span)?,
            None if fwd => args,
            None => args.f32(beta(add)),
        };
        let extra = post.map_or(0, |p| p.bytes(&cfg, m));
        let args = args.work(
            Work::conv_on(
                s,
                tensor_math(dtype).1,
                (ex + ew + ey + read_back) * dtype.size() + extra,
            )
            .in_tiles(tile_fill(&cfg, m, s.n * s.h * s.w)),
        );
        // SAFETY: arguments match conv2d_1x1_fwd[_m64]_<bf16|tf32>(in, w, out, c_in, c_out, hw,
        // span) (span divides n: 1, a statistics group or the batch; the grid n / span products
        // of span * hw pixels, which fit an int),
        // conv2d_1x1_fwd_bn_eval[_m64]_<bf16|tf32>(..., span, gamma, beta, mean, var, res, eps, act)
        // (the BatchNorm checked against the output: per-channel f32 tensors of c_out, res as y),
        // conv2d_1x1_fwd_bn_stats[_m64]_<bf16|tf32>(..., span, partial, per, groups) (partial holds
        // 3 floats per channel, product and pixel tile: the caller sized it from pixel_runs,
        // `groups` x `per` x span = n), conv2d_1x1_bwd_data[_m64]_<bf16|tf32>(..., span, beta) or
        // conv2d_1x1_bwd_data_bn_sums[_m64]_<bf16|tf32>(..., span, res, bn_x, mask, gamma, beta,
        // save_mean, save_invstd, partial, per, groups, act) (their sizes: the caller,
        // ConvOps::conv2d_bwd_data_bn_sums); the shape was checked (x: n x
        // c_in x hw, w: c_out x c_in, y: n x c_out x hw, all bf16 or all f32, the kernel's
        // operand type) and path() found every row 16-byte aligned.
        unsafe { self.launch(&kernel, cfg, args) }
    }

    /// The 1x1 weight gradient: the batch's pixels split into as many parts as fill the GPU's
    /// resident blocks in one wave beside the output's tiles (groups of whole images, or parts of
    /// each image of at least 256 pixels when the batch has fewer images than that), each part's
    /// products summed by the mainloop into partial sums, which conv2d_bwd_weight_reduce_f32
    /// adds into dw in order.
    fn conv1x1_bwd_weight(&self, x: &Buf, dy: &Buf, dw: &mut Buf, s: &Conv) -> Result<()> {
        let (m, n) = (s.c_out, s.c_in);
        let dtype = x.dtype();
        let (kernel, probe) = one_by_one_launch("bwd_weight", m, n, 1, dtype);
        let tiles = (probe.grid.0 * probe.grid.1) as usize;
        let slots = self.resident_blocks(&kernel, probe.block.0, probe.smem);
        let (per, parts, part_len) = one_by_one_splits(s.n, s.h * s.w, slots / tiles.max(1));
        let splits = if parts > 1 {
            s.n * parts
        } else {
            s.n.div_ceil(per)
        };
        let cfg = Launch {
            grid: (probe.grid.0, probe.grid.1, splits as u32),
            ..probe
        };
        let (ex, _, ey) = s.sizes();
        let partial_bytes = splits * m * n * std::mem::size_of::<f32>();
        self.with_scratch(partial_bytes, |partial| {
            let args = Args::new()
                .ptr(x.dev()?)
                .ptr(dy.dev()?)
                .ptr(partial)
                .i32(per as i32)
                .i32(parts as i32)
                .i32(part_len as i32)
                .i32(int(s.n, "conv batch")?)
                .i32(int(s.c_in, "conv c_in")?)
                .i32(int(s.c_out, "conv c_out")?)
                .i32(int(s.h * s.w, "conv h*w")?)
                .work(Work::conv_on(
                    s,
                    tensor_math(dtype).1,
                    (ex + ey) * dtype.size() + partial_bytes,
                ));
            // SAFETY: arguments match conv2d_1x1_bwd_weight[_m64]_<bf16|tf32>(x, dy, partial,
            // images_per_split, parts, part_len, n, c_in, c_out, hw); x and dy hold the checked
            // sizes (both bf16 or both f32, rows 16-byte aligned), partial splits x c_out x c_in floats, and the
            // splits cover every (image, pixel) once (one_by_one_splits).
            unsafe { self.launch(&kernel, cfg, args)? };
            self.reduce_weight_splits(partial, dw, m, n, splits)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Padding;

    #[test]
    fn shape_checks_take_a_batch_whose_im2col_product_passes_2_pow_31() {
        // ResNet's stem at batch 64, 224 px: K x N of the data gradient is 10G elements, and
        // the kernels never index it (first seen failing on an H200).
        let stem = Conv::new(64, 3, 224, 224, 64, 7, 2, Padding::Sym(3), 1).unwrap();
        assert!(shape_args(Args::new(), &stem).is_ok());
        let wide = Conv::new(1, 1, 1 << 16, 1 << 15, 1, 1, 1, Padding::Sym(0), 1).unwrap();
        let err = shape_args(Args::new(), &wide)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("32-bit size limit"), "{err}");
    }

    #[test]
    fn dense_bf16_and_tf32_shapes_with_kernels_up_to_8x8_take_the_nhwc_path() {
        let conv = |c_in, h, c_out, k, stride, pad| {
            Conv::new(2, c_in, h, h, c_out, k, stride, Padding::Sym(pad), 1).unwrap()
        };
        let on = |s: &Conv, dtype, tf32| match path(s, dtype, tf32).unwrap() {
            Path::Gemm => "gemm",
            Path::OneByOne => "1x1",
            Path::Nhwc => "nhwc",
            Path::Depthwise => "depthwise",
        };
        let is =
            |s: &Conv, dtype, want: &str| assert_eq!(on(s, dtype, false), want, "{s:?} {dtype}");
        // ResNet's 3x3 layers, the stride-2 shortcut, a 1x1 on a 14 x 14 map (196 pixels: no
        // 16-byte NCHW rows), a 7x7 and an 8x8 kernel, and channels not in runs of 8 (the stem's
        // 3, 12), which the channels-last copies pad to a multiple of 8.
        for s in [
            conv(64, 56, 64, 3, 1, 1),
            conv(256, 28, 512, 1, 2, 0),
            conv(512, 14, 2048, 1, 1, 0),
            conv(32, 20, 64, 7, 2, 3),
            conv(8, 20, 8, 8, 1, 0),
            conv(3, 56, 64, 7, 2, 3),
            conv(12, 20, 16, 3, 1, 1),
        ] {
            is(&s, DType::BF16, "nhwc");
            is(&s, DType::F32, "gemm");
        }
        is(&conv(64, 56, 256, 1, 1, 0), DType::BF16, "1x1");
        assert_eq!(padded(&conv(3, 56, 64, 7, 2, 3), DType::BF16).c_in, 8);
        assert_eq!(padded(&conv(12, 20, 16, 3, 1, 1), DType::BF16).c_in, 16);
        assert_eq!(padded(&conv(3, 56, 64, 7, 2, 3), DType::F32).c_in, 4);
        // A kernel over 8 x 8 (ConvGather's 8-bit tap masks): the element gather.
        is(&conv(8, 20, 8, 9, 1, 4), DType::BF16, "gemm");
        let dw = Conv::new(2, 16, 9, 9, 16, 3, 1, Padding::Sym(1), 16).unwrap();
        is(&dw, DType::BF16, "depthwise");
        // f32 with TF32 allowed: the 1x1 kernels take rows of 4 floats (a 14 x 14 map's 196
        // pixels too), the other dense kernels up to 8 x 8 the channels-last ones; without TF32
        // or over 8 x 8, the SIMT implicit GEMM.
        assert_eq!(on(&conv(512, 14, 2048, 1, 1, 0), DType::F32, true), "1x1");
        assert_eq!(on(&conv(64, 56, 256, 1, 1, 0), DType::F32, true), "1x1");
        assert_eq!(on(&conv(6, 8, 16, 1, 1, 0), DType::F32, true), "nhwc");
        assert_eq!(on(&conv(8, 5, 16, 1, 1, 0), DType::F32, true), "nhwc");
        assert_eq!(on(&conv(64, 56, 64, 3, 1, 1), DType::F32, true), "nhwc");
        assert_eq!(on(&conv(256, 28, 512, 1, 2, 0), DType::F32, true), "nhwc");
        assert_eq!(on(&conv(8, 20, 8, 9, 1, 4), DType::F32, true), "gemm");
        assert_eq!(on(&conv(64, 56, 256, 1, 1, 0), DType::F32, false), "gemm");
    }

    #[test]
    fn one_by_one_splits_cover_every_pixel_once() {
        for (images, pixels, want) in [
            (64, 12544, 264),
            (64, 3136, 10),
            (2, 64, 264),
            (3, 800, 100),
            (1, 1, 1),
        ] {
            let (per, parts, len) = one_by_one_splits(images, pixels, want);
            if parts > 1 {
                assert_eq!(per, 1);
                assert!(len % 32 == 0 && len >= 256, "{len}");
                // Every part starts inside the image and together they cover it.
                assert!((parts - 1) * len < pixels && parts * len >= pixels);
            } else {
                assert!(
                    per >= 1 && images.div_ceil(per) <= want.max(1),
                    "{per} for {want}"
                );
            }
        }
        // Fewer images than the GPU wants: parts of each image fill it, in one wave.
        let (_, parts, _) = one_by_one_splits(64, 12544, 264);
        assert!(64 * parts <= 264 && 64 * parts * 10 >= 264 * 9, "{parts}");
    }

    #[test]
    fn weight_grad_splits_cover_k_and_fill_the_last_wave() {
        for slots in [1, 132, 264, 660, 1056] {
            for (tiles, k) in [
                (1, 1),
                (1, 16),
                (3, 802_816),
                (36, 50_176),
                (64, 3136),
                (600, 50_000),
                (2, 513),
            ] {
                for balance in [14, 100, 200] {
                    let (splits, per) = weight_grad_splits(tiles, k, 16, slots, balance);
                    assert!(per % 16 == 0 && splits * per >= k, "{tiles} {k}");
                    assert!(
                        (splits - 1) * per < k,
                        "an empty split for {tiles} tiles, k={k}"
                    );
                    assert!(splits == 1 || per >= 256, "{per} positions a split");
                    assert!(
                        splits == 1 || tiles * splits <= 8 * slots,
                        "{tiles} tiles x {splits} splits: over 8 waves of {slots}"
                    );
                }
            }
        }
        let splits = |tiles, k, slots| weight_grad_splits(tiles, k, 32, slots, 200).0;
        // ResNet-101's layer3 3 x 3 at 448 px (256 x 2304 in 36 tiles, 64 x 28 x 28 positions)
        // on an H200's 132 slots: 7 parts fill 252 of 264 (one wave's rule took 3: 108 of 132).
        assert_eq!(splits(36, 50_176, 132), 7);
        // Its layer4 3 x 3 (144 tiles, 64 x 14 x 14): 4 parts, 576 blocks in 660 slots, where
        // 1 left a second wave of 12 blocks.
        assert_eq!(splits(144, 12_544, 132), 4);
        // A large output fills its waves alone; partial sums would cost more than they gain.
        assert_eq!(splits(600, 50_000, 660), 1);
        // Few tiles and a long reduction: the parts follow the slots.
        assert_eq!(splits(8, 802_816, 264), 33);
        assert_eq!(splits(8, 802_816, 660), 82);
        assert!(splits(3, 802_816, 660) > 100);
        // A cheaper byte (FP32's balance) buys more parts for fuller waves.
        let fp32 = weight_grad_splits(144, 12_544, 32, 132, 14).0;
        assert!(fp32 > 4, "{fp32}");
    }
}
