// Elementwise ops: the residual add and standalone activations, forward and backward.
//
//   add_fwd:  y = a + b
//   act_fwd:  y = act(x)                    act: 0 identity, 1 ReLU, 2 ReLU6
//   act_bwd:  dx = dy * act'(y)             the mask read from the forward output
//   image_to_tensor_u8:  out[i][c][p] = (rgb[i][p][c] / 255 - mean[c]) / std[c]
//                        (ToTensor + Normalize: decoded bytes in, the network's NCHW input out,
//                        f32 or, as `_bf16`, rounded to a bf16 network's input type)
//   cast_f32:  y = bf16(x), nearest even      cast_bf16:  y = float(x)
//              (a bf16 network's input, its master weights' working copy, GeM's output to the
//              f32 head and the head's gradient back)
//
// Bound by memory: 12 bytes per element for add and act_bwd, 8 for act_fwd (f32), 5 (3 in bf16) for
// image_to_tensor (whose point is the upload: 1 byte a value crosses the bus, not 4). One thread per
// element in a grid-stride loop (image_to_tensor: per 16 bytes written); the launcher caps the grid
// so a thread handles a few.
// Written once over the storage type; entry points per dtype at the end.
#include "vec.cuh"

// y may be a (in place: conv.rs adds a data gradient onto what dx holds this way), so neither is
// __restrict__; each element is read before it is written, by the same thread.
template <typename T>
__device__ void add_fwd(const T* a, const T* __restrict__ b, T* y, size_t n) {
    GRID_STRIDE(i, n) y[i] = store<T>(load(a[i]) + load(b[i]));
}

template <typename T>
__device__ void act_fwd(const T* __restrict__ x, T* __restrict__ y, size_t n, int act) {
    GRID_STRIDE(i, n) y[i] = store<T>(act_apply(act, load(x[i])));
}

template <typename T>
__device__ void act_bwd(const T* __restrict__ y, const T* __restrict__ dy, T* __restrict__ dx, size_t n, int act) {
    GRID_STRIDE(i, n) dx[i] = store<T>(load(dy[i]) * act_grad(act, load(y[i])));
}

#define ELTWISE_ENTRY_POINTS(T, SUFFIX)                                                                         \
    extern "C" __global__ void add_fwd_##SUFFIX(const T* a, const T* __restrict__ b, T* y, long long n) {       \
        add_fwd(a, b, y, (size_t)n);                                                                            \
    }                                                                                                           \
    extern "C" __global__ void act_fwd_##SUFFIX(const T* __restrict__ x, T* __restrict__ y, long long n,        \
                                                int act) {                                                      \
        act_fwd(x, y, (size_t)n, act);                                                                          \
    }                                                                                                           \
    extern "C" __global__ void act_bwd_##SUFFIX(const T* __restrict__ y, const T* __restrict__ dy,              \
                                                T* __restrict__ dx, long long n, int act) {                     \
        act_bwd(y, dy, dx, (size_t)n, act);                                                                     \
    }

// ToTensor + Normalize. Each of the 768 (channel, byte) results is computed once a block, rounded
// op by op as the CPU twin (and torchvision in f32), into a shared table: a value then costs a byte
// extract and a shared load where the element formula took two IEEE divisions, and the old
// element-a-thread kernel its index's divisions too (~145 instructions an element against the ~35
// its 5 bytes allow at an H200's DRAM rate). A thread takes PIX pixels of an image (PIX = 16 bytes
// of T: 4 f32, 8 bf16): their 3 PIX bytes as three 4- or 8-byte words, each channel's PIX values one
// 16-byte store; bf16 is the f32 value rounded, as a cast after it rounds. An image whose pixel
// count is not a multiple of PIX goes a pixel at a time (its planes then do not start 16-byte
// aligned). blockIdx.y walks the images, the x blocks an image's groups.
template <typename T>
__device__ void image_to_tensor(const unsigned char* __restrict__ rgb, T* __restrict__ out, int n, int hw,
                                float mean0, float mean1, float mean2, float std0, float std1, float std2) {
    __shared__ float table[3 * 256];
    for (int i = threadIdx.x; i < 3 * 256; i += blockDim.x) {
        const int c = i >> 8;
        const float mean = c == 0 ? mean0 : (c == 1 ? mean1 : mean2);
        const float sd = c == 0 ? std0 : (c == 1 ? std1 : std2);
        table[i] = __fdiv_rn(__fsub_rn(__fdiv_rn((float)(i & 255), 255.0f), mean), sd);
    }
    __syncthreads();
    constexpr int PIX = 16 / (int)sizeof(T);  // a word holds PIX bytes: 3 words a group
    const int first = blockIdx.x * blockDim.x + threadIdx.x, stride = gridDim.x * blockDim.x;
    for (int img = blockIdx.y; img < n; img += gridDim.y) {
        const unsigned char* src = rgb + (size_t)img * hw * 3;
        T* dst = out + (size_t)img * 3 * hw;
        if (hw % PIX == 0) {
            for (int g = first; g < hw / PIX; g += stride) {
                uint32_t w[3 * PIX / 4];
                if constexpr (PIX == 4) {
                    const uint32_t* words = reinterpret_cast<const uint32_t*>(src) + 3 * g;
                    w[0] = words[0], w[1] = words[1], w[2] = words[2];
                } else {
#pragma unroll
                    for (int k = 0; k < 3; ++k) {
                        const uint2 u = ld_global_v2(src + (size_t)(3 * g + k) * 8);
                        w[2 * k] = u.x, w[2 * k + 1] = u.y;
                    }
                }
                // Byte b of the group is pixel b / 3's channel b % 3.
                float v[3][PIX];
#pragma unroll
                for (int b = 0; b < 3 * PIX; ++b) v[b % 3][b / 3] = table[(b % 3) * 256 + ((w[b / 4] >> (8 * (b % 4))) & 255u)];
#pragma unroll
                for (int c = 0; c < 3; ++c) store_vec<PIX>(dst + (size_t)c * hw + (size_t)g * PIX, v[c]);
            }
        } else {
            // Not unrolled: its trip count would take a division by the stride.
#pragma unroll 1
            for (int p = first; p < hw; p += stride)
#pragma unroll
                for (int c = 0; c < 3; ++c) dst[(size_t)c * hw + p] = store<T>(table[c * 256 + src[(size_t)p * 3 + c]]);
        }
    }
}

// Named after the bytes they read; the suffix is the tensor written (f32 keeps the op's name).
#define IMAGE_TO_TENSOR_ENTRY_POINT(T, NAME)                                                                  \
    extern "C" __global__ void NAME(const unsigned char* __restrict__ rgb, T* __restrict__ out, int n, int hw, \
                                    float mean0, float mean1, float mean2, float std0, float std1,            \
                                    float std2) {                                                             \
        image_to_tensor(rgb, out, n, hw, mean0, mean1, mean2, std0, std1, std2);                              \
    }
IMAGE_TO_TENSOR_ENTRY_POINT(float, image_to_tensor_u8)
IMAGE_TO_TENSOR_ENTRY_POINT(__nv_bfloat16, image_to_tensor_u8_bf16)

// Named after the source type, as every kernel here is named after what it reads.
extern "C" __global__ void cast_f32(const float* __restrict__ x, __nv_bfloat16* __restrict__ y, long long n) {
    GRID_STRIDE(i, (size_t)n) y[i] = __float2bfloat16_rn(x[i]);
}

extern "C" __global__ void cast_bf16(const __nv_bfloat16* __restrict__ x, float* __restrict__ y, long long n) {
    GRID_STRIDE(i, (size_t)n) y[i] = __bfloat162float(x[i]);
}

ELTWISE_ENTRY_POINTS(float, f32)
ELTWISE_ENTRY_POINTS(__nv_bfloat16, bf16)
