// Row-wise L2 normalisation (descriptors) and BatchNorm fused with the activation after it
// (backbones), forward and backward.
//
// L2 normalisation:
//   y = x / max(||x||, eps)                      (torch.nn.functional.normalize, eps = 1e-12)
//   dx = (dy - x (x.dy) / ||x||^2) / ||x||       where ||x|| > eps
//   dx = dy / eps                                 where ||x|| <= eps (the clamp is constant)
//
// One warp per row, two sweeps (reduce, then write); rows are D long (128 .. 2048), so the
// second sweep reads from L1/L2. Activation gradients are written with `=`. Written once over
// the storage type; entry points per dtype at the end.
//
// BatchNorm over NCHW (channel c of image i is the plane i*C + c of HW values), statistics per
// (group, channel) over the group's n/ghost images (see the BatchNorm section below).
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

// ---------------------------------------------------------------------------------------------
// BatchNorm + activation (act: 0 identity, 1 ReLU, 2 ReLU6), f32 and bf16 activations (the
// statistics and parameters are f32 either way).
//
//   train:  mean, var = batch statistics of (group, channel), biased var; invstd = 1/sqrt(var+eps)
//           y = act(gamma * (x - mean) * invstd + beta [+ res])     res: the residual, or null
//           saved: mean and invstd per (group, channel), for backward
//           running stats (group 0 only, as DataParallel keeps replica 0's): r = (1-m) r + m s,
//           with the unbiased variance
//   eval:   y = act(gamma * (x - running_mean) / sqrt(running_var + eps) + beta [+ res])
//   bwd:    dz = dy * act'(y), xh = (x - mean) * invstd, over a group's M values per channel:
//           dres = dz  (the residual's gradient, when dres is not null)
//           dx = gamma * invstd * (dz - mean(dz) - xh * mean(dz * xh))
//           dgamma += sum(dz * xh), dbeta += sum(dz)       (parameter gradients accumulate)
//
// Train forward and backward: one block per channel, looping over the statistics groups in
// order; for each group a reduction sweep (Welford, merged across threads by Chan's formula, so
// the variance stays accurate for activations with a large mean) and a writing sweep, which
// reads the group's planes again. Parameter gradients are added by one thread in group order:
// no atomics, the same result every run. The grid is only C blocks (64 .. 2048), which leaves a
// large GPU partly idle on the early layers; splitting a channel over several blocks is the next
// step once it is measured. Eval forward is a grid-stride elementwise pass. The residual add of a
// ResNet block rides along (one read of res, no separate add and activation passes).

#define BN_THREADS 512

struct Welford {
    float n, mean, m2;
};

__device__ __forceinline__ Welford welford_merge(Welford a, Welford b) {
    float n = a.n + b.n;
    if (n == 0.0f) return a;
    float delta = b.mean - a.mean, wb = b.n / n;
    return Welford{n, a.mean + delta * wb, a.m2 + b.m2 + delta * delta * a.n * wb};
}

// The block's merged statistics, returned to every thread (slots: 3 floats per warp).
__device__ Welford block_welford(Welford w, float* slots) {
    int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, warps = blockDim.x / WARP_SIZE;
#pragma unroll
    for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1) {
        Welford o{__shfl_xor_sync(0xffffffffu, w.n, offset), __shfl_xor_sync(0xffffffffu, w.mean, offset),
                  __shfl_xor_sync(0xffffffffu, w.m2, offset)};
        w = welford_merge(w, o);
    }
    __syncthreads();
    if (lane == 0) {
        slots[3 * warp] = w.n;
        slots[3 * warp + 1] = w.mean;
        slots[3 * warp + 2] = w.m2;
    }
    __syncthreads();
    Welford t{0.0f, 0.0f, 0.0f};
    for (int i = 0; i < warps; i++) t = welford_merge(t, Welford{slots[3 * i], slots[3 * i + 1], slots[3 * i + 2]});
    return t;
}

// Offset of the e-th value (0 <= e < per * hw) of channel c in statistics group g.
__device__ __forceinline__ size_t bn_offset(int g, size_t e, int per, int C, int c, int hw) {
    size_t img = (size_t)g * per + e / hw;
    return (img * C + c) * hw + e % hw;
}

template <typename T>
__device__ void batchnorm_fwd_train(const T* __restrict__ x, const float* __restrict__ gamma,
                                    const float* __restrict__ beta, float* __restrict__ running_mean,
                                    float* __restrict__ running_var, float* __restrict__ save_mean,
                                    float* __restrict__ save_invstd, const T* __restrict__ res, T* __restrict__ y, int n,
                                    int C, int hw, int ghost, float eps, float momentum, int act) {
    __shared__ float slots[3 * BN_THREADS / WARP_SIZE];
    int c = blockIdx.x, per = n / ghost;
    size_t count = (size_t)per * hw;
    for (int g = 0; g < ghost; g++) {
        Welford w{0.0f, 0.0f, 0.0f};
        for (size_t e = threadIdx.x; e < count; e += blockDim.x) {
            float v = load(x[bn_offset(g, e, per, C, c, hw)]);
            w.n += 1.0f;
            float d = v - w.mean;
            w.mean += d / w.n;
            w.m2 += d * (v - w.mean);
        }
        w = block_welford(w, slots);
        float var = w.m2 / w.n, invstd = 1.0f / sqrtf(var + eps);
        if (threadIdx.x == 0) {
            save_mean[g * C + c] = w.mean;
            save_invstd[g * C + c] = invstd;
            if (g == 0) {
                running_mean[c] = (1.0f - momentum) * running_mean[c] + momentum * w.mean;
                running_var[c] = (1.0f - momentum) * running_var[c] + momentum * var * w.n / (w.n - 1.0f);
            }
        }
        float scale = gamma[c] * invstd, shift = beta[c] - w.mean * scale;
        for (size_t e = threadIdx.x; e < count; e += blockDim.x) {
            size_t at = bn_offset(g, e, per, C, c, hw);
            float z = load(x[at]) * scale + shift;
            if (res) z += load(res[at]);
            y[at] = store<T>(act_apply(act, z));
        }
    }
}

template <typename T>
__device__ void batchnorm_fwd_eval(const T* __restrict__ x, const float* __restrict__ gamma,
                                   const float* __restrict__ beta, const float* __restrict__ running_mean,
                                   const float* __restrict__ running_var, const T* __restrict__ res, T* __restrict__ y,
                                   int n, int C, int hw, float eps, int act) {
    GRID_STRIDE(i, (size_t)n * C * hw) {
        int c = (int)((i / hw) % C);
        float scale = gamma[c] / sqrtf(running_var[c] + eps), shift = beta[c] - running_mean[c] * scale;
        float z = load(x[i]) * scale + shift;
        if (res) z += load(res[i]);
        y[i] = store<T>(act_apply(act, z));
    }
}

template <typename T>
__device__ void batchnorm_bwd(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ dy,
                              const float* __restrict__ gamma, const float* __restrict__ save_mean,
                              const float* __restrict__ save_invstd, T* __restrict__ dx, T* __restrict__ dres,
                              float* __restrict__ dgamma, float* __restrict__ dbeta, int n, int C, int hw, int ghost,
                              int act) {
    __shared__ float slots[BN_THREADS / WARP_SIZE];
    int c = blockIdx.x, per = n / ghost;
    size_t count = (size_t)per * hw;
    for (int g = 0; g < ghost; g++) {
        float mean = save_mean[g * C + c], invstd = save_invstd[g * C + c];
        float sdz = 0.0f, sdzx = 0.0f;
        for (size_t e = threadIdx.x; e < count; e += blockDim.x) {
            size_t at = bn_offset(g, e, per, C, c, hw);
            float dz = load(dy[at]) * act_grad(act, load(y[at]));
            sdz += dz;
            sdzx += dz * (load(x[at]) - mean) * invstd;
        }
        sdz = block_sum(sdz, slots);
        sdzx = block_sum(sdzx, slots);
        if (threadIdx.x == 0) {
            dbeta[c] += sdz;
            dgamma[c] += sdzx;
        }
        float mdz = sdz / (float)count, mdzx = sdzx / (float)count, k = gamma[c] * invstd;
        for (size_t e = threadIdx.x; e < count; e += blockDim.x) {
            size_t at = bn_offset(g, e, per, C, c, hw);
            float dz = load(dy[at]) * act_grad(act, load(y[at]));
            dx[at] = store<T>(k * (dz - mdz - (load(x[at]) - mean) * invstd * mdzx));
            if (dres) dres[at] = store<T>(dz);
        }
    }
}

// Frozen statistics (MODEL.BACKBONE.FREEZE_BN): the backward of the eval-mode forward, where the
// running statistics are constants: invstd = 1/sqrt(running_var + eps), xh = (x - running_mean)
// * invstd, dz = dy * act'(y); dx = gamma * invstd * dz, dres = dz, dgamma += sum(dz * xh),
// dbeta += sum(dz). One block per channel (one sweep: dx needs no reduction), sums in f32 added
// by one thread, as the training backward.
template <typename T>
__device__ void batchnorm_bwd_eval(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ dy,
                                   const float* __restrict__ gamma, const float* __restrict__ running_mean,
                                   const float* __restrict__ running_var, T* __restrict__ dx, T* __restrict__ dres,
                                   float* __restrict__ dgamma, float* __restrict__ dbeta, int n, int C, int hw,
                                   float eps, int act) {
    __shared__ float slots[BN_THREADS / WARP_SIZE];
    int c = blockIdx.x;
    size_t count = (size_t)n * hw;
    float mean = running_mean[c], invstd = 1.0f / sqrtf(running_var[c] + eps), k = gamma[c] * invstd;
    float sdz = 0.0f, sdzx = 0.0f;
    for (size_t e = threadIdx.x; e < count; e += blockDim.x) {
        size_t at = bn_offset(0, e, n, C, c, hw);
        float dz = load(dy[at]) * act_grad(act, load(y[at]));
        sdz += dz;
        sdzx += dz * (load(x[at]) - mean) * invstd;
        dx[at] = store<T>(k * dz);
        if (dres) dres[at] = store<T>(dz);
    }
    sdz = block_sum(sdz, slots);
    sdzx = block_sum(sdzx, slots);
    if (threadIdx.x == 0) {
        dbeta[c] += sdz;
        dgamma[c] += sdzx;
    }
}

// Activations (x, y, the residual and their gradients) in T; parameters, running and saved
// statistics and parameter gradients in f32 (master copies) for every T.
#define BATCHNORM_ENTRY_POINTS(T, SUFFIX)                                                                     \
    extern "C" __global__ void batchnorm_fwd_train_##SUFFIX(                                                  \
        const T* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,             \
        float* __restrict__ running_mean, float* __restrict__ running_var, float* __restrict__ save_mean,     \
        float* __restrict__ save_invstd, const T* __restrict__ res, T* __restrict__ y, int n, int C, int hw,  \
        int ghost, float eps, float momentum, int act) {                                                      \
        batchnorm_fwd_train(x, gamma, beta, running_mean, running_var, save_mean, save_invstd, res, y, n, C,  \
                            hw, ghost, eps, momentum, act);                                                   \
    }                                                                                                         \
    extern "C" __global__ void batchnorm_fwd_eval_##SUFFIX(                                                   \
        const T* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,             \
        const float* __restrict__ running_mean, const float* __restrict__ running_var,                        \
        const T* __restrict__ res, T* __restrict__ y, int n, int C, int hw, float eps, int act) {             \
        batchnorm_fwd_eval(x, gamma, beta, running_mean, running_var, res, y, n, C, hw, eps, act);            \
    }                                                                                                         \
    extern "C" __global__ void batchnorm_bwd_##SUFFIX(                                                        \
        const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ dy,                           \
        const float* __restrict__ gamma, const float* __restrict__ save_mean,                                 \
        const float* __restrict__ save_invstd, T* __restrict__ dx, T* __restrict__ dres,                      \
        float* __restrict__ dgamma, float* __restrict__ dbeta, int n, int C, int hw, int ghost, int act) {    \
        batchnorm_bwd(x, y, dy, gamma, save_mean, save_invstd, dx, dres, dgamma, dbeta, n, C, hw, ghost,      \
                      act);                                                                                   \
    }                                                                                                         \
    extern "C" __global__ void batchnorm_bwd_eval_##SUFFIX(                                                   \
        const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ dy,                           \
        const float* __restrict__ gamma, const float* __restrict__ running_mean,                              \
        const float* __restrict__ running_var, T* __restrict__ dx, T* __restrict__ dres,                      \
        float* __restrict__ dgamma, float* __restrict__ dbeta, int n, int C, int hw, float eps, int act) {    \
        batchnorm_bwd_eval(x, y, dy, gamma, running_mean, running_var, dx, dres, dgamma, dbeta, n, C, hw, eps, \
                           act);                                                                              \
    }

BATCHNORM_ENTRY_POINTS(float, f32)
BATCHNORM_ENTRY_POINTS(__nv_bfloat16, bf16)
