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
#include "vec.cuh"
#include "nhwc.cuh"

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
// Work split. A (group, channel) pair, "gc" = g * C + c, holds per = n/ghost planes of hw values
// (plane i*C + c of image i). Its values, as per * hw / VEC vectors of VEC consecutive values of
// one plane (VEC divides hw), are cut into `chunks` runs of equal length, one block per (run, pair):
// grid (chunks, ghost * C). One block per channel, as before, left 64..2048 blocks, 0.16-0.65 of
// an H100's wave on most layers; the launcher picks `chunks` so that the grid fills whole waves.
// A warp's lanes take consecutive vectors of a plane: 16-byte (or 8-byte) coalesced accesses.
//
// A reduction over a pair needs every run, so training takes two launches:
//   forward:  batchnorm_fwd_train_stats writes each run's (count, mean, m2) of the values less
//             the pair's first value (Welford within a thread, vector by vector; Chan's merge
//             across threads: the variance stays accurate for activations with a large mean, and
//             the shift keeps the mean's rounding to the spread's scale); batchnorm_fwd_train's
//             blocks merge their pair's partials and write their run of y. After a convolution
//             whose epilogue wrote the statistics (conv.cu's _bn_stats forwards: one partial per
//             image and tile), batchnorm_merge_stats merges them into a few runs per pair, not
//             shifted, and batchnorm_fwd_train alone reads x.
//   backward: batchnorm_bwd_reduce writes each run's (sum dz, sum dz * xh); batchnorm_bwd's
//             blocks add their pair's partials and write their run of dx. The blocks of run 0 in
//             group 0 add every group's sums to dgamma / dbeta, group by group. Without a
//             residual both read x and dy only: y (for act') is recomputed from x by the
//             forward's own operations (BnAffine), one pass over y fewer in each. With one, the
//             reduce pass (x, y, dy) writes dz, the residual's gradient, and the second reads x
//             and dz only: one pass over y and one over dy fewer than reading all three twice.
//             Where y's vectors are 16 bytes, the forward also writes act'(y) a bit a value (a
//             byte a vector: act_mask_of) and the reduce pass reads that in place of y. Where the
//             kernel that writes dy is a 1x1 data gradient (a ResNet block's last BatchNorm, whose
//             dy the next block's conv1 writes), its epilogue does the reduce pass instead
//             (conv.cu's _bn_sums kernels: dz written where dy was, one sum a pixel tile), and
//             batchnorm_merge_sums_f32 merges those for batchnorm_bwd.
// The partials are merged by one warp in a fixed order (lane l takes runs l, l + 32, ... in
// order, then a butterfly), each run by a fixed thread: results depend on the shapes and `chunks`,
// never on the order in which blocks run. So the forward reads the activations twice (from DRAM
// at ResNet's sizes), or once after a convolution that wrote the statistics.
// Eval forward: the second launch alone, with the running statistics. Frozen-statistics
// backward: one pass writing dx and per-run sums, then batchnorm_bwd_params adds them up.

#define BN_THREADS 256

struct Welford {
    float n, mean, m2;
};

__device__ __forceinline__ Welford welford_merge(Welford a, Welford b) {
    float n = a.n + b.n;
    if (n == 0.0f) return a;
    float delta = b.mean - a.mean, wb = b.n / n;
    return Welford{n, a.mean + delta * wb, a.m2 + b.m2 + delta * delta * a.n * wb};
}

// The warp's statistics, read from lane 0 only: in the butterfly each lane merges its pairs in its
// own order, so the other lanes may round differently, and lane 0's order is fixed (deterministic).
__device__ __forceinline__ Welford warp_welford(Welford w) {
#pragma unroll
    for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1) {
        Welford o{__shfl_xor_sync(0xffffffffu, w.n, offset), __shfl_xor_sync(0xffffffffu, w.mean, offset),
                  __shfl_xor_sync(0xffffffffu, w.m2, offset)};
        w = welford_merge(w, o);
    }
    return w;
}

// The block's merged statistics, returned to every thread (slots: 3 floats per warp).
__device__ Welford block_welford(Welford w, float* slots) {
    int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, warps = blockDim.x / WARP_SIZE;
    w = warp_welford(w);
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

// A thread's walk over its block's run: vector v of the pair is vector r of plane q. The index
// advances by the block's size each step without a division (dq planes and dr vectors).
template <int VEC>
struct BnRun {
    int g, c, per, C, hw, hwv;
    int v, end, q, r, dq, dr;

    __device__ __forceinline__ BnRun(int per_, int C_, int hw_, int chunks)
        : per(per_), C(C_), hw(hw_), hwv(hw_ / VEC) {
        g = blockIdx.y / C;
        c = blockIdx.y % C;
        long long nv = (long long)per * hwv, span = (nv + chunks - 1) / chunks;
        long long first = span * blockIdx.x;
        end = (int)min(nv, first + span);
        v = (int)min(nv, first + threadIdx.x);
        q = v / hwv;
        r = v % hwv;
        dq = blockDim.x / hwv;
        dr = blockDim.x % hwv;
    }
    __device__ __forceinline__ bool more() const { return v < end; }
    // The offset of the pair's first value.
    __device__ __forceinline__ size_t first() const { return ((size_t)g * per * C + c) * hw; }
    // The element offset of vector v's first value in the NCHW tensor.
    __device__ __forceinline__ size_t at() const {
        return ((size_t)(g * per + q) * C + c) * hw + (size_t)r * VEC;
    }
    __device__ __forceinline__ void next() {
        v += blockDim.x;
        q += dq;
        r += dr;
        if (r >= hwv) r -= hwv, q++;
    }
};

// Vectors a thread loads before it uses the first, so that enough loads are in flight to cover
// DRAM latency: the statistics pass reads one tensor (2 x BN_UNROLL vectors), the affine pass
// BN_UNROLL of x, or one of x and one of the residual, the backward one of each of its three
// inputs (more kept 84 registers live in bf16: 2 blocks per SM).
#define BN_UNROLL 2
#define BN_UNROLL_BWD 1

// The statistics of the thread's next U vectors less `shift` (all U are there): loaded at once,
// then the sum, the mean and the squared deviations from it in registers.
template <typename T, int VEC, int U>
__device__ __forceinline__ Welford bn_batch(BnRun<VEC>& run, const T* __restrict__ x, float shift) {
    float v[U][VEC];
#pragma unroll
    for (int u = 0; u < U; u++) load_vec(x + run.at(), v[u]), run.next();
    float sum = 0.0f, m2 = 0.0f;
#pragma unroll
    for (int u = 0; u < U; u++)
#pragma unroll
        for (int i = 0; i < VEC; i++) sum += (v[u][i] -= shift);
    const float mean = sum * (1.0f / (U * VEC));
#pragma unroll
    for (int u = 0; u < U; u++)
#pragma unroll
        for (int i = 0; i < VEC; i++) m2 += (v[u][i] - mean) * (v[u][i] - mean);
    return Welford{(float)(U * VEC), mean, m2};
}

// Welford statistics of the pair's values in this block's run, less the pair's first value (so
// that the merges' rounding is relative to the spread, not to a large mean) -> partial[3 * (gc *
// chunks + run)]. A thread takes the 2 x BN_UNROLL vectors it loads at once as one batch (sum,
// mean, squared deviations from it, in registers) and merges the batch into its statistics: one
// division per batch, not per value, so that the pass stays bound by memory (it has 14 issue
// slots per bf16 value at an H200's bandwidth).
template <typename T, int VEC>
__device__ void bn_stats(const T* __restrict__ x, float* __restrict__ partial, int per, int C, int hw, int chunks) {
    __shared__ float slots[3 * BN_THREADS / WARP_SIZE];
    BnRun<VEC> run(per, C, hw, chunks);
    const float shift = load(x[run.first()]);
    Welford w{0.0f, 0.0f, 0.0f};
    // Whole batches while the thread has 2 x BN_UNROLL vectors left, then one vector at a time.
    const int last = run.end - (2 * BN_UNROLL - 1) * (int)blockDim.x;
    while (run.v < last) w = welford_merge(w, bn_batch<T, VEC, 2 * BN_UNROLL>(run, x, shift));
    while (run.more()) w = welford_merge(w, bn_batch<T, VEC, 1>(run, x, shift));
    w = block_welford(w, slots);
    if (threadIdx.x == 0) {
        float* p = partial + 3 * ((size_t)blockIdx.y * chunks + blockIdx.x);
        p[0] = w.n, p[1] = w.mean, p[2] = w.m2;
    }
}

// Pair gc's statistics from its runs' partials, merged by warp 0, handed to every thread through
// `out` (3 floats of shared memory).
__device__ Welford bn_merge_stats(const float* __restrict__ partial, int gc, int chunks, float* out) {
    if (threadIdx.x < WARP_SIZE) {
        const float* p = partial + 3 * (size_t)gc * chunks;
        Welford w{0.0f, 0.0f, 0.0f};
        for (int k = threadIdx.x; k < chunks; k += WARP_SIZE) w = welford_merge(w, Welford{p[3 * k], p[3 * k + 1], p[3 * k + 2]});
        w = warp_welford(w);
        if (threadIdx.x == 0) out[0] = w.n, out[1] = w.mean, out[2] = w.m2;
    }
    __syncthreads();
    return Welford{out[0], out[1], out[2]};
}

// Pair gc's (sum dz, sum dz * xh) from its runs' partials; called by a whole warp, which all get it.
__device__ __forceinline__ float2 bn_merge_sums(const float* __restrict__ partial, int gc, int chunks) {
    const float* p = partial + 2 * (size_t)gc * chunks;
    float a = 0.0f, b = 0.0f;
    for (int k = threadIdx.x % WARP_SIZE; k < chunks; k += WARP_SIZE) a += p[2 * k], b += p[2 * k + 1];
    return make_float2(warp_sum(a), warp_sum(b));
}

// act'(y) of one vector of y as stored, one bit a value (bit i: value i): the byte that the
// backward reads in place of the vector (y's 16 bytes -> 1; a mask is kept only where vectors are
// 16 bytes, so its layout, byte at / VEC, is the same for every launch of a tensor's shape).
template <typename T, int VEC>
__device__ __forceinline__ unsigned char act_mask_of(const float (&y)[VEC], int act) {
    unsigned bits = 0;
#pragma unroll
    for (int i = 0; i < VEC; i++) bits |= (act_grad(act, load(store<T>(y[i]))) != 0.0f ? 1u : 0u) << i;
    return (unsigned char)bits;
}

// y = act(x * scale + shift [+ res]) over this block's run, U vectors of each input in flight;
// with `mask` (not null) also act'(y) a bit a value (act_mask_of).
template <typename T, int VEC, int U>
__device__ __forceinline__ void bn_affine_u(BnRun<VEC> run, const T* __restrict__ x, const T* __restrict__ res,
                                            T* __restrict__ y, unsigned char* __restrict__ mask, float scale,
                                            float shift, int act) {
    while (run.more()) {
        float v[U][VEC], rv[U][VEC];
        size_t at[U];
        bool ok[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            ok[u] = run.more();
            at[u] = run.at();
            if (ok[u]) {
                load_vec(x + at[u], v[u]);
                if (res) load_vec(res + at[u], rv[u]);
                run.next();
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (!ok[u]) continue;
#pragma unroll
            for (int i = 0; i < VEC; i++) {
                float z = bn_affine_map(v[u][i], BnAffine{scale, shift});
                if (res) z += rv[u][i];
                v[u][i] = act_apply(act, z);
            }
            store_vec(y + at[u], v[u]);
            if (mask) mask[at[u] / VEC] = act_mask_of<T, VEC>(v[u], act);
        }
    }
}

// With a residual two inputs are in flight already; one vector of each keeps the bf16 kernel
// within the 64 registers of 4 blocks per SM without a spill (kernels/sass.toml).
template <typename T, int VEC>
__device__ __forceinline__ void bn_affine(BnRun<VEC> run, const T* __restrict__ x, const T* __restrict__ res,
                                          T* __restrict__ y, unsigned char* __restrict__ mask, float scale,
                                          float shift, int act) {
    if (res)
        bn_affine_u<T, VEC, 1>(run, x, res, y, mask, scale, shift, act);
    else
        bn_affine_u<T, VEC, BN_UNROLL>(run, x, nullptr, y, nullptr, scale, shift, act);
}

// Pair gc = (g, c)'s statistics from its `runs` partials (less the pair's first value of x, at
// `first`, when `shifted`), merged by warp 0 through `stat` (3 floats of shared memory; every
// thread of the block calls this); `writer` saves them and, in group 0, moves the running
// statistics. Returns the pair's (mean, 1/sqrt(var + eps)).
template <typename T>
__device__ float2 bn_train_pair(const T* __restrict__ first, float* __restrict__ running_mean,
                                float* __restrict__ running_var, float* __restrict__ save_mean,
                                float* __restrict__ save_invstd, const float* __restrict__ partial, int runs,
                                int shifted, int gc, int g, int c, float eps, float momentum, bool writer,
                                float* stat) {
    Welford w = bn_merge_stats(partial, gc, runs, stat);
    if (shifted) w.mean += load(*first);
    float var = w.m2 / w.n, invstd = 1.0f / sqrtf(var + eps);
    if (writer) {
        save_mean[gc] = w.mean;
        save_invstd[gc] = invstd;
        if (g == 0) {
            running_mean[c] = (1.0f - momentum) * running_mean[c] + momentum * w.mean;
            running_var[c] = (1.0f - momentum) * running_var[c] + momentum * var * w.n / (w.n - 1.0f);
        }
    }
    return make_float2(w.mean, invstd);
}

template <typename T, int VEC>
__device__ void bn_fwd_train(const T* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
                             float* __restrict__ running_mean, float* __restrict__ running_var,
                             float* __restrict__ save_mean, float* __restrict__ save_invstd,
                             const float* __restrict__ partial, int runs, int shifted, const T* __restrict__ res,
                             T* __restrict__ y, unsigned char* __restrict__ mask, int per, int C, int hw, int chunks,
                             float eps, float momentum, int act) {
    __shared__ float stat[3];
    BnRun<VEC> run(per, C, hw, chunks);
    const float2 m = bn_train_pair(x + run.first(), running_mean, running_var, save_mean, save_invstd, partial, runs,
                                   shifted, blockIdx.y, run.g, run.c, eps, momentum,
                                   blockIdx.x == 0 && threadIdx.x == 0, stat);
    const BnAffine a = bn_affine_of(gamma[run.c], beta[run.c], m.x, m.y);
    bn_affine<T, VEC>(run, x, res, y, mask, a.scale, a.shift, act);
}

// The training forward whose y's one consumer reads it channels-last (a channels-last
// convolution: conv.cu's conv2d_nhwc_*), in two launches where batchnorm_fwd_train takes one
// (whose blocks each hold one channel, while a channels-last store needs a tile of channels):
// batchnorm_fwd_train_save (a warp a pair, grid ghost * C) merges each pair's partials as
// batchnorm_fwd_train's blocks do, saves the statistics, moves the running ones and writes the
// pair's affine map (scale, shift); batchnorm_fwd_train_nhwc applies it, y = act(x * scale +
// shift) bit for bit batchnorm_fwd_train's values (the same map, the same operations), through
// nhwc.cuh's tiles (grid: pixel tiles, channel tiles, images). The convolution then reads y as it
// is: the transpose before it, a read and a write of y, is gone. No residual: only ResNet's first
// two BatchNorms of a block feed a convolution alone.
template <typename T>
__device__ void bn_fwd_train_save(const T* __restrict__ x, const float* __restrict__ gamma,
                                  const float* __restrict__ beta, float* __restrict__ running_mean,
                                  float* __restrict__ running_var, float* __restrict__ save_mean,
                                  float* __restrict__ save_invstd, const float* __restrict__ partial, int runs,
                                  int shifted, BnAffine* __restrict__ affine, int per, int C, int hw, float eps,
                                  float momentum) {
    __shared__ float stat[3];
    const int gc = blockIdx.x, g = gc / C, c = gc % C;
    const float2 m = bn_train_pair(x + ((size_t)g * per * C + c) * hw, running_mean, running_var, save_mean,
                                   save_invstd, partial, runs, shifted, gc, g, c, eps, momentum, threadIdx.x == 0,
                                   stat);
    if (threadIdx.x == 0) affine[gc] = bn_affine_of(gamma[c], beta[c], m.x, m.y);
}

// y from x by its channel's map (batchnorm_fwd_train_save's), for nhwc.cuh's tiles.
struct BnApplyMap {
    static constexpr bool COPY = false, PAIRED = false;
    using Channel = BnAffine;
    const Channel* channels;
    int act;
    __device__ __forceinline__ float operator()(const Channel& a, float x) const {
        return act_apply(act, bn_affine_map(x, a));
    }
};

template <typename T, int VEC>
__device__ void bn_fwd_eval(const T* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
                            const float* __restrict__ running_mean, const float* __restrict__ running_var,
                            const T* __restrict__ res, T* __restrict__ y, int n, int C, int hw, int chunks, float eps,
                            int act) {
    BnRun<VEC> run(n, C, hw, chunks);
    int c = run.c;
    const BnAffine a = bn_eval_affine(gamma[c], beta[c], running_mean[c], running_var[c], eps);
    bn_affine<T, VEC>(run, x, res, y, nullptr, a.scale, a.shift, act);
}

// Where a backward pass takes act'(y) from: y recomputed from x (no residual), y read, or the
// forward's mask of it (a residual). One loop per source, chosen once, as the activation is
// (DISPATCH_ACT): a warp's vector of bf16 x and dy, 1 KB, is ~56 cycles of an H200 SM's share of
// DRAM, and the reduce loop that recomputes y with ReLU issues 161 instructions, ~40 cycles (311,
// ~78, with the activation a runtime argument).
enum class ActFrom { recompute, y, mask };
template <ActFrom F>
struct From {};

// The thread's next U vectors of x, of y or its mask byte (as FROM says) and of dy, all loaded
// before any is used; ok[u] is false past the run's end.
template <ActFrom FROM, typename T, int VEC, int U>
__device__ __forceinline__ void bn_load_bwd(BnRun<VEC>& run, const T* __restrict__ x, const T* __restrict__ y,
                                            const unsigned char* __restrict__ mask, const T* __restrict__ dy,
                                            float (&xv)[U][VEC], float (&yv)[U][VEC], unsigned (&mv)[U],
                                            float (&gv)[U][VEC], size_t (&at)[U], bool (&ok)[U]) {
#pragma unroll
    for (int u = 0; u < U; u++) {
        ok[u] = run.more();
        at[u] = run.at();
        if (ok[u]) {
            load_vec(x + at[u], xv[u]);
            if constexpr (FROM == ActFrom::mask) mv[u] = mask[at[u] / VEC];
            if constexpr (FROM == ActFrom::y) load_vec(y + at[u], yv[u]);
            load_vec(dy + at[u], gv[u]);
            run.next();
        }
    }
}

// (sum dz, sum dz * xh) over this block's run, dz = dy * act'(y), xh = (x - mean) * invstd;
// act'(y) from the forward's mask bits, y, or y recomputed from x by `a` (FROM); with `dx`
// (frozen statistics: dx = k * dz, no batch-mean terms) also writes dx, with `dres` dz, on the way.
template <typename T, int VEC, ActFrom FROM>
__device__ float2 bn_bwd_sums(From<FROM>, BnRun<VEC> run, const T* __restrict__ x, const T* __restrict__ y,
                              const unsigned char* __restrict__ mask, const T* __restrict__ dy, float mean,
                              float invstd, BnAffine a, float k, T* __restrict__ dx, T* __restrict__ dres, int act) {
    __shared__ float slots[BN_THREADS / WARP_SIZE];
    float sdz = 0.0f, sdzx = 0.0f;
    while (run.more()) {
        float xv[BN_UNROLL_BWD][VEC], yv[BN_UNROLL_BWD][VEC], gv[BN_UNROLL_BWD][VEC];
        unsigned mv[BN_UNROLL_BWD];
        size_t at[BN_UNROLL_BWD];
        bool ok[BN_UNROLL_BWD];
        bn_load_bwd<FROM>(run, x, y, mask, dy, xv, yv, mv, gv, at, ok);
#pragma unroll
        for (int u = 0; u < BN_UNROLL_BWD; u++) {
            if (!ok[u]) continue;
#pragma unroll
            for (int i = 0; i < VEC; i++) {
                // The bit is act'(y) as act_grad gives it (1 or 0), so dz is the same product.
                float grad;
                if constexpr (FROM == ActFrom::mask)
                    grad = (float)((mv[u] >> i) & 1u);
                else if constexpr (FROM == ActFrom::y)
                    grad = act_grad(act, yv[u][i]);
                else
                    grad = act_grad(act, bn_recompute_y<T>(xv[u][i], a, act));
                float dz = gv[u][i] * grad;
                sdz += dz;
                sdzx += dz * (xv[u][i] - mean) * invstd;
                gv[u][i] = dz;
                xv[u][i] = k * dz;
            }
            if (dx) store_vec(dx + at[u], xv[u]);
            if (dres) store_vec(dres + at[u], gv[u]);
        }
    }
    sdz = block_sum(sdz, slots);
    sdzx = block_sum(sdzx, slots);
    return make_float2(sdz, sdzx);
}

// y null: recomputed from x (a BatchNorm without a residual: its y is act(affine(x)) alone),
// which saves reading it in both backward passes. With a residual (y read, or in its place the
// mask of act'(y) the forward wrote: a bit a value), `dres` gets dz, which is the residual's
// gradient and all the second pass needs of dy and y (it runs with dy = dres, no y and no
// activation: dz passes as it is, exactly, since act' is 0 or 1).
template <typename T, int VEC>
__device__ void bn_bwd_reduce(const T* __restrict__ x, const T* __restrict__ y, const unsigned char* __restrict__ mask,
                              const T* __restrict__ dy,
                              const float* __restrict__ gamma, const float* __restrict__ beta,
                              const float* __restrict__ save_mean, const float* __restrict__ save_invstd,
                              float* __restrict__ partial, T* __restrict__ dres, int per, int C, int hw, int chunks,
                              int act) {
    BnRun<VEC> run(per, C, hw, chunks);
    int gc = blockIdx.y, c = run.c;
    const float mean = save_mean[gc], invstd = save_invstd[gc];
    const BnAffine a = bn_affine_of(gamma[c], beta[c], mean, invstd);
    const auto sums = [&](auto from) {
        return bn_bwd_sums<T, VEC>(from, run, x, y, mask, dy, mean, invstd, a, 0.0f, nullptr, dres, act);
    };
    const float2 s = mask ? sums(From<ActFrom::mask>{}) : y ? sums(From<ActFrom::y>{}) : sums(From<ActFrom::recompute>{});
    if (threadIdx.x == 0) {
        float* p = partial + 2 * ((size_t)gc * chunks + blockIdx.x);
        p[0] = s.x, p[1] = s.y;
    }
}

// A pair's backward map, from its (sum dz, sum dz * xh) and the forward's statistics: y
// recomputed from x by `a`, dz = dy act'(y), dx = k (dz - mdz - (x - mean) invstd mdzx).
struct BnBwdPair {
    BnAffine a;
    float k, mdz, mean, invstd, mdzx;
};

__device__ __forceinline__ BnBwdPair bn_bwd_pair(float2 sums, const float* __restrict__ gamma,
                                                 const float* __restrict__ beta, const float* __restrict__ save_mean,
                                                 const float* __restrict__ save_invstd, int gc, int c, int per,
                                                 int hw) {
    const float count = (float)((long long)per * hw), mean = save_mean[gc], invstd = save_invstd[gc];
    return BnBwdPair{bn_affine_of(gamma[c], beta[c], mean, invstd), gamma[c] * invstd, sums.x / count, mean, invstd,
                     sums.y / count};
}

template <typename T>
__device__ __forceinline__ float bn_bwd_dx(float x, float dy, const BnBwdPair& p, int act) {
    const float dz = dy * act_grad(act, bn_recompute_y<T>(x, p.a, act));
    return p.k * (dz - p.mdz - (x - p.mean) * p.invstd * p.mdzx);
}

// Channel c's parameter gradients += every group's sums, in group order (one warp of one block
// per channel: no atomics, one result).
__device__ __forceinline__ void bn_bwd_add_params(const float* __restrict__ partial, float* __restrict__ dgamma,
                                                  float* __restrict__ dbeta, int c, int C, int ghost, int chunks) {
    for (int g = 0; g < ghost; g++) {
        float2 t = bn_merge_sums(partial, g * C + c, chunks);
        if (threadIdx.x % WARP_SIZE == 0) dbeta[c] += t.x, dgamma[c] += t.y;
    }
}

// The second pass never reads y: act'(y) comes from y recomputed from x (no residual), and after
// a residual the reduce pass wrote dz, which this pass takes as dy with no activation. `partial`
// holds `runs` sums a pair: the reduce pass's `chunks`, or the runs of the data gradient that took
// them in its epilogue (conv.cu's _bn_sums kernels).
template <typename T, int VEC>
__device__ void bn_bwd(const T* __restrict__ x, const T* __restrict__ dy, const float* __restrict__ gamma,
                       const float* __restrict__ beta, const float* __restrict__ save_mean,
                       const float* __restrict__ save_invstd, const float* __restrict__ partial, T* __restrict__ dx,
                       float* __restrict__ dgamma, float* __restrict__ dbeta, int per, int C, int hw, int ghost,
                       int chunks, int runs, int act) {
    __shared__ float sums[2];
    BnRun<VEC> run(per, C, hw, chunks);
    int gc = blockIdx.y, c = run.c;
    if (threadIdx.x < WARP_SIZE) {
        float2 s = bn_merge_sums(partial, gc, runs);
        if (threadIdx.x == 0) sums[0] = s.x, sums[1] = s.y;
        if (blockIdx.x == 0 && run.g == 0) bn_bwd_add_params(partial, dgamma, dbeta, c, C, ghost, runs);
    }
    __syncthreads();
    const BnBwdPair pair = bn_bwd_pair(make_float2(sums[0], sums[1]), gamma, beta, save_mean, save_invstd, gc, c,
                                       per, hw);
    while (run.more()) {
        float xv[BN_UNROLL_BWD][VEC], yv[BN_UNROLL_BWD][VEC], gv[BN_UNROLL_BWD][VEC];
        size_t at[BN_UNROLL_BWD];
        bool ok[BN_UNROLL_BWD];
        unsigned mv[BN_UNROLL_BWD];
        bn_load_bwd<ActFrom::recompute>(run, x, (const T*)nullptr, nullptr, dy, xv, yv, mv, gv, at, ok);
#pragma unroll
        for (int u = 0; u < BN_UNROLL_BWD; u++) {
            if (!ok[u]) continue;
#pragma unroll
            for (int i = 0; i < VEC; i++) xv[u][i] = bn_bwd_dx<T>(xv[u][i], gv[u][i], pair, act);
            store_vec(dx + at[u], xv[u]);
        }
    }
}

// The backward's second pass into a channels-last dx, for the convolution before BatchNorm whose
// backward reads its dy so (conv.cu's conv2d_nhwc_*), in two launches as the forward's:
// batchnorm_bwd_pairs (a warp a pair, grid ghost * C) merges each pair's sums as batchnorm_bwd's
// blocks do, adds the parameter gradients (group 0's warps) and writes the pair's map (BnBwdPair,
// 7 floats); batchnorm_bwd_nhwc applies it to x and dy (after a residual: the dz the reduce pass
// wrote, with no activation, as batchnorm_bwd takes it) through nhwc.cuh's tiles,
// bit for bit batchnorm_bwd's dx, so that the convolution's backward passes read it without the
// transpose of dy they made, a read and a write of it.
__device__ void bn_bwd_pairs(const float* __restrict__ partial, const float* __restrict__ gamma,
                             const float* __restrict__ beta, const float* __restrict__ save_mean,
                             const float* __restrict__ save_invstd, float* __restrict__ dgamma,
                             float* __restrict__ dbeta, BnBwdPair* __restrict__ pairs, int per, int C, int hw,
                             int ghost, int chunks) {
    const int gc = blockIdx.x, g = gc / C, c = gc % C;
    const float2 s = bn_merge_sums(partial, gc, chunks);
    if (g == 0) bn_bwd_add_params(partial, dgamma, dbeta, c, C, ghost, chunks);
    if (threadIdx.x == 0) pairs[gc] = bn_bwd_pair(s, gamma, beta, save_mean, save_invstd, gc, c, per, hw);
}

// dx from x and dy (the second input) by their channel's map (batchnorm_bwd_pairs'), for
// nhwc.cuh's tiles.
template <typename T>
struct BnBwdMap {
    static constexpr bool COPY = false, PAIRED = true;
    using Channel = BnBwdPair;
    const Channel* channels;
    int act;
    __device__ __forceinline__ float operator()(const Channel& p, float x, float dy) const {
        return bn_bwd_dx<T>(x, dy, p, act);
    }
};

// Frozen statistics (MODEL.BACKBONE.FREEZE_BN): the backward of the eval-mode forward, where the
// running statistics are constants: invstd = 1/sqrt(running_var + eps), xh = (x - running_mean)
// * invstd, dz = dy * act'(y); dx = gamma * invstd * dz, dres = dz, dgamma += sum(dz * xh),
// dbeta += sum(dz). dx needs no reduction: one pass writes it and each run's sums, which
// batchnorm_bwd_params adds into dgamma / dbeta.
template <typename T, int VEC>
__device__ void bn_bwd_eval(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ dy,
                            const float* __restrict__ gamma, const float* __restrict__ running_mean,
                            const float* __restrict__ running_var, float* __restrict__ partial, T* __restrict__ dx,
                            T* __restrict__ dres, int n, int C, int hw, int chunks, float eps, int act) {
    BnRun<VEC> run(n, C, hw, chunks);
    int c = run.c;
    float mean = running_mean[c], invstd = 1.0f / sqrtf(running_var[c] + eps), k = gamma[c] * invstd;
    float2 s = bn_bwd_sums<T, VEC>(From<ActFrom::y>{}, run, x, y, nullptr, dy, mean, invstd, BnAffine{0.0f, 0.0f}, k,
                                   dx, dres, act);
    if (threadIdx.x == 0) {
        float* p = partial + 2 * ((size_t)blockIdx.y * chunks + blockIdx.x);
        p[0] = s.x, p[1] = s.y;
    }
}

// A pair's run as the merges below read and write it: the backward's (sum dz, sum dz xh), which
// add; the forward's statistics (count, mean, m2), which merge as Welford's do.
struct RunSums {
    static constexpr int FLOATS = 2;
    float dz, dzx;
    __device__ static RunSums none() { return RunSums{0.0f, 0.0f}; }
    __device__ static RunSums at(const float* p, size_t plane) { return RunSums{p[0], p[plane]}; }
    __device__ RunSums with(RunSums o) const { return RunSums{dz + o.dz, dzx + o.dzx}; }
    __device__ void store(float* out) const { out[0] = dz, out[1] = dzx; }
};

struct RunStats {
    static constexpr int FLOATS = 3;
    Welford w;
    __device__ static RunStats none() { return RunStats{Welford{0.0f, 0.0f, 0.0f}}; }
    __device__ static RunStats at(const float* p, size_t plane) {
        return RunStats{Welford{p[0], p[plane], p[2 * plane]}};
    }
    __device__ RunStats with(RunStats o) const { return RunStats{welford_merge(w, o.w)}; }
    __device__ void store(float* out) const { out[0] = w.n, out[1] = w.mean, out[2] = w.m2; }
};

// A convolution epilogue's `runs` partials of each pair (one per image and pixel tile; run k of
// pair gc's first float at partial[k pairs + gc], its others one and two planes of runs x pairs
// further) merged into `chunks` runs per pair, Run::FLOATS floats each at merged[FLOATS (gc chunks
// + chunk)]. Block (x, y) takes 32 pairs, a lane each, and chunk y's share of their runs: warp w
// merges runs w, w + 8, ... of it in order (32 consecutive floats a load), then warp 0 the eight
// warps' in order. The chunks give the grid enough blocks to cover the GPU (a layer has few pairs
// and many runs).
template <typename Run>
__device__ void merge_runs(const float* __restrict__ partial, float* __restrict__ merged, int pairs, int runs,
                           int chunks) {
    constexpr int WARPS = BN_THREADS / WARP_SIZE;
    __shared__ Run warps[WARPS][WARP_SIZE];
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, gc = blockIdx.x * WARP_SIZE + lane;
    const int span = (runs + chunks - 1) / chunks, first = blockIdx.y * span, last = min(runs, first + span);
    const size_t plane = (size_t)runs * pairs;
    Run t = Run::none();
    if (gc < pairs)
        for (int k = first + warp; k < last; k += WARPS) t = t.with(Run::at(partial + (size_t)k * pairs + gc, plane));
    warps[warp][lane] = t;
    __syncthreads();
    if (warp == 0 && gc < pairs) {
        Run sum = Run::none();
        for (int i = 0; i < WARPS; i++) sum = sum.with(warps[i][lane]);
        sum.store(merged + Run::FLOATS * ((size_t)gc * chunks + blockIdx.y));
    }
}

// The backward's sums as a data gradient's epilogue wrote them (conv.cu's _bn_sums kernels), each
// chunk's as batchnorm_bwd reads the reduce pass's.
extern "C" __global__ void __launch_bounds__(BN_THREADS)
    batchnorm_merge_sums_f32(const float* __restrict__ partial, float* __restrict__ merged, int pairs, int runs,
                             int chunks) {
    merge_runs<RunSums>(partial, merged, pairs, runs, chunks);
}

// Each pair's statistics (count, mean, m2 of its values, not shifted) as a forward's epilogue
// wrote them (tc_gemm.cuh, BnStatsPost), which batchnorm_fwd_train_* then merges as it does its
// own statistics pass's runs.
extern "C" __global__ void __launch_bounds__(BN_THREADS)
    batchnorm_merge_stats_f32(const float* __restrict__ partial, float* __restrict__ merged, int pairs, int runs,
                              int chunks) {
    merge_runs<RunStats>(partial, merged, pairs, runs, chunks);
}

extern "C" __global__ void __launch_bounds__(32)
    batchnorm_bwd_pairs_f32(const float* __restrict__ partial, const float* __restrict__ gamma,
                            const float* __restrict__ beta, const float* __restrict__ save_mean,
                            const float* __restrict__ save_invstd, float* __restrict__ dgamma,
                            float* __restrict__ dbeta, BnBwdPair* __restrict__ pairs, int per, int C, int hw,
                            int ghost, int chunks) {
    bn_bwd_pairs(partial, gamma, beta, save_mean, save_invstd, dgamma, dbeta, pairs, per, C, hw, ghost, chunks);
}

// dbeta[c] += sum dz, dgamma[c] += sum dz * xh of every group of channel c, in group order, from
// the runs' partial sums (2 floats per (pair, run)); one warp per channel.
extern "C" __global__ void batchnorm_bwd_params_f32(const float* __restrict__ partial, float* __restrict__ dgamma,
                                                    float* __restrict__ dbeta, int C, int ghost, int chunks) {
    int c = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (c >= C) return;
    for (int g = 0; g < ghost; g++) {
        float2 t = bn_merge_sums(partial, g * C + c, chunks);
        if (threadIdx.x % WARP_SIZE == 0) dbeta[c] += t.x, dgamma[c] += t.y;
    }
}

// Activations (x, y, the residual and their gradients) in T; parameters, running and saved
// statistics, partial sums and parameter gradients in f32 (master copies) for every T. Every
// launch takes per = n / ghost images per group, `chunks` runs per pair and the vector width
// `vec` (elements) that the launcher found hw and the buffers' alignment allow. At most 64
// registers (4 blocks, 1024 threads per SM): the bf16 affine pass took 66, which left 3.
#define BATCHNORM_ENTRY_POINTS(T, SUFFIX)                                                                        \
    extern "C" __global__ void __launch_bounds__(BN_THREADS, 4) batchnorm_fwd_train_stats_##SUFFIX(const T* __restrict__ x,                      \
                                                                  float* __restrict__ partial, int per, int C,   \
                                                                  int hw, int chunks, int vec) {                 \
        DISPATCH_VEC(T, vec, bn_stats<T, VEC>(x, partial, per, C, hw, chunks));                                  \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(BN_THREADS, 4) batchnorm_fwd_train_##SUFFIX(                                                     \
        const T* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,                \
        float* __restrict__ running_mean, float* __restrict__ running_var, float* __restrict__ save_mean,        \
        float* __restrict__ save_invstd, const float* __restrict__ partial, int runs, int shifted,               \
        const T* __restrict__ res, T* __restrict__ y, unsigned char* __restrict__ mask, int per, int C, int hw,  \
        int chunks, int vec, float eps, float momentum, int act) {                                               \
        DISPATCH_ACT(act, DISPATCH_VEC(T, vec,                                                                   \
                                       bn_fwd_train<T, VEC>(x, gamma, beta, running_mean, running_var,           \
                                                            save_mean, save_invstd, partial, runs, shifted, res, \
                                                            y, mask, per, C, hw, chunks, eps, momentum, ACT)));  \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(32) batchnorm_fwd_train_save_##SUFFIX(                       \
        const T* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,                \
        float* __restrict__ running_mean, float* __restrict__ running_var, float* __restrict__ save_mean,        \
        float* __restrict__ save_invstd, const float* __restrict__ partial, int runs, int shifted,               \
        BnAffine* __restrict__ affine, int per, int C, int hw, float eps, float momentum) {                      \
        bn_fwd_train_save<T>(x, gamma, beta, running_mean, running_var, save_mean, save_invstd, partial, runs,   \
                             shifted, affine, per, C, hw, eps, momentum);                                        \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(256) batchnorm_fwd_train_nhwc_##SUFFIX(                         \
        const T* __restrict__ x, const BnAffine* __restrict__ affine, T* __restrict__ y, int per, int C, int hw, \
        int act) {                                                                                               \
        DISPATCH_ACT(act, nhwc_tile_##SUFFIX(x, y, C, hw, 1, C,                                                  \
                                             BnApplyMap{affine + (size_t)(blockIdx.z / per) * C, ACT}));         \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(BN_THREADS, 4) batchnorm_fwd_eval_##SUFFIX(                                                      \
        const T* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,                \
        const float* __restrict__ running_mean, const float* __restrict__ running_var,                           \
        const T* __restrict__ res, T* __restrict__ y, int n, int C, int hw, int chunks, int vec, float eps,      \
        int act) {                                                                                               \
        DISPATCH_ACT(act, DISPATCH_VEC(T, vec,                                                                   \
                                       bn_fwd_eval<T, VEC>(x, gamma, beta, running_mean, running_var, res, y, n, \
                                                           C, hw, chunks, eps, ACT)));                           \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(BN_THREADS, 4) batchnorm_bwd_reduce_##SUFFIX(                                                    \
        const T* __restrict__ x, const T* __restrict__ y, const unsigned char* __restrict__ mask,                \
        const T* __restrict__ dy, const float* __restrict__ gamma, const float* __restrict__ beta,                \
        const float* __restrict__ save_mean, const float* __restrict__ save_invstd, float* __restrict__ partial, \
        T* __restrict__ dres, int per, int C, int hw, int chunks, int vec, int act) {                            \
        DISPATCH_ACT(act, DISPATCH_VEC(T, vec,                                                                   \
                                       bn_bwd_reduce<T, VEC>(x, y, mask, dy, gamma, beta, save_mean, save_invstd, \
                                                             partial, dres, per, C, hw, chunks, ACT)));          \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(BN_THREADS, 4) batchnorm_bwd_##SUFFIX(                                                           \
        const T* __restrict__ x, const T* __restrict__ dy, const float* __restrict__ gamma,                      \
        const float* __restrict__ beta, const float* __restrict__ save_mean,                                     \
        const float* __restrict__ save_invstd, const float* __restrict__ partial, T* __restrict__ dx,            \
        float* __restrict__ dgamma, float* __restrict__ dbeta, int per, int C, int hw, int ghost, int chunks,    \
        int runs, int vec, int act) {                                                                            \
        DISPATCH_ACT(act, DISPATCH_VEC(T, vec,                                                                   \
                                       bn_bwd<T, VEC>(x, dy, gamma, beta, save_mean, save_invstd, partial, dx,   \
                                                      dgamma, dbeta, per, C, hw, ghost, chunks, runs, ACT)));    \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(256) batchnorm_bwd_nhwc_##SUFFIX(                               \
        const T* __restrict__ x, const T* __restrict__ dy, const BnBwdPair* __restrict__ pairs,                  \
        T* __restrict__ dx, int per, int C, int hw, int act) {                                                   \
        DISPATCH_ACT(act, nhwc_tile_##SUFFIX(x, dx, C, hw, 1, C,                                                 \
                                             BnBwdMap<T>{pairs + (size_t)(blockIdx.z / per) * C, ACT}, dy));     \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(BN_THREADS, 4) batchnorm_bwd_eval_##SUFFIX(                                                      \
        const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ dy,                              \
        const float* __restrict__ gamma, const float* __restrict__ running_mean,                                 \
        const float* __restrict__ running_var, float* __restrict__ partial, T* __restrict__ dx,                  \
        T* __restrict__ dres, int n, int C, int hw, int chunks, int vec, float eps, int act) {                   \
        DISPATCH_ACT(act, DISPATCH_VEC(T, vec,                                                                   \
                                       bn_bwd_eval<T, VEC>(x, y, dy, gamma, running_mean, running_var, partial,  \
                                                           dx, dres, n, C, hw, chunks, eps, ACT)));              \
    }

BATCHNORM_ENTRY_POINTS(float, f32)
BATCHNORM_ENTRY_POINTS(__nv_bfloat16, bf16)
