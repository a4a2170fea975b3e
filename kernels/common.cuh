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
