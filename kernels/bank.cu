// Memory-bank row moves: dst[dst_idx[t]] = src[src_idx[t]] for t < count, rows of `dim`. A bank
// write scatters a batch's features into dataset rows (the caller removes repeated destinations,
// keeping the last, as torch index assignment does); a read gathers rows into a compact block.
// Indices are checked on the host before they are uploaded. One warp per row moved, 16 bytes per
// load when both rows are aligned; a copy-bandwidth kernel.
#include "common.cuh"

template <typename T>
__device__ void copy_rows(const T* __restrict__ src, T* __restrict__ dst, const long long* __restrict__ src_idx,
                          const long long* __restrict__ dst_idx, int count, int dim) {
    int warps = blockDim.x / WARP_SIZE;
    int t = blockIdx.x * warps + threadIdx.x / WARP_SIZE;
    int lane = threadIdx.x % WARP_SIZE;
    if (t >= count) return;
    const T* s = src + (size_t)src_idx[t] * dim;
    T* d = dst + (size_t)dst_idx[t] * dim;
    constexpr int per16 = 16 / sizeof(T);
    if (dim % per16 == 0 && (reinterpret_cast<uintptr_t>(s) & 15) == 0 && (reinterpret_cast<uintptr_t>(d) & 15) == 0) {
        const uint4* s4 = reinterpret_cast<const uint4*>(s);
        uint4* d4 = reinterpret_cast<uint4*>(d);
        for (int i = lane; i < dim / per16; i += WARP_SIZE) d4[i] = s4[i];
    } else {
        for (int i = lane; i < dim; i += WARP_SIZE) d[i] = s[i];
    }
}

extern "C" __global__ void copy_rows_f32(const float* __restrict__ src, float* __restrict__ dst,
                                         const long long* __restrict__ src_idx, const long long* __restrict__ dst_idx,
                                         int count, int dim) {
    copy_rows(src, dst, src_idx, dst_idx, count, dim);
}

extern "C" __global__ void copy_rows_bf16(const __nv_bfloat16* __restrict__ src, __nv_bfloat16* __restrict__ dst,
                                          const long long* __restrict__ src_idx,
                                          const long long* __restrict__ dst_idx, int count, int dim) {
    copy_rows(src, dst, src_idx, dst_idx, count, dim);
}
