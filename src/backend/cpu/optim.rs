//! The optimiser on the CPU: the twins of `kernels/optim.cu`, rounded op by op as the kernels
//! are (Rust never contracts to FMA), so a device step gives these bits exactly.

use crate::backend::{AdamScalars, Buf, Checked, OptimStep};
use anyhow::Result;

/// One Adam step over `p` (elements `[0, split)` with group 0's scalars, the rest group 1's).
pub fn adam_f32(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    split: usize,
    k: &AdamScalars,
) {
    for i in 0..p.len() {
        let grp = usize::from(i >= split);
        let gi = g[i] + k.wd[grp] * p[i];
        m[i] = k.beta1 * m[i] + k.one_minus_beta1 * gi;
        v[i] = k.beta2 * v[i] + k.one_minus_beta2 * gi * gi;
        let denom = v[i].sqrt() / k.sqrt_bc2 + k.eps;
        p[i] -= k.step[grp] * m[i] / denom;
    }
}

/// One SGD-with-momentum step (coupled weight decay, as torch).
pub fn sgd_f32(
    p: &mut [f32],
    g: &[f32],
    buf: &mut [f32],
    split: usize,
    lr: [f32; 2],
    wd: [f32; 2],
    momentum: f32,
) {
    for i in 0..p.len() {
        let grp = usize::from(i >= split);
        let d = g[i] + wd[grp] * p[i];
        buf[i] = momentum * buf[i] + d;
        p[i] -= lr[grp] * buf[i];
    }
}

/// `sum(x^2)` in f64, in order.
pub fn sum_squares_f32(x: &[f32]) -> f64 {
    x.iter().map(|&v| (v as f64) * (v as f64)).sum()
}

impl crate::backend::OptimOps for super::CpuBackend {
    fn adam(
        &self,
        p: &mut Buf,
        g: &Buf,
        m: &mut Buf,
        v: &mut Buf,
        s: Checked<OptimStep>,
        k: AdamScalars,
    ) -> Result<()> {
        adam_f32(
            p.host_mut()?,
            g.host()?,
            m.host_mut()?,
            v.host_mut()?,
            s.split,
            &k,
        );
        Ok(())
    }

    fn sgd(
        &self,
        p: &mut Buf,
        g: &Buf,
        buf: &mut Buf,
        s: Checked<OptimStep>,
        momentum: f32,
    ) -> Result<()> {
        sgd_f32(
            p.host_mut()?,
            g.host()?,
            buf.host_mut()?,
            s.split,
            s.lr.map(|x| x as f32),
            s.wd.map(|x| x as f32),
            momentum,
        );
        Ok(())
    }

    fn sum_squares(&self, x: &Buf) -> Result<f64> {
        Ok(sum_squares_f32(x.host()?))
    }

    fn scale(&self, x: &mut Buf, s: f32) -> Result<()> {
        x.host_mut::<f32>()?.iter_mut().for_each(|v| *v *= s);
        Ok(())
    }
}
