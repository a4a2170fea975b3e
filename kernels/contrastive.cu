// InsCLR's contrastive loss (spec 4.6) over a similarity block S (n1 x n2), value and gradient
// in one pass:
//
//   L = (1/n) sum_i [ sum_{j: y2j == y1i, S_ij < pos_th} (1 - S_ij) + sum_{j: y2j != y1i, S_ij > m} S_ij ]
//   dL/dS_ij = -1/n on the active positives, +1/n on the active negatives, 0 elsewhere
//
// n = the rows kept: every row in batch mode, rows with y1 > 0 in memory mode (dropped rows get
// a zero gradient). The negative term is S, not S - m (trap G10). One block per row; each row
// writes its loss sum and active pair counts (stats[i] = {loss, positives, negatives}), which
// the caller adds up in a fixed order, so only 3 * n1 floats leave the device.
#include "common.cuh"

#define CONTRASTIVE_THREADS 256

extern "C" __global__ void __launch_bounds__(CONTRASTIVE_THREADS)
    contrastive_f32(const float* __restrict__ S, const long long* __restrict__ y1, const long long* __restrict__ y2,
                    int n2, float margin, float pos_th, int memory, float inv_rows, float* __restrict__ grad,
                    float* __restrict__ stats) {
    __shared__ double part_loss[CONTRASTIVE_THREADS / 32];
    __shared__ int part_pos[CONTRASTIVE_THREADS / 32];
    __shared__ int part_neg[CONTRASTIVE_THREADS / 32];
    const size_t i = blockIdx.x;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const long long yi = y1[i];
    const bool keep = !memory || yi > 0;
    const float* s = S + i * n2;
    float* g = grad ? grad + i * n2 : nullptr;
    double loss = 0.0;  // a row of a 100k bank sums ~100k terms: f64 keeps the sum exact enough
    int npos = 0, nneg = 0;
    for (int j = tid; j < n2; j += CONTRASTIVE_THREADS) {
        float sij = s[j], gij = 0.0f;
        if (keep) {
            if (y2[j] == yi) {
                if (sij < pos_th) {
                    loss += 1.0 - (double)sij;
                    ++npos;
                    gij = -inv_rows;
                }
            } else if (sij > margin) {
                loss += (double)sij;
                ++nneg;
                gij = inv_rows;
            }
        }
        if (g) g[j] = gij;
    }
    for (int off = 16; off > 0; off >>= 1) {
        loss += __shfl_xor_sync(0xffffffffu, loss, off);
        npos += __shfl_xor_sync(0xffffffffu, npos, off);
        nneg += __shfl_xor_sync(0xffffffffu, nneg, off);
    }
    if (lane == 0) {
        part_loss[warp] = loss;
        part_pos[warp] = npos;
        part_neg[warp] = nneg;
    }
    __syncthreads();
    if (tid == 0) {
        double l = 0.0;
        int p = 0, q = 0;
        for (int w = 0; w < CONTRASTIVE_THREADS / 32; ++w) l += part_loss[w], p += part_pos[w], q += part_neg[w];
        stats[3 * i] = (float)l;
        stats[3 * i + 1] = (float)p;
        stats[3 * i + 2] = (float)q;
    }
}
