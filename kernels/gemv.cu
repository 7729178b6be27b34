// Bandwidth-bound GEMV/skinny GEMM for decode (M <= 16 activation rows): y = x . W^T with W
// [N][K] row-major, streamed once with 128-bit loads that bypass L1.
//
// Tensor cores do the arithmetic (mma.sync m16n8k32 e4m3 / s8, m16n8k16 bf16; f32
// accumulate, s32 for int8, whose sums stay exact):
// a warp multiplies a 16-row weight tile by up to 16 activation rows (one or two n8 tiles).
// Each thread loads 16 contiguous bytes per row per 64-byte k-chunk and uses them directly
// as its mma fragments: this permutes k identically in A and B, which a dot product
// ignores, so no shuffles or shared memory are needed. Partial sums are moved out of the
// tensor-core accumulator every chunk (64 products) and summed in f32.
//
// Block = 4 warps on one 16-row tile, the warps splitting K; grid = ceil(N/16). Row and
// column counts need not be multiples of anything but K*elem_size % 16 == 0 (host-checked).
#include "common.cuh"

#define GEMV_WARPS 4
#define GEMV_UNROLL 4

#ifndef QFORGE_EMU  // kernels/emu/emu.h emulates these two on the host (and mma_bf16)
__device__ __forceinline__ uint4 ld_stream(const u8* p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

__device__ __forceinline__ void mma_e4m3(float* d, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_s8(int* d, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
#endif  // QFORGE_EMU

// The weight (and activation) kinds, and their accumulators.
enum { W_BF16, W_FP8, W_S8 };
template <int W>
struct Acc {
    typedef float T;
};
template <>
struct Acc<W_S8> {
    typedef int T;
};

// One 64-byte k-chunk: rows g (wa) and g+8 (wb) against one activation column (xv).
template <int W>
__device__ __forceinline__ void mma_chunk(typename Acc<W>::T* c, uint4 wa, uint4 wb, uint4 xv) {
    if constexpr (W == W_FP8) {
        mma_e4m3(c, wa.x, wb.x, wa.y, wb.y, xv.x, xv.y);
        mma_e4m3(c, wa.z, wb.z, wa.w, wb.w, xv.z, xv.w);
    } else if constexpr (W == W_S8) {
        mma_s8(c, wa.x, wb.x, wa.y, wb.y, xv.x, xv.y);
        mma_s8(c, wa.z, wb.z, wa.w, wb.w, xv.z, xv.w);
    } else {
        mma_bf16(c, wa.x, wb.x, wa.y, wb.y, xv.x, xv.y);
        mma_bf16(c, wa.z, wb.z, wa.w, wb.w, xv.z, xv.w);
    }
}

// Sums over K for the block's 16-row tile. On return, warp 0 holds the totals: acc[n][i]
// is (row g + 8*(i/2), activation row 8n + 2*tig + i%2), g = lane/4, tig = lane%4.
// kb = bytes per row (K * element size).
template <int W, class T = typename Acc<W>::T>
__device__ __forceinline__ void gemv_sums(const u8* w, const u8* x, int M, int N, int kb,
                                          T (&acc)[2][4]) {
    __shared__ T red[GEMV_WARPS][2][4][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tig = lane & 3;
    const int row0 = blockIdx.x * 16;
    const u8* wa = w + (u64)min(row0 + g, N - 1) * kb;
    const u8* wb = w + (u64)min(row0 + g + 8, N - 1) * kb;
    const u8* xa = x + (u64)min(g, M - 1) * kb;
    const u8* xb = x + (u64)min(g + 8, M - 1) * kb;
    const bool two = M > 8;
    const uint4 zero = make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int n = 0; n < 2; n++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[n][i] = 0;
    const int nchunks = (kb + 63) / 64;
    for (int c0 = warp * GEMV_UNROLL; c0 < nchunks; c0 += GEMV_WARPS * GEMV_UNROLL) {
        uint4 ra[GEMV_UNROLL], rb[GEMV_UNROLL], va[GEMV_UNROLL], vb[GEMV_UNROLL];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            const int off = (c0 + u) * 64 + tig * 16;
            const bool ok = off < kb;
            ra[u] = ok ? ld_stream(wa + off) : zero;
            rb[u] = ok ? ld_stream(wb + off) : zero;
            va[u] = ok ? __ldg((const uint4*)(xa + off)) : zero;
            vb[u] = ok && two ? __ldg((const uint4*)(xb + off)) : zero;
        }
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            T c[4] = {0, 0, 0, 0};
            mma_chunk<W>(c, ra[u], rb[u], va[u]);
#pragma unroll
            for (int i = 0; i < 4; i++) acc[0][i] += c[i];
            if (two) {
                T c2[4] = {0, 0, 0, 0};
                mma_chunk<W>(c2, ra[u], rb[u], vb[u]);
#pragma unroll
                for (int i = 0; i < 4; i++) acc[1][i] += c2[i];
            }
        }
    }
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

// W8A8: y[m][n] = bf16(sa[m] * (sw[n] * f32(sum_k x[m][k] w[n][k])) (+ bias[n])), w and x
// FP8 (W_FP8) or int8 (W_S8, the sum exact in s32 as vLLM's cutlass_scaled_mm).
template <int W>
__device__ __forceinline__ void gemv_scaled(const u8* w, const float* sw, const u8* x,
                                            const float* sa, const float* bias, u16* y, int M,
                                            int N, int K) {
    typename Acc<W>::T acc[2][4];
    gemv_sums<W>(w, x, M, N, K, acc);
    if ((threadIdx.x >> 5) != 0) return;
    const int lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;
#pragma unroll
    for (int n = 0; n < 2; n++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int row = blockIdx.x * 16 + g + 8 * (i >> 1), m = 8 * n + 2 * tig + (i & 1);
            if (row >= N || m >= M) continue;
            float v = sa[m] * (sw[row] * (float)acc[n][i]);
            if (bias) v += bias[row];
            y[(u64)m * N + row] = f32_to_bf16(v);
        }
}

// FP8 W8A8 GEMV. Grid ceil(N/16), block 128.
extern "C" __global__ void __launch_bounds__(128)
    gemv_fp8(const u8* w, const float* sw, const u8* x, const float* sa, const float* bias,
             u16* y, int M, int N, int K) {
    gemv_scaled<W_FP8>(w, sw, x, sa, bias, y, M, N, K);
}

// INT8 W8A8 GEMV. Grid ceil(N/16), block 128.
extern "C" __global__ void __launch_bounds__(128)
    gemv_int8(const u8* w, const float* sw, const u8* x, const float* sa, const float* bias,
              u16* y, int M, int N, int K) {
    gemv_scaled<W_S8>(w, sw, x, sa, bias, y, M, N, K);
}

// Dense BF16: y[m][n] = sum_k x[m][k] w[n][k] (+ bias[n]), written as f32 (out_f32 != 0,
// the logits) or bf16. Grid ceil(N/16), block 128.
extern "C" __global__ void __launch_bounds__(128)
    gemv_bf16(const u16* w, const u16* x, const float* bias, void* y, int out_f32, int M,
              int N, int K) {
    float acc[2][4];
    gemv_sums<W_BF16>((const u8*)w, (const u8*)x, M, N, 2 * K, acc);
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
