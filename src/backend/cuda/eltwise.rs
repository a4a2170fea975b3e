//! Launchers for kernels/eltwise.cu (residual add, activations, image conversion, f32 <-> bf16
//! cast): grid-stride, one thread per element.

use super::device::{Args, Launch};
use super::work::Work;
use super::CudaBackend;
use crate::backend::{Buf, Checked, DType, Eltwise, EltwiseOps, ImageToTensor, Op};
use anyhow::Result;

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

    fn image_to_tensor(&self, rgb: &Buf, out: &mut Buf, s: Checked<ImageToTensor>) -> Result<()> {
        let len = out.len();
        if len == 0 {
            return Ok(());
        }
        let args = Args::new()
            .ptr(rgb.dev()?)
            .ptr(out.dev_mut()?)
            .i64(s.n as i64)
            .i64((s.h * s.w) as i64)
            .f32(s.mean[0])
            .f32(s.mean[1])
            .f32(s.mean[2])
            .f32(s.std[0])
            .f32(s.std[1])
            .f32(s.std[2])
            .work(Work::traffic(
                s.n * s.h * s.w * 3 * (1 + 4),
                format!("{}x{}x{}x3", s.n, s.h, s.w),
            ));
        // SAFETY: arguments match image_to_tensor_u8(rgb, out, n, hw, mean0..2, std0..2); rgb
        // holds n*hw*3 bytes and out n*3*hw f32 (checked).
        unsafe {
            self.launch(
                &Op::ImageToTensor.kernel(DType::U8),
                Launch::grid_stride(len),
                args,
            )
        }
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
