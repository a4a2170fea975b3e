//! Launchers for kernels/optim.cu: one grid-stride launch over the arena per step; the norm
//! in two launches (per-block f64 partials in scratch, then one block adds them in order).

use super::device::{Args, Launch};
use super::work::Work;
use super::CudaBackend;
use crate::backend::DType;
use crate::backend::{AdamScalars, Buf, Checked, Op, OptimOps, OptimStep};
use anyhow::Result;

/// Threads of the norm's blocks (`SUMSQ_THREADS` in the kernel).
const SUMSQ_THREADS: u32 = 256;
/// At most this many partial sums (the finishing block adds them in a loop).
const SUMSQ_MAX_BLOCKS: usize = 1024;

impl OptimOps for CudaBackend {
    fn adam(
        &self,
        p: &mut Buf,
        g: &Buf,
        m: &mut Buf,
        v: &mut Buf,
        s: Checked<OptimStep>,
        k: AdamScalars,
    ) -> Result<()> {
        if s.len == 0 {
            return Ok(());
        }
        let args = Args::new()
            .ptr(p.dev_mut()?)
            .ptr(g.dev()?)
            .ptr(m.dev_mut()?)
            .ptr(v.dev_mut()?)
            .i64(s.len as i64)
            .i64(s.split as i64)
            .f32(k.step[0])
            .f32(k.wd[0])
            .f32(k.step[1])
            .f32(k.wd[1])
            .f32(k.beta1)
            .f32(k.beta2)
            .f32(k.one_minus_beta1)
            .f32(k.one_minus_beta2)
            .f32(k.sqrt_bc2)
            .f32(k.eps)
            // p, m, v read and written, g read.
            .work(Work::traffic(7 * 4 * s.len, format!("{} params", s.len)));
        // SAFETY: arguments match adam_f32(p, g, m, v, n, split, step_w, wd_w, step_b, wd_b,
        // beta1, beta2, 1 - beta1, 1 - beta2, sqrt_bc2, eps); the four buffers hold n f32
        // (checked).
        unsafe {
            self.launch(
                &Op::Adam.kernel(DType::F32),
                Launch::grid_stride(s.len),
                args,
            )
        }
    }

    fn sgd(
        &self,
        p: &mut Buf,
        g: &Buf,
        buf: &mut Buf,
        s: Checked<OptimStep>,
        momentum: f32,
    ) -> Result<()> {
        if s.len == 0 {
            return Ok(());
        }
        let args = Args::new()
            .ptr(p.dev_mut()?)
            .ptr(g.dev()?)
            .ptr(buf.dev_mut()?)
            .i64(s.len as i64)
            .i64(s.split as i64)
            .f32(s.lr[0] as f32)
            .f32(s.wd[0] as f32)
            .f32(s.lr[1] as f32)
            .f32(s.wd[1] as f32)
            .f32(momentum)
            .work(Work::traffic(5 * 4 * s.len, format!("{} params", s.len)));
        // SAFETY: arguments match sgd_f32(p, g, buf, n, split, lr_w, wd_w, lr_b, wd_b, momentum);
        // the three buffers hold n f32 (checked).
        unsafe {
            self.launch(
                &Op::Sgd.kernel(DType::F32),
                Launch::grid_stride(s.len),
                args,
            )
        }
    }

    fn sum_squares(&self, x: &Buf) -> Result<f64> {
        let n = x.len();
        if n == 0 {
            return Ok(0.0);
        }
        let blocks = n
            .div_ceil(SUMSQ_THREADS as usize)
            .clamp(1, SUMSQ_MAX_BLOCKS);
        let total = self.upload_list(&[0f64])?;
        self.with_scratch(blocks * 8, |partial| {
            let args = Args::new()
                .ptr(x.dev()?)
                .i64(n as i64)
                .ptr(partial)
                .work(Work::traffic(4 * n + 8 * blocks, n.to_string()));
            // SAFETY: arguments match sumsq_f32(x, n, partial); x holds n f32 and partial one
            // f64 per block of this launch.
            unsafe {
                self.launch(
                    &Op::SumSquares.kernel(DType::F32),
                    Launch::linear(blocks as u32, SUMSQ_THREADS),
                    args,
                )?
            };
            let args = Args::new()
                .ptr(partial)
                .i32(blocks as i32)
                .ptr(&total)
                .work(Work::traffic(8 * blocks + 8, format!("{blocks} partials")));
            // SAFETY: arguments match sumsq_finish_f32(partial, count, total): `count` partials
            // written above, one f64 out.
            unsafe { self.launch("sumsq_finish_f32", Launch::linear(1, SUMSQ_THREADS), args) }
        })?;
        let mut bytes = [0u8; 8];
        self.layer().read(&total, &mut bytes)?;
        Ok(f64::from_le_bytes(bytes))
    }

    fn scale(&self, x: &mut Buf, s: f32) -> Result<()> {
        if x.is_empty() {
            return Ok(());
        }
        let n = x.len();
        let args = Args::new()
            .ptr(x.dev_mut()?)
            .i64(n as i64)
            .f32(s)
            .work(Work::traffic(2 * 4 * n, n.to_string()));
        // SAFETY: arguments match scale_f32(x, n, s); x holds n f32 (checked by the caller).
        unsafe { self.launch(&Op::Scale.kernel(DType::F32), Launch::grid_stride(n), args) }
    }
}
