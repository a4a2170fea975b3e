// The bf16 tensor-core product every bf16 GEMM-shaped op shares: CUTLASS 2.x's multistage
// design, written our way, in named parts:
//   swizzled / tile offsets   the shared-memory layout: 16-byte chunks XOR-permuted inside each
//                             128-byte line, so that both the cp.async stores (8 consecutive
//                             chunks of a line) and the ldmatrix reads (one chunk of 8 rows) hit
//                             32 different banks
//   TileLoader                one thread's share of an operand's global -> shared copies:
//                             a pointer, a shared offset and a row mask computed once, then only
//                             additions; 16-byte cp.async, zero-filled outside the matrix
//   ConvGather                the same for an implicit-GEMM convolution's NHWC activations: per
//                             row (an output pixel of one of the product's images) a window
//                             corner and tap masks computed once, per k tile the tap's step and a
//                             bit test per row
//   WeightGradGather          the same for a convolution's weight gradient: the rows are output
//                             pixels, the columns (tap, channel); a thread carries one pixel's
//                             window corner along by additions, its chunks' taps are fixed
//   WarpFragments             a warp's ldmatrix.x4 loads (.trans for an m- or n-contiguous
//                             operand), lane offsets computed once
//   mainloop                  STAGES-deep cp.async pipeline with one barrier per k tile,
//                             fragments double-buffered in registers, 64 x WN warp tiles; the
//                             loaders are template arguments
//   epilogue (store_rows)     accumulators staged through shared memory, written back with
//                             16-byte coalesced stores (alpha, beta in f32), or element by
//                             element into one stride phase of a larger map (PhaseMap); C's
//                             columns may run across images (ImageCols, store_images)
//   post-ops                  what the epilogue applies to each value before its store: nothing
//                             (NoPost), or eval-mode BatchNorm with residual and activation
//                             (BnEvalPost), so that a convolution's output before BatchNorm is
//                             never stored; or what it reads off the staged rows: training
//                             BatchNorm's statistics (BnStatsPost), so that BatchNorm need not
//                             read the output back for them; or, in a data gradient, the backward's
//                             reduce pass of the BatchNorm whose dy C is (BnBwdSumsPost: dz stored,
//                             its sums taken on the way)
//   tc_gemm                   two TileLoaders, the mainloop and the epilogue: a plain GEMM
//
// The same template runs TF32 (f32 inputs, mma.m16n8k8.tf32) for the f32 mode's convolutions: a
// stage row is 64 bytes of k either way (32 bf16 or 16 f32), so the stages, the k-contiguous
// swizzle and its ldmatrix loads are the same bytes (an 8 x 8 b16 matrix is an 8 x 4 f32 one, which
// is the tf32 fragment's layout); an m- or n-contiguous f32 operand has no ldmatrix (.trans moves
// 16-bit halves), so its fragments are 4-byte shared loads from a layout whose swizzle keeps them
// conflict-free (TF32 notes at FragmentOffsets). Inputs are rounded to TF32 as they enter the mma
// (round to nearest, ties away, as cvt.rna; the tensor cores drop the low 13 bits).
//
// C = alpha op(A) op(B) + beta C with op(A) m x k, op(B) k x n, bf16 (or f32) inputs, f32 accumulation;
// C bf16 or f32, row-major m x n. A is k-contiguous when stored m x k (no trans_a), m-contiguous
// when stored k x m; B is k-contiguous when stored n x k (trans_b), n-contiguous when stored
// k x n. A batch (blockIdx.z) offsets A, B and C by their batch strides. The reduction may run
// over `segments` matrices of depth k, `seg_a` and `seg_b` elements apart (the images of a batch
// for a 1x1 convolution's weight gradient): C = sum over segments of op(A_s) op(B_s).
//
// What the launcher guarantees (gemm.rs checks it and otherwise uses gemm.cu's simple kernel):
// every operand row starts 16-byte aligned (the leading dimensions are multiples of 8, the base
// pointers 16-byte aligned); beta = 0 never reads C. Every size is handled (zero fill).
#pragma once
#include "arch.cuh"
#include "common.cuh"
#include "vec.cuh"

namespace tc {

// What an input element type changes: elements per 16-byte chunk, k per stage (64 bytes of k, two
// mma k steps: k16 for bf16, k8 for TF32).
template <typename T>
struct Elem {
    static constexpr bool TF32 = sizeof(T) == 4;
    static constexpr int PER_CHUNK = 16 / (int)sizeof(T);
    static constexpr int BK = 64 / (int)sizeof(T);
};

// Element offset of 16-byte chunk `c` of row `r` in a tile whose rows hold CHUNKS chunks.
// 64-byte rows (CHUNKS = 4) pair up into 128-byte lines, and a chunk's place in its line is XORed
// with the line's index; longer rows (CHUNKS a multiple of 8) XOR the chunk's place in its line
// with the row's index. Either way 8 consecutive rows read at one chunk, or 8 consecutive chunks
// of one line, fall on 8 different 16-byte bank groups.
// An f32 (TF32) operand's rows of k (CHUNKS > 4) XOR with 2 (row % 4) instead: its fragments are
// 4-byte loads of 4 consecutive k rows at 8 consecutive columns (two chunks), which that key puts
// on 4 different pairs of bank groups. The offset is in elements of T.
template <int CHUNKS, typename T = __nv_bfloat16>
__device__ __forceinline__ int swizzled(int r, int c) {
    static_assert(CHUNKS == 4 || CHUNKS % 8 == 0, "rows of 64 bytes or a multiple of 128");
    constexpr int PER_CHUNK = Elem<T>::PER_CHUNK;
    if (CHUNKS == 4) {
        const int line = r >> 1, pos = ((r & 1) << 2) | c;
        return ((line << 3) | (pos ^ (line & 7))) * PER_CHUNK;
    }
    const int key = Elem<T>::TF32 ? (r & 3) << 1 : r & 7;
    return (r * CHUNKS + (c ^ key)) * PER_CHUNK;
}

// One operand tile per stage: ROWS rows of CHUNKS 16-byte chunks. For a k-contiguous operand the
// rows are m (or n) and a row holds a stage's k; for an m- or n-contiguous one the rows are k.
template <bool K_CONTIGUOUS, int MN, typename T = __nv_bfloat16>
struct TileShape {
    static constexpr int PER_CHUNK = Elem<T>::PER_CHUNK;
    static constexpr int ROWS = K_CONTIGUOUS ? MN : Elem<T>::BK;
    static constexpr int CHUNKS = K_CONTIGUOUS ? 4 : MN / PER_CHUNK;
    static constexpr int ELEMS = ROWS * CHUNKS * PER_CHUNK;
};

// A thread's copies of one operand tile per stage: ITERS chunks, rows `ROW_STEP` apart in one
// column of chunks, so one pointer and one shared offset serve them all.
template <bool K_CONTIGUOUS, int MN, int THREADS, bool SEGMENTED, typename T = __nv_bfloat16>
struct TileLoader {
    using Elem = T;
    using Shape = TileShape<K_CONTIGUOUS, MN, T>;
    static constexpr int CHUNKS = Shape::CHUNKS, PER_CHUNK = Shape::PER_CHUNK, TILE_K = tc::Elem<T>::BK;
    static_assert(THREADS % CHUNKS == 0 && (Shape::ROWS * CHUNKS) % THREADS == 0, "loader shape");
    static constexpr int ROW_STEP = THREADS / CHUNKS;
    static constexpr int ITERS = Shape::ROWS / ROW_STEP;
    // The swizzle's key repeats every 16 rows (64-byte rows) or 8 (longer ones; 4 for TF32's).
    static_assert(ROW_STEP % (CHUNKS == 4 ? 16 : tc::Elem<T>::TF32 ? 4 : 8) == 0,
                  "a thread's chunks share one swizzle key");

    const T* src;      // this thread's first chunk of the current k tile
    const T* segment;  // ... of the current segment's first k tile
    long long src_step;            // elements to the next chunk's row
    long long k_step;              // elements to the next k tile
    long long seg_step;            // elements to the next segment
    int dst;                       // shared offset of the first chunk (elements)
    int k_at;                      // the k of the chunk (k-contiguous) or of the first row (else)
    int k_first;
    int k;                         // depth of a segment
    unsigned int ok;               // k-contiguous: bit i = row i is inside the matrix; else: the column is

    // `p`: the operand's element (0, 0) for this block's batch; `mn0`: the block's first row (m or
    // n); `mn`: rows of the operand along m (or n); `ld`: its leading dimension; `seg`: elements
    // between segments.
    __device__ __forceinline__ void init(const T* p, int mn0, int mn, int k_, int ld, long long seg) {
        const int tid = threadIdx.x, r = tid / CHUNKS, c = tid % CHUNKS;
        k = k_;
        seg_step = seg;
        dst = swizzled<CHUNKS, T>(r, c);
        ok = 0;
        if (K_CONTIGUOUS) {
            src = p + (long long)(mn0 + r) * ld + c * PER_CHUNK;
            src_step = (long long)ROW_STEP * ld;
            k_step = TILE_K;
            k_at = c * PER_CHUNK;
#pragma unroll
            for (int i = 0; i < ITERS; ++i) ok |= (unsigned)(mn0 + r + i * ROW_STEP < mn) << i;
        } else {
            src = p + (long long)r * ld + mn0 + c * PER_CHUNK;
            src_step = (long long)ROW_STEP * ld;
            k_step = (long long)TILE_K * ld;
            k_at = r;
            ok = mn0 + c * PER_CHUNK < mn;
        }
        segment = src;
        k_first = k_at;
    }

    // An n-contiguous operand whose columns are the pixels of consecutive images, `hw` a row of
    // each (its leading dimension) and an image `image` elements after the one before; hw a
    // multiple of the chunk, so that a chunk never crosses an image: init's pointer moved to the
    // image of the thread's chunk column (set-up only; a k tile still steps by TILE_K rows).
    __device__ __forceinline__ void init_images(const T* p, int mn0, int mn, int k_, int hw, long long image) {
        static_assert(!K_CONTIGUOUS, "columns across images: an n-contiguous operand");
        init(p, mn0, mn, k_, hw, 0);
        const int col = mn0 + threadIdx.x % CHUNKS * PER_CHUNK, j = col / hw;
        src += j * (image - hw);
        segment = src;
    }

    // Copies this thread's chunks of the current k tile into `tile`, then moves to the next tile.
    __device__ __forceinline__ void load(T* tile) {
        const T* s = src;
#pragma unroll
        for (int i = 0; i < ITERS; ++i) {
            // ROW_STEP is a multiple of the swizzle's period: the i-th chunk sits ROW_STEP rows
            // further in shared memory too.
            const bool in = K_CONTIGUOUS ? ((ok >> i) & 1u) && k_at < k : ok && k_at + i * ROW_STEP < k;
            cp_async_16_zfill(tile + dst + i * ROW_STEP * CHUNKS * PER_CHUNK, s, in ? 16 : 0);
            s += src_step;
        }
        src += k_step;
        k_at += TILE_K;
        if (SEGMENTED && k_at - k_first >= k) {  // past the segment's last tile: the next segment's first
            segment += seg_step;
            src = segment;
            k_at = k_first;
        }
    }
};

// B of an implicit-GEMM convolution over channels-last (NHWC) activations, k-contiguous: its rows
// are the output pixels of one image or of consecutive ones (a tile's rows may run on into the
// next image), k = (r, s, c) with the channel fastest, so a 16-byte chunk is
// 8 channels (bf16; 4 in f32) of the input at one (pixel, tap): one cp.async under one predicate,
// zero-filled in the padding. A thread keeps TileLoader's shape (ITERS rows ROW_STEP apart at one
// chunk column), so all its chunks share one k and one tap: divisions happen once in init; a k
// tile then costs the tap's step (additions, two compares) and per row an address add and a bit
// test. Needs c_in % PER_CHUNK == 0 (a chunk never straddles two taps) and kh, kw <= 8 (a row's
// tap masks fit 8 bits each); the input's element count must fit an int (conv.rs checks both).
template <int BN, int THREADS, typename T = __nv_bfloat16>
struct ConvGather {
    using Elem = T;
    static constexpr int PER_CHUNK = tc::Elem<T>::PER_CHUNK, TILE_K = tc::Elem<T>::BK;
    static constexpr int CHUNKS = 4;  // 64 bytes of k a row
    static constexpr int ROW_STEP = THREADS / CHUNKS;
    static constexpr int ITERS = BN / ROW_STEP;
    static_assert(THREADS % CHUNKS == 0 && BN % ROW_STEP == 0, "gather shape");
    static_assert(ROW_STEP % 16 == 0, "a thread's chunks share one swizzle key");
    static constexpr int WORDS = (ITERS + 3) / 4;  // 8 mask bits per row, four rows a word

    const T* img;  // the first image's pixel (0, 0), channel 0
    int pix[ITERS];            // elements from img to each row's window corner (iy0, ix0) in its image: negative in
                               // the padding
    unsigned int ok_r[WORDS], ok_s[WORDS];  // word i / 4, bit 8 (i % 4) + r: window row iy0 + r of row i lies
                                            // in the image (s: column ix0 + s)
    const T* at;   // img + the chunk's offset from a window corner, (r w + s) c_in + c
    int r, s, c;               // the chunk's tap and first channel; r >= kh once past k
    int dc, ds, dr, dtap, wrap;  // one k tile's step, and the tap offset's jump when s wraps
    int c_in, kh, kw;
    int dst;

    // `x`: the images' NHWC activations (h x w x c_in each); `p0`: the block's first output pixel;
    // `pixels`: the images' output pixels, `hw` (oh x ow) an image's.
    __device__ __forceinline__ void init(const T* x, int p0, int pixels, int hw, int h, int w, int c_in_, int kh_,
                                         int kw_, int stride, int pad_top, int pad_left, int ow) {
        const int tid = threadIdx.x, row = tid / CHUNKS, chunk = tid % CHUNKS;
        img = x;
        c_in = c_in_, kh = kh_, kw = kw_;
        dst = swizzled<CHUNKS, T>(row, chunk);
#pragma unroll
        for (int q = 0; q < WORDS; ++q) ok_r[q] = ok_s[q] = 0;
#pragma unroll
        for (int i = 0; i < ITERS; ++i) {
            const int p = p0 + row + i * ROW_STEP, image = p / hw, q = p - image * hw, oy = q / ow, ox = q - oy * ow;
            const int iy0 = oy * stride - pad_top, ix0 = ox * stride - pad_left;
            pix[i] = 0;  // rows past the images' pixels copy nothing (their masks stay 0)
            if (p < pixels) {
                pix[i] = ((image * h + iy0) * w + ix0) * c_in;
                const int q = i / 4, b = 8 * (i % 4);
                for (int t = 0; t < kh; ++t) ok_r[q] |= (unsigned)((unsigned)(iy0 + t) < (unsigned)h) << (b + t);
                for (int t = 0; t < kw; ++t) ok_s[q] |= (unsigned)((unsigned)(ix0 + t) < (unsigned)w) << (b + t);
            }
        }
        const int t0 = chunk * PER_CHUNK / c_in;
        c = chunk * PER_CHUNK - t0 * c_in, r = t0 / kw, s = t0 - r * kw;
        at = img + (r * w + s) * c_in + c;
        const int taps = TILE_K / c_in;
        dc = TILE_K - taps * c_in, dr = taps / kw, ds = taps - dr * kw;
        dtap = dc + (dr * w + ds) * c_in;
        wrap = (w - kw) * c_in;
    }

    __device__ __forceinline__ void load(T* tile) {
        // Shifting the masks by the tap lines row i's bit up at 8 (i % 4). While r < kh <= 8 the
        // bit is row i's own; past k (r >= kh) nothing is copied.
        // A zero-filled copy reads nothing, so its address (16-byte aligned all the same) need not
        // be valid: no select of a safe one.
        unsigned int ok[WORDS];
#pragma unroll
        for (int q = 0; q < WORDS; ++q) ok[q] = r < kh ? (ok_r[q] >> r) & (ok_s[q] >> s) : 0u;
#pragma unroll
        for (int i = 0; i < ITERS; ++i)
            cp_async_16_zfill(tile + dst + i * ROW_STEP * CHUNKS * PER_CHUNK, at + pix[i],
                              ok[i / 4] & (1u << (8 * (i % 4))) ? 16 : 0);
        // k += TILE_K; dc < c_in and ds < kw, so c and s carry at most once each.
        c += dc, s += ds, r += dr, at += dtap;
        if (c >= c_in) c -= c_in, ++s;  // the offset runs on unchanged: (s + 1) c_in + c - c_in
        if (s >= kw) s -= kw, ++r, at += wrap;
    }
};

// B of a convolution's weight gradient over channels-last (NHWC) activations, n-contiguous: its
// rows (k) are the batch's output pixels, its columns n = (r, s, c) with the channel fastest
// (KRSC), so a 16-byte chunk is again 8 channels (4 in f32) of the input at one (pixel, tap): one cp.async
// under one predicate, zero-filled in the padding. Unlike TileLoader's shape, a thread copies
// ITERS chunks of one row, TPR chunks apart: one output pixel a thread, whose window corner it
// carries from k tile to k tile, and per chunk a tap fixed for the whole loop (its offset from
// the corner and its row and column, for the padding test). A k tile moves the pixel TILE_K
// pixels on: TILE_K is split once into whole images, output rows and columns, so the step is three
// additions, a column carry into the row and a row carry into the next image, each at most once.
// Needs c_in % PER_CHUNK == 0 (a chunk never straddles two taps); the input's element count, with
// the images that the last k tile's rows run into past the batch, must fit an int (conv.rs checks
// both).
template <int BN, int THREADS, typename T = __nv_bfloat16>
struct WeightGradGather {
    using Elem = T;
    static constexpr int PER_CHUNK = tc::Elem<T>::PER_CHUNK, TILE_K = tc::Elem<T>::BK;
    static constexpr int CHUNKS = BN / PER_CHUNK;
    static constexpr int ITERS = TILE_K * CHUNKS / THREADS;
    static constexpr int TPR = CHUNKS / ITERS;  // threads a row
    static_assert(THREADS * ITERS == TILE_K * CHUNKS && CHUNKS % 8 == 0 && (TPR == 4 || TPR == 8 || TPR == 16),
                  "gather shape");

    const T* corner;     // the window corner of this thread's pixel (channel 0), maybe outside x
    int tap_off[ITERS], tap_r[ITERS], tap_s[ITERS];  // chunk j's offset from a window corner, its tap
    int iy0, ix0;        // the corner: outside the image in the padding
    int left;            // the split's pixels from this thread's row of the current tile on
    int h, w, stride;
    int iy_end, ix_end;  // the corner of an output row / column past the map's last
    int step_iy, step_ix, step_off;  // one k tile: TILE_K pixels
    int wrap_iy, wrap_ix, wrap_off_y, wrap_off_x;  // the carries: next image, next output row
    int dst;             // chunk 0's shared offset; chunk j's is dst ^ (j TPR PER_CHUNK)

    // `x_`: the batch's NHWC activations (n x h x w x c_in); `p0`: the split's first output pixel
    // of the batch, `pixels` its length; `n0`: the block's first column.
    __device__ __forceinline__ void init(const T* x_, int p0, int pixels, int n0, int h_, int w_, int c_in, int kh,
                                         int kw, int stride_, int pad_top, int pad_left, int oh, int ow) {
        // A quarter-warp's 8 copies land together and must fill 8 different 16-byte bank groups:
        // with 8 or 16 threads a row they are 8 consecutive chunks of one row; with 4, rows q and
        // q + 1 would XOR the same 4 chunks onto the same 4 groups, so the quarter-warp's second
        // row is the first one's + 4 (a different swizzle half) instead.
        const int tid = threadIdx.x, line = tid / TPR, chunk = tid % TPR;
        const int row = TPR != 4 ? line : (line & ~7) | ((line & 1) << 2) | ((line >> 1) & 3);
        h = h_, w = w_, stride = stride_;
        // chunk + j TPR = chunk ^ j TPR (chunk < TPR, a power of two): the swizzle moves it by an XOR.
        dst = swizzled<CHUNKS, T>(row, chunk);
#pragma unroll
        for (int j = 0; j < ITERS; ++j) {
            const int col = n0 + (chunk + j * TPR) * PER_CHUNK, t = col / c_in, r = t / kw, s = t - r * kw;
            tap_off[j] = (r * w + s) * c_in + col - t * c_in;
            // A column past the weight's taps copies nothing: its row test never passes.
            tap_r[j] = r < kh ? r : -(1 << 29);
            tap_s[j] = s;
        }
        left = pixels - row;
        iy_end = oh * stride - pad_top, ix_end = ow * stride - pad_left;
        const int image = oh * ow, images = TILE_K / image, rest = TILE_K - images * image, rows = rest / ow;
        step_iy = rows * stride, step_ix = (rest - rows * ow) * stride;
        step_off = ((images * h + step_iy) * w + step_ix) * c_in;
        wrap_iy = oh * stride, wrap_ix = ow * stride;
        wrap_off_x = (stride * w - wrap_ix) * c_in, wrap_off_y = (h - wrap_iy) * w * c_in;
        const int p = p0 + row, img = p / image, q = p - img * image, oy = q / ow;
        iy0 = oy * stride - pad_top, ix0 = (q - oy * ow) * stride - pad_left;
        corner = x_ + ((img * h + iy0) * w + ix0) * c_in;
    }

    __device__ __forceinline__ void load(T* tile) {
#pragma unroll
        for (int j = 0; j < ITERS; ++j) {
            const bool in = left > 0 && (unsigned)(iy0 + tap_r[j]) < (unsigned)h &&
                            (unsigned)(ix0 + tap_s[j]) < (unsigned)w;
            // A zero-filled copy reads nothing: its address need not be valid.
            cp_async_16_zfill(tile + (dst ^ (j * TPR * PER_CHUNK)), corner + tap_off[j], in ? 16 : 0);
        }
        iy0 += step_iy, ix0 += step_ix, left -= TILE_K;
        int step = step_off;
        if (ix0 >= ix_end) ix0 -= wrap_ix, iy0 += stride, step += wrap_off_x;
        if (iy0 >= iy_end) iy0 -= wrap_iy, step += wrap_off_y;
        corner += step;
    }
};

// A warp's fragments of one mma k step: A as WM/16 m16 x k16 tiles, B as WN/8 k16 x n8 tiles, in
// the register layout of mma.m16n8k16 (arch.cuh); for TF32 m16 x k8 and k8 x n8 tiles, one f32 a
// register, in mma.m16n8k8's layout (the same register counts).
template <int WM, int WN>
struct Fragments {
    uint32_t a[WM / 16][4];
    uint32_t b[WN / 8][2];
};

// Lane offsets for a warp's ldmatrix.x4 loads from one operand tile; `at(i, s)` is the offset of
// m16 tile i (A) or n16 pair i (B) at k step s of the stage. The swizzle's XOR differs per k
// step (k-contiguous) or per tile i (else): those offsets are kept per lane, one register each,
// and the rest of at(i, s) is a constant, so that an ldmatrix costs no address arithmetic beyond
// the stage's base. Offsets are in elements of T.
//
// TF32 notes. k-contiguous f32 tiles have the bf16 tiles' bytes, and ldmatrix's 8 x 8 b16
// matrices are 8 rows x 4 f32, lane (g, t) getting row g, f32 t: exactly mma.m16n8k8.tf32's a0
// (row g, k t), a1 (g + 8, t), a2 (g, t + 4), a3 (g + 8, t + 4) and b0 (n g, k t), b1 (g, t + 4)
// from the same four matrices as bf16's. An m- or n-contiguous f32 tile (rows k) is read with
// 4-byte loads: element (k 8 s + 4 e + t, column 8 q + g) for column group q (A: m16 tile q / 2,
// half q % 2; B: n8 tile q). The swizzle key 2 (k % 4) = 2 t is the lane's own, so the chunk of
// column 8 q + g is 8 (q / 4) + 2 ((q % 4) ^ t) + g / 4: four lane offsets (q % 4) and constants.
// A warp's 32 loads hit rows t (4) x chunks {2 j, 2 j + 1} with j = (q % 4) ^ t: 4 different
// pairs of bank groups, 32 different banks.
template <bool IS_A, bool K_CONTIGUOUS, int MN, int TILES, typename T = __nv_bfloat16>
struct FragmentOffsets {
    static constexpr int CHUNKS = TileShape<K_CONTIGUOUS, MN, T>::CHUNKS;
    static constexpr int PER_CHUNK = Elem<T>::PER_CHUNK;
    static constexpr bool SCALAR = Elem<T>::TF32 && !K_CONTIGUOUS;
    static constexpr int KEYS = K_CONTIGUOUS ? 2 : SCALAR ? 4 : TILES;
    int off[KEYS];

    // `w0`: the warp's first row (A: m, B: n) inside the block tile, a multiple of 32; `tile`: the
    // operand tile's offset in a stage.
    __device__ __forceinline__ void init(int w0, int tile) {
        const int l = threadIdx.x % 32;
        if (K_CONTIGUOUS) {
            // Rows w0 + 16 i + row_in, chunk 2 s + chunk_in. A's matrices are (rows 0-7, chunk 0),
            // (8-15, 0), (0-7, 1), (8-15, 1); B's (n 0-7, 0), (0-7, 1), (8-15, 0), (8-15, 1), so that
            // its registers are b[2p][0..1], b[2p+1][0..1]. (A chunk is k 0-7 in bf16, 0-3 in f32.)
            const int row_in = IS_A ? (l & 15) : ((l >> 4) << 3) | (l & 7);
            const int chunk_in = IS_A ? (l >> 4) : ((l >> 3) & 1);
            const int row = w0 + row_in, line = row >> 1;
            const int low = (((row & 1) << 2) | chunk_in) ^ (line & 7);
#pragma unroll
            for (int s = 0; s < KEYS; ++s) off[s] = tile + ((line << 3) | (low ^ (s << 1))) * PER_CHUNK;
        } else if (SCALAR) {
            const int g = l >> 2, t = l & 3;
#pragma unroll
            for (int u = 0; u < 4; ++u)
                off[u] = tile + t * CHUNKS * 4 + w0 + ((2 * (u ^ t) + (g >> 2)) << 2) + (g & 3);
        } else {
            // Rows (k) 16 s + row_in, chunk w0 / 8 + 2 i + chunk_in; .trans hands each lane the
            // elements of the transposed 8 x 8 matrices. A's matrices are (m 0-7, k 0-7), (8-15,
            // 0-7), (0-7, 8-15), (8-15, 8-15); B's (k 0-7, n 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15).
            const int j = l >> 3;
            const int row_in = (IS_A ? (j >> 1) : (j & 1)) * 8 + (l & 7);
            const int chunk_in = IS_A ? (j & 1) : (j >> 1);
            const int chunk0 = w0 / 8;
            const int low = (((chunk0 & 7) | chunk_in) ^ (l & 7)) << 3;
#pragma unroll
            for (int i = 0; i < KEYS; ++i) off[i] = tile + ((row_in * CHUNKS + (chunk0 & ~7)) << 3) + (low ^ (i << 4));
        }
    }

    __device__ __forceinline__ int at(int i, int s) const {
        if (K_CONTIGUOUS) return off[s] + i * 16 * 4 * PER_CHUNK;  // 16 rows of 4 chunks
        return off[i] + s * 16 * CHUNKS * 8;
    }

    // SCALAR: column group q's element at k row 8 s + 4 e + t.
    __device__ __forceinline__ int at(int q, int s, int e) const {
        return off[q & 3] + (q >> 2) * 32 + (8 * s + 4 * e) * CHUNKS * 4;
    }
};

template <bool K_CONTIGUOUS>
__device__ __forceinline__ void ldmatrix_operand(uint32_t (&r)[4], const void* p) {
    if (K_CONTIGUOUS) {
        ldmatrix_x4(r, p);
    } else {
        ldmatrix_x4_trans(r, p);
    }
}

// One f32 of shared memory as a 32-bit register (a TF32 fragment element).
__device__ __forceinline__ uint32_t ld_shared_bits(const float* p) { return __float_as_uint(*p); }

template <bool A_K, bool B_K, int BM, int BN, int WM, int WN, typename T>
__device__ __forceinline__ void load_fragments(Fragments<WM, WN>& f, const T* stage,
                                               const FragmentOffsets<true, A_K, BM, WM / 16, T>& ao,
                                               const FragmentOffsets<false, B_K, BN, WN / 16, T>& bo, int s) {
    if constexpr (FragmentOffsets<true, A_K, BM, WM / 16, T>::SCALAR) {
#pragma unroll
        for (int i = 0; i < WM / 16; ++i)
#pragma unroll
            for (int q = 0; q < 4; ++q) f.a[i][q] = ld_shared_bits(stage + ao.at(2 * i + (q & 1), s, q >> 1));
    } else {
#pragma unroll
        for (int i = 0; i < WM / 16; ++i) ldmatrix_operand<A_K>(f.a[i], stage + ao.at(i, s));
    }
    if constexpr (FragmentOffsets<false, B_K, BN, WN / 16, T>::SCALAR) {
#pragma unroll
        for (int j = 0; j < WN / 8; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e) f.b[j][e] = ld_shared_bits(stage + bo.at(j, s, e));
    } else {
#pragma unroll
        for (int p = 0; p < WN / 16; ++p) {
            uint32_t r[4];
            ldmatrix_operand<B_K>(r, stage + bo.at(p, s));
            f.b[2 * p][0] = r[0], f.b[2 * p][1] = r[1], f.b[2 * p + 1][0] = r[2], f.b[2 * p + 1][1] = r[3];
        }
    }
}

template <int WM, int WN, typename T>
__device__ __forceinline__ void mma_fragments(float (&acc)[WM / 16][WN / 8][4], const Fragments<WM, WN>& f) {
    if constexpr (Elem<T>::TF32) {
        // Rounded to TF32 here, once a register: the tensor cores truncate the low 13 bits.
        uint32_t b[WN / 8][2];
#pragma unroll
        for (int j = 0; j < WN / 8; ++j) b[j][0] = tf32_round_bits(f.b[j][0]), b[j][1] = tf32_round_bits(f.b[j][1]);
#pragma unroll
        for (int i = 0; i < WM / 16; ++i) {
            uint32_t a[4];
#pragma unroll
            for (int q = 0; q < 4; ++q) a[q] = tf32_round_bits(f.a[i][q]);
#pragma unroll
            for (int j = 0; j < WN / 8; ++j) mma_m16n8k8_tf32(acc[i][j], a, b[j], acc[i][j]);
        }
    } else {
#pragma unroll
        for (int i = 0; i < WM / 16; ++i)
#pragma unroll
            for (int j = 0; j < WN / 8; ++j) mma_m16n8k16_bf16(acc[i][j], f.a[i], f.b[j], acc[i][j]);
    }
}

// Shared memory the kernel needs: the pipeline's stages, or the epilogue's staging if larger.
template <int BM, int BN, int STAGES, typename TC>
struct SmemSize {
    static constexpr int STAGE = (BM + BN) * 64;  // 64 bytes of k a row, either input type
    static constexpr int ROW_BYTES = BN * (int)sizeof(TC) + (sizeof(TC) == 4 ? 32 : 16);
    static constexpr int PIPELINE = STAGES * STAGE;
    // The epilogue stages as many 64-row warp rows of the block tile as fit in the pipeline's
    // memory (at least one), in as many passes as it takes.
    static constexpr int BYTES = PIPELINE > 64 * ROW_BYTES ? PIPELINE : 64 * ROW_BYTES;
    static constexpr int FIT = BYTES / ROW_BYTES / 64 * 64;
    static constexpr int PASS_ROWS = FIT < BM ? FIT : BM;
};

// Where column `col` of C's rows goes when C is one stride phase of a larger map (a data
// gradient by stride phases, conv.cu): the phase's grid is `wa` columns wide, its pixel (a, b) is
// the map's (a stride + py, b stride + px), and a row of C is a `plane` of the map. Unused
// (PHASED false) for every other product, whose rows are C's own n columns.
struct PhaseMap {
    int wa, w, stride, first, plane;  // first = py w + px

    __device__ __forceinline__ long long at(int row, int col) const {
        const int a = col / wa, b = col - a * wa;
        return (long long)row * plane + (long long)a * stride * w + b * stride + first;
    }
};

// Where element (row, col) of an m x n C lies: row-major, for every product but the ones below.
struct RowMajor {
    static constexpr bool SPANS = false;
    __device__ __forceinline__ long long at(int row, int col, int n) const { return (long long)row * n + col; }
    // A row's stretch of consecutive elements in C.
    __device__ __forceinline__ int run(int n) const { return n; }
};

// C's columns the output pixels of consecutive images, each image's rows x hw block `image`
// elements after the one before (a channels-last product whose pixel tiles run on from one image
// into the next, conv.cu). A block tile that starts at column bn has its column col in image j0 +
// d, pixel (col - first) - d hw, with j0 = bn / hw and first = j0 hw, and d comes without a
// division: where hw >= BN a tile reaches past at most one image end (d is a compare), and where
// hw < BN, col - first < 2 BN, so that one product with 1 / hw finds it (store_span's argument: the
// quotient lies at least 0.5 / hw from an integer, and the reciprocal's 2 ulp move it far less).
struct ImageCols {
    static constexpr bool SPANS = true;
    int hw, first;
    bool wide;
    long long image, base;  // base = j0 image
    float inv;

    template <int BN>
    __device__ __forceinline__ static ImageCols of(int hw, long long image, int bn) {
        ImageCols c;
        const int j0 = bn / hw;
        c.hw = hw, c.first = j0 * hw, c.wide = hw >= BN, c.image = image, c.base = j0 * image;
        c.inv = __fdividef(1.0f, (float)hw);
        return c;
    }

    __device__ __forceinline__ long long at(int row, int col, int) const {
        const int x = col - first;
        const int d = wide ? (int)(x >= hw) : __float2int_rz(((float)x + 0.5f) * inv);
        return base + d * image + (long long)row * hw + (x - d * hw);
    }
    __device__ __forceinline__ int run(int) const { return hw; }
};

// The epilogue's post-op when there is none.
struct NoPost {
    static constexpr bool ON = false, SUMS = false;
    static constexpr int TABLE = 1;  // float2s a row in the post-op's table
    __device__ __forceinline__ void stage(float2*, int, int, int) const {}
    template <int VEC>
    __device__ __forceinline__ void residual(long long, float (&)[VEC]) const {}
    __device__ __forceinline__ float value(float v, float2, float) const { return v; }
    __device__ __forceinline__ float element(float v, float2, long long) const { return v; }
    __device__ __forceinline__ NoPost at_image(long long) const { return *this; }
    template <int, int, int, typename>
    __device__ __forceinline__ void reduce_rows(const unsigned char*, int, int, int, int, int, int) const {}
};

// Training-mode BatchNorm's statistics of a convolution's output (C rows are channels, blockIdx.z
// the image, or the span of images whose pixels are C's columns), taken from the staged rows as
// they are stored (rounded to TC) so that BatchNorm need not read them back: per row and block
// tile, (count, mean, m2) of the tile's columns. Run (image % per) gridDim.x + blockIdx.x of pair
// gc = (image / per) m + row, image = blockIdx.z (its statistics group: `per` of them each) goes
// to counts[run pairs + gc], with the means and m2 one and two
// planes of runs x pairs floats further: a warp's rows are consecutive pairs, so each of its
// three stores is one run of consecutive floats; batchnorm_merge_stats_f32 (norm.cu) merges a
// pair's runs in order. The values pass unchanged.
// A row's tile is summed less its first value (a sample of the same spread, so that the squares'
// sum does not cancel against a large mean), by G lanes that read 4-byte words G apart: the row
// padding makes the row stride G words modulo 32 banks (G = 4 for bf16 rows, 8 for f32), so the
// warp's 32 / G rows x G words fall on 32 different banks.
struct BnStatsPost : NoPost {
    float* partial;
    int per, groups;  // products (blockIdx.z) a statistics group, and groups (gridDim.z = per groups)

    __device__ __forceinline__ BnStatsPost at_image(long long) const { return *this; }

    template <int BN, int ROW_BYTES, int THREADS, typename TC>
    __device__ __forceinline__ void reduce_rows(const unsigned char* smem, int r0, int rows, int bm, int bn, int m,
                                                int n) const {
        const int z = (int)blockIdx.z, group = z / per;
        const size_t pairs = (size_t)groups * m, plane = pairs * per * gridDim.x;
        const size_t run = (size_t)(z - group * per) * gridDim.x + blockIdx.x;
        float* first_row = partial + run * pairs + (size_t)group * m + bm + r0;
        // A whole tile's rows test no column (the interior tiles); the last tile of a map masks.
        if (n - bn >= BN)
            reduce_rows_of<BN, ROW_BYTES, THREADS, TC, true>(smem, first_row, plane, r0, rows, bm, m, BN);
        else
            reduce_rows_of<BN, ROW_BYTES, THREADS, TC, false>(smem, first_row, plane, r0, rows, bm, m, n - bn);
    }

    // Row r's count to first_row[r], its mean and m2 one and two planes further.
    template <int BN, int ROW_BYTES, int THREADS, typename TC, bool WHOLE>
    __device__ __forceinline__ void reduce_rows_of(const unsigned char* smem, float* first_row, size_t plane, int r0,
                                                   int rows, int bm, int m, int cols) const {
        constexpr int G = ROW_BYTES / 4 % 32, ROWS_AT_ONCE = 32 / G, PER_WORD = 4 / (int)sizeof(TC);
        constexpr int WORDS = BN / PER_WORD, WARPS = THREADS / 32;
        static_assert(G == 4 || G == 8, "the row padding keeps a row's G words on their own banks");
        static_assert(WORDS % G == 0, "whole words per lane");
        const int lane = threadIdx.x % 32, part = lane % G;
        // 1 / cols within 2 ulp (no division subroutine): far below the sums' own rounding.
        const float inv = WHOLE ? 1.0f / BN : __fdividef(1.0f, (float)cols);
        // Every lane of a warp takes the same number of rows (rows is a multiple of 32 / G), so
        // that the shuffles below see whole warps.
        for (int r = threadIdx.x / 32 * ROWS_AT_ONCE + lane / G; r < rows; r += WARPS * ROWS_AT_ONCE) {
            const unsigned char* row_at = smem + r * ROW_BYTES;
            const float shift = load(*reinterpret_cast<const TC*>(row_at));
            // One sum and one sum of squares per element of a word: two independent chains.
            float s1[PER_WORD] = {}, s2[PER_WORD] = {};
#pragma unroll
            for (int i = 0; i < WORDS / G; ++i) {
                const int word = i * G + part;
                const uint32_t bits = *reinterpret_cast<const uint32_t*>(row_at + 4 * word);
                // One f32, or two bf16 (element 0 in the low half): a bf16 is an f32's high half.
                const float v[2] = {__uint_as_float(PER_WORD == 1 ? bits : bits << 16),
                                    __uint_as_float(bits & 0xffff0000u)};
#pragma unroll
                for (int e = 0; e < PER_WORD; ++e) {
                    const float d = WHOLE || word * PER_WORD + e < cols ? v[e] - shift : 0.0f;
                    s1[e] += d;
                    s2[e] = fmaf(d, d, s2[e]);
                }
            }
            float t1 = s1[0], t2 = s2[0];
            if (PER_WORD == 2) t1 += s1[PER_WORD - 1], t2 += s2[PER_WORD - 1];
#pragma unroll
            for (int offset = G / 2; offset > 0; offset >>= 1) {
                t1 += __shfl_xor_sync(0xffffffffu, t1, offset);
                t2 += __shfl_xor_sync(0xffffffffu, t2, offset);
            }
            if (part == 0 && bm + r0 + r < m) {
                first_row[r] = (float)cols;
                first_row[r + plane] = shift + t1 * inv;
                first_row[r + 2 * plane] = fmaxf(fmaf(-t1, t1 * inv, t2), 0.0f);
            }
        }
    }
};

// Eval-mode BatchNorm after a convolution whose C rows are channels: y = act(z scale + shift
// [+ res]) with z the product rounded to TC, exactly the values BatchNorm's own eval kernel
// (norm.cu) makes from a stored z, without z's store and load. Each row's map comes from the
// same function (bn_eval_affine), once per block and pass into a shared table (one division and
// square root a thread). `res` is laid out as C (null: no residual).
template <typename TC>
struct BnEvalPost {
    static constexpr bool ON = true, SUMS = false;
    static constexpr int TABLE = 1;
    const float *gamma, *beta, *mean, *var;
    const TC* res;
    float eps;
    int act;

    // The same post-op for the C of another image: res moves by `elems` as C does.
    __device__ __forceinline__ BnEvalPost at_image(long long elems) const {
        BnEvalPost p = *this;
        if (res) p.res += elems;
        return p;
    }

    // Row `row`'s map, (scale, shift).
    __device__ __forceinline__ float2 map(int row) const {
        const BnAffine a = bn_eval_affine(gamma[row], beta[row], mean[row], var[row], eps);
        return make_float2(a.scale, a.shift);
    }

    // table[t] = the map of row first + t, for the `rows` rows of a pass inside C's m: one
    // 8-byte store a thread (two 4-byte ones would conflict 2 ways).
    __device__ __forceinline__ void stage(float2* table, int first, int rows, int m) const {
        for (int t = threadIdx.x; t < rows && first + t < m; t += blockDim.x) {
            const float2 a = map(first + t);
            *reinterpret_cast<unsigned long long*>(table + t) =
                (unsigned long long)__float_as_uint(a.x) | (unsigned long long)__float_as_uint(a.y) << 32;
        }
    }

    // The residual's VEC values from element `at` on (VEC * sizeof(TC) bytes, aligned to that),
    // when there is one.
    template <int VEC>
    __device__ __forceinline__ void residual(long long at, float (&r)[VEC]) const {
        if (res) load_vec<VEC>(res + at, r);
    }

    // The value `v` of C in a row whose map is `m`, `r` its residual (read only when there is one).
    __device__ __forceinline__ float value(float v, float2 m, float r) const {
        float z = bn_affine_map(v, BnAffine{m.x, m.y});
        if (res) z += r;
        return act_apply(act, z);
    }

    __device__ __forceinline__ float element(float v, float2 m, long long at) const {
        float z = bn_affine_map(v, BnAffine{m.x, m.y});
        if (res) z += load(res[at]);
        return act_apply(act, z);
    }

    template <int, int, int, typename>
    __device__ __forceinline__ void reduce_rows(const unsigned char*, int, int, int, int, int, int) const {}
};

// C's stores, from the rows a pass staged (ROW_BYTES apart in shared memory, `table` the
// post-op's map of each), in the widest accesses C's layout allows: whole rows 16-byte aligned
// (n a multiple of 16 bytes) or 8-byte aligned (14 x 14 maps in bf16) take one vector a thread,
// consecutive threads along a row; a tile of whole rows whose ends are not aligned (n <= BN: 7 x 7
// maps) is one contiguous span of C, stored in 16-byte vectors that cross rows; anything else, and
// a stride phase's pixels, one element a thread.

// v + beta C (rounded to TC before a post-op, as storing the sum and applying the post-op to it
// would), then the post-op; rows[e] is value e's pass row.
template <int VEC, typename TC, typename Post>
__device__ __forceinline__ void finish_values(float (&v)[VEC], const TC* to, long long at, float beta,
                                              const float2* table, const int (&rows)[VEC], const Post& post) {
    if (beta != 0.0f) {
        float old[VEC];
        load_vec<VEC>(to, old);
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            v[e] = fmaf(beta, old[e], v[e]);
            if (Post::ON) v[e] = load(store<TC>(v[e]));
        }
    }
    if (Post::ON) {
        float r[VEC];
        post.template residual<VEC>(at, r);
#pragma unroll
        for (int e = 0; e < VEC; ++e) v[e] = post.value(v[e], table[rows[e]], r[e]);
    }
}

// VEC staged values (VEC * sizeof(TC) = 16 or 8 bytes, aligned) as f32.
template <int VEC, typename TC>
__device__ __forceinline__ void load_staged(const unsigned char* p, float (&v)[VEC]) {
    constexpr int WORDS = VEC * (int)sizeof(TC) / 4;
    static_assert(WORDS == 4 || WORDS == 2, "16- or 8-byte vectors");
    uint32_t w[4];
    if (WORDS == 4) {
        const uint4 u = ld_shared_v4(p);
        w[0] = u.x, w[1] = u.y, w[2] = u.z, w[3] = u.w;
    } else {
        const uint2 u = ld_shared_v2(p);
        w[0] = u.x, w[1] = u.y;
    }
#pragma unroll
    for (int i = 0; i < WORDS; ++i) {
        if (sizeof(TC) == 4)
            v[i] = __uint_as_float(w[i]);
        else
            unpack_bf16x2(w[i], v[2 * i], v[2 * i + 1]);
    }
}

// Training BatchNorm's backward reduce pass, done by the epilogue of the data gradient that
// writes BatchNorm's output gradient dy (C rows are BatchNorm's channels, blockIdx.z the image or
// a span of them, as in BnStatsPost):
// dy = the product rounded to TC, exactly as a beta = 0 epilogue stores it, or with `res` (the
// gradient already there: a ResNet block's identity path, when a residual went into y) plus that,
// rounded again, as a beta = 1 epilogue stores it; then dz = dy act'(y) is what C gets, act' from
// the forward's mask after a residual (a bit a value, a byte per 16-byte vector: norm.cu's
// act_mask_of), else from y recomputed from x (bn_recompute_y, by the forward's affine map of
// gamma, beta and the saved statistics). Each row's (sum dz, sum dz xh), xh = (x - mean) invstd,
// over the block tile's columns goes to run (image % per) gridDim.x + blockIdx.x of pair gc =
// (image / per) m + row, as BnStatsPost's statistics: partial[run pairs + gc], the second sum a
// plane of runs x pairs floats further; norm.cu's batchnorm_merge_sums_f32 merges a pair's runs
// in order. So the reduce pass, which read x, dy (and the mask) and wrote dz, is gone; this
// epilogue reads x (and the mask). The launcher guarantees rows of C 16-byte aligned, and so one
// mask byte a stored vector.
template <typename TC>
struct BnBwdSumsPost : NoPost {
    static constexpr bool ON = true, SUMS = true;
    static constexpr int VEC = 16 / (int)sizeof(TC), TABLE = 2;
    const TC *res, *x;
    const unsigned char* mask;
    const float *gamma, *beta, *mean, *invstd;
    float* partial;
    int per, groups, act;

    __device__ __forceinline__ BnBwdSumsPost at_image(long long elems) const {
        BnBwdSumsPost p = *this;
        p.x += elems;
        if (res) p.res += elems, p.mask += elems / VEC;
        return p;
    }

    // table[t] = (mean, invstd) of row first + t's pair in this image's statistics group, and
    // table[rows + t] its affine map (scale, shift) where y is recomputed (no residual).
    __device__ __forceinline__ void stage(float2* table, int first, int rows, int m) const {
        const int gc0 = (int)blockIdx.z / per * m + first;
        for (int t = threadIdx.x; first + t < m && t < rows; t += blockDim.x) {
            const float mu = mean[gc0 + t], is = invstd[gc0 + t];
            const BnAffine a = res ? BnAffine{0.0f, 0.0f} : bn_affine_of(gamma[first + t], beta[first + t], mu, is);
            *reinterpret_cast<unsigned long long*>(table + t) =
                (unsigned long long)__float_as_uint(mu) | (unsigned long long)__float_as_uint(is) << 32;
            *reinterpret_cast<unsigned long long*>(table + rows + t) =
                (unsigned long long)__float_as_uint(a.scale) | (unsigned long long)__float_as_uint(a.shift) << 32;
        }
    }

    // The pass's rows, a 16-byte vector a thread, ROW_VECS consecutive threads along a row: every
    // lane runs every iteration (out-of-range vectors add zeros), so that a row's lanes can sum
    // by shuffles; the row's lane 0 writes its sums.
    template <int BN, int ROW_BYTES, int THREADS, typename Cols>
    __device__ __forceinline__ void store_rows_of(const unsigned char* smem, const float2* table, int r0, int rows,
                                                  TC* __restrict__ c, int bm, int bn, int m, int n,
                                                  const Cols& cols) const {
        constexpr int ROW_VECS = BN / VEC;
        static_assert(ROW_VECS <= 32 && 32 % ROW_VECS == 0 && THREADS % ROW_VECS == 0, "a row's lanes in one warp");
        const int group = (int)blockIdx.z / per, image = (int)blockIdx.z - group * per;
        const size_t pairs = (size_t)groups * m, plane = pairs * per * gridDim.x;
        const size_t run = (size_t)image * gridDim.x + blockIdx.x;
        float* first_row = partial + run * pairs + (size_t)group * m;
        for (int idx = threadIdx.x; idx < rows * ROW_VECS; idx += THREADS) {
            const int r = idx / ROW_VECS, ch = idx % ROW_VECS;
            const int row = bm + r0 + r, col = bn + ch * VEC;
            float sdz = 0.0f, sdzx = 0.0f;
            if (row < m && col < n) {
                const long long at = cols.at(row, col, n);
                float v[VEC], old[VEC], xv[VEC];
                load_staged<VEC, TC>(smem + r * ROW_BYTES + ch * VEC * (int)sizeof(TC), v);
                load_vec<VEC>(x + at, xv);
                const float2 s = table[r], map = table[rows + r];
                unsigned bits = 0;
                if (res) load_vec<VEC>(res + at, old), bits = mask[at / VEC];
#pragma unroll
                for (int e = 0; e < VEC; ++e) {
                    // act' as the reduce pass takes it: the bit as a factor (an inf dy makes NaN
                    // there too), or act_grad of the recomputed y.
                    float dz;
                    if (res)
                        dz = load(store<TC>(v[e] + old[e])) * (float)((bits >> e) & 1u);
                    else
                        dz = load(store<TC>(v[e])) *
                             act_grad(act, bn_recompute_y<TC>(xv[e], BnAffine{map.x, map.y}, act));
                    sdz += dz;
                    sdzx += dz * (xv[e] - s.x) * s.y;
                    v[e] = dz;
                }
                store_vec<VEC>(c + at, v);
            }
#pragma unroll
            for (int offset = ROW_VECS / 2; offset > 0; offset >>= 1) {
                sdz += __shfl_xor_sync(0xffffffffu, sdz, offset);
                sdzx += __shfl_xor_sync(0xffffffffu, sdzx, offset);
            }
            if (ch == 0 && row < m) first_row[row] = sdz, first_row[row + plane] = sdzx;
        }
    }
};

// Rows of C that start VEC-aligned: a VEC-value vector a thread.
template <int VEC, int BN, int ROW_BYTES, int THREADS, typename TC, typename Post, typename Cols>
__device__ __forceinline__ void store_row_vectors(const unsigned char* smem, const float2* table, int r0, int rows,
                                                  TC* __restrict__ c, int bm, int bn, int m, int n, float beta,
                                                  const Post& post, const Cols& cols) {
    constexpr int ROW_VECS = BN / VEC;
    for (int idx = threadIdx.x; idx < rows * ROW_VECS; idx += THREADS) {
        const int r = idx / ROW_VECS, ch = idx % ROW_VECS;
        const int row = bm + r0 + r, col = bn + ch * VEC;
        if (row >= m || col >= n) continue;
        const long long at = cols.at(row, col, n);
        float v[VEC];
        load_staged<VEC, TC>(smem + r * ROW_BYTES + ch * VEC * (int)sizeof(TC), v);
        int of[VEC];
#pragma unroll
        for (int e = 0; e < VEC; ++e) of[e] = r;
        finish_values<VEC>(v, c + at, at, beta, table, of, post);
        store_vec<VEC>(c + at, v);
    }
}

// The pass's `count` values of whole rows, C's elements [at, at + count) from `first` (16-byte
// aligned, count a multiple of 16 bytes): 16-byte vectors, value e of a thread's from pass row
// f / n, column f % n (f its place in the span). The row comes from one product with 1 / n: f
// + 0.5 < 2^14 and n <= BN, so the quotient lies at least 0.5 / n from an integer and the
// reciprocal's error (2 ulp) moves it by under 2^14 / n * 2^-21.
template <int ROW_BYTES, int THREADS, typename TC, typename Post>
__device__ __forceinline__ void store_span(const unsigned char* smem, const float2* table, TC* __restrict__ first,
                                           long long at, int count, int n, float beta, const Post& post) {
    constexpr int VEC = 16 / (int)sizeof(TC);
    const float inv_n = __fdividef(1.0f, (float)n);
    for (int f = threadIdx.x * VEC; f < count; f += THREADS * VEC) {
        int r = __float2int_rz(((float)f + 0.5f) * inv_n), col = f - r * n;
        float v[VEC];
        int of[VEC];
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            v[e] = load(*reinterpret_cast<const TC*>(smem + r * ROW_BYTES + col * (int)sizeof(TC)));
            of[e] = r;
            if (++col == n) col = 0, ++r;
        }
        finish_values<VEC>(v, first + f, at + f, beta, table, of, post);
        store_vec<VEC>(first + f, v);
    }
}

// One staged value `v` to C's element `to` (`at` from C's start): beta's add, the post-op by the
// row's `map`, rounded to TC.
template <typename TC, typename Post>
__device__ __forceinline__ void store_element(float v, TC* to, long long at, float beta, float2 map,
                                              const Post& post) {
    if (beta != 0.0f) v = fmaf(beta, load(*to), v);
    if (beta != 0.0f && Post::ON) v = load(store<TC>(v));
    if (Post::ON) v = post.element(v, map, at);
    *to = store<TC>(v);
}

// One element a thread, consecutive threads along a row: rows that are not 16-byte aligned (n
// not a multiple of the chunk) in a tile of part rows, or a stride phase's pixels.
template <int BN, int ROW_BYTES, int THREADS, bool PHASED, typename TC, typename Post, typename Cols>
__device__ __forceinline__ void store_elements(const unsigned char* smem, const float2* table, int r0, int rows,
                                               TC* __restrict__ c, int bm, int bn, int m, int n, float beta,
                                               const PhaseMap& map, const Post& post, const Cols& cols) {
    for (int idx = threadIdx.x; idx < rows * BN; idx += THREADS) {
        const int r = idx / BN, e = idx % BN;
        const int row = bm + r0 + r, col = bn + e;
        if (row >= m || col >= n) continue;
        const long long at = PHASED ? map.at(row, col) : cols.at(row, col, n);
        const float v = load(*reinterpret_cast<const TC*>(smem + r * ROW_BYTES + e * (int)sizeof(TC)));
        store_element(v, c + at, at, beta, table[r], post);
    }
}

// The pass's rows where C's columns are the pixels of images narrower than a tile whose rows take
// no vector (ImageCols; 7 x 7 maps, 49 pixels), image by image: a whole image's rows x hw values
// are one contiguous span of C (store_span's 16-byte vectors, where it starts aligned), the parts
// of the images cut by the tile's ends an element a thread, consecutive threads along a row (the
// row from one product with 1 / width, exact as store_span's: idx < rows x BN <= 2^14).
template <int BN, int ROW_BYTES, int THREADS, typename TC, typename Post>
__device__ __forceinline__ void store_images(const unsigned char* smem, const float2* table, int r0, int rows,
                                             TC* __restrict__ c, int bm, int bn, int m, int n, float beta,
                                             const Post& post, const ImageCols& cols) {
    constexpr int PER_CHUNK = 16 / (int)sizeof(TC);
    const int hw = cols.hw, live = max(min(rows, m - bm - r0), 0), end = min(BN, n - bn);
    // s0: the staged column of image j0 + d's pixel 0 (negative where the tile starts inside it).
    for (int s0 = cols.first - bn, d = 0; s0 < end; s0 += hw, ++d) {
        const int ca = max(s0, 0), cb = min(s0 + hw, end);
        const long long at = cols.base + d * cols.image + (long long)(bm + r0) * hw;  // the pass's first row
        if (ca == s0 && cb == s0 + hw && reinterpret_cast<uintptr_t>(c + at) % 16 == 0 && live * hw % PER_CHUNK == 0) {
            store_span<ROW_BYTES, THREADS>(smem + s0 * (int)sizeof(TC), table, c + at, at, live * hw, hw, beta, post);
            continue;
        }
        const int width = cb - ca;
        const float inv = __fdividef(1.0f, (float)width);
        for (int idx = threadIdx.x; idx < live * width; idx += THREADS) {
            const int r = __float2int_rz(((float)idx + 0.5f) * inv), e = ca + idx - r * width;
            const long long to = at + (long long)r * hw + (e - s0);
            const float v = load(*reinterpret_cast<const TC*>(smem + r * ROW_BYTES + e * (int)sizeof(TC)));
            store_element(v, c + to, to, beta, table[r], post);
        }
    }
}

// The epilogue: the warps whose rows lie in [r0, r0 + rows) write their accumulators (times alpha,
// rounded to TC) to shared memory, then the block writes those rows to C, each value through
// `post` (after beta's add), each to where `cols` puts it. ROWS_ALIGNED: the launcher guarantees
// that every row of C (of an image, where C's columns span images) starts 16-byte aligned, and only
// the 16-byte path is compiled.
template <int BM, int BN, int WM, int WN, int THREADS, typename TC, bool PHASED = false, typename Post = NoPost,
          bool ROWS_ALIGNED = false, typename Cols = RowMajor>
__device__ __forceinline__ void store_rows(unsigned char* smem, const float (&acc)[WM / 16][WN / 8][4], int wm,
                                           int wn, int r0, int rows, TC* __restrict__ c, int bm, int bn, int m, int n,
                                           float alpha, float beta, const PhaseMap& map = PhaseMap{},
                                           const Post& post = Post{}, const Cols& cols = Cols{}) {
    static_assert(!(PHASED && Post::ON), "a stride phase's pixels take no post-op");
    constexpr int ROW_BYTES = BN * (int)sizeof(TC) + (sizeof(TC) == 4 ? 32 : 16);
    constexpr int PER_CHUNK = 16 / (int)sizeof(TC);
    const int lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
    if (wm >= r0 && wm < r0 + rows) {
#pragma unroll
        for (int i = 0; i < WM / 16; ++i)
#pragma unroll
            for (int j = 0; j < WN / 8; ++j)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    // Rows g and g + 8 of the 16 x 8 tile, two neighbouring columns per lane: the
                    // row padding puts the 8 rows' pairs on 32 different banks.
                    unsigned char* at = smem + (wm - r0 + i * 16 + g + 8 * h) * ROW_BYTES +
                                        (wn + j * 8 + 2 * t) * (int)sizeof(TC);
                    const float v0 = alpha * acc[i][j][2 * h], v1 = alpha * acc[i][j][2 * h + 1];
                    // One 8- or 4-byte store per lane (a struct copy may be split in two).
                    if (sizeof(TC) == 4) {
                        *reinterpret_cast<unsigned long long*>(at) =
                            (unsigned long long)__float_as_uint(v0) | (unsigned long long)__float_as_uint(v1) << 32;
                    } else {
                        const __nv_bfloat162 pair = __floats2bfloat162_rn(v0, v1);
                        *reinterpret_cast<uint32_t*>(at) = *reinterpret_cast<const uint32_t*>(&pair);
                    }
                }
    }
    // The post-op's per-row table sits after the staged rows (SmemSize leaves room for it).
    float2* table = reinterpret_cast<float2*>(smem + rows * ROW_BYTES);
    post.stage(table, bm + r0, rows, m);
    __syncthreads();
    post.template reduce_rows<BN, ROW_BYTES, THREADS, TC>(smem, r0, rows, bm, bn, m, n);
    static_assert(!(PHASED && ROWS_ALIGNED), "a stride phase's pixels are not rows of C");
    static_assert(!(PHASED && Cols::SPANS), "a stride phase's product is one image's");
    static_assert(!Post::SUMS || ROWS_ALIGNED, "the backward sums take whole 16-byte vectors");
    if constexpr (Post::SUMS) {
        post.template store_rows_of<BN, ROW_BYTES, THREADS>(smem, table, r0, rows, c, bm, bn, m, n, cols);
    } else if constexpr (ROWS_ALIGNED) {
        store_row_vectors<PER_CHUNK, BN, ROW_BYTES, THREADS>(smem, table, r0, rows, c, bm, bn, m, n, beta, post,
                                                             cols);
    } else if constexpr (PHASED) {
        store_elements<BN, ROW_BYTES, THREADS, PHASED>(smem, table, r0, rows, c, bm, bn, m, n, beta, map, post,
                                                       cols);
    } else {
        // A vector never crosses an image's end: images start at multiples of it.
        const int run = cols.run(n);
        // Whole rows (n <= BN): the pass's values are C's [at, at + count).
        const long long at = (long long)(bm + r0) * n;
        const int count = n <= BN ? max(min(rows, m - bm - r0), 0) * n : 0;
        if (run % PER_CHUNK == 0) {
            store_row_vectors<PER_CHUNK, BN, ROW_BYTES, THREADS>(smem, table, r0, rows, c, bm, bn, m, n, beta, post,
                                                                 cols);
        } else if (run % (PER_CHUNK / 2) == 0) {
            store_row_vectors<PER_CHUNK / 2, BN, ROW_BYTES, THREADS>(smem, table, r0, rows, c, bm, bn, m, n, beta,
                                                                     post, cols);
        } else if constexpr (Cols::SPANS) {
            if (run < BN)
                store_images<BN, ROW_BYTES, THREADS>(smem, table, r0, rows, c, bm, bn, m, n, beta, post, cols);
            else
                store_elements<BN, ROW_BYTES, THREADS, PHASED>(smem, table, r0, rows, c, bm, bn, m, n, beta, map,
                                                               post, cols);
        } else if (n <= BN && reinterpret_cast<uintptr_t>(c + at) % 16 == 0 && count % PER_CHUNK == 0) {
            store_span<ROW_BYTES, THREADS>(smem, table, c + at, at, count, n, beta, post);
        } else {
            store_elements<BN, ROW_BYTES, THREADS, PHASED>(smem, table, r0, rows, c, bm, bn, m, n, beta, map, post,
                                                           cols);
        }
    }
    __syncthreads();
}

// The pipelined mainloop over `tiles` k tiles of Elem<T>::BK: acc += the block tile's products, operand
// tiles copied by the loaders (anything with `load(tile)`, which issues a thread's cp.async for
// the current k tile and moves on to the next: TileLoader for plain matrices, ConvGather for
// implicit GEMMs), so that the pipeline, the fragments and the mma are the same code
// for every bf16 product.
template <bool A_K, bool B_K, int BM, int BN, int WM, int WN, int STAGES, typename ALoad, typename BLoad>
__device__ __forceinline__ void mainloop(ALoad& a_load, BLoad& b_load, int tiles, float (&acc)[WM / 16][WN / 8][4],
                                         unsigned char* smem) {
    using T = typename ALoad::Elem;
    static_assert(sizeof(T) == sizeof(typename BLoad::Elem), "both operands of one input type");
    constexpr int K_STEPS = 2;  // mma k steps per stage
    static_assert(WM == 64 && (WN == 64 || WN == 32), "warp tiles of 64 x 64 or 64 x 32");
    static_assert(BM % WM == 0 && BN % WN == 0 && STAGES >= 2, "block tile");
    constexpr int A_ELEMS = TileShape<A_K, BM, T>::ELEMS, B_ELEMS = TileShape<B_K, BN, T>::ELEMS;
    constexpr int STAGE_ELEMS = A_ELEMS + B_ELEMS;
    const int warp = threadIdx.x / 32;
    const int wm = (warp / (BN / WN)) * WM, wn = (warp % (BN / WN)) * WN;
    T* stages = reinterpret_cast<T*>(smem);

    FragmentOffsets<true, A_K, BM, WM / 16, T> a_frag;
    FragmentOffsets<false, B_K, BN, WN / 16, T> b_frag;
    a_frag.init(wm, 0);
    b_frag.init(wn, A_ELEMS);

#pragma unroll
    for (int i = 0; i < WM / 16; ++i)
#pragma unroll
        for (int j = 0; j < WN / 8; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.0f;

    // Prologue: the first STAGES - 1 tiles in flight, one commit group each (empty past the end,
    // so that the wait counts below hold for any k).
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < tiles) {
            a_load.load(stages + s * STAGE_ELEMS);
            b_load.load(stages + s * STAGE_ELEMS + A_ELEMS);
        }
        cp_async_commit();
    }
    cp_async_wait<STAGES - 2>();
    __syncthreads();

    Fragments<WM, WN> frag[2];
    load_fragments<A_K, B_K, BM, BN>(frag[0], stages, a_frag, b_frag, 0);
    // STAGES k tiles an iteration, so that tile t's stage (t % STAGES), the next one's and the one
    // being written are constants: every ldmatrix and cp.async address is a lane's offset plus an
    // immediate, with no ring arithmetic in the loop.
    for (int t0 = 0; t0 < tiles; t0 += STAGES) {
#pragma unroll
        for (int u = 0; u < STAGES; ++u) {
            const int t = t0 + u;
            if (t >= tiles) break;
            const int write = (u + STAGES - 1) % STAGES * STAGE_ELEMS;
#pragma unroll
            for (int s = 0; s < K_STEPS; ++s) {
                if (s == K_STEPS - 1) {
                    // Tile t + 1 has landed for this thread; the barrier makes it everyone's, and
                    // tells every warp that the stage read during tile t - 1 is free again.
                    cp_async_wait<STAGES - 2>();
                    __syncthreads();
                }
                const int read = (s == K_STEPS - 1 ? (u + 1) % STAGES : u) * STAGE_ELEMS;
                if (s < K_STEPS - 1 || t + 1 < tiles) {
                    load_fragments<A_K, B_K, BM, BN>(frag[(s + 1) % 2], stages + read, a_frag, b_frag,
                                                     (s + 1) % K_STEPS);
                }
                if (s == 0) {
                    if (t + STAGES - 1 < tiles) {
                        a_load.load(stages + write);
                        b_load.load(stages + write + A_ELEMS);
                    }
                    cp_async_commit();
                }
                mma_fragments<WM, WN, T>(acc, frag[s % 2]);
            }
        }
    }
    cp_async_wait<0>();
    __syncthreads();
}

// The epilogue of a block tile (bm, bn) of the m x n C (row-major, or laid out by `cols`): in
// passes of as many warp rows as the pipeline's memory stages.
template <int BM, int BN, int WM, int WN, int STAGES, typename TC, bool PHASED = false, typename Post = NoPost,
          bool ROWS_ALIGNED = false, typename Cols = RowMajor>
__device__ __forceinline__ void epilogue(unsigned char* smem, const float (&acc)[WM / 16][WN / 8][4],
                                         TC* __restrict__ C, int bm, int bn, int m, int n, float alpha, float beta,
                                         const PhaseMap& map = PhaseMap{}, const Post& post = Post{},
                                         const Cols& cols = Cols{}) {
    constexpr int THREADS = (BM / WM) * (BN / WN) * 32;
    const int warp = threadIdx.x / 32;
    const int wm = (warp / (BN / WN)) * WM, wn = (warp % (BN / WN)) * WN;
    constexpr int PASS_ROWS = SmemSize<BM, BN, STAGES, TC>::PASS_ROWS;
    static_assert(PASS_ROWS >= WM && BM % PASS_ROWS == 0, "the epilogue stages whole warp rows");
    using Smem = SmemSize<BM, BN, STAGES, TC>;
    static_assert(!Post::ON || PASS_ROWS * (Smem::ROW_BYTES + Post::TABLE * (int)sizeof(float2)) <= Smem::BYTES,
                  "room for the post-op's table after the staged rows");
#pragma unroll
    for (int r0 = 0; r0 < BM; r0 += PASS_ROWS)
        store_rows<BM, BN, WM, WN, THREADS, TC, PHASED, Post, ROWS_ALIGNED>(smem, acc, wm, wn, r0, PASS_ROWS, C, bm,
                                                                            bn, m, n, alpha, beta, map, post, cols);
}

// The whole product for one block tile BM x BN; (BM / WM) x (BN / WN) warps. SEGMENTED: the
// reduction may run over several segments (else `segments` must be 1). `post` applies to C's
// values as they are stored, offset by the batch as C is.
template <bool A_K, bool B_K, int BM, int BN, int WM, int WN, int STAGES, typename TC, bool SEGMENTED = false,
          typename Post = NoPost, bool ROWS_ALIGNED = false, typename T>
__device__ __forceinline__ void tc_gemm(const T* __restrict__ A, const T* __restrict__ B,
                                        TC* __restrict__ C, int m, int n, int k, long long batch_a, long long batch_b,
                                        long long batch_c, int segments, long long seg_a, long long seg_b, float alpha,
                                        float beta, unsigned char* smem, int k_ld = 0, const Post& post = Post{}) {
    constexpr int THREADS = (BM / WM) * (BN / WN) * 32;
    const int bm = blockIdx.y * BM, bn = blockIdx.x * BN;
    A += blockIdx.z * batch_a;
    B += blockIdx.z * batch_b;
    C += blockIdx.z * batch_c;

    TileLoader<A_K, BM, THREADS, SEGMENTED, T> a_load;
    TileLoader<B_K, BN, THREADS, SEGMENTED, T> b_load;
    // A stored m x k (ld k, or k_ld when a row is longer than the k it takes part in) or k x m
    // (ld m); B stored n x k (ld k or k_ld) or k x n (ld n).
    const int ldk = k_ld ? k_ld : k;
    a_load.init(A, bm, m, k, A_K ? ldk : m, seg_a);
    b_load.init(B, bn, n, k, B_K ? ldk : n, seg_b);

    float acc[WM / 16][WN / 8][4];
    constexpr int TILE_K = Elem<T>::BK;
    mainloop<A_K, B_K, BM, BN, WM, WN, STAGES>(a_load, b_load, (k + TILE_K - 1) / TILE_K * segments, acc, smem);
    epilogue<BM, BN, WM, WN, STAGES, TC, false, Post, ROWS_ALIGNED>(smem, acc, C, bm, bn, m, n, alpha, beta,
                                                                    PhaseMap{}, post.at_image(blockIdx.z * batch_c));
}

}  // namespace tc
