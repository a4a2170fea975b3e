// The optimiser step over the parameter arena: every trainable tensor's values, gradients and
// moments are each one buffer, so a step is one launch whatever the number of tensors.
//
//   adam_f32:          torch.optim.Adam with coupled weight decay (g += wd * p before the moments)
//   sgd_f32:           torch.optim.SGD with momentum (no dampening, no Nesterov)
//   sumsq_f32:         per-block partial sums of x^2 in f64 (the global gradient norm) ...
//   sumsq_finish_f32:  ... added in block order by one block: the same total on every run
//   scale_f32:         x *= s (the clip, when the norm is over the limit)
//
// The arena keeps the two parameter groups of the original contiguous: elements [0, split) are
// weights and BN gammas (lr_w, wd_w), [split, n) biases and BN betas (lr_b, wd_b).
//
// Floors: Adam reads p, g, m, v and writes p, m, v: 28 bytes per parameter (25.6M parameters of
// ResNet-50: 0.72 GB, 0.15 ms at 4.8 TB/s); SGD 20 bytes; the norm 4. The arithmetic is rounded
// op by op (__fmul_rn / __fadd_rn forbid FMA contraction) to give the CPU twin's bits exactly.
#include "common.cuh"

#define SUMSQ_THREADS 256

extern "C" __global__ void adam_f32(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                                    float* __restrict__ v, long long n, long long split, float step_w, float wd_w,
                                    float step_b, float wd_b, float beta1, float beta2, float one_minus_beta1,
                                    float one_minus_beta2, float sqrt_bc2, float eps) {
    GRID_STRIDE(i, n) {
        bool weight = (long long)i < split;
        float step = weight ? step_w : step_b, wd = weight ? wd_w : wd_b;
        float pi = p[i];
        float gi = __fadd_rn(g[i], __fmul_rn(wd, pi));
        float mi = __fadd_rn(__fmul_rn(beta1, m[i]), __fmul_rn(one_minus_beta1, gi));
        float vi = __fadd_rn(__fmul_rn(beta2, v[i]), __fmul_rn(__fmul_rn(one_minus_beta2, gi), gi));
        float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), sqrt_bc2), eps);
        m[i] = mi;
        v[i] = vi;
        p[i] = __fadd_rn(pi, -__fdiv_rn(__fmul_rn(step, mi), denom));
    }
}

extern "C" __global__ void sgd_f32(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ buf,
                                   long long n, long long split, float lr_w, float wd_w, float lr_b, float wd_b,
                                   float momentum) {
    GRID_STRIDE(i, n) {
        bool weight = (long long)i < split;
        float lr = weight ? lr_w : lr_b, wd = weight ? wd_w : wd_b;
        float pi = p[i];
        float d = __fadd_rn(g[i], __fmul_rn(wd, pi));
        float b = __fadd_rn(__fmul_rn(momentum, buf[i]), d);
        buf[i] = b;
        p[i] = __fadd_rn(pi, -__fmul_rn(lr, b));
    }
}

// A fixed tree over SUMSQ_THREADS slots: the order of the additions depends on the launch shape
// only, never on timing.
__device__ double block_sum_f64(double s) {
    __shared__ double slots[SUMSQ_THREADS];
    slots[threadIdx.x] = s;
    __syncthreads();
    for (int half = SUMSQ_THREADS / 2; half > 0; half >>= 1) {
        if ((int)threadIdx.x < half) slots[threadIdx.x] += slots[threadIdx.x + half];
        __syncthreads();
    }
    return slots[0];
}

extern "C" __global__ void sumsq_f32(const float* __restrict__ x, long long n, double* __restrict__ partial) {
    double s = 0.0;
    GRID_STRIDE(i, n) {
        double xi = x[i];
        s += xi * xi;
    }
    s = block_sum_f64(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

extern "C" __global__ void sumsq_finish_f32(const double* __restrict__ partial, int count, double* __restrict__ total) {
    double s = 0.0;
    for (int i = threadIdx.x; i < count; i += SUMSQ_THREADS) s += partial[i];
    s = block_sum_f64(s);
    if (threadIdx.x == 0) *total = s;
}

extern "C" __global__ void scale_f32(float* __restrict__ x, long long n, float s) {
    GRID_STRIDE(i, n) x[i] = __fmul_rn(x[i], s);
}
