// Token selection and test/benchmark helpers: row argmax over logits, deterministic random
// fills for models created directly in GPU memory, and an FP8 conversion probe that the
// self-test compares with the CPU implementation.
#include "common.cuh"

// out[r] = the first index of the largest value of logits[r][0..n) (NaN ignored; all-NaN -> 0).
// Grid (rows), block 1024.
extern "C" __global__ void argmax_rows(const float* logits, int n, u32* out) {
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
        out[blockIdx.x] = bi == 0x7fffffff ? 0u : (u32)bi;
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
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; 2 * i < n;
         i += (u64)gridDim.x * blockDim.x) {
        const u16 v = f32x2_to_e4m3x2(normal(2 * i, seed) * 112.0f, normal(2 * i + 1, seed) * 112.0f);
        p[2 * i] = (u8)(v & 0xff);
        if (2 * i + 1 < n) p[2 * i + 1] = (u8)(v >> 8);
    }
}

// p[i] = bf16(mean + std * N(0,1)). Grid-stride.
extern "C" __global__ void fill_bf16_normal(u16* p, u64 n, u32 seed, float mean, float std) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        p[i] = f32_to_bf16(mean + std * normal(i, seed));
}

// p[i] = v. Grid-stride.
extern "C" __global__ void fill_f32(float* p, u64 n, float v) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        p[i] = v;
}

// The conversions of common.cuh on given inputs (n even): codes[i] = e4m3(in[i]) and
// back[i] = f32(e4m3 code i & 255), for comparison with the CPU implementation.
extern "C" __global__ void fp8_probe(const float* in, int n, u8* codes, float* back) {
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
