#!/usr/bin/env python3
"""Mutation testing of the CUDA kernels: do the tests notice a plausible bug?

cargo-mutants does this for Rust code; the `.cu` side needs its own list. Each mutant below is a
small edit a person could make by mistake (a barrier of a tiled loop removed, a bound or a loop
limit off by one, a comparison flipped at a threshold, fragment indices swapped, a reduction term
dropped), the test binaries that should kill it, and a one-line idea. For each mutant the script
applies the edit in a scratch copy of the working tree, checks that the original text was found
exactly once, builds, runs the named tests on the emulated GPU (race checker on), and, for
mutants marked `sanitize`, the sanitiser run when the tests leave it alive. A mutant is killed
when the build fails, a test fails, or the sanitiser reports; otherwise it survived. The scratch
copy is restored after each mutant; the working tree is never touched.

  scripts/mutate-kernels.py                    # every mutant, then the table
  scripts/mutate-kernels.py NAME [NAME ...]    # some of them (names from --list)
  scripts/mutate-kernels.py --family select    # one family
  scripts/mutate-kernels.py --list             # the list, nothing run
  scripts/mutate-kernels.py --check            # every mutant still applies exactly once and
                                               # every kernels/*.cu has mutants (tests/scripts.rs)
Options: --scratch DIR (default /tmp/insclr-mutants: DIR/repo, DIR/target, DIR/target-asan),
--seed-target DIR (copy a built target's debug/ into an empty DIR/target first, so the
dependencies are not compiled again), --out FILE (the markdown table with commit, date and
times), --timeout S (per test run, default 600), --no-baseline (skip the unmutated run).

Cost: every mutant rebuilds the emulated kernel library (build.rs compiles every .cu), the crate
and the named test binaries, then runs them; about a minute and a half per mutant on 2 busy
cores. Keep the list growing with every new kernel: `--check` fails when a kernels/*.cu has no
mutant or a mutant's text is gone.
"""
import argparse
import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Edit:
    path: str  # relative to the repository root
    old: str  # exact text, found exactly once in the file
    new: str


@dataclass(frozen=True)
class Mutant:
    name: str
    family: str
    idea: str
    edits: tuple
    tests: tuple  # "binary" or "binary:filter" (cargo test --test binary filter)
    sanitize: bool = False  # also run the sanitiser when the tests leave it alive
    equivalent: str = ""  # why no test can kill it (an expected survivor); empty: it must die


def M(name, family, idea, edits, tests, sanitize=False, equivalent=""):
    return Mutant(name, family, idea, tuple(Edit(*e) for e in edits), tuple(tests), sanitize, equivalent)


def drop(path, old, keep):
    """An edit that removes `old` but keeps `keep` (the context that makes `old` unique)."""
    return (path, old, keep)


SYNC = "__syncthreads();\n"
GEMM, CONV, NORM, POOL = "kernels/gemm.cu", "kernels/conv.cu", "kernels/norm.cu", "kernels/pool.cu"
ELT, SEL, BANK = "kernels/eltwise.cu", "kernels/select.cu", "kernels/bank.cu"
CON, MIN, OPT = "kernels/contrastive.cu", "kernels/mining.cu", "kernels/optim.cu"
ARCH, COMMON, TC = "kernels/arch.cuh", "kernels/common.cuh", "kernels/tc_gemm.cuh"
NHWC = "kernels/nhwc.cuh"
CPU_MIN, CPU_CON = "src/backend/cpu/mining.rs", "src/backend/cpu/contrastive.rs"
VER = "kernels/verify.cu"

MATMUL = ("kernels:kernel_matmul_matches_cpu",)
CONVT = ("layers:kernel_conv",)  # kernel_conv_matches_cpu and kernel_conv_1x1_weight_gradient_over_groups_of_images_matches_cpu
TCT = MATMUL + CONVT
TF32T = ("layers:kernel_tf32",)
BN = ("layers:kernel_batchnorm_matches_cpu",)
BN_STATS = ("layers:kernel_conv_then_train_batchnorm",)  # statistics from the conv epilogue
BN_NHWC = ("layers:kernel_channels_last_batchnorm",)  # y channels-last for the convolution after it
TOPK = ("select",)
BANKT = ("bank",)
CONT = ("contrastive",)
MINT = ("mining",)
OPTT = ("optim",)
VERT = ("verify",)

# fmt: off
MUTANTS = [
    # ---- gemm: f32 SIMT and bf16 tensor-core tiled loops -------------------------------------
    M("gemm-bf16-no-barrier-before-mma", "gemm",
      "bf16 k loop: warps read the staged tiles before every warp has written them",
      [drop(GEMM, "        __syncthreads();\n        mma_warp_64x32_bf16<TC_LD, TC_BK>(",
            "        mma_warp_64x32_bf16<TC_LD, TC_BK>(")], MATMUL),
    M("gemm-bf16-no-barrier-after-mma", "gemm",
      "bf16 k loop: the next slice is staged while other warps still read this one",
      [drop(GEMM, "mma_warp_64x32_bf16<TC_LD, TC_BK>(acc, As, Bs, wm, wn);\n        __syncthreads();\n",
            "mma_warp_64x32_bf16<TC_LD, TC_BK>(acc, As, Bs, wm, wn);\n")], MATMUL),
    M("gemm-f32-no-barrier-before-fma", "gemm",
      "f32 k loop: the micro-tile reads As/Bs before they are staged",
      [drop(GEMM, "        __syncthreads();\n        simt_tile_fma<BK, TM, TN, BM + 4, BN + 4>(",
            "        simt_tile_fma<BK, TM, TN, BM + 4, BN + 4>(")], MATMUL),
    M("gemm-f32-no-barrier-after-fma", "gemm",
      "f32 k loop: the next slice overwrites As/Bs while they are read",
      [drop(GEMM, "simt_tile_fma<BK, TM, TN, BM + 4, BN + 4>(acc, As, Bs, ty, tx);\n        __syncthreads();\n",
            "simt_tile_fma<BK, TM, TN, BM + 4, BN + 4>(acc, As, Bs, ty, tx);\n")], MATMUL),
    M("gemm-narrow-micro-tile-mismatch", "gemm",
      "matmul_narrow_f32: a 2 x 4 micro-tile on the 32 x 32 tile (128 threads' worth) under a "
      "256-thread launch: half the threads compute rows of the tile below",
      [(GEMM, "matmul_simt<32, 32, 16, 2, 2>(", "matmul_simt<32, 32, 16, 2, 4>(")], MATMUL, sanitize=True),
    M("gemm-bf16-k-tail-off-by-one", "gemm",
      "bf16 staging: the scalar tail reads one k past the end",
      [(GEMM, "(gr < rows && gk + q < k) ? src[q]", "(gr < rows && gk + q <= k) ? src[q]")], MATMUL,
      sanitize=True),
    M("gemm-f32-epilogue-col-off-by-one", "gemm",
      "f32 epilogue: writes column n (the next row's first element, or past C)",
      [(GEMM, "            if (col >= n) continue;", "            if (col > n) continue;")], MATMUL,
      sanitize=True),
    M("gemm-bf16-epilogue-fragment-swap", "gemm",
      "bf16 epilogue: the accumulator fragment's row-half and column bits swapped",
      [(GEMM, "int row = bm + wm + i * 16 + g + (q >= 2 ? 8 : 0);\n                int col = bn + wn + j * 8 + 2 * t + (q & 1);",
              "int row = bm + wm + i * 16 + g + ((q & 1) ? 8 : 0);\n                int col = bn + wn + j * 8 + 2 * t + (q >= 2 ? 1 : 0);")],
      MATMUL),
    M("arch-ldmatrix-b-k-half-swap", "gemm",
      "arch.cuh: the B fragment's second 8x8 matrix addressed from the wrong k half",
      [(ARCH, "ks + ((lane / 8) % 2) * 8]", "ks + ((lane / 16) % 2) * 8]")], MATMUL),

    # ---- tc: the pipelined tensor-core mainloop (tc_gemm.cuh) under matmul_tc* and conv 1x1 --
    M("tc-no-barrier-in-mainloop", "tc",
      "main loop: warps read tile t + 1 before every thread's copies landed, and refill a stage "
      "others still read",
      [drop(TC, "                    cp_async_wait<STAGES - 2>();\n                    __syncthreads();\n                }",
            "                    cp_async_wait<STAGES - 2>();\n                }")], TCT),
    M("tc-wait-one-group-short", "tc",
      "main loop: waits for all but STAGES - 1 groups, so the tile about to be read may be in flight",
      [(TC, "                    cp_async_wait<STAGES - 2>();\n                    __syncthreads();\n                }",
            "                    cp_async_wait<STAGES - 1>();\n                    __syncthreads();\n                }")], TCT),
    M("tc-prologue-wait-one-group-short", "tc",
      "prologue: the first tile's fragments read while its copies may be in flight",
      [(TC, "    cp_async_wait<STAGES - 2>();\n    __syncthreads();\n\n    Fragments",
            "    cp_async_wait<STAGES - 1>();\n    __syncthreads();\n\n    Fragments")], TCT),
    M("tc-no-barrier-before-epilogue", "tc",
      "the epilogue stages C over the pipeline's stages while slower warps still read fragments",
      [drop(TC, "    cp_async_wait<0>();\n    __syncthreads();\n}\n\n// The epilogue of a block tile",
            "    cp_async_wait<0>();\n}\n\n// The epilogue of a block tile")], TCT),
    M("tc-epilogue-no-barrier-before-copy-out", "tc",
      "epilogue: rows copied out of shared memory before every warp staged its fragments",
      [drop(TC, "    __syncthreads();\n    post.template reduce_rows", "    post.template reduce_rows")], TCT),
    M("tc-epilogue-no-barrier-after-copy-out", "tc",
      "epilogue: the next pass of rows overwrites the staging rows still being copied out",
      [drop(TC, "        }\n    }\n    __syncthreads();\n}\n\n// The pipelined mainloop",
            "        }\n    }\n}\n\n// The pipelined mainloop")],
      TCT),
    M("tc-row-mask-one-past", "tc",
      "loader: row mn (past the operand) copied instead of zero-filled",
      [(TC, "ok |= (unsigned)(mn0 + r + i * ROW_STEP < mn) << i;", "ok |= (unsigned)(mn0 + r + i * ROW_STEP <= mn) << i;")],
      TCT, sanitize=True),
    M("tc-k-mask-one-chunk-past", "tc",
      "loader (k-contiguous): the chunk at k (the next row's first values) copied instead of zeros",
      [(TC, "((ok >> i) & 1u) && k_at < k :", "((ok >> i) & 1u) && k_at <= k :")], TCT, sanitize=True),
    M("tc-k-rows-one-past", "tc",
      "loader (m- or n-contiguous): row k of the operand copied instead of zeros",
      [(TC, ": ok && k_at + i * ROW_STEP < k;", ": ok && k_at + i * ROW_STEP <= k;")], TCT, sanitize=True),
    M("tc-segment-switch-late", "tc",
      "segmented k: the next segment starts one tile late (a tile past the segment's end read)",
      [(TC, "if (SEGMENTED && k_at - k_first >= k) {", "if (SEGMENTED && k_at - k_first > k) {")], TCT),
    M("tc-epilogue-ignores-beta", "tc",
      "epilogue (vector paths): C's old values not added when beta != 0",
      [drop(TC, "            v[e] = fmaf(beta, old[e], v[e]);\n", "")], TCT),
    M("tc-epilogue-row-one-past", "tc",
      "epilogue: row m written (the next matrix's first row, or past C)",
      [(TC, "        if (row >= m || col >= n) continue;\n        const long long at = cols.at(row, col, n);\n        float v[VEC];",
            "        if (row > m || col >= n) continue;\n        const long long at = cols.at(row, col, n);\n        float v[VEC];")],
      TCT, sanitize=True),
    M("tc-epilogue-8-byte-rows-at-4", "tc",
      "epilogue: rows only 4-byte aligned (n even, not a multiple of 4) take the 8-byte vectors",
      [(TC, "} else if (run % (PER_CHUNK / 2) == 0) {", "} else if (run % (PER_CHUNK / 4) == 0) {")], CONVT),
    M("tc-epilogue-span-no-row-wrap", "tc",
      "epilogue (whole-row span, 7 x 7 maps): a value past a row's end read from the row's padding",
      [(TC, "if (++col == n) col = 0, ++r;", "if (++col == n + 1) col = 0, ++r;")], CONVT),
    M("tc-bn-post-drops-residual", "tc",
      "BatchNorm in the epilogue (vector paths): the residual not added",
      [drop(TC, "        if (res) z += r;\n", "")], CONVT),
    M("tc-bn-post-element-drops-residual", "tc",
      "BatchNorm in the epilogue (element path, rows not 16-byte aligned): the residual not added",
      [drop(TC, "        if (res) z += load(res[at]);\n", "")], CONVT),
    M("tc-bn-post-table-misses-last-row", "tc",
      "BatchNorm in the epilogue: the per-row table stops one row short (its last row read unwritten)",
      [(TC, "t < rows && first + t < m;", "t < rows - 1 && first + t < m;")], CONVT),
    M("tc-bn-stats-mean-drops-shift", "tc",
      "BatchNorm statistics in the epilogue: a tile row's mean without the first value it was summed less",
      [(TC, "first_row[r + plane] = shift + t1 * inv;", "first_row[r + plane] = t1 * inv;")], BN_STATS),
    M("tc-bn-stats-counts-whole-tile", "tc",
      "BatchNorm statistics in the epilogue: a partial pixel tile counted as a whole one (its zeros)",
      [(TC, "rows, bm, m, n - bn);", "rows, bm, m, BN);")], BN_STATS),
    M("tc-bn-stats-slot-ignores-image", "tc",
      "BatchNorm statistics in the epilogue: every image of a group writes the same slot",
      [(TC, "const size_t run = (size_t)(z - group * per) * gridDim.x + blockIdx.x;",
            "const size_t run = blockIdx.x;")], BN_STATS),
    M("tc-bn-stats-one-shuffle-short", "tc",
      "BatchNorm statistics in the epilogue: a row's lanes reduced one shuffle short (half the row)",
      [(TC, "for (int offset = G / 2; offset > 0; offset >>= 1) {", "for (int offset = G / 2; offset > 1; offset >>= 1) {")],
      BN_STATS),
    M("tc-bn-sums-mask-bit-shifted", "tc",
      "BatchNorm's backward sums in the data gradient's epilogue: act' of value e read from bit e + 1",
      [(TC, "* (float)((bits >> e) & 1u);", "* (float)((bits >> (e + 1)) & 1u);")], CONVT),
    M("tc-bn-sums-residual-dropped", "tc",
      "BatchNorm's backward sums in the epilogue: the identity path's gradient not added to dy",
      [(TC, "load(store<TC>(v[e] + old[e]))", "load(store<TC>(v[e]))")], CONVT),
    M("tc-bn-sums-xh-drops-mean", "tc",
      "BatchNorm's backward sums in the epilogue: sum dz x invstd, the mean not taken off x",
      [(TC, "sdzx += dz * (xv[e] - s.x) * s.y;", "sdzx += dz * xv[e] * s.y;")], CONVT),
    M("tc-bn-sums-one-shuffle-short", "tc",
      "BatchNorm's backward sums in the epilogue: a row's lanes reduced one shuffle short",
      [(TC, "for (int offset = ROW_VECS / 2; offset > 0; offset >>= 1) {",
            "for (int offset = ROW_VECS / 2; offset > 1; offset >>= 1) {")], CONVT),
    M("tc-bn-sums-slot-ignores-group", "tc",
      "BatchNorm's backward sums in the epilogue: every statistics group writes group 0's pairs",
      [(TC, "float* first_row = partial + run * pairs + (size_t)group * m;",
            "float* first_row = partial + run * pairs;")], CONVT),
    M("tc-bn-sums-recomputed-act-dropped", "tc",
      "BatchNorm's backward sums in the epilogue without a residual: act'(y) of the recomputed y taken as 1",
      [(TC, "act_grad(act, bn_recompute_y<TC>(xv[e], BnAffine{map.x, map.y}, act));", "1.0f;")], CONVT),
    M("tc-bn-sums-affine-over-statistics", "tc",
      "BatchNorm's backward sums in the epilogue: the rows' affine maps staged over their (mean, invstd)",
      [(TC, "*reinterpret_cast<unsigned long long*>(table + rows + t) =",
            "*reinterpret_cast<unsigned long long*>(table + t) =")], CONVT),
    M("tc-bn-sums-affine-of-group-row", "tc",
      "BatchNorm's backward sums in the epilogue: gamma and beta read at the (group, channel) pair's index",
      [(TC, "bn_affine_of(gamma[first + t], beta[first + t], mu, is)", "bn_affine_of(gamma[gc0 + t], beta[gc0 + t], mu, is)")],
      CONVT),
    M("conv-nhwc-bn-sums-on-64-row-tiles", "conv",
      "the 128-row channels-last data gradient with the sums runs the 64-row tile's template",
      [(CONV, "conv_nhwc<128, WN, false>(dy_nhwc, w_flipped, dx, SPAN_ARGS, 0.0f, tc::PhaseMap{}, BN_SUMS_POST(T));",
              "conv_nhwc<64, WN, false>(dy_nhwc, w_flipped, dx, SPAN_ARGS, 0.0f, tc::PhaseMap{}, BN_SUMS_POST(T));")],
      CONVT),
    M("norm-bn-merge-sums-plane-dropped", "norm",
      "BatchNorm's backward sums from a data gradient: the merge adds the first plane twice",
      [(NORM, "return RunSums{p[0], p[plane]};", "return RunSums{p[0], p[0]};")], CONVT),
    M("tc-fragment-k-step-key-dropped", "tc",
      "fragments (k-contiguous): the second k16 step read at the first one's swizzled columns",
      [(TC, "if (K_CONTIGUOUS) return off[s] + i * 16 * 4 * PER_CHUNK;",
            "if (K_CONTIGUOUS) return off[0] + i * 16 * 4 * PER_CHUNK;")], TCT),
    M("tc-fragment-tile-key-dropped", "tc",
      "fragments (m- or n-contiguous): every 16-wide tile read at the first one's swizzled chunk",
      [(TC, "return off[i] + s * 16 * CHUNKS * 8;", "return off[0] + s * 16 * CHUNKS * 8;")], TCT),
    M("tc-stage-ring-no-wrap", "tc",
      "main loop: the next tile's stage runs on past the ring instead of wrapping to stage 0",
      [(TC, "const int read = (s == K_STEPS - 1 ? (u + 1) % STAGES : u) * STAGE_ELEMS;",
            "const int read = (s == K_STEPS - 1 ? u + 1 : u) * STAGE_ELEMS;")], TCT, sanitize=True),
    M("tc-write-stage-is-next-read", "tc",
      "main loop: tile t + STAGES - 1 copied into the stage tile t + 1 is about to be read from",
      [(TC, "const int write = (u + STAGES - 1) % STAGES * STAGE_ELEMS;",
            "const int write = (u + 1) % STAGES * STAGE_ELEMS;")], TCT),
    M("tc-swizzle-dropped", "tc",
      "layout: the copies land in 128-byte rows unswizzled while ldmatrix reads the swizzled places",
      [(TC, "return (r * CHUNKS + (c ^ key)) * PER_CHUNK;", "return (r * CHUNKS + c) * PER_CHUNK;")], TCT),
    M("conv-1x1-part-runs-past-image", "conv",
      "1x1 weight gradient: an image's last pixel part runs part_len pixels, past the image",
      [(CONV, "k = min(part_len, hw - p0);", "k = part_len;")], CONVT, sanitize=True),
    M("conv-1x1-last-group-too-many-images", "conv",
      "1x1 weight gradient: the last group of whole images counts `per` images past the batch",
      [(CONV, "images = min(per, n - z * per);", "images = per;")], CONVT, sanitize=True),

    # ---- nhwc: channels-last implicit GEMMs (ConvGather in tc_gemm.cuh, the transposes) -----
    M("nhwc-gather-window-row-past-image", "conv",
      "ConvGather: window row h (the next image's first row, or past the scratch) copied instead of "
      "the bottom padding's zeros",
      [(TC, "ok_r[q] |= (unsigned)((unsigned)(iy0 + t) < (unsigned)h)", "ok_r[q] |= (unsigned)((unsigned)(iy0 + t) <= (unsigned)h)")],
      CONVT, sanitize=True),
    M("nhwc-gather-column-mask-one-past", "conv",
      "ConvGather: window column w (the next row's first pixel) copied instead of the right padding's zeros",
      [(TC, "ok_s[q] |= (unsigned)((unsigned)(ix0 + t) < (unsigned)w)", "ok_s[q] |= (unsigned)((unsigned)(ix0 + t) <= (unsigned)w)")],
      CONVT, sanitize=True),
    M("nhwc-gather-first-mask-word-only", "conv",
      "ConvGather with 8 rows a thread (the 64-row tiles): rows 4-7 tested against rows 0-3's masks",
      [(TC, "ok[i / 4] & (1u << (8 * (i % 4))) ? 16 : 0", "ok[0] & (1u << (8 * (i % 4))) ? 16 : 0")],
      CONVT, sanitize=True),
    M("nhwc-gather-channel-carry-late", "conv",
      "ConvGather's k step: a chunk landing exactly on channel c_in stays in the old tap instead of "
      "carrying into the next",
      [(TC, "if (c >= c_in) c -= c_in, ++s;", "if (c > c_in) c -= c_in, ++s;")], CONVT, sanitize=True),
    M("nhwc-transpose-padding-staged-from-x", "conv",
      "conv2d_to_nhwc_bf16 with padded rows (16-byte path): channel `channels` staged from the "
      "next plane (past the tensor for the last one) instead of zeros",
      [(NHWC, "            if (c < channels) {\n                v = ld_global_v4(", "            if (c <= channels) {\n                v = ld_global_v4(")],
      CONVT, sanitize=True),
    M("nhwc-transpose-padding-2-byte-path-from-x", "conv",
      "conv2d_to_nhwc_bf16 with padded rows (2-byte path): channel `channels` staged from the next "
      "plane instead of a zero",
      [(NHWC, "            if (c < channels) {\n                const long long at = (long long)c * pixels + p;\n                b = ",
              "            if (c <= channels) {\n                const long long at = (long long)c * pixels + p;\n                b = ")],
      CONVT, sanitize=True),
    M("nhwc-data-gradient-beta-dropped", "conv",
      "channels-last data gradient added onto dx: the epilogue overwrites dx (beta 0) instead",
      [(CONV, "cols, 1.0f,\n                                                                    beta, map,",
              "cols, 1.0f,\n                                                                    0.0f, map,")], CONVT),
    M("conv-1x1-data-gradient-beta-dropped", "conv",
      "1x1 data gradient added onto dx (bf16): the epilogue overwrites dx (beta 0) instead",
      [(CONV, "conv1x1_product<false, BM, WN, true>(w, dy, dx, c_in, c_out, hw, span, beta, post);",
              "conv1x1_product<false, BM, WN, true>(w, dy, dx, c_in, c_out, hw, span, 0.0f, post);")], CONVT),
    M("nhwc-wgrad-quarter-warp-rows-adjacent", "conv",
      "WeightGradGather with 4 threads a row (the 64-row tiles): a quarter-warp's two rows adjacent, "
      "their copies 2-way bank conflicts",
      [(TC, "const int row = TPR != 4 ? line : (line & ~7) | ((line & 1) << 2) | ((line >> 1) & 3);",
            "const int row = line;")], ("memory_patterns:conv_bf16_stem",)),
    M("nhwc8-transpose-reads-one-channel-past", "conv",
      "conv2d_to_nhwc8_bf16: the first padding channel filled from the next plane (past the "
      "tensor for the last one) instead of a zero",
      [(CONV, "        if (c < channels) v[c >> 1]", "        if (c <= channels) v[c >> 1]")], CONVT, sanitize=True),
    M("nhwc-wgrad-reduce-unpadded-rows", "conv",
      "KRSC reduction: a padded partial row read as c_in channels a tap (the wrong sums for a stem)",
      [(CONV, "from = (size_t)blockIdx.y * taps * padded;", "from = (size_t)blockIdx.y * taps * c_in;")],
      CONVT, sanitize=True),
    M("nhwc-transpose-flip-one-past", "conv",
      "conv2d_to_nhwc_bf16: the flipped weight's taps written one row late (the last tap into the "
      "next channel's first, or past the scratch)",
      [(NHWC, "row = p - g + (flip > 1 ? flip - 1 - g : 0);\n        st_global_v4(",
              "row = p - g + (flip > 1 ? flip - g : 0);\n        st_global_v4(")],
      CONVT, sanitize=True),
    # ---- TF32: f32 operands on the bf16 mainloop (the f32 mode's convolutions) -----------------
    M("tf32-round-truncates", "tc",
      "TF32: the inputs truncated to TF32 (the tensor cores' own drop of 13 bits) instead of rounded",
      [(ARCH, "uint32_t tf32_round_bits(uint32_t bits) { return bits + 0x1000u; }",
              "uint32_t tf32_round_bits(uint32_t bits) { return bits; }")], TF32T),
    M("tf32-scalar-fragments-key-dropped", "tc",
      "TF32, m- or n-contiguous operand: the 4-byte fragment loads ignore the rows' swizzle (2 (k % 4))",
      [(TC, "off[u] = tile + t * CHUNKS * 4 + w0 + ((2 * (u ^ t) + (g >> 2)) << 2) + (g & 3);",
            "off[u] = tile + t * CHUNKS * 4 + w0 + ((2 * u + (g >> 2)) << 2) + (g & 3);")], TF32T),
    M("tf32-rows-swizzled-as-bf16", "tc",
      "TF32, m- or n-contiguous tiles: the copies land with bf16's key (row % 8) while the fragment "
      "loads read at 2 (row % 4)",
      [(TC, "const int key = Elem<T>::TF32 ? (r & 3) << 1 : r & 7;", "const int key = r & 7;")], TF32T),
    M("tf32-gather-chunk-of-8-channels", "conv",
      "TF32 channels-last gather: a chunk's first channel counted in bf16's runs of 8",
      [(TC, "const int t0 = chunk * PER_CHUNK / c_in;\n        c = chunk * PER_CHUNK - t0 * c_in",
            "const int t0 = chunk * 8 / c_in;\n        c = chunk * 8 - t0 * c_in")], TF32T),
    M("tf32-phase-weight-runs-of-8", "conv",
      "conv2d_phase_weight_f32: a stride phase's sub-kernel copied in bf16's runs of 8 elements "
      "(half of each row's chunks, from the wrong offsets)",
      [(CONV, "constexpr int PER_CHUNK = 16 / (int)sizeof(T);\n    const int chunks = c_out / PER_CHUNK",
              "constexpr int PER_CHUNK = 8;\n    const int chunks = c_out / PER_CHUNK")], TF32T),
    M("tf32-transpose-flip-one-past", "conv",
      "conv2d_to_nhwc_f32: the flipped weight's taps written one row late",
      [(NHWC, "row = p - g + (flip > 1 ? flip - 1 - g : 0);\n        dst[",
              "row = p - g + (flip > 1 ? flip - g : 0);\n        dst[")], TF32T, sanitize=True),
    M("nhwc-wgrad-column-carry-late", "conv",
      "WeightGradGather's k step: a pixel landing exactly on output column ow stays in its row "
      "instead of carrying into the next",
      [(TC, "if (ix0 >= ix_end) ix0 -= wrap_ix", "if (ix0 > ix_end) ix0 -= wrap_ix")], CONVT, sanitize=True),
    M("nhwc-wgrad-no-image-carry", "conv",
      "WeightGradGather's k step: a pixel past the map's last row never moves on to the next image",
      [(TC, "if (iy0 >= iy_end) iy0 -= wrap_iy, step += wrap_off_y;", "")], CONVT, sanitize=True),
    M("nhwc-wgrad-split-tail-copied", "conv",
      "WeightGradGather: the rows past the split's last pixel are copied (the next split's pixels, "
      "or past the batch) instead of zero-filled",
      [(TC, "const bool in = left > 0 &&", "const bool in = left > -BK &&")], CONVT, sanitize=True),
    M("wgrad-reduce-drops-a-part", "conv",
      "sum_in_order (both split reductions): the last part of each sum is left out",
      [(CONV, "for (int z = 0; z < count; ++z) sum +=", "for (int z = 0; z < count - 1; ++z) sum +=")], CONVT),
    M("wgrad-reduce-parts-not-strided", "conv",
      "conv2d_bwd_weight_reduce_f32: a row's parts read one part apart instead of a row count "
      "apart (other rows' parts twice, its own skipped)",
      [(CONV, "(size_t)row * len + i, (size_t)rows * len, count)", "(size_t)row * len + i, len, count)")], CONVT),
    M("wgrad-reduce-last-row-dropped", "conv",
      "conv2d_bwd_weight_reduce_f32: row 0 adds every row's sum but the last",
      [(CONV, "if (r < rows) total += row_sums[r][lane];", "if (r < rows - 1) total += row_sums[r][lane];")],
      CONVT),
    M("wgrad-reduce-one-past-the-parts", "conv",
      "sum_in_order: the loop runs while its part is the count itself (one part past a row's or "
      "the partial sums' end)",
      [(CONV, "for (int z = 0; z < count; ++z) sum +=", "for (int z = 0; z <= count; ++z) sum +=")],
      CONVT, sanitize=True),
    M("nhwc-wgrad-reduce-not-transposed", "conv",
      "conv2d_bwd_weight_reduce_krsc_f32 keeps the KRSC order of the sums, as if dw were KRSC",
      [(CONV, "run[lane * taps + t] = c < c_in", "run[t * 32 + lane] = c < c_in")], CONVT),
    M("phase-map-rows-not-strided", "conv",
      "PhaseMap: a stride phase's grid rows land one dx row apart instead of `stride` rows",
      [(TC, "return (long long)row * plane + (long long)a * stride * w + b * stride + first;",
        "return (long long)row * plane + (long long)a * w + b * stride + first;")], CONVT, sanitize=True),
    M("image-cols-wide-edge-off-by-one", "conv",
      "ImageCols: where an image is wider than a tile, the next image's first pixel stays in the "
      "image before (past its row's end)",
      [(TC, "const int d = wide ? (int)(x >= hw) :", "const int d = wide ? (int)(x > hw) :")], CONVT,
      sanitize=True),
    M("image-cols-quotient-without-half", "conv",
      "ImageCols: the image of a column of a narrow image from x / hw without the half that keeps "
      "the quotient off an integer (an image's first pixel can fall into the image before)",
      [(TC, "__float2int_rz(((float)x + 0.5f) * inv)", "__float2int_rz((float)x * inv)")], CONVT),
    M("store-images-span-from-the-tile-start", "tc",
      "store_images: a whole image's 16-byte span read from the staged tile's first column, not "
      "from the image's own",
      [(TC, "store_span<ROW_BYTES, THREADS>(smem + s0 * (int)sizeof(TC), table,",
        "store_span<ROW_BYTES, THREADS>(smem, table,")], CONVT),
    M("store-images-cut-end-pixel-from-the-cut", "tc",
      "store_images: an image cut by the tile's start stores its pixels from pixel 0, not from "
      "where the tile cuts it",
      [(TC, "const long long to = at + (long long)r * hw + (e - s0);",
        "const long long to = at + (long long)r * hw + (e - ca);")], CONVT, sanitize=True),
    M("tile-loader-image-step-without-the-row", "tc",
      "TileLoader::init_images (the 1x1 products across images): a chunk column in image j moved "
      "j whole images on, not j images less the j x hw columns before it",
      [(TC, "src += j * (image - hw);", "src += j * image;")], CONVT, sanitize=True),
    M("conv-gather-every-row-in-the-first-image", "conv",
      "ConvGather: a tile's rows past the first image of its span read that image's pixels",
      [(TC, "pix[i] = ((image * h + iy0) * w + ix0) * c_in;", "pix[i] = (iy0 * w + ix0) * c_in;")], CONVT),
    M("phase-weight-taps-not-strided", "conv",
      "conv2d_phase_weight_bf16: a phase's sub-kernel takes neighbouring taps instead of every stride-th",
      [(CONV, "(size_t)(r0 + stride * j) * kw + s0 + stride * k", "(size_t)(r0 + j) * kw + s0 + k")], CONVT,
      sanitize=True),
    M("phase-padding-one-off", "conv",
      "conv.rs: a phase's product over dy padded one row and column too few",
      [("src/backend/cuda/conv.rs", "(first, count, count as i64 - 1 - ahead)", "(first, count, count as i64 - 2 - ahead)")],
      CONVT),
    M("phase-tapless-not-zeroed", "conv",
      "conv.rs: dx is not zeroed when a phase has pixels but no tap (a 1x1 at stride 2)",
      [("src/backend/cuda/conv.rs", "if !add && phases.iter().any(|&(_, _, (jr, js), _)| jr * js == 0) {",
        "if phases.iter().all(|&(_, _, (jr, js), _)| jr * js == 0) {")], CONVT),
    M("nhwc-bwd-data-padding-not-flipped", "conv",
      "conv.rs: the data gradient's forward of dy keeps the layer's padding instead of kh - 1 - pad "
      "(the same only where pad = (kh - 1) / 2)",
      [("src/backend/cuda/conv.rs",
        "                s.kh as i64 - 1 - s.pad_top as i64,\n                s.kw as i64 - 1 - s.pad_left as i64,\n",
        "                s.pad_top as i64,\n                s.pad_left as i64,\n")], CONVT),

    # ---- conv: implicit GEMMs (f32 SIMT, bf16 tensor cores) and depthwise ------------------
    M("conv-bf16-no-barrier-after-tables", "conv",
      "bf16: the k / column index tables are read before they are written",
      [drop(CONV, "    if (tid < CTC_BK && k_begin + tid < k_lim) ks[0][tid] = g.k_idx(k_begin + tid);\n    __syncthreads();\n",
            "    if (tid < CTC_BK && k_begin + tid < k_lim) ks[0][tid] = g.k_idx(k_begin + tid);\n")], CONVT),
    M("conv-bf16-no-barrier-before-mma", "conv",
      "bf16 k loop: warps read the gathered tiles before every warp has written them",
      [drop(CONV, "        __syncthreads();\n        mma_warp_64x32_bf16<CTC_LD, CTC_BK>(",
            "        mma_warp_64x32_bf16<CTC_LD, CTC_BK>(")], CONVT),
    M("conv-bf16-no-barrier-after-mma", "conv",
      "bf16 k loop: the next slice (and k table) is written while other warps still read",
      [drop(CONV, "mma_warp_64x32_bf16<CTC_LD, CTC_BK>(acc, As, Bs, wm, wn);\n        __syncthreads();\n",
            "mma_warp_64x32_bf16<CTC_LD, CTC_BK>(acc, As, Bs, wm, wn);\n")], CONVT),
    M("conv-f32-no-barrier-after-tables", "conv",
      "f32: the k / column index tables are read before they are written",
      [drop(CONV, "    if (tid < CONV_BK && k_begin + tid < k_lim) ks[0][tid] = g.k_idx(k_begin + tid);\n    __syncthreads();\n",
            "    if (tid < CONV_BK && k_begin + tid < k_lim) ks[0][tid] = g.k_idx(k_begin + tid);\n")], CONVT),
    M("conv-f32-no-barrier-before-fma", "conv",
      "f32 k loop: the micro-tile reads As/Bs before they are gathered",
      [drop(CONV, "        __syncthreads();\n        simt_tile_fma<CONV_BK,", "        simt_tile_fma<CONV_BK,")], CONVT),
    M("conv-f32-no-barrier-after-fma", "conv",
      "f32 k loop: the next slice overwrites As/Bs while they are read",
      [drop(CONV, "(acc, As, Bs, ty, tx);\n        __syncthreads();\n    }\n}\n\n// Where the GEMM",
            "(acc, As, Bs, ty, tx);\n    }\n}\n\n// Where the GEMM")], CONVT),
    M("conv-f32-bn-post-one-map-a-thread", "conv",
      "f32 forward with BatchNorm in the epilogue: every row of a thread takes its first row's map",
      [(CONV, "maps[Post::ON ? ty * CONV_TM + i : 0]", "maps[Post::ON ? ty * CONV_TM : 0]")], CONVT),
    M("conv-f32-bn-post-maps-after-the-loop", "conv",
      "f32 forward with BatchNorm in the epilogue: the maps written after the k loop, read by "
      "other warps with no barrier between",
      [(CONV, "    post.stage(maps, bm, CONV_BM, g.M);\n    float acc[CONV_TM][CONV_TN] = {};\n    conv_gemm_tile(g, bm, bn, k_begin, k_end, acc);\n",
              "    float acc[CONV_TM][CONV_TN] = {};\n    conv_gemm_tile(g, bm, bn, k_begin, k_end, acc);\n    post.stage(maps, bm, CONV_BM, g.M);\n")],
      CONVT),
    M("conv-depthwise-bn-post-unrounded", "conv",
      "depthwise forward with BatchNorm: the sum mapped before its rounding to the stored type",
      [(CONV, "sum = post.element(load(store<T>(sum)), maps[c], (long long)i);",
              "sum = post.element(sum, maps[c], (long long)i);")], CONVT),
    M("conv-depthwise-bn-post-no-barrier", "conv",
      "depthwise forward with BatchNorm: the staged maps read before every thread wrote its share",
      [drop(CONV, "        post.stage(maps, 0, c_out, c_out);\n        __syncthreads();\n",
            "        post.stage(maps, 0, c_out, c_out);\n")], CONVT),
    M("conv-out-image-offset-dropped", "conv",
      "implicit GEMM epilogue: a column's image offset dropped (every image's output into image 0's planes)",
      [(CONV, "base = (size_t)img * channels * plane + (col - img * plane);", "base = col - img * plane;")], CONVT),
    M("conv-window-row-off-by-one", "conv",
      "implicit GEMM gather: row h (past the image) read instead of padding",
      [(CONV, "if ((unsigned)iy >= (unsigned)s.h ||", "if ((unsigned)iy > (unsigned)s.h ||")], CONVT,
      sanitize=True),
    M("conv-depthwise-dy-row-off-by-one", "conv",
      "depthwise data gradient: output row oh (past the plane) read",
      [(CONV, "    if (oy >= s.oh || ox >= s.ow) return 0.0f;\n    return load(dy[",
              "    if (oy > s.oh || ox >= s.ow) return 0.0f;\n    return load(dy[")], CONVT, sanitize=True),
    M("conv-wgrad-reduce-drops-first-split", "conv",
      "weight gradient: the split-K reductions skip each row's first part (split 0's partial sums)",
      [(CONV, "for (int z = 0; z < count; ++z) sum +=", "for (int z = 1; z < count; ++z) sum +=")], CONVT),

    # ---- norm: BatchNorm and L2 ------------------------------------------------------------
    M("norm-bn-bwd-recomputed-y-shift-negated", "norm",
      "backward without a residual: y recomputed from x with the shift's sign flipped (a wrong "
      "activation mask)",
      [(COMMON, "return load(store<T>(act_apply(act, bn_affine_map(x, a))));",
              "return load(store<T>(act_apply(act, bn_affine_map(x, BnAffine{a.scale, -a.shift}))));")],
      ("layers:kernel_batchnorm",)),
    M("norm-bn-bwd-reduce-no-dz", "norm",
      "backward with a residual: the first pass does not write dz, which the second reads as its gradient",
      [(NORM, "bn_bwd_sums<T, VEC>(from, run, x, y, mask, dy, mean, invstd, a, 0.0f, nullptr, dres, act);",
              "bn_bwd_sums<T, VEC>(from, run, x, y, mask, dy, mean, invstd, a, 0.0f, nullptr, nullptr, act);")],
      BN),
    M("norm-bn-mask-not-written", "norm",
      "training forward with a residual: act'(y) not written to the mask the backward reads",
      [drop(NORM, "            if (mask) mask[at[u] / VEC] = act_mask_of<T, VEC>(v[u], act);\n", "")],
      ("layers:kernel_batchnorm",)),
    M("norm-bn-mask-bits-reversed", "norm",
      "backward from the mask: value i takes bit VEC - 1 - i",
      [(NORM, "grad = (float)((mv[u] >> i) & 1u);", "grad = (float)((mv[u] >> (VEC - 1 - i)) & 1u);")],
      ("layers:kernel_batchnorm",)),
    M("norm-bn-mask-of-unrounded-y", "norm",
      "the mask from y before its rounding to the stored type (ReLU6 near 6, bf16)",
      [(NORM, "bits |= (act_grad(act, load(store<T>(y[i]))) != 0.0f ? 1u : 0u) << i;",
              "bits |= (act_grad(act, y[i]) != 0.0f ? 1u : 0u) << i;")],
      ("layers:kernel_batchnorm",)),
    M("norm-bn-bwd-drops-mean-dz", "norm",
      "BatchNorm backward: dx loses its - mean(dz) term",
      [(NORM, "p.k * (dz - p.mdz - (x - p.mean)", "p.k * (dz - (x - p.mean)")], BN),
    M("norm-act-dispatch-relu6-as-relu", "norm",
      "BatchNorm's passes with a compile-time activation: ReLU6 layers instantiated as ReLU (no clamp at 6)",
      [(COMMON, "constexpr int ACT = ACT_RELU6;", "constexpr int ACT = ACT_RELU;")], BN),
    M("norm-act-dispatch-identity-as-relu", "norm",
      "BatchNorm's passes with a compile-time activation: layers without one instantiated as ReLU",
      [(COMMON, "constexpr int ACT = ACT_IDENTITY;", "constexpr int ACT = ACT_RELU;")], BN),
    M("norm-welford-no-barrier-before-slots", "norm",
      "block Welford: warps read the other warps' slots before lane 0 of each has written them",
      [drop(NORM, "        slots[3 * warp + 2] = w.m2;\n    }\n    __syncthreads();\n",
            "        slots[3 * warp + 2] = w.m2;\n    }\n")], BN),
    M("norm-bn-run-end-one-past", "norm",
      "BatchNorm runs: a thread's walk stops at v <= end (the next run's first vector counted twice, "
      "the last run reads past its pair)",
      [(NORM, "bool more() const { return v < end; }", "bool more() const { return v <= end; }")],
      BN, sanitize=True),
    M("norm-bn-stats-partial-transposed", "norm",
      "BatchNorm statistics: a run's partial written at (run, pair) while the merge reads (pair, "
      "run): pairs merge other pairs' runs",
      [(NORM, "float* p = partial + 3 * ((size_t)blockIdx.y * chunks + blockIdx.x);",
              "float* p = partial + 3 * ((size_t)blockIdx.x * gridDim.y + blockIdx.y);")], BN),
    M("norm-bn-merge-stats-drops-last-run", "norm",
      "BatchNorm statistics (and backward sums) from a convolution: the merge leaves out each chunk's last run",
      [(NORM, "for (int k = first + warp; k < last; k += WARPS) t =", "for (int k = first + warp; k < last - 1; k += WARPS) t =")],
      BN_STATS),
    M("norm-bn-merge-chunks-overlap", "norm",
      "BatchNorm statistics from a convolution: each chunk of the merge runs on to the last run (runs counted twice)",
      [(NORM, "last = min(runs, first + span);", "last = runs;")], BN_STATS),
    M("norm-bn-fwd-train-always-shifted", "norm",
      "BatchNorm training forward: the convolution's unshifted statistics shifted by the first value",
      [drop(NORM, "    if (shifted) w.mean += load(*first);", "    w.mean += load(*first);")], BN_STATS),
    M("norm-bn-bwd-no-barrier-before-sums", "norm",
      "BatchNorm backward: threads read the pair's merged sums before thread 0 has written them",
      [drop(NORM, "    }\n    __syncthreads();\n    const BnBwdPair pair = ", "    }\n    const BnBwdPair pair = ")], BN),
    M("norm-bn-nhwc-group-of-image", "norm",
      "channels-last apply pass: image z takes statistics group z % per instead of z / per",
      [(NORM, "BnApplyMap{affine + (size_t)(blockIdx.z / per) * C, ACT}", "BnApplyMap{affine + (size_t)(blockIdx.z % per) * C, ACT}")],
      BN_NHWC),
    M("norm-bn-nhwc-no-activation", "norm",
      "channels-last apply pass: the affine map without the activation after it",
      [(NORM, "        return act_apply(act, bn_affine_map(x, a));", "        return bn_affine_map(x, a);")], BN_NHWC),
    M("nhwc-stage-channels-short", "norm",
      "channels-last tiles: the block stages a word per channel of its maps, not every word "
      "(the rest of each map read from shared memory never written)",
      [(NHWC, "const int words = count * (int)(sizeof(typename Map::Channel) / 4);", "const int words = count;")],
      BN_NHWC),
    M("norm-bn-bwd-nhwc-group-of-image", "norm",
      "channels-last backward pass: image z takes statistics group z % per instead of z / per",
      [(NORM, "BnBwdMap<T>{pairs + (size_t)(blockIdx.z / per) * C, ACT}", "BnBwdMap<T>{pairs + (size_t)(blockIdx.z % per) * C, ACT}")],
      BN_NHWC),
    M("norm-bn-bwd-pairs-params-every-group", "norm",
      "channels-last backward's per-pair pass: every group's warps add the parameter gradients, not group 0's alone",
      [(NORM, "    if (g == 0) bn_bwd_add_params(partial, dgamma, dbeta, c, C, ghost, chunks);",
              "    bn_bwd_add_params(partial, dgamma, dbeta, c, C, ghost, chunks);")], BN_NHWC),
    M("nhwc-tile-narrow-path-unmapped", "norm",
      "channels-last tiles, maps whose rows are not 16-byte aligned: values copied without the map",
      [(NHWC, "                    b = __bfloat16_as_ushort(__float2bfloat16(v));", "")],
      BN_NHWC),
    M("norm-l2-fwd-writes-past-row", "norm",
      "L2 forward: the write loop runs to i <= cols (the next row's first value, or past y)",
      [(NORM, "for (int i = lane; i < cols; i += WARP_SIZE) yr[i] =", "for (int i = lane; i <= cols; i += WARP_SIZE) yr[i] =")],
      ("kernels:kernel_l2norm_matches_cpu",), sanitize=True),

    # ---- pool: GeM and max pooling -----------------------------------------------------------
    M("pool-gem-clamp-grad-exclusive", "pool",
      "GeM backward: no gradient where x == eps (torch.clamp passes it for x >= eps)",
      [(POOL, "xi >= eps ? coef", "xi > eps ? coef")], ("kernels:gem",)),
    M("pool-gem-clamp-grad-exclusive-twin-too", "pool",
      "kernel and CPU twin both: no gradient where x == eps",
      [(POOL, "xi >= eps ? coef", "xi > eps ? coef"),
       ("src/backend/cpu/pool.rs", "*d = if v >= s.eps {", "*d = if v > s.eps {")], ("kernels:gem",)),
    M("pool-gem-fwd-drops-lane-sum", "pool",
      "GeM forward: the first lane's partial power sum only (no shuffles)",
      [(POOL, "for (int offset = lanes / 2; offset > 0; offset >>= 1) acc +=",
        "for (int offset = 0; offset > 0; offset >>= 1) acc +=")],
      ("kernels:kernel_gem_matches_cpu",)),
    M("pool-gem-fwd-sum-across-rows", "pool",
      "GeM forward: the lane sum runs a level too far, adding the neighbouring row's lanes",
      [(POOL, "for (int offset = lanes / 2; offset > 0; offset >>= 1) acc +=",
        "for (int offset = lanes; offset > 0; offset >>= 1) acc +=")],
      ("kernels:kernel_gem_matches_cpu",)),
    M("pool-gem-lane-stride", "pool",
      "GeM: a lane steps through its row a warp at a time, not its group's lanes (elements skipped)",
      [(POOL, "for (int i = j; i < hw; i += lanes) acc +=", "for (int i = j; i < hw; i += WARP_SIZE) acc +=")],
      ("kernels:kernel_gem_matches_cpu",)),
    M("pool-gem-bwd-p3-general-power", "pool",
      "GeM backward at p = 3: x^(p-1) taken as x^p (the E = 2 loop given E = 3)",
      [(POOL, "coef * gem_pow<P - 1>(xi, p - 1.0f)", "coef * gem_pow<P>(xi, p - 1.0f)")],
      ("kernels:kernel_gem_matches_cpu",)),
    M("pool-maxpool-last-max-wins", "pool",
      "max pool: a tie goes to the last maximum (the gradient to the wrong cell)",
      [(POOL, "if (best.place < 0 || v > best.value ||", "if (best.place < 0 || v >= best.value ||")], ("layers:kernel_maxpool_matches_cpu",)),
    M("pool-maxpool-bwd-plane-walk-skips", "pool",
      "max pool backward: a block walks planes gridDim.z + 1 apart (planes past the grid's first "
      "1024 skipped or visited twice)",
      [(POOL, "        const T* g = dy + p * ohw;", "        const T* g = dy + p * ohw;\n        if (p >= (int)gridDim.z) p++;")],
      ("layers:kernel_maxpool_matches_cpu",), sanitize=True),
    M("pool-maxpool-bwd-window-rows-from-column", "pool",
      "max pool backward: the covering windows' rows bounded by the column's (ix for iy)",
      [(POOL, "oy1 = min(s.oh - 1, (iy + s.pad) / s.stride);", "oy1 = min(s.oh - 1, (ix + s.pad) / s.stride);")],
      ("layers:kernel_maxpool_matches_cpu",)),
    M("pool-maxpool-argmax-from-clamped-corner", "pool",
      "max pool forward: the argmax byte's place counted from the window's first real cell, not its corner in the padding",
      [(POOL, "best.place = (iy - y0) * s.k + ix - x0;", "best.place = (iy - max(y0, 0)) * s.k + ix - max(x0, 0);")],
      ("layers:kernel_maxpool_matches_cpu",)),
    M("pool-maxpool-bwd-place-column-step", "pool",
      "max pool backward: the next window to the right moves the place one column, not stride",
      [(POOL, "ox++, place -= s.stride)", "ox++, place -= 1)")],
      ("layers:kernel_maxpool_matches_cpu",)),
    M("pool-maxpool-bwd-place-row-step", "pool",
      "max pool backward: the next window down moves the place one row of the map's width",
      [(POOL, "oy++, row -= s.stride * s.k)", "oy++, row -= s.stride * s.w)")],
      ("layers:kernel_maxpool_matches_cpu",)),
    M("pool-maxpool-fwd-tile-rows-by-block-x", "pool",
      "max pool forward: a tile's output row taken from blockIdx.x (the tiles of one map's rows overlap)",
      [(POOL, "const int ox = blockIdx.x * blockDim.x + threadIdx.x, oy = blockIdx.y * blockDim.y + threadIdx.y;\n    if (ox >= s.ow",
              "const int ox = blockIdx.x * blockDim.x + threadIdx.x, oy = blockIdx.x * blockDim.y + threadIdx.y;\n    if (ox >= s.ow")],
      ("layers:kernel_maxpool_matches_cpu",)),
    M("pool-stem-fwd-nan-loses", "pool",
      "stem max pool forward: a NaN no longer takes its window (strictly greater only)",
      [(POOL, "if (!(value <= b) && b == b) b = value, at = c;", "if (value > b) b = value, at = c;")],
      ("layers:kernel_maxpool_matches_cpu",)),
    M("pool-stem-fwd-nan-replaced", "pool",
      "stem max pool forward: a NaN that took the window is replaced by the next value",
      [(POOL, "if (!(value <= b) && b == b) b = value, at = c;", "if (!(value <= b)) b = value, at = c;")],
      ("layers:kernel_maxpool_matches_cpu",)),
    M("pool-stem-fwd-last-max-wins", "pool",
      "stem max pool forward: a tie goes to the last maximum",
      [(POOL, "if (!(value <= b) && b == b) b = value, at = c;", "if (!(value < b) && b == b) b = value, at = c;")],
      ("layers:kernel_maxpool_matches_cpu",)),
    M("pool-stem-fwd-padding-keeps-window", "pool",
      "stem max pool forward: a window of -inf and padding keeps its padding cell's place",
      [(POOL, "if (at == 0 && !cell0_real) at", "if (at == 0 && !cell0_real && false) at")],
      ("layers:kernel_maxpool_matches_cpu",)),
    M("pool-stem-fwd-left-padding-read", "pool",
      "stem max pool forward: the column left of the map's first cells read as a real value",
      [(POOL, "if (left && !left_in_warp) before = load(at[-1]);", "if (!left_in_warp) before = load(at[-1]);")],
      ("layers:kernel_maxpool_matches_cpu",), sanitize=True),
    M("pool-stem-fwd-shuffle-wrong-end", "pool",
      "stem max pool forward: the previous lane's first column shuffled in, not its last",
      [(POOL, "__shfl_up_sync(0xffffffffu, row8[7], 1);", "__shfl_up_sync(0xffffffffu, row8[0], 1);")],
      ("layers:kernel_maxpool_matches_cpu",)),
    M("pool-stem-bwd-window-below-always", "pool",
      "stem max pool backward: the window row below the map's last cell row read as real",
      [(POOL, "if (r == 0 || below) {", "if (true) {")],
      ("layers:kernel_maxpool_matches_cpu",), sanitize=True),
    M("pool-stem-bwd-window-right-always", "pool",
      "stem max pool backward: a row's last cell takes the next lane's windows (the next row's first)",
      [(POOL, "right_in_warp = right && lane < 31;", "right_in_warp = lane < 31;")],
      ("layers:kernel_maxpool_matches_cpu",),
      equivalent="the next row's first window never names the places it would be tested against (0, 3, 6: "
                 "its padding column), so the wrongly taken window adds nothing; "
                 "pool-stem-bwd-lane31-not-loaded covers the same select"),
    M("pool-stem-bwd-lane31-not-loaded", "pool",
      "stem max pool backward: a warp's last lane never loads the window after its cell",
      [(POOL, "if (right && !right_in_warp) after = argmax[at + 4]", "if (false) after = argmax[at + 4]")],
      ("layers:kernel_maxpool_matches_cpu",)),
    M("pool-stem-bwd-place-mirrored", "pool",
      "stem max pool backward: an odd column's place in the window to its right taken as that window's last column",
      [(POOL, "(0.0f + TERM(0, 0, 5)) + TERM(0, 1, 3);", "(0.0f + TERM(0, 0, 5)) + TERM(0, 1, 5);")],
      ("layers:kernel_maxpool_matches_cpu",)),
    M("pool-stem-bwd-plane-walk-skips", "pool",
      "stem max pool backward: a block walks planes gridDim.y + 1 apart",
      [(POOL, "        int place[2][5];", "        if (p >= (int)gridDim.y) p++;\n        int place[2][5];")],
      ("layers:kernel_maxpool_matches_cpu",), sanitize=True),
    M("pool-stem-cell-past-the-plane", "pool",
      "stem max pool: a thread past the plane's last cell takes a cell past it (reads beyond the plane)",
      [(POOL, "at = min(q, cells - 1);", "at = q;")],
      ("layers:kernel_maxpool_matches_cpu",), sanitize=True),
    M("pool-stem-dead-lanes-exit", "pool",
      "stem max pool: the lanes past a plane's last cell exit, and their warp's shuffles name them",
      [(POOL, "q - (int)(threadIdx.x % WARP_SIZE) < cells};", "q < cells};")],
      ("layers:kernel_maxpool_matches_cpu",)),

    # ---- eltwise ---------------------------------------------------------------------------
    M("eltwise-relu6-grad-at-six", "eltwise",
      "ReLU6 backward passes the gradient at y == 6",
      [(COMMON, "(y > 0.0f && y < 6.0f)", "(y > 0.0f && y <= 6.0f)")], ("layers:kernel_eltwise_matches_cpu",)),
    M("eltwise-image-std-channels-swapped", "eltwise",
      "image_to_tensor: channels 1 and 2 divided by each other's std",
      [(ELT, "(c == 1 ? std1 : std2)", "(c == 1 ? std2 : std1)")], ("layers:kernel_image_to_tensor",)),
    M("eltwise-image-word-bytes-reversed", "eltwise",
      "image_to_tensor: a group's words read from their last byte (big-endian)",
      [(ELT, "(w[b / 4] >> (8 * (b % 4)))", "(w[b / 4] >> (8 * (3 - b % 4)))")], ("layers:kernel_image_to_tensor",)),
    M("eltwise-image-group-offset", "eltwise",
      "image_to_tensor: a group's 16-byte stores at the group's index instead of its first pixel",
      [(ELT, "(size_t)c * hw + (size_t)g * PIX, v[c]", "(size_t)c * hw + (size_t)g, v[c]")],
      ("layers:kernel_image_to_tensor",)),
    M("eltwise-image-vectors-on-4", "eltwise",
      "image_to_tensor: the vector path taken for pixel counts a multiple of 4 (bf16's groups are 8)",
      [(ELT, "if (hw % PIX == 0) {", "if (hw % 4 == 0) {")], ("layers:kernel_image_to_tensor",)),
    M("eltwise-image-pixel-channel", "eltwise",
      "image_to_tensor: the pixel-at-a-time path reads every channel from the pixel's first byte",
      [(ELT, "src[(size_t)p * 3 + c]", "src[(size_t)p * 3]")], ("layers:kernel_image_to_tensor",)),

    # ---- select: radix top-k and the streamed merge -------------------------------------------
    M("select-radix-digit-boundary", "select",
      "radix select: a digit whose count equals the rank still left is skipped",
      [(SEL, "while (hist[digit] < remaining)", "while (hist[digit] <= remaining)")], TOPK),
    M("select-gather-takes-kth-ties-twice", "select",
      "winners above the k-th key gathered with >=: its ties enter twice",
      [(SEL, "if (row.get(e, key, index) && key > kth_key) {", "if (row.get(e, key, index) && key >= kth_key) {")], TOPK),
    M("select-no-barrier-after-prefix", "select",
      "block prefix: the next round's warp totals overwrite the ones being summed",
      [drop(SEL, "        total += warp_totals[w];\n    }\n    __syncthreads();\n", "        total += warp_totals[w];\n    }\n")],
      TOPK),
    M("select-no-barrier-in-bitonic", "select",
      "bitonic sort: a stage starts before the previous stage's swaps are done",
      [drop(SEL, "            }\n            __syncthreads();\n        }\n    }\n}", "            }\n        }\n    }\n}")], TOPK),
    M("select-hist-clear-one-past-the-end", "select",
      "histogram clear runs to b <= 256: one shared write past hist, into memory read later or never",
      [(SEL, "for (int b = tid; b < 256; b += TOPK_THREADS) hist[b] = 0;",
             "for (int b = tid; b <= 256; b += TOPK_THREADS) hist[b] = 0;")], TOPK, sanitize=True),
    M("select-padding-one-past-the-end", "select",
      "sort padding runs to i <= p2: one shared write past sel_key / sel_idx when p2 = TOPK_MAX "
      "(inside them otherwise), a slot nothing reads",
      [(SEL, "for (int i = kk + tid; i < p2; i += TOPK_THREADS) {", "for (int i = kk + tid; i <= p2; i += TOPK_THREADS) {")],
      TOPK, sanitize=True),
    M("select-merge-exit-counts-ties", "select",
      "merge early exit: a tile score equal to the k-th best counts as better",
      [(SEL, "above += e >= row.prev_len && key > kth;", "above += e >= row.prev_len && key >= kth;")], TOPK,
      equivalent="the early exit only skips work: with it off, the full selection of list + tile "
                 "keeps the list's entry on the tie (lower index), the same result"),

    # ---- bank ------------------------------------------------------------------------------
    M("bank-row-past-count", "bank",
      "row copy: warp t == count reads src_idx[count] (past the index list)",
      [(BANK, "if (t >= count) return;", "if (t > count) return;")], BANKT, sanitize=True),
    M("bank-vector-past-row", "bank",
      "16-byte row copy runs one vector past the row",
      [(BANK, "for (int i = lane; i < dim / per16; i += WARP_SIZE)", "for (int i = lane; i <= dim / per16; i += WARP_SIZE)")],
      BANKT, sanitize=True),

    # ---- contrastive: thresholds (spec 4.6, trap G10) ----------------------------------------
    M("contrastive-margin-inclusive", "contrastive",
      "kernel: a negative exactly on the margin counts (the original: S > m)",
      [(CON, "} else if (sij > margin) {", "} else if (sij >= margin) {")], CONT),
    M("contrastive-margin-inclusive-twin-too", "contrastive",
      "kernel and CPU twin both: a negative exactly on the margin counts",
      [(CON, "} else if (sij > margin) {", "} else if (sij >= margin) {"),
       (CPU_CON, "} else if sij > c.margin {", "} else if sij >= c.margin {")], CONT),
    M("contrastive-self-pair-inclusive", "contrastive",
      "kernel: a positive exactly at 1 - 1e-6 counts (the original excludes S >= 1 - 1e-6)",
      [(CON, "if (sij < pos_th) {", "if (sij <= pos_th) {")], CONT),
    M("contrastive-self-pair-inclusive-twin-too", "contrastive",
      "kernel and CPU twin both: a positive exactly at 1 - 1e-6 counts",
      [(CON, "if (sij < pos_th) {", "if (sij <= pos_th) {"),
       (CPU_CON, "if sij < c.pos_th {", "if sij <= c.pos_th {")], CONT),
    M("contrastive-memory-keeps-label-0", "contrastive",
      "kernel: memory mode keeps a row labelled 0 (the original drops labels <= 0)",
      [(CON, "const bool keep = !memory || yi > 0;", "const bool keep = !memory || yi >= 0;")], CONT),
    M("contrastive-memory-keeps-label-0-twin-too", "contrastive",
      "kernel and CPU twin both: memory mode keeps a row labelled 0",
      [(CON, "const bool keep = !memory || yi > 0;", "const bool keep = !memory || yi >= 0;"),
       (CPU_CON, "let keep = !c.memory || y1[i] > 0;", "let keep = !c.memory || y1[i] >= 0;")], CONT),
    M("contrastive-no-barrier-before-row-sum", "contrastive",
      "thread 0 adds the warps' partial sums before they are all written",
      [drop(CON, "    __syncthreads();\n    if (tid == 0) {\n        double l = 0.0;", "    if (tid == 0) {\n        double l = 0.0;")],
      CONT),
    M("contrastive-drops-negative-count-shuffle", "contrastive",
      "warp reduction: the negatives' count is not summed across lanes",
      [drop(CON, "        nneg += __shfl_xor_sync(0xffffffffu, nneg, off);\n", "")], CONT),

    # ---- mining: selection thresholds (spec 4.5.1, 4.5.3, trap G22) --------------------------
    M("mining-fixed-exclusive", "mining",
      "kernel: batch selection rejects s == thresh (the original keeps s >= 0.6)",
      [(MIN, ": (s[j] >= thresh);", ": (s[j] > thresh);")], MINT),
    M("mining-fixed-exclusive-twin-too", "mining",
      "kernel and CPU twin both: batch selection rejects s == thresh",
      [(MIN, ": (s[j] >= thresh);", ": (s[j] > thresh);"),
       (CPU_MIN, "                sj >= s.thresh\n", "                sj > s.thresh\n")], MINT),
    M("mining-dynamic-exclusive", "mining",
      "kernel: the dynamic rule rejects s / max == thresh",
      [(MIN, "(s[j] / best >= thresh)", "(s[j] / best > thresh)")], MINT),
    M("mining-dynamic-exclusive-twin-too", "mining",
      "kernel and CPU twin both: the dynamic rule rejects s / max == thresh",
      [(MIN, "(s[j] / best >= thresh)", "(s[j] / best > thresh)"),
       (CPU_MIN, "sj / best >= s.thresh", "sj / best > s.thresh")], MINT),
    M("mining-score-exclusive", "mining",
      "kernel: a query similarity exactly on the score threshold does not count",
      [(MIN, "bool in = v >= th;", "bool in = v > th;")], MINT),
    M("mining-score-exclusive-twin-too", "mining",
      "kernel and CPU twin both: a similarity exactly on the score threshold does not count",
      [(MIN, "bool in = v >= th;", "bool in = v > th;"),
       (CPU_MIN, "let pass = v >= s.th;", "let pass = v > s.th;")], MINT),
    M("mining-score-drops-eps-twin-too", "mining",
      "kernel and CPU twin both: avg divides by num, not num + 1e-6 (trap G22)",
      [(MIN, "__fdiv_rn(acc, __fadd_rn((float)cnt, 1e-6f))", "__fdiv_rn(acc, (float)cnt)"),
       (CPU_MIN, "(acc / (cnt as f32 + 1e-6), cnt)", "(acc / cnt as f32, cnt)")], MINT),

    # The same thresholds where the host decides (Rust, beside the kernels they feed).
    M("mining-offline-boundary-exclusive", "mining",
      "host: pb / nb leave out a similarity exactly on 0.75 / 0.5 (spec 4.5.0: >=)",
      [("src/mining/mine.rs", ".rposition(|&s| s >= th)", ".rposition(|&s| s > th)")], MINT),
    M("mining-t-selector-exclusive", "mining",
      "host: the tX.XX selector leaves out a score exactly on t (spec 4.5.3: >=)",
      [("src/mining/select.rs", "filter(|&r| score[r] >= t)", "filter(|&r| score[r] > t)")], MINT),
    M("mining-topk-eligible-counts-zero", "mining",
      "host: top-k counts candidates with no qualifying similarity as eligible",
      [("src/mining/select.rs", "filter(|&&v| v > 0).count()", "filter(|&&v| v >= 0).count()")], MINT),

    # ---- verify: mutual matches, the ratio test, RANSAC's choice and refinement ---------------
    M("verify-no-barrier-after-column-init", "verify",
      "the column bests are raced: warps update them before every one is cleared",
      [drop(VER, "    for (int b = threadIdx.x; b < nb; b += blockDim.x) col_best[b] = 0ull;\n    __syncthreads();\n",
            "    for (int b = threadIdx.x; b < nb; b += blockDim.x) col_best[b] = 0ull;\n")], VERT, sanitize=True),
    M("verify-ratio-inclusive", "verify",
      "kernel: the ratio test passes an exact tie (a blank image's features match)",
      [(VER, "d1 < __fmul_rn(ratio2, d2)", "d1 <= __fmul_rn(ratio2, d2)")], VERT),
    M("verify-column-tie-highest-index", "verify",
      "kernel: b's best a is the highest index among ties, not the lowest",
      [(VER, "| (0xffffffffull - (unsigned)a));", "| (unsigned)a);")], VERT),
    M("verify-refinement-must-gain", "verify",
      "kernel: the least-squares model replaces the hypothesis only with more inliers, not as many",
      [(VER, "                if (c >= best) {", "                if (c > best) {")], VERT),
    M("verify-hypothesis-may-repeat-a-match", "verify",
      "kernel: a hypothesis' second match may be its first (no shift past i)",
      [(VER, "    j += j >= i;\n", "\n")], VERT),

    # ---- optim -----------------------------------------------------------------------------
    M("optim-adam-drops-weight-decay", "optim",
      "Adam: the coupled weight-decay term wd * p is dropped from the gradient",
      [(OPT, "float gi = __fadd_rn(g[i], __fmul_rn(wd, pi));", "float gi = g[i];")], OPTT),
    M("optim-adam-split-off-by-one", "optim",
      "Adam: element `split` (the first bias) gets the weights' lr and decay",
      [(OPT, "bool weight = (long long)i < split;\n        float step", "bool weight = (long long)i <= split;\n        float step")],
      OPTT),
    M("optim-sumsq-no-barrier-in-tree", "optim",
      "gradient norm: a tree level reads slots the previous level is still adding",
      [drop(OPT, "slots[threadIdx.x] += slots[threadIdx.x + half];\n        __syncthreads();\n",
            "slots[threadIdx.x] += slots[threadIdx.x + half];\n")], OPTT),
]
# fmt: on

# kernels/*.cu without mutants of their own: selftest.cu holds the emulator's self-tests.
NOT_MUTATED = {"selftest.cu"}


# ---- applying edits -----------------------------------------------------------------------


def apply(repo, mutant):
    """Applies the mutant's edits in `repo`; returns {path: original text}. Raises ValueError
    when an edit's text is not found exactly once (nothing is left applied then)."""
    originals = {}
    try:
        for e in mutant.edits:
            path = os.path.join(repo, e.path)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            n = text.count(e.old)
            if n != 1:
                raise ValueError(f"{mutant.name}: {e.path}: the original text is found {n} times, not once: {e.old!r}")
            originals.setdefault(e.path, text)
            write(path, text.replace(e.old, e.new))
    except Exception:
        restore(repo, originals)
        raise
    return originals


def restore(repo, originals):
    # Written anew (a fresh mtime): cargo must rebuild what the mutant's build left behind.
    for rel, text in originals.items():
        write(os.path.join(repo, rel), text)


def write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def check(mutants, coverage=True):
    """--check: every edit applies exactly once to the working tree; every kernel has mutants."""
    problems = []
    names = set()
    for m in mutants:
        if m.name in names:
            problems.append(f"{m.name}: the name is used twice")
        names.add(m.name)
        for e in m.edits:
            try:
                with open(os.path.join(ROOT, e.path), encoding="utf-8") as f:
                    n = f.read().count(e.old)
            except OSError as err:
                problems.append(f"{m.name}: {e.path}: {err}")
                continue
            if n != 1:
                problems.append(f"{m.name}: {e.path}: its original text is found {n} times (must be once): "
                                f"{e.old!r}; update the mutant in scripts/mutate-kernels.py")
    covered = {os.path.basename(e.path) for m in mutants for e in m.edits}
    for cu in sorted(os.listdir(os.path.join(ROOT, "kernels"))) if coverage else []:
        if cu.endswith(".cu") and cu not in covered and cu not in NOT_MUTATED:
            problems.append(f"kernels/{cu} has no mutant: add a few to scripts/mutate-kernels.py")
    for p in problems:
        print(p, file=sys.stderr)
    print(f"{len(mutants)} mutants, {len(problems)} problems")
    return not problems


# ---- the scratch copy ---------------------------------------------------------------------


def sync_scratch(repo):
    """Copies the working tree's tracked and untracked-unignored files into `repo`, writing only
    files whose content differs (unchanged files keep their mtime, so cargo keeps their builds)."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                         capture_output=True).stdout
    files = [f for f in out.decode().split("\0") if f and os.path.isfile(os.path.join(ROOT, f))]
    wanted = set(files)
    os.makedirs(repo, exist_ok=True)
    for rel in files:
        src, dst = os.path.join(ROOT, rel), os.path.join(repo, rel)
        with open(src, "rb") as f:
            data = f.read()
        try:
            with open(dst, "rb") as f:
                same = f.read() == data
        except OSError:
            same = False
        if not same:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with open(dst, "wb") as f:
                f.write(data)
            shutil.copymode(src, dst)
    for dirpath, _, names in os.walk(repo):
        for n in names:
            rel = os.path.relpath(os.path.join(dirpath, n), repo)
            if rel not in wanted:
                os.remove(os.path.join(repo, rel))


def env_for(target, sanitize=False):
    env = dict(os.environ)
    # The scratch copy has no .cuda-tools: the emulated kernels only, no nvcc fatbins to rebuild.
    for var in ["NVCC", "CUDA_HOME", "INSCLR_EMU_SANITIZE", "INSCLR_EMU_RACECHECK", "INSCLR_REQUIRE_GPU",
                "INSCLR_REQUIRE_NVCC", "CARGO_BUILD_TARGET_DIR", "RUSTFLAGS"]:
        env.pop(var, None)
    env["CARGO_TARGET_DIR"] = target
    env["CARGO_TERM_COLOR"] = "never"
    return env


def nice():
    return ["nice", "-n", "10"] if shutil.which("nice") else []


def run(cmd, cwd, env, timeout, log):
    """Runs cmd in its own process group; returns (rc, output, timed_out). The output also goes
    to `log`."""
    start = time.time()
    with open(log, "ab") as f:
        f.write(f"$ {' '.join(cmd)}\n".encode())
        f.flush()
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
        try:
            out, _ = p.communicate(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
            timed_out = True
        f.write(out)
        f.write(f"# rc {p.returncode}, {time.time() - start:.1f} s{' (timeout)' if timed_out else ''}\n".encode())
    return p.returncode, out.decode(errors="replace"), timed_out


def test_args(spec):
    binary, _, filt = spec.partition(":")
    return ["--test", binary] + ([filt] if filt else [])


def why_failed(out, timed_out):
    """What a failed test run says: failing tests, and which instrument spoke."""
    notes = []
    if timed_out:
        notes.append("timeout")
    if "shared-memory race" in out:
        notes.append("race checker")
    if "AddressSanitizer" in out:
        m = re.search(r"ERROR: AddressSanitizer: ([\w-]+)", out)
        at = re.search(r"AddressSanitizer.*?\n(\w+) of size.*?\n +#0 .*?([\w.]+:\d+)", out, re.S)
        notes.append("AddressSanitizer" + (f" {m.group(1)}" if m else "")
                     + (f", {at.group(1).lower()} at {at.group(2)}" if at else ""))
    m = re.search(r"signal: \d+, (SIG\w+)", out)
    if m:
        notes.append(m.group(1))
    # libtest's closing list; a "test x ... FAILED" line can be split by a test's own stderr.
    blocks = re.findall(r"^failures:\n((?:    \S+\n)+)", out, re.M)
    failed = blocks[-1].split() if blocks else re.findall(r"test (\S+) \.\.\. FAILED", out)
    if "deadlock" in out:
        notes.append("deadlock")
    what = ", ".join(failed) if failed else ""
    return "; ".join(x for x in [what, " ".join(notes)] if x) or "non-zero exit"


def first_error(out):
    for line in out.splitlines():
        if line.startswith("error") or ": error:" in line:
            return line.strip()[:160]
    return "build failed"


class Runner:
    def __init__(self, args):
        self.scratch = os.path.abspath(args.scratch)
        self.repo = os.path.join(self.scratch, "repo")
        self.target = os.path.join(self.scratch, "target")
        self.target_asan = os.path.join(self.scratch, "target-asan")
        self.logs = os.path.join(self.scratch, "logs")
        self.timeout = args.timeout
        os.makedirs(self.logs, exist_ok=True)

    def build(self, tests, log):
        binaries = sorted({t.partition(":")[0] for t in tests})
        cmd = nice() + ["cargo", "test", "--locked", "--no-run"] + [a for b in binaries for a in ("--test", b)]
        return run(cmd, self.repo, env_for(self.target), self.timeout * 3, log)

    def tests(self, tests, log):
        """Runs each spec in turn; stops at the first that fails. Returns (killed_by or None, s)."""
        for spec in tests:
            cmd = nice() + ["cargo", "test", "--locked"] + test_args(spec)
            rc, out, timed_out = run(cmd, self.repo, env_for(self.target), self.timeout, log)
            if rc != 0 or timed_out:
                return f"{spec.partition(':')[0]}: {why_failed(out, timed_out)}"
        return None

    def seed_asan(self):
        """The sanitiser's build differs from the plain one only in the crate's build script (the
        kernels with AddressSanitizer): its dependencies are the plain build's, copied once."""
        src, dst = os.path.join(self.target, "debug"), os.path.join(self.target_asan, "debug")
        if os.path.isdir(os.path.join(dst, "deps")) or not os.path.isdir(os.path.join(src, "deps")):
            return
        print(f"seeding {dst} with the dependencies built in {src}", flush=True)
        for sub in [".fingerprint", "build"]:
            shutil.copytree(os.path.join(src, sub), os.path.join(dst, sub), symlinks=True)
        os.makedirs(os.path.join(dst, "deps"))
        for n in os.listdir(os.path.join(src, "deps")):
            if n.startswith("lib") and not n.startswith("libinsclr"):
                shutil.copy2(os.path.join(src, "deps", n), os.path.join(dst, "deps", n))

    def sanitizer(self, tests, log):
        self.seed_asan()
        # One call per spec, as the tests: a filter belongs to its own binary.
        for spec in tests:
            cmd = nice() + ["bash", "scripts/emu-sanitize.sh"] + test_args(spec)
            rc, out, timed_out = run(cmd, self.repo, env_for(self.target_asan), self.timeout * 3, log)
            if rc != 0 or timed_out:
                if "could not compile" in out or "error: failed to run custom build command" in out:
                    return f"sanitiser build: {first_error(out)}"
                return f"sanitiser, {spec.partition(':')[0]}: {why_failed(out, timed_out)}"
        return None


def fmt_s(s):
    return f"{s:.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="mutants to run (default: all)")
    ap.add_argument("--family", action="append", default=[], help="run this family's mutants")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--check", action="store_true", help="check that every mutant applies; no build")
    ap.add_argument("--scratch", default="/tmp/insclr-mutants")
    ap.add_argument("--seed-target", help="a built CARGO_TARGET_DIR whose debug/ seeds an empty scratch target")
    ap.add_argument("--out", help="write the markdown table here too")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per test run (builds: 3x)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated build and run")
    args = ap.parse_args()

    if args.check:
        sys.exit(0 if check(MUTANTS) else 1)
    everything = not args.names and not args.family
    chosen = [m for m in MUTANTS if everything or m.name in args.names or m.family in args.family]
    unknown = set(args.names) - {m.name for m in MUTANTS}
    if unknown:
        sys.exit(f"unknown mutants: {', '.join(sorted(unknown))} (see --list)")
    if args.list:
        for m in chosen:
            flags = (" [sanitiser]" if m.sanitize else "") + (" [expected survivor]" if m.equivalent else "")
            print(f"{m.name:44} {m.family:12} {' '.join(m.tests)}{flags}\n    {m.idea}")
        print(f"{len(chosen)} mutants")
        return
    if not chosen:
        sys.exit("no mutant selected")
    if not check(chosen, coverage=False):
        sys.exit("fix the list first")

    r = Runner(args)
    if args.seed_target and not os.path.isdir(os.path.join(r.target, "debug")):
        os.makedirs(r.target, exist_ok=True)
        print(f"seeding {r.target}/debug from {args.seed_target}/debug", flush=True)
        subprocess.run(["cp", "-a", os.path.join(args.seed_target, "debug"), r.target], check=True)
    sync_scratch(r.repo)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    started = time.time()
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")

    if not args.no_baseline:
        specs = sorted({t for m in chosen for t in m.tests})
        log = os.path.join(r.logs, "baseline.log")
        open(log, "w").close()
        print(f"baseline: building and running {' '.join(specs)} unmutated (log {log})", flush=True)
        t0 = time.time()
        rc, out, _ = r.build(specs, log)
        if rc != 0:
            sys.exit(f"baseline build failed: {first_error(out)} (log {log})")
        bad = r.tests(specs, log)
        if bad:
            sys.exit(f"baseline tests fail, so no mutant result would mean anything: {bad} (log {log})")
        if any(m.sanitize for m in chosen):
            bad = r.sanitizer(sorted({t for m in chosen if m.sanitize for t in m.tests}), log)
            if bad:
                sys.exit(f"baseline sanitiser run fails: {bad} (log {log})")
        print(f"baseline: ok in {time.time() - t0:.0f} s", flush=True)

    rows = []
    for i, m in enumerate(chosen, 1):
        log = os.path.join(r.logs, f"{m.name}.log")
        open(log, "w").close()
        print(f"[{i}/{len(chosen)}] {m.name} ...", end=" ", flush=True)
        t0 = time.time()
        originals = apply(r.repo, m)
        try:
            rc, out, timed_out = r.build(m.tests, log)
            tb = time.time() - t0
            if rc != 0:
                result, by = "killed", "build: " + ("timeout" if timed_out else first_error(out))
            else:
                by = r.tests(m.tests, log)
                if by is None and m.sanitize:
                    by = r.sanitizer(m.tests, log)
                result = "killed" if by else "survived"
        finally:
            restore(r.repo, originals)
        tt = time.time() - t0 - tb
        if result == "survived" and m.equivalent:
            by = f"expected: {m.equivalent}"
        print(f"{result} ({by or 'no test failed'}) in {tb + tt:.0f} s", flush=True)
        rows.append((m, result, by or "", tb, tt))

    total = time.time() - started
    killed = sum(1 for row in rows if row[1] == "killed")
    expected = sum(1 for row in rows if row[1] == "survived" and row[0].equivalent)
    lines = [
        f"Kernel mutants: `scripts/mutate-kernels.py`, commit {commit}{' + uncommitted changes' if dirty else ''}, "
        f"{stamp}, {len(rows)} mutants in {total / 60:.1f} min "
        f"({total / max(len(rows), 1):.0f} s per mutant with the build).",
        "",
        f"**{killed} killed, {len(rows) - killed} survived** ({expected} of them expected: equivalent mutants).",
        "",
        "| mutant | family | idea | result | killed by | build s | tests s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m, result, by, tb, tt in rows:
        by = by.replace("|", "\\|")
        lines.append(f"| `{m.name}` | {m.family} | {m.idea} | {result} | {by} | {fmt_s(tb)} | {fmt_s(tt)} |")
    table = "\n".join(lines)
    print()
    print(table)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(table + "\n")
    unexpected = [row for row in rows if row[1] == "survived" and not row[0].equivalent]
    sys.exit(1 if unexpected else 0)


if __name__ == "__main__":
    main()
