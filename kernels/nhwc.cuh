// NCHW -> NHWC through shared-memory tiles: the channels-last kernels' transposes (conv.cu,
// conv2d_to_nhwc_*) and BatchNorm's passes whose output's one reader reads it channels-last
// (norm.cu: batchnorm_fwd_train_nhwc_*, y for the convolution after it; batchnorm_bwd_nhwc_*, dx
// for the one before it). A `Map` gives each value as it enters the tile:
//   NhwcCopy moves the bits unchanged;
//   norm.cu's maps compute it from its channel's `Map::Channel` (a few floats a channel, in
//   global memory for the image's statistics group at `map.channels`), which the block first
//   copies for its channels into shared memory, word by word (coalesced, no bank conflict), and
//   with PAIRED also from the same element of a second NCHW tensor (`src2`: dy beside x).
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
    static constexpr bool COPY = true, PAIRED = false;
    struct Channel {};
    const Channel* channels = nullptr;
    __device__ __forceinline__ float operator()(const Channel&, float v) const { return v; }
};

// The block's `count` channel maps from `map.channels + c0` into `staged`, a word a thread
// (nothing for a copy); then a barrier.
template <typename Map>
__device__ __forceinline__ void stage_channels(const Map& map, typename Map::Channel* staged, int c0, int count) {
    if constexpr (!Map::COPY) {
        static_assert(sizeof(typename Map::Channel) % 4 == 0, "channel maps are whole words");
        const float* from = reinterpret_cast<const float*>(map.channels + c0);
        float* to = reinterpret_cast<float*>(staged);
        const int words = count * (int)(sizeof(typename Map::Channel) / 4);
        for (int i = threadIdx.x; i < words; i += blockDim.x) to[i] = from[i];
        __syncthreads();
    }
}

// One value through `map` with channel map `ch`, with the second tensor's value (PAIRED) or not.
template <typename Map>
__device__ __forceinline__ float map_value(const Map& map, const typename Map::Channel& ch, float v, float v2) {
    if constexpr (Map::PAIRED)
        return map(ch, v, v2);
    else
        return map(ch, v);
}

// Two bf16 values (a word) through `map`, the second tensor's word beside them.
template <typename Map>
__device__ __forceinline__ uint32_t map_bf16x2(const Map& map, const typename Map::Channel& ch, uint32_t w,
                                               uint32_t w2) {
    float lo, hi, lo2 = 0.0f, hi2 = 0.0f;
    unpack_bf16x2(w, lo, hi);
    if constexpr (Map::PAIRED) unpack_bf16x2(w2, lo2, hi2);
    return pack_bf16x2(map_value(map, ch, lo, lo2), map_value(map, ch, hi, hi2));
}

// bf16: a block moves a 64 x 64 tile, reading along NCHW rows (16-byte loads when every row starts
// 16-byte aligned, pixels % 8 == 0; else 2 bytes a lane, still consecutive lanes along a row) and
// writing 16-byte chunks of 8 channels, 8 lanes along a pixel's channels. The tile's 16-byte chunks
// are XOR-permuted within each 128-byte row by the row's group of 8 channels, so that both the
// row-wise stores and the column-wise 2-byte reads (8 lanes on 8 channel groups, 4 neighbouring
// pixels each) fall on distinct banks. Grid: (pixels / 64, padded / 64, planes), 256 threads.
__device__ __forceinline__ int nhwc_tile_at(int c, int p) {
    return c * 64 + ((((p >> 3) ^ (c >> 3)) & 7) << 3) + (p & 7);
}

template <typename Map>
__device__ __forceinline__ void nhwc_tile_bf16(const __nv_bfloat16* __restrict__ src, __nv_bfloat16* __restrict__ dst,
                                               int channels, int pixels, int flip, int padded, const Map& map,
                                               const __nv_bfloat16* __restrict__ src2 = nullptr) {
    __shared__ __align__(16) unsigned short tile[64 * 64];
    __shared__ typename Map::Channel staged[Map::COPY ? 1 : 64];
    src += (long long)blockIdx.z * channels * pixels;
    dst += (long long)blockIdx.z * padded * pixels;
    if constexpr (Map::PAIRED) src2 += (long long)blockIdx.z * channels * pixels;
    const int c0 = blockIdx.y * 64, p0 = blockIdx.x * 64;
    stage_channels(map, staged, c0, min(64, channels - c0));
    if (pixels % 8 == 0) {
        for (int q = threadIdx.x; q < 64 * 8; q += 256) {
            const int cl = q >> 3, pl = (q & 7) << 3, c = c0 + cl, p = p0 + pl;
            if (c >= padded || p >= pixels) continue;
            uint4 v = make_uint4(0, 0, 0, 0);
            if (c < channels) {
                v = ld_global_v4(src + (long long)c * pixels + p);
                if constexpr (!Map::COPY) {
                    const uint4 g = Map::PAIRED ? ld_global_v4(src2 + (long long)c * pixels + p) : uint4{};
                    const auto& ch = staged[cl];
                    v = make_uint4(map_bf16x2(map, ch, v.x, g.x), map_bf16x2(map, ch, v.y, g.y),
                                   map_bf16x2(map, ch, v.z, g.z), map_bf16x2(map, ch, v.w, g.w));
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
                const long long at = (long long)c * pixels + p;
                b = reinterpret_cast<const unsigned short*>(src)[at];
                if constexpr (!Map::COPY) {
                    const float g = Map::PAIRED ? __bfloat162float(src2[at]) : 0.0f;
                    const float v = map_value(map, staged[cl], __uint_as_float((uint32_t)b << 16), g);
                    b = __bfloat16_as_ushort(__float2bfloat16(v));
                }
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
                                              int pixels, int flip, int padded, const Map& map,
                                              const float* __restrict__ src2 = nullptr) {
    __shared__ float tile[32][33];
    __shared__ typename Map::Channel staged[Map::COPY ? 1 : 32];
    src += (long long)blockIdx.z * channels * pixels;
    dst += (long long)blockIdx.z * padded * pixels;
    if constexpr (Map::PAIRED) src2 += (long long)blockIdx.z * channels * pixels;
    const int c0 = blockIdx.y * 32, p0 = blockIdx.x * 32, tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
    stage_channels(map, staged, c0, min(32, channels - c0));
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int cl = ty + 8 * i, c = c0 + cl, p = p0 + tx;
        if (p >= pixels) continue;
        float v = 0.0f;
        if (c < channels) {
            const long long at = (long long)c * pixels + p;
            if constexpr (Map::COPY)
                v = src[at];
            else
                v = map_value(map, staged[cl], src[at], Map::PAIRED ? src2[at] : 0.0f);
        }
        tile[cl][tx] = v;
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
