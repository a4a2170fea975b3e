// NCHW -> NHWC through shared-memory tiles: the channels-last kernels' transposes (conv.cu,
// conv2d_to_nhwc_*) and BatchNorm's apply pass where its output's one consumer reads it
// channels-last (norm.cu, batchnorm_fwd_train_nhwc_*). A `Map` gives each value as it enters the
// tile, a channel at a time (`map.at(c)`): NhwcCopy moves the bits unchanged; norm.cu's BnApplyMap
// is BatchNorm's affine map and activation.
//
// dst[img][p'][c] = map(c, src[img][c][p]) for each of gridDim.z planes of `channels` x `pixels`.
// flip > 1 reverses p within each group of `flip` (p' = the group's last index - p's place in it):
// the data gradient's W' from W seen as one c_out x (c_in*kh*kw) plane. dst's rows hold `padded`
// >= channels values, the ones past `channels` zeros (never mapped), so that the channels-last
// kernels take any channel count.
#pragma once
#include "arch.cuh"
#include "common.cuh"
#include "vec.cuh"

struct NhwcCopy {
    static constexpr bool COPY = true;
    struct Channel {
        __device__ __forceinline__ float operator()(float v) const { return v; }
    };
    __device__ __forceinline__ Channel at(int) const { return Channel{}; }
};

// bf16: a block moves a 64 x 64 tile, reading along NCHW rows (16-byte loads when every row starts
// 16-byte aligned, pixels % 8 == 0; else 2 bytes a lane, still consecutive lanes along a row) and
// writing 16-byte chunks of 8 channels, 8 lanes along a pixel's channels. The tile's 16-byte chunks
// are XOR-permuted within each 128-byte row by the row's group of 8 channels, so that both the
// row-wise stores and the column-wise 2-byte reads (8 lanes on 8 channel groups, 4 neighbouring
// pixels each) fall on distinct banks. Grid: (pixels / 64, padded / 64, planes), 256 threads.
__device__ __forceinline__ int nhwc_tile_at(int c, int p) {
    return c * 64 + ((((p >> 3) ^ (c >> 3)) & 7) << 3) + (p & 7);
}

template <typename Channel>
__device__ __forceinline__ uint32_t map_bf16x2(const Channel& f, uint32_t w) {
    float lo, hi;
    unpack_bf16x2(w, lo, hi);
    return pack_bf16x2(f(lo), f(hi));
}

template <typename Map>
__device__ __forceinline__ void nhwc_tile_bf16(const __nv_bfloat16* __restrict__ src, __nv_bfloat16* __restrict__ dst,
                                               int channels, int pixels, int flip, int padded, const Map& map) {
    __shared__ __align__(16) unsigned short tile[64 * 64];
    src += (long long)blockIdx.z * channels * pixels;
    dst += (long long)blockIdx.z * padded * pixels;
    const int c0 = blockIdx.y * 64, p0 = blockIdx.x * 64;
    if (pixels % 8 == 0) {
        for (int q = threadIdx.x; q < 64 * 8; q += 256) {
            const int cl = q >> 3, pl = (q & 7) << 3, c = c0 + cl, p = p0 + pl;
            if (c >= padded || p >= pixels) continue;
            uint4 v = make_uint4(0, 0, 0, 0);
            if (c < channels) {
                v = ld_global_v4(src + (long long)c * pixels + p);
                if constexpr (!Map::COPY) {
                    const auto f = map.at(c);
                    v = make_uint4(map_bf16x2(f, v.x), map_bf16x2(f, v.y), map_bf16x2(f, v.z), map_bf16x2(f, v.w));
                }
            }
            st_shared_v4(tile + nhwc_tile_at(cl, pl), v);
        }
    } else {
        for (int e = threadIdx.x; e < 64 * 64; e += 256) {
            const int cl = e >> 6, pl = e & 63, c = c0 + cl, p = p0 + pl;
            if (c >= padded || p >= pixels) continue;
            unsigned short b = 0;
            if (c < channels) {
                b = reinterpret_cast<const unsigned short*>(src)[(long long)c * pixels + p];
                if constexpr (!Map::COPY)
                    b = __bfloat16_as_ushort(__float2bfloat16(map.at(c)(__uint_as_float((uint32_t)b << 16))));
            }
            tile[nhwc_tile_at(cl, pl)] = b;
        }
    }
    __syncthreads();
    for (int q = threadIdx.x; q < 64 * 8; q += 256) {
        const int pl = q >> 3, cl = (q & 7) << 3, c = c0 + cl, p = p0 + pl;
        if (c >= padded || p >= pixels) continue;
        uint32_t v[4];
#pragma unroll
        for (int j = 0; j < 4; ++j)
            v[j] = (uint32_t)tile[nhwc_tile_at(cl + 2 * j, pl)] | (uint32_t)tile[nhwc_tile_at(cl + 2 * j + 1, pl)] << 16;
        const int g = flip > 1 ? p % flip : 0, row = p - g + (flip > 1 ? flip - 1 - g : 0);
        st_global_v4(dst + (long long)row * padded + c, make_uint4(v[0], v[1], v[2], v[3]));
    }
}

// f32: a 32 x 32 tile, read along NCHW rows and written along a pixel's channels, a lane a value
// both ways (128 bytes a warp); the tile's rows padded to 33 floats so that the column-wise reads
// fall on 32 banks. `padded` a multiple of 4. Grid: (pixels / 32, padded / 32, planes), 256 threads.
template <typename Map>
__device__ __forceinline__ void nhwc_tile_f32(const float* __restrict__ src, float* __restrict__ dst, int channels,
                                              int pixels, int flip, int padded, const Map& map) {
    __shared__ float tile[32][33];
    src += (long long)blockIdx.z * channels * pixels;
    dst += (long long)blockIdx.z * padded * pixels;
    const int c0 = blockIdx.y * 32, p0 = blockIdx.x * 32, tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int c = c0 + ty + 8 * i, p = p0 + tx;
        if (p < pixels) tile[ty + 8 * i][tx] = c < channels ? map.at(c)(src[(long long)c * pixels + p]) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int p = p0 + ty + 8 * i, c = c0 + tx;
        if (p >= pixels || c >= padded) continue;
        const int g = flip > 1 ? p % flip : 0, row = p - g + (flip > 1 ? flip - 1 - g : 0);
        dst[(long long)row * padded + c] = tile[tx][ty + 8 * i];
    }
}
