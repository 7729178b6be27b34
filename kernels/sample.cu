// Token selection and test/benchmark helpers: row argmax and top-k over logits (what sampling
// needs from the whole vocabulary; the host samples among the few candidates), deterministic
// random fills for models created directly in GPU memory, and an FP8 conversion probe that
// the self-test compares with the CPU implementation.
#include "common.cuh"

// out[2r], out[2r+1] = the bits of the largest value of logits[r][0..n) and its first index
// (NaN ignored; all-NaN -> NaN, 0). Grid (rows), block 1024.
extern "C" __global__ void argmax_rows(const float* logits, int n, u32* out) {
    grid_dep_start();
    __shared__ float sv[32];
    __shared__ int si[32];
    const float* lr = logits + (u64)blockIdx.x * n;
    float best = NEG_INF;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = lr[i];
        if (v > best || (v == best && i < bi)) {
            best = v;
            bi = i;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float v = __shfl_xor_sync(0xffffffffu, best, o);
        const int i = __shfl_xor_sync(0xffffffffu, bi, o);
        if (v > best || (v == best && i < bi)) {
            best = v;
            bi = i;
        }
    }
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if (lane == 0) {
        sv[w] = best;
        si[w] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int k = 1; k < (int)((blockDim.x + 31) >> 5); k++)
            if (sv[k] > best || (sv[k] == best && si[k] < bi)) {
                best = sv[k];
                bi = si[k];
            }
        const u32 id = bi == 0x7fffffff ? 0u : (u32)bi;
        out[2 * blockIdx.x] = __float_as_uint(lr[id]);
        out[2 * blockIdx.x + 1] = id;
    }
}

#define TOP_K_MAX 1024

// A logit's rank among the row's: its order key (larger logits get larger keys, -0 that of
// +0, NaN 0, below -inf) above the complement of its index (so that ties go to the lower
// index, as in argmax). Every rank in a row is distinct, and a larger rank is better.
__device__ __forceinline__ u64 logit_rank(const float* row, int i) {
    const float v = row[i];
    const u32 b = v == 0.0f ? 0u : __float_as_uint(v);
    const u32 key = v != v ? 0u : (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return ((u64)key << 32) | (u64)(0xffffffffu - (u32)i);
}

// The k best logits of each row (1 <= k <= min(n, 1024)), best first, in the order of
// logit_rank: out[r][2j], out[r][2j+1] = the bits of the j-th best value and its index.
// Grid (rows), block 1024.
//
// A radix select over the 64-bit ranks, 8 bits a pass from the top, finds the k-th best rank;
// it stops as soon as every rank under the current prefix is needed (after the 4 passes of
// the logit's bits unless logits tie). The k selected ranks are then bitonic-sorted in shared
// memory. Each pass reads the row once (from L2: the lm_head just wrote it).
extern "C" __global__ void top_k_rows(const float* logits, int n, int k, u32* out) {
    grid_dep_start();
    __shared__ u32 hist[256];
    __shared__ u64 sel[TOP_K_MAX];
    __shared__ u32 pick[3];  // chosen digit, ranks still needed under it, ranks under it
    __shared__ u32 count;
    const float* row = logits + (u64)blockIdx.x * n;
    const int tid = threadIdx.x, nt = blockDim.x, lane = tid & 31;
    u64 prefix = 0;
    int shift = 64;
    while (shift > 0) {
        shift -= 8;
        for (int b = tid; b < 256; b += nt) hist[b] = 0;
        __syncthreads();
        // Whole warps take 32 consecutive logits per turn; lanes with the same digit add
        // together (logits crowd into a few digits: one shared-memory atomic each would
        // serialise).
        for (int base = tid - lane; base < n; base += nt) {
            const int i = base + lane;
            u32 digit = 256;  // not counted
            if (i < n) {
                const u64 r = logit_rank(row, i);
                if (shift == 56 || (r >> (shift + 8)) == prefix) digit = (u32)(r >> shift) & 255;
            }
            const u32 same = __match_any_sync(0xffffffffu, digit);
            if (digit < 256 && (same & ((1u << lane) - 1)) == 0) atomicAdd(&hist[digit], (u32)__popc(same));
        }
        __syncthreads();
        if (tid == 0) {
            const u32 need = shift == 56 ? (u32)k : pick[1];
            u32 above = 0;
            int b = 255;
            for (; b > 0 && above + hist[b] < need; b--) above += hist[b];
            pick[0] = (u32)b;
            pick[1] = need - above;
            pick[2] = hist[b];
        }
        __syncthreads();
        prefix = (prefix << 8) | pick[0];
        const bool done = pick[1] == pick[2];
        __syncthreads();  // every thread has read pick before thread 0 writes it again
        if (done) break;  // the same for every thread: stop with (rank >> shift) >= prefix
    }
    if (tid == 0) count = 0;
    __syncthreads();
    for (int i = tid; i < n; i += nt) {
        const u64 r = logit_rank(row, i);
        if ((r >> shift) >= prefix) sel[atomicAdd(&count, 1u)] = r;
    }
    int m = 1;
    while (m < k) m <<= 1;
    for (int j = k + tid; j < m; j += nt) sel[j] = 0;  // below every real rank
    __syncthreads();
    // Bitonic sort, descending.
    for (int size = 2; size <= m; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int j = tid; j < m; j += nt) {
                const int p = j ^ stride;
                if (p > j) {
                    const u64 a = sel[j], b = sel[p];
                    const bool desc = (j & size) == 0;
                    if (desc ? a < b : a > b) {
                        sel[j] = b;
                        sel[p] = a;
                    }
                }
            }
            __syncthreads();
        }
    }
    u32* o = out + (u64)blockIdx.x * 2 * k;
    for (int j = tid; j < k; j += nt) {
        const u32 id = 0xffffffffu - (u32)sel[j];
        o[2 * j] = __float_as_uint(row[id]);
        o[2 * j + 1] = id;
    }
}

// A counter-based hash (splitmix64) -> uniform float in (0, 1).
__device__ __forceinline__ float uniform01(u64 i, u32 seed) {
    u64 z = i * 0x9E3779B97F4A7C15ull + ((u64)seed << 32) + 0x632BE59BD9B4E019ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return ((float)(z >> 40) + 0.5f) * (1.0f / 16777216.0f);
}

// Standard normal sample number i (Box-Muller on two uniforms).
__device__ __forceinline__ float normal(u64 i, u32 seed) {
    const float u1 = uniform01(2 * i, seed), u2 = uniform01(2 * i + 1, seed);
    return sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
}

// p[i] = e4m3(N(0,1) * 112): like a weight row quantized with absmax at 4 sigma. Grid-stride.
extern "C" __global__ void fill_fp8_normal(u8* p, u64 n, u32 seed) {
    grid_dep_start();
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; 2 * i < n;
         i += (u64)gridDim.x * blockDim.x) {
        const u16 v = f32x2_to_e4m3x2(normal(2 * i, seed) * 112.0f, normal(2 * i + 1, seed) * 112.0f);
        p[2 * i] = (u8)(v & 0xff);
        if (2 * i + 1 < n) p[2 * i + 1] = (u8)(v >> 8);
    }
}

// p[i] = bf16(mean + std * N(0,1)). Grid-stride.
extern "C" __global__ void fill_bf16_normal(u16* p, u64 n, u32 seed, float mean, float std) {
    grid_dep_start();
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        p[i] = f32_to_bf16(mean + std * normal(i, seed));
}

// p[i] = v. Grid-stride.
extern "C" __global__ void fill_f32(float* p, u64 n, float v) {
    grid_dep_start();
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        p[i] = v;
}

// The conversions of common.cuh on given inputs (n even): codes[i] = e4m3(in[i]) and
// back[i] = f32(e4m3 code i & 255), for comparison with the CPU implementation.
extern "C" __global__ void fp8_probe(const float* in, int n, u8* codes, float* back) {
    grid_dep_start();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (2 * i < n) {
        const u16 v = f32x2_to_e4m3x2(in[2 * i], in[2 * i + 1]);
        codes[2 * i] = (u8)(v & 0xff);
        codes[2 * i + 1] = (u8)(v >> 8);
    }
    if (i < 128) {
        const float2 f = e4m3x2_to_f32x2((u16)((2 * i) | ((2 * i + 1) << 8)));
        back[2 * i] = f.x;
        back[2 * i + 1] = f.y;
    }
}
