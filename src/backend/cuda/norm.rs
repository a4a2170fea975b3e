//! Launchers for kernels/norm.cu (row-wise L2 normalisation, BatchNorm + activation).

use super::device::{Args, DevMem, Launch};
use super::work::Work;
use super::{int, CudaBackend};
use crate::backend::{
    Act, ActMask, Backend, BatchNorm, BnTrainParams, Buf, Checked, DType, L2Norm, NormOps, Op,
};
use anyhow::{bail, Result};

impl NormOps for CudaBackend {
    /// One warp per row.
    fn l2norm_fwd(&self, x: &Buf, y: &mut Buf, s: Checked<L2Norm>) -> Result<()> {
        if s.rows == 0 || s.cols == 0 {
            return Ok(());
        }
        let (rows, cols) = (int(s.rows, "L2 rows")?, int(s.cols, "L2 cols")?);
        let args = Args::new()
            .ptr(x.dev()?)
            .ptr(y.dev_mut()?)
            .i32(rows)
            .i32(cols)
            .f32(s.eps)
            .work(l2_work(&s, x, 2));
        // SAFETY: arguments match l2norm_fwd_<dtype>(x, y, rows, cols, eps); the shape was
        // checked: x and y hold rows*cols elements.
        unsafe {
            self.launch(
                &Op::L2normFwd.kernel(x.dtype()),
                Launch::warp_per_item(s.rows),
                args,
            )
        }
    }

    /// One warp per row.
    fn l2norm_bwd(&self, x: &Buf, dy: &Buf, dx: &mut Buf, s: Checked<L2Norm>) -> Result<()> {
        if s.rows == 0 || s.cols == 0 {
            return Ok(());
        }
        let (rows, cols) = (int(s.rows, "L2 rows")?, int(s.cols, "L2 cols")?);
        let args = Args::new()
            .ptr(x.dev()?)
            .ptr(dy.dev()?)
            .ptr(dx.dev_mut()?)
            .i32(rows)
            .i32(cols)
            .f32(s.eps)
            .work(l2_work(&s, x, 3));
        // SAFETY: arguments match l2norm_bwd_<dtype>(x, dy, dx, rows, cols, eps); the shape was
        // checked: x, dy, dx hold rows*cols elements.
        unsafe {
            self.launch(
                &Op::L2normBwd.kernel(x.dtype()),
                Launch::warp_per_item(s.rows),
                args,
            )
        }
    }

    /// Two launches: each run's statistics into scratch, then every run's output from its
    /// pair's merged statistics (kernels/norm.cu).
    fn batchnorm_fwd_train(
        &self,
        x: &Buf,
        gamma: &Buf,
        beta: &Buf,
        running: (&mut Buf, &mut Buf),
        saved: (&mut Buf, &mut Buf),
        residual: Option<&Buf>,
        y: &mut Buf,
        mask: Option<&mut ActMask>,
        s: Checked<BatchNorm>,
    ) -> Result<()> {
        let (n, c, hw) = bn_sizes(&s)?;
        if c == 0 || n == 0 {
            return Ok(());
        }
        let dtype = x.dtype();
        let res = residual.map(|r| r.dev()).transpose()?;
        let stats_kernel = format!("batchnorm_fwd_train_stats_{dtype}");
        let kernel = Op::BatchnormFwdTrain.kernel(dtype);
        let mut mems = vec![x.dev()?, y.dev()?];
        mems.extend(res);
        let split = self.bn_split(&[&stats_kernel, &kernel], &s, &mems, dtype.size());
        let partial_bytes = split.pairs * split.chunks * 3 * 4;
        let affine_at = partial_bytes.next_multiple_of(256);
        let per = (s.n / s.ghost) as i32;
        let act_bytes = s.n * s.c * s.hw * dtype.size();
        self.with_scratch(affine_at + split.pairs * 8, |partial| {
            let args = Args::new()
                .ptr(x.dev()?)
                .ptr(partial)
                .i32(per)
                .i32(c)
                .i32(hw)
                .i32(split.chunks as i32)
                .i32(split.vec as i32)
                .work(bn_traffic(&s, act_bytes + partial_bytes));
            // SAFETY: arguments match batchnorm_fwd_train_stats_<dtype>(x, partial, per, C, hw,
            // chunks, vec); x holds n*C*hw (checked), partial 3 floats per (pair, run), and vec
            // divides hw and the buffers' alignment (bn_split).
            unsafe { self.launch(&stats_kernel, split.launch(), args)? };
            let bn = BnTrainParams {
                gamma,
                beta,
                running,
                saved,
                mask,
            };
            let stats = BnStats {
                partial,
                at: 0,
                runs: split.chunks,
                shifted: true,
                affine_at,
            };
            self.bn_train_apply(x, bn, residual, y, &s, &split, stats)
        })
    }

    /// One launch: every run's output from the running statistics.
    fn batchnorm_fwd_eval(
        &self,
        x: &Buf,
        gamma: &Buf,
        beta: &Buf,
        running_mean: &Buf,
        running_var: &Buf,
        residual: Option<&Buf>,
        y: &mut Buf,
        s: Checked<BatchNorm>,
    ) -> Result<()> {
        let (n, c, hw) = bn_sizes(&s)?;
        if c == 0 || n == 0 || s.hw == 0 {
            return Ok(());
        }
        let dtype = x.dtype();
        let res = residual.map(|r| r.dev()).transpose()?;
        let kernel = Op::BatchnormFwdEval.kernel(dtype);
        let mut mems = vec![x.dev()?, y.dev()?];
        mems.extend(res);
        // Running statistics: one statistics group whatever the model's ghost groups.
        let one = BatchNorm { ghost: 1, ..*s };
        let split = self.bn_split(&[&kernel], &one, &mems, dtype.size());
        let passes = 2 + residual.is_some() as usize;
        let args = Args::new()
            .ptr(x.dev()?)
            .ptr(gamma.dev()?)
            .ptr(beta.dev()?)
            .ptr(running_mean.dev()?)
            .ptr(running_var.dev()?)
            .opt_ptr(res)
            .ptr(y.dev_mut()?)
            .i32(n)
            .i32(c)
            .i32(hw)
            .i32(split.chunks as i32)
            .i32(split.vec as i32)
            .f32(s.eps)
            .i32(s.act.code())
            .work(bn_traffic(
                &s,
                passes * s.n * s.c * s.hw * dtype.size() + 4 * 4 * s.c,
            ));
        // SAFETY: arguments match batchnorm_fwd_eval_<dtype>(x, gamma, beta, running_mean,
        // running_var, res, y, n, C, hw, chunks, vec, eps, act); the shape was checked: x, y (and
        // res) hold n*C*hw and the per-channel buffers C; vec divides hw and the alignment.
        unsafe { self.launch(&kernel, split.launch(), args) }
    }

    /// Two launches: each run's sums into scratch, then every run's gradients from its pair's
    /// totals; run 0 of group 0 adds each channel's totals to the parameter gradients. Without a
    /// residual neither reads y: the kernels recompute it from x (kernels/norm.cu, BnAffine).
    /// With one, the first pass also writes dz (the residual's gradient) and the second reads it
    /// in place of dy, with no y and no activation (dz = dy act'(y) exactly: act' is 0 or 1).
    fn batchnorm_bwd(
        &self,
        x: &Buf,
        y: &Buf,
        dy: &Buf,
        (gamma, beta): (&Buf, &Buf),
        saved: (&Buf, &Buf),
        mask: Option<&ActMask>,
        dx: &mut Buf,
        dres: Option<&mut Buf>,
        dparams: (&mut Buf, &mut Buf),
        s: Checked<BatchNorm>,
    ) -> Result<()> {
        let (n, c, hw) = bn_sizes(&s)?;
        if c == 0 || n == 0 {
            return Ok(());
        }
        let dtype = x.dtype();
        let has_dres = dres.is_some();
        let dres = dres.map(|r| r.dev_mut()).transpose()?;
        // y is read for act'(y) only where a residual went into it.
        let y_dev = if has_dres { Some(y.dev()?) } else { None };
        let reduce_kernel = format!("batchnorm_bwd_reduce_{dtype}");
        let kernel = Op::BatchnormBwd.kernel(dtype);
        let mut mems = vec![x.dev()?, dy.dev()?, dx.dev()?];
        mems.extend(y_dev);
        mems.extend(dres.as_deref());
        let split = self.bn_split(&[&reduce_kernel, &kernel], &s, &mems, dtype.size());
        let partial_bytes = split.pairs * split.chunks * 2 * 4;
        let per = (s.n / s.ghost) as i32;
        let act_bytes = s.n * s.c * s.hw * dtype.size();
        // The forward's mask in place of y, where this split's vectors match its layout.
        let mask = match mask {
            Some(m) if has_dres && split.vec * dtype.size() == 16 => {
                if m.bits.len() != act_bytes / 16 {
                    bail!(
                        "batchnorm backward: the activation mask holds {} bytes, this shape's is {} (a forward of another shape kept it)",
                        m.bits.len(),
                        act_bytes / 16
                    );
                }
                Some(m.bits.dev()?)
            }
            _ => None,
        };
        let y = if mask.is_some() { None } else { y_dev };
        // The second pass's gradient in and activation: dz (written by the first) and none, or dy
        // and the layer's.
        let (grad, act) = match dres.as_deref() {
            Some(dz) => (dz, Act::Identity),
            None => (dy.dev()?, s.act),
        };
        // A channels-last dx: each pair's map (BnBwdPair, 7 floats) after the sums.
        let pairs_at = partial_bytes.next_multiple_of(256);
        let scratch = if s.dx_nhwc {
            pairs_at + split.pairs * BN_BWD_PAIR_BYTES
        } else {
            partial_bytes
        };
        self.with_scratch(scratch, |partial| {
            // x, dy (and y, or its mask) read, dz written with a residual; the saved statistics
            // (per pair) and gamma, beta (per channel) read; the sums written.
            let passes = 2 + has_dres as usize + y.is_some() as usize;
            let mask_bytes = if mask.is_some() { act_bytes / 16 } else { 0 };
            let args = Args::new()
                .ptr(x.dev()?)
                .opt_ptr(y)
                .opt_ptr(mask)
                .ptr(dy.dev()?)
                .ptr(gamma.dev()?)
                .ptr(beta.dev()?)
                .ptr(saved.0.dev()?)
                .ptr(saved.1.dev()?)
                .ptr(partial)
                .opt_ptr(dres.as_deref())
                .i32(per)
                .i32(c)
                .i32(hw)
                .i32(split.chunks as i32)
                .i32(split.vec as i32)
                .i32(s.act.code())
                .work(bn_traffic(
                    &s,
                    passes * act_bytes + mask_bytes + 2 * 4 * (split.pairs + s.c) + partial_bytes,
                ));
            // SAFETY: arguments match batchnorm_bwd_reduce_<dtype>(x, y, mask, dy, gamma, beta,
            // save_mean, save_invstd, partial, dres, per, C, hw, chunks, vec, act); x, dy (y and
            // dres when not null) hold n*C*hw, gamma and beta C, the saved statistics ghost*C
            // (checked), partial 2 floats per (pair, run); the mask, when not null, a byte per
            // 16-byte vector of y (checked above) and vec is that width.
            unsafe { self.launch(&reduce_kernel, split.launch(), args)? };
            if s.dx_nhwc {
                let grad = (grad, act);
                let sums = ((partial, split.chunks), (partial, pairs_at));
                return self.bn_bwd_nhwc(x, grad, (gamma, beta), saved, dx, dparams, &s, sums);
            }
            let sums = (partial, split.chunks);
            self.bn_bwd_pass(
                x,
                (grad, act),
                (gamma, beta),
                saved,
                sums,
                dx,
                dparams,
                &s,
                &split,
            )
        })
    }

    /// The second pass alone, after a data gradient took the reduce pass in its epilogue
    /// (`conv2d_{1x1,nhwc}_bwd_data_bn_sums_*`): its `runs` sums a pair merged into a few
    /// (`batchnorm_merge_sums_f32`), then dz as it wrote it (no activation) through the pass.
    fn batchnorm_bwd_summed(
        &self,
        x: &Buf,
        dz: &Buf,
        params: (&Buf, &Buf),
        saved: (&Buf, &Buf),
        (partial, runs): (&Buf, usize),
        dx: &mut Buf,
        dparams: (&mut Buf, &mut Buf),
        s: Checked<BatchNorm>,
    ) -> Result<()> {
        let (n, c, _) = bn_sizes(&s)?;
        if c == 0 || n == 0 {
            return Ok(());
        }
        let grad = (dz.dev()?, Act::Identity);
        let pairs = s.ghost * s.c;
        let chunks = bn_merge_chunks(pairs, runs);
        let merged_bytes = pairs * chunks * 2 * 4;
        let pairs_at = merged_bytes.next_multiple_of(256);
        self.with_scratch(pairs_at + pairs * BN_BWD_PAIR_BYTES, |merged| {
            self.bn_merge(2, partial.dev()?, (merged, 0), (pairs, runs, chunks))?;
            let sums = (merged, chunks);
            if s.dx_nhwc {
                let pairs = (merged, pairs_at);
                return self.bn_bwd_nhwc(x, grad, params, saved, dx, dparams, &s, (sums, pairs));
            }
            let dtype = x.dtype();
            let kernel = Op::BatchnormBwd.kernel(dtype);
            let mems = [x.dev()?, grad.0, dx.dev()?];
            let split = self.bn_split(&[&kernel], &s, &mems, dtype.size());
            self.bn_bwd_pass(x, grad, params, saved, sums, dx, dparams, &s, &split)
        })
    }

    /// `batchnorm_bwd_eval_<dtype>` (frozen statistics): one pass writes dx (and dres) and each
    /// run's sums, then `batchnorm_bwd_params_f32` adds them to the parameter gradients.
    fn batchnorm_bwd_eval(
        &self,
        x: &Buf,
        y: &Buf,
        dy: &Buf,
        gamma: &Buf,
        running: (&Buf, &Buf),
        dx: &mut Buf,
        dres: Option<&mut Buf>,
        dparams: (&mut Buf, &mut Buf),
        s: Checked<BatchNorm>,
    ) -> Result<()> {
        let (n, c, hw) = bn_sizes(&s)?;
        // No values: dx is empty and the parameter gradients gain nothing.
        if c == 0 || n == 0 || s.hw == 0 {
            return Ok(());
        }
        let dtype = x.dtype();
        let has_dres = dres.is_some();
        let dres = dres.map(|r| r.dev_mut()).transpose()?;
        let kernel = format!("batchnorm_bwd_eval_{dtype}");
        let mut mems = vec![x.dev()?, y.dev()?, dy.dev()?, dx.dev()?];
        mems.extend(dres.as_deref());
        let one = BatchNorm { ghost: 1, ..*s };
        let split = self.bn_split(&[&kernel], &one, &mems, dtype.size());
        let partial_bytes = split.pairs * split.chunks * 2 * 4;
        let passes = 4 + has_dres as usize;
        self.with_scratch(partial_bytes, |partial| {
            let args = Args::new()
                .ptr(x.dev()?)
                .ptr(y.dev()?)
                .ptr(dy.dev()?)
                .ptr(gamma.dev()?)
                .ptr(running.0.dev()?)
                .ptr(running.1.dev()?)
                .ptr(partial)
                .ptr(dx.dev_mut()?)
                .opt_ptr(dres.as_deref())
                .i32(n)
                .i32(c)
                .i32(hw)
                .i32(split.chunks as i32)
                .i32(split.vec as i32)
                .f32(s.eps)
                .i32(s.act.code())
                .work(bn_traffic(
                    &s,
                    passes * s.n * s.c * s.hw * dtype.size() + 3 * 4 * s.c + partial_bytes,
                ));
            // SAFETY: arguments match batchnorm_bwd_eval_<dtype>(x, y, dy, gamma, running_mean,
            // running_var, partial, dx, dres, n, C, hw, chunks, vec, eps, act); the shape was
            // checked by the caller: activations n*C*hw, per-channel buffers C; partial holds 2
            // floats per (channel, run).
            unsafe { self.launch(&kernel, split.launch(), args)? };
            let args = Args::new()
                .ptr(partial)
                .ptr(dparams.0.dev_mut()?)
                .ptr(dparams.1.dev_mut()?)
                .i32(c)
                .i32(1)
                .i32(split.chunks as i32)
                .work(bn_traffic(&s, partial_bytes + 4 * 4 * s.c));
            // SAFETY: arguments match batchnorm_bwd_params_f32(partial, dgamma, dbeta, C, ghost,
            // chunks); partial was written above for C pairs of `chunks` runs, dgamma and dbeta
            // hold C (checked).
            unsafe { self.launch("batchnorm_bwd_params_f32", Launch::warp_per_item(s.c), args) }
        })
    }
}

impl CudaBackend {
    /// How BatchNorm `s` cuts its work for `kernels` (the launches that share its partial
    /// sums): the vector width that hw and the buffers `mems` (elements of `elem` bytes) allow,
    /// and the runs per pair that fill the GPU's waves ([`bn_chunks`]).
    fn bn_split(&self, kernels: &[&str], s: &BatchNorm, mems: &[&DevMem], elem: usize) -> BnSplit {
        let vec = [16 / elem, 8 / elem, 1]
            .into_iter()
            .find(|&v| {
                v >= 1 && s.hw % v == 0 && mems.iter().all(|m| m.ptr() % (v * elem) as u64 == 0)
            })
            .unwrap_or(1);
        let pairs = s.ghost * s.c;
        let vectors = s.n / s.ghost * s.hw / vec;
        let slots: Vec<usize> = kernels
            .iter()
            .map(|k| self.resident_blocks(k, BN_THREADS, 0))
            .collect();
        BnSplit {
            pairs,
            chunks: bn_chunks(pairs, vectors, &slots),
            vec,
        }
    }
}

/// A BatchNorm launch's cut: `chunks` runs for each of `pairs` (group, channel) pairs, vectors of
/// `vec` elements.
pub(super) struct BnSplit {
    pairs: usize,
    chunks: usize,
    vec: usize,
}

/// A training forward's pair statistics for `batchnorm_fwd_train_<dtype>`: `runs` partials (count,
/// mean, m2) per pair in `partial` from byte `at`, less the pair's first value when `shifted` (as
/// the statistics pass writes them).
pub(super) struct BnStats<'a> {
    pub partial: &'a DevMem,
    /// Byte offset of the first partial in `partial`.
    pub at: usize,
    pub runs: usize,
    pub shifted: bool,
    /// Byte offset in `partial` of room for a float2 per pair (8-byte aligned): the affine maps
    /// a channels-last apply pass writes and then reads ([`CudaBackend::bn_train_apply`]).
    pub affine_at: usize,
}

impl CudaBackend {
    /// y = act(bn(x) [+ residual]) from the pair statistics `stats` (`batchnorm_fwd_train_<dtype>`,
    /// `split` as x's shape allows): saves each pair's mean and 1/sqrt(var + eps), moves the
    /// running statistics; keeps act'(y) in `bn.mask` where a residual and an activation went
    /// into y and the split's vectors are 16 bytes (a byte each: kernels/norm.cu, act_mask_of).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn bn_train_apply(
        &self,
        x: &Buf,
        bn: BnTrainParams,
        residual: Option<&Buf>,
        y: &mut Buf,
        s: &BatchNorm,
        split: &BnSplit,
        stats: BnStats,
    ) -> Result<()> {
        if s.y_nhwc {
            return self.bn_train_apply_nhwc(x, bn, y, s, stats);
        }
        let (_, c, hw) = bn_sizes(s)?;
        let dtype = x.dtype();
        let res = residual.map(|r| r.dev()).transpose()?;
        let passes = 2 + residual.is_some() as usize;
        let act_bytes = s.n * s.c * s.hw * dtype.size();
        let keep_mask =
            residual.is_some() && s.act != Act::Identity && split.vec * dtype.size() == 16;
        let mask = match bn.mask {
            Some(m) if keep_mask => {
                let be: &dyn Backend = self;
                be.ensure(&mut m.bits, DType::U8, act_bytes / 16)?;
                m.kept = true;
                Some(m.bits.dev_mut()?)
            }
            _ => None,
        };
        let mask_bytes = if mask.is_some() { act_bytes / 16 } else { 0 };
        let args = Args::new()
            .ptr(x.dev()?)
            .ptr(bn.gamma.dev()?)
            .ptr(bn.beta.dev()?)
            .ptr(bn.running.0.dev_mut()?)
            .ptr(bn.running.1.dev_mut()?)
            .ptr(bn.saved.0.dev_mut()?)
            .ptr(bn.saved.1.dev_mut()?)
            .ptr_at(stats.partial, stats.at)
            .i32(stats.runs as i32)
            .i32(stats.shifted as i32)
            .opt_ptr(res)
            .ptr(y.dev_mut()?)
            .opt_ptr(mask.as_deref())
            .i32((s.n / s.ghost) as i32)
            .i32(c)
            .i32(hw)
            .i32(split.chunks as i32)
            .i32(split.vec as i32)
            .f32(s.eps)
            .f32(s.momentum)
            .i32(s.act.code())
            .work(bn_traffic(
                s,
                passes * act_bytes
                    + mask_bytes
                    + split.pairs * stats.runs * 3 * 4
                    + bn_channel_bytes(s),
            ));
        // SAFETY: arguments match batchnorm_fwd_train_<dtype>(x, gamma, beta, running_mean,
        // running_var, save_mean, save_invstd, partial, runs, shifted, res, y, mask, per, C, hw,
        // chunks, vec, eps, momentum, act); the shape was checked: x, y (and res) hold n*C*hw,
        // the parameters and running statistics C, the saved statistics ghost*C, and ghost
        // divides n; partial holds `runs` partials of 3 floats per pair (the callers wrote them);
        // vec divides hw and the buffers' alignment (bn_split); the mask, when not null, a byte
        // per vector of 16 bytes, the width vec is.
        unsafe { self.launch(&Op::BatchnormFwdTrain.kernel(dtype), split.launch(), args) }
    }

    /// [`CudaBackend::bn_train_apply`] into a channels-last y (`s.y_nhwc`, no residual: checked
    /// by the caller): `batchnorm_fwd_train_save_<dtype>` (a warp a pair) saves the statistics,
    /// then `batchnorm_fwd_train_nhwc_<dtype>` writes y through 64 x 64 tiles (32 x 32 in f32).
    fn bn_train_apply_nhwc(
        &self,
        x: &Buf,
        bn: BnTrainParams,
        y: &mut Buf,
        s: &BatchNorm,
        stats: BnStats,
    ) -> Result<()> {
        let (_, c, hw) = bn_sizes(s)?;
        let dtype = x.dtype();
        // The apply pass's grid first: the save pass moves the running statistics.
        let tiles = nhwc_tiles(s, dtype)?;
        let per = s.n / s.ghost;
        let pairs = s.ghost * s.c;
        let args = Args::new()
            .ptr(x.dev()?)
            .ptr(bn.gamma.dev()?)
            .ptr(bn.beta.dev()?)
            .ptr(bn.running.0.dev_mut()?)
            .ptr(bn.running.1.dev_mut()?)
            .ptr(bn.saved.0.dev_mut()?)
            .ptr(bn.saved.1.dev_mut()?)
            .ptr_at(stats.partial, stats.at)
            .i32(stats.runs as i32)
            .i32(stats.shifted as i32)
            .ptr_at(stats.partial, stats.affine_at)
            .i32(per as i32)
            .i32(c)
            .i32(hw)
            .f32(s.eps)
            .f32(s.momentum)
            .work(bn_traffic(
                s,
                pairs * stats.runs * 3 * 4 + bn_channel_bytes(s) + pairs * 8,
            ));
        let cfg = Launch::linear(pairs as u32, 32);
        // SAFETY: arguments match batchnorm_fwd_train_save_<dtype>(x, gamma, beta, running_mean,
        // running_var, save_mean, save_invstd, partial, runs, shifted, affine, per, C, hw, eps,
        // momentum); the shape was checked: x holds n*C*hw, gamma, beta and the running
        // statistics C, the saved ones ghost*C, and ghost divides n; partial holds `runs`
        // partials of 3 floats per pair (the callers wrote them), and a float2 per pair at
        // affine_at (the callers' scratch, 8-byte aligned); one 32-thread block per pair.
        unsafe { self.launch(&format!("batchnorm_fwd_train_save_{dtype}"), cfg, args)? };
        let cfg = tiles;
        let act_bytes = s.n * s.c * s.hw * dtype.size();
        let args = Args::new()
            .ptr(x.dev()?)
            .ptr_at(stats.partial, stats.affine_at)
            .ptr(y.dev_mut()?)
            .i32(per as i32)
            .i32(c)
            .i32(hw)
            .i32(s.act.code())
            .work(bn_traffic(s, 2 * act_bytes + pairs * 8));
        // SAFETY: arguments match batchnorm_fwd_train_nhwc_<dtype>(x, affine, y, per, C, hw,
        // act); the shape was checked: x and y hold n*C*hw (y as n x hw x C), the affine maps
        // ghost*C float2 (written just above), per = n / ghost; tiles of 128 bytes a row over
        // (hw, C, n), n within the grid's z.
        unsafe { self.launch(&format!("batchnorm_fwd_train_nhwc_{dtype}"), cfg, args) }
    }

    /// `batchnorm_bwd_<dtype>`: dx from x and `grad` (dy and the layer's activation, or dz and
    /// none), each pair's `runs` sums in `sums`; run 0 of group 0 adds the parameter gradients.
    #[allow(clippy::too_many_arguments)]
    fn bn_bwd_pass(
        &self,
        x: &Buf,
        (grad, act): (&DevMem, Act),
        (gamma, beta): (&Buf, &Buf),
        saved: (&Buf, &Buf),
        (sums, runs): (&DevMem, usize),
        dx: &mut Buf,
        dparams: (&mut Buf, &mut Buf),
        s: &BatchNorm,
        split: &BnSplit,
    ) -> Result<()> {
        let (_, c, hw) = bn_sizes(s)?;
        let act_bytes = s.n * s.c * s.hw * x.dtype().size();
        let args = Args::new()
            .ptr(x.dev()?)
            .ptr(grad)
            .ptr(gamma.dev()?)
            .ptr(beta.dev()?)
            .ptr(saved.0.dev()?)
            .ptr(saved.1.dev()?)
            .ptr(sums)
            .ptr(dx.dev_mut()?)
            .ptr(dparams.0.dev_mut()?)
            .ptr(dparams.1.dev_mut()?)
            .i32((s.n / s.ghost) as i32)
            .i32(c)
            .i32(hw)
            .i32(s.ghost as i32)
            .i32(split.chunks as i32)
            .i32(int(runs, "batchnorm backward runs")?)
            .i32(split.vec as i32)
            .i32(act.code())
            .work(bn_traffic(
                s,
                3 * act_bytes + split.pairs * runs * 2 * 4 + bn_channel_bytes(s),
            ));
        // SAFETY: arguments match batchnorm_bwd_<dtype>(x, dy, gamma, beta, save_mean,
        // save_invstd, partial, dx, dgamma, dbeta, per, C, hw, ghost, chunks, runs, vec, act);
        // the shape was checked: x, grad and dx hold n*C*hw, gamma, beta and the parameter
        // gradients C, the saved statistics ghost*C, ghost divides n; `sums` holds `runs` sums of
        // 2 floats per pair (written by the reduce pass, or by a data gradient's epilogue); the
        // split's vectors fit x, grad and dx.
        unsafe { self.launch(&Op::BatchnormBwd.kernel(x.dtype()), split.launch(), args) }
    }

    /// The backward's second pass into a channels-last dx (`s.dx_nhwc`), from the reduce pass's
    /// `sums` (2 floats per pair and each of its `runs`; room for 7 floats per pair at byte
    /// `pairs_at` of `pairs_mem`): `batchnorm_bwd_pairs_f32` (a warp a pair: the pair's map,
    /// the parameter gradients), then `batchnorm_bwd_nhwc_<dtype>` reads x and `grad` through 64 x
    /// 64 tiles (32 x 32 in f32) and writes dx channels-last. `grad` and `act` are the second
    /// pass's, as for `batchnorm_bwd_<dtype>`: dy and the layer's activation, or after a residual
    /// the dz the reduce pass wrote and none.
    #[allow(clippy::too_many_arguments)]
    fn bn_bwd_nhwc(
        &self,
        x: &Buf,
        (grad, act): (&DevMem, Act),
        (gamma, beta): (&Buf, &Buf),
        saved: (&Buf, &Buf),
        dx: &mut Buf,
        dparams: (&mut Buf, &mut Buf),
        s: &BatchNorm,
        ((sums, runs), (pairs_mem, pairs_at)): ((&DevMem, usize), (&DevMem, usize)),
    ) -> Result<()> {
        let (_, c, hw) = bn_sizes(s)?;
        let dtype = x.dtype();
        // The second pass's grid first: the pairs pass adds to the parameter gradients.
        let tiles = nhwc_tiles(s, dtype)?;
        let (per, pairs) = (s.n / s.ghost, s.ghost * s.c);
        let args = Args::new()
            .ptr(sums)
            .ptr(gamma.dev()?)
            .ptr(beta.dev()?)
            .ptr(saved.0.dev()?)
            .ptr(saved.1.dev()?)
            .ptr(dparams.0.dev_mut()?)
            .ptr(dparams.1.dev_mut()?)
            .ptr_at(pairs_mem, pairs_at)
            .i32(per as i32)
            .i32(c)
            .i32(hw)
            .i32(s.ghost as i32)
            .i32(runs as i32)
            .work(bn_traffic(
                s,
                pairs * runs * 2 * 4 + bn_channel_bytes(s) + pairs * BN_BWD_PAIR_BYTES,
            ));
        let cfg = Launch::linear(pairs as u32, 32);
        // SAFETY: arguments match batchnorm_bwd_pairs_f32(partial, gamma, beta, save_mean,
        // save_invstd, dgamma, dbeta, pairs, per, C, hw, ghost, chunks); the shape was checked:
        // gamma, beta and the parameter gradients hold C, the saved statistics ghost*C, ghost
        // divides n; sums holds `runs` sums of 2 floats per pair (the reduce pass or a data
        // gradient's epilogue wrote them), pairs_mem 7 floats per pair at pairs_at (4-byte
        // aligned); a 32-thread block a pair.
        unsafe { self.launch("batchnorm_bwd_pairs_f32", cfg, args)? };
        let cfg = tiles;
        let act_bytes = s.n * s.c * s.hw * dtype.size();
        let args = Args::new()
            .ptr(x.dev()?)
            .ptr(grad)
            .ptr_at(pairs_mem, pairs_at)
            .ptr(dx.dev_mut()?)
            .i32(per as i32)
            .i32(c)
            .i32(hw)
            .i32(act.code())
            .work(bn_traffic(s, 3 * act_bytes + pairs * BN_BWD_PAIR_BYTES));
        // SAFETY: arguments match batchnorm_bwd_nhwc_<dtype>(x, dy, pairs, dx, per, C, hw, act);
        // the shape was checked: x, grad (dy, or the dz the reduce pass wrote) and dx hold n*C*hw
        // (dx as n x hw x C), the pairs' maps ghost*C x 7 floats (written just above), per = n /
        // ghost; tiles of 128 bytes a row over (hw, C, n), n within the grid's z.
        unsafe { self.launch(&format!("batchnorm_bwd_nhwc_{dtype}"), cfg, args) }
    }

    /// Merges a convolution's `runs` partials per pair (its epilogue's, one per image and pixel
    /// tile, in planes of runs x pairs floats: `floats` of them, 3 for the forward's statistics,
    /// 2 for the backward's sums) into `chunks` runs per pair (`floats` each, pair-major) at
    /// `merged`'s byte `merged_at`: batchnorm_merge_stats_f32 (unshifted statistics) or
    /// batchnorm_merge_sums_f32 (`chunks` from [`bn_merge_chunks`]).
    pub(super) fn bn_merge(
        &self,
        floats: usize,
        partial: &DevMem,
        (merged, merged_at): (&DevMem, usize),
        (pairs, runs, chunks): (usize, usize, usize),
    ) -> Result<()> {
        let kernel = match floats {
            3 => "batchnorm_merge_stats_f32",
            _ => "batchnorm_merge_sums_f32",
        };
        let args = Args::new()
            .ptr(partial)
            .ptr_at(merged, merged_at)
            .i32(int(pairs, "batchnorm pairs")?)
            .i32(int(runs, "batchnorm runs to merge")?)
            .i32(chunks as i32)
            .work(Work::traffic(
                (runs + chunks) * pairs * floats * 4,
                format!("{pairs}x{runs}"),
            ));
        let cfg = Launch {
            grid: (pairs.div_ceil(32) as u32, chunks as u32, 1),
            block: (BN_THREADS, 1, 1),
            smem: 0,
        };
        // SAFETY: arguments match batchnorm_merge_{stats,sums}_f32(partial, merged, pairs, runs,
        // chunks); `partial` holds `floats` planes of runs x pairs floats from its start and
        // `merged` pairs x chunks x `floats` more at byte merged_at (the callers' layouts); blocks
        // of 32 pairs x chunks.
        unsafe { self.launch(kernel, cfg, args) }
    }

    /// The launch split of the training forward's apply pass alone (after a convolution that
    /// wrote the statistics).
    pub(super) fn bn_apply_split(
        &self,
        s: &BatchNorm,
        x: &Buf,
        y: &Buf,
        residual: Option<&Buf>,
    ) -> Result<BnSplit> {
        let dtype = x.dtype();
        let kernel = Op::BatchnormFwdTrain.kernel(dtype);
        let mut mems = vec![x.dev()?, y.dev()?];
        mems.extend(residual.map(|r| r.dev()).transpose()?);
        Ok(self.bn_split(&[&kernel], s, &mems, dtype.size()))
    }
}

impl BnSplit {
    /// One block per (run, pair).
    fn launch(&self) -> Launch {
        Launch {
            grid: (self.chunks as u32, self.pairs as u32, 1),
            block: (BN_THREADS, 1, 1),
            smem: 0,
        }
    }
}

/// The runs per pair that batchnorm_merge_stats_f32 leaves of a convolution's `runs`: enough
/// blocks (of 32 pairs) to cover a GPU several times over, each merging at least 8 runs (one a
/// warp), and at most 128 per pair for batchnorm_fwd_train's blocks to merge (one warp each).
pub(super) fn bn_merge_chunks(pairs: usize, runs: usize) -> usize {
    const BLOCKS: usize = 1024;
    (BLOCKS / pairs.div_ceil(32)).clamp(1, runs.div_ceil(8).clamp(1, 128))
}

/// Runs per pair: the fewest whose grid (`pairs x chunks` blocks) fills at least 95% of its last
/// wave on every kernel of `slots` (blocks each holds at once), else the best such share; each run
/// at least [`BN_MIN_VECTORS`] of the pair's `vectors` (so a block's own reduction stays a small
/// part of its time). A fixed count of blocks would leave a partly empty last wave on most
/// layers, which costs as long as a full one.
fn bn_chunks(pairs: usize, vectors: usize, slots: &[usize]) -> usize {
    let most = vectors.div_ceil(BN_MIN_VECTORS).max(1);
    let fill = |chunks: usize| -> f64 {
        slots
            .iter()
            .map(|&s| {
                let waves = (pairs * chunks) as f64 / s.max(1) as f64;
                waves / waves.ceil()
            })
            .fold(1.0, f64::min)
    };
    let mut best = 1;
    for chunks in 1..=most {
        if fill(chunks) >= 0.95 {
            return chunks;
        }
        if fill(chunks) > fill(best) {
            best = chunks;
        }
    }
    best
}

/// Vectors a BatchNorm block takes at least: four per thread.
const BN_MIN_VECTORS: usize = 4 * BN_THREADS as usize;

/// A channels-last BatchNorm pass's grid (kernels/nhwc.cuh): a block per tile of 128-byte rows
/// (64 bf16 or 32 f32 channels and pixels) of an image.
fn nhwc_tiles(s: &BatchNorm, dtype: DType) -> Result<Launch> {
    if s.n > 65535 {
        bail!(
            "batchnorm: {} images are more than a channels-last pass's grid takes (65535); use a smaller batch",
            s.n
        );
    }
    let tile = 128 / dtype.size();
    Ok(Launch {
        grid: (
            s.hw.div_ceil(tile) as u32,
            s.c.div_ceil(tile) as u32,
            s.n as u32,
        ),
        block: (256, 1, 1),
        smem: 0,
    })
}

/// Bytes of a pair's backward map (`BnBwdPair` in kernels/norm.cu: 7 floats).
const BN_BWD_PAIR_BYTES: usize = 7 * 4;

/// Threads of the BatchNorm kernels (`BN_THREADS` in kernels/norm.cu).
const BN_THREADS: u32 = 256;

/// `passes` over a `rows x cols` matrix of `x`'s dtype.
fn l2_work(s: &L2Norm, x: &Buf, passes: usize) -> Work {
    Work::traffic(
        passes * s.rows * s.cols * x.dtype().size(),
        format!("{}x{}", s.rows, s.cols),
    )
}

/// `bytes` of traffic, labelled with the BatchNorm's shape as `benches/kernels.rs` labels it.
fn bn_traffic(s: &BatchNorm, bytes: usize) -> Work {
    Work::traffic(bytes, format!("{}x{}x{}", s.n, s.c, s.hw))
}

/// The per-channel f32 traffic of a training launch: eight floats per (group, channel) (weight,
/// bias, running statistics read and written, saved statistics or parameter gradients).
fn bn_channel_bytes(s: &BatchNorm) -> usize {
    8 * 4 * s.c * s.ghost.max(1)
}

/// `(n, C, hw)` as the kernels' `int`s.
fn bn_sizes(s: &BatchNorm) -> Result<(i32, i32, i32)> {
    int(s.n * s.c * s.hw, "batchnorm elements")?;
    Ok((s.n as i32, s.c as i32, s.hw as i32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bn_chunks_fill_whole_waves_on_every_kernel_of_the_split() {
        // 64 channels over 1056 slots: 16 runs fill 97% of one wave.
        assert_eq!(bn_chunks(64, 1 << 20, &[1056]), 16);
        // More pairs than slots: one run each when that is already 95% of whole waves...
        assert_eq!(bn_chunks(2048, 1 << 20, &[1056]), 1);
        // ... else as many as bring the last wave up: 1024 pairs over 528 slots (1.94 waves) is
        // fine, over 792 (1.29) needs 3 runs (3.88).
        assert_eq!(bn_chunks(1024, 1 << 20, &[528]), 1);
        assert_eq!(bn_chunks(1024, 1 << 20, &[792]), 3);
        // Two kernels sharing the partial sums: runs that fill both.
        let both = bn_chunks(64, 1 << 20, &[1056, 792]);
        for slots in [1056, 792] {
            let waves = (64 * both) as f64 / slots as f64;
            assert!(waves / waves.ceil() >= 0.95, "{both} runs over {slots}");
        }
        // Too few values to fill anything: never a run of fewer than BN_MIN_VECTORS, the best
        // share below that.
        assert_eq!(bn_chunks(2, 3 * BN_MIN_VECTORS, &[528]), 3);
        assert_eq!(bn_chunks(2, 100, &[528]), 1);
    }
}
