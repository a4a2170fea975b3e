// Vectors of VEC consecutive elements of a row, widened to f32 on load and rounded on store, in one
// 16-byte (or 8-byte) access when VEC elements are that wide (kernels/arch.cuh's wrappers, which the
// emulator counts as one access and checks for alignment), else one element. VEC * sizeof(T) is 16,
// 8 or sizeof(T); the pointer is aligned to it.
#pragma once
#include "arch.cuh"
#include "common.cuh"

__device__ __forceinline__ void unpack_bf16x2(uint32_t w, float& lo, float& hi) {
    lo = __uint_as_float(w << 16);
    hi = __uint_as_float(w & 0xffff0000u);
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    return (uint32_t)__bfloat16_as_ushort(__float2bfloat16(lo)) |
           ((uint32_t)__bfloat16_as_ushort(__float2bfloat16(hi)) << 16);
}

template <int VEC>
__device__ __forceinline__ void load_vec(const float* __restrict__ p, float (&v)[VEC]) {
    if constexpr (VEC == 4) {
        uint4 u = ld_global_v4(p);
        v[0] = __uint_as_float(u.x), v[1] = __uint_as_float(u.y), v[2] = __uint_as_float(u.z),
        v[3] = __uint_as_float(u.w);
    } else if constexpr (VEC == 2) {
        uint2 u = ld_global_v2(p);
        v[0] = __uint_as_float(u.x), v[1] = __uint_as_float(u.y);
    } else {
        static_assert(VEC == 1, "f32 vectors are 1, 2 or 4 wide");
        v[0] = *p;
    }
}

template <int VEC>
__device__ __forceinline__ void load_vec(const __nv_bfloat16* __restrict__ p, float (&v)[VEC]) {
    if constexpr (VEC == 8) {
        uint4 u = ld_global_v4(p);
        unpack_bf16x2(u.x, v[0], v[1]), unpack_bf16x2(u.y, v[2], v[3]);
        unpack_bf16x2(u.z, v[4], v[5]), unpack_bf16x2(u.w, v[6], v[7]);
    } else if constexpr (VEC == 4) {
        uint2 u = ld_global_v2(p);
        unpack_bf16x2(u.x, v[0], v[1]), unpack_bf16x2(u.y, v[2], v[3]);
    } else {
        static_assert(VEC == 1, "bf16 vectors are 1, 4 or 8 wide");
        v[0] = __bfloat162float(*p);
    }
}

template <int VEC>
__device__ __forceinline__ void store_vec(float* __restrict__ p, const float (&v)[VEC]) {
    if constexpr (VEC == 4) {
        st_global_v4(p, make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]),
                                   __float_as_uint(v[3])));
    } else if constexpr (VEC == 2) {
        st_global_v2(p, make_uint2(__float_as_uint(v[0]), __float_as_uint(v[1])));
    } else {
        *p = v[0];
    }
}

template <int VEC>
__device__ __forceinline__ void store_vec(__nv_bfloat16* __restrict__ p, const float (&v)[VEC]) {
    if constexpr (VEC == 8) {
        st_global_v4(p, make_uint4(pack_bf16x2(v[0], v[1]), pack_bf16x2(v[2], v[3]), pack_bf16x2(v[4], v[5]),
                                   pack_bf16x2(v[6], v[7])));
    } else if constexpr (VEC == 4) {
        st_global_v2(p, make_uint2(pack_bf16x2(v[0], v[1]), pack_bf16x2(v[2], v[3])));
    } else {
        *p = __float2bfloat16(v[0]);
    }
}

// Runs CALL (a statement using the constant VEC) with VEC the vector width `vec` names for storage
// type T: 16 bytes, 8 bytes or one element (what the launcher found that the rows allow).
#define DISPATCH_VEC(T, vec, ...)                                 \
    do {                                                          \
        if ((vec) == 16 / (int)sizeof(T)) {                       \
            constexpr int VEC = 16 / (int)sizeof(T);              \
            __VA_ARGS__;                                          \
        } else if ((vec) == 8 / (int)sizeof(T)) {                 \
            constexpr int VEC = 8 / (int)sizeof(T);               \
            __VA_ARGS__;                                          \
        } else {                                                  \
            constexpr int VEC = 1;                                \
            __VA_ARGS__;                                          \
        }                                                         \
    } while (0)
