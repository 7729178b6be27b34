// Rotary embedding (HF rotate-half layout) of the fused q|k|v projection output, with
// Qwen3's optional per-head RMSNorm of q and k first, writing q and appending k, v to the
// BF16 KV cache. cos/sin tables are computed on the host exactly as the CPU backend does
// (default and llama3 frequencies), [max_seq][d/2] f32.
#include "common.cuh"

// qkv: bf16 [t][(H + 2*KVH) * d]. One warp per (row, head), heads 0..H are q, then KVH k
// heads, then KVH v heads. Writes q_out bf16 [t][H*d] and k_cache / v_cache bf16
// [max_seq][KVH*d] at rows pos + row, where pos = *posp (in device memory, so that a
// captured decode step serves every position). qn / kn: f32 [d] norm weights or null.
extern "C" __global__ void rope_qkv(const u16* qkv, int t, int H, int KVH, int d, const int* posp,
                                    const float* cos_t, const float* sin_t, const float* qn,
                                    const float* kn, float eps, u16* q_out, u16* k_cache,
                                    u16* v_cache) {
    grid_dep_start();
    const int lane = threadIdx.x & 31, pos = *posp;
    const int heads = H + 2 * KVH;
    const u64 gw = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (gw >= (u64)t * heads) return;
    const int row = (int)(gw / heads), head = (int)(gw % heads);
    const u16* src = qkv + (u64)row * heads * d + (u64)head * d;
    const u64 cache_row = (u64)(pos + row) * KVH * d;
    if (head >= H + KVH) {  // v: plain copy into the cache
        u16* dst = v_cache + cache_row + (u64)(head - H - KVH) * d;
        for (int i = lane; i < d; i += 32) dst[i] = src[i];
        return;
    }
    const bool is_q = head < H;
    u16* dst = is_q ? q_out + (u64)row * H * d + (u64)head * d
                    : k_cache + cache_row + (u64)(head - H) * d;
    const float* nw = is_q ? qn : kn;
    float r = 1.0f;
    if (nw) {  // per-head RMSNorm, sum of squares in f64 like the CPU backend
        double ss = 0.0;
        for (int i = lane; i < d; i += 32) {
            const float v = bf16_to_f32(src[i]);
            ss += (double)(v * v);
        }
        for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
        r = 1.0f / sqrtf((float)(ss / d) + eps);
    }
    const int half = d / 2;
    const float* c = cos_t + (u64)(pos + row) * half;
    const float* s = sin_t + (u64)(pos + row) * half;
    for (int j = lane; j < half; j += 32) {
        float a = bf16_to_f32(src[j]), b = bf16_to_f32(src[j + half]);
        if (nw) {
            a = nw[j] * (a * r);
            b = nw[j + half] * (b * r);
        }
        // x1 = a*c - b*s, x2 = b*c + a*s, each product rounded (no FMA), as the CPU does.
        const float x1 = __fadd_rn(__fmul_rn(a, c[j]), __fmul_rn(-b, s[j]));
        const float x2 = __fadd_rn(__fmul_rn(b, c[j]), __fmul_rn(a, s[j]));
        dst[j] = f32_to_bf16(x1);
        dst[j + half] = f32_to_bf16(x2);
    }
}
