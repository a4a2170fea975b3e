//! The twins of kernels/selftest.cu: what each of the device's own tests must produce, from the
//! CUDA definitions of the operation it exercises (barriers, warp collectives, block votes,
//! atomics, conversions, shared memory, coordinates, mma). tests/emu.rs compares every launch
//! with these.

use crate::backend::cuda::selftest::WARP_OUTPUTS;

/// `selftest_barrier_f32`: each block's values rotated left by one (`out[t] = in[(t + 1) % n]`).
pub fn barrier_f32(input: &[f32], threads: usize) -> Vec<f32> {
    input
        .chunks(threads)
        .flat_map(|blk| (0..blk.len()).map(move |t| blk[(t + 1) % blk.len()]))
        .collect()
}

/// `selftest_warp_u32` for one warp of 32 inputs and a shuffle `width`: per lane, the shuffles
/// (idx, up 3, down 5, xor 6 within the segment), ballot, any, all, the `__reduce_*` family
/// (add, min / max unsigned and signed, and, or, xor) and `__match_any` of `v % 4`.
pub fn warp_u32(v: &[u32], width: usize) -> Vec<[u32; WARP_OUTPUTS]> {
    let seg = |l: usize| l & !(width - 1);
    let ballot = |p: &dyn Fn(u32) -> bool| -> u32 {
        (0..32).filter(|&l| p(v[l])).fold(0, |m, l| m | 1 << l)
    };
    let (and, or, xor) = (
        v.iter().fold(u32::MAX, |a, &x| a & x),
        v.iter().fold(0, |a, &x| a | x),
        v.iter().fold(0, |a, &x| a ^ x),
    );
    (0..32)
        .map(|l| {
            let mut o = [0u32; WARP_OUTPUTS];
            o[0] = v[seg(l) + (v[l] % 37) as usize % width];
            o[1] = if l >= seg(l) + 3 { v[l - 3] } else { v[l] };
            o[2] = if l + 5 < seg(l) + width {
                v[l + 5]
            } else {
                v[l]
            };
            o[3] = if (l ^ 6) < seg(l) + width {
                v[l ^ 6]
            } else {
                v[l]
            };
            o[4] = ballot(&|x| x & 1 == 1);
            o[5] = v.iter().any(|x| x % 7 == 0) as u32;
            o[6] = v.iter().all(|&x| x != 0) as u32;
            o[7] = v.iter().fold(0u32, |a, &x| a.wrapping_add(x));
            o[8] = *v.iter().min().unwrap();
            o[9] = *v.iter().max().unwrap();
            o[10] = v.iter().map(|&x| x as i32).min().unwrap() as u32;
            o[11] = v.iter().map(|&x| x as i32).max().unwrap() as u32;
            o[12] = and;
            o[13] = or;
            o[14] = xor;
            o[15] = ballot(&|x| x % 4 == v[l] % 4);
            o
        })
        .collect()
}

/// `selftest_shfl_halves_f32`: per thread, its neighbour's value (`t ^ 1`) and its warp's sum
/// (in f64: the kernel's tree sum differs from it by rounding only).
pub fn shfl_halves_f32(input: &[f32]) -> Vec<(f32, f64)> {
    (0..input.len())
        .map(|t| {
            let warp = &input[t / 32 * 32..(t / 32 * 32 + 32).min(input.len())];
            (input[t ^ 1], warp.iter().map(|&v| v as f64).sum())
        })
        .collect()
}

/// `selftest_syncthreads_i32`: per thread, its block's `__syncthreads_count`, `_and` and `_or`
/// of `pred != 0`.
pub fn syncthreads_i32(pred: &[i32], threads: usize) -> Vec<i32> {
    pred.chunks(threads)
        .flat_map(|blk| {
            let count = blk.iter().filter(|&&v| v != 0).count() as i32;
            let votes = [
                count,
                (count == blk.len() as i32) as i32,
                (count > 0) as i32,
            ];
            std::iter::repeat_n(votes, blk.len()).flatten()
        })
        .collect()
}

/// `selftest_atomics_i32` on counters starting at `[0, i32::MIN, i32::MAX, 0, 0]`: `n` adds,
/// the max of the thread ids, the min of their negatives, the OR of `1 << (t % 32)`, and one win
/// per claimed slot.
pub fn atomics_i32(n: usize, slots: usize) -> [i32; 5] {
    let lanes = (0..n.min(32)).fold(0u32, |m, t| m | 1 << t);
    [
        n as i32,
        n as i32 - 1,
        -(n as i32 - 1),
        lanes as i32,
        slots.min(n) as i32,
    ]
}

/// `selftest_convert_f32`: the bf16 and fp16 bits of each value (round to nearest even) and
/// their values back in f32, interleaved (bf16, fp16).
pub fn convert_f32(input: &[f32]) -> (Vec<u16>, Vec<u16>, Vec<f32>) {
    let bf: Vec<half::bf16> = input.iter().map(|&v| half::bf16::from_f32(v)).collect();
    let hf: Vec<half::f16> = input.iter().map(|&v| half::f16::from_f32(v)).collect();
    let back = bf
        .iter()
        .zip(&hf)
        .flat_map(|(b, h)| [b.to_f32(), h.to_f32()])
        .collect();
    (
        bf.iter().map(|b| b.to_bits()).collect(),
        hf.iter().map(|h| h.to_bits()).collect(),
        back,
    )
}

/// `selftest_dynamic_smem_f32`: each block's values reversed through dynamic shared memory.
pub fn dynamic_smem_f32(input: &[f32], threads: usize) -> Vec<f32> {
    input
        .chunks(threads)
        .flat_map(|blk| blk.iter().rev().copied())
        .collect()
}

/// `selftest_coords_u32`: per thread, in launch order (block x fastest, then y, z; thread x
/// fastest within a block), `threadIdx.xyz`, `blockIdx.xyz` and the linear thread id.
pub fn coords_u32(grid: (u32, u32, u32), block: (u32, u32, u32)) -> Vec<u32> {
    let mut out = Vec::new();
    for bz in 0..grid.2 {
        for by in 0..grid.1 {
            for bx in 0..grid.0 {
                for tz in 0..block.2 {
                    for ty in 0..block.1 {
                        for tx in 0..block.0 {
                            let tid = tx + block.0 * (ty + block.1 * tz);
                            out.extend([tx, ty, tz, bx, by, bz, tid]);
                        }
                    }
                }
            }
        }
    }
    out
}

/// `selftest_mma_f32`: `D = A B + C` for 16 x 16 row-major tiles, in f64, rounded once.
pub fn mma_f32(a: &[f32], b: &[f32], c: &[f32]) -> Vec<f32> {
    (0..256)
        .map(|e| {
            let (r, n) = (e / 16, e % 16);
            let dot: f64 = (0..16)
                .map(|k| a[r * 16 + k] as f64 * b[k * 16 + n] as f64)
                .sum();
            (dot + c[e] as f64) as f32
        })
        .collect()
}
