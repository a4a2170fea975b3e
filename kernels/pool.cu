// GeM pooling over NCHW feature maps, forward and backward.
//
//   y[r] = ( mean_{h,w} max(x[r,hw], eps)^p )^(1/p)        r = n*C + c, one row per (n, c)
//   dx[r,hw] = dy[r] * y[r]^(1-p) * max(x,eps)^(p-1) / HW   where x >= eps, else 0
//
// The clamp passes the gradient where x >= eps, as torch.clamp(min=eps) does. Gradients are
// written with `=` (dx is an activation gradient). p is fixed (InsCLR uses p = 3). Written once
// over the storage type; entry points per dtype at the end.
#include "common.cuh"

// One warp per row: rows are HW long (49 for 7x7 maps .. 1024 for 32x32), so a warp covers a
// row in a few coalesced sweeps and the reduction needs no shared memory.
template <typename T>
__device__ void gem_fwd(const T* __restrict__ x, T* __restrict__ y, int rows, int hw, float p, float eps) {
    int warps_per_block = blockDim.x / WARP_SIZE;
    int row = blockIdx.x * warps_per_block + threadIdx.x / WARP_SIZE;
    int lane = threadIdx.x % WARP_SIZE;
    if (row >= rows) return;
    const T* xr = x + (size_t)row * hw;
    float acc = 0.0f;
    for (int i = lane; i < hw; i += WARP_SIZE) acc += pow_fast_int(fmaxf(load(xr[i]), eps), p);
    acc = warp_sum(acc);
    if (lane == 0) y[row] = store<T>(powf(acc / (float)hw, 1.0f / p));
}

// One thread per element; the per-row factor is recomputed per element because the kernel is
// bound by the read of x and the write of dx, not by arithmetic.
template <typename T>
__device__ void gem_bwd(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ dy,
                        T* __restrict__ dx, int rows, int hw, float p, float eps) {
    size_t total = (size_t)rows * hw;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        size_t row = i / hw;
        float xi = load(x[i]);
        float g = 0.0f;
        if (xi >= eps) {
            float coef = load(dy[row]) * powf(load(y[row]), 1.0f - p) / (float)hw;
            g = coef * pow_fast_int(xi, p - 1.0f);
        }
        dx[i] = store<T>(g);
    }
}

extern "C" __global__ void gem_fwd_f32(const float* __restrict__ x, float* __restrict__ y, int rows, int hw, float p,
                                       float eps) {
    gem_fwd(x, y, rows, hw, p, eps);
}
extern "C" __global__ void gem_bwd_f32(const float* __restrict__ x, const float* __restrict__ y,
                                       const float* __restrict__ dy, float* __restrict__ dx, int rows, int hw, float p,
                                       float eps) {
    gem_bwd(x, y, dy, dx, rows, hw, p, eps);
}
extern "C" __global__ void gem_fwd_bf16(const __nv_bfloat16* __restrict__ x, __nv_bfloat16* __restrict__ y, int rows,
                                        int hw, float p, float eps) {
    gem_fwd(x, y, rows, hw, p, eps);
}
extern "C" __global__ void gem_bwd_bf16(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ y,
                                        const __nv_bfloat16* __restrict__ dy, __nv_bfloat16* __restrict__ dx, int rows,
                                        int hw, float p, float eps) {
    gem_bwd(x, y, dy, dx, rows, hw, p, eps);
}
