// Top-k selection, exact: the k best of a row, best first by (score desc, index asc), and the
// running merge behind streamed nearest-neighbour search (candidate pools, ranking).
//
// One block per row. The k-th best score is found by radix select over the scores' order-
// preserving 32-bit keys (four 8-bit passes, a 256-bin shared histogram each), so any k up to
// TOPK_MAX costs the same few sweeps of the row; the winners (every key above the k-th, then the
// tied ones in ascending index) are gathered into shared memory and bitonic-sorted.
//
// The merge form keeps a row's running list (len <= k entries, sorted) in val / idx and merges
// a tile of new scores for indices base, base + 1, ... into it, skipping one excluded index.
// Tiles arrive in ascending index, so a new score that only ties the current k-th best never
// enters (it would lose the tie on index): when the list is full, a first sweep counts the tile's
// scores above the k-th best and most tiles stop there.
#include "common.cuh"

#define TOPK_MAX 1024
#define TOPK_THREADS 256

// Order-preserving key: IEEE total order as an unsigned (+0 above -0, NaNs at the ends), the
// order the CPU twin ranks by too.
__device__ __forceinline__ unsigned int score_key(float f) {
    unsigned int u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_score(unsigned int k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// The row as one sequence: the running list first (e < prev_len), then the tile, whose
// element t has index base + t. Excluded and past-the-end elements are not candidates.
struct RowView {
    const float* prev_val;
    const unsigned int* prev_idx;
    int prev_len;
    const float* tile;
    int n;
    unsigned int base;
    long long exclude;
    __device__ int size() const { return prev_len + n; }
    __device__ bool get(int e, unsigned int& key, unsigned int& index) const {
        if (e < prev_len) {
            key = score_key(prev_val[e]);
            index = prev_idx[e];
            return true;
        }
        index = base + (unsigned int)(e - prev_len);
        if ((long long)index == exclude) return false;
        key = score_key(tile[e - prev_len]);
        return true;
    }
};

// Bitonic sort of n (a power of two) (key, index) pairs in shared memory, best first: key
// descending, then index ascending. Every thread of the block calls it.
static __device__ void sort_best_first(unsigned int* key, unsigned int* idx, int n) {
    for (int size = 2; size <= n; size <<= 1) {
        for (int stride = size / 2; stride > 0; stride >>= 1) {
            for (int i = threadIdx.x; i < n; i += TOPK_THREADS) {
                int j = i ^ stride;
                if (j <= i) continue;
                // i before j is right when i ranks better; runs alternate direction.
                bool i_better = key[i] > key[j] || (key[i] == key[j] && idx[i] < idx[j]);
                if (i_better != ((i & size) == 0)) {
                    unsigned int tk = key[i], ti = idx[i];
                    key[i] = key[j], idx[i] = idx[j];
                    key[j] = tk, idx[j] = ti;
                }
            }
            __syncthreads();
        }
    }
}

// Block-wide exclusive prefix sum of one flag per thread; returns the prefix, sets total.
__device__ __forceinline__ int block_prefix(int flag, int* warp_totals, int& total) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    unsigned int ballot = __ballot_sync(0xffffffffu, flag);
    int before = __popc(ballot & ((1u << lane) - 1u));
    if (lane == 0) warp_totals[warp] = __popc(ballot);
    __syncthreads();
    int offset = 0;
    total = 0;
    for (int w = 0; w < TOPK_THREADS / 32; ++w) {
        if (w < warp) offset += warp_totals[w];
        total += warp_totals[w];
    }
    __syncthreads();
    return offset + before;
}

// The k best of `row` into out_val / out_idx (k entries; past the candidates: -inf and
// 0xffffffff), and their number into *out_len. out_* may alias the row's running list: every
// read of the row happens before the first write.
static __device__ void topk_row(const RowView row, int k, float* out_val, unsigned int* out_idx, unsigned int* out_len) {
    __shared__ int hist[256];
    __shared__ int warp_totals[TOPK_THREADS / 32];
    __shared__ unsigned int sel_key[TOPK_MAX];
    __shared__ unsigned int sel_idx[TOPK_MAX];
    __shared__ int shared_count;
    __shared__ unsigned int shared_prefix;
    __shared__ int shared_remaining;
    const int tid = threadIdx.x, size = row.size();

    // Candidates there are, and whether a full list can gain anything from the tile.
    int mine = 0, above = 0;
    unsigned int kth = row.prev_len == k && k > 0 ? score_key(row.prev_val[k - 1]) : 0u;
    for (int e = tid; e < size; e += TOPK_THREADS) {
        unsigned int key, index;
        if (!row.get(e, key, index)) continue;
        ++mine;
        above += e >= row.prev_len && key > kth;
    }
    if (tid == 0) shared_count = 0;
    __syncthreads();
    atomicAdd(&shared_count, mine);
    __syncthreads();
    const int candidates = shared_count;
    __syncthreads();
    if (row.prev_len == k && k > 0) {
        atomicAdd(&shared_count, above);  // shared_count now: candidates + tile scores above the k-th
        __syncthreads();
        if (shared_count == candidates) return;  // the list stands as it is
    }
    const int kk = min(k, candidates);

    // Radix select: the key of the kk-th best, digit by digit from the top.
    unsigned int prefix = 0, mask = 0;
    int remaining = kk;
    for (int shift = 24; shift >= 0 && kk > 0; shift -= 8) {
        for (int b = tid; b < 256; b += TOPK_THREADS) hist[b] = 0;
        __syncthreads();
        for (int e = tid; e < size; e += TOPK_THREADS) {
            unsigned int key, index;
            if (row.get(e, key, index) && (key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1);
        }
        __syncthreads();
        if (tid == 0) {
            int digit = 255;
            while (hist[digit] < remaining) remaining -= hist[digit--];
            shared_prefix = prefix | ((unsigned int)digit << shift);
            shared_remaining = remaining;
        }
        __syncthreads();
        prefix = shared_prefix;
        remaining = shared_remaining;
        mask |= 255u << shift;
        __syncthreads();
    }
    // prefix is the kk-th best key; `remaining` of its ties are taken, lowest indices first.
    const unsigned int kth_key = prefix;
    const int above_kth = kk - remaining;
    if (tid == 0) shared_count = 0;
    __syncthreads();
    for (int e = tid; e < size && kk > 0; e += TOPK_THREADS) {
        unsigned int key, index;
        if (row.get(e, key, index) && key > kth_key) {
            int at = atomicAdd(&shared_count, 1);
            sel_key[at] = key;
            sel_idx[at] = index;
        }
    }
    // Ties in sequence order, which is ascending index (the list holds lower indices than the
    // tile, and equal scores in it are sorted by index).
    int taken = 0;
    for (int e0 = 0; e0 < size && taken < remaining; e0 += TOPK_THREADS) {
        int e = e0 + tid;
        unsigned int key = 0, index = 0;
        int tie = e < size && row.get(e, key, index) && key == kth_key;
        int total;
        int rank = block_prefix(tie, warp_totals, total);
        if (tie && taken + rank < remaining) {
            sel_key[above_kth + taken + rank] = key;
            sel_idx[above_kth + taken + rank] = index;
        }
        taken += total;
    }
    __syncthreads();

    // Bitonic sort of the kk winners, best first; padding sorts last.
    int p2 = 1;
    while (p2 < kk) p2 <<= 1;
    for (int i = kk + tid; i < p2; i += TOPK_THREADS) {
        sel_key[i] = 0u;
        sel_idx[i] = 0xffffffffu;
    }
    __syncthreads();
    sort_best_first(sel_key, sel_idx, p2);
    for (int i = tid; i < k; i += TOPK_THREADS) {
        out_val[i] = i < kk ? key_score(sel_key[i]) : -INFINITY;
        out_idx[i] = i < kk ? sel_idx[i] : 0xffffffffu;
    }
    if (tid == 0) *out_len = (unsigned int)kk;
}

// The k best of each row of a rows x n score matrix: val, idx rows x k; len rows.
extern "C" __global__ void __launch_bounds__(TOPK_THREADS)
    topk_f32(const float* __restrict__ scores, int n, int k, float* __restrict__ val, unsigned int* __restrict__ idx,
             unsigned int* __restrict__ len) {
    size_t r = blockIdx.x;
    RowView row{nullptr, nullptr, 0, scores + r * n, n, 0u, -1};
    topk_row(row, k, val + r * k, idx + r * k, len + r);
}

// Merges tile row r (scores for indices base .. base + n - 1) into row r's running list
// (val, idx rows x k, len rows), skipping index exclude[r] (no exclusion when exclude is null or
// the entry is negative).
extern "C" __global__ void __launch_bounds__(TOPK_THREADS)
    topk_merge_f32(const float* __restrict__ tile, int n, unsigned int base, const long long* __restrict__ exclude,
                   int k, float* val, unsigned int* idx, unsigned int* len) {
    size_t r = blockIdx.x;
    RowView row{val + r * k, idx + r * k, (int)len[r], tile + r * n, n, base, exclude ? exclude[r] : -1};
    topk_row(row, k, val + r * k, idx + r * k, len + r);
}

// ---- the baseline: sort the whole row ---------------------------------------------------------

#define TOPK_SORT_MAX 4096

// The k best of each row by a full bitonic sort of the row in shared memory (rows of at most
// TOPK_SORT_MAX): what `cargo bench` measures topk_f32 against. Same output as topk_f32.
extern "C" __global__ void __launch_bounds__(TOPK_THREADS)
    topk_sort_f32(const float* __restrict__ scores, int n, int k, float* __restrict__ val,
                  unsigned int* __restrict__ idx) {
    __shared__ unsigned int key[TOPK_SORT_MAX];
    __shared__ unsigned int pos[TOPK_SORT_MAX];
    const size_t r = blockIdx.x;
    const int tid = threadIdx.x;
    int p2 = 1;
    while (p2 < n) p2 <<= 1;
    for (int i = tid; i < p2; i += TOPK_THREADS) {
        key[i] = i < n ? score_key(scores[r * n + i]) : 0u;
        pos[i] = i < n ? (unsigned int)i : 0xffffffffu;
    }
    __syncthreads();
    sort_best_first(key, pos, p2);
    for (int i = tid; i < k; i += TOPK_THREADS) {
        val[r * k + i] = i < n ? key_score(key[i]) : -INFINITY;
        idx[r * k + i] = i < n ? pos[i] : 0xffffffffu;
    }
}
