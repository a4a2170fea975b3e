// Elementwise ops: the residual add and standalone activations, forward and backward.
//
//   add_fwd:  y = a + b
//   act_fwd:  y = act(x)                    act: 0 identity, 1 ReLU, 2 ReLU6
//   act_bwd:  dx = dy * act'(y)             the mask read from the forward output
//   image_to_tensor_u8:  out[i][c][p] = (rgb[i][p][c] / 255 - mean[c]) / std[c]
//                        (ToTensor + Normalize: decoded bytes in, the network's f32 NCHW out)
//   cast_f32:  y = bf16(x), nearest even      cast_bf16:  y = float(x)
//              (a bf16 network's input, its master weights' working copy, GeM's output to the
//              f32 head and the head's gradient back)
//
// Bound by memory: 12 bytes per element for add and act_bwd, 8 for act_fwd (f32), 5 for
// image_to_tensor (whose point is the upload: 1 byte a value crosses the bus, not 4). One thread per
// element in a grid-stride loop; the launcher caps the grid so a thread handles a few elements.
// Written once over the storage type; entry points per dtype at the end.
#include "common.cuh"

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

// Rounded op by op as the CPU twin (and torchvision's ToTensor + Normalize in f32).
extern "C" __global__ void image_to_tensor_u8(const unsigned char* __restrict__ rgb, float* __restrict__ out,
                                              long long n, long long hw, float mean0, float mean1, float mean2,
                                              float std0, float std1, float std2) {
    GRID_STRIDE(i, (size_t)n * 3 * hw) {
        size_t img = i / (3 * (size_t)hw), p = i % (size_t)hw;
        int c = (int)((i / (size_t)hw) % 3);
        float mean = c == 0 ? mean0 : (c == 1 ? mean1 : mean2);
        float sd = c == 0 ? std0 : (c == 1 ? std1 : std2);
        float v = __fdiv_rn((float)rgb[(img * hw + p) * 3 + c], 255.0f);
        out[i] = __fdiv_rn(__fsub_rn(v, mean), sd);
    }
}

// Named after the source type, as every kernel here is named after what it reads.
extern "C" __global__ void cast_f32(const float* __restrict__ x, __nv_bfloat16* __restrict__ y, long long n) {
    GRID_STRIDE(i, (size_t)n) y[i] = __float2bfloat16_rn(x[i]);
}

extern "C" __global__ void cast_bf16(const __nv_bfloat16* __restrict__ x, float* __restrict__ y, long long n) {
    GRID_STRIDE(i, (size_t)n) y[i] = __bfloat162float(x[i]);
}

ELTWISE_ENTRY_POINTS(float, f32)
ELTWISE_ENTRY_POINTS(__nv_bfloat16, bf16)
