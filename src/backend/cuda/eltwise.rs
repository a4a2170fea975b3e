//! Launchers for kernels/eltwise.cu (residual add, activations, image conversion, f32 <-> bf16
//! cast): grid-stride, one thread per element.

use super::device::{Args, Launch};
use super::work::Work;
use super::CudaBackend;
use crate::backend::{Buf, Checked, DType, Eltwise, EltwiseOps, ImageToTensor, Op};
use anyhow::Result;

/// Output groups (16 bytes) a thread of `image_to_tensor_u8*` takes in an image, about.
const IMAGE_GROUPS_PER_THREAD: usize = 4;

impl EltwiseOps for CudaBackend {
    fn add_fwd(&self, a: &Buf, b: &Buf, y: &mut Buf, s: Checked<Eltwise>) -> Result<()> {
        if s.len == 0 {
            return Ok(());
        }
        let args = Args::new()
            .ptr(a.dev()?)
            .ptr(b.dev()?)
            .ptr(y.dev_mut()?)
            .i64(s.len as i64)
            .work(passes(&s, a, 3));
        // SAFETY: arguments match add_fwd_<dtype>(a, b, y, n); a, b, y hold n elements (checked).
        unsafe {
            self.launch(
                &Op::AddFwd.kernel(a.dtype()),
                Launch::grid_stride(s.len),
                args,
            )
        }
    }

    fn act_fwd(&self, x: &Buf, y: &mut Buf, s: Checked<Eltwise>) -> Result<()> {
        if s.len == 0 {
            return Ok(());
        }
        let args = Args::new()
            .ptr(x.dev()?)
            .ptr(y.dev_mut()?)
            .i64(s.len as i64)
            .i32(s.act.code())
            .work(passes(&s, x, 2));
        // SAFETY: arguments match act_fwd_<dtype>(x, y, n, act); x, y hold n elements (checked).
        unsafe {
            self.launch(
                &Op::ActFwd.kernel(x.dtype()),
                Launch::grid_stride(s.len),
                args,
            )
        }
    }

    fn act_bwd(&self, y: &Buf, dy: &Buf, dx: &mut Buf, s: Checked<Eltwise>) -> Result<()> {
        if s.len == 0 {
            return Ok(());
        }
        let args = Args::new()
            .ptr(y.dev()?)
            .ptr(dy.dev()?)
            .ptr(dx.dev_mut()?)
            .i64(s.len as i64)
            .i32(s.act.code())
            .work(passes(&s, y, 3));
        // SAFETY: arguments match act_bwd_<dtype>(y, dy, dx, n, act); y, dy, dx hold n elements
        // (checked).
        unsafe {
            self.launch(
                &Op::ActBwd.kernel(y.dtype()),
                Launch::grid_stride(s.len),
                args,
            )
        }
    }

    /// `image_to_tensor_u8` (f32 out) or `image_to_tensor_u8_bf16`: 256 threads a block, a
    /// thread 16 bytes of output (a pixel where an image's pixels are not a multiple of those),
    /// about four of them an image (`IMAGE_GROUPS_PER_THREAD`: the block's 768-entry table is
    /// built once for them); the images along y.
    fn image_to_tensor(&self, rgb: &Buf, out: &mut Buf, s: Checked<ImageToTensor>) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        let hw = s.h * s.w;
        let pix = 16 / out.dtype().size();
        let groups = if hw % pix == 0 { hw / pix } else { hw };
        let launch = Launch {
            grid: (
                groups.div_ceil(256 * IMAGE_GROUPS_PER_THREAD) as u32,
                s.n.min(65535) as u32,
                1,
            ),
            block: (256, 1, 1),
            smem: 0,
        };
        let kernel = match out.dtype() {
            DType::F32 => Op::ImageToTensor.kernel(DType::U8),
            _ => format!("{}_bf16", Op::ImageToTensor.kernel(DType::U8)),
        };
        let args = Args::new()
            .ptr(rgb.dev()?)
            .ptr(out.dev_mut()?)
            .i32(s.n as i32)
            .i32(hw as i32)
            .f32(s.mean[0])
            .f32(s.mean[1])
            .f32(s.mean[2])
            .f32(s.std[0])
            .f32(s.std[1])
            .f32(s.std[2])
            .work(Work::traffic(
                s.n * hw * 3 * (1 + out.dtype().size()),
                format!("{}x{}x{}x3 -> {}", s.n, s.h, s.w, out.dtype()),
            ));
        // SAFETY: arguments match image_to_tensor_u8[_bf16](rgb, out, n, hw, mean0..2, std0..2);
        // rgb holds n*hw*3 bytes and out n*3*hw values of the kernel's type (checked: f32 or
        // bf16), n and 3*hw fit an i32 (checked); the vector path's 8- and 16-byte accesses
        // need both 16-byte aligned, as allocations are (the emulator checks each).
        unsafe { self.launch(&kernel, launch, args) }
    }

    fn cast(&self, x: &Buf, y: &mut Buf, s: Checked<Eltwise>) -> Result<()> {
        if s.len == 0 {
            return Ok(());
        }
        let args = Args::new()
            .ptr(x.dev()?)
            .ptr(y.dev_mut()?)
            .i64(s.len as i64)
            .work(Work::traffic(
                s.len * (x.dtype().size() + y.dtype().size()),
                format!("{} {} -> {}", s.len, x.dtype(), y.dtype()),
            ));
        // SAFETY: arguments match cast_<src>(x, y, n); x and y hold n elements, y of the other
        // float type (checked).
        unsafe {
            self.launch(
                &Op::Cast.kernel(x.dtype()),
                Launch::grid_stride(s.len),
                args,
            )
        }
    }
}

/// `n` passes over `s.len` elements of `like`'s dtype.
fn passes(s: &Eltwise, like: &Buf, n: usize) -> Work {
    Work::traffic(n * s.len * like.dtype().size(), s.len.to_string())
}
