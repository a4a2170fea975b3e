// Self-tests of the device: small kernels whose results are known by definition, run by
// tests/emu.rs on the emulator and on a real GPU alike, so the emulator's semantics (barriers,
// shuffles, votes, reductions, atomics, conversions, dynamic shared memory, and the tensor-core
// and async-copy wrappers of arch.cuh) are checked against the hardware whenever a GPU is at
// hand. Some are broken on purpose and their failure is asserted only where it is caught: a
// missing barrier and a read before cp.async's wait (wrong results under emu's poison and thread
// order), out-of-bounds writes (the sanitiser build), a barrier mismatch (emu's deadlock report).
#include "arch.cuh"
#include "common.cuh"
#include <cuda_bf16.h>
#include <cuda_fp16.h>

// Every thread stores its input in shared memory and reads its neighbour's; with_barrier = 0
// drops the __syncthreads between the two, which is a race.
extern "C" __global__ void selftest_barrier_f32(const float* __restrict__ in, float* __restrict__ out,
                                                int with_barrier) {
    __shared__ float stage[1024];
    int t = threadIdx.x, n = blockDim.x;
    const float* inb = in + (size_t)blockIdx.x * n;
    stage[t] = inb[t];
    if (with_barrier) __syncthreads();
    out[(size_t)blockIdx.x * n + t] = stage[(t + 1) % n];
}

// Writes out[0 .. n] inclusive: one element past the end.
extern "C" __global__ void selftest_oob_global_f32(float* out, int n) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t <= n) out[t] = (float)t;
}

// A block of 33 threads writes a 32-element shared array: thread 32 writes past its end.
extern "C" __global__ void selftest_oob_shared_f32(float* out) {
    __shared__ float stage[32];
    int t = threadIdx.x;
    stage[t] = (float)t;
    __syncthreads();
    out[t] = stage[t % 32];
}

// Lane 0 waits at __syncthreads while the rest of its warp waits for it in a shuffle: a GPU
// hangs; the emulator reports a deadlock.
extern "C" __global__ void selftest_deadlock_i32(int* out) {
    int v = threadIdx.x;
    if (threadIdx.x % 32 == 0) {
        __syncthreads();
    } else {
        v = __shfl_sync(0xffffffffu, v, 0);
    }
    out[threadIdx.x] = v;
}

// Per lane, SELFTEST_WARP_OUTPUTS results of the warp collectives on in[]: shuffles with
// `width`, votes, reductions and matches. tests/emu.rs recomputes them from the definitions.
#define SELFTEST_WARP_OUTPUTS 16
extern "C" __global__ void selftest_warp_u32(const unsigned int* __restrict__ in, unsigned int* __restrict__ out,
                                             int width) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned int v = in[t];
    unsigned int* o = out + (size_t)t * SELFTEST_WARP_OUTPUTS;
    const unsigned int all = 0xffffffffu;
    o[0] = __shfl_sync(all, v, (int)(v % 37u), width);
    o[1] = __shfl_up_sync(all, v, 3u, width);
    o[2] = __shfl_down_sync(all, v, 5u, width);
    o[3] = __shfl_xor_sync(all, v, 6, width);
    o[4] = __ballot_sync(all, v & 1u);
    o[5] = (unsigned int)__any_sync(all, v % 7u == 0u);
    o[6] = (unsigned int)__all_sync(all, v != 0u);
    o[7] = __reduce_add_sync(all, v);
    o[8] = __reduce_min_sync(all, v);
    o[9] = __reduce_max_sync(all, v);
    o[10] = (unsigned int)__reduce_min_sync(all, (int)v);
    o[11] = (unsigned int)__reduce_max_sync(all, (int)v);
    o[12] = __reduce_and_sync(all, v);
    o[13] = __reduce_or_sync(all, v);
    o[14] = __reduce_xor_sync(all, v);
    o[15] = __match_any_sync(all, v % 4u);
}

// Two halves of each warp shuffle independently with disjoint masks (lane ^ 1 within a half),
// and a float butterfly sum over the whole warp.
extern "C" __global__ void selftest_shfl_halves_f32(const float* __restrict__ in, float* __restrict__ out) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    int lane = threadIdx.x % 32;
    float v = in[t];
    unsigned int half = lane < 16 ? 0x0000ffffu : 0xffff0000u;
    out[2 * t] = __shfl_xor_sync(half, v, 1);
    out[2 * t + 1] = warp_sum(v);
}

// __syncthreads_count / _and / _or over pred[], one result triple per thread.
extern "C" __global__ void selftest_syncthreads_i32(const int* __restrict__ pred, int* __restrict__ out) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    int p = pred[t];
    out[3 * t] = __syncthreads_count(p);
    out[3 * t + 1] = __syncthreads_and(p);
    out[3 * t + 2] = __syncthreads_or(p);
}

// Atomics from every thread of every block: counts, extremes, a bitmask, a float sum and a
// compare-and-swap claim (exactly one thread per slot wins).
extern "C" __global__ void selftest_atomics_i32(int* __restrict__ counters, float* __restrict__ fsum,
                                                const float* __restrict__ vals, int* __restrict__ claims, int n,
                                                int slots) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    atomicAdd(&counters[0], 1);
    atomicMax(&counters[1], t);
    atomicMin(&counters[2], -t);
    atomicOr((unsigned int*)&counters[3], 1u << (t % 32));
    atomicAdd(fsum, vals[t]);
    if (atomicCAS(&claims[t % slots], -1, t) == -1) atomicAdd(&counters[4], 1);
}

// float -> bf16 / fp16 -> float round trips (round to nearest even), with the raw bits.
extern "C" __global__ void selftest_convert_f32(const float* __restrict__ in, unsigned short* __restrict__ bf16_bits,
                                                unsigned short* __restrict__ f16_bits, float* __restrict__ back, int n) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    __nv_bfloat16 b = __float2bfloat16(in[t]);
    __half h = __float2half(in[t]);
    bf16_bits[t] = __bfloat16_as_ushort(b);
    f16_bits[t] = __half_as_ushort(h);
    back[2 * t] = __bfloat162float(b);
    back[2 * t + 1] = __half2float(h);
}

// Dynamic shared memory: each block reverses its slice of in[] through it.
extern "C" __global__ void selftest_dynamic_smem_f32(const float* __restrict__ in, float* __restrict__ out) {
    extern __shared__ float stage[];
    int t = threadIdx.x, n = blockDim.x;
    size_t base = (size_t)blockIdx.x * n;
    stage[t] = in[base + t];
    __syncthreads();
    out[base + t] = stage[n - 1 - t];
}

// Dynamic shared memory past the 48 KiB a kernel gets without opting in (the device layer opts
// in): each block stages its n values, every thread striding over them, then writes them back
// reversed, so each byte of the allocation is written by one thread and read by another.
extern "C" __global__ void selftest_big_smem_f32(const float* __restrict__ in, float* __restrict__ out, int n) {
    extern __shared__ float big[];
    size_t base = (size_t)blockIdx.x * n;
    for (int i = threadIdx.x; i < n; i += blockDim.x) big[i] = in[base + i];
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[base + i] = big[n - 1 - i];
}

// Every thread writes its coordinates: x, y, z, block x, y, z, and the linear thread id.
extern "C" __global__ void selftest_coords_u32(unsigned int* __restrict__ out) {
    unsigned int block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    unsigned int threads = blockDim.x * blockDim.y * blockDim.z;
    unsigned int tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    unsigned int* o = out + ((size_t)block * threads + tid) * 7;
    o[0] = threadIdx.x;
    o[1] = threadIdx.y;
    o[2] = threadIdx.z;
    o[3] = blockIdx.x;
    o[4] = blockIdx.y;
    o[5] = blockIdx.z;
    o[6] = tid;
}

// ---- tensor cores and async copies (arch.cuh) ------------------------------------------------

// D = A B + C for 16x16 b16 A and B (row-major, B as [k][n]) and 16x16 f32 C, D, on one warp as
// two m16n8k16 products (n = 0..7, 8..15). The variants reach the same fragments different ways:
//   0: bf16, each fragment element read from global memory by the PTX ISA's layout formulas
//   1: bf16, tiles staged in shared memory with cp.async, A by ldmatrix.x4, B by ldmatrix.x4.trans
//   2: as 1 on fp16 inputs
//   3: bf16, B transposed into shared memory by the threads, then ldmatrix.x2 per n-half
//   4: as 1 but reading shared memory before cp.async's wait (broken on purpose)
//   5: as 1 with B by ldmatrix.x2.trans per n-half
extern "C" __global__ void selftest_mma_f32(const unsigned short* __restrict__ a, const unsigned short* __restrict__ b,
                                            const float* __restrict__ c, float* __restrict__ d, int variant) {
    __shared__ __align__(16) unsigned short sa[16 * 16];
    __shared__ __align__(16) unsigned short sb[16 * 16];
    int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    uint32_t af[4], bf[2][2];
    if (variant == 0) {
        for (int i = 0; i < 8; i += 2) {
            int row = g + ((i & 2) ? 8 : 0), col = 2 * t + (i >= 4 ? 8 : 0);
            af[i / 2] = a[row * 16 + col] | ((uint32_t)a[row * 16 + col + 1] << 16);
        }
        for (int h = 0; h < 2; ++h)
            for (int i = 0; i < 4; i += 2) {
                int k = 2 * t + (i >= 2 ? 8 : 0), n = 8 * h + g;
                bf[h][i / 2] = b[k * 16 + n] | ((uint32_t)b[(k + 1) * 16 + n] << 16);
            }
    } else {
        // 32 lanes x 16 bytes = one 16x16 b16 tile per matrix.
        cp_async_16(sa + lane * 8, a + lane * 8);
        if (variant == 3) {
            for (int e = lane; e < 256; e += 32) sb[(e % 16) * 16 + e / 16] = b[e];  // sb = B^T, [n][k]
        } else {
            cp_async_16(sb + lane * 8, b + lane * 8);
        }
        cp_async_commit();
        if (variant != 4) cp_async_wait<0>();
        __syncwarp();
        ldmatrix_x4(af, sa + (lane % 16) * 16 + (lane / 16) * 8);
        if (variant == 3) {
            for (int h = 0; h < 2; ++h) ldmatrix_x2(bf[h], sb + (8 * h + lane % 8) * 16 + ((lane / 8) % 2) * 8);
        } else if (variant == 5) {
            for (int h = 0; h < 2; ++h) ldmatrix_x2_trans(bf[h], sb + (lane % 16) * 16 + 8 * h);
        } else {
            // Matrices (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15).
            uint32_t r[4];
            ldmatrix_x4_trans(r, sb + (lane % 16) * 16 + (lane / 16) * 8);
            bf[0][0] = r[0], bf[0][1] = r[1], bf[1][0] = r[2], bf[1][1] = r[3];
        }
        if (variant == 4) cp_async_wait<0>();
    }
    for (int h = 0; h < 2; ++h) {
        float acc[4], out[4];
        for (int i = 0; i < 4; ++i) acc[i] = c[(g + (i >= 2 ? 8 : 0)) * 16 + 8 * h + 2 * t + (i & 1)];
        if (variant == 2) {
            mma_m16n8k16_f16(out, af, bf[h], acc);
        } else {
            mma_m16n8k16_bf16(out, af, bf[h], acc);
        }
        for (int i = 0; i < 4; ++i) d[(g + (i >= 2 ? 8 : 0)) * 16 + 8 * h + 2 * t + (i & 1)] = out[i];
    }
}

// ---- the emulator's instruments (tests/emu.rs) -------------------------------------------------

// One warp, access patterns whose memory counters are known (pattern):
//   0: lane i loads shared word i: conflict-free, one wavefront
//   1: lane i loads shared word 4i: every 8th lane on one bank, a 4-way conflict
//   2: lane i loads in[i]: 128 contiguous bytes, 4 sectors (the ideal)
//   3: lane i loads in[8i]: one 32-byte sector per lane, 8x the ideal (a transposed read)
//   4: ldmatrix.x4 of an 8 x 64 bf16 tile with 128-byte rows: a matrix's 8 rows on the same
//      4 banks, an 8-way conflict
//   5: the same with each row's 16-byte chunks XOR-swizzled by the row: conflict-free
//   6: two 16-byte cp.async per lane from one site, the first zero-filled on odd lanes: the
//      global side is 16 lanes 32 bytes apart (16 sectors for 256 bytes, 2x), then 32 lanes
//      over 512 contiguous bytes (16 sectors, 1x); the shared side 2 x 4 conflict-free phases
// out[lane] keeps the loads alive; for 4 and 5 it is the sum of the four fragments' bits.
extern "C" __global__ void selftest_access_patterns_u32(const unsigned int* __restrict__ in,
                                                        unsigned int* __restrict__ out, int pattern) {
    __shared__ __align__(16) unsigned int words[512];
    const int lane = threadIdx.x;
    // The tile is filled with 16-byte accesses, so a test tells the pattern's 4-byte ones apart.
    for (int i = lane; i < 128; i += 32) st_shared_v4(&words[4 * i], ld_global_v4(in + 4 * i));
    __syncwarp();
    unsigned int v = 0;
    if (pattern == 0) {
        v = words[lane];
    } else if (pattern == 1) {
        v = words[4 * lane];
    } else if (pattern == 2) {
        v = in[lane];
    } else if (pattern == 3) {
        v = in[8 * lane];
    } else if (pattern == 6) {
        // A loop whose trip count the compiler does not know keeps the two copies one site.
        for (int i = 0; i < pattern - 4; ++i)
            cp_async_16_zfill(&words[128 * i + 4 * lane], in + 128 * i + 4 * lane, i == 0 && (lane & 1) ? 0 : 16);
        cp_async_commit();
        cp_async_wait<0>();
        v = words[4 * lane + 1] + words[128 + 4 * lane + 1];
    } else {
        // Row r of the tile is words[32 r .. 32 r + 31] (64 bf16); lane l addresses row l % 8 of
        // matrix l / 8, which is the row's 16-byte chunk l / 8 (swizzled: (l / 8) ^ row).
        const int row = lane % 8, chunk = lane / 8;
        const int at = pattern == 5 ? chunk ^ row : chunk;
        uint32_t r[4];
        ldmatrix_x4(r, &words[32 * row + 4 * at]);
        v = r[0] + r[1] + r[2] + r[3];
    }
    out[lane] = v;
}

// C (32 x 16, f32) = A (32 x k) B (k x 16), bf16, on two warps that share the staged tiles: each
// k step of 16 copies A's 32 x 16 slice (64 x 16 bytes, one cp.async per thread) and B's 16 x 16
// slice (warp 0), then each warp multiplies its 16 rows. with_barrier = 0 drops the barrier that
// keeps the next step's copies from overwriting tiles the other warp still reads: the race of a
// tiled tensor-core loop that the emulator's race checker must report.
extern "C" __global__ void selftest_tiled_mma_bf16(const __nv_bfloat16* __restrict__ a,
                                                   const __nv_bfloat16* __restrict__ b, float* __restrict__ c,
                                                   int k, int with_barrier) {
    constexpr int LD = 24;  // 16 + 8: 48-byte rows, 16-byte aligned
    __shared__ __align__(16) __nv_bfloat16 as[32 * LD];
    __shared__ __align__(16) __nv_bfloat16 bs[16 * LD];
    const int t = threadIdx.x, lane = t % 32, warp = t / 32;
    const int g = lane >> 2, q = lane & 3;
    float acc[2][4] = {};
    for (int k0 = 0; k0 < k; k0 += 16) {
        cp_async_16(&as[(t / 2) * LD + (t % 2) * 8], a + (size_t)(t / 2) * k + k0 + (t % 2) * 8);
        if (warp == 0) cp_async_16(&bs[(t / 2) * LD + (t % 2) * 8], b + (size_t)(k0 + t / 2) * 16 + (t % 2) * 8);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
        uint32_t af[4], bf[4];
        ldmatrix_x4(af, &as[(warp * 16 + lane % 16) * LD + (lane / 16) * 8]);
        // Matrices (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15), transposed.
        ldmatrix_x4_trans(bf, &bs[(lane % 16) * LD + (lane / 16) * 8]);
        const uint32_t b0[2] = {bf[0], bf[1]}, b1[2] = {bf[2], bf[3]};
        mma_m16n8k16_bf16(acc[0], af, b0, acc[0]);
        mma_m16n8k16_bf16(acc[1], af, b1, acc[1]);
        if (with_barrier) __syncthreads();
    }
    for (int h = 0; h < 2; ++h)
        for (int i = 0; i < 4; ++i)
            c[(warp * 16 + g + (i >= 2 ? 8 : 0)) * 16 + 8 * h + 2 * q + (i & 1)] = acc[h][i];
}

// The vector and zero-fill wrappers of arch.cuh on one warp: lane l copies 16 bytes of in[] with
// cp_async_16_zfill taking src_bytes[l] of them (the rest zero), reads them back with
// ld_shared_v4 and stores them with st_global_v4 into out[0 .. 128); then it moves its 16 bytes
// of in[] with ld_global_v4 / st_shared_v4 into out[128 .. 256).
extern "C" __global__ void selftest_vector_u32(const unsigned int* __restrict__ in, const int* __restrict__ src_bytes,
                                               unsigned int* __restrict__ out) {
    __shared__ __align__(16) unsigned int copied[128];
    __shared__ __align__(16) unsigned int moved[128];
    const int lane = threadIdx.x;
    cp_async_16_zfill(&copied[4 * lane], in + 4 * lane, src_bytes[lane]);
    cp_async_commit();
    cp_async_wait<0>();
    st_shared_v4(&moved[4 * lane], ld_global_v4(in + 4 * lane));
    __syncwarp();
    st_global_v4(out + 4 * ((lane + 1) % 32), ld_shared_v4(&copied[4 * ((lane + 1) % 32)]));
    st_global_v4(out + 128 + 4 * ((lane + 3) % 32), ld_shared_v4(&moved[4 * ((lane + 3) % 32)]));
}
