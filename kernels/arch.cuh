// Every tensor-core and async-copy instruction our kernels use, one wrapper each: the PTX on a
// GPU, and on the emulated device (INSCLR_EMU) the same operation computed from the PTX ISA's
// fragment layouts, so a kernel written against these wrappers runs unchanged on both.
//
// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32: D(16x8) = A(16x16) B(16x8) + C,
// per lane, with groupID = lane >> 2 and tig = lane % 4 (PTX ISA, "Matrix Fragments for
// mma.m16n8k16 with floating point type"):
//   A: a[0..3] hold pairs (a0,a1) .. (a6,a7), low half first; ai is at
//      row = groupID (+8 for i in {2,3,6,7}), col = 2*tig + (i & 1) (+8 for i >= 4)
//   B: b[0..1] hold (b0,b1), (b2,b3); bi is at row (k) = 2*tig + (i & 1) (+8 for i >= 2), col = groupID
//   C, D: ci is at row = groupID (+8 for i >= 2), col = 2*tig + (i & 1)
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32: D(16x8) = A(16x8) B(8x16) + C, one 32-bit
// element a register ("Matrix Fragments for mma.m16n8k8", .tf32):
//   A: a[i] is at row = groupID (+8 for i in {1,3}), col = tig (+4 for i >= 2)
//   B: b[i] is at row (k) = tig (+4 for i = 1), col = groupID
//   C, D: as m16n8k16's. The tensor cores read the upper 19 bits of each input (sign, exponent,
//   10 mantissa bits) and ignore the low 13.
// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}[.trans].shared.b16: lanes 8j..8j+7 give the addresses of
// the 8 rows (16 bytes each) of matrix j; lane t receives, in register j, elements
// (t/4, 2*(t%4)) and (t/4, 2*(t%4)+1) of matrix j (with .trans: (2*(t%4), t/4) and (2*(t%4)+1, t/4)).
// cp.async.cg.shared.global (16 bytes, optionally with a source size below 16: the rest is
// zero-filled, and a source size of 0 reads nothing) + commit_group + wait_group N: the copy lands
// in shared memory only when a later wait covers its group. The emulator holds it back until then,
// and its race checker reports any access to the destination before that wait.
// ld/st.shared.v4, ld/st.global.v4 and ld/st.global.v2: one 16- (8-) byte access per lane, which the
// emulator's memory counters see as one (a plain uint4 copy may be split by the host compiler).
#pragma once
#include <stdint.h>
#include <cuda_bf16.h>

#ifdef INSCLR_EMU
namespace insclr_emu {
void async_copy(void* dst, const void* src, unsigned int bytes, unsigned int src_bytes);
void async_commit();
void async_wait(unsigned int pending);
// True when [p, p + bytes) lies inside the current block's shared memory.
bool in_shared(const void* p, unsigned long bytes);

struct MmaLane {
    uint32_t a[4];
    uint32_t b[2];
    float c[4];
    float d[4];
};
template <bool Bf16>
inline float mma_elem(uint32_t reg, int hi) {
    unsigned short bits = static_cast<unsigned short>(hi ? reg >> 16 : reg & 0xffffu);
    return Bf16 ? bf16_bits_to_float(bits) : half_bits_to_float(bits);
}
// D = A B + C over k, for every lane: products of 8- or 11-bit significands are exact in float;
// the sum is accumulated in double and rounded once (the hardware's internal order is
// unspecified). C and D have the same layout for every shape.
template <int K>
void mma_finish(void* const* data, const float (&A)[16][K], const float (&B)[K][8], const float (&C)[16][8]) {
    float D[16][8];
    for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 8; ++c) {
            double acc = C[r][c];
            for (int k = 0; k < K; ++k) acc += static_cast<double>(A[r][k] * B[k][c]);
            D[r][c] = static_cast<float>(acc);
        }
    for (int lane = 0; lane < 32; ++lane) {
        MmaLane* m = static_cast<MmaLane*>(data[lane]);
        int g = lane >> 2, t = lane & 3;
        for (int i = 0; i < 4; ++i) m->d[i] = D[g + (i >= 2 ? 8 : 0)][2 * t + (i & 1)];
    }
}
inline void mma_gather_c(const MmaLane* m, int lane, float (&C)[16][8]) {
    int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; ++i) C[g + (i >= 2 ? 8 : 0)][2 * t + (i & 1)] = m->c[i];
}
template <bool Bf16>
void mma_m16n8k16_combine(void* const* data, unsigned int) {
    float A[16][16], B[16][8], C[16][8];
    for (int lane = 0; lane < 32; ++lane) {
        const MmaLane* m = static_cast<const MmaLane*>(data[lane]);
        int g = lane >> 2, t = lane & 3;
        for (int i = 0; i < 8; ++i) {
            int row = g + ((i & 2) ? 8 : 0);
            int col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
            A[row][col] = mma_elem<Bf16>(m->a[i / 2], i & 1);
        }
        for (int i = 0; i < 4; ++i) B[2 * t + (i & 1) + (i >= 2 ? 8 : 0)][g] = mma_elem<Bf16>(m->b[i / 2], i & 1);
        mma_gather_c(m, lane, C);
    }
    mma_finish<16>(data, A, B, C);
}
// TF32: the inputs' low 13 bits dropped, as the hardware does.
inline float tf32_elem(uint32_t reg) {
    const uint32_t bits = reg & ~0x1fffu;
    float v;
    std::memcpy(&v, &bits, 4);
    return v;
}
inline void mma_m16n8k8_tf32_combine(void* const* data, unsigned int) {
    float A[16][8], B[8][8], C[16][8];
    for (int lane = 0; lane < 32; ++lane) {
        const MmaLane* m = static_cast<const MmaLane*>(data[lane]);
        int g = lane >> 2, t = lane & 3;
        for (int i = 0; i < 4; ++i) A[g + (i & 1) * 8][t + (i >> 1) * 4] = tf32_elem(m->a[i]);
        for (int i = 0; i < 2; ++i) B[t + i * 4][g] = tf32_elem(m->b[i]);
        mma_gather_c(m, lane, C);
    }
    mma_finish<8>(data, A, B, C);
}
// One lane's part of a warp's mma; `site`: the kernel's code address (the counters' site).
inline void mma_lane(const Collective* op, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                     const float (&c)[4], const void* site) {
    if (current->lane == 0) count_mma(site);
    MmaLane me;
    for (int i = 0; i < 4; ++i) me.a[i] = a[i], me.c[i] = c[i];
    me.b[0] = b[0];
    me.b[1] = b[1];
    warp_collective(0xffffffffu, op, &me);
    for (int i = 0; i < 4; ++i) d[i] = me.d[i];
}
// Not inlined, so that the return address is the kernel's line.
__attribute__((noinline)) inline void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                       const float (&c)[4]) {
    static const Collective op = {"mma.m16n8k8.tf32", &mma_m16n8k8_tf32_combine};
    mma_lane(&op, d, a, b, c, __builtin_return_address(0));
}
template <bool Bf16>
__attribute__((noinline)) void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                            const float (&c)[4], const char* name) {
    static const Collective op = {name, &mma_m16n8k16_combine<Bf16>};
    mma_lane(&op, d, a, b, c, __builtin_return_address(0));
}

struct LdmatrixLane {
    const unsigned short* row;
    uint32_t r[4];
};
template <int Count, bool Trans>
void ldmatrix_combine(void* const* data, unsigned int) {
    for (int j = 0; j < Count; ++j) {
        unsigned short m[8][8];
        for (int r = 0; r < 8; ++r) {
            const unsigned short* p = static_cast<const LdmatrixLane*>(data[8 * j + r])->row;
            if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
                fail("ldmatrix: lane %d's row address %p is not 16-byte aligned", 8 * j + r, static_cast<const void*>(p));
            if (!in_shared(p, 16))
                fail("ldmatrix: lane %d's row address %p is not in this block's shared memory", 8 * j + r,
                     static_cast<const void*>(p));
            for (int c = 0; c < 8; ++c) m[r][c] = p[c];
        }
        for (int lane = 0; lane < 32; ++lane) {
            int row = lane / 4, col = 2 * (lane % 4);
            uint32_t lo = Trans ? m[col][row] : m[row][col];
            uint32_t hi = Trans ? m[col + 1][row] : m[row][col + 1];
            static_cast<LdmatrixLane*>(data[lane])->r[j] = lo | (hi << 16);
        }
    }
}
template <int Count, bool Trans>
__attribute__((noinline)) void ldmatrix(uint32_t* r, const void* row, const char* name) {
    static const Collective op = {name, &ldmatrix_combine<Count, Trans>};
    // Lanes 8j..8j+7 give matrix j's rows: the lanes past 8 * Count give no address.
    if (current->lane < 8u * Count)
        lane_access(row, 16, false, Count == 4 ? OP_LDMATRIX_X4 : Count == 2 ? OP_LDMATRIX_X2 : OP_LDMATRIX_X1,
                    __builtin_return_address(0));
    LdmatrixLane me;
    me.row = static_cast<const unsigned short*>(row);
    warp_collective(0xffffffffu, &op, &me);
    for (int j = 0; j < Count; ++j) r[j] = me.r[j];
}
}  // namespace insclr_emu
#endif

// D = A B + C on bf16 tensor cores, f32 accumulators (fragments as in the header comment).
__device__ __forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                  const float (&c)[4]) {
#ifdef INSCLR_EMU
    insclr_emu::mma_m16n8k16<true>(d, a, b, c, "mma.m16n8k16.bf16");
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
#endif
}

// D = A B + C on TF32 tensor cores (fragments as in the header comment): f32 registers, of which
// the hardware reads the TF32 part.
__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                 const float (&c)[4]) {
#ifdef INSCLR_EMU
    insclr_emu::mma_m16n8k8_tf32(d, a, b, c);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
#endif
}

// An f32's bits made ready for a TF32 mma: adding half a TF32 unit before the hardware drops the
// low 13 bits rounds to nearest, ties away from zero (cvt.rna.tf32.f32's rounding) in one integer
// add. Infinities stay infinite (the carry stays in the dropped bits), the largest finite values
// round up to infinity as cvt.rna's do.
__device__ __forceinline__ uint32_t tf32_round_bits(uint32_t bits) { return bits + 0x1000u; }

// The same with fp16 inputs.
__device__ __forceinline__ void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                 const float (&c)[4]) {
#ifdef INSCLR_EMU
    insclr_emu::mma_m16n8k16<false>(d, a, b, c, "mma.m16n8k16.f16");
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
#endif
}

#ifndef INSCLR_EMU
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif

// Four 8x8 b16 matrices from shared memory; lane l gives the row address for matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
#ifdef INSCLR_EMU
    insclr_emu::ldmatrix<4, false>(r, row, "ldmatrix.x4");
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(row)));
#endif
}

// Two 8x8 b16 matrices (lanes 0-15 give the row addresses).
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* row) {
#ifdef INSCLR_EMU
    insclr_emu::ldmatrix<2, false>(r, row, "ldmatrix.x2");
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(smem_addr(row)));
#endif
}

// Four 8x8 b16 matrices, each transposed on the way (a row-major K x N tile as mma's B).
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
#ifdef INSCLR_EMU
    insclr_emu::ldmatrix<4, true>(r, row, "ldmatrix.x4.trans");
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(row)));
#endif
}

// Two 8x8 b16 matrices, transposed.
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* row) {
#ifdef INSCLR_EMU
    insclr_emu::ldmatrix<2, true>(r, row, "ldmatrix.x2.trans");
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_addr(row)));
#endif
}

// 16 bytes global -> shared, asynchronously; both addresses 16-byte aligned.
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src) {
#ifdef INSCLR_EMU
    insclr_emu::async_copy(smem_dst, gmem_src, 16, 16);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(smem_dst)), "l"(gmem_src));
#endif
}

// The same with zero fill: the first `src_bytes` (0..16) come from gmem_src, the rest of the 16
// are zeros. src_bytes = 0 (a tile's padding or an out-of-bounds row) reads nothing, so gmem_src
// need not point at valid memory then; it must still be 16-byte aligned.
__device__ __forceinline__ void cp_async_16_zfill(void* smem_dst, const void* gmem_src, int src_bytes) {
#ifdef INSCLR_EMU
    insclr_emu::async_copy(smem_dst, gmem_src, 16, static_cast<unsigned int>(src_bytes));
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem_dst)), "l"(gmem_src),
                 "r"(src_bytes));
#endif
}

// Closes the group of the copies issued since the last commit.
__device__ __forceinline__ void cp_async_commit() {
#ifdef INSCLR_EMU
    insclr_emu::async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most `Pending` committed groups are still in flight (0: all have landed).
// Other threads see the data after a __syncthreads that follows.
template <int Pending>
__device__ __forceinline__ void cp_async_wait() {
#ifdef INSCLR_EMU
    insclr_emu::async_wait(Pending);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending));
#endif
}

// 16 bytes from shared memory (16-byte aligned) in one access.
__device__ __forceinline__ uint4 ld_shared_v4(const void* p) {
    uint4 v;
#ifdef INSCLR_EMU
    insclr_emu::vector_load(&v, p, 16);
#else
    asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(smem_addr(p)));
#endif
    return v;
}

// 8 bytes from shared memory (8-byte aligned) in one access.
__device__ __forceinline__ uint2 ld_shared_v2(const void* p) {
    uint2 v;
#ifdef INSCLR_EMU
    insclr_emu::vector_load(&v, p, 8);
#else
    asm volatile("ld.shared.v2.u32 {%0,%1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "r"(smem_addr(p)));
#endif
    return v;
}

// 16 bytes to shared memory (16-byte aligned) in one access.
__device__ __forceinline__ void st_shared_v4(void* p, uint4 v) {
#ifdef INSCLR_EMU
    insclr_emu::vector_store(p, &v, 16);
#else
    asm volatile("st.shared.v4.u32 [%0], {%1,%2,%3,%4};\n" ::"r"(smem_addr(p)), "r"(v.x), "r"(v.y), "r"(v.z),
                 "r"(v.w)
                 : "memory");
#endif
}

// 16 bytes from global memory (16-byte aligned) in one access.
__device__ __forceinline__ uint4 ld_global_v4(const void* p) {
    uint4 v;
#ifdef INSCLR_EMU
    insclr_emu::vector_load(&v, p, 16);
#else
    asm volatile("ld.global.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
#endif
    return v;
}

// 16 bytes to global memory (16-byte aligned) in one access.
__device__ __forceinline__ void st_global_v4(void* p, uint4 v) {
#ifdef INSCLR_EMU
    insclr_emu::vector_store(p, &v, 16);
#else
    asm volatile("st.global.v4.u32 [%0], {%1,%2,%3,%4};\n" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
                 : "memory");
#endif
}

// 8 bytes from global memory (8-byte aligned) in one access: the vector of a row whose length
// is a multiple of 8 bytes but not of 16.
__device__ __forceinline__ uint2 ld_global_v2(const void* p) {
    uint2 v;
#ifdef INSCLR_EMU
    insclr_emu::vector_load(&v, p, 8);
#else
    asm volatile("ld.global.v2.u32 {%0,%1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "l"(p));
#endif
    return v;
}

// 8 bytes to global memory (8-byte aligned) in one access.
__device__ __forceinline__ void st_global_v2(void* p, uint2 v) {
#ifdef INSCLR_EMU
    insclr_emu::vector_store(p, &v, 8);
#else
    asm volatile("st.global.v2.u32 [%0], {%1,%2};\n" ::"l"(p), "r"(v.x), "r"(v.y) : "memory");
#endif
}

// A warp's 64 x 32 corner of a block tile on bf16 tensor cores, over one BK-wide slice of k:
// A rows (m) and B rows (n) both k-contiguous in shared memory, LD elements a row; 4 x 4 m16n8
// accumulators per warp (the fragment layouts of the header comment). Shared by the GEMM and
// the convolutions.
template <int LD, int BK>
__device__ __forceinline__ void mma_warp_64x32_bf16(float (&acc)[4][4][4], const __nv_bfloat16 (*As)[LD],
                                                    const __nv_bfloat16 (*Bs)[LD], int wm, int wn) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int ks = 0; ks < BK; ks += 16) {
        uint32_t af[4][4], bf[4][2];
#pragma unroll
        for (int i = 0; i < 4; ++i) ldmatrix_x4(af[i], &As[wm + i * 16 + lane % 16][ks + (lane / 16) * 8]);
#pragma unroll
        for (int j = 0; j < 4; ++j) ldmatrix_x2(bf[j], &Bs[wn + j * 8 + lane % 8][ks + ((lane / 8) % 2) * 8]);
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) mma_m16n8k16_bf16(acc[i][j], af[i], bf[j], acc[i][j]);
    }
}
