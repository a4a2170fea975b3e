// The method's per-step decisions on the device, with the CPU twin's exact arithmetic (one
// thread per decision, sums in the same order, no fused multiply-add), so every backend makes
// the same integer choices:
//
// batch_select: mini-batch selection (spec 4.5.1). Anchor a keeps neighbour j when its no-DA
// similarity s_j = g_a . g_j passes the rule: s_j >= t (fixed) or s_j / max_j s_j >= t (dynamic).
//
// mining_score: the query-set score of each candidate in iterative mining (spec 4.5.3) from its
// similarity row to the query set: avg = sum_{s >= th} s / (count + 1e-6) or max = max over the
// row with s < th counted as 0; candidates already chosen score 0 with count 0.
#include "common.cuh"

// Dot product in index order, each product rounded before it is added (as the twin's f32 sum).
__device__ __forceinline__ float dot_in_order(const float* __restrict__ x, const float* __restrict__ y, int d) {
    float acc = 0.0f;
    for (int i = 0; i < d; ++i) acc = __fadd_rn(acc, __fmul_rn(x[i], y[i]));
    return acc;
}

#define SELECT_MAX_K 256

// keep[a * k + j] = 1 when anchor a keeps neighbour j. g holds the batch's no-DA features
// (rows by batch position); anchor_pos[a] and neighbor_pos[a * k + j] are positions in it.
extern "C" __global__ void batch_select_f32(const float* __restrict__ g, int d, const long long* __restrict__ anchor_pos,
                                            const long long* __restrict__ neighbor_pos, int anchors, int k,
                                            int dynamic, float thresh, int* __restrict__ keep) {
    int a = blockIdx.x * blockDim.x + threadIdx.x;
    if (a >= anchors) return;
    const float* ga = g + (size_t)anchor_pos[a] * d;
    float s[SELECT_MAX_K];
    float best = -INFINITY;
    for (int j = 0; j < k; ++j) {
        s[j] = dot_in_order(ga, g + (size_t)neighbor_pos[(size_t)a * k + j] * d, d);
        best = fmaxf(best, s[j]);
    }
    for (int j = 0; j < k; ++j) keep[(size_t)a * k + j] = dynamic ? (s[j] / best >= thresh) : (s[j] >= thresh);
}

// score[r], num[r] of candidate r from its row of the nc x nq similarity block S.
extern "C" __global__ void mining_score_f32(const float* __restrict__ S, int nc, int nq,
                                            const int* __restrict__ chosen, int use_max, float th,
                                            float* __restrict__ score, int* __restrict__ num) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= nc) return;
    const float* row = S + (size_t)r * nq;
    float acc = 0.0f;
    int cnt = 0;
    for (int j = 0; j < nq; ++j) {
        float v = row[j];
        bool in = v >= th;
        cnt += in;
        if (use_max) {
            acc = fmaxf(acc, in ? v : 0.0f);
        } else if (in) {
            acc = __fadd_rn(acc, v);
        }
    }
    if (chosen[r]) {
        score[r] = 0.0f;
        num[r] = 0;
    } else {
        score[r] = use_max ? acc : __fdiv_rn(acc, __fadd_rn((float)cnt, 1e-6f));
        num[r] = cnt;
    }
}
