// 2-D convolution, NCHW, no bias, dilation 1: forward, data gradient and weight gradient.
//
// Layout: NCHW activations and PyTorch's weight layout (c_out x c_in x kh x kw). The whole
// network (BatchNorm's per-channel planes, GeM's rows, the CPU twins) and the imported torchvision
// and timm weights are NCHW. The f32 kernels and the bf16 element gathers below read and write
// that layout directly; the bf16 channels-last kernels (section "channels-last" further down)
// transpose their operands to NHWC / KRSC in scratch first and still write NCHW (the weight
// gradient: PyTorch's weight order): the first step of issue 26, before the whole bf16 network
// goes channels-last.
//
// Dense convolutions (groups = 1) are implicit GEMMs: the im2col matrix is never stored; each
// tile of it is gathered from the activation as it is staged into shared memory.
//
//   forward   y[img, co, p]    = sum_k W[co, k] X[k, (img, p)]            M = c_out, N = n*oh*ow, K = c_in*kh*kw
//   data grad dx[img, ci, pix] = sum_(co,r,q) W[co, ci, r, q] dY[(co,r,q), (img, pix)]
//                                                                         M = c_in,  N = n*h*w,   K = c_out*kh*kw
//   weight    dw[co, k]       += sum_(img, p) dy[img, co, p] X[(img, p), k]
//                                                                         M = c_out, N = c_in*kh*kw, K = n*oh*ow
//
// with k = (ci*kh + r)*kw + q, X the im2col matrix (x at row oy*stride - pad_top + r, column
// ox*stride - pad_left + q, zero outside) and dY its adjoint: dy[img, co, oy, ox] where
// iy = oy*stride - pad_top + r (exactly divisible), zero otherwise. The data gradient here
// therefore multiplies zeros for stride > 1 (3 of 4 taps at stride 2); the bf16 channels-last
// path splits it by stride phases instead (below). The weight gradient's K is the whole batch's
// output positions while its output is small, so it splits K over gridDim.z into partial sums
// that a second kernel adds in order (no atomics: the same result every run).
//
// f32: a SIMT GEMM, a 64 x 64 tile per block of 256 threads, 4 x 4 accumulators per thread, K
// staged 16 at a time through shared memory, as gemm.cu's small tile. bf16: tensor cores, as
// gemm.cu's bf16 kernel (128 x 128 x 32 tiles, 8 warps of 64 x 32, ldmatrix + mma.m16n8k16, f32
// accumulation), the operands gathered into shared memory by the same ConvGemm as the f32 path.
// The activations' gradients are stored in bf16; the weight gradient's partial sums and the
// weight gradient itself are f32 (master gradients), for both dtypes. TF32 (f32 operands on
// tensor cores, PyTorch's default for f32 convolutions, when the backend allows it): the
// 1x1 and channels-last kernels below, built for f32 too (`_tf32`); this SIMT path then keeps
// the kernels over 8 x 8 and channel counts not in runs of 4. Floors for a ResNet-50
// 3x3 layer at batch 64 (c = 256, 14 x 14): 2 * 64*196 * 256 * 2304 = 14.8 GFLOP, 0.3 ms at
// H100's 50 TFLOP/s of f32 FMA; bytes are a few MB, so every dense shape but the stem's weight
// gradient is compute-bound.
//
// Depthwise convolutions (groups = c_in = c_out, EfficientNet) are memory-bound and get their
// own kernels: forward and data gradient one thread per output / input element (the data
// gradient gathers, no atomics), weight gradient one block per channel.
#include "common.cuh"
#include "arch.cuh"
#include "tc_gemm.cuh"
#include "nhwc.cuh"

struct ConvShape {
    int n, c_in, h, w, c_out, kh, kw, stride, pad_top, pad_left, oh, ow;
};

#define CONV_SHAPE_PARAMS                                                                                      \
    int n, int c_in, int h, int w, int c_out, int kh, int kw, int stride, int pad_top, int pad_left, int oh, \
        int ow
#define CONV_SHAPE ConvShape{n, c_in, h, w, c_out, kh, kw, stride, pad_top, pad_left, oh, ow}

enum ConvMode { CONV_FWD = 0, CONV_BWD_DATA = 1, CONV_BWD_WEIGHT = 2 };

// The input value under kernel tap (r, q) of output position (oy, ox) of image img and channel ci,
// or 0 in the padding (the depthwise kernels).
template <typename T>
__device__ __forceinline__ float x_tap(const T* __restrict__ x, const ConvShape& s, int img, int ci, int oy, int ox,
                                       int r, int q) {
    int iy = oy * s.stride - s.pad_top + r, ix = ox * s.stride - s.pad_left + q;
    if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) return 0.0f;
    return load(x[(((size_t)img * s.c_in + ci) * s.h + iy) * s.w + ix]);
}

// The output gradient that input position (iy, ix) receives through tap (r, q), or 0 when no
// output position reads it through that tap (the depthwise kernels).
template <typename T>
__device__ __forceinline__ float dy_tap(const T* __restrict__ dy, const ConvShape& s, int img, int co, int iy, int ix,
                                        int r, int q) {
    int ty = iy + s.pad_top - r, tx = ix + s.pad_left - q;
    if (ty < 0 || tx < 0 || ty % s.stride != 0 || tx % s.stride != 0) return 0.0f;
    int oy = ty / s.stride, ox = tx / s.stride;
    if (oy >= s.oh || ox >= s.ow) return 0.0f;
    return load(dy[(((size_t)img * s.c_out + co) * s.oh + oy) * s.ow + ox]);
}

// The dense kernels' index arithmetic is done once per block for the tile's columns and once per K
// step for its k values, into small shared tables (ConvIdx), so that staging an element costs
// two table reads, a bounds test and a load, never a division: an output or input position
// (img, y, x) and a kernel tap (channel, r, q) each decompose with three or four integer
// divisions, which cost more than the tile's multiply-adds when done per element (measured on
// an H200: the f32 convolution at half of our own plain GEMM's rate, the bf16 one no faster
// than f32).
struct ConvIdx {
    int a, b, c, d;
};

// A row or column that no bounds test accepts: the table entry of a tile column past N.
constexpr int CONV_OUTSIDE = -(1 << 29);

// The GEMM's operands for each mode: A(m, k) and B(k, col), zero outside M x K and K x N.
template <int MODE, typename T = float>
struct ConvGemm {
    const T* a_src;  // forward, data grad: w; weight grad: dy
    const T* b_src;  // forward, weight grad: x; data grad: dy
    ConvShape s;
    int M, N, K;

    // Output position (img, oy, ox) of the forward (a column of the forward, a k of the weight
    // gradient): {x offset of its window's corner, the corner's row and column (negative in the
    // padding), dy offset of the position in channel 0}.
    __device__ ConvIdx position(int pos) const {
        int ohw = s.oh * s.ow, img = pos / ohw, p = pos % ohw;
        int iy0 = (p / s.ow) * s.stride - s.pad_top, ix0 = (p % s.ow) * s.stride - s.pad_left;
        return {img * s.c_in * s.h * s.w + iy0 * s.w + ix0, iy0, ix0, img * s.c_out * ohw + p};
    }

    // Kernel tap (ci, r, q) (a k of the forward, a column of the weight gradient): {its x offset
    // from a window's corner, r, q}.
    __device__ ConvIdx tap(int k) const {
        int taps = s.kh * s.kw, ci = k / taps, t = k % taps, r = t / s.kw, q = t % s.kw;
        return {(ci * s.h + r) * s.w + q, r, q, 0};
    }

    // The table entry of column `col` of the tile.
    __device__ ConvIdx col_idx(int col) const {
        if (col >= N) return {0, CONV_OUTSIDE, CONV_OUTSIDE, 0};
        if (MODE == CONV_FWD) return position(col);
        if (MODE == CONV_BWD_WEIGHT) return tap(col);
        // Data gradient: input position (img, iy, ix): {its image's dy offset, the output row and
        // column that tap (0, 0) reads it from, before division by the stride}.
        int hw = s.h * s.w, img = col / hw, pix = col % hw;
        return {img * s.c_out * s.oh * s.ow, pix / s.w + s.pad_top, pix % s.w + s.pad_left, 0};
    }

    // The table entry of k (< K).
    __device__ ConvIdx k_idx(int k) const {
        if (MODE == CONV_FWD) return tap(k);
        if (MODE == CONV_BWD_WEIGHT) return position(k);
        // Data gradient: (co, r, q): {weight offset of (co, channel 0, r, q), dy offset of
        // channel co, r, q}.
        int taps = s.kh * s.kw, co = k / taps, t = k % taps;
        return {co * s.c_in * taps + t, co * s.oh * s.ow, t / s.kw, t % s.kw};
    }

    // x under tap `t` of position `p`'s window, or 0 in the padding (or past N).
    __device__ float window(const ConvIdx& p, const ConvIdx& t) const {
        int iy = p.b + t.b, ix = p.c + t.c;
        if ((unsigned)iy >= (unsigned)s.h || (unsigned)ix >= (unsigned)s.w) return 0.0f;
        return load(b_src[(ptrdiff_t)p.a + t.a]);
    }

    __device__ float a(int m, int k, const ConvIdx& kt) const {
        if (m >= M) return 0.0f;
        if (MODE == CONV_FWD) return load(a_src[(size_t)m * K + k]);
        if (MODE == CONV_BWD_DATA) return load(a_src[(size_t)kt.a + (size_t)m * s.kh * s.kw]);
        return load(a_src[(size_t)kt.d + (size_t)m * s.oh * s.ow]);
    }

    __device__ float b(const ConvIdx& kt, const ConvIdx& ct) const {
        if (MODE == CONV_FWD) return window(ct, kt);
        if (MODE == CONV_BWD_WEIGHT) return window(kt, ct);
        // Data gradient: dy[img, co, oy, ox] where iy = oy*stride - pad_top + r (exactly
        // divisible), zero otherwise.
        int ty = ct.b - kt.c, tx = ct.c - kt.d;
        if (ty < 0 || tx < 0) return 0.0f;
        if (s.stride != 1) {
            if (ty % s.stride != 0 || tx % s.stride != 0) return 0.0f;
            ty /= s.stride, tx /= s.stride;
        }
        if (ty >= s.oh || tx >= s.ow) return 0.0f;
        return load(b_src[(size_t)ct.a + kt.b + ty * s.ow + tx]);
    }
};

constexpr int CONV_BM = 64, CONV_BN = 64, CONV_BK = 16, CONV_TM = 4, CONV_TN = 4;
constexpr int CONV_THREADS = (CONV_BM / CONV_TM) * (CONV_BN / CONV_TN);

// Accumulates this thread's CONV_TM x CONV_TN block of the tile (bm, bn) over k in [k_begin,
// k_end), with g's operands gathered into shared memory.
template <int MODE>
__device__ void conv_gemm_tile(const ConvGemm<MODE>& g, int bm, int bn, int k_begin, int k_end,
                               float (&acc)[CONV_TM][CONV_TN]) {
    __shared__ __align__(16) float As[CONV_BK][CONV_BM + 4];
    __shared__ __align__(16) float Bs[CONV_BK][CONV_BN + 4];
    __shared__ ConvIdx cols[CONV_BN];
    __shared__ ConvIdx ks[2][CONV_BK];  // this K step's and the next one's
    int tid = threadIdx.x, tx = tid % (CONV_BN / CONV_TN), ty = tid / (CONV_BN / CONV_TN);
    int k_lim = min(k_end, g.K);
    for (int j = tid; j < CONV_BN; j += CONV_THREADS) cols[j] = g.col_idx(bn + j);
    if (tid < CONV_BK && k_begin + tid < k_lim) ks[0][tid] = g.k_idx(k_begin + tid);
    __syncthreads();
    int buf = 0;
    for (int k0 = k_begin; k0 < k_end; k0 += CONV_BK, buf ^= 1) {
        // A is k-contiguous in every mode; B along the output column, except the weight
        // gradient's, which runs along k (output positions).
        for (int e = tid; e < CONV_BM * CONV_BK; e += CONV_THREADS) {
            int kk = e % CONV_BK, i = e / CONV_BK;
            As[kk][i] = k0 + kk < k_lim ? g.a(bm + i, k0 + kk, ks[buf][kk]) : 0.0f;
        }
        for (int e = tid; e < CONV_BN * CONV_BK; e += CONV_THREADS) {
            int kk, j;
            if (MODE == CONV_BWD_WEIGHT) {
                kk = e % CONV_BK, j = e / CONV_BK;
            } else {
                j = e % CONV_BN, kk = e / CONV_BN;
            }
            Bs[kk][j] = k0 + kk < k_lim ? g.b(ks[buf][kk], cols[j]) : 0.0f;
        }
        // The next step's k table goes to the other buffer, which nobody reads this step.
        if (tid < CONV_BK && k0 + CONV_BK + tid < k_lim) ks[buf ^ 1][tid] = g.k_idx(k0 + CONV_BK + tid);
        __syncthreads();
        simt_tile_fma<CONV_BK, CONV_TM, CONV_TN, CONV_BM + 4, CONV_BN + 4>(acc, As, Bs, ty, tx);
        __syncthreads();
    }
}

// Where the GEMM's element (m, col) goes: NCHW y (forward), NCHW dx (data gradient), or split
// z's partial sums, which conv2d_bwd_weight_reduce_f32 adds into dw (weight gradient). Element
// (m, col) is at base(col) + m * row_stride: one division a column, not one an element.
template <int MODE>
struct ConvOut {
    size_t base;
    size_t row_stride;

    __device__ __forceinline__ ConvOut(const ConvShape& s, int M, int N, int col) {
        if (MODE == CONV_FWD || MODE == CONV_BWD_DATA) {
            const int plane = MODE == CONV_FWD ? s.oh * s.ow : s.h * s.w;
            const int channels = MODE == CONV_FWD ? s.c_out : s.c_in;
            const int img = col / plane;
            base = (size_t)img * channels * plane + (col - img * plane);
            row_stride = plane;
        } else {
            base = (size_t)blockIdx.z * M * N + col;
            row_stride = N;
        }
    }

    __device__ __forceinline__ size_t at(int m) const { return base + (size_t)m * row_stride; }
};

// `post`: what the stores apply (eval-mode BatchNorm in the forward's epilogue, tc_gemm.cuh's
// BnEvalPost), with `at` indexing the residual as y. The block's row maps are computed into shared
// memory before the k loop (whose barriers publish them), where their division and square root
// find free registers: after it, the accumulators' would spill around the slow paths' calls.
template <int MODE, typename Post = tc::NoPost>
__device__ void conv_gemm(const ConvGemm<MODE>& g, float* __restrict__ out, int k_per_split,
                          const Post& post = Post{}) {
    __shared__ float2 maps[Post::ON ? CONV_BM : 1];
    int bm = blockIdx.y * CONV_BM, bn = blockIdx.x * CONV_BN;
    int k_begin = blockIdx.z * k_per_split, k_end = min(g.K, k_begin + k_per_split);
    post.stage(maps, bm, CONV_BM, g.M);
    float acc[CONV_TM][CONV_TN] = {};
    conv_gemm_tile(g, bm, bn, k_begin, k_end, acc);
    int tx = threadIdx.x % (CONV_BN / CONV_TN), ty = threadIdx.x / (CONV_BN / CONV_TN);
#pragma unroll
    for (int j = 0; j < CONV_TN; ++j) {
        int col = bn + tx * CONV_TN + j;
        if (col >= g.N) continue;
        const ConvOut<MODE> to(g.s, g.M, g.N, col);
#pragma unroll
        for (int i = 0; i < CONV_TM; ++i) {
            int m = bm + ty * CONV_TM + i;
            if (m >= g.M) continue;
            const size_t at = to.at(m);
            out[at] = post.element(acc[i][j], maps[Post::ON ? ty * CONV_TM + i : 0], (long long)at);
        }
    }
}

// ---- bf16 on tensor cores --------------------------------------------------------------------

constexpr int CTC_BM = 128, CTC_BN = 128, CTC_BK = 32;
constexpr int CTC_LD = CTC_BK + 8;  // 80-byte rows: 16-byte aligned, ldmatrix without bank conflicts

// The tile (bm, bn) of the GEMM over k in [k_begin, k_end) on tensor cores; OutT is the stored
// type (bf16 activations' gradients and outputs, f32 weight-gradient partials).
template <int MODE, typename OutT>
__device__ void conv_gemm_tc(const ConvGemm<MODE, __nv_bfloat16>& g, OutT* __restrict__ out, int k_per_split) {
    __shared__ __align__(16) __nv_bfloat16 As[CTC_BM][CTC_LD];  // rows m, k contiguous
    __shared__ __align__(16) __nv_bfloat16 Bs[CTC_BN][CTC_LD];  // rows col, k contiguous
    __shared__ ConvIdx cols[CTC_BN];
    __shared__ ConvIdx ks[2][CTC_BK];  // this K step's and the next one's
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int wm = (warp / 4) * 64, wn = (warp % 4) * 32;  // this warp's 64 x 32 corner
    const int bm = blockIdx.y * CTC_BM, bn = blockIdx.x * CTC_BN;
    const int k_begin = blockIdx.z * k_per_split, k_lim = min(g.K, k_begin + k_per_split);
    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.0f;
    for (int j = tid; j < CTC_BN; j += 256) cols[j] = g.col_idx(bn + j);
    if (tid < CTC_BK && k_begin + tid < k_lim) ks[0][tid] = g.k_idx(k_begin + tid);
    __syncthreads();
    int buf = 0;
    for (int k0 = k_begin; k0 < k_lim; k0 += CTC_BK, buf ^= 1) {
        // Consecutive threads walk k for A (k-contiguous in memory in every mode) and, for the
        // weight gradient, for B; the output column otherwise.
        for (int e = tid; e < CTC_BM * CTC_BK; e += 256) {
            int kk = e % CTC_BK, r = e / CTC_BK;
            As[r][kk] = __float2bfloat16(k0 + kk < k_lim ? g.a(bm + r, k0 + kk, ks[buf][kk]) : 0.0f);
        }
        for (int e = tid; e < CTC_BN * CTC_BK; e += 256) {
            int kk, c;
            if (MODE == CONV_BWD_WEIGHT) {
                kk = e % CTC_BK, c = e / CTC_BK;
            } else {
                c = e % CTC_BN, kk = e / CTC_BN;
            }
            Bs[c][kk] = __float2bfloat16(k0 + kk < k_lim ? g.b(ks[buf][kk], cols[c]) : 0.0f);
        }
        if (tid < CTC_BK && k0 + CTC_BK + tid < k_lim) ks[buf ^ 1][tid] = g.k_idx(k0 + CTC_BK + tid);
        __syncthreads();
        mma_warp_64x32_bf16<CTC_LD, CTC_BK>(acc, As, Bs, wm, wn);
        __syncthreads();
    }
    const int gr = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                int m = bm + wm + i * 16 + gr + (q >= 2 ? 8 : 0);
                int col = bn + wn + j * 8 + 2 * t + (q & 1);
                if (m < g.M && col < g.N) out[ConvOut<MODE>(g.s, g.M, g.N, col).at(m)] = store<OutT>(acc[i][j][q]);
            }
}

typedef __nv_bfloat16 bf16_t;

// The forwards followed by eval-mode BatchNorm, its residual and its activation in their
// epilogue (tc_gemm.cuh, BnEvalPost): y = act(bn(conv(x)) [+ res]) with res laid out as y (null:
// none). The convolution's output before BatchNorm, which a training forward keeps for its
// backward, is never stored: an eval forward writes each layer's output once.
#define BN_EVAL_PARAMS(T)                                                                              \
    const float *__restrict__ gamma, const float *__restrict__ beta, const float *__restrict__ mean, \
        const float *__restrict__ var, const T *__restrict__ res, float eps, int act
#define BN_EVAL_POST(T) tc::BnEvalPost<T>{gamma, beta, mean, var, res, eps, act}
// The _bn_stats forwards' trailing arguments: where the epilogue writes training BatchNorm's
// partial statistics of y, the products (blockIdx.z: images, or spans of them in the
// channels-last kernels) per statistics group and the groups (tc_gemm.cuh, BnStatsPost).
#define BN_STATS_PARAMS float *__restrict__ partial, int per, int groups
#define BN_STATS_POST tc::BnStatsPost{{}, partial, per, groups}
// The _bn_sums data gradients' trailing arguments: the gradient their product is added to (laid
// out as dx; null: none, the BatchNorm had no residual), the next BatchNorm's input and act' mask
// (read with res), its gamma and beta (read without: y recomputed), its saved statistics, where
// its backward sums go, the images per statistics group, the groups and the activation
// (tc_gemm.cuh, BnBwdSumsPost); dx gets dz.
#define BN_SUMS_PARAMS(T)                                                                                \
    const T *__restrict__ res, const T *__restrict__ bn_x, const unsigned char *__restrict__ mask,      \
        const float *__restrict__ gamma, const float *__restrict__ beta, const float *__restrict__ save_mean, \
        const float *__restrict__ save_invstd, float *__restrict__ partial, int per, int groups, int act
#define BN_SUMS_POST(T) \
    tc::BnBwdSumsPost<T>{{}, res, bn_x, mask, gamma, beta, save_mean, save_invstd, partial, per, groups, act}

extern "C" __global__ void __launch_bounds__(256)
    conv2d_fwd_bf16(const bf16_t* __restrict__ x, const bf16_t* __restrict__ weight, bf16_t* __restrict__ y,
                    CONV_SHAPE_PARAMS) {
    ConvShape s = CONV_SHAPE;
    ConvGemm<CONV_FWD, bf16_t> g{weight, x, s, c_out, n * oh * ow, c_in * kh * kw};
    conv_gemm_tc(g, y, g.K);
}

extern "C" __global__ void __launch_bounds__(256)
    conv2d_bwd_data_bf16(const bf16_t* __restrict__ dy, const bf16_t* __restrict__ weight, bf16_t* __restrict__ dx,
                         CONV_SHAPE_PARAMS) {
    ConvShape s = CONV_SHAPE;
    ConvGemm<CONV_BWD_DATA, bf16_t> g{weight, dy, s, c_in, n * h * w, c_out * kh * kw};
    conv_gemm_tc(g, dx, g.K);
}

// partial: gridDim.z x c_out x (c_in*kh*kw) f32 sums, as conv2d_bwd_weight_f32's.
extern "C" __global__ void __launch_bounds__(256)
    conv2d_bwd_weight_bf16(const bf16_t* __restrict__ x, const bf16_t* __restrict__ dy, float* __restrict__ partial,
                           int k_per_split, CONV_SHAPE_PARAMS) {
    ConvShape s = CONV_SHAPE;
    ConvGemm<CONV_BWD_WEIGHT, bf16_t> g{dy, x, s, c_out, c_in * kh * kw, n * oh * ow};
    conv_gemm_tc(g, partial, k_per_split);
}

extern "C" __global__ void __launch_bounds__(CONV_THREADS)
    conv2d_fwd_f32(const float* __restrict__ x, const float* __restrict__ weight, float* __restrict__ y, CONV_SHAPE_PARAMS) {
    ConvShape s = CONV_SHAPE;
    ConvGemm<CONV_FWD> g{weight, x, s, c_out, n * oh * ow, c_in * kh * kw};
    conv_gemm(g, y, g.K);
}

// 52 registers: four blocks per SM where conv2d_fwd_f32 (47) has five; held to 48
// (__launch_bounds__(256, 5)) it spills around the maps' slow-path calls.
extern "C" __global__ void __launch_bounds__(CONV_THREADS)
    conv2d_fwd_bn_eval_f32(const float* __restrict__ x, const float* __restrict__ weight, float* __restrict__ y,
                           CONV_SHAPE_PARAMS, BN_EVAL_PARAMS(float)) {
    ConvShape s = CONV_SHAPE;
    ConvGemm<CONV_FWD> g{weight, x, s, c_out, n * oh * ow, c_in * kh * kw};
    conv_gemm(g, y, g.K, BN_EVAL_POST(float));
}

extern "C" __global__ void __launch_bounds__(CONV_THREADS)
    conv2d_bwd_data_f32(const float* __restrict__ dy, const float* __restrict__ weight, float* __restrict__ dx,
                        CONV_SHAPE_PARAMS) {
    ConvShape s = CONV_SHAPE;
    ConvGemm<CONV_BWD_DATA> g{weight, dy, s, c_in, n * h * w, c_out * kh * kw};
    conv_gemm(g, dx, g.K);
}

// partial: gridDim.z x c_out x (c_in*kh*kw) sums over k_per_split output positions each.
extern "C" __global__ void __launch_bounds__(CONV_THREADS)
    conv2d_bwd_weight_f32(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ partial,
                          int k_per_split, CONV_SHAPE_PARAMS) {
    ConvShape s = CONV_SHAPE;
    ConvGemm<CONV_BWD_WEIGHT> g{dy, x, s, c_out, c_in * kh * kw, n * oh * ow};
    conv_gemm(g, partial, k_per_split);
}

// 0 + p[0] + p[stride] + ... + p[(count - 1) stride], added in that order. A counted loop: nvcc
// unrolls it by 16 with the loads ahead of the adds (a strided `z += rows` loop it did not).
__device__ __forceinline__ float sum_in_order(const float* __restrict__ p, size_t stride, int count) {
    float sum = 0.0f;
    for (int z = 0; z < count; ++z) sum += p[(size_t)z * stride];
    return sum;
}

// dw += the splits' partial sums. A block takes 32 consecutive elements with blockDim.x / 32 rows
// of a warp (up to 8): row r sums splits r, r + rows, ... in order, then row 0 adds the rows'
// sums in row order, so the order is fixed by the split and row counts (with no more splits than
// rows, split order). An element a thread, a 64 x 64 weight's 384 splits ran on 16 blocks of the
// whole GPU, each thread through all 384; its rows now each take 48, on 128 blocks.
constexpr int REDUCE_ROWS = 8;
extern "C" __global__ void __launch_bounds__(REDUCE_ROWS * 32)
    conv2d_bwd_weight_reduce_f32(const float* __restrict__ partial, float* __restrict__ dw, int len, int splits) {
    __shared__ float row_sums[REDUCE_ROWS][32];
    const int lane = threadIdx.x % 32, row = threadIdx.x / 32, rows = blockDim.x / 32;
    // The row's parts: row, row + rows, ... below splits.
    const int count = (splits - row + rows - 1) / rows;
    for (long long first = blockIdx.x * 32LL; first < len; first += gridDim.x * 32LL) {
        const long long i = first + lane;
        row_sums[row][lane] = i < len ? sum_in_order(partial + (size_t)row * len + i, (size_t)rows * len, count) : 0.0f;
        __syncthreads();
        if (row == 0 && i < len) {
            float total = row_sums[0][lane];
#pragma unroll
            for (int r = 1; r < REDUCE_ROWS; r++)
                if (r < rows) total += row_sums[r][lane];
            dw[i] += total;
        }
        __syncthreads();
    }
}

// ---- 1x1, stride 1, bf16 and TF32: plain GEMMs on the pipelined mainloop (tc_gemm.cuh) -------
// With no taps and no stride, an NCHW image is a c x hw matrix and each pass is a product the
// mainloop takes as it is, with 16-byte copies straight from the activations:
//   forward   y[imgs]  (c_out x span*hw)  = W (c_out x c_in) x[imgs] (c_in x span*hw)   a batch per span images
//   data grad dx[imgs] (c_in x span*hw)   = W^T dy[imgs] (c_out x span*hw)              a batch per span images
// (x[imgs]: the span's images' c_in x hw matrices side by side, conv1x1_product; TF32: span 1)
//   weight    partial[z] (c_out x c_in) = sum over split z's pixels of dy x^T
// conv.rs takes this path when c_in and hw make 16-byte rows (multiples of 8 in bf16, of 4 in
// f32), so every row of C is 16-byte aligned too and the bf16 epilogue compiles its 16-byte
// stores only (ROWS_ALIGNED; as the weight gradients, whose rows are c_in or k). The TF32 forward
// and data gradient keep the other paths, never taken: compiled without them, ptxas spills 128-288
// bytes in these 254-register kernels, with them none. The weight gradient's split z covers `per` whole images (their pixels as k segments, one
// per image) or, when the batch has fewer images than the GPU wants splits, a `part_len`-pixel
// part of one image (parts > 1); conv2d_bwd_weight_reduce_f32 adds the splits as the other
// paths'. BM = 64 tiles serve the layers whose M (c_out, or c_in for the data gradient) is at
// most 64. The `_tf32` kernels are the f32 mode's: f32 activations and weights, TF32 products,
// f32 accumulation and outputs (PyTorch's default for f32 convolutions).
// Every data gradient here and below takes `beta`: 0 writes dx, 1 adds the gradient (rounded to
// the activation's type first, as a stored one is) onto what dx holds, a residual branch's gradient.
// The forward's and the data gradient's product over `span` images (blockIdx.z): C (m x span*hw)
// = A B with B the images' k x hw matrices side by side (x, or dy), so that a pixel tile runs on
// from one image into the next (an image's last tile is not left part empty: 784 pixels are 6.125
// tiles), and C's rows are an image's channel planes, one image's after another's (ImageCols). A
// is the weight, m x k (A_K) or k x m.
template <bool A_K, int BM, int WN, bool ROWS_ALIGNED, typename T, typename Post>
__device__ __forceinline__ void conv1x1_product(const T* a, const T* b, T* c, int m, int k, int hw, int span,
                                                float beta, const Post& post) {
    extern __shared__ __align__(128) unsigned char tc_smem[];
    constexpr int BN = 128, THREADS = (BM / 64) * (BN / WN) * 32, TILE_K = tc::Elem<T>::BK;
    const int bm = blockIdx.y * BM, bn = blockIdx.x * BN, cols = span * hw;
    const long long b_image = (long long)k * hw, c_image = (long long)m * hw;
    const long long first = (long long)blockIdx.z * span * c_image;
    tc::TileLoader<A_K, BM, THREADS, false, T> a_load;
    a_load.init(a, bm, m, k, A_K ? k : m, 0);
    tc::TileLoader<false, BN, THREADS, false, T> b_load;
    b_load.init_images(b + (long long)blockIdx.z * span * b_image, bn, cols, k, hw, b_image);
    float acc[4][WN / 8][4];
    tc::mainloop<A_K, false, BM, BN, 64, WN, 3>(a_load, b_load, (k + TILE_K - 1) / TILE_K, acc, tc_smem);
    tc::epilogue<BM, BN, 64, WN, 3, T, false, Post, ROWS_ALIGNED>(tc_smem, acc, c + first, bm, bn, m, cols, 1.0f,
                                                                  beta, tc::PhaseMap{}, post.at_image(first),
                                                                  tc::ImageCols::of<BN>(hw, c_image, bn));
}

// bf16 spans images; TF32 takes one product an image (span 1, conv.rs): ImageCols' registers
// beside its f32 epilogue's lengthen its main loops by up to a fifth (715 -> 856 instructions in
// the eval forward's), more than the empty columns of a 28 x 28 map's last tile cost.
template <int BM, int WN, typename T, typename Post = tc::NoPost>
__device__ __forceinline__ void conv1x1_fwd(const T* x, const T* w, T* y, int c_in, int c_out, int hw, int span,
                                            const Post& post = Post{}) {
    if constexpr (sizeof(T) == 2) {
        conv1x1_product<true, BM, WN, true>(w, x, y, c_out, c_in, hw, span, 0.0f, post);
    } else {
        extern __shared__ __align__(128) unsigned char tc_smem[];
        tc::tc_gemm<true, false, BM, 128, 64, WN, 3, T, false, Post, false>(
            w, x, y, c_out, hw, c_in, 0, (long long)c_in * hw, (long long)c_out * hw, 1, 0, 0, 1.0f, 0.0f, tc_smem, 0,
            post);
    }
}

template <int BM, int WN, typename T, typename Post = tc::NoPost>
__device__ __forceinline__ void conv1x1_bwd_data(const T* dy, const T* w, T* dx, int c_in, int c_out, int hw,
                                                 int span, float beta, const Post& post = Post{}) {
    if constexpr (sizeof(T) == 2) {
        conv1x1_product<false, BM, WN, true>(w, dy, dx, c_in, c_out, hw, span, beta, post);
    } else {
        extern __shared__ __align__(128) unsigned char tc_smem[];
        tc::tc_gemm<false, false, BM, 128, 64, WN, 3, T, false, Post, Post::SUMS>(
            w, dy, dx, c_in, hw, c_out, 0, (long long)c_out * hw, (long long)c_in * hw, 1, 0, 0, 1.0f, beta, tc_smem,
            0, post);
    }
}

template <int BM, int WN, typename T>
__device__ __forceinline__ void conv1x1_bwd_weight(const T* x, const T* dy, float* partial, int per, int parts,
                                                   int part_len, int n, int c_in, int c_out, int hw) {
    extern __shared__ __align__(128) unsigned char tc_smem[];
    const int z = blockIdx.z;
    long long first;  // the split's first (image, pixel), as an offset into an image's row
    int images = 1, k = hw;
    if (parts > 1) {
        const int img = z / parts, p0 = (z % parts) * part_len;
        first = p0;
        k = min(part_len, hw - p0);
        dy += (long long)img * c_out * hw;
        x += (long long)img * c_in * hw;
    } else {
        first = 0;
        images = min(per, n - z * per);
        dy += (long long)z * per * c_out * hw;
        x += (long long)z * per * c_in * hw;
    }
    // The split's offsets are applied here, so blockIdx.z offsets nothing more (batch strides 0).
    tc::tc_gemm<true, true, BM, 128, 64, WN, 3, float, true, tc::NoPost, true>(
        dy + first, x + first, partial + (long long)z * c_out * c_in, c_out, c_in, k, 0, 0, 0, images,
        (long long)c_out * hw, (long long)c_in * hw, 1.0f, 0.0f, tc_smem, hw);
}

// The entry points for one input type T, named conv2d_1x1_<op>[_m64]_SUFFIX; the _bn_eval forwards
// take eval-mode BatchNorm in the epilogue (BN_EVAL_PARAMS above), the _bn_stats ones write
// training BatchNorm's partial statistics of y (BN_STATS_PARAMS). The 128-row weight gradient
// has eight 64 x 32 warps: with 64 x 64 ones, the segment walk's registers pushed it into
// spilling. Its partial: gridDim.z x c_out x c_in f32 sums, each over `images_per_split` images
// (parts = 1) or over a part_len-pixel part of one image.
#define CONV1X1_KERNELS(T, SUFFIX)                                                                                   \
    extern "C" __global__ void __launch_bounds__(128)                                                                \
        conv2d_1x1_fwd_##SUFFIX(const T* __restrict__ x, const T* __restrict__ weight, T* __restrict__ y, int c_in,  \
                                int c_out, int hw, int span) {                                                       \
        conv1x1_fwd<128, 64>(x, weight, y, c_in, c_out, hw, span);                                                   \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(128)                                                                \
        conv2d_1x1_fwd_m64_##SUFFIX(const T* __restrict__ x, const T* __restrict__ weight, T* __restrict__ y,        \
                                    int c_in, int c_out, int hw, int span) {                                         \
        conv1x1_fwd<64, 32>(x, weight, y, c_in, c_out, hw, span);                                                    \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(128)                                                                \
        conv2d_1x1_fwd_bn_eval_##SUFFIX(const T* __restrict__ x, const T* __restrict__ weight, T* __restrict__ y,    \
                                        int c_in, int c_out, int hw, int span, BN_EVAL_PARAMS(T)) {                  \
        conv1x1_fwd<128, 64>(x, weight, y, c_in, c_out, hw, span, BN_EVAL_POST(T));                                  \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(128)                                                                \
        conv2d_1x1_fwd_bn_eval_m64_##SUFFIX(const T* __restrict__ x, const T* __restrict__ weight,                   \
                                            T* __restrict__ y, int c_in, int c_out, int hw, int span,                \
                                            BN_EVAL_PARAMS(T)) {                                                     \
        conv1x1_fwd<64, 32>(x, weight, y, c_in, c_out, hw, span, BN_EVAL_POST(T));                                   \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(128)                                                                \
        conv2d_1x1_fwd_bn_stats_##SUFFIX(const T* __restrict__ x, const T* __restrict__ weight, T* __restrict__ y,   \
                                         int c_in, int c_out, int hw, int span, BN_STATS_PARAMS) {                   \
        conv1x1_fwd<128, 64>(x, weight, y, c_in, c_out, hw, span, BN_STATS_POST);                                    \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(128)                                                                \
        conv2d_1x1_fwd_bn_stats_m64_##SUFFIX(const T* __restrict__ x, const T* __restrict__ weight,                  \
                                             T* __restrict__ y, int c_in, int c_out, int hw, int span,               \
                                             BN_STATS_PARAMS) {                                                      \
        conv1x1_fwd<64, 32>(x, weight, y, c_in, c_out, hw, span, BN_STATS_POST);                                     \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(128)                                                                \
        conv2d_1x1_bwd_data_##SUFFIX(const T* __restrict__ dy, const T* __restrict__ weight, T* __restrict__ dx,     \
                                     int c_in, int c_out, int hw, int span, float beta) {                            \
        conv1x1_bwd_data<128, 64>(dy, weight, dx, c_in, c_out, hw, span, beta);                                      \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(128)                                                                \
        conv2d_1x1_bwd_data_m64_##SUFFIX(const T* __restrict__ dy, const T* __restrict__ weight,                     \
                                         T* __restrict__ dx, int c_in, int c_out, int hw, int span, float beta) {    \
        conv1x1_bwd_data<64, 32>(dy, weight, dx, c_in, c_out, hw, span, beta);                                       \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(128)                                                                \
        conv2d_1x1_bwd_data_bn_sums_##SUFFIX(const T* __restrict__ dy, const T* __restrict__ weight,                 \
                                             T* __restrict__ dx, int c_in, int c_out, int hw, int span,              \
                                             BN_SUMS_PARAMS(T)) {                                                    \
        conv1x1_bwd_data<128, 64>(dy, weight, dx, c_in, c_out, hw, span, 0.0f, BN_SUMS_POST(T));                     \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(128)                                                                \
        conv2d_1x1_bwd_data_bn_sums_m64_##SUFFIX(const T* __restrict__ dy, const T* __restrict__ weight,             \
                                                 T* __restrict__ dx, int c_in, int c_out, int hw, int span,          \
                                                 BN_SUMS_PARAMS(T)) {                                                \
        conv1x1_bwd_data<64, 32>(dy, weight, dx, c_in, c_out, hw, span, 0.0f, BN_SUMS_POST(T));                      \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(256)                                                                \
        conv2d_1x1_bwd_weight_##SUFFIX(const T* __restrict__ x, const T* __restrict__ dy,                            \
                                       float* __restrict__ partial, int images_per_split, int parts, int part_len,   \
                                       int n, int c_in, int c_out, int hw) {                                         \
        conv1x1_bwd_weight<128, 32>(x, dy, partial, images_per_split, parts, part_len, n, c_in, c_out, hw);          \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(128)                                                                \
        conv2d_1x1_bwd_weight_m64_##SUFFIX(const T* __restrict__ x, const T* __restrict__ dy,                        \
                                           float* __restrict__ partial, int images_per_split, int parts,             \
                                           int part_len, int n, int c_in, int c_out, int hw) {                       \
        conv1x1_bwd_weight<64, 32>(x, dy, partial, images_per_split, parts, part_len, n, c_in, c_out, hw);           \
    }

CONV1X1_KERNELS(bf16_t, bf16)
// The TF32 forward's 64 x 64 warps end the main loop at 254 registers; its f32 output is staged
// in two passes of 64 rows, and ptxas keeps the second pass's accumulators on the stack through
// the first (sass.toml checks that no spill is in the main loop). Eight 64 x 32 warps spill
// nothing but give up a fifth of the loop's tensor share (26% -> 21%).
// allow-spill: conv2d_1x1_fwd_tf32 23 register pairs around the epilogue's first pass, none in the main loop
CONV1X1_KERNELS(float, tf32)

// ---- channels-last (NHWC) implicit GEMM, bf16: tc_gemm.cuh's mainloop with ConvGather -------
// The network stays NCHW; conv.rs transposes around the layer into scratch (conv2d_to_nhwc_bf16
// below) and then runs one implicit GEMM per `span` images (blockIdx.z), writing NCHW directly:
//   forward   y[imgs] (c_out x span*oh*ow) = W_krsc (c_out x K) X[imgs]^T
// with K = kh*kw*c_in, k = (r, s, c), W_krsc[co][r][s][c] = W[co][c][r][s] a plain k-contiguous
// matrix (TileLoader) and X[imgs] the output pixels' im2col rows (span*oh*ow x K), gathered from
// x_nhwc by ConvGather, 8 channels of one (pixel, tap) per 16-byte copy. The images' pixels are
// the GEMM's columns, a pixel tile running on from one image into the next (so that a 28 x 28
// map's 784 pixels do not leave a seventh tile seven eighths empty), and C's rows are y's channel
// planes, an image's after another's (tc_gemm.cuh's ImageCols).
//   data grad, stride 1: dx = the forward of dy_nhwc with W'[ci][r][s][co] = W[co][ci][kh-1-r][kw-1-s]
// (conv2d_to_nhwc_bf16 with flip = kh*kw), padding kh-1-pad_top and kw-1-pad_left, c_out input
// channels and c_in output channels; its entry points are the forward's code under their own
// names, so that the plan and the counters tell the passes apart.
// Needs c_in % 8 == 0 (c_out % 8 == 0 for the data gradient) and kh, kw <= 8 (ConvGather): conv.rs
// pads the forward's input channels to a multiple of 8 in the NHWC copy (zeros, in the KRSC
// weight too) and sends every other shape to the kernels above.
template <int BM, int WN, bool PHASED = false, typename Post = tc::NoPost, typename T>
__device__ __forceinline__ void conv_nhwc(const T* x, const T* wt, T* y, int c_in, int h, int w, int c_out, int kh,
                                          int kw, int stride, int pad_top, int pad_left, int oh, int ow, int span,
                                          float beta, const tc::PhaseMap& map = tc::PhaseMap{},
                                          const Post& post = Post{}) {
    extern __shared__ __align__(128) unsigned char tc_smem[];
    constexpr int BN = 128, THREADS = (BM / 64) * (BN / WN) * 32, TILE_K = tc::Elem<T>::BK;
    const int pixels = oh * ow, cols = span * pixels, k = kh * kw * c_in;
    const int bm = blockIdx.y * BM, bn = blockIdx.x * BN;
    tc::TileLoader<true, BM, THREADS, false, T> a_load;
    a_load.init(wt, bm, c_out, k, k, 0);
    tc::ConvGather<BN, THREADS, T> b_load;
    b_load.init(x + (long long)blockIdx.z * span * h * w * c_in, bn, cols, pixels, h, w, c_in, kh, kw, stride,
                pad_top, pad_left, ow);
    float acc[4][WN / 8][4];
    tc::mainloop<true, true, BM, BN, 64, WN, 3>(a_load, b_load, (k + TILE_K - 1) / TILE_K, acc, tc_smem);
    // One image's output: its c_out x pixels, or its c_out planes of the map the phase is of.
    const long long image = PHASED ? (long long)c_out * map.plane : (long long)c_out * pixels;
    const long long first = blockIdx.z * span * image;
    // The backward sums take whole 16-byte rows of an image (the launcher's guarantee for those
    // entry points).
    if constexpr (PHASED)
        tc::epilogue<BM, BN, 64, WN, 3, T, true>(tc_smem, acc, y + first, bm, bn, c_out, pixels, 1.0f, beta, map);
    else
        tc::epilogue<BM, BN, 64, WN, 3, T, false, Post, Post::SUMS>(tc_smem, acc, y + first, bm, bn, c_out, cols, 1.0f,
                                                                    beta, map, post.at_image(first),
                                                                    tc::ImageCols::of<BN>(pixels, image, bn));
}

#define NHWC_PARAMS                                                                                           \
    int c_in, int h, int w, int c_out, int kh, int kw, int stride, int pad_top, int pad_left, int oh, int ow
#define NHWC_ARGS c_in, h, w, c_out, kh, kw, stride, pad_top, pad_left, oh, ow
// The forwards' and stride-1 data gradients': the shape, then the images a product spans.
#define SPAN_PARAMS NHWC_PARAMS, int span
#define SPAN_ARGS NHWC_ARGS, span

// The entry points for one input type T, named conv2d_nhwc_<op>[_m64]_SUFFIX: 128 x 128 tiles of
// 64 x WN warps (bf16: four 64 x 64), _m64: 64 x 128 (bf16: two 64 x 64 warps, 64 threads), for
// c_out <= 64. The _bn_eval forwards take eval-mode BatchNorm in the epilogue (BN_EVAL_PARAMS), the
// _bn_stats ones write training BatchNorm's partial statistics of y (BN_STATS_PARAMS), the
// _bn_sums data gradients the backward reduce pass of the BatchNorm whose dy dx is (BN_SUMS_PARAMS;
// launched for maps whose rows are whole 16-byte vectors, the epilogue's vector path). The data
// gradient's shape arguments are those of the forward of dy: c_in = the layer's c_out, (h, w) =
// (oh, ow), c_out = the layer's c_in, stride 1, the flipped padding, (oh, ow) = the layer's (h, w).
#define CONV_NHWC_KERNELS(T, SUFFIX, WN)                                                                              \
    extern "C" __global__ void __launch_bounds__(128 / WN * 64)                                                          \
        conv2d_nhwc_fwd_##SUFFIX(const T* __restrict__ x_nhwc, const T* __restrict__ w_krsc, T* __restrict__ y,    \
                                 SPAN_PARAMS) {                                                                  \
        conv_nhwc<128, WN>(x_nhwc, w_krsc, y, SPAN_ARGS, 0.0f);                                                  \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(128 / WN * 32)                                                           \
        conv2d_nhwc_fwd_m64_##SUFFIX(const T* __restrict__ x_nhwc, const T* __restrict__ w_krsc,                  \
                                     T* __restrict__ y, SPAN_PARAMS) {                                           \
        conv_nhwc<64, WN>(x_nhwc, w_krsc, y, SPAN_ARGS, 0.0f);                                                   \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(128 / WN * 64)                                                          \
        conv2d_nhwc_fwd_bn_eval_##SUFFIX(const T* __restrict__ x_nhwc, const T* __restrict__ w_krsc,              \
                                         T* __restrict__ y, SPAN_PARAMS, BN_EVAL_PARAMS(T)) {                    \
        conv_nhwc<128, WN, false>(x_nhwc, w_krsc, y, SPAN_ARGS, 0.0f, tc::PhaseMap{}, BN_EVAL_POST(T));          \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(128 / WN * 32)                                                           \
        conv2d_nhwc_fwd_bn_eval_m64_##SUFFIX(const T* __restrict__ x_nhwc, const T* __restrict__ w_krsc,          \
                                             T* __restrict__ y, SPAN_PARAMS, BN_EVAL_PARAMS(T)) {                \
        conv_nhwc<64, WN, false>(x_nhwc, w_krsc, y, SPAN_ARGS, 0.0f, tc::PhaseMap{}, BN_EVAL_POST(T));           \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(128 / WN * 64)                                                  \
        conv2d_nhwc_fwd_bn_stats_##SUFFIX(const T* __restrict__ x_nhwc, const T* __restrict__ w_krsc,             \
                                          T* __restrict__ y, SPAN_PARAMS, BN_STATS_PARAMS) {                     \
        conv_nhwc<128, WN, false>(x_nhwc, w_krsc, y, SPAN_ARGS, 0.0f, tc::PhaseMap{}, BN_STATS_POST);            \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(128 / WN * 32)                                                  \
        conv2d_nhwc_fwd_bn_stats_m64_##SUFFIX(const T* __restrict__ x_nhwc, const T* __restrict__ w_krsc,         \
                                              T* __restrict__ y, SPAN_PARAMS, BN_STATS_PARAMS) {                 \
        conv_nhwc<64, WN, false>(x_nhwc, w_krsc, y, SPAN_ARGS, 0.0f, tc::PhaseMap{}, BN_STATS_POST);             \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(128 / WN * 64)                                                          \
        conv2d_nhwc_bwd_data_##SUFFIX(const T* __restrict__ dy_nhwc, const T* __restrict__ w_flipped,             \
                                      T* __restrict__ dx, SPAN_PARAMS, float beta) {                             \
        conv_nhwc<128, WN>(dy_nhwc, w_flipped, dx, SPAN_ARGS, beta);                                             \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(128 / WN * 32)                                                           \
        conv2d_nhwc_bwd_data_m64_##SUFFIX(const T* __restrict__ dy_nhwc, const T* __restrict__ w_flipped,         \
                                          T* __restrict__ dx, SPAN_PARAMS, float beta) {                         \
        conv_nhwc<64, WN>(dy_nhwc, w_flipped, dx, SPAN_ARGS, beta);                                              \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(128 / WN * 64)                                                  \
        conv2d_nhwc_bwd_data_bn_sums_##SUFFIX(const T* __restrict__ dy_nhwc, const T* __restrict__ w_flipped,     \
                                              T* __restrict__ dx, SPAN_PARAMS, BN_SUMS_PARAMS(T)) {              \
        conv_nhwc<128, WN, false>(dy_nhwc, w_flipped, dx, SPAN_ARGS, 0.0f, tc::PhaseMap{}, BN_SUMS_POST(T));     \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(128 / WN * 32)                                                  \
        conv2d_nhwc_bwd_data_bn_sums_m64_##SUFFIX(const T* __restrict__ dy_nhwc, const T* __restrict__ w_flipped, \
                                                  T* __restrict__ dx, SPAN_PARAMS, BN_SUMS_PARAMS(T)) {          \
        conv_nhwc<64, WN, false>(dy_nhwc, w_flipped, dx, SPAN_ARGS, 0.0f, tc::PhaseMap{}, BN_SUMS_POST(T));      \
    }

CONV_NHWC_KERNELS(bf16_t, bf16, 64)
// TF32: f32 activations in runs of 4 channels (conv.rs pads to a multiple of 4); the forward
// and the stride-1 data gradient (the strided one and the weight gradient below). Warps
// of 64 x 32 (eight, 256 threads; _m64 four): with 64 x 64 ones the gather's registers and the
// f32 epilogue's spill 480-544 bytes.
CONV_NHWC_KERNELS(float, tf32, 32)

// The data gradient at stride S > 1 by stride phases, with no multiplication by zero: the input
// pixels (iy, ix) with iy % S = py and ix % S = px receive dy only through the taps r = rho + S j
// (rho = (py + pad_top) % S) and s = sigma + S k, from output pixel (a + e - j, ...) where a =
// iy / S. Each phase is thus the stride-1 forward of dy with the flipped sub-kernel of those taps,
// written straight into dx's pixels of the phase (conv2d_nhwc_bwd_data_phase_*: the forward's code
// with PhaseMap's epilogue); conv.rs zeroes dx first when some phase has no tap.
// conv2d_phase_weight_<bf16|f32> gathers a phase's sub-kernel from the flipped KRSC weight (as
// the stride-1 data gradient's, c_in x kh x kw x c_out): rows (ci, r0 + S j', s0 + S k'), 16
// bytes a thread (c_out in runs of 16 bytes: % 8 in bf16, % 4 in f32).
template <typename T>
__device__ void phase_weight(const T* __restrict__ w_flipped, T* __restrict__ dst, int c_in, int c_out, int kh,
                             int kw, int stride, int r0, int s0, int jr, int js) {
    constexpr int PER_CHUNK = 16 / (int)sizeof(T);
    const int chunks = c_out / PER_CHUNK, taps = jr * js;
    GRID_STRIDE(i, (size_t)c_in * taps * chunks) {
        const int row = (int)(i / chunks), chunk = (int)(i - (size_t)row * chunks), ci = row / taps,
                  t = row - ci * taps, j = t / js, k = t - j * js;
        const size_t src = ((size_t)ci * kh * kw + (size_t)(r0 + stride * j) * kw + s0 + stride * k) * c_out;
        st_global_v4(dst + (size_t)row * c_out + chunk * PER_CHUNK, ld_global_v4(w_flipped + src + chunk * PER_CHUNK));
    }
}

#define PHASE_WEIGHT_KERNEL(T, SUFFIX)                                                                           \
    extern "C" __global__ void conv2d_phase_weight_##SUFFIX(const T* __restrict__ w_flipped, T* __restrict__ dst, \
                                                            int c_in, int c_out, int kh, int kw, int stride,       \
                                                            int r0, int s0, int jr, int js) {                      \
        phase_weight(w_flipped, dst, c_in, c_out, kh, kw, stride, r0, s0, jr, js);                                 \
    }
PHASE_WEIGHT_KERNEL(bf16_t, bf16)
PHASE_WEIGHT_KERNEL(float, f32)

// The shape arguments as the stride-1 forward of dy for one phase (oh, ow: the phase's grid),
// then dx's map (h, w), the layer's stride and the phase.
#define PHASE_PARAMS NHWC_PARAMS, int dx_h, int dx_w, int dx_stride, int py, int px
#define PHASE_MAP                                                                                   \
    tc::PhaseMap { ow, dx_w, dx_stride, py * dx_w + px, dx_h * dx_w }

// Warps of 64 x WN as the forward's entry points (CONV_NHWC_KERNELS).
#define CONV_NHWC_PHASE_KERNELS(T, SUFFIX, WN)                                                                   \
    extern "C" __global__ void __launch_bounds__(128 / WN * 64)                                                  \
        conv2d_nhwc_bwd_data_phase_##SUFFIX(const T* __restrict__ dy_nhwc, const T* __restrict__ w_phase,         \
                                            T* __restrict__ dx, PHASE_PARAMS, float beta) {                      \
        conv_nhwc<128, WN, true>(dy_nhwc, w_phase, dx, NHWC_ARGS, 1, beta, PHASE_MAP);                              \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(128 / WN * 32)                                                  \
        conv2d_nhwc_bwd_data_phase_m64_##SUFFIX(const T* __restrict__ dy_nhwc, const T* __restrict__ w_phase,     \
                                                T* __restrict__ dx, PHASE_PARAMS, float beta) {                  \
        conv_nhwc<64, WN, true>(dy_nhwc, w_phase, dx, NHWC_ARGS, 1, beta, PHASE_MAP);                               \
    }
CONV_NHWC_PHASE_KERNELS(bf16_t, bf16, 64)
CONV_NHWC_PHASE_KERNELS(float, tf32, 32)

// The weight gradient over channels-last x and dy (both transposed by conv.rs), split over the
// batch's output pixels into gridDim.z parts of `per` pixels:
//   partial[z] (c_out x K) = sum over split z's pixels of dy_nhwc^T (c_out x pixels) X (pixels x K)
// with K = kh*kw*c_in in KRSC order, X the im2col rows gathered by WeightGradGather. Both operands
// run along the batch's pixels (k) with c_out or (tap, channel) contiguous: ldmatrix .trans for
// both. conv2d_bwd_weight_reduce_krsc_f32 adds the splits into dw's (c_out, c_in, kh, kw) order.
// Needs c_in % 8 == 0 (conv.rs pads x's channels, and the reduction skips the padding's sums) and
// c_out % 8 == 0 (dy's 16-byte rows); any kernel size and stride. The _tf32 kernels: f32 x and
// dy, runs of 4 (c_in padded to 4, c_out % 4 == 0), both operands by 4-byte loads (no ldmatrix
// .trans for 32-bit elements). `per`: a multiple of 32 pixels (whole k tiles of either type).
template <int BM, int WN, typename T>
__device__ __forceinline__ void conv_nhwc_bwd_weight(const T* x, const T* dy, float* partial, int per, int n,
                                                     int c_in, int h, int w, int c_out, int kh, int kw, int stride,
                                                     int pad_top, int pad_left, int oh, int ow) {
    extern __shared__ __align__(128) unsigned char tc_smem[];
    constexpr int BN = 128, THREADS = (BM / 64) * (BN / WN) * 32, TILE_K = tc::Elem<T>::BK;
    const int k = kh * kw * c_in, p0 = blockIdx.z * per, pixels = min(per, n * oh * ow - p0);
    const int bm = blockIdx.y * BM, bn = blockIdx.x * BN;
    tc::TileLoader<false, BM, THREADS, false, T> a_load;
    a_load.init(dy + (long long)p0 * c_out, bm, c_out, pixels, c_out, 0);
    tc::WeightGradGather<BN, THREADS, T> b_load;
    b_load.init(x, p0, pixels, bn, h, w, c_in, kh, kw, stride, pad_top, pad_left, oh, ow);
    float acc[4][WN / 8][4];
    tc::mainloop<false, false, BM, BN, 64, WN, 3>(a_load, b_load, (pixels + TILE_K - 1) / TILE_K, acc, tc_smem);
    tc::epilogue<BM, BN, 64, WN, 3, float, false, tc::NoPost, true>(
        tc_smem, acc, partial + (long long)blockIdx.z * c_out * k, bm, bn, c_out, k, 1.0f, 0.0f);
}

// Eight 64 x 32 warps (the 1x1 weight gradient's shape: four 64 x 64 ones spill); _m64: four,
// for c_out <= 64.
#define CONV_NHWC_BWD_WEIGHT_KERNELS(T, SUFFIX)                                                                   \
    extern "C" __global__ void __launch_bounds__(256)                                                            \
        conv2d_nhwc_bwd_weight_##SUFFIX(const T* __restrict__ x_nhwc, const T* __restrict__ dy_nhwc,              \
                                        float* __restrict__ partial, int per, int n, NHWC_PARAMS) {              \
        conv_nhwc_bwd_weight<128, 32>(x_nhwc, dy_nhwc, partial, per, n, NHWC_ARGS);                              \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(128)                                                            \
        conv2d_nhwc_bwd_weight_m64_##SUFFIX(const T* __restrict__ x_nhwc, const T* __restrict__ dy_nhwc,          \
                                            float* __restrict__ partial, int per, int n, NHWC_PARAMS) {          \
        conv_nhwc_bwd_weight<64, 32>(x_nhwc, dy_nhwc, partial, per, n, NHWC_ARGS);                               \
    }

CONV_NHWC_BWD_WEIGHT_KERNELS(bf16_t, bf16)
CONV_NHWC_BWD_WEIGHT_KERNELS(float, tf32)

// dw[co][c][t] += the splits' partial[z][co][t][c] (KRSC -> PyTorch's order), added in split
// order. A block takes 32 channels of output channel blockIdx.y, all taps (at most 64): it sums
// each tap's 32 partial sums (a 128-byte row) into shared memory in dw's order, then adds them to
// dw's run of 32 x taps contiguous floats. The shared writes are conflict-free for an odd count
// of taps (1, 9, 25, 49: lane x taps + t covers 32 banks). A warp a tap, up to 32 (conv.rs): a
// 1x1's block is one warp, where 256 threads left 7 warps idle, and the stem's 49 taps take 2
// rounds of 66 parts, where 8 warps took 7.
extern "C" __global__ void __launch_bounds__(1024)
    conv2d_bwd_weight_reduce_krsc_f32(const float* __restrict__ partial, float* __restrict__ dw, int c_in, int taps,
                                      int splits, int padded) {
    __shared__ float run[32 * 64];
    const int lane = threadIdx.x % 32, c0 = blockIdx.x * 32, c = c0 + lane;
    // A partial row holds `padded` channels a tap (the padding's sums, zeros, are skipped).
    const size_t len = (size_t)gridDim.y * taps * padded, from = (size_t)blockIdx.y * taps * padded;
    for (int t = threadIdx.x / 32; t < taps; t += blockDim.x / 32) {
        run[lane * taps + t] = c < c_in ? sum_in_order(partial + from + (size_t)t * padded + c, len, splits) : 0.0f;
    }
    __syncthreads();
    const int n = min(32, c_in - c0) * taps;
    const size_t row = (size_t)blockIdx.y * taps * c_in;
    for (int e = threadIdx.x; e < n; e += blockDim.x) dw[row + (size_t)c0 * taps + e] += run[e];
}

// NCHW -> NHWC (an image), and a weight's (c_in x kh*kw) -> (kh*kw x c_in) per output channel
// (KRSC), `flip` and `padded` as nhwc.cuh describes them; 64 x 64 tiles (nhwc_tile_bf16).
extern "C" __global__ void __launch_bounds__(256)
    conv2d_to_nhwc_bf16(const bf16_t* __restrict__ src, bf16_t* __restrict__ dst, int channels, int pixels, int flip,
                        int padded) {
    nhwc_tile_bf16(src, dst, channels, pixels, flip, padded, NhwcCopy{});
}

// The same for at most 8 channels padded to 8 (a stem's 3): a thread reads one pixel's channels,
// 2 bytes from each plane (consecutive threads on consecutive pixels), and writes them as one
// 16-byte run. Grid: (pixels / 256 blocks, planes).
extern "C" __global__ void __launch_bounds__(256)
    conv2d_to_nhwc8_bf16(const bf16_t* __restrict__ src, bf16_t* __restrict__ dst, int channels, int pixels) {
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= pixels) return;
    const unsigned short* from = reinterpret_cast<const unsigned short*>(src) + (long long)blockIdx.y * channels * pixels + p;
    uint32_t v[4] = {0u, 0u, 0u, 0u};
#pragma unroll
    for (int c = 0; c < 8; ++c)
        if (c < channels) v[c >> 1] |= (uint32_t)from[(long long)c * pixels] << (16 * (c & 1));
    st_global_v4(dst + ((long long)blockIdx.y * pixels + p) * 8, make_uint4(v[0], v[1], v[2], v[3]));
}

// conv2d_to_nhwc_bf16's work in f32 (the TF32 channels-last kernels' operands), `padded` a
// multiple of 4: 32 x 32 tiles (nhwc_tile_f32).
extern "C" __global__ void __launch_bounds__(256)
    conv2d_to_nhwc_f32(const float* __restrict__ src, float* __restrict__ dst, int channels, int pixels, int flip,
                       int padded) {
    nhwc_tile_f32(src, dst, channels, pixels, flip, padded, NhwcCopy{});
}

// ---- depthwise -------------------------------------------------------------------------------

// `post`: eval-mode BatchNorm applied to each output as stored (BnEvalPost), every channel's map
// staged first into dynamic shared memory (c_out float2; a division and a square root per
// element doubled the loop's instructions).
template <typename T, typename Post = tc::NoPost>
__device__ void depthwise_fwd(const T* __restrict__ x, const T* __restrict__ weight, T* __restrict__ y,
                              CONV_SHAPE_PARAMS, const Post& post = Post{}) {
    float2* maps = nullptr;
    if constexpr (Post::ON) {
        extern __shared__ __align__(16) unsigned char dw_smem[];
        maps = reinterpret_cast<float2*>(dw_smem);
        post.stage(maps, 0, c_out, c_out);
        __syncthreads();
    }
    ConvShape s = CONV_SHAPE;
    size_t ohw = (size_t)oh * ow;
    GRID_STRIDE(i, (size_t)n * c_out * ohw) {
        // The plane (an image's channel) fits an int: its split is a 32-bit division.
        const size_t plane = i / ohw;
        const int p = (int)(i - plane * ohw), img = (int)plane / c_out, c = (int)plane - img * c_out;
        const T* wc = weight + (size_t)c * kh * kw;
        float sum = 0.0f;
        for (int r = 0; r < kh; r++)
            for (int q = 0; q < kw; q++)
                sum = fmaf(load(wc[r * kw + q]), x_tap(x, s, img, c, p / ow, p % ow, r, q), sum);
        if (Post::ON) sum = post.element(load(store<T>(sum)), maps[c], (long long)i);
        y[i] = store<T>(sum);
    }
}

template <typename T>
__device__ void depthwise_bwd_data(const T* __restrict__ dy, const T* __restrict__ weight, T* __restrict__ dx,
                                   CONV_SHAPE_PARAMS) {
    ConvShape s = CONV_SHAPE;
    size_t hw = (size_t)h * w;
    GRID_STRIDE(i, (size_t)n * c_in * hw) {
        const size_t plane = i / hw;
        const int pix = (int)(i - plane * hw), img = (int)plane / c_in, c = (int)plane - img * c_in;
        const T* wc = weight + (size_t)c * kh * kw;
        float sum = 0.0f;
        for (int r = 0; r < kh; r++)
            for (int q = 0; q < kw; q++)
                sum = fmaf(load(wc[r * kw + q]), dy_tap(dy, s, img, c, pix / w, pix % w, r, q), sum);
        dx[i] = store<T>(sum);
    }
}

// One block per channel; each tap's sum over the batch's output positions is a block reduction.
// dw is f32 for both activation dtypes.
template <typename T>
__device__ void depthwise_bwd_weight(const T* __restrict__ x, const T* __restrict__ dy, float* __restrict__ dw,
                                     CONV_SHAPE_PARAMS) {
    __shared__ float slots[256 / WARP_SIZE];
    ConvShape s = CONV_SHAPE;
    int c = blockIdx.x, ohw = oh * ow;
    size_t count = (size_t)n * ohw;
    for (int t = 0; t < kh * kw; t++) {
        float sum = 0.0f;
        for (size_t e = threadIdx.x; e < count; e += blockDim.x) {
            int img = (int)(e / ohw), p = (int)(e % ohw);
            sum = fmaf(load(dy[((size_t)img * c_out + c) * ohw + p]),
                       x_tap(x, s, img, c, p / ow, p % ow, t / kw, t % kw), sum);
        }
        sum = block_sum(sum, slots);
        if (threadIdx.x == 0) dw[(size_t)c * kh * kw + t] += sum;
    }
}

#define CONV_ARGS n, c_in, h, w, c_out, kh, kw, stride, pad_top, pad_left, oh, ow
#define DEPTHWISE_ENTRY_POINTS(T, SUFFIX)                                                                      \
    extern "C" __global__ void conv2d_depthwise_fwd_##SUFFIX(const T* __restrict__ x, const T* __restrict__ weight, \
                                                           T* __restrict__ y, CONV_SHAPE_PARAMS) {              \
        depthwise_fwd(x, weight, y, CONV_ARGS);                                                                \
    }                                                                                                          \
    extern "C" __global__ void conv2d_depthwise_fwd_bn_eval_##SUFFIX(                                         \
        const T* __restrict__ x, const T* __restrict__ weight, T* __restrict__ y, CONV_SHAPE_PARAMS,           \
        BN_EVAL_PARAMS(T)) {                                                                                   \
        depthwise_fwd(x, weight, y, CONV_ARGS, BN_EVAL_POST(T));                                               \
    }                                                                                                          \
    extern "C" __global__ void conv2d_depthwise_bwd_data_##SUFFIX(                                            \
        const T* __restrict__ dy, const T* __restrict__ weight, T* __restrict__ dx, CONV_SHAPE_PARAMS) {       \
        depthwise_bwd_data(dy, weight, dx, CONV_ARGS);                                                         \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(256) conv2d_depthwise_bwd_weight_##SUFFIX(                   \
        const T* __restrict__ x, const T* __restrict__ dy, float* __restrict__ dw, CONV_SHAPE_PARAMS) {        \
        depthwise_bwd_weight(x, dy, dw, CONV_ARGS);                                                            \
    }

DEPTHWISE_ENTRY_POINTS(float, f32)
DEPTHWISE_ENTRY_POINTS(__nv_bfloat16, bf16)
