// Row-wise L2 normalisation, forward and backward.
//
//   y = x / max(||x||, eps)                      (torch.nn.functional.normalize, eps = 1e-12)
//   dx = (dy - x (x.dy) / ||x||^2) / ||x||       where ||x|| > eps
//   dx = dy / eps                                 where ||x|| <= eps (the clamp is constant)
//
// One warp per row, two sweeps (reduce, then write); rows are D long (128 .. 2048), so the
// second sweep reads from L1/L2. Activation gradients are written with `=`. Written once over
// the storage type; entry points per dtype at the end.
#include "common.cuh"

template <typename T>
__device__ void l2norm_fwd(const T* __restrict__ x, T* __restrict__ y, int rows, int cols, float eps) {
    int warps_per_block = blockDim.x / WARP_SIZE;
    int row = blockIdx.x * warps_per_block + threadIdx.x / WARP_SIZE;
    int lane = threadIdx.x % WARP_SIZE;
    if (row >= rows) return;
    const T* xr = x + (size_t)row * cols;
    T* yr = y + (size_t)row * cols;
    float ss = 0.0f;
    for (int i = lane; i < cols; i += WARP_SIZE) {
        float v = load(xr[i]);
        ss += v * v;
    }
    ss = warp_sum(ss);
    float inv = 1.0f / fmaxf(sqrtf(ss), eps);
    for (int i = lane; i < cols; i += WARP_SIZE) yr[i] = store<T>(load(xr[i]) * inv);
}

template <typename T>
__device__ void l2norm_bwd(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx, int rows, int cols,
                           float eps) {
    int warps_per_block = blockDim.x / WARP_SIZE;
    int row = blockIdx.x * warps_per_block + threadIdx.x / WARP_SIZE;
    int lane = threadIdx.x % WARP_SIZE;
    if (row >= rows) return;
    const T* xr = x + (size_t)row * cols;
    const T* dyr = dy + (size_t)row * cols;
    T* dxr = dx + (size_t)row * cols;
    float ss = 0.0f, dot = 0.0f;
    for (int i = lane; i < cols; i += WARP_SIZE) {
        float v = load(xr[i]);
        ss += v * v;
        dot += v * load(dyr[i]);
    }
    ss = warp_sum(ss);
    dot = warp_sum(dot);
    float norm = sqrtf(ss);
    if (norm > eps) {
        float inv = 1.0f / norm;
        float proj = dot / ss;
        for (int i = lane; i < cols; i += WARP_SIZE) dxr[i] = store<T>((load(dyr[i]) - load(xr[i]) * proj) * inv);
    } else {
        float inv = 1.0f / eps;
        for (int i = lane; i < cols; i += WARP_SIZE) dxr[i] = store<T>(load(dyr[i]) * inv);
    }
}

extern "C" __global__ void l2norm_fwd_f32(const float* __restrict__ x, float* __restrict__ y, int rows, int cols,
                                          float eps) {
    l2norm_fwd(x, y, rows, cols, eps);
}
extern "C" __global__ void l2norm_bwd_f32(const float* __restrict__ x, const float* __restrict__ dy,
                                          float* __restrict__ dx, int rows, int cols, float eps) {
    l2norm_bwd(x, dy, dx, rows, cols, eps);
}
extern "C" __global__ void l2norm_fwd_bf16(const __nv_bfloat16* __restrict__ x, __nv_bfloat16* __restrict__ y, int rows,
                                           int cols, float eps) {
    l2norm_fwd(x, y, rows, cols, eps);
}
extern "C" __global__ void l2norm_bwd_bf16(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ dy,
                                           __nv_bfloat16* __restrict__ dx, int rows, int cols, float eps) {
    l2norm_bwd(x, dy, dx, rows, cols, eps);
}
