// Row-wise L2 normalisation, forward and backward.
//
//   y = x / max(||x||, eps)                      (torch.nn.functional.normalize, eps = 1e-12)
//   dx = (dy - x (x.dy) / ||x||^2) / ||x||       where ||x|| > eps
//   dx = dy / eps                                 where ||x|| <= eps (the clamp is constant)
//
// One warp per row, two sweeps (reduce, then write); rows are D long (128 .. 2048), so the
// second sweep reads from L1/L2. Activation gradients are written with `=`.
#include "common.cuh"

extern "C" __global__ void l2norm_fwd_f32(const float* __restrict__ x, float* __restrict__ y,
                                          int rows, int cols, float eps) {
    int warps_per_block = blockDim.x / WARP_SIZE;
    int row = blockIdx.x * warps_per_block + threadIdx.x / WARP_SIZE;
    int lane = threadIdx.x % WARP_SIZE;
    if (row >= rows) return;
    const float* xr = x + (size_t)row * cols;
    float* yr = y + (size_t)row * cols;
    float ss = 0.0f;
    for (int i = lane; i < cols; i += WARP_SIZE) ss += xr[i] * xr[i];
    ss = warp_sum(ss);
    float inv = 1.0f / fmaxf(sqrtf(ss), eps);
    for (int i = lane; i < cols; i += WARP_SIZE) yr[i] = xr[i] * inv;
}

extern "C" __global__ void l2norm_bwd_f32(const float* __restrict__ x, const float* __restrict__ dy,
                                          float* __restrict__ dx, int rows, int cols, float eps) {
    int warps_per_block = blockDim.x / WARP_SIZE;
    int row = blockIdx.x * warps_per_block + threadIdx.x / WARP_SIZE;
    int lane = threadIdx.x % WARP_SIZE;
    if (row >= rows) return;
    const float* xr = x + (size_t)row * cols;
    const float* dyr = dy + (size_t)row * cols;
    float* dxr = dx + (size_t)row * cols;
    float ss = 0.0f, dot = 0.0f;
    for (int i = lane; i < cols; i += WARP_SIZE) {
        ss += xr[i] * xr[i];
        dot += xr[i] * dyr[i];
    }
    ss = warp_sum(ss);
    dot = warp_sum(dot);
    float norm = sqrtf(ss);
    if (norm > eps) {
        float inv = 1.0f / norm;
        float proj = dot / ss;
        for (int i = lane; i < cols; i += WARP_SIZE) dxr[i] = (dyr[i] - xr[i] * proj) * inv;
    } else {
        float inv = 1.0f / eps;
        for (int i = lane; i < cols; i += WARP_SIZE) dxr[i] = dyr[i] * inv;
    }
}
