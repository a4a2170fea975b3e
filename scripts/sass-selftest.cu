// Kernels for `scripts/sass-check.py --self-test`: each shows the SASS property its name says a
// known number of times, so the detectors (division set-ups, 64-bit division calls, cp.async
// widths and depth, ldmatrix widths, store widths, local memory, loops) are tested on code whose
// answer is known. Not part of the library: build.rs compiles only kernels/*.cu.
//
// `// expect <kernel>: <metric> <op> <value>, ...` lines are the test's expectations.
#include <stdint.h>
#include "arch.cuh"

// expect st_div_u32: int_div == 1, calls == 0, div64_calls == 0
extern "C" __global__ void st_div_u32(unsigned* out, const unsigned* in, unsigned d) {
    out[threadIdx.x] = in[threadIdx.x] / d;
}

// A quotient and a remainder by one divisor share one reciprocal; a second divisor needs its own.
// expect st_div_s32_two_divisors: int_div == 2
extern "C" __global__ void st_div_s32_two_divisors(int* out, const int* in, int d, int e) {
    int x = in[threadIdx.x];
    out[threadIdx.x] = x / d + x % d + x / e;
}

// A constant divisor is a multiply-high, no division sequence.
// expect st_div_const: int_div == 0, calls == 0
extern "C" __global__ void st_div_const(unsigned* out, const unsigned* in) { out[threadIdx.x] = in[threadIdx.x] / 7u; }

// 64-bit: an inline 32-bit path when both operands fit, else a call of the 64-bit subroutine.
// expect st_div_u64: div64_calls == 1, calls == 1, int_div == 1
extern "C" __global__ void st_div_u64(unsigned long long* out, const unsigned long long* in, unsigned long long d) {
    out[threadIdx.x] = in[threadIdx.x] / d;
}

// Float division: MUFU.RCP and a slow-path call, but no integer division.
// expect st_div_f32: int_div == 0, div64_calls == 0, calls == 1
extern "C" __global__ void st_div_f32(float* out, const float* in, float d) { out[threadIdx.x] = in[threadIdx.x] / d; }

// One division before the loop, one (by a divisor that changes) inside it.
// expect st_loop_div: int_div == 2, loop.int_div == 1, loop.nested == 0
extern "C" __global__ void st_loop_div(unsigned* out, const unsigned* in, unsigned d, int n) {
    unsigned acc = in[threadIdx.x] / d;
#pragma unroll 1
    for (int i = 0; i < n; ++i) acc += in[i] / (d + i);
    out[threadIdx.x] = acc;
}

// The main loop is the one with the FFMA work, here the inner one; the outer loop holds it.
// expect st_nested: loop.ffma_share > 0, loop.nested == 0, loop.ldg >= 1, loop.copies == 1
extern "C" __global__ void st_nested(float* out, const float* in, int n, int m) {
    float acc = 0.0f;
#pragma unroll 1
    for (int j = 0; j < m; ++j) {
#pragma unroll 1
        for (int i = 0; i < n; ++i) acc = fmaf(in[i + j], acc, 1.0f);
        out[j] = acc;
    }
}

// The same FFMA loop twice behind a run-time switch, the second with a load more: two copies.
// expect st_copies: loop.copies == 2, loop.ffma_share > 0
extern "C" __global__ void st_copies(float* out, const float* in, int n, int mode) {
    float acc = 0.0f;
    if (mode) {
#pragma unroll 1
        for (int i = 0; i < n; ++i) acc = fmaf(in[i], acc, 1.0f);
    } else {
#pragma unroll 1
        for (int i = 0; i < n; ++i) acc = fmaf(in[i], acc, in[i + n]);
    }
    out[threadIdx.x] = acc;
}

// One global store of each width.
// expect st_stores: stg_1 == 1, stg_2 == 1, stg_4 == 1, stg_8 == 1, stg_16 == 1
extern "C" __global__ void st_stores(uint8_t* b1, uint16_t* b2, uint32_t* b4, uint2* b8, uint4* b16) {
    int t = threadIdx.x;
    b1[t] = (uint8_t)t;
    b2[t] = (uint16_t)t;
    b4[t] = (uint32_t)t;
    b8[t] = make_uint2(t, t);
    b16[t] = make_uint4(t, t, t, t);
}

// A three-stage cp.async pipeline of 16-byte copies (waits for all but one group), plus one
// 4-byte copy; the 4-byte form has no wrapper in arch.cuh because no kernel may use it.
// expect st_cp_async: cp_async_16 >= 2, cp_async_4 == 1, cp_async_8 == 0, stages == 3, loop.cp_async >= 1
extern "C" __global__ void st_cp_async(float* out, const float4* in, const float* one, int steps) {
    __shared__ __align__(16) float4 stage[3][128];
    __shared__ float single;
    int t = threadIdx.x;
    cp_async_16(&stage[0][t], &in[t]);
    cp_async_commit();
    cp_async_16(&stage[1][t], &in[128 + t]);
    cp_async_commit();
    float acc = 0.0f;
#pragma unroll 1
    for (int s = 0; s < steps; ++s) {
        cp_async_16(&stage[(s + 2) % 3][t], &in[(s + 2) * 128 + t]);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        acc += stage[s % 3][t].x;
        __syncthreads();
    }
    if (t == 0)
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_addr(&single)), "l"(one));
    cp_async_wait<0>();
    __syncthreads();
    out[t] = acc + single;
}

// ldmatrix of each width and mma on tensor cores in a loop: 2 x4 (one .trans), 1 x2, 1 x1.
// expect st_ldmatrix_mma: ldmatrix_x4 == 2, ldmatrix_x2 == 1, ldmatrix_x1 == 1, hmma == 2, loop.tensor_share > 0, loop.ldsm == 4
extern "C" __global__ void st_ldmatrix_mma(float* out, int steps) {
    __shared__ __align__(16) __nv_bfloat16 tile[32][8];
    int lane = threadIdx.x % 32;
    for (int c = 0; c < 8; ++c) tile[lane][c] = __float2bfloat16((float)(lane + c));
    __syncthreads();
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 1
    for (int s = 0; s < steps; ++s) {
        uint32_t a[4], at[4], b[2], one;
        ldmatrix_x4(a, &tile[lane][0]);
        ldmatrix_x4_trans(at, &tile[lane][0]);
        ldmatrix_x2(b, &tile[lane % 16][0]);
        asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(one) : "r"(smem_addr(&tile[lane % 8][0])));
        b[1] ^= one;
        mma_m16n8k16_bf16(acc, a, b, acc);
        mma_m16n8k16_bf16(acc, at, b, acc);
    }
    for (int q = 0; q < 4; ++q) out[threadIdx.x * 4 + q] = acc[q];
}

// A per-thread array indexed at run time lives in local memory.
// expect st_local: local_bytes >= 256, local_ops >= 2
extern "C" __global__ void st_local(float* out, const float* in, const int* idx, int n) {
    float v[64];
    for (int i = 0; i < 64; ++i) v[i] = in[i * 32 + threadIdx.x];
#pragma unroll 1
    for (int j = 0; j < n; ++j) v[idx[j] & 63] += 1.0f;
    out[threadIdx.x] = v[idx[n] & 63];
}
