//! Launchers for kernels/pool.cu (GeM, max pooling).

use super::device::{Args, Launch};
use super::work::Work;
use super::{int, CudaBackend};
use crate::backend::{Buf, Checked, DType, Gem, MaxPool, Op, PoolOps};
use anyhow::Result;

impl PoolOps for CudaBackend {
    /// `gem_lanes` lanes a (n, c) row, 256 threads a block.
    fn gem_fwd(&self, x: &Buf, y: &mut Buf, s: Checked<Gem>) -> Result<()> {
        if s.rows == 0 {
            return Ok(());
        }
        let (rows, hw) = (int(s.rows, "GeM rows")?, int(s.hw, "GeM hw")?);
        let (lanes_log2, cfg) = gem_launch(&s)?;
        let args = Args::new()
            .ptr(x.dev()?)
            .ptr(y.dev_mut()?)
            .i32(rows)
            .i32(hw)
            .i32(lanes_log2)
            .f32(s.p)
            .f32(s.eps)
            .work(Work::traffic(
                (s.rows * s.hw + s.rows) * x.dtype().size(),
                format!("{}x{}", s.rows, s.hw),
            ));
        // SAFETY: arguments match gem_fwd_<dtype>(x, y, rows, hw, lanes_log2, p, eps); the shape
        // was checked: x holds rows*hw elements and y rows, of x's dtype; the grid's threads,
        // rows << lanes_log2 of them, fit an i32 (gem_launch).
        unsafe { self.launch(&Op::GemFwd.kernel(x.dtype()), cfg, args) }
    }

    /// As the forward: `gem_lanes` lanes a row.
    fn gem_bwd(&self, x: &Buf, y: &Buf, dy: &Buf, dx: &mut Buf, s: Checked<Gem>) -> Result<()> {
        if s.rows == 0 {
            return Ok(());
        }
        let (rows, hw) = (int(s.rows, "GeM rows")?, int(s.hw, "GeM hw")?);
        let (lanes_log2, cfg) = gem_launch(&s)?;
        let args = Args::new()
            .ptr(x.dev()?)
            .ptr(y.dev()?)
            .ptr(dy.dev()?)
            .ptr(dx.dev_mut()?)
            .i32(rows)
            .i32(hw)
            .i32(lanes_log2)
            .f32(s.p)
            .f32(s.eps)
            .work(Work::traffic(
                2 * (s.rows * s.hw + s.rows) * x.dtype().size(),
                format!("{}x{}", s.rows, s.hw),
            ));
        // SAFETY: arguments match gem_bwd_<dtype>(x, y, dy, dx, rows, hw, lanes_log2, p, eps); the
        // shape was checked: x, dx hold rows*hw elements and y, dy rows; the grid's threads fit
        // an i32 (gem_launch).
        unsafe { self.launch(&Op::GemBwd.kernel(x.dtype()), cfg, args) }
    }

    /// One thread per output position, walking the planes (`maxpool_tiles`); with `argmax` it
    /// also writes each output's byte. ResNet's stem pool: 4 outputs a thread (`maxpool_kernel`).
    fn maxpool_fwd(
        &self,
        x: &Buf,
        y: &mut Buf,
        argmax: Option<&mut Buf>,
        s: Checked<MaxPool>,
    ) -> Result<()> {
        let total = s.n * s.c * s.oh * s.ow;
        if total == 0 {
            return Ok(());
        }
        let kept = if argmax.is_some() { total } else { 0 };
        let bytes = (s.n * s.c * (s.h * s.w + s.oh * s.ow)) * x.dtype().size() + kept;
        let argmax = argmax.map(|a| a.dev_mut()).transpose()?;
        let args = Args::new()
            .ptr(x.dev()?)
            .ptr(y.dev_mut()?)
            .opt_ptr(argmax.as_deref());
        let args = maxpool_shape(args, &s)?.work(Work::traffic(bytes, maxpool_label(&s)));
        let (kernel, grid) = maxpool_kernel(&s, Op::MaxpoolFwd, x.dtype(), (s.oh, s.ow));
        // SAFETY: arguments match maxpool[_3x3s2]_fwd_<dtype>(x, y, argmax, planes, h, w, k,
        // stride, pad, oh, ow); the shape was checked: x holds planes*h*w elements, y planes*oh*ow,
        // and argmax (null or) planes*oh*ow bytes (k <= 16: a place fits one); the stem kernel's
        // shape is_stem_pool's, whose rows are aligned to its vectors.
        unsafe { self.launch(&kernel, grid, args) }
    }

    /// One thread per input position, walking the planes (`maxpool_tiles`) and gathering from
    /// the windows that cover it those whose argmax byte names it. ResNet's stem pool: 2 x 8
    /// inputs a thread (`maxpool_kernel`).
    fn maxpool_bwd(&self, argmax: &Buf, dy: &Buf, dx: &mut Buf, s: Checked<MaxPool>) -> Result<()> {
        let total = s.n * s.c * s.h * s.w;
        if total == 0 {
            return Ok(());
        }
        // dx written at the input's size, dy and argmax read at the output's.
        let outputs = s.n * s.c * s.oh * s.ow;
        let bytes = (total + outputs) * dy.dtype().size() + outputs;
        let args = Args::new()
            .ptr(argmax.dev()?)
            .ptr(dy.dev()?)
            .ptr(dx.dev_mut()?);
        let args = maxpool_shape(args, &s)?.work(Work::traffic(bytes, maxpool_label(&s)));
        let (kernel, grid) = maxpool_kernel(&s, Op::MaxpoolBwd, dy.dtype(), (s.h, s.w));
        // SAFETY: arguments match maxpool[_3x3s2]_bwd_<dtype>(argmax, dy, dx, planes, h, w, k,
        // stride, pad, oh, ow); the shape was checked: dx holds planes*h*w elements, dy
        // planes*oh*ow and argmax planes*oh*ow bytes; the stem kernel's shape is is_stem_pool's.
        unsafe { self.launch(&kernel, grid, args) }
    }
}

/// GeM's lanes a row: the largest power of two up to a warp that leaves a lane about 12 of the
/// row's elements or more (14 x 14 maps: 16, 7 x 7: 4, 32 x 32: 32), so that a row's reduction
/// and root are paid once for several rows in a warp, and a lane's loads have a few elements to
/// overlap.
fn gem_lanes(hw: usize) -> usize {
    let mut lanes = 1;
    while lanes < 32 && 2 * lanes * 12 <= hw {
        lanes *= 2;
    }
    lanes
}

/// `lanes_log2` and the grid of a GeM pass: `rows x gem_lanes(hw)` threads, 256 a block.
fn gem_launch(s: &Gem) -> Result<(i32, Launch)> {
    let lanes = gem_lanes(s.hw);
    let threads = int(s.rows * lanes, "GeM threads")? as usize;
    Ok((
        lanes.trailing_zeros() as i32,
        Launch::linear(threads.div_ceil(256) as u32, 256),
    ))
}

/// The kernel that runs a max pool pass (`op`) and its grid: ResNet's stem pool on its own kernels
/// ([`is_stem_pool`], [`stem_cells`]), any other on the general ones over the pass's `(h, w)`
/// positions (the outputs forward, the inputs backward: [`maxpool_tiles`]).
fn maxpool_kernel(s: &MaxPool, op: Op, dtype: DType, (h, w): (usize, usize)) -> (String, Launch) {
    let general = op.kernel(dtype);
    if is_stem_pool(s) {
        (
            general.replacen("maxpool", "maxpool_3x3s2", 1),
            stem_cells(s),
        )
    } else {
        (general, maxpool_tiles(h, w, s.n * s.c))
    }
}

/// The max pooling kernels' grid over an `h x w` map of `planes` planes: 32 x 8 tiles of
/// positions, a block each, and at most [`MAXPOOL_PLANE_BLOCKS`] blocks along the planes, which
/// each walk `planes / that` of them (a thread finds its position and window bounds once).
fn maxpool_tiles(h: usize, w: usize, planes: usize) -> Launch {
    Launch {
        grid: (
            w.div_ceil(32) as u32,
            h.div_ceil(8) as u32,
            planes.clamp(1, MAXPOOL_PLANE_BLOCKS) as u32,
        ),
        block: (32, 8, 1),
        smem: 0,
    }
}

/// ResNet's stem pool, 3 x 3 windows, stride 2, padding 1, on a map of even height and a width a
/// multiple of 8 (every ResNet input side a multiple of 32 gives one): pool.cu's
/// `maxpool_3x3s2_*` kernels, which take 2 x 8 inputs (1 x 4 outputs) a thread, run it.
fn is_stem_pool(s: &MaxPool) -> bool {
    (s.k, s.stride, s.pad) == (3, 2, 1) && s.h % 2 == 0 && s.w % 8 == 0
}

/// The stem pool's grid: 256-thread blocks over a plane's cells (a cell is 2 input rows x 8
/// columns, `h / 2 * w / 8` a plane) and at most [`MAXPOOL_PLANE_BLOCKS`] blocks along the
/// planes, which each walk `planes / that` of them.
fn stem_cells(s: &MaxPool) -> Launch {
    let cells = (s.h / 2 * (s.w / 8)).max(1);
    Launch {
        grid: (
            cells.div_ceil(256) as u32,
            (s.n * s.c).clamp(1, MAXPOOL_PLANE_BLOCKS) as u32,
            1,
        ),
        block: (256, 1, 1),
        smem: 0,
    }
}

/// Blocks along the planes of a max pool (a grid's y or z is at most 65535): ResNet's stem at
/// batch 64 has 4096 planes, so a thread takes 4 of them; its 112 x 112 inputs at 224 px are
/// 56 x 14 cells, 4 blocks of 256 a plane, 4096 blocks in all, about 5 waves of 6 blocks an SM on
/// 132 SMs (13 blocks a plane at 448 px).
const MAXPOOL_PLANE_BLOCKS: usize = 1024;

fn maxpool_label(s: &MaxPool) -> String {
    format!("{}x{}x{}x{} k{} s{}", s.n, s.c, s.h, s.w, s.k, s.stride)
}

/// The max pooling kernels' shape arguments: planes, h, w, k, stride, pad, oh, ow.
fn maxpool_shape(args: Args, s: &MaxPool) -> Result<Args> {
    int(s.n * s.c * s.h * s.w, "max pool input elements")?;
    Ok(args
        .i32(int(s.n * s.c, "max pool planes")?)
        .i32(s.h as i32)
        .i32(s.w as i32)
        .i32(int(s.k, "max pool window")?)
        .i32(int(s.stride, "max pool stride")?)
        .i32(s.pad as i32)
        .i32(s.oh as i32)
        .i32(s.ow as i32))
}
