// Prefill GEMM for 1-byte-code weights without a cuBLASLt path (INT8 W8A8, FP8_BLOCK) and
// for FP8 per channel when cuBLASLt is missing: y = x . W^T, x [M][K] and W [N][K] codes.
//
// Block = 4 warps on a 64 (weight rows) x 64 (activation rows) tile; warp (wy, wx) takes
// weight rows wy*32.. and activation rows wx*32..: 2 x 4 mma tiles of m16n8k32 per k32,
// fed straight from global memory with mma.cuh's chunk trick (no shared memory). Sums:
//   W_S8:  exact s32 over all K, then bf16(sa[m] * (sw[n] * f32(sum)) (+ bias)) (gemv_int8's
//          epilogue, so the result equals gemv_int8's bit for bit);
//   W_FP8: f32, then the same epilogue (gemv_fp8's formula, another summation order);
//   BLOCK: per 128-column group g, f32(group sum) * sa[m][g] * sw[n][g] added in f32
//          (gemv_fp8_block's formula; sw per row [N][K/128], sa [M][K/128]).
// Grid (ceil(N/64), ceil(M/64)), block 128. K % 16 == 0 (K % 128 == 0 for BLOCK).
#include "common.cuh"
#include "mma.cuh"

template <int W, bool BLOCK, class T = typename Acc<W>::T>
__device__ __forceinline__ void gemm_codes(const u8* w, const float* sw, const u8* x,
                                           const float* sa, const float* bias, u16* y, int M,
                                           int N, int K) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tig = lane & 3;
    const int n0 = blockIdx.x * 64 + (warp >> 1) * 32, m0 = blockIdx.y * 64 + (warp & 1) * 32;
    // Weight rows n0 + 16t + g + 8h (index 2t + h), activation rows m0 + 8j + g; clamped
    // (clamped rows are computed and never stored).
    const u8* wr[4];
    const u8* xr[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        wr[i] = w + (u64)min(n0 + 16 * (i >> 1) + g + 8 * (i & 1), N - 1) * K;
        xr[i] = x + (u64)min(m0 + 8 * i + g, M - 1) * K;
    }
    const uint4 zero = make_uint4(0, 0, 0, 0);
    constexpr int step = BLOCK ? 2 : 1;  // chunks of 64 bytes summed before scaling
    const int nchunks = (K + 63) / 64, groups = K / 128;
    T acc[2][4][4] = {};
    for (int c0 = 0; c0 < nchunks; c0 += step) {
        T part[2][4][4] = {};
#pragma unroll
        for (int s = 0; s < step; s++) {
            const int off = (c0 + s) * 64 + tig * 16;
            const bool ok = off < K;
            uint4 wv[4], xv[4];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                wv[i] = ok ? ld_stream(wr[i] + off) : zero;
                xv[i] = ok ? __ldg((const uint4*)(xr[i] + off)) : zero;
            }
#pragma unroll
            for (int t = 0; t < 2; t++)
#pragma unroll
                for (int j = 0; j < 4; j++) mma_chunk<W>(part[t][j], wv[2 * t], wv[2 * t + 1], xv[j]);
        }
#pragma unroll
        for (int t = 0; t < 2; t++)
#pragma unroll
            for (int j = 0; j < 4; j++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    if constexpr (BLOCK) {
                        const int gi = c0 / 2;
                        const int n = min(n0 + 16 * t + g + 8 * (i >> 1), N - 1);
                        const int m = min(m0 + 8 * j + 2 * tig + (i & 1), M - 1);
                        acc[t][j][i] += part[t][j][i] * sa[(u64)m * groups + gi] * sw[(u64)n * groups + gi];
                    } else {
                        acc[t][j][i] += part[t][j][i];
                    }
                }
    }
#pragma unroll
    for (int t = 0; t < 2; t++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int n = n0 + 16 * t + g + 8 * (i >> 1), m = m0 + 8 * j + 2 * tig + (i & 1);
                if (n >= N || m >= M) continue;
                float v;
                if constexpr (BLOCK) v = acc[t][j][i];
                else v = sa[m] * (sw[n] * (float)acc[t][j][i]);
                if (bias) v = __fadd_rn(v, bias[n]);  // as gemv_scaled: no FMA
                y[(u64)m * N + n] = f32_to_bf16(v);
            }
}

#define GEMM_KERNEL(name, W, BLOCK)                                                             \
    extern "C" __global__ void __launch_bounds__(128)                                          \
        name(const u8* w, const float* sw, const u8* x, const float* sa, const float* bias,    \
             u16* y, int M, int N, int K) {                                                    \
        grid_dep_start();                                                                      \
        gemm_codes<W, BLOCK>(w, sw, x, sa, bias, y, M, N, K);                                  \
    }

GEMM_KERNEL(gemm_fp8, W_FP8, false)
GEMM_KERNEL(gemm_int8, W_S8, false)
GEMM_KERNEL(gemm_fp8_block, W_FP8, true)
