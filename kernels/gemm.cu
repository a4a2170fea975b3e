// Row-major GEMM: C[m,n] = alpha * op(A) op(B) + beta * C, with op(A) m x k (A stored k x m when
// trans_a) and op(B) k x n (B stored n x k when trans_b), all dense. beta = 0 never reads C (it
// may hold anything, NaN included), as cuBLAS. The similarity of a query batch with a bank is
// the trans_b case (A = queries m x d, B = bank n x d); layer gradients use the others.
//
// f32: SIMT, a BM x BN tile per block staged through shared memory in BK-deep slices, a TM x TN
// micro-tile of accumulators per thread (128 x 128 / 8 x 8 for large outputs, 64 x 64 / 4 x 4
// when a dimension is small, 32 x 32 / 2 x 2 when even those leave multiprocessors idle), 256
// threads each way.
//
// bf16: tensor cores (mma.m16n8k16 through arch.cuh), f32 accumulation, alpha / beta applied in
// f32 and the result rounded to bf16 once (or stored as f32: matmul_bf16_f32). A 128 x 128 x 32 block tile of 8 warps (2 x 4), each
// warp 64 x 32 = 4 x 4 mma tiles. Both operands are staged k-contiguous in shared memory (A as
// m x k, B as n x k) so that ldmatrix (no .trans) gives the fragments for every transpose case;
// the transpose happens in the global load.
//
// Loads are bounds-checked (zero fill), so every size works; a k-contiguous operand whose row
// start is 16-byte aligned moves 16 bytes per load.
#include "arch.cuh"
#include "common.cuh"
#include "tc_gemm.cuh"

// Element (row, col) of a matrix stored row-major with `ld` columns, or 0 outside rows x cols.
template <typename T>
__device__ __forceinline__ float at_or_zero(const T* p, int row, int col, int rows, int cols, int ld) {
    return (row < rows && col < cols) ? load(p[(size_t)row * ld + col]) : 0.0f;
}

// ---- f32 SIMT ------------------------------------------------------------------------------

template <int BM, int BN, int BK, int TM, int TN>
__device__ void matmul_simt(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C, int m,
                            int n, int k, int trans_a, int trans_b, float alpha, float beta) {
    constexpr int THREADS = (BM / TM) * (BN / TN);
    // k-major tiles (a row of As holds one k's BM values) so the inner loop reads contiguous
    // TM / TN runs; +4 keeps the float4 alignment and spreads the transposed stores over banks.
    __shared__ __align__(16) float As[BK][BM + 4];
    __shared__ __align__(16) float Bs[BK][BN + 4];
    int tid = threadIdx.x;
    int tx = tid % (BN / TN), ty = tid / (BN / TN);
    int bm = blockIdx.y * BM, bn = blockIdx.x * BN;
    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

    for (int k0 = 0; k0 < k; k0 += BK) {
        // Consecutive threads walk the dimension that is contiguous in memory.
        for (int e = tid; e < BM * BK; e += THREADS) {
            int i, kk;
            float v;
            if (trans_a) {
                i = e % BM, kk = e / BM;
                v = at_or_zero(A, k0 + kk, bm + i, k, m, m);
            } else {
                kk = e % BK, i = e / BK;
                v = at_or_zero(A, bm + i, k0 + kk, m, k, k);
            }
            As[kk][i] = v;
        }
        for (int e = tid; e < BN * BK; e += THREADS) {
            int j, kk;
            float v;
            if (trans_b) {
                kk = e % BK, j = e / BK;
                v = at_or_zero(B, bn + j, k0 + kk, n, k, k);
            } else {
                j = e % BN, kk = e / BN;
                v = at_or_zero(B, k0 + kk, bn + j, k, n, n);
            }
            Bs[kk][j] = v;
        }
        __syncthreads();
        simt_tile_fma<BK, TM, TN, BM + 4, BN + 4>(acc, As, Bs, ty, tx);
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        int row = bm + ty * TM + i;
        if (row >= m) continue;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            int col = bn + tx * TN + j;
            if (col >= n) continue;
            float* c = C + (size_t)row * n + col;
            *c = beta == 0.0f ? alpha * acc[i][j] : fmaf(beta, *c, alpha * acc[i][j]);
        }
    }
}

// Large outputs: 128 x 128 tiles; the launcher picks it when m and n are both >= 128.
extern "C" __global__ void __launch_bounds__(256)
    matmul_f32(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C, int m, int n, int k,
               int trans_a, int trans_b, float alpha, float beta) {
    matmul_simt<128, 128, 8, 8, 8>(A, B, C, m, n, k, trans_a, trans_b, alpha, beta);
}

// Small outputs (a batch of queries against a bank, layer gradients of narrow layers).
extern "C" __global__ void __launch_bounds__(256)
    matmul_small_f32(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C, int m, int n,
                     int k, int trans_a, int trans_b, float alpha, float beta) {
    matmul_simt<64, 64, 16, 4, 4>(A, B, C, m, n, k, trans_a, trans_b, alpha, beta);
}

// Outputs too small to give the GPU's multiprocessors a 64 x 64 tile each (a network head's 64 x
// 2048 product: 32 blocks, each 128 k slices long on one multiprocessor): 32 x 32 tiles, four
// times the blocks for a quarter of the work each, at a lower FFMA share.
extern "C" __global__ void __launch_bounds__(256)
    matmul_narrow_f32(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C, int m, int n,
                      int k, int trans_a, int trans_b, float alpha, float beta) {
    matmul_simt<32, 32, 16, 2, 2>(A, B, C, m, n, k, trans_a, trans_b, alpha, beta);
}

// ---- bf16 tensor cores -----------------------------------------------------------------------

namespace {
constexpr int TC_BM = 128, TC_BN = 128, TC_BK = 32;
constexpr int TC_LD = TC_BK + 8;  // 80-byte rows: 16-byte aligned, ldmatrix without bank conflicts

// Stages a rows x TC_BK slice of a k-contiguous view (row r, column kk) into smem[r][kk], from a
// matrix stored either k-contiguous (`k_major`: element (r, kk) at p[r * ld + kk]) or transposed
// (element (r, kk) at p[kk * ld + r]). Out-of-range elements are zero.
template <int ROWS>
__device__ __forceinline__ void stage_bf16(__nv_bfloat16 (*smem)[TC_LD], const __nv_bfloat16* __restrict__ p,
                                           bool k_major, int r0, int k0, int rows, int k, int ld) {
    const int tid = threadIdx.x;
    if (k_major) {
        // 8 consecutive k of one row per step: one 16-byte load when aligned and in range.
        for (int e = tid; e < ROWS * (TC_BK / 8); e += 256) {
            int r = e / (TC_BK / 8), kk = (e % (TC_BK / 8)) * 8;
            int gr = r0 + r, gk = k0 + kk;
            const __nv_bfloat16* src = p + (size_t)gr * ld + gk;
            if (gr < rows && gk + 8 <= k && (reinterpret_cast<uintptr_t>(src) & 15) == 0) {
                *reinterpret_cast<uint4*>(&smem[r][kk]) = *reinterpret_cast<const uint4*>(src);
            } else {
                for (int q = 0; q < 8; ++q)
                    smem[r][kk + q] = (gr < rows && gk + q < k) ? src[q] : __float2bfloat16(0.0f);
            }
        }
    } else {
        // Consecutive threads walk the rows, which are contiguous in memory here.
        for (int e = tid; e < ROWS * TC_BK; e += 256) {
            int r = e % ROWS, kk = e / ROWS;
            int gr = r0 + r, gk = k0 + kk;
            smem[r][kk] = (gr < rows && gk < k) ? p[(size_t)gk * ld + gr] : __float2bfloat16(0.0f);
        }
    }
}
}  // namespace

// TC: the output's type (bf16, or f32 for similarity scores that a top-k ranks).
template <typename TC>
__device__ void matmul_tc(const __nv_bfloat16* __restrict__ A, const __nv_bfloat16* __restrict__ B, TC* __restrict__ C,
                          int m, int n, int k, int trans_a, int trans_b, float alpha, float beta) {
    __shared__ __align__(16) __nv_bfloat16 As[TC_BM][TC_LD];
    __shared__ __align__(16) __nv_bfloat16 Bs[TC_BN][TC_LD];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int wm = (warp / 4) * 64, wn = (warp % 4) * 32;  // this warp's 64 x 32 corner
    const int bm = blockIdx.y * TC_BM, bn = blockIdx.x * TC_BN;
    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.0f;

    for (int k0 = 0; k0 < k; k0 += TC_BK) {
        // A as m x k: stored m x k unless trans_a; B as n x k: stored n x k when trans_b.
        stage_bf16<TC_BM>(As, A, !trans_a, bm, k0, m, k, trans_a ? m : k);
        stage_bf16<TC_BN>(Bs, B, trans_b, bn, k0, n, k, trans_b ? k : n);
        __syncthreads();
        mma_warp_64x32_bf16<TC_LD, TC_BK>(acc, As, Bs, wm, wn);
        __syncthreads();
    }
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                int row = bm + wm + i * 16 + g + (q >= 2 ? 8 : 0);
                int col = bn + wn + j * 8 + 2 * t + (q & 1);
                if (row < m && col < n) {
                    TC* c = C + (size_t)row * n + col;
                    float v = alpha * acc[i][j][q];
                    if (beta != 0.0f) v = fmaf(beta, load(*c), v);
                    *c = store<TC>(v);
                }
            }
}

extern "C" __global__ void __launch_bounds__(256)
    matmul_bf16(const __nv_bfloat16* __restrict__ A, const __nv_bfloat16* __restrict__ B, __nv_bfloat16* __restrict__ C,
                int m, int n, int k, int trans_a, int trans_b, float alpha, float beta) {
    matmul_tc(A, B, C, m, n, k, trans_a, trans_b, alpha, beta);
}

// bf16 inputs, f32 output: the similarity blocks of a bf16 nearest-neighbour search.
extern "C" __global__ void __launch_bounds__(256)
    matmul_bf16_f32(const __nv_bfloat16* __restrict__ A, const __nv_bfloat16* __restrict__ B, float* __restrict__ C, int m,
                    int n, int k, int trans_a, int trans_b, float alpha, float beta) {
    matmul_tc(A, B, C, m, n, k, trans_a, trans_b, alpha, beta);
}

// ---- bf16 tensor cores, pipelined (tc_gemm.cuh) ----------------------------------------------
// For operands whose rows start 16-byte aligned (gemm.rs checks; other shapes take matmul_bf16
// above): 3 cp.async stages, swizzled tiles, ldmatrix.x4 for both operands, 64 x WN warp tiles,
// a 16-byte epilogue. The layout of each operand is a template argument, so the main loop has no
// branch on it.
template <int BM, int BN, int WN, typename TC>
__device__ __forceinline__ void matmul_pipelined(const __nv_bfloat16* __restrict__ A,
                                                 const __nv_bfloat16* __restrict__ B, TC* __restrict__ C, int m,
                                                 int n, int k, int trans_a, int trans_b, float alpha, float beta) {
    extern __shared__ __align__(128) unsigned char tc_smem[];
    constexpr int S = 3;
    if (!trans_a && trans_b) {
        tc::tc_gemm<true, true, BM, BN, 64, WN, S, TC>(A, B, C, m, n, k, 0, 0, 0, 1, 0, 0, alpha, beta, tc_smem);
    } else if (!trans_a) {
        tc::tc_gemm<true, false, BM, BN, 64, WN, S, TC>(A, B, C, m, n, k, 0, 0, 0, 1, 0, 0, alpha, beta, tc_smem);
    } else if (trans_b) {
        tc::tc_gemm<false, true, BM, BN, 64, WN, S, TC>(A, B, C, m, n, k, 0, 0, 0, 1, 0, 0, alpha, beta, tc_smem);
    } else {
        tc::tc_gemm<false, false, BM, BN, 64, WN, S, TC>(A, B, C, m, n, k, 0, 0, 0, 1, 0, 0, alpha, beta, tc_smem);
    }
}

// 128 x 128 block tiles, four 64 x 64 warps.
extern "C" __global__ void __launch_bounds__(128)
    matmul_tc_bf16(const __nv_bfloat16* __restrict__ A, const __nv_bfloat16* __restrict__ B,
                   __nv_bfloat16* __restrict__ C, int m, int n, int k, int trans_a, int trans_b, float alpha,
                   float beta) {
    matmul_pipelined<128, 128, 64>(A, B, C, m, n, k, trans_a, trans_b, alpha, beta);
}

extern "C" __global__ void __launch_bounds__(128)
    matmul_tc_bf16_f32(const __nv_bfloat16* __restrict__ A, const __nv_bfloat16* __restrict__ B,
                       float* __restrict__ C, int m, int n, int k, int trans_a, int trans_b, float alpha, float beta) {
    matmul_pipelined<128, 128, 64>(A, B, C, m, n, k, trans_a, trans_b, alpha, beta);
}

// 64 x 128 block tiles, four 64 x 32 warps: for m <= 64 (a batch of queries against a bank),
// where a 128-row tile would compute half zeros.
extern "C" __global__ void __launch_bounds__(128)
    matmul_tc64_bf16(const __nv_bfloat16* __restrict__ A, const __nv_bfloat16* __restrict__ B,
                     __nv_bfloat16* __restrict__ C, int m, int n, int k, int trans_a, int trans_b, float alpha,
                     float beta) {
    matmul_pipelined<64, 128, 32>(A, B, C, m, n, k, trans_a, trans_b, alpha, beta);
}

extern "C" __global__ void __launch_bounds__(128)
    matmul_tc64_bf16_f32(const __nv_bfloat16* __restrict__ A, const __nv_bfloat16* __restrict__ B,
                         float* __restrict__ C, int m, int n, int k, int trans_a, int trans_b, float alpha,
                         float beta) {
    matmul_pipelined<64, 128, 32>(A, B, C, m, n, k, trans_a, trans_b, alpha, beta);
}
