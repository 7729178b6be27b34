// Row-wise kernels of the forward pass: embedding gather, residual add + RMSNorm (+ FP8 or
// int8 quantization), SiLU-gating (+ quantization), per-token quantization of a BF16 row,
// the GEMM epilogue (scales, bias). One block per row unless said otherwise; the
// quantizing kernels follow vLLM's dynamic per-token FP8 or int8 (common.cuh `quant_row`).
// Widths `n` are even (checked by the host).
#include "common.cuh"

// ---- A row in registers: the decode path of the row kernels ----
//
// A decode step runs these kernels on one row, in one block. Looping over the row (and again
// for the quantization) waits for memory once per step; instead each thread loads its
// chunks of 8 elements (16-byte loads) all at once, keeps them in registers, and writes the
// codes from there. Used when the row fits: n % 8 == 0 and n <= 8 * ROW_CHUNKS * blockDim
// (32768 at 512 threads: a 70B's intermediate size), else the loops below. The values and
// codes are the loops' (a max is exact in any order); only the f64 sum of squares is added
// in another order.
#define ROW_CHUNKS 8

__device__ __forceinline__ bool row_in_regs(int n) {
    return n % 8 == 0 && n <= 8 * ROW_CHUNKS * (int)blockDim.x;
}

// silu(a) * b.
__device__ __forceinline__ float silu_mul1(float a, float b) { return a / (1.0f + expf(-a)) * b; }

// First element of this thread's chunk c, or -1 past the row.
__device__ __forceinline__ int chunk_at(int c, int n) {
    const int i0 = (c * (int)blockDim.x + (int)threadIdx.x) * 8;
    return i0 < n ? i0 : -1;
}

__device__ __forceinline__ void load8_bf16(const u16* p, float (&o)[8]) {
    const uint4 r = *(const uint4*)p;
    const u32 w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int j = 0; j < 4; j++) {
        o[2 * j] = bf16_to_f32((u16)(w[j] & 0xffffu));
        o[2 * j + 1] = bf16_to_f32((u16)(w[j] >> 16));
    }
}

__device__ __forceinline__ void load8_f32(const float* p, float (&o)[8]) {
    const uint4 a = ((const uint4*)p)[0], b = ((const uint4*)p)[1];
    const u32 w[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
    for (int j = 0; j < 8; j++) o[j] = __uint_as_float(w[j]);
}

__device__ __forceinline__ void store8_f32(float* p, const float (&v)[8]) {
    uint4* q = (uint4*)p;
    q[0] = make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]),
                      __float_as_uint(v[3]));
    q[1] = make_uint4(__float_as_uint(v[4]), __float_as_uint(v[5]), __float_as_uint(v[6]),
                      __float_as_uint(v[7]));
}

__device__ __forceinline__ void store8_bf16(u16* p, const float (&v)[8]) {
    *(uint4*)p = make_uint4(f32x2_to_bf16x2(v[0], v[1]), f32x2_to_bf16x2(v[2], v[3]),
                            f32x2_to_bf16x2(v[4], v[5]), f32x2_to_bf16x2(v[6], v[7]));
}

// quant_row (common.cuh) of a row held in registers: v[c][j] is element chunk_at(c) + j.
// q != 0: codes and scale as quant_row; else bf16 out.
__device__ __forceinline__ void quant_regs(const float (&v)[ROW_CHUNKS][8], int n, int int8,
                                           u8* q, float* s, u16* out, float* redf) {
    if (!q) {
#pragma unroll
        for (int c = 0; c < ROW_CHUNKS; c++)
            if (chunk_at(c, n) >= 0) store8_bf16(out + chunk_at(c, n), v[c]);
        return;
    }
    float amax = 0.0f;
#pragma unroll
    for (int c = 0; c < ROW_CHUNKS; c++)
        if (chunk_at(c, n) >= 0)
#pragma unroll
            for (int j = 0; j < 8; j++)
                amax = int8 ? fmaxf(amax, fabsf(v[c][j])) : nan_max(amax, fabsf(v[c][j]));
    amax = block_max(amax, redf);
    const float sc = int8 ? amax / 127.0f : act_scale(amax), inv = 127.0f / amax;
    if (threadIdx.x == 0) *s = sc;
#pragma unroll
    for (int c = 0; c < ROW_CHUNKS; c++) {
        const int i0 = chunk_at(c, n);
        if (i0 < 0) continue;
        u32 w[4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const float a = v[c][2 * j], b = v[c][2 * j + 1];
            w[j] = int8 ? quant2_int8(a, b, inv) : quant2(a, b, sc);
        }
        *(uint2*)(q + i0) = make_uint2(w[0] | (w[1] << 16), w[2] | (w[3] << 16));
    }
}

// add_rmsnorm's row in registers (see above).
__device__ __forceinline__ void add_rmsnorm_regs(float* xr, const u16* dr, const float* w,
                                                 float eps, int n, u8* q, float* s, u16* out,
                                                 int int8, double* red, float* redf) {
    float v[ROW_CHUNKS][8];
    double ss = 0.0;
#pragma unroll
    for (int c = 0; c < ROW_CHUNKS; c++) {
        const int i0 = chunk_at(c, n);
        if (i0 < 0) continue;
        load8_f32(xr + i0, v[c]);
        if (dr) {
            float d[8];
            load8_bf16(dr + i0, d);
#pragma unroll
            for (int j = 0; j < 8; j++) v[c][j] += d[j];
            store8_f32(xr + i0, v[c]);
        }
#pragma unroll
        for (int j = 0; j < 8; j++) ss += (double)(v[c][j] * v[c][j]);
    }
    ss = block_sum_f64(ss, red);
    const float r = 1.0f / sqrtf((float)(ss / n) + eps);
#pragma unroll
    for (int c = 0; c < ROW_CHUNKS; c++) {
        const int i0 = chunk_at(c, n);
        if (i0 < 0) continue;
        float wc[8];
        load8_f32(w + i0, wc);
#pragma unroll
        for (int j = 0; j < 8; j++) v[c][j] = wc[j] * (v[c][j] * r);
    }
    quant_regs(v, n, int8, q, s, out, redf);
}

// x[r][i] = f32(table[ids[r]][i]). Grid (rows), block 256.
extern "C" __global__ void embed_gather(const u16* table, const u32* ids, int n, float* x) {
    grid_dep_start();
    const u16* src = table + (u64)ids[blockIdx.x] * n;
    float* dst = x + (u64)blockIdx.x * n;
    for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = bf16_to_f32(src[i]);
}

// Residual add + RMSNorm, one block per row:
//   if delta: x += f32(delta)            (x is the f32 residual stream, updated in place)
//   v = w * (x * (1 / sqrt(mean(x^2) + eps)))   (the sum of squares in f64, as the CPU backend)
//   q != 0: q, s = quant_row(v): FP8 (int8 == 0) or int8 codes and the row's scale
//   else:   out = bf16(v)                                (BF16 input of a dense Linear)
// Block at most 512 (the register path's bound).
extern "C" __global__ void __launch_bounds__(512)
    add_rmsnorm(float* x, const u16* delta, const float* w, float eps, int n, u8* q, float* s,
                u16* out, int int8) {
    // The weights, which no kernel writes and which are read only after the sum of squares,
    // start for L2 while the previous kernel finishes (a decode step streams far more than
    // L2 holds between two reads of them).
    if (blockIdx.x == 0 && threadIdx.x == 0 && n % 4 == 0 && ((u64)w & 15) == 0)
        prefetch_l2((const u8*)w, n * 4);
    grid_dep_start();
    __shared__ double red[32];
    __shared__ float redf[32];
    float* xr = x + (u64)blockIdx.x * n;
    const u16* dr = delta ? delta + (u64)blockIdx.x * n : 0;
    if (row_in_regs(n)) {
        u8* qr = q ? q + (u64)blockIdx.x * n : q;
        add_rmsnorm_regs(xr, dr, w, eps, n, qr, s + blockIdx.x, out + (u64)blockIdx.x * n, int8,
                         red, redf);
        return;
    }
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


// gu: bf16 [rows][2*inter] (gate columns first, then up). v = silu(gate) * up, then as
// add_rmsnorm: FP8 / int8 codes + scale when q != 0, else bf16 out [rows][inter]. Block at
// most 512.
extern "C" __global__ void __launch_bounds__(512)
    silu_mul(const u16* gu, int inter, u8* q, float* s, u16* out, int int8) {
    grid_dep_start();
    __shared__ float redf[32];
    const u16* g = gu + (u64)blockIdx.x * 2 * inter;
    const u16* u = g + inter;
    if (row_in_regs(inter)) {
        float v[ROW_CHUNKS][8];
#pragma unroll
        for (int c = 0; c < ROW_CHUNKS; c++) {
            const int i0 = chunk_at(c, inter);
            if (i0 < 0) continue;
            float a[8], b[8];
            load8_bf16(g + i0, a);
            load8_bf16(u + i0, b);
#pragma unroll
            for (int j = 0; j < 8; j++) v[c][j] = silu_mul1(a[j], b[j]);
        }
        u8* qr = q ? q + (u64)blockIdx.x * inter : q;
        quant_regs(v, inter, int8, qr, s + blockIdx.x, out + (u64)blockIdx.x * inter, redf);
        return;
    }
    if (!q) {
        u16* o = out + (u64)blockIdx.x * inter;
        for (int i = threadIdx.x; i < inter; i += blockDim.x) o[i] = f32_to_bf16(silu_mul1(bf16_to_f32(g[i]), bf16_to_f32(u[i])));
        return;
    }
    const auto v = [&](int i) { return silu_mul1(bf16_to_f32(g[i]), bf16_to_f32(u[i])); };
    quant_row(v, inter, int8, q + (u64)blockIdx.x * inter, s + blockIdx.x, redf);
}

// Per-token FP8 (int8 == 0) or int8 quantization of a bf16 row (the attention output before
// o_proj).
extern "C" __global__ void __launch_bounds__(512)
    quant_rows(const u16* x, int n, u8* q, float* s, int int8) {
    grid_dep_start();
    __shared__ float redf[32];
    const u16* xr = x + (u64)blockIdx.x * n;
    if (row_in_regs(n)) {
        float v[ROW_CHUNKS][8];
#pragma unroll
        for (int c = 0; c < ROW_CHUNKS; c++)
            if (chunk_at(c, n) >= 0) load8_bf16(xr + chunk_at(c, n), v[c]);
        quant_regs(v, n, int8, q + (u64)blockIdx.x * n, s + blockIdx.x, 0, redf);
        return;
    }
    const auto v = [&](int i) { return bf16_to_f32(xr[i]); };
    quant_row(v, n, int8, q + (u64)blockIdx.x * n, s + blockIdx.x, redf);
}

// FP8_BLOCK activations: per token and group of 128 columns, as vLLM's
// per_token_group_quant_fp8: s = max(max|x|, 1e-10) / 448 (NaN skipped, fmaxf), codes
// e4m3(clamp(x / s, -448, 448)). x bf16 [rows][n], n a multiple of 128; q [rows][n], s
// [rows][n/128]. Grid (rows), block of W warps (at most 512 threads): warp w takes groups w,
// w+W, ..., 4 values a lane (one 8-byte load).
extern "C" __global__ void __launch_bounds__(512)
    quant_groups(const u16* x, int n, u8* q, float* s) {
    grid_dep_start();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, groups = n / 128;
    const u16* xr = x + (u64)blockIdx.x * n;
    for (int g = warp; g < groups; g += blockDim.x >> 5) {
        const int c = g * 128 + lane * 4;
        const uint2 raw = *(const uint2*)(xr + c);
        const u16 b[4] = {(u16)(raw.x & 0xffffu), (u16)(raw.x >> 16), (u16)(raw.y & 0xffffu),
                          (u16)(raw.y >> 16)};
        float v[4], amax = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            v[j] = bf16_to_f32(b[j]);
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
    grid_dep_start();
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= n) return;
    const u64 i = (u64)blockIdx.x * n + c;
    float v = sa ? sa[blockIdx.x] * (sw[c] * acc[i]) : acc[i];
    if (bias) v += bias[c];
    y[i] = f32_to_bf16(v);
}
