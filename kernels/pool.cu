// Pooling over NCHW feature maps, forward and backward: GeM (the descriptor) and max pooling
// (ResNet's stem).
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

// Max pooling, k x k windows, symmetric padding that never wins (pad < k), floor mode.
//
//   y[p, oy, ox]      = max of the window; the first maximum in row-major order wins ties, and a
//                       NaN wins and stays (as PyTorch propagates it)
//   argmax[p, oy, ox] = where in its window that maximum is, (iy - y0) k + (ix - x0), one byte
//                       (k <= 16), written by a training forward for the backward
//   dx[p, iy, ix]     = sum of dy over the windows whose maximum is (iy, ix)
//
// Backward gathers instead of scattering: one thread per input element visits the few windows
// that cover it (4 at most for ResNet's 3x3 / stride 2, 2.25 on average) and compares each one's
// argmax byte with its own place in that window, so there are no atomics, the sum's order is fixed
// (windows in row-major order, as the CPU twin adds them) and dx is written once with `=`. It
// reads neither x nor y: recomputing each window's maximum from x cost 9 loads and compares a
// window (~180 instructions), ~400 instructions an input element, many times what DRAM needs for
// the element's bytes.
//
// A block covers a 32 x 8 tile of one map's positions (the outputs forward, the inputs backward)
// and walks the planes, blockIdx.z and then gridDim.z apart: a thread's position and its windows'
// bounds are found once, before the walk, and no index in it needs a division (a flat grid-stride
// index took a 64-bit division per element, and two or three 32-bit ones).
struct MaxPoolShape {
    int planes, h, w, k, stride, pad, oh, ow;
};

// The first maximum of output (oy, ox)'s window: its value and its place in the window,
// (iy - y0) k + (ix - x0).
struct WindowMax {
    float value;
    int place;
};

template <typename T>
__device__ __forceinline__ WindowMax window_max(const T* __restrict__ plane, int oy, int ox, const MaxPoolShape& s) {
    WindowMax best{0.0f, -1};
    int y0 = oy * s.stride - s.pad, x0 = ox * s.stride - s.pad;
    // Not unrolled: the window is k wide at run time, and an unrolled copy per remainder made the
    // f32 kernels' code twice as long for ResNet's 3 x 3 windows.
#pragma unroll 1
    for (int iy = max(y0, 0); iy < min(y0 + s.k, s.h); iy++)
#pragma unroll 1
        for (int ix = max(x0, 0); ix < min(x0 + s.k, s.w); ix++) {
            float v = load(plane[iy * s.w + ix]);
            bool v_nan = v != v, best_nan = best.value != best.value;
            if (best.place < 0 || v > best.value || (v_nan && !best_nan)) {
                best.value = v;
                best.place = (iy - y0) * s.k + ix - x0;
            }
        }
    return best;
}

// `argmax` null: an eval forward, which keeps none. y is the maximum as read (widened and
// rounded back: the same value; a NaN's payload may not survive, as it may not in PyTorch).
template <typename T>
__device__ void maxpool_fwd(const T* __restrict__ x, T* __restrict__ y, unsigned char* __restrict__ argmax,
                            MaxPoolShape s) {
    const int ox = blockIdx.x * blockDim.x + threadIdx.x, oy = blockIdx.y * blockDim.y + threadIdx.y;
    if (ox >= s.ow || oy >= s.oh) return;
    const size_t hw = (size_t)s.h * s.w, ohw = (size_t)s.oh * s.ow;
    for (int p = blockIdx.z; p < s.planes; p += gridDim.z) {
        const WindowMax best = window_max(x + p * hw, oy, ox, s);
        const size_t out = p * ohw + oy * s.ow + ox;
        y[out] = store<T>(best.value);
        if (argmax) argmax[out] = (unsigned char)best.place;
    }
}

template <typename T>
__device__ void maxpool_bwd(const unsigned char* __restrict__ argmax, const T* __restrict__ dy, T* __restrict__ dx,
                            MaxPoolShape s) {
    const int ix = blockIdx.x * blockDim.x + threadIdx.x, iy = blockIdx.y * blockDim.y + threadIdx.y;
    if (ix >= s.w || iy >= s.h) return;
    const size_t hw = (size_t)s.h * s.w, ohw = (size_t)s.oh * s.ow;
    // Windows covering (iy, ix): oy * stride - pad <= iy <= oy * stride - pad + k - 1.
    const int oy0 = max(0, (iy + s.pad - s.k + s.stride) / s.stride), oy1 = min(s.oh - 1, (iy + s.pad) / s.stride);
    const int ox0 = max(0, (ix + s.pad - s.k + s.stride) / s.stride), ox1 = min(s.ow - 1, (ix + s.pad) / s.stride);
    // (iy, ix)'s place in window (oy0, ox0); one window down is stride rows up in it, one right
    // stride columns left.
    const int first = (iy + s.pad - oy0 * s.stride) * s.k + (ix + s.pad - ox0 * s.stride);
    for (int p = blockIdx.z; p < s.planes; p += gridDim.z) {
        const unsigned char* a = argmax + p * ohw;
        const T* g = dy + p * ohw;
        float sum = 0.0f;
        for (int oy = oy0, row = first; oy <= oy1; oy++, row -= s.stride * s.k)
            for (int ox = ox0, place = row; ox <= ox1; ox++, place -= s.stride)
                if (a[oy * s.ow + ox] == place) sum += load(g[oy * s.ow + ox]);
        dx[p * hw + iy * s.w + ix] = store<T>(sum);
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

// Entry points take the shape as scalars (kernel arguments are pointers and scalars).
#define MAXPOOL_ENTRY_POINTS(T, SUFFIX)                                                                        \
    extern "C" __global__ void maxpool_fwd_##SUFFIX(const T* __restrict__ x, T* __restrict__ y,                \
                                                    unsigned char* __restrict__ argmax, int planes, int h,     \
                                                    int w, int k, int stride, int pad, int oh, int ow) {       \
        maxpool_fwd(x, y, argmax, MaxPoolShape{planes, h, w, k, stride, pad, oh, ow});                         \
    }                                                                                                          \
    extern "C" __global__ void maxpool_bwd_##SUFFIX(const unsigned char* __restrict__ argmax,                 \
                                                    const T* __restrict__ dy, T* __restrict__ dx, int planes,  \
                                                    int h, int w, int k, int stride, int pad, int oh, int ow) { \
        maxpool_bwd(argmax, dy, dx, MaxPoolShape{planes, h, w, k, stride, pad, oh, ow});                       \
    }

MAXPOOL_ENTRY_POINTS(float, f32)
MAXPOOL_ENTRY_POINTS(__nv_bfloat16, bf16)
