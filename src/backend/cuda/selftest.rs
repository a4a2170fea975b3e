//! Launchers for kernels/selftest.cu: the device's own tests (tests/emu.rs), checked against
//! their twins in `cpu/selftest.rs`, the CUDA definitions of what each one exercises. Each
//! checks its buffers before the launch, like every other launcher.

use super::device::{Args, Launch};
use super::{int, CudaBackend};
use crate::backend::{Buf, DType};
use anyhow::{bail, Result};

/// Outputs per lane of `selftest_warp_u32` (SELFTEST_WARP_OUTPUTS in the kernel).
pub const WARP_OUTPUTS: usize = 16;

fn expect(what: &str, b: &Buf, dtype: DType, len: usize) -> Result<()> {
    if b.dtype() != dtype || b.len() != len {
        bail!(
            "{what}: buffer of {} x {}, expected {len} x {dtype}",
            b.len(),
            b.dtype()
        );
    }
    Ok(())
}

impl CudaBackend {
    /// `out[b*n + t] = in[b*n + (t+1) % n]` through shared memory, `n = threads <= 1024`;
    /// without the barrier it is a race.
    pub fn selftest_barrier_f32(
        &self,
        input: &Buf,
        out: &mut Buf,
        blocks: u32,
        threads: u32,
        with_barrier: bool,
    ) -> Result<()> {
        let n = blocks as usize * threads as usize;
        expect("selftest_barrier_f32 in", input, DType::F32, n)?;
        expect("selftest_barrier_f32 out", out, DType::F32, n)?;
        if threads == 0 || threads > 1024 {
            bail!("selftest_barrier_f32: 1..=1024 threads, got {threads}");
        }
        let args = Args::new()
            .ptr(input.dev()?)
            .ptr(out.dev_mut()?)
            .i32(with_barrier as i32);
        // SAFETY: (in, out, with_barrier); both hold blocks*threads floats.
        unsafe {
            self.launch(
                "selftest_barrier_f32",
                Launch::linear(blocks, threads),
                args,
            )
        }
    }

    /// Writes `out[0..=n]`: one element past the end of an `n`-element buffer.
    ///
    /// # Safety
    /// Never sound: it exists to be caught by the sanitiser build (`INSCLR_EMU_SANITIZE`).
    pub unsafe fn selftest_oob_global_f32(&self, out: &mut Buf) -> Result<()> {
        let n = out.len();
        let args = Args::new().ptr(out.dev_mut()?).i32(n as i32);
        self.launch(
            "selftest_oob_global_f32",
            Launch::linear((n as u32 + 1).div_ceil(64), 64),
            args,
        )
    }

    /// 33 threads write a 32-float shared array.
    ///
    /// # Safety
    /// Never sound: it exists to be caught by the sanitiser build (`INSCLR_EMU_SANITIZE`).
    pub unsafe fn selftest_oob_shared_f32(&self, out: &mut Buf) -> Result<()> {
        expect("selftest_oob_shared_f32 out", out, DType::F32, 33)?;
        let args = Args::new().ptr(out.dev_mut()?);
        self.launch("selftest_oob_shared_f32", Launch::linear(1, 33), args)
    }

    /// Lane 0 of a 32-thread block waits at a barrier its warp never reaches. On the emulator
    /// only: a GPU would hang.
    pub fn selftest_deadlock_i32(&self, out: &mut Buf) -> Result<()> {
        expect("selftest_deadlock_i32 out", out, DType::I32, 32)?;
        if self.info().is_some() {
            bail!("selftest_deadlock_i32 would hang a GPU; it runs on the emulator only");
        }
        let args = Args::new().ptr(out.dev_mut()?);
        // SAFETY: (out) holds 32 ints, one per thread.
        unsafe { self.launch("selftest_deadlock_i32", Launch::linear(1, 32), args) }
    }

    /// Warp collectives over `input` (`blocks * threads` u32, threads a multiple of 32),
    /// [`WARP_OUTPUTS`] results per thread.
    pub fn selftest_warp_u32(
        &self,
        input: &Buf,
        out: &mut Buf,
        blocks: u32,
        threads: u32,
        width: i32,
    ) -> Result<()> {
        let n = blocks as usize * threads as usize;
        if threads % 32 != 0 {
            bail!("selftest_warp_u32: whole warps only, got {threads} threads");
        }
        expect("selftest_warp_u32 in", input, DType::U32, n)?;
        expect("selftest_warp_u32 out", out, DType::U32, n * WARP_OUTPUTS)?;
        let args = Args::new().ptr(input.dev()?).ptr(out.dev_mut()?).i32(width);
        // SAFETY: (in, out, width); in holds one u32 per thread, out WARP_OUTPUTS per thread.
        unsafe { self.launch("selftest_warp_u32", Launch::linear(blocks, threads), args) }
    }

    /// Half-warp shuffles with disjoint masks and a whole-warp float sum: 2 outputs per thread.
    pub fn selftest_shfl_halves_f32(
        &self,
        input: &Buf,
        out: &mut Buf,
        blocks: u32,
        threads: u32,
    ) -> Result<()> {
        let n = blocks as usize * threads as usize;
        if threads % 32 != 0 {
            bail!("selftest_shfl_halves_f32: whole warps only, got {threads} threads");
        }
        expect("selftest_shfl_halves_f32 in", input, DType::F32, n)?;
        expect("selftest_shfl_halves_f32 out", out, DType::F32, 2 * n)?;
        let args = Args::new().ptr(input.dev()?).ptr(out.dev_mut()?);
        // SAFETY: (in, out); in holds one float per thread, out two.
        unsafe {
            self.launch(
                "selftest_shfl_halves_f32",
                Launch::linear(blocks, threads),
                args,
            )
        }
    }

    /// `__syncthreads_count / _and / _or` of `pred` per block: 3 outputs per thread.
    pub fn selftest_syncthreads_i32(
        &self,
        pred: &Buf,
        out: &mut Buf,
        blocks: u32,
        threads: u32,
    ) -> Result<()> {
        let n = blocks as usize * threads as usize;
        expect("selftest_syncthreads_i32 pred", pred, DType::I32, n)?;
        expect("selftest_syncthreads_i32 out", out, DType::I32, 3 * n)?;
        let args = Args::new().ptr(pred.dev()?).ptr(out.dev_mut()?);
        // SAFETY: (pred, out); pred holds one int per thread, out three.
        unsafe {
            self.launch(
                "selftest_syncthreads_i32",
                Launch::linear(blocks, threads),
                args,
            )
        }
    }

    /// Atomics from `vals.len()` threads: `counters` (5 i32: count, max, min, or, claims won),
    /// `fsum` (1 f32), `claims` (`slots` i32 set to -1 before).
    pub fn selftest_atomics_i32(
        &self,
        counters: &mut Buf,
        fsum: &mut Buf,
        vals: &Buf,
        claims: &mut Buf,
    ) -> Result<()> {
        let n = vals.len();
        expect("selftest_atomics_i32 counters", counters, DType::I32, 5)?;
        expect("selftest_atomics_i32 fsum", fsum, DType::F32, 1)?;
        expect("selftest_atomics_i32 vals", vals, DType::F32, n)?;
        if claims.dtype() != DType::I32 || claims.is_empty() {
            bail!("selftest_atomics_i32: claims must be a non-empty i32 buffer");
        }
        let slots = claims.len();
        let args = Args::new()
            .ptr(counters.dev_mut()?)
            .ptr(fsum.dev_mut()?)
            .ptr(vals.dev()?)
            .ptr(claims.dev_mut()?)
            .i32(int(n, "threads")?)
            .i32(int(slots, "slots")?);
        // SAFETY: (counters, fsum, vals, claims, n, slots) with the sizes checked above.
        unsafe {
            self.launch(
                "selftest_atomics_i32",
                Launch::linear((n as u32).div_ceil(128).max(1), 128),
                args,
            )
        }
    }

    /// float -> bf16 / fp16 bits and back: `bf16_bits`, `f16_bits` (u32 buffers of n/2 words,
    /// two u16 each) and `back` (2n f32: bf16 then fp16 round trip of each input).
    pub fn selftest_convert_f32(
        &self,
        input: &Buf,
        bf16_bits: &mut Buf,
        f16_bits: &mut Buf,
        back: &mut Buf,
    ) -> Result<()> {
        let n = input.len();
        expect("selftest_convert_f32 in", input, DType::F32, n)?;
        if n % 2 != 0 {
            bail!("selftest_convert_f32: an even number of inputs, got {n}");
        }
        expect("selftest_convert_f32 bf16", bf16_bits, DType::U32, n / 2)?;
        expect("selftest_convert_f32 f16", f16_bits, DType::U32, n / 2)?;
        expect("selftest_convert_f32 back", back, DType::F32, 2 * n)?;
        let args = Args::new()
            .ptr(input.dev()?)
            .ptr(bf16_bits.dev_mut()?)
            .ptr(f16_bits.dev_mut()?)
            .ptr(back.dev_mut()?)
            .i32(n as i32);
        // SAFETY: (in, bf16, f16, back, n): n floats, n u16 in each bits buffer, 2n floats.
        unsafe {
            self.launch(
                "selftest_convert_f32",
                Launch::linear((n as u32).div_ceil(128).max(1), 128),
                args,
            )
        }
    }

    /// Reverses each block's slice through dynamic shared memory.
    pub fn selftest_dynamic_smem_f32(
        &self,
        input: &Buf,
        out: &mut Buf,
        blocks: u32,
        threads: u32,
    ) -> Result<()> {
        let n = blocks as usize * threads as usize;
        expect("selftest_dynamic_smem_f32 in", input, DType::F32, n)?;
        expect("selftest_dynamic_smem_f32 out", out, DType::F32, n)?;
        let args = Args::new().ptr(input.dev()?).ptr(out.dev_mut()?);
        let cfg = Launch {
            smem: threads * 4,
            ..Launch::linear(blocks, threads)
        };
        // SAFETY: (in, out); both hold blocks*threads floats; threads floats of shared memory.
        unsafe { self.launch("selftest_dynamic_smem_f32", cfg, args) }
    }

    /// Reverses each block's `smem_bytes / 4` values through that much dynamic shared memory,
    /// which may pass the default 48 KiB (the device layer opts the kernel in) up to sm_90's
    /// 227 KiB per block; more is the device layer's error.
    pub fn selftest_big_smem_f32(
        &self,
        input: &Buf,
        out: &mut Buf,
        blocks: u32,
        threads: u32,
        smem_bytes: u32,
    ) -> Result<()> {
        if smem_bytes == 0 || smem_bytes % 4 != 0 {
            bail!("selftest_big_smem_f32: shared memory of whole floats, got {smem_bytes} bytes");
        }
        let per_block = smem_bytes as usize / 4;
        let n = blocks as usize * per_block;
        expect("selftest_big_smem_f32 in", input, DType::F32, n)?;
        expect("selftest_big_smem_f32 out", out, DType::F32, n)?;
        let args = Args::new()
            .ptr(input.dev()?)
            .ptr(out.dev_mut()?)
            .i32(int(per_block, "selftest_big_smem_f32 values per block")?);
        let cfg = Launch {
            smem: smem_bytes,
            ..Launch::linear(blocks, threads)
        };
        // SAFETY: (in, out, n); both hold blocks*n floats, and the block has n floats of dynamic
        // shared memory.
        unsafe { self.launch("selftest_big_smem_f32", cfg, args) }
    }

    /// Every thread's coordinates: 7 u32 per thread.
    pub fn selftest_coords_u32(
        &self,
        out: &mut Buf,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
    ) -> Result<()> {
        let count = |d: (u32, u32, u32)| d.0 as usize * d.1 as usize * d.2 as usize;
        let threads = count(grid) * count(block);
        expect("selftest_coords_u32 out", out, DType::U32, 7 * threads)?;
        let args = Args::new().ptr(out.dev_mut()?);
        // SAFETY: (out) holds 7 u32 per thread of the launch.
        unsafe {
            self.launch(
                "selftest_coords_u32",
                Launch {
                    grid,
                    block,
                    smem: 0,
                },
                args,
            )
        }
    }

    /// `D = A B + C` on one warp's tensor cores, 16x16 tiles: `a`, `b` b16 bits (row-major, B as
    /// `[k][n]`), two per u32 word; `c`, `d` f32. `variant` picks how the fragments are loaded
    /// (see kernels/selftest.cu); variant 4 is broken on purpose.
    pub fn selftest_mma_f32(
        &self,
        a: &Buf,
        b: &Buf,
        c: &Buf,
        d: &mut Buf,
        variant: i32,
    ) -> Result<()> {
        expect("selftest_mma_f32 a", a, DType::U32, 128)?;
        expect("selftest_mma_f32 b", b, DType::U32, 128)?;
        expect("selftest_mma_f32 c", c, DType::F32, 256)?;
        expect("selftest_mma_f32 d", d, DType::F32, 256)?;
        if !(0..=5).contains(&variant) {
            bail!("selftest_mma_f32: variant {variant} is not 0..=5");
        }
        let args = Args::new()
            .ptr(a.dev()?)
            .ptr(b.dev()?)
            .ptr(c.dev()?)
            .ptr(d.dev_mut()?)
            .i32(variant);
        // SAFETY: (a, b, c, d, variant); a and b hold 256 b16 each, c and d 256 floats.
        unsafe { self.launch("selftest_mma_f32", Launch::linear(1, 32), args) }
    }

    /// One warp of `selftest_access_patterns_u32`: `input` holds 512 words, `out` one per lane;
    /// `pattern` 0..=6 picks the access whose memory counters are known (kernels/selftest.cu).
    pub fn selftest_access_patterns_u32(
        &self,
        input: &Buf,
        out: &mut Buf,
        pattern: i32,
    ) -> Result<()> {
        expect("selftest_access_patterns_u32 in", input, DType::U32, 512)?;
        expect("selftest_access_patterns_u32 out", out, DType::U32, 32)?;
        if !(0..=6).contains(&pattern) {
            bail!("selftest_access_patterns_u32: pattern {pattern} is not 0..=6");
        }
        let args = Args::new()
            .ptr(input.dev()?)
            .ptr(out.dev_mut()?)
            .i32(pattern);
        // SAFETY: (in, out, pattern); in holds 512 words, out 32.
        unsafe { self.launch("selftest_access_patterns_u32", Launch::linear(1, 32), args) }
    }

    /// `c (32 x 16) = a (32 x k) b (k x 16)` on two warps sharing cp.async-staged tiles, `k` a
    /// multiple of 16; `a`, `b` bf16, `c` f32. Without the barrier at the end of each k step it
    /// is a race (kernels/selftest.cu).
    pub fn selftest_tiled_mma_bf16(
        &self,
        a: &Buf,
        b: &Buf,
        c: &mut Buf,
        k: usize,
        with_barrier: bool,
    ) -> Result<()> {
        if k == 0 || k % 16 != 0 {
            bail!("selftest_tiled_mma_bf16: k = {k} is not a positive multiple of 16");
        }
        expect("selftest_tiled_mma_bf16 a", a, DType::BF16, 32 * k)?;
        expect("selftest_tiled_mma_bf16 b", b, DType::BF16, k * 16)?;
        expect("selftest_tiled_mma_bf16 c", c, DType::F32, 32 * 16)?;
        let args = Args::new()
            .ptr(a.dev()?)
            .ptr(b.dev()?)
            .ptr(c.dev_mut()?)
            .i32(int(k, "k")?)
            .i32(with_barrier as i32);
        // SAFETY: (a, b, c, k, with_barrier); a holds 32 x k bf16, b k x 16, c 32 x 16 floats.
        unsafe { self.launch("selftest_tiled_mma_bf16", Launch::linear(1, 64), args) }
    }

    /// One warp of `selftest_vector_u32`: `input` holds 128 words, `src_bytes` one count (0..=16)
    /// per lane, `out` 256 words (kernels/selftest.cu).
    pub fn selftest_vector_u32(&self, input: &Buf, src_bytes: &Buf, out: &mut Buf) -> Result<()> {
        expect("selftest_vector_u32 in", input, DType::U32, 128)?;
        expect("selftest_vector_u32 src_bytes", src_bytes, DType::I32, 32)?;
        expect("selftest_vector_u32 out", out, DType::U32, 256)?;
        let args = Args::new()
            .ptr(input.dev()?)
            .ptr(src_bytes.dev()?)
            .ptr(out.dev_mut()?);
        // SAFETY: (in, src_bytes, out); in holds 128 words, src_bytes 32 ints in 0..=16 (the
        // caller's; the emulator refuses others), out 256 words.
        unsafe { self.launch("selftest_vector_u32", Launch::linear(1, 32), args) }
    }
}
