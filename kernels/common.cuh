// Shared device helpers: warp and block reductions, launch-shape constants.
#pragma once
#include <cuda_runtime.h>
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

// x^p with a fast path for the integer powers GeM uses in practice (p = 3, its gradient p - 1 = 2).
__device__ __forceinline__ float pow_fast_int(float x, float p) {
    if (p == 3.0f) return x * x * x;
    if (p == 2.0f) return x * x;
    if (p == 1.0f) return x;
    return powf(x, p);
}
