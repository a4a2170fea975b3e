// Spatial verification of image pairs from their local features (src/eval/local.rs): mutual
// nearest-neighbour matching of int8 descriptors, then RANSAC over a similarity transform
// (scale, rotation, translation: q = [a -b; b a] p + t), the best hypothesis refined once by least
// squares over its inliers. One block per pair.
//
// Every decision is the CPU twin's (src/backend/cpu/verify.rs) bit for bit:
// - a similarity is an exact integer dot product (dp4a, warp-summed: integers add in any order
//   to the same value) times the two rows' f32 factors, each product rounded;
// - geometry uses __fmul_rn / __fadd_rn / __fsub_rn / __fdiv_rn, never a fused multiply-add, in
//   the twin's order;
// - hypothesis h draws its two matches from splitmix64(seed, h) (or enumerates every ordered pair
//   when there are no more of them than hypotheses), so the choice does not depend on the pair's
//   place in the launch, and the best is the most inliers, ties to the lowest h.
//
// Matching: a's best b (ties: lowest b) is kept when its similarity >= min_sim and it passes the
// ratio test on squared distances (2 - 2 s1 < ratio^2 (2 - 2 s2); an exact tie never passes), and
// a is b's best a as well (ties: lowest a). Matches are listed in ascending a.
#include "common.cuh"

#define VERIFY_MAX_FEATURES 256
#define VERIFY_THREADS 256

__device__ __forceinline__ int warp_sum_int(int v) {
#pragma unroll
    for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Order-preserving key of a similarity (IEEE total order as an unsigned), as select.cu's.
__device__ __forceinline__ unsigned int sim_key(float f) {
    unsigned int u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ unsigned long long splitmix64(unsigned long long z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// The two matches hypothesis h is drawn from, i != j, both < m (m >= 2).
__device__ __forceinline__ void hypothesis_pair(unsigned long long seed, int h, int m, int hypotheses, int& i, int& j) {
    if ((long long)m * (m - 1) <= hypotheses) {
        i = h / (m - 1);
        j = h % (m - 1);
    } else {
        unsigned long long r = splitmix64(seed ^ splitmix64((unsigned long long)h));
        i = (int)((unsigned)(r >> 32) % (unsigned)m);
        j = (int)((unsigned)r % (unsigned)(m - 1));
    }
    j += j >= i;
}

struct Similarity {
    float a, b, tx, ty;
};

// The transform taking p1 -> q1 and p2 -> q2, if p1 != p2 and its scale is within bounds.
__device__ __forceinline__ bool similarity_from(float p1x, float p1y, float p2x, float p2y, float q1x, float q1y,
                                                float q2x, float q2y, float max_scale2, Similarity& m) {
    float dpx = __fsub_rn(p2x, p1x), dpy = __fsub_rn(p2y, p1y);
    float dqx = __fsub_rn(q2x, q1x), dqy = __fsub_rn(q2y, q1y);
    float den = __fadd_rn(__fmul_rn(dpx, dpx), __fmul_rn(dpy, dpy));
    if (!(den > 1e-6f)) return false;
    m.a = __fdiv_rn(__fadd_rn(__fmul_rn(dqx, dpx), __fmul_rn(dqy, dpy)), den);
    m.b = __fdiv_rn(__fsub_rn(__fmul_rn(dqy, dpx), __fmul_rn(dqx, dpy)), den);
    float s2 = __fadd_rn(__fmul_rn(m.a, m.a), __fmul_rn(m.b, m.b));
    if (!(s2 <= max_scale2) || !(__fmul_rn(s2, max_scale2) >= 1.0f)) return false;
    m.tx = __fsub_rn(q1x, __fsub_rn(__fmul_rn(m.a, p1x), __fmul_rn(m.b, p1y)));
    m.ty = __fsub_rn(q1y, __fadd_rn(__fmul_rn(m.b, p1x), __fmul_rn(m.a, p1y)));
    return true;
}

__device__ __forceinline__ bool is_inlier(const Similarity& m, float px, float py, float qx, float qy, float thr2) {
    float ex = __fsub_rn(__fadd_rn(__fsub_rn(__fmul_rn(m.a, px), __fmul_rn(m.b, py)), m.tx), qx);
    float ey = __fsub_rn(__fadd_rn(__fadd_rn(__fmul_rn(m.b, px), __fmul_rn(m.a, py)), m.ty), qy);
    return __fadd_rn(__fmul_rn(ex, ex), __fmul_rn(ey, ey)) <= thr2;
}

// The least-squares similarity over the matches `m` maps within thr2 (sums in match order, each
// operation rounded, as the twin's `refine`); false with fewer than two or a degenerate fit.
__device__ bool refine(const float (*pt)[VERIFY_MAX_FEATURES], int m, const Similarity& s, float thr2,
                       float max_scale2, Similarity& r) {
    float spx = 0.0f, spy = 0.0f, sqx = 0.0f, sqy = 0.0f;
    int k = 0;
    for (int i = 0; i < m; ++i) {
        if (!is_inlier(s, pt[0][i], pt[1][i], pt[2][i], pt[3][i], thr2)) continue;
        spx = __fadd_rn(spx, pt[0][i]);
        spy = __fadd_rn(spy, pt[1][i]);
        sqx = __fadd_rn(sqx, pt[2][i]);
        sqy = __fadd_rn(sqy, pt[3][i]);
        ++k;
    }
    if (k < 2) return false;
    const float inv = __fdiv_rn(1.0f, __int2float_rn(k));
    const float mpx = __fmul_rn(spx, inv), mpy = __fmul_rn(spy, inv), mqx = __fmul_rn(sqx, inv), mqy = __fmul_rn(sqy, inv);
    float na = 0.0f, nb = 0.0f, den = 0.0f;
    for (int i = 0; i < m; ++i) {
        if (!is_inlier(s, pt[0][i], pt[1][i], pt[2][i], pt[3][i], thr2)) continue;
        float dpx = __fsub_rn(pt[0][i], mpx), dpy = __fsub_rn(pt[1][i], mpy);
        float dqx = __fsub_rn(pt[2][i], mqx), dqy = __fsub_rn(pt[3][i], mqy);
        na = __fadd_rn(na, __fadd_rn(__fmul_rn(dpx, dqx), __fmul_rn(dpy, dqy)));
        nb = __fadd_rn(nb, __fsub_rn(__fmul_rn(dpx, dqy), __fmul_rn(dpy, dqx)));
        den = __fadd_rn(den, __fadd_rn(__fmul_rn(dpx, dpx), __fmul_rn(dpy, dpy)));
    }
    if (!(den > 1e-6f)) return false;
    r.a = __fdiv_rn(na, den);
    r.b = __fdiv_rn(nb, den);
    float s2 = __fadd_rn(__fmul_rn(r.a, r.a), __fmul_rn(r.b, r.b));
    if (!(s2 <= max_scale2) || !(__fmul_rn(s2, max_scale2) >= 1.0f)) return false;
    r.tx = __fsub_rn(mqx, __fsub_rn(__fmul_rn(r.a, mpx), __fmul_rn(r.b, mpy)));
    r.ty = __fsub_rn(mqy, __fadd_rn(__fmul_rn(r.b, mpx), __fmul_rn(r.a, mpy)));
    return true;
}

// Pair p = (pairs[2p], pairs[2p + 1]) of images whose features are rows offsets[i]..offsets[i+1]
// of desc (dim int8 each, dim % 4 == 0, rows 4-byte aligned), desc_scale and xy (2 floats).
// Writes the mutual matches' count, the best hypothesis' inliers (0 without one) and its model
// (a, b, tx, ty; zeros without one).
// allow-spill: verify_i8 one register saved across the IEEE division's slow-path call, once per hypothesis, outside the similarity and inlier loops
extern "C" __global__ void __launch_bounds__(VERIFY_THREADS)
    verify_i8(const signed char* __restrict__ desc, const float* __restrict__ desc_scale, const float* __restrict__ xy,
              const long long* __restrict__ offsets, const int* __restrict__ pairs, int dim, float min_sim,
              float ratio2, float thr2, float max_scale2, int hypotheses, unsigned long long seed,
              int* __restrict__ matches, int* __restrict__ inliers, float* __restrict__ model) {
    __shared__ int best_b[VERIFY_MAX_FEATURES];
    __shared__ unsigned long long col_best[VERIFY_MAX_FEATURES];
    __shared__ float pt[4][VERIFY_MAX_FEATURES];
    __shared__ int thread_count[VERIFY_THREADS];
    __shared__ int thread_h[VERIFY_THREADS];
    __shared__ int n_match;

    const int p = blockIdx.x;
    const int ia = pairs[2 * p], ib = pairs[2 * p + 1];
    const long long a0 = offsets[ia], b0 = offsets[ib];
    const int na = (int)(offsets[ia + 1] - a0), nb = (int)(offsets[ib + 1] - b0);
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, warps = blockDim.x / WARP_SIZE;
    const int words = dim / 4;

    for (int b = threadIdx.x; b < nb; b += blockDim.x) col_best[b] = 0ull;
    __syncthreads();

    // Row bests (with the runner-up for the ratio test) and column bests, one similarity each.
    for (int a = warp; a < na; a += warps) {
        const int* ra = reinterpret_cast<const int*>(desc + (size_t)(a0 + a) * dim);
        const float fa = desc_scale[a0 + a];
        float s1 = -INFINITY, s2 = -INFINITY;
        int b1 = -1;
        for (int b = 0; b < nb; ++b) {
            const int* rb = reinterpret_cast<const int*>(desc + (size_t)(b0 + b) * dim);
            int dot = 0;
            for (int w = lane; w < words; w += WARP_SIZE) dot = __dp4a(ra[w], rb[w], dot);
            dot = warp_sum_int(dot);
            float s = __fmul_rn(__fmul_rn(__int2float_rn(dot), fa), desc_scale[b0 + b]);
            if (s > s1) {
                s2 = s1;
                s1 = s;
                b1 = b;
            } else if (s > s2) {
                s2 = s;
            }
            if (lane == 0)
                atomicMax(&col_best[b], ((unsigned long long)sim_key(s) << 32) | (0xffffffffull - (unsigned)a));
        }
        if (lane == 0) {
            float d1 = __fsub_rn(2.0f, __fmul_rn(2.0f, s1)), d2 = __fsub_rn(2.0f, __fmul_rn(2.0f, s2));
            bool distinct = s2 == -INFINITY || d1 < __fmul_rn(ratio2, d2);
            best_b[a] = (b1 >= 0 && s1 >= min_sim && distinct) ? b1 : -1;
        }
    }
    __syncthreads();

    if (threadIdx.x == 0) {
        int m = 0;
        for (int a = 0; a < na; ++a) {
            int b = best_b[a];
            if (b < 0 || (unsigned)(col_best[b] & 0xffffffffull) != 0xffffffffu - (unsigned)a) continue;
            pt[0][m] = xy[2 * (a0 + a)];
            pt[1][m] = xy[2 * (a0 + a) + 1];
            pt[2][m] = xy[2 * (b0 + b)];
            pt[3][m] = xy[2 * (b0 + b) + 1];
            ++m;
        }
        n_match = m;
    }
    __syncthreads();
    const int m = n_match;

    // RANSAC: each thread its hypotheses, best by (inliers desc, h asc).
    int my_count = 0, my_h = -1;
    if (m >= 2) {
        // Every ordered pair once when there are no more of them than hypotheses.
        const int count = (long long)m * (m - 1) < hypotheses ? m * (m - 1) : hypotheses;
        for (int h = threadIdx.x; h < count; h += blockDim.x) {
            int i, j;
            hypothesis_pair(seed, h, m, hypotheses, i, j);
            Similarity s;
            if (!similarity_from(pt[0][i], pt[1][i], pt[0][j], pt[1][j], pt[2][i], pt[3][i], pt[2][j], pt[3][j],
                                 max_scale2, s))
                continue;
            int c = 0;
            for (int k = 0; k < m; ++k) c += is_inlier(s, pt[0][k], pt[1][k], pt[2][k], pt[3][k], thr2);
            if (c > my_count) {
                my_count = c;
                my_h = h;
            }
        }
    }
    thread_count[threadIdx.x] = my_count;
    thread_h[threadIdx.x] = my_h;
    __syncthreads();

    if (threadIdx.x == 0) {
        int best = 0, best_h = -1;
        for (int t = 0; t < blockDim.x; ++t) {
            int c = thread_count[t], h = thread_h[t];
            if (c > best || (c == best && c > 0 && h < best_h)) {
                best = c;
                best_h = h;
            }
        }
        Similarity s = {0.0f, 0.0f, 0.0f, 0.0f};
        if (best_h >= 0) {
            int i, j;
            hypothesis_pair(seed, best_h, m, hypotheses, i, j);
            similarity_from(pt[0][i], pt[1][i], pt[0][j], pt[1][j], pt[2][i], pt[3][i], pt[2][j], pt[3][j], max_scale2, s);
            // One least-squares step over the inliers: two points fix a model only to the
            // features' cell size; kept when it keeps at least as many inliers.
            Similarity r;
            if (refine(pt, m, s, thr2, max_scale2, r)) {
                int c = 0;
                for (int k = 0; k < m; ++k) c += is_inlier(r, pt[0][k], pt[1][k], pt[2][k], pt[3][k], thr2);
                if (c >= best) {
                    best = c;
                    s = r;
                }
            }
        }
        matches[p] = m;
        inliers[p] = best;
        model[4 * p] = s.a;
        model[4 * p + 1] = s.b;
        model[4 * p + 2] = s.tx;
        model[4 * p + 3] = s.ty;
    }
}
