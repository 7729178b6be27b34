// Row-wise kernels of the forward pass: embedding gather, residual add + RMSNorm (+ FP8 or
// int8 quantization), SiLU-gating (+ quantization), per-token quantization of a BF16 row,
// the GEMM epilogue (scales, bias). One block per row unless said otherwise; the
// quantizing kernels follow vLLM's dynamic per-token FP8 or int8 (common.cuh `quant_row`).
// Widths `n` are even (checked by the host).
#include "common.cuh"

// x[r][i] = f32(table[ids[r]][i]). Grid (rows), block 256.
extern "C" __global__ void embed_gather(const u16* table, const u32* ids, int n, float* x) {
    const u16* src = table + (u64)ids[blockIdx.x] * n;
    float* dst = x + (u64)blockIdx.x * n;
    for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = bf16_to_f32(src[i]);
}

// Residual add + RMSNorm, one block per row:
//   if delta: x += f32(delta)            (x is the f32 residual stream, updated in place)
//   v = w * (x * (1 / sqrt(mean(x^2) + eps)))   (the sum of squares in f64, as the CPU backend)
//   q != 0: q, s = quant_row(v): FP8 (int8 == 0) or int8 codes and the row's scale
//   else:   out = bf16(v)                                (BF16 input of a dense Linear)
extern "C" __global__ void add_rmsnorm(float* x, const u16* delta, const float* w, float eps,
                                       int n, u8* q, float* s, u16* out, int int8) {
    __shared__ double red[32];
    __shared__ float redf[32];
    float* xr = x + (u64)blockIdx.x * n;
    const u16* dr = delta ? delta + (u64)blockIdx.x * n : 0;
    double ss = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = xr[i];
        if (dr) {
            v += bf16_to_f32(dr[i]);
            xr[i] = v;
        }
        ss += (double)(v * v);
    }
    ss = block_sum_f64(ss, red);
    const float r = 1.0f / sqrtf((float)(ss / n) + eps);
    if (!q) {
        u16* o = out + (u64)blockIdx.x * n;
        for (int i = threadIdx.x; i < n; i += blockDim.x) o[i] = f32_to_bf16(w[i] * (xr[i] * r));
        return;
    }
    const auto v = [&](int i) { return w[i] * (xr[i] * r); };
    quant_row(v, n, int8, q + (u64)blockIdx.x * n, s + blockIdx.x, redf);
}

__device__ __forceinline__ float silu_mul1(u16 g, u16 u) {
    const float a = bf16_to_f32(g);
    return a / (1.0f + expf(-a)) * bf16_to_f32(u);
}

// gu: bf16 [rows][2*inter] (gate columns first, then up). v = silu(gate) * up, then as
// add_rmsnorm: FP8 / int8 codes + scale when q != 0, else bf16 out [rows][inter].
extern "C" __global__ void silu_mul(const u16* gu, int inter, u8* q, float* s, u16* out,
                                    int int8) {
    __shared__ float redf[32];
    const u16* g = gu + (u64)blockIdx.x * 2 * inter;
    const u16* u = g + inter;
    if (!q) {
        u16* o = out + (u64)blockIdx.x * inter;
        for (int i = threadIdx.x; i < inter; i += blockDim.x) o[i] = f32_to_bf16(silu_mul1(g[i], u[i]));
        return;
    }
    const auto v = [&](int i) { return silu_mul1(g[i], u[i]); };
    quant_row(v, inter, int8, q + (u64)blockIdx.x * inter, s + blockIdx.x, redf);
}

// Per-token FP8 (int8 == 0) or int8 quantization of a bf16 row (the attention output before
// o_proj).
extern "C" __global__ void quant_rows(const u16* x, int n, u8* q, float* s, int int8) {
    __shared__ float redf[32];
    const u16* xr = x + (u64)blockIdx.x * n;
    const auto v = [&](int i) { return bf16_to_f32(xr[i]); };
    quant_row(v, n, int8, q + (u64)blockIdx.x * n, s + blockIdx.x, redf);
}

// FP8_BLOCK activations: per token and group of 128 columns, as vLLM's
// per_token_group_quant_fp8: s = max(max|x|, 1e-10) / 448 (NaN skipped, fmaxf), codes
// e4m3(clamp(x / s, -448, 448)). x bf16 [rows][n], n a multiple of 128; q [rows][n], s
// [rows][n/128]. Grid (rows), block 128: warp w takes groups w, w+4, ..., 4 values a lane.
extern "C" __global__ void quant_groups(const u16* x, int n, u8* q, float* s) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, groups = n / 128;
    const u16* xr = x + (u64)blockIdx.x * n;
    for (int g = warp; g < groups; g += blockDim.x >> 5) {
        const int c = g * 128 + lane * 4;
        float v[4], amax = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            v[j] = bf16_to_f32(xr[c + j]);
            amax = fmaxf(amax, fabsf(v[j]));
        }
        for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        const float sc = fmaxf(amax, 1e-10f) / FP8_MAX;
        if (lane == 0) s[(u64)blockIdx.x * groups + g] = sc;
        u16* qr = (u16*)(q + (u64)blockIdx.x * n + c);
        qr[0] = quant2(v[0], v[1], sc);
        qr[1] = quant2(v[2], v[3], sc);
    }
}

// The W8A8 epilogue for a GEMM that produced raw f32 sums acc [rows][n]:
//   y = bf16(sa[r] * (sw[c] * acc) (+ bias[c]))        grid (rows, ceil(n/256)), block 256.
// Without scales (sa = sw = null): y = bf16(acc (+ bias[c])), a dense GEMM's bias added
// before the one rounding, as vLLM's epilogues do.
extern "C" __global__ void scale_epilogue(const float* acc, const float* sa, const float* sw,
                                          const float* bias, int n, u16* y) {
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= n) return;
    const u64 i = (u64)blockIdx.x * n + c;
    float v = sa ? sa[blockIdx.x] * (sw[c] * acc[i]) : acc[i];
    if (bias) v += bias[c];
    y[i] = f32_to_bf16(v);
}
