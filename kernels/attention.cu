// Causal GQA attention over the BF16 KV cache, flash style: keys and values are streamed
// through shared memory in tiles of 32 positions with an online softmax, so no [T, T] buffer
// exists. Used for prefill (many query rows) and decode (one row) alike.
//
// A block takes one kv head and `rq` consecutive query rows; its work items are the
// rq * G (query row, q head of the group) pairs, spread over 8 warps (at most 4 each, so
// rq * G <= 32). Per tile, lane j scores key j for one item; the softmax statistics are
// warp reductions; for P.V each lane owns dims lane, lane+32, ... (d <= 256).
//
// Decode has one query row, so its grid would be only KVH blocks: there the keys are split
// over gridDim.z blocks of `kchunk` keys each (flash-decoding); each writes its unnormalised
// state (max, sum, P.V) and attention_combine merges them.
#include "common.cuh"

#define ATT_WARPS 8
#define ATT_TILE 32
#define MAX_ITEMS_PER_WARP 4
#define MAX_DIM_CHUNKS 8

// q: bf16 [t][H*d]; caches bf16 [max_seq][KVH*d] holding positions 0..pos+t; out bf16
// [t][H*d]. Grid (ceil(t/rq), KVH, splits), block 256, dynamic shared memory
// rq*G*d*4 + 2 * 32*(d+2)*2 bytes. With splits > 1, block z takes keys
// [z*kchunk, (z+1)*kchunk) (kchunk a multiple of 32) and writes part[z][row][head] =
// (max score, sum of exp, unnormalised P.V [d]) as f32 [splits][t][H][d+2] instead of `out`.
extern "C" __global__ void attention(const u16* q, const u16* k_cache, const u16* v_cache,
                                     u16* out, int t, int pos, int H, int KVH, int d, int rq,
                                     float scale, int kchunk, float* part) {
    DYNAMIC_SMEM(float, smem);
    const int G = H / KVH, items = rq * G, kh = blockIdx.y;
    const int row0 = blockIdx.x * rq;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int ds = d + 2;  // padded row stride of the K/V tiles (conflict-free lane reads)
    float* qs = smem;                                  // [items][d]
    u16* ks = (u16*)(smem + items * d);                // [32][ds]
    u16* vs = ks + ATT_TILE * ds;                      // [32][ds]
    const u64 qw = (u64)H * d, kvw = (u64)KVH * d;

    for (int i = threadIdx.x; i < items * d; i += blockDim.x) {
        const int it = i / d, c = i % d, row = row0 + it / G, head = kh * G + it % G;
        qs[i] = row < t ? bf16_to_f32(q[(u64)row * qw + (u64)head * d + c]) : 0.0f;
    }
    float m[MAX_ITEMS_PER_WARP], l[MAX_ITEMS_PER_WARP], acc[MAX_ITEMS_PER_WARP][MAX_DIM_CHUNKS];
#pragma unroll
    for (int a = 0; a < MAX_ITEMS_PER_WARP; a++) {
        m[a] = NEG_INF;
        l[a] = 0.0f;
        _Pragma("unroll") for (int b = 0; b < MAX_DIM_CHUNKS; b++) acc[a][b] = 0.0f;
    }
    // Keys needed by the last row of the block (causal), within this block's split.
    const int kmax = pos + min(t, row0 + rq);
    const int kbeg = blockIdx.z * kchunk, kend = min(kmax, kbeg + kchunk);
    const int half_d = d / 2;
    for (int k0 = kbeg; k0 < kend; k0 += ATT_TILE) {
        __syncthreads();  // previous tile fully consumed (and q loaded, first time)
        for (int i = threadIdx.x; i < ATT_TILE * half_d; i += blockDim.x) {
            const int j = i / half_d, c = 2 * (i % half_d);
            u32 kv = 0, vv = 0;
            if (k0 + j < kend) {
                const u64 off = (u64)(k0 + j) * kvw + (u64)kh * d + c;
                kv = *(const u32*)(k_cache + off);
                vv = *(const u32*)(v_cache + off);
            }
            *(u32*)(ks + j * ds + c) = kv;
            *(u32*)(vs + j * ds + c) = vv;
        }
        __syncthreads();
    #pragma unroll
    for (int a = 0; a < MAX_ITEMS_PER_WARP; a++) {
            const int it = warp + a * ATT_WARPS;
            if (it >= items) break;
            const int row = row0 + it / G;
            if (row >= t) continue;
            const int qpos = pos + row, j = k0 + lane;
            float sc = NEG_INF;
            if (j <= qpos && j < kend) {
                const float* qi = qs + it * d;
                const u32* kj = (const u32*)(ks + lane * ds);
                float dot = 0.0f;
                for (int c = 0; c < half_d; c++) {
                    const u32 kk = kj[c];
                    dot = fmaf(qi[2 * c], __uint_as_float(kk << 16), dot);
                    dot = fmaf(qi[2 * c + 1], __uint_as_float(kk & 0xffff0000u), dot);
                }
                sc = dot * scale;
            }
            const float tmax = warp_max(sc);
            if (tmax == NEG_INF) continue;  // every key of this tile is in this row's future
            const float mnew = fmaxf(m[a], tmax);
            const float corr = expf(m[a] - mnew);
            const float p = sc == NEG_INF ? 0.0f : expf(sc - mnew);
            l[a] = l[a] * corr + warp_sum(p);
            m[a] = mnew;
            _Pragma("unroll") for (int b = 0; b < MAX_DIM_CHUNKS; b++) acc[a][b] *= corr;
            for (int jj = 0; jj < ATT_TILE; jj++) {
                const float pj = __shfl_sync(0xffffffffu, p, jj);
                if (pj == 0.0f) continue;  // uniform across the warp
                const u16* vj = vs + jj * ds;
                _Pragma("unroll") for (int b = 0; b < MAX_DIM_CHUNKS; b++) {
                    const int c = lane + 32 * b;
                    if (c < d) acc[a][b] = fmaf(pj, bf16_to_f32(vj[c]), acc[a][b]);
                }
            }
        }
    }
#pragma unroll
    for (int a = 0; a < MAX_ITEMS_PER_WARP; a++) {
        const int it = warp + a * ATT_WARPS;
        if (it >= items) break;
        const int row = row0 + it / G, head = kh * G + it % G;
        if (row >= t) continue;
        if (gridDim.z > 1) {  // this split's state, merged by attention_combine
            float* pr = part + (((u64)blockIdx.z * t + row) * H + head) * (d + 2);
            if (lane == 0) {
                pr[0] = m[a];
                pr[1] = l[a];
            }
            _Pragma("unroll") for (int b = 0; b < MAX_DIM_CHUNKS; b++) {
                const int c = lane + 32 * b;
                if (c < d) pr[2 + c] = acc[a][b];
            }
            continue;
        }
        const float inv = 1.0f / l[a];
        u16* o = out + (u64)row * qw + (u64)head * d;
        _Pragma("unroll") for (int b = 0; b < MAX_DIM_CHUNKS; b++) {
            const int c = lane + 32 * b;
            if (c < d) o[c] = f32_to_bf16(acc[a][b] * inv);
        }
    }
}

// Merges the splits of a split attention: for each (row, head), with M the largest split
// max, out = sum_s exp(m_s - M) * acc_s / sum_s exp(m_s - M) * l_s. A split that saw no key
// of a row has m = -inf and is skipped. One warp per (row, head): grid ceil(t*H/8), block 256.
extern "C" __global__ void attention_combine(const float* part, int splits, int t, int H, int d,
                                             u16* out) {
    const int lane = threadIdx.x & 31;
    const u64 gw = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (gw >= (u64)t * H) return;
    const u64 stride = (u64)t * H * (d + 2);
    const float* p0 = part + gw * (d + 2);
    float mx = NEG_INF;
    for (int s = 0; s < splits; s++) mx = fmaxf(mx, p0[s * stride]);
    float sum = 0.0f;
    for (int s = 0; s < splits; s++) {
        const float* p = p0 + s * stride;
        if (p[0] != NEG_INF) sum += p[1] * expf(p[0] - mx);
    }
    const float inv = 1.0f / sum;
    u16* o = out + gw * d;  // row * H * d + head * d
    for (int c = lane; c < d; c += 32) {
        float v = 0.0f;
        for (int s = 0; s < splits; s++) {
            const float* p = p0 + s * stride;
            if (p[0] != NEG_INF) v = fmaf(p[2 + c], expf(p[0] - mx), v);
        }
        o[c] = f32_to_bf16(v * inv);
    }
}
