// Bandwidth-bound GEMV/skinny GEMM for decode (M <= 16 activation rows): y = x . W^T with W
// [N][K] row-major, streamed once with 128-bit loads that bypass L1.
//
// Tensor cores do the arithmetic (mma.sync m16n8k32 e4m3 / s8, m16n8k16 bf16; f32
// accumulate, s32 for int8, whose sums stay exact):
// a warp multiplies a 16-row weight tile by up to 16 activation rows (one or two n8 tiles),
// with mma.cuh's chunk trick (fragments straight from 16-byte loads). Partial sums are moved
// out of the tensor-core accumulator every chunk (64 bytes of K) and summed in f32.
//
// Block = GEMV_WARPS (4) warps on one 16-row tile, the warps splitting K; grid = ceil(N/16). Row and
// column counts need not be multiples of anything but K*elem_size % 16 == 0 (host-checked).
#include "common.cuh"
#include "mma.cuh"

// Warps per block and 64-byte chunks a warp loads per step (memory-level parallelism). The
// host launches GEMV_THREADS threads. GEMV_SWEEP builds (gpu selftest's gemv-sweep stage,
// kernels::GEMV_SWEEP) set other values and keep only the dense and W8A8 kernels: the FP8_BLOCK
// and grouped kernels below are written for 4-chunk steps.
#ifndef GEMV_WARPS
#define GEMV_WARPS 4
#endif
#ifndef GEMV_UNROLL
#define GEMV_UNROLL 4
#endif
// How FP8 products reach the tensor cores (mma.cuh's mma_e4m3_via_f16): 0 mma_e4m3; 1 and 2
// f16 mma with some codes converted by integer instructions.
#ifndef GEMV_CVT
#define GEMV_CVT 0
#endif
// Under a programmatic launch, what a block fetches before the wait for the previous kernel
// (see gemv_sums): 0 nothing (ptxas moves the wait above the first loads); 1 the first
// step's weights, at the cost of waiting for them before loading activations in every
// block; 2 those, and the next GEMV_PF_STEPS steps into L2.
#define GEMV_PF_STEPS 2
#ifndef GEMV_PF
#define GEMV_PF 0
#endif
#define GEMV_THREADS (32 * GEMV_WARPS)
#if !defined(GEMV_SWEEP) && \
    (GEMV_WARPS != 4 || GEMV_UNROLL != 4 || GEMV_CVT != 0 || GEMV_PF != 0)
#error "GEMV_WARPS/UNROLL/CVT/PF other than 4/4/0/0 are for GEMV_SWEEP builds only"
#endif
#if GEMV_CVT < 0 || GEMV_CVT > 2
#error "GEMV_CVT is 0, 1 or 2"
#endif
#if GEMV_PF < 0 || GEMV_PF > 2
#error "GEMV_PF is 0, 1 or 2"
#endif

// A thread's weight registers for chunks c0..c0+GEMV_UNROLL-1 of its rows g (`ra`) and g+8
// (`rb`): for chunk c, the 16 bytes at c*64 + tig*16 of a row of 1-byte codes or BF16
// values, zero past the row's `kb` bytes. Dense rows stream them as stored.
// (Free functions, not methods: the emulator's __device__ is `static`.)
struct DenseRows {
    const u8* a;
    const u8* b;
};

__device__ __forceinline__ void load_rows(const DenseRows& r, int c0, int tig, int kb,
                                          uint4 (&ra)[GEMV_UNROLL], uint4 (&rb)[GEMV_UNROLL]) {
    const uint4 zero = make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; u++) {
        const int off = (c0 + u) * 64 + tig * 16;
        const bool ok = off < kb;
        ra[u] = ok ? ld_stream(r.a + off) : zero;
        rb[u] = ok ? ld_stream(r.b + off) : zero;
    }
}

// Row g + 8*half of the block's 16-row tile, clamped to the last row.
__device__ __forceinline__ int tile_row(int N, int half) {
    return min((int)blockIdx.x * 16 + (int)((threadIdx.x & 31) >> 2) + 8 * half, N - 1);
}

// Adds up the warps' partial sums: on return warp 0 holds the block's totals.
template <class T>
__device__ __forceinline__ void sum_warps(T (&acc)[2][4]) {
    __shared__ T red[GEMV_WARPS][2][4][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int n = 0; n < 2; n++)
#pragma unroll
        for (int i = 0; i < 4; i++) red[warp][n][i][lane] = acc[n][i];
    __syncthreads();
    if (warp != 0) return;
#pragma unroll
    for (int n = 0; n < 2; n++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            T s = red[0][n][i][lane];
            for (int v = 1; v < GEMV_WARPS; v++) s += red[v][n][i][lane];
            acc[n][i] = s;
        }
}

// Sums over K for the block's 16-row tile (weights from `rows`, see DenseRows). On return,
// warp 0 holds the totals: acc[n][i] is (row g + 8*(i/2), activation row 8n + 2*tig + i%2),
// g = lane/4, tig = lane%4. kb = bytes per activation row (K * element size).
template <int W, class Rows, class T = typename Acc<W>::T>
__device__ __forceinline__ void gemv_sums(const Rows& rows, const u8* x, int M, int kb,
                                          T (&acc)[2][4]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tig = lane & 3;
    const u8* xa = x + (u64)min(g, M - 1) * kb;
    const u8* xb = x + (u64)min(g + 8, M - 1) * kb;
    const bool two = M > 8;
    const uint4 zero = make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int n = 0; n < 2; n++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[n][i] = 0;
    const int nchunks = (kb + 63) / 64, step = GEMV_WARPS * GEMV_UNROLL;
    // The first step's weights are loaded before waiting for the previous kernel (which
    // writes x), each next step's while this one's sums are done. But ptxas hoists a plain
    // wait above those loads. GEMV_PF keeps them first, so that under a programmatic launch
    // weights stream while the previous kernel finishes:
    // 1: by waiting on their values. The cost: a block that starts after that kernel ended
    //    waits for its weights before loading activations.
    // 2: by a branch (ptxas does not move the wait across it) that prefetches the block's
    //    next GEMV_PF_STEPS steps of its 16 rows into L2; no wait on the loads.
    uint4 ra[GEMV_UNROLL], rb[GEMV_UNROLL];
    load_rows(rows, warp * GEMV_UNROLL, tig, kb, ra, rb);
#if GEMV_PF == 1
    grid_dep_wait_after(ra[0].x ^ rb[0].x ^ ra[GEMV_UNROLL - 1].w ^ rb[GEMV_UNROLL - 1].w, kb);
    grid_dep_launch();
#elif GEMV_PF == 2
    const int step_bytes = GEMV_WARPS * GEMV_UNROLL * 64;
    const int upto = min(kb, (1 + GEMV_PF_STEPS) * step_bytes);
    if (warp == 0 && tig == 0 && upto > step_bytes) {  // rows g and g + 8
        prefetch_l2(rows.a + step_bytes, upto - step_bytes);
        prefetch_l2(rows.b + step_bytes, upto - step_bytes);
    }
    grid_dep_start();
#else
    grid_dep_start();
#endif
    for (int c0 = warp * GEMV_UNROLL; c0 < nchunks; c0 += step) {
        uint4 va[GEMV_UNROLL], vb[GEMV_UNROLL];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            const int off = (c0 + u) * 64 + tig * 16;
            const bool ok = off < kb;
            va[u] = ok ? __ldg((const uint4*)(xa + off)) : zero;
            vb[u] = ok && two ? __ldg((const uint4*)(xb + off)) : zero;
        }
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            T c[4] = {0, 0, 0, 0};
            mma_chunk<W, GEMV_CVT>(c, ra[u], rb[u], va[u]);
#pragma unroll
            for (int i = 0; i < 4; i++) acc[0][i] += chunk_scale<W, GEMV_CVT>(c[i], i);
            if (two) {
                T c2[4] = {0, 0, 0, 0};
                mma_chunk<W, GEMV_CVT>(c2, ra[u], rb[u], vb[u]);
#pragma unroll
                for (int i = 0; i < 4; i++) acc[1][i] += chunk_scale<W, GEMV_CVT>(c2[i], i);
            }
        }
        load_rows(rows, c0 + step, tig, kb, ra, rb);  // zeros (no loads) past the end
    }
    sum_warps(acc);
}

// W8A8: y[m][n] = bf16(sa[m] * (sw[n] * f32(sum_k x[m][k] w[n][k])) (+ bias[n])), w and x
// FP8 (W_FP8) or int8 (W_S8, the sum exact in s32 as vLLM's cutlass_scaled_mm).
template <int W>
__device__ __forceinline__ void gemv_scaled(const u8* w, const float* sw, const u8* x,
                                            const float* sa, const float* bias, u16* y, int M,
                                            int N, int K) {
    typename Acc<W>::T acc[2][4];
    const DenseRows rows = {w + (u64)tile_row(N, 0) * K, w + (u64)tile_row(N, 1) * K};
    gemv_sums<W>(rows, x, M, K, acc);
    if ((threadIdx.x >> 5) != 0) return;
    const int lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;
#pragma unroll
    for (int n = 0; n < 2; n++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int row = blockIdx.x * 16 + g + 8 * (i >> 1), m = 8 * n + 2 * tig + (i & 1);
            if (row >= N || m >= M) continue;
            float v = sa[m] * (sw[row] * (float)acc[n][i]);
            if (bias) v = __fadd_rn(v, bias[row]);  // rounded apart, never fused into an FMA
            y[(u64)m * N + row] = f32_to_bf16(v);
        }
}

// FP8 W8A8 GEMV. Grid ceil(N/16), block GEMV_THREADS.
extern "C" __global__ void __launch_bounds__(GEMV_THREADS)
    gemv_fp8(const u8* w, const float* sw, const u8* x, const float* sa, const float* bias,
             u16* y, int M, int N, int K) {
    gemv_scaled<W_FP8>(w, sw, x, sa, bias, y, M, N, K);
}

// INT8 W8A8 GEMV. Grid ceil(N/16), block GEMV_THREADS.
extern "C" __global__ void __launch_bounds__(GEMV_THREADS)
    gemv_int8(const u8* w, const float* sw, const u8* x, const float* sa, const float* bias,
              u16* y, int M, int N, int K) {
    gemv_scaled<W_S8>(w, sw, x, sa, bias, y, M, N, K);
}

// y[m][n] = acc (+ bias[n]) as f32 (out_f32 != 0, the logits) or bf16, from warp 0's
// gemv_sums totals.
__device__ __forceinline__ void store_dense(const float (&acc)[2][4], const float* bias, void* y,
                                            int out_f32, int M, int N) {
    if ((threadIdx.x >> 5) != 0) return;
    const int lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;
#pragma unroll
    for (int n = 0; n < 2; n++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int row = blockIdx.x * 16 + g + 8 * (i >> 1), m = 8 * n + 2 * tig + (i & 1);
            if (row >= N || m >= M) continue;
            float v = acc[n][i];
            if (bias) v += bias[row];
            if (out_f32) ((float*)y)[(u64)m * N + row] = v;
            else ((u16*)y)[(u64)m * N + row] = f32_to_bf16(v);
        }
}

// Dense BF16: y[m][n] = sum_k x[m][k] w[n][k] (+ bias[n]), written as f32 (out_f32 != 0,
// the logits) or bf16. Grid ceil(N/16), block GEMV_THREADS.
extern "C" __global__ void __launch_bounds__(GEMV_THREADS)
    gemv_bf16(const u16* w, const u16* x, const float* bias, void* y, int out_f32, int M,
              int N, int K) {
    float acc[2][4];
    const u8* wb = (const u8*)w;
    const DenseRows rows = {wb + (u64)tile_row(N, 0) * 2 * K, wb + (u64)tile_row(N, 1) * 2 * K};
    gemv_sums<W_BF16>(rows, (const u8*)x, M, 2 * K, acc);
    store_dense(acc, bias, y, out_f32, M, N);
}

#ifndef GEMV_SWEEP
// FP8_BLOCK W8A8 (vLLM's w8a8_block_fp8_matmul): activations quantized per token and group
// of 128 columns (quant_groups), weight scales expanded per row, sw [N][K/128]:
//   y[m][n] = bf16(sum_g f32(sum_{k in g} x[m][k] w[n][k]) * sa[m][g] * sw[n][g] (+ bias[n]))
// A warp step (4 chunks of 64) is two whole groups. Grid ceil(N/16), block 128.
extern "C" __global__ void __launch_bounds__(128)
    gemv_fp8_block(const u8* w, const float* sw, const u8* x, const float* sa,
                   const float* bias, u16* y, int M, int N, int K) {
    static_assert(GEMV_UNROLL == 4, "a warp step is two 128-column groups");
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tig = lane & 3;
    const int groups = K / 128;
    const DenseRows rows = {w + (u64)tile_row(N, 0) * K, w + (u64)tile_row(N, 1) * K};
    // Scale rows of this thread's accumulators: weight rows g, g+8; activation rows
    // 8n + 2*tig + (0, 1), clamped (the clamped ones are never stored).
    const float* swr[2] = {sw + (u64)tile_row(N, 0) * groups, sw + (u64)tile_row(N, 1) * groups};
    const float* sar[2][2];
    const u8* xr[2];
#pragma unroll
    for (int n = 0; n < 2; n++) {
        xr[n] = x + (u64)min(g + 8 * n, M - 1) * K;
#pragma unroll
        for (int j = 0; j < 2; j++) sar[n][j] = sa + (u64)min(8 * n + 2 * tig + j, M - 1) * groups;
    }
    const bool two = M > 8;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    float acc[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
    const int nchunks = K / 64, step = GEMV_WARPS * GEMV_UNROLL;
    uint4 ra[GEMV_UNROLL], rb[GEMV_UNROLL];
    load_rows(rows, warp * GEMV_UNROLL, tig, K, ra, rb);  // weights first, as gemv_sums
    grid_dep_start();
    for (int c0 = warp * GEMV_UNROLL; c0 < nchunks; c0 += step) {
        uint4 v[2][GEMV_UNROLL];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            const int off = (c0 + u) * 64 + tig * 16;
            const bool ok = off < K;
            v[0][u] = ok ? __ldg((const uint4*)(xr[0] + off)) : zero;
            v[1][u] = ok && two ? __ldg((const uint4*)(xr[1] + off)) : zero;
        }
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int gi = c0 / 2 + h;
            if (gi >= groups) break;
#pragma unroll
            for (int n = 0; n < 2; n++) {
                if (n == 1 && !two) break;
                float c[4] = {0, 0, 0, 0};
                mma_chunk<W_FP8>(c, ra[2 * h], rb[2 * h], v[n][2 * h]);
                mma_chunk<W_FP8>(c, ra[2 * h + 1], rb[2 * h + 1], v[n][2 * h + 1]);
#pragma unroll
                for (int i = 0; i < 4; i++) acc[n][i] += c[i] * sar[n][i & 1][gi] * swr[i >> 1][gi];
            }
        }
        load_rows(rows, c0 + step, tig, K, ra, rb);
    }
    sum_warps(acc);
    store_dense(acc, bias, y, 0, M, N);
}

// ---- Weight-only grouped formats (W4A16, W4A16_ASYM, W8A16, NVFP4A16, MXFP4A16) ----
//
// The codes stay packed on the GPU (4 or 8 bits per weight); each chunk of 8 weights is
// dequantized in registers to exactly the BF16 values the CPU loader computes,
// bf16((u - off) * s) for integers (off = 2^(bits-1) + zero point) and bf16(fp4(u) * s) for
// FP4 (s = e4m3 scale / global scale, or 2^(e8m0 - 127)), and fed to the same tensor-core
// sums as gemv_bf16 in the same order: the results equal gemv_bf16 on the dequantized
// weights bit for bit.
//
// Device layout (written by src/runtime/cuda/grouped.rs): rows padded to a multiple of 128
// weights (scale 0 past the end); each 128-weight superblock holds four thread slices
// (tig = 0..3) of chunks j = 0..3, where chunk (j, tig) is weights j*32 + tig*8 .. +7, i.e.
// exactly the 8 weights gemv_sums gives thread tig for chunk j. A 4-bit chunk is one u32
// with weights 0..7 in nibbles 0,4,1,5,2,6,3,7, so nibbles i and i+4 are the BF16 pair i;
// an 8-bit chunk is two u32 in weight order. So one warp step of gemv_sums (4 chunks) is one
// 16-byte (4-bit) or 32-byte (8-bit) load per row per thread. Scales and offsets are
// [rows][ceil(padded / group)], group a multiple of 8: f32 for the integer formats; for FP4
// one byte per group (the checkpoint's E4M3 or E8M0 code), whose value the row's table of
// 256 f32 gives (`tab + rtab[row]`, one table per fused part: e4m3(b) / that part's global
// scale, or 2^(b - 127)) -- a quarter of the f32 scales' bytes, which at group 16 were half
// of the codes'.
//
// G_INT4H is G_INT4 for weights whose scales and offsets are BF16 values (a checkpoint's
// BF16 scales; the host checks): two weights are dequantized at once in BF16x2 arithmetic,
// 2 instructions per weight instead of 4.5, with the same values: (u - off) is exact in
// BF16, and the product of two BF16 values rounded once to BF16 is what rounding its exact
// f32 value gives. Decode of 4-bit weights at full bandwidth has only ~3.5 instructions per
// weight to spend on an H200.
enum { G_INT4, G_INT8, G_FP4, G_INT4H };

// u - off for integers u < 2^23 and off, exactly: base = 2^23 + off.
__device__ __forceinline__ float minus(u32 u, float base) {
    return __uint_as_float(0x4B000000u | u) - base;
}

// The FP4 (E2M1) value of a nibble, exactly (-0 for 0x8): its bits placed as a subnormal
// f32, times 2^126.
__device__ __forceinline__ float fp4_f32(u32 n) {
    return __uint_as_float(((n & 7u) << 22) | ((n & 8u) << 28)) * 0x1p126f;
}

// One chunk (8 weights: w[0] for 4-bit, w[0..1] for 8-bit) as four BF16 pairs; s its
// group's scale, off its integer offset.
template <int F>
__device__ __forceinline__ uint4 dequant_chunk(const u32* w, float s, float off) {
    u32 r[4];
    if constexpr (F == G_INT4H) {
        // Nibbles i and i+4 as BF16 128 + u (exponent 2^7, u in the mantissa), minus
        // 128 + off, times s; + -0 keeps the sign of a zero product as f32 does.
        const u32 s2 = f32x2_to_bf16x2(s, s), nb = f32x2_to_bf16x2(-128.0f - off, -128.0f - off);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const u32 v = ((w[0] >> (4 * i)) & 0x000F000Fu) | 0x43004300u;
            r[i] = bf16x2_fma(bf16x2_fma(v, 0x3F803F80u, nb), s2, 0x80008000u);
        }
        return make_uint4(r[0], r[1], r[2], r[3]);
    }
    const float base = 8388608.0f + off;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float lo, hi;
        if constexpr (F == G_INT8) {
            const u32 word = w[i >> 1], sh = 16 * (i & 1);
            lo = minus((word >> sh) & 0xFFu, base);
            hi = minus((word >> (sh + 8)) & 0xFFu, base);
        } else if constexpr (F == G_INT4) {
            lo = minus((w[0] >> (4 * i)) & 0xFu, base);
            hi = minus((w[0] >> (4 * i + 16)) & 0xFu, base);
        } else {
            lo = fp4_f32(w[0] >> (4 * i));
            hi = fp4_f32(w[0] >> (4 * i + 16));
        }
        r[i] = f32x2_to_bf16x2(lo * s, hi * s);
    }
    return make_uint4(r[0], r[1], r[2], r[3]);
}

template <int F>
struct GroupFmt {
    static constexpr int bits = F == G_INT8 ? 8 : 4;  // G_INT4H: as G_INT4
    static constexpr int scale_bytes = F == G_FP4 ? 1 : 4;  // see group_scale
    // The offset of symmetric integer codes (u = q + 2^(bits-1)).
    static constexpr float off = F == G_INT8 ? 128.0f : 8.0f;
};

// Grouped rows for gemv_sums: one slice load per row per warp step, dequantized per chunk.
template <int F>
struct GroupedRows {
    const u8* a;  // codes of rows g and g+8
    const u8* b;
    const u8* sa;  // their scales (see group_scale) and offsets (null: symmetric)
    const u8* sb;
    const float* oa;
    const float* ob;
    const float* ta;  // FP4: their scale tables
    const float* tb;
    int group;
};

// The scale of group gi of a row: f32 per group, or for FP4 a byte code looked up in the
// row's table.
template <int F>
__device__ __forceinline__ float group_scale(const u8* s, const float* table, u64 gi) {
    if constexpr (F == G_FP4) return table[s[gi]];
    else return ((const float*)s)[gi];
}

template <int F>
__device__ __forceinline__ void load_rows(const GroupedRows<F>& r, int c0, int tig, int kb,
                                          uint4 (&ra)[GEMV_UNROLL], uint4 (&rb)[GEMV_UNROLL]) {
    static_assert(GEMV_UNROLL == 4, "a warp step is one 128-weight superblock");
    constexpr int bits = GroupFmt<F>::bits, slice = 4 * bits;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    uint4 wa[2] = {zero, zero}, wb[2] = {zero, zero};
    const u64 at = (u64)(c0 / 4) * (16 * bits) + tig * slice;
    if (c0 * 64 + tig * 16 < kb) {
#pragma unroll
        for (int h = 0; h < slice / 16; h++) {
            wa[h] = ld_stream(r.a + at + 16 * h);
            wb[h] = ld_stream(r.b + at + 16 * h);
        }
    }
    const u32* pa = (const u32*)wa;
    const u32* pb = (const u32*)wb;
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; u++) {
        if ((c0 + u) * 64 + tig * 16 >= kb) {
            ra[u] = rb[u] = zero;
            continue;
        }
        const int gi = ((c0 + u) * 32 + tig * 8) / r.group, w = u * bits / 4;
        const float off_a = r.oa ? r.oa[gi] : GroupFmt<F>::off;
        const float off_b = r.ob ? r.ob[gi] : GroupFmt<F>::off;
        ra[u] = dequant_chunk<F>(pa + w, group_scale<F>(r.sa, r.ta, gi), off_a);
        rb[u] = dequant_chunk<F>(pb + w, group_scale<F>(r.sb, r.tb, gi), off_b);
    }
}

// Row stride of the grouped layout, in bytes and in scales.
__device__ __forceinline__ int padded(int K) { return (K + 127) / 128 * 128; }

// y[m][n] = sum_k x[m][k] W[n][k] (+ bias[n]), W dequantized from grouped codes; f32 or bf16
// out as gemv_bf16. Grid ceil(N/16), block 128.
template <int F>
__device__ __forceinline__ void gemv_grouped(const u8* w, const u8* sw, const float* ow,
                                             const float* tab, const u32* rtab,
                                             const float* bias, const u16* x, void* y,
                                             int out_f32, int M, int N, int K, int group) {
    const u64 row_bytes = (u64)padded(K) * GroupFmt<F>::bits / 8;
    const u64 groups = (padded(K) + group - 1) / group;
    const u64 srow = groups * GroupFmt<F>::scale_bytes;
    const int r0 = tile_row(N, 0), r1 = tile_row(N, 1);
    const GroupedRows<F> rows = {
        w + r0 * row_bytes,           w + r1 * row_bytes,
        sw + r0 * srow,               sw + r1 * srow,
        ow ? ow + r0 * groups : ow,   ow ? ow + r1 * groups : ow,
        tab ? tab + rtab[r0] : tab,   tab ? tab + rtab[r1] : tab,
        group,
    };
    float acc[2][4];
    gemv_sums<W_BF16>(rows, (const u8*)x, M, 2 * K, acc);
    store_dense(acc, bias, y, out_f32, M, N);
}

// W[n][k] as BF16 `[N][K]` (for prefill's dense GEMM): one thread per chunk of 8 weights.
template <int F>
__device__ __forceinline__ void dequant_grouped(const u8* w, const u8* sw, const float* ow,
                                                const float* tab, const u32* rtab, u16* out,
                                                int N, int K, int group) {
    constexpr int bits = GroupFmt<F>::bits;
    const u64 per_row = padded(K) / 8, groups = (padded(K) + group - 1) / group;
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)N * per_row) return;
    const u64 row = i / per_row;
    const int k0 = (int)(i % per_row) * 8;
    if (k0 >= K) return;
    const int sb = k0 / 128, j = (k0 % 128) / 32, tig = (k0 % 32) / 8;
    const u8* chunk =
        w + row * padded(K) * bits / 8 + sb * 16 * bits + tig * 4 * bits + j * bits;
    const u64 gi = row * groups + k0 / group;
    const float off = ow ? ow[gi] : GroupFmt<F>::off;
    const float s = group_scale<F>(sw, tab ? tab + rtab[row] : tab, gi);
    *(uint4*)(out + row * K + k0) = dequant_chunk<F>((const u32*)chunk, s, off);
}

// Arguments: codes, scales, offsets (0: symmetric), FP4's tables and per-row table offsets
// (0 for the integer formats).
#define GROUPED_KERNELS(F, gemv_name, dequant_name)                                           \
    extern "C" __global__ void __launch_bounds__(128)                                         \
        gemv_name(const u8* w, const u8* sw, const float* ow, const float* tab,               \
                  const u32* rtab, const float* bias, const u16* x, void* y, int out_f32,     \
                  int M, int N, int K, int group) {                                           \
        gemv_grouped<F>(w, sw, ow, tab, rtab, bias, x, y, out_f32, M, N, K, group);           \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(256)                                         \
        dequant_name(const u8* w, const u8* sw, const float* ow, const float* tab,            \
                     const u32* rtab, u16* out, int N, int K, int group) {                    \
        grid_dep_start();                                                                      \
        dequant_grouped<F>(w, sw, ow, tab, rtab, out, N, K, group);                           \
    }

// Grid ceil(N/16) x block 128 (gemv_*); ceil(N * padded(K) / 8 / 256) x 256 (dequant_*).
GROUPED_KERNELS(G_INT4, gemv_int4g, dequant_int4g)
GROUPED_KERNELS(G_INT8, gemv_int8g, dequant_int8g)
GROUPED_KERNELS(G_FP4, gemv_fp4g, dequant_fp4g)
GROUPED_KERNELS(G_INT4H, gemv_int4h, dequant_int4h)
#endif  // GEMV_SWEEP
