// The emulated device: what our kernels use of CUDA C++, written for the host C++ compiler.
//
// build.rs compiles every kernels/<family>.cu a second time with g++ and this header forced in
// first (`-include emu/emu.cuh`), then links the result into the crate as the `emu` device.
// Execution (emu/runtime.cpp): blocks run one after another in a seeded random order; the
// threads of a block are fibers that run until they reach a barrier or a warp collective, in a
// seeded random order between those points. Shared memory and device allocations start poisoned
// (0xFF bytes: NaN as f32, -1 as int), so a missing barrier or a read of unwritten memory shows up
// as a wrong result. A launch that would hang on a GPU (threads at a barrier while others wait in
// a warp collective, a collective whose lanes never all arrive) is an error naming the waiting
// threads. (__syncthreads calls at different places in the code are not told apart.)
//
// Two declarations are rewritten by build.rs before compiling (it reads the preprocessed file):
// `__global__` marks kernels (an `extern "C" __global__ void name(...)` is registered under its
// name), and every `__shared__ T name[...];` becomes a per-block allocation from the runtime,
// fresh and poisoned for each block, so AddressSanitizer sees its bounds. `__shared__` must
// therefore be declared inside a function, one variable per declaration. Each .cu's own code is
// compiled in a namespace of its family, so helpers of one name in two families stay apart.
//
// What differs from a GPU on purpose: atomics and memory fences need no hardware ordering (one
// OS thread runs a launch), `__activemask()` is every lane of the warp that has not exited, and a
// spin-wait must call `__nanosleep` (the only voluntary yield). Nothing here says anything about
// speed.
#pragma once

#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>
#include <utility>

#define INSCLR_EMU 1
#define __CUDA_ARCH__ 900

#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Markers left for build.rs's rewrite of the preprocessed source (never defined as macros).
#define __global__ INSCLR_EMU_GLOBAL
#define __shared__ INSCLR_EMU_SHARED

// ---- built-in vector types and coordinates -------------------------------------------------

struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};

#define INSCLR_EMU_VEC2(name, T, align)                                                       \
    struct __attribute__((aligned(align))) name { T x, y; };                                    \
    inline name make_##name(T x, T y) { return name{x, y}; }
#define INSCLR_EMU_VEC4(name, T, align)                                                       \
    struct __attribute__((aligned(align))) name { T x, y, z, w; };                              \
    inline name make_##name(T x, T y, T z, T w) { return name{x, y, z, w}; }
INSCLR_EMU_VEC2(float2, float, 8)
INSCLR_EMU_VEC4(float4, float, 16)
INSCLR_EMU_VEC2(int2, int, 8)
INSCLR_EMU_VEC4(int4, int, 16)
INSCLR_EMU_VEC2(uint2, unsigned int, 8)
INSCLR_EMU_VEC4(uint4, unsigned int, 16)
INSCLR_EMU_VEC2(double2, double, 16)
INSCLR_EMU_VEC2(ushort2, unsigned short, 4)
#undef INSCLR_EMU_VEC2
#undef INSCLR_EMU_VEC4

namespace insclr_emu {

// Where the running fiber is: set by the runtime before it resumes a fiber.
struct Coords {
    uint3 thread_idx;
    uint3 block_idx;
    dim3 block_dim;
    dim3 grid_dim;
    unsigned int lane;
};
// The emulated kernels are linked into executables, so thread-locals can use the initial-exec
// model: a plain %fs-relative load instead of a call per access (threadIdx is read constantly).
#define INSCLR_EMU_TLS thread_local __attribute__((tls_model("initial-exec")))
extern INSCLR_EMU_TLS const Coords* current;

// Stops the launch with an error (the way a trap or a hang would stop a GPU), naming the thread.
[[noreturn]] void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// Block barrier; `op` 0 plain, 1 count, 2 and, 3 or of `pred` over the block.
int block_barrier(int op, int pred);

// A warp collective: every lane named in `mask` calls it with the same `op`; the last to arrive
// runs `op->combine` over all lanes' data (each lane's inputs and outputs, on its own stack),
// then all continue. `name` is for errors.
struct Collective {
    const char* name;
    void (*combine)(void* const* lane_data, unsigned int mask);
};
void warp_collective(unsigned int mask, const Collective* op, void* lane_data);
unsigned int live_lanes();   // lanes of the caller's warp that exist and have not exited
void yield();                // lets the other threads of the block run (spin-waits)
unsigned long long clock_ticks();

// Per-block shared memory: the same pointer for every thread of a block, fresh and poisoned for
// each block. `key` is the address of a static that identifies the declaration; `name` is the
// variable's, for the race checker's reports.
void* block_shared(const void* key, size_t bytes, size_t align, const char* name);
void* dynamic_shared();     // the launch's dynamic shared memory for the current block

// What the race checker and the memory counters record of an access (runtime.cpp). Plain loads
// and stores reach them through the compiler's hooks; the wrappers of arch.cuh say what they do
// explicitly, with the kernel's code address `pc` as the site.
enum AccessOp : unsigned int { OP_LOAD, OP_STORE, OP_LDMATRIX_X1, OP_LDMATRIX_X2, OP_LDMATRIX_X4, OP_CP_ASYNC, OP_MMA };
void lane_access(const void* p, unsigned int bytes, bool write, unsigned int op, const void* pc);
void count_mma(const void* pc);
void vector_load(void* to, const void* from, unsigned int bytes);
void vector_store(void* to, const void* from, unsigned int bytes);

// Lane-to-lane data movement behind the __shfl_*_sync family; PTX shfl semantics.
enum ShflKind { SHFL_IDX, SHFL_UP, SHFL_DOWN, SHFL_XOR };
template <typename T>
struct ShflLane {
    T value;
    int param;   // srcLane, delta or laneMask
    int width;
    T result;
};
template <typename T, int Kind>
void shfl_combine(void* const* data, unsigned int mask) {
    for (int lane = 0; lane < 32; ++lane) {
        if (!(mask >> lane & 1u)) continue;
        auto* me = static_cast<ShflLane<T>*>(data[lane]);
        int w = me->width;
        if (w < 1 || w > 32 || (w & (w - 1)) != 0)
            fail("__shfl_*_sync: width %d is not a power of two in [1, 32]", w);
        int seg_lo = lane & ~(w - 1), seg_hi = seg_lo + w - 1;
        int src = lane;
        switch (Kind) {
        case SHFL_IDX: src = seg_lo + (me->param & (w - 1)); break;
        case SHFL_UP: src = lane - me->param; if (src < seg_lo) src = lane; break;
        case SHFL_DOWN: src = lane + me->param; if (src > seg_hi) src = lane; break;
        case SHFL_XOR: src = lane ^ me->param; if (src > seg_hi) src = lane; break;
        }
        if (src >= 0 && src < 32 && (mask >> src & 1u)) {
            me->result = static_cast<ShflLane<T>*>(data[src])->value;
        } else {
            // Reading a lane outside the mask is undefined on a GPU: hand back poison.
            std::memset(static_cast<void*>(&me->result), 0xFF, sizeof(T));
        }
    }
}
template <typename T, int Kind>
T shfl(unsigned int mask, T value, int param, int width, const char* name) {
    static_assert(std::is_trivially_copyable<T>::value, "__shfl_*_sync needs a trivially copyable type");
    static const Collective op = {name, &shfl_combine<T, Kind>};
    ShflLane<T> me;
    me.value = value;
    me.param = param;
    me.width = width;
    warp_collective(mask, &op, &me);
    return me.result;
}

// Votes, reductions and matches: every lane deposits a word and gets one back.
struct WordLane {
    unsigned long long in;
    unsigned long long out;
};
enum WordOp { VOTE_ALL, VOTE_ANY, VOTE_BALLOT, RED_ADD, RED_MIN_U, RED_MAX_U, RED_MIN_I, RED_MAX_I,
              RED_AND, RED_OR, RED_XOR, MATCH_ANY, SYNC };
template <int Op>
void word_combine(void* const* data, unsigned int mask) {
    unsigned long long acc = 0;
    unsigned int bits = 0;
    bool first = true;
    for (int lane = 0; lane < 32; ++lane) {
        if (!(mask >> lane & 1u)) continue;
        unsigned long long v = static_cast<WordLane*>(data[lane])->in;
        unsigned int u = static_cast<unsigned int>(v);
        int s = static_cast<int>(u);
        if (v) bits |= 1u << lane;
        if (first) { acc = v; first = false; continue; }
        switch (Op) {
        case RED_ADD: acc = static_cast<unsigned int>(acc + u); break;
        case RED_MIN_U: acc = std::min<unsigned int>(static_cast<unsigned int>(acc), u); break;
        case RED_MAX_U: acc = std::max<unsigned int>(static_cast<unsigned int>(acc), u); break;
        case RED_MIN_I: acc = static_cast<unsigned int>(std::min(static_cast<int>(acc), s)); break;
        case RED_MAX_I: acc = static_cast<unsigned int>(std::max(static_cast<int>(acc), s)); break;
        case RED_AND: acc &= u; break;
        case RED_OR: acc |= u; break;
        case RED_XOR: acc ^= u; break;
        default: break;
        }
    }
    for (int lane = 0; lane < 32; ++lane) {
        if (!(mask >> lane & 1u)) continue;
        auto* me = static_cast<WordLane*>(data[lane]);
        switch (Op) {
        case VOTE_ALL: me->out = bits == mask; break;
        case VOTE_ANY: me->out = bits != 0; break;
        case VOTE_BALLOT: me->out = bits; break;
        case MATCH_ANY: {
            unsigned int same = 0;
            for (int o = 0; o < 32; ++o)
                if ((mask >> o & 1u) && static_cast<WordLane*>(data[o])->in == me->in) same |= 1u << o;
            me->out = same;
            break;
        }
        case SYNC: break;
        default: me->out = acc; break;
        }
    }
}
template <int Op>
unsigned long long word(unsigned int mask, unsigned long long in, const char* name) {
    static const Collective op = {name, &word_combine<Op>};
    WordLane me{in, 0};
    warp_collective(mask, &op, &me);
    return me.out;
}

template <typename To, typename From>
inline To bits_as(From v) {
    static_assert(sizeof(To) == sizeof(From), "size mismatch");
    To t;
    std::memcpy(&t, &v, sizeof(To));
    return t;
}

}  // namespace insclr_emu

#define threadIdx (::insclr_emu::current->thread_idx)
#define blockIdx (::insclr_emu::current->block_idx)
#define blockDim (::insclr_emu::current->block_dim)
#define gridDim (::insclr_emu::current->grid_dim)
#define warpSize 32

// ---- barriers, warp collectives ------------------------------------------------------------

inline void __syncthreads() { insclr_emu::block_barrier(0, 0); }
inline int __syncthreads_count(int pred) { return insclr_emu::block_barrier(1, pred); }
inline int __syncthreads_and(int pred) { return insclr_emu::block_barrier(2, pred); }
inline int __syncthreads_or(int pred) { return insclr_emu::block_barrier(3, pred); }
inline void __syncwarp(unsigned int mask = 0xffffffffu) {
    insclr_emu::word<insclr_emu::SYNC>(mask, 0, "__syncwarp");
}
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}
inline unsigned int __activemask() { return insclr_emu::live_lanes(); }
inline void __nanosleep(unsigned int) { insclr_emu::yield(); }
[[noreturn]] inline void __trap() { insclr_emu::fail("__trap()"); }
inline long long clock64() { return static_cast<long long>(insclr_emu::clock_ticks()); }

template <typename T>
inline T __shfl_sync(unsigned int mask, T v, int src, int width = 32) {
    return insclr_emu::shfl<T, insclr_emu::SHFL_IDX>(mask, v, src, width, "__shfl_sync");
}
template <typename T>
inline T __shfl_up_sync(unsigned int mask, T v, unsigned int delta, int width = 32) {
    return insclr_emu::shfl<T, insclr_emu::SHFL_UP>(mask, v, static_cast<int>(delta), width, "__shfl_up_sync");
}
template <typename T>
inline T __shfl_down_sync(unsigned int mask, T v, unsigned int delta, int width = 32) {
    return insclr_emu::shfl<T, insclr_emu::SHFL_DOWN>(mask, v, static_cast<int>(delta), width, "__shfl_down_sync");
}
template <typename T>
inline T __shfl_xor_sync(unsigned int mask, T v, int lane_mask, int width = 32) {
    return insclr_emu::shfl<T, insclr_emu::SHFL_XOR>(mask, v, lane_mask, width, "__shfl_xor_sync");
}

inline int __all_sync(unsigned int mask, int pred) {
    return static_cast<int>(insclr_emu::word<insclr_emu::VOTE_ALL>(mask, pred != 0, "__all_sync"));
}
inline int __any_sync(unsigned int mask, int pred) {
    return static_cast<int>(insclr_emu::word<insclr_emu::VOTE_ANY>(mask, pred != 0, "__any_sync"));
}
inline unsigned int __ballot_sync(unsigned int mask, int pred) {
    return static_cast<unsigned int>(insclr_emu::word<insclr_emu::VOTE_BALLOT>(mask, pred != 0, "__ballot_sync"));
}
inline unsigned int __reduce_add_sync(unsigned int mask, unsigned int v) {
    return static_cast<unsigned int>(insclr_emu::word<insclr_emu::RED_ADD>(mask, v, "__reduce_add_sync"));
}
inline int __reduce_add_sync(unsigned int mask, int v) {
    return static_cast<int>(__reduce_add_sync(mask, static_cast<unsigned int>(v)));
}
inline unsigned int __reduce_min_sync(unsigned int mask, unsigned int v) {
    return static_cast<unsigned int>(insclr_emu::word<insclr_emu::RED_MIN_U>(mask, v, "__reduce_min_sync"));
}
inline unsigned int __reduce_max_sync(unsigned int mask, unsigned int v) {
    return static_cast<unsigned int>(insclr_emu::word<insclr_emu::RED_MAX_U>(mask, v, "__reduce_max_sync"));
}
inline int __reduce_min_sync(unsigned int mask, int v) {
    return static_cast<int>(insclr_emu::word<insclr_emu::RED_MIN_I>(mask, static_cast<unsigned int>(v), "__reduce_min_sync"));
}
inline int __reduce_max_sync(unsigned int mask, int v) {
    return static_cast<int>(insclr_emu::word<insclr_emu::RED_MAX_I>(mask, static_cast<unsigned int>(v), "__reduce_max_sync"));
}
inline unsigned int __reduce_and_sync(unsigned int mask, unsigned int v) {
    return static_cast<unsigned int>(insclr_emu::word<insclr_emu::RED_AND>(mask, v, "__reduce_and_sync"));
}
inline unsigned int __reduce_or_sync(unsigned int mask, unsigned int v) {
    return static_cast<unsigned int>(insclr_emu::word<insclr_emu::RED_OR>(mask, v, "__reduce_or_sync"));
}
inline unsigned int __reduce_xor_sync(unsigned int mask, unsigned int v) {
    return static_cast<unsigned int>(insclr_emu::word<insclr_emu::RED_XOR>(mask, v, "__reduce_xor_sync"));
}
template <typename T>
inline unsigned int __match_any_sync(unsigned int mask, T v) {
    static_assert(sizeof(T) <= 8, "__match_any_sync takes 32- or 64-bit values");
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    return static_cast<unsigned int>(insclr_emu::word<insclr_emu::MATCH_ANY>(mask, bits, "__match_any_sync"));
}

// ---- atomics: one OS thread runs a launch and fibers switch only at barriers, so a plain
// read-modify-write is atomic here. Each returns the old value, as CUDA's do. Outside the access
// hooks: atomics from many warps in one barrier interval are not a race. -----------------------

#define INSCLR_EMU_NO_HOOKS __attribute__((no_sanitize_thread, noinline))
#define INSCLR_EMU_ATOMIC(name, expr)                                                           \
    template <typename T, typename U>                                                             \
    INSCLR_EMU_NO_HOOKS T name(T* addr, U val_) {                                                 \
        T val = static_cast<T>(val_);                                                             \
        T old = *addr;                                                                            \
        *addr = (expr);                                                                           \
        return old;                                                                               \
    }
INSCLR_EMU_ATOMIC(atomicAdd, old + val)
INSCLR_EMU_ATOMIC(atomicSub, old - val)
INSCLR_EMU_ATOMIC(atomicExch, val)
INSCLR_EMU_ATOMIC(atomicMin, val < old ? val : old)
INSCLR_EMU_ATOMIC(atomicMax, val > old ? val : old)
INSCLR_EMU_ATOMIC(atomicAnd, old & val)
INSCLR_EMU_ATOMIC(atomicOr, old | val)
INSCLR_EMU_ATOMIC(atomicXor, old ^ val)
#undef INSCLR_EMU_ATOMIC
INSCLR_EMU_NO_HOOKS inline unsigned int atomicInc(unsigned int* addr, unsigned int limit) {
    unsigned int old = *addr;
    *addr = old >= limit ? 0u : old + 1u;
    return old;
}
INSCLR_EMU_NO_HOOKS inline unsigned int atomicDec(unsigned int* addr, unsigned int limit) {
    unsigned int old = *addr;
    *addr = (old == 0u || old > limit) ? limit : old - 1u;
    return old;
}
template <typename T>
INSCLR_EMU_NO_HOOKS T atomicCAS(T* addr, T compare, T val) {
    T old = *addr;
    if (old == compare) *addr = val;
    return old;
}

// ---- loads and stores with cache hints: plain accesses here ---------------------------------

template <typename T> inline T __ldg(const T* p) { return *p; }
template <typename T> inline T __ldca(const T* p) { return *p; }
template <typename T> inline T __ldcg(const T* p) { return *p; }
template <typename T> inline T __ldcs(const T* p) { return *p; }
template <typename T> inline T __ldlu(const T* p) { return *p; }
template <typename T> inline T __ldcv(const T* p) { return *p; }
template <typename T> inline void __stwb(T* p, T v) { *p = v; }
template <typename T> inline void __stcg(T* p, T v) { *p = v; }
template <typename T> inline void __stcs(T* p, T v) { *p = v; }
template <typename T> inline void __stwt(T* p, T v) { *p = v; }

// ---- math: CUDA's device overloads and intrinsics over the host's libm ----------------------

// CUDA's overload set of min / max, mixed signedness and widths included (so that a call nvcc
// accepts is not ambiguous here).
#define INSCLR_EMU_MINMAX(R, A, B)                                                               \
    inline R min(A a, B b) { return static_cast<R>(a) < static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); } \
    inline R max(A a, B b) { return static_cast<R>(a) > static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); }
INSCLR_EMU_MINMAX(int, int, int)
INSCLR_EMU_MINMAX(unsigned int, unsigned int, unsigned int)
INSCLR_EMU_MINMAX(unsigned int, int, unsigned int)
INSCLR_EMU_MINMAX(unsigned int, unsigned int, int)
INSCLR_EMU_MINMAX(long, long, long)
INSCLR_EMU_MINMAX(unsigned long, unsigned long, unsigned long)
INSCLR_EMU_MINMAX(unsigned long, long, unsigned long)
INSCLR_EMU_MINMAX(unsigned long, unsigned long, long)
INSCLR_EMU_MINMAX(long long, long long, long long)
INSCLR_EMU_MINMAX(unsigned long long, unsigned long long, unsigned long long)
INSCLR_EMU_MINMAX(unsigned long long, long long, unsigned long long)
INSCLR_EMU_MINMAX(unsigned long long, unsigned long long, long long)
#undef INSCLR_EMU_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline double min(float a, double b) { return fmin(a, b); }
inline double max(float a, double b) { return fmax(a, b); }
inline double min(double a, float b) { return fmin(a, b); }
inline double max(double a, float b) { return fmax(a, b); }

inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return powf(10.0f, x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __log10f(float x) { return log10f(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __tanhf(float x) { return tanhf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __saturatef(float x) { return x != x ? 0.0f : fminf(fmaxf(x, 0.0f), 1.0f); }
inline float exp10f(float x) { return powf(10.0f, x); }
inline int __float2int_rn(float x) { return static_cast<int>(nearbyintf(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline int __float2int_rd(float x) { return static_cast<int>(floorf(x)); }
inline int __float2int_ru(float x) { return static_cast<int>(ceilf(x)); }
inline unsigned int __float2uint_rn(float x) { return static_cast<unsigned int>(nearbyintf(x)); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __uint2float_rn(unsigned int x) { return static_cast<float>(x); }
inline int __float_as_int(float x) { return insclr_emu::bits_as<int>(x); }
inline unsigned int __float_as_uint(float x) { return insclr_emu::bits_as<unsigned int>(x); }
inline float __int_as_float(int x) { return insclr_emu::bits_as<float>(x); }
inline float __uint_as_float(unsigned int x) { return insclr_emu::bits_as<float>(x); }
inline long long __double_as_longlong(double x) { return insclr_emu::bits_as<long long>(x); }
inline double __longlong_as_double(long long x) { return insclr_emu::bits_as<double>(x); }

// Four signed byte products added to c, as the dp4a instruction (exact integer arithmetic).
inline int __dp4a(int a, int b, int c) {
    for (int k = 0; k < 4; ++k)
        c += static_cast<int>(static_cast<signed char>(a >> (8 * k))) * static_cast<int>(static_cast<signed char>(b >> (8 * k)));
    return c;
}
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned int>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned int __brev(unsigned int x) {
    unsigned int r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
inline unsigned int __byte_perm(unsigned int x, unsigned int y, unsigned int s) {
    unsigned long long v = (static_cast<unsigned long long>(y) << 32) | x;
    unsigned int r = 0;
    for (int i = 0; i < 4; ++i) r |= static_cast<unsigned int>((v >> (8 * ((s >> (4 * i)) & 7u))) & 0xFFu) << (8 * i);
    return r;
}
inline unsigned int __funnelshift_l(unsigned int lo, unsigned int hi, unsigned int shift) {
    unsigned long long v = (static_cast<unsigned long long>(hi) << 32) | lo;
    return static_cast<unsigned int>((v << (shift & 31u)) >> 32);
}
inline unsigned int __funnelshift_r(unsigned int lo, unsigned int hi, unsigned int shift) {
    unsigned long long v = (static_cast<unsigned long long>(hi) << 32) | lo;
    return static_cast<unsigned int>(v >> (shift & 31u));
}
inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return static_cast<unsigned int>((static_cast<unsigned long long>(a) * b) >> 32);
}
inline int __mulhi(int a, int b) { return static_cast<int>((static_cast<long long>(a) * b) >> 32); }
inline int __mul24(int a, int b) { return (a << 8 >> 8) * (b << 8 >> 8); }

// ---- bf16 and fp16: storage types with round-to-nearest-even conversions --------------------

namespace insclr_emu {
inline unsigned short float_to_bf16_bits(float f) {
    unsigned int x = bits_as<unsigned int>(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;  // canonical NaN, as cvt.rn.bf16.f32
    unsigned int lsb = (x >> 16) & 1u;
    return static_cast<unsigned short>((x + 0x7fffu + lsb) >> 16);
}
inline float bf16_bits_to_float(unsigned short h) { return bits_as<float>(static_cast<unsigned int>(h) << 16); }

inline unsigned short float_to_half_bits(float f) {
    unsigned int x = bits_as<unsigned int>(f);
    unsigned int sign = (x >> 16) & 0x8000u;
    unsigned int ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return 0x7fffu;  // canonical NaN, as cvt.rn.f16.f32
    if (ax >= 0x477ff000u) return static_cast<unsigned short>(sign | 0x7c00u);  // rounds to inf
    if (ax >= 0x38800000u) {  // normal half: rebias the exponent, round 13 dropped bits
        unsigned int lsb = (ax >> 13) & 1u;
        unsigned int r = ax + 0xfffu + lsb;
        return static_cast<unsigned short>(sign | (((r >> 13) - (112u << 10)) & 0x7fffu));
    }
    if (ax < 0x33000000u) return static_cast<unsigned short>(sign);  // below half the smallest subnormal
    // Subnormal half: value = m * 2^-24 with the implicit bit made explicit.
    unsigned int e = ax >> 23;
    unsigned int m = (ax & 0x7fffffu) | 0x800000u;
    unsigned int shift = 126u - e;  // 2^(e-127) * m/2^23 = q * 2^-24  =>  q = m >> (126 - e)
    unsigned int q = m >> shift;
    unsigned int rem = m & ((1u << shift) - 1u);
    unsigned int half_way = 1u << (shift - 1);
    if (rem > half_way || (rem == half_way && (q & 1u))) ++q;
    return static_cast<unsigned short>(sign | q);
}
inline float half_bits_to_float(unsigned short h) {
    unsigned int sign = static_cast<unsigned int>(h & 0x8000u) << 16;
    unsigned int e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1fu) return bits_as<float>(sign | 0x7f800000u | (m << 13));
    if (e == 0) {
        float v = static_cast<float>(m) * 5.9604644775390625e-8f;  // m * 2^-24, exact
        return sign ? -v : v;
    }
    return bits_as<float>(sign | ((e + 112u) << 23) | (m << 13));
}
}  // namespace insclr_emu

// Trivially default-constructible (so per-block shared arrays of them start poisoned), with
// CUDA's implicit conversions to and from float; arithmetic is done in float and rounded once,
// which is exact for +, -, *, / of 8- and 11-bit significands.
#define INSCLR_EMU_HALF_TYPE(T, to_bits, from_bits)                                              \
    struct T {                                                                                    \
        unsigned short __x;                                                                       \
        T() = default;                                                                            \
        T(float f) : __x(insclr_emu::to_bits(f)) {}                                               \
        T(double f) : __x(insclr_emu::to_bits(static_cast<float>(f))) {}                          \
        T(int i) : __x(insclr_emu::to_bits(static_cast<float>(i))) {}                             \
        operator float() const { return insclr_emu::from_bits(__x); }                             \
        T& operator+=(T o) { return *this = T(float(*this) + float(o)); }                        \
        T& operator-=(T o) { return *this = T(float(*this) - float(o)); }                        \
        T& operator*=(T o) { return *this = T(float(*this) * float(o)); }                        \
        T& operator/=(T o) { return *this = T(float(*this) / float(o)); }                        \
    };                                                                                            \
    inline T operator+(T a, T b) { return T(float(a) + float(b)); }                               \
    inline T operator-(T a, T b) { return T(float(a) - float(b)); }                               \
    inline T operator*(T a, T b) { return T(float(a) * float(b)); }                               \
    inline T operator/(T a, T b) { return T(float(a) / float(b)); }                               \
    inline T operator-(T a) { T r = a; r.__x ^= 0x8000u; return r; }                              \
    inline bool operator==(T a, T b) { return float(a) == float(b); }                             \
    inline bool operator!=(T a, T b) { return float(a) != float(b); }                             \
    inline bool operator<(T a, T b) { return float(a) < float(b); }                               \
    inline bool operator>(T a, T b) { return float(a) > float(b); }                               \
    inline bool operator<=(T a, T b) { return float(a) <= float(b); }                             \
    inline bool operator>=(T a, T b) { return float(a) >= float(b); }
INSCLR_EMU_HALF_TYPE(__nv_bfloat16, float_to_bf16_bits, bf16_bits_to_float)
INSCLR_EMU_HALF_TYPE(__half, float_to_half_bits, half_bits_to_float)
#undef INSCLR_EMU_HALF_TYPE
static_assert(std::is_trivial<__nv_bfloat16>::value && sizeof(__nv_bfloat16) == 2, "bf16 layout");
static_assert(std::is_trivial<__half>::value && sizeof(__half) == 2, "fp16 layout");

struct __attribute__((aligned(4))) __nv_bfloat162 { __nv_bfloat16 x, y; };
struct __attribute__((aligned(4))) __half2 { __half x, y; };
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;
typedef __half half;
typedef __half2 half2;

inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return float(h); }
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return float(h); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__nv_bfloat16(a), __nv_bfloat16(b)}; }
inline __nv_bfloat162 __float22bfloat162_rn(float2 f) { return {__nv_bfloat16(f.x), __nv_bfloat16(f.y)}; }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return {float(h.x), float(h.y)}; }
inline __half2 __floats2half2_rn(float a, float b) { return {__half(a), __half(b)}; }
inline __half2 __float22half2_rn(float2 f) { return {__half(f.x), __half(f.y)}; }
inline float2 __half22float2(__half2 h) { return {float(h.x), float(h.y)}; }
inline float __low2float(__nv_bfloat162 h) { return float(h.x); }
inline float __high2float(__nv_bfloat162 h) { return float(h.y); }
inline float __low2float(__half2 h) { return float(h.x); }
inline float __high2float(__half2 h) { return float(h.y); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { __nv_bfloat16 h; h.__x = u; return h; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short u) { __half h; h.__x = u; return h; }
inline __nv_bfloat16 __hadd(__nv_bfloat16 a, __nv_bfloat16 b) { return a + b; }
inline __nv_bfloat16 __hmul(__nv_bfloat16 a, __nv_bfloat16 b) { return a * b; }
inline __nv_bfloat16 __hfma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) {
    return __nv_bfloat16(float(a) * float(b) + float(c));  // the product of two 8-bit significands is exact in float
}
inline __half __hadd(__half a, __half b) { return a + b; }
inline __half __hmul(__half a, __half b) { return a * b; }
inline __half __hfma(__half a, __half b, __half c) { return __half(float(a) * float(b) + float(c)); }

// ---- the kernel registry written by build.rs after each family's source ---------------------

namespace insclr_emu {
// One kernel: its name, a trampoline that unpacks a cuLaunchKernel-style argument array, and
// the size of each parameter (checked against what the launcher pushed).
struct Kernel {
    const char* name;
    void (*call)(void* const* args);
    unsigned int nargs;
    const unsigned int* arg_sizes;
};
struct Family {
    const char* name;
    const Kernel* kernels;
    unsigned int count;
};

template <typename F, F f>
struct Entry;
template <typename... A, void (*f)(A...)>
struct Entry<void (*)(A...), f> {
    template <size_t... I>
    static void unpack(void* const* args, std::index_sequence<I...>) {
        f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
    }
    static void call(void* const* args) { unpack(args, std::index_sequence_for<A...>{}); }
    static constexpr unsigned int nargs = sizeof...(A);
    static constexpr unsigned int sizes[sizeof...(A) + 1] = {static_cast<unsigned int>(sizeof(A))..., 0u};
};
}  // namespace insclr_emu
