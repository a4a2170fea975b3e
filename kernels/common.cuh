// Shared device helpers: warp reductions, element loads and stores for every dtype, fast powers.
#pragma once
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <stdint.h>

#define WARP_SIZE 32

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// Kernels are written once over the storage type T and compute in f32: load() widens, store()
// rounds (to nearest even for bf16).
__device__ __forceinline__ float load(float v) { return v; }
__device__ __forceinline__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T store(float v);
template <>
__device__ __forceinline__ float store<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 store<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

// x^p with a fast path for the integer powers GeM uses in practice (p = 3, its gradient p - 1 = 2).
__device__ __forceinline__ float pow_fast_int(float x, float p) {
    if (p == 3.0f) return x * x * x;
    if (p == 2.0f) return x * x;
    if (p == 1.0f) return x;
    return powf(x, p);
}

// The activation fused after BatchNorm or applied alone; codes match the Rust enum `Act`.
enum ActKind { ACT_IDENTITY = 0, ACT_RELU = 1, ACT_RELU6 = 2 };

// Runs the statement with ACT, a compile-time ActKind, equal to `act` (any other code: identity,
// as act_apply takes it). A loop whose act is a constant keeps only its activation's operations:
// with a runtime act, BatchNorm's loops paid every activation's compares and selects for every
// value (batchnorm_bwd_bf16: 290 instructions a vector of 8 values with ReLU, 148 with ACT).
#define DISPATCH_ACT(act, ...)                     \
    do {                                           \
        if ((act) == ACT_RELU) {                   \
            constexpr int ACT = ACT_RELU;          \
            __VA_ARGS__;                           \
        } else if ((act) == ACT_RELU6) {           \
            constexpr int ACT = ACT_RELU6;         \
            __VA_ARGS__;                           \
        } else {                                   \
            constexpr int ACT = ACT_IDENTITY;      \
            __VA_ARGS__;                           \
        }                                          \
    } while (0)

__device__ __forceinline__ float act_apply(int act, float z) {
    if (act == ACT_RELU) return fmaxf(z, 0.0f);
    if (act == ACT_RELU6) return fminf(fmaxf(z, 0.0f), 6.0f);
    return z;
}

// BatchNorm's per-channel affine map, x * scale + shift.
struct BnAffine {
    float scale, shift;
};

// Eval mode's map, from the running statistics. BatchNorm's own kernel and the convolutions that
// apply it in their epilogue (tc_gemm.cuh, BnEvalPost) both take it from here, so that they round
// alike.
__device__ __forceinline__ BnAffine bn_eval_affine(float gamma, float beta, float mean, float var, float eps) {
    const float scale = gamma / sqrtf(var + eps);
    return BnAffine{scale, beta - mean * scale};
}

// x * scale + shift op by op (no FMA contraction), as the CPU twin computes it.
__device__ __forceinline__ float bn_affine_map(float x, BnAffine a) { return __fadd_rn(__fmul_rn(x, a.scale), a.shift); }

// A channel's affine map in training, y = act(x * scale + shift [+ res]), op by op (__fmul_rn /
// __fadd_rn forbid FMA contraction), as the CPU twin computes it: the backward (norm.cu, and the
// data gradients that take its reduce pass, tc_gemm.cuh) recomputes y from x by these same
// operations, bit for bit the forward's.
__device__ __forceinline__ BnAffine bn_affine_of(float gamma, float beta, float mean, float invstd) {
    const float scale = __fmul_rn(gamma, invstd);
    return BnAffine{scale, __fsub_rn(beta, __fmul_rn(mean, scale))};
}

// act' read from the activation's output y: 1 where the activation passed its input.
__device__ __forceinline__ float act_grad(int act, float y) {
    if (act == ACT_RELU) return y > 0.0f ? 1.0f : 0.0f;
    if (act == ACT_RELU6) return (y > 0.0f && y < 6.0f) ? 1.0f : 0.0f;
    return 1.0f;
}

// The forward's y of x without a residual, rounded to T as it was stored.
template <typename T>
__device__ __forceinline__ float bn_recompute_y(float x, BnAffine a, int act) {
    return load(store<T>(act_apply(act, bn_affine_map(x, a))));
}

// Grid-stride loop over [0, n) with a 64-bit index.
#define GRID_STRIDE(i, n) \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (size_t)(n); i += (size_t)gridDim.x * blockDim.x)

// The sum of v over the block, returned to every thread. `slots` is shared memory of one float
// per warp; blockDim.x is a multiple of 32, at most 1024. Safe to call repeatedly with the same
// slots (the first barrier waits until every warp has read the previous call's totals).
__device__ __forceinline__ float block_sum(float v, float* slots) {
    int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, warps = blockDim.x / WARP_SIZE;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) slots[warp] = v;
    __syncthreads();
    return warp_sum(lane < warps ? slots[lane] : 0.0f);
}

// A thread's TM x TN block of a SIMT tile over one BK-deep slice: As and Bs are k-major in
// shared memory (row kk holds one k's values along M or N), the thread's rows start at ty * TM
// and its columns at tx * TN. Shared by the f32 GEMM and the convolutions.
template <int BK, int TM, int TN, int LDA, int LDB>
__device__ __forceinline__ void simt_tile_fma(float (&acc)[TM][TN], const float (*As)[LDA], const float (*Bs)[LDB],
                                              int ty, int tx) {
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
        float a[TM], b[TN];
#pragma unroll
        for (int i = 0; i < TM; ++i) a[i] = As[kk][ty * TM + i];
#pragma unroll
        for (int j = 0; j < TN; ++j) b[j] = Bs[kk][tx * TN + j];
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
}
