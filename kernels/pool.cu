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
#include "vec.cuh"

// x^e with e a compile-time E where GeM's p = 3 makes it one (3, and p - 1 = 2 in the gradient),
// else (E = 0) the run-time e through pow_fast_int: a loop over a run-time p held powf's whole
// path beside the multiplications (gem_fwd: 111 instructions; gem_bwd, an element a thread, 268
// with a 64-bit division and powf for every element). The products are pow_fast_int's, bit for bit.
template <int E>
__device__ __forceinline__ float gem_pow(float x, float e) {
    if constexpr (E == 3) return x * x * x;
    if constexpr (E == 2) return x * x;
    return pow_fast_int(x, e);
}

// 2^lanes_log2 lanes a row (the launcher's gem_lanes: about 12 elements a lane or more, at most a
// warp), each group of lanes on one row of the contiguous rows: lane j of a group takes the row's
// elements j, j + lanes, ... A warp a row left most lanes idle at the end of a 14 x 14 row (196
// elements: 7 sweeps, the last 4 lanes wide) and paid the row's reduction and root for one row;
// now a warp pays them once for 32 / lanes rows. Lanes past the last row run the shuffles (every
// lane must) with nothing to add.
template <int P, typename T>
__device__ void gem_fwd_rows(const T* __restrict__ x, T* __restrict__ y, int rows, int hw, int lanes_log2,
                             float p, float eps) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x, lanes = 1 << lanes_log2;
    const int row = t >> lanes_log2, j = t & (lanes - 1);
    float acc = 0.0f;
    if (row < rows) {
        const T* xr = x + (size_t)row * hw;
#pragma unroll 4
        for (int i = j; i < hw; i += lanes) acc += gem_pow<P>(fmaxf(load(xr[i]), eps), p);
    }
    for (int offset = lanes / 2; offset > 0; offset >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
    if (row < rows && j == 0) y[row] = store<T>(powf(acc / (float)hw, 1.0f / p));
}

template <typename T>
__device__ void gem_fwd(const T* __restrict__ x, T* __restrict__ y, int rows, int hw, int lanes_log2, float p,
                        float eps) {
    if (p == 3.0f)
        gem_fwd_rows<3>(x, y, rows, hw, lanes_log2, p, eps);
    else
        gem_fwd_rows<0>(x, y, rows, hw, lanes_log2, p, eps);
}

// The forward's lanes a row: the row's factor dy y^(1-p) / HW once a lane, then its elements
// (an element a thread recomputed the factor, a powf, and the row's index, a 64-bit division,
// for every element). Values bit for bit that kernel's.
template <int P, typename T>
__device__ void gem_bwd_rows(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ dy,
                             T* __restrict__ dx, int rows, int hw, int lanes_log2, float p, float eps) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x, lanes = 1 << lanes_log2;
    const int row = t >> lanes_log2, j = t & (lanes - 1);
    if (row >= rows) return;
    const float coef = load(dy[row]) * powf(load(y[row]), 1.0f - p) / (float)hw;
    const T* xr = x + (size_t)row * hw;
    T* dxr = dx + (size_t)row * hw;
#pragma unroll 4
    for (int i = j; i < hw; i += lanes) {
        const float xi = load(xr[i]);
        dxr[i] = store<T>(xi >= eps ? coef * gem_pow<P - 1>(xi, p - 1.0f) : 0.0f);
    }
}

template <typename T>
__device__ void gem_bwd(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ dy,
                        T* __restrict__ dx, int rows, int hw, int lanes_log2, float p, float eps) {
    if (p == 3.0f)
        gem_bwd_rows<3>(x, y, dy, dx, rows, hw, lanes_log2, p, eps);
    else
        gem_bwd_rows<1>(x, y, dy, dx, rows, hw, lanes_log2, p, eps);
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

// ResNet's stem pool (3 x 3 windows, stride 2, padding 1) on maps of even height and a width a
// multiple of 8 (224 x 224 at 448 px): the same results as maxpool_fwd / maxpool_bwd, bit for
// bit, with the window's shape known to the compiler. The general kernels find each window's
// bounds at run time and take one element an access; at ResNet's shape that cost 3-4 times the
// instructions that DRAM leaves time for (an H200 issues ~0.22 warp instructions per byte it
// moves). Here a thread takes one cell of the map, 2 input rows x 8 columns, which is exactly 1
// output row x 4 columns: the forward reads its windows' rows as 16-byte vectors and writes 4
// outputs and 4 argmax bytes at once; the backward reads the windows over the cell (4 bytes and
// 4 gradients a row) and writes two 16-byte rows of dx. The one column a cell needs beyond its
// own (the forward: the input column before it; the backward: the window after it) is the
// neighbouring lane's, taken by a shuffle (lane 0 or 31, or the end of a row, loads it). Cells
// are numbered row by row within a plane (one division before the plane walk, none in it);
// blocks walk the planes blockIdx.y, then gridDim.y, apart.

// Eight consecutive values of a row, widened (one 16-byte access for bf16, two for f32).
template <typename T>
__device__ __forceinline__ void load_8(const T* __restrict__ p, float (&v)[8]) {
    constexpr int VEC = 16 / (int)sizeof(T);
    float part[VEC];
#pragma unroll
    for (int i = 0; i < 8; i += VEC) {
        load_vec<VEC>(p + i, part);
#pragma unroll
        for (int e = 0; e < VEC; e++) v[i + e] = part[e];
    }
}

template <typename T>
__device__ __forceinline__ void store_8(T* __restrict__ p, const float (&v)[8]) {
    constexpr int VEC = 16 / (int)sizeof(T);
#pragma unroll
    for (int i = 0; i < 8; i += VEC) {
        float part[VEC];
#pragma unroll
        for (int e = 0; e < VEC; e++) part[e] = v[i + e];
        store_vec<VEC>(p + i, part);
    }
}

// The cell this thread takes: output row `row` (input rows 2 row, 2 row + 1) and output columns
// 4 col .. 4 col + 3 (input columns 8 col .. 8 col + 7). A thread past the plane's last cell
// takes the last one and stores nothing (`live` false): its warp's shuffles need every lane. A
// warp wholly past it has nothing to do (`warp_live` false): a plane's last block would otherwise
// repeat its last cell in up to 7 warps (784 cells, ResNet-50's 112 x 112 at 224 px, in 4 blocks
// of 256).
struct StemCell {
    int row, col;
    bool live, warp_live;
};

__device__ __forceinline__ StemCell stem_cell(int oh, int cells_a_row) {
    const int cells = oh * cells_a_row, q = blockIdx.x * blockDim.x + threadIdx.x, at = min(q, cells - 1);
    const int row = at / cells_a_row;
    return StemCell{row, at - row * cells_a_row, q < cells, q - (int)(threadIdx.x % WARP_SIZE) < cells};
}

template <typename T>
__device__ void maxpool_3x3s2_fwd(const T* __restrict__ x, T* __restrict__ y, unsigned char* __restrict__ argmax,
                                  MaxPoolShape s) {
    const int w = s.w, ow = s.ow, cells_a_row = w / 8, lane = threadIdx.x % WARP_SIZE;
    const StemCell cell = stem_cell(s.oh, cells_a_row);
    if (!cell.warp_live) return;
    // Input row 2 row - 1 and column 8 col - 1 are padding on the map's first row and column of
    // cells: they read as -inf, which never takes a window (strictly greater or a NaN takes it),
    // and a window whose real values are all -inf keeps cell 0, put back on its first real cell.
    // Column 8 col - 1 is the last of the previous lane's cell, where that lane has it.
    const bool above = cell.row > 0, left = cell.col > 0, left_in_warp = left && lane > 0;
    const size_t hw = (size_t)s.h * w, ohw = (size_t)s.oh * ow;
    const int first_row = 2 * cell.row - 1, x0 = 8 * cell.col;
    const size_t out = (size_t)cell.row * ow + 4 * cell.col;
    for (int p = blockIdx.y; p < s.planes; p += gridDim.y) {
        const T* plane = x + p * hw;
        float v[3][9];   // v[r][0]: column 8 col - 1; v[r][1 + i]: column 8 col + i
#pragma unroll
        for (int r = 0; r < 3; r++) {
            const bool real = r > 0 || above;
            const T* at = plane + (first_row + r) * w + x0;
            float row8[8], before = -INFINITY;
            if (real) {
                load_8(at, row8);
                if (left && !left_in_warp) before = load(at[-1]);
            } else {
#pragma unroll
                for (int i = 0; i < 8; i++) row8[i] = -INFINITY;
            }
            const float from_lane = __shfl_up_sync(0xffffffffu, row8[7], 1);
            v[r][0] = left_in_warp ? from_lane : before;
#pragma unroll
            for (int i = 0; i < 8; i++) v[r][1 + i] = row8[i];
        }
        float best[4];
        uint32_t places = 0;
#pragma unroll
        for (int t = 0; t < 4; t++) {
            // Window t's cell (r, c) is v[r][2t + c], its place 3 r + c; row-major, the first
            // maximum wins ties and a NaN wins and stays.
            float b = v[0][2 * t];
            int at = 0;
#pragma unroll
            for (int c = 1; c < 9; c++) {
                const float value = v[c / 3][2 * t + c % 3];
                if (!(value <= b) && b == b) b = value, at = c;
            }
            const bool cell0_real = above && (t > 0 || left);
            if (at == 0 && !cell0_real) at = (above ? 0 : 3) + (t == 0 && !left ? 1 : 0);
            best[t] = b;
            places |= (uint32_t)at << (8 * t);
        }
        if (!cell.live) continue;
        store_vec<4>(y + p * ohw + out, best);
        if (argmax) *reinterpret_cast<uint32_t*>(argmax + p * ohw + out) = places;
    }
}

template <typename T>
__device__ void maxpool_3x3s2_bwd(const unsigned char* __restrict__ argmax, const T* __restrict__ dy,
                                  T* __restrict__ dx, MaxPoolShape s) {
    const int w = s.w, ow = s.ow, cells_a_row = w / 8, lane = threadIdx.x % WARP_SIZE;
    const StemCell cell = stem_cell(s.oh, cells_a_row);
    if (!cell.warp_live) return;
    // The cell's inputs lie in windows rows row, row + 1 and columns 4 col .. 4 col + 4; row + 1
    // and column 4 col + 4 are past the map on its last row and column of cells: their places
    // read 9, which names no cell. Window column 4 col + 4 is the next lane's first, where that
    // lane has it.
    const bool below = cell.row + 1 < s.oh, right = cell.col + 1 < cells_a_row, right_in_warp = right && lane < 31;
    const size_t hw = (size_t)s.h * w, ohw = (size_t)s.oh * ow;
    const size_t first = (size_t)cell.row * ow + 4 * cell.col, in = (size_t)(2 * cell.row) * w + 8 * cell.col;
    for (int p = blockIdx.y; p < s.planes; p += gridDim.y) {
        int place[2][5];
        float grad[2][5];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const size_t at = p * ohw + first + (size_t)r * ow;
            int after = 9;   // window column 4 col + 4's place and gradient, when no lane has it
            float after_grad = 0.0f;
            if (r == 0 || below) {
                const uint32_t bytes = *reinterpret_cast<const uint32_t*>(argmax + at);
                float g4[4];
                load_vec<4>(dy + at, g4);
#pragma unroll
                for (int t = 0; t < 4; t++) place[r][t] = (bytes >> (8 * t)) & 0xff, grad[r][t] = g4[t];
                if (right && !right_in_warp) after = argmax[at + 4], after_grad = load(dy[at + 4]);
            } else {
#pragma unroll
                for (int t = 0; t < 4; t++) place[r][t] = 9, grad[r][t] = 0.0f;
            }
            const int from_lane = __shfl_down_sync(0xffffffffu, place[r][0], 1);
            const float grad_from_lane = __shfl_down_sync(0xffffffffu, grad[r][0], 1);
            place[r][4] = right_in_warp ? from_lane : after;
            grad[r][4] = right_in_warp ? grad_from_lane : after_grad;
        }
        // Input (2 row + i, 8 col + 2t + k)'s place in window (row + a, 4 col + t + b) is
        // 3 (i + 1 - 2a) + (k + 1 - 2b); its windows are added in row-major order, from 0, as the
        // general kernel and the CPU add them (an unmatched window adds +0, which changes no sum:
        // a sum from +0 is never -0).
        float dx_rows[2][8];
#pragma unroll
        for (int t = 0; t < 4; t++) {
#define TERM(a, b, at_place) (place[a][t + b] == (at_place) ? grad[a][t + b] : 0.0f)
            dx_rows[0][2 * t] = 0.0f + TERM(0, 0, 4);
            dx_rows[0][2 * t + 1] = (0.0f + TERM(0, 0, 5)) + TERM(0, 1, 3);
            dx_rows[1][2 * t] = (0.0f + TERM(0, 0, 7)) + TERM(1, 0, 1);
            dx_rows[1][2 * t + 1] = (((0.0f + TERM(0, 0, 8)) + TERM(0, 1, 6)) + TERM(1, 0, 2)) + TERM(1, 1, 0);
#undef TERM
        }
        if (!cell.live) continue;
        T* cell_dx = dx + p * hw + in;
        store_8(cell_dx, dx_rows[0]);
        store_8(cell_dx + w, dx_rows[1]);
    }
}

#define GEM_ENTRY_POINTS(T, SUFFIX)                                                                            \
    extern "C" __global__ void gem_fwd_##SUFFIX(const T* __restrict__ x, T* __restrict__ y, int rows, int hw,     \
                                                int lanes_log2, float p, float eps) {                            \
        gem_fwd(x, y, rows, hw, lanes_log2, p, eps);                                                            \
    }                                                                                                           \
    extern "C" __global__ void gem_bwd_##SUFFIX(const T* __restrict__ x, const T* __restrict__ y,                \
                                                const T* __restrict__ dy, T* __restrict__ dx, int rows, int hw,  \
                                                int lanes_log2, float p, float eps) {                            \
        gem_bwd(x, y, dy, dx, rows, hw, lanes_log2, p, eps);                                                    \
    }
GEM_ENTRY_POINTS(float, f32)
GEM_ENTRY_POINTS(__nv_bfloat16, bf16)

// Entry points take the shape as scalars (kernel arguments are pointers and scalars); the stem
// pool's take the same ones as the general kernels', so that a launcher picks either by name.
#define MAXPOOL_ENTRY_POINTS(T, SUFFIX, NAME)                                                                  \
    extern "C" __global__ void NAME##_fwd_##SUFFIX(const T* __restrict__ x, T* __restrict__ y,                 \
                                                   unsigned char* __restrict__ argmax, int planes, int h,      \
                                                   int w, int k, int stride, int pad, int oh, int ow) {        \
        NAME##_fwd(x, y, argmax, MaxPoolShape{planes, h, w, k, stride, pad, oh, ow});                          \
    }                                                                                                          \
    extern "C" __global__ void NAME##_bwd_##SUFFIX(const unsigned char* __restrict__ argmax,                  \
                                                   const T* __restrict__ dy, T* __restrict__ dx, int planes,   \
                                                   int h, int w, int k, int stride, int pad, int oh, int ow) { \
        NAME##_bwd(argmax, dy, dx, MaxPoolShape{planes, h, w, k, stride, pad, oh, ow});                        \
    }

MAXPOOL_ENTRY_POINTS(float, f32, maxpool)
MAXPOOL_ENTRY_POINTS(__nv_bfloat16, bf16, maxpool)
MAXPOOL_ENTRY_POINTS(float, f32, maxpool_3x3s2)
MAXPOOL_ENTRY_POINTS(__nv_bfloat16, bf16, maxpool_3x3s2)
