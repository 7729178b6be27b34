// Causal GQA attention over the BF16 KV cache, flash style: keys and values are streamed
// through shared memory in tiles of 32 positions with an online softmax, so no [T, T] buffer
// exists. `attention` (CUDA cores) serves decode and short chunks, any head dim up to 256;
// `attention_mma_*` (tensor cores, at the end of this file) serves prefill chunks of more
// than 16 rows for head dims 64, 128 and 256.
//
// A block takes one kv head and `rq` consecutive query rows; its work items are the
// rq * G (query row, q head of the group) pairs, spread over 8 warps (at most 4 each, so
// rq * G <= 32). Per tile, lane j scores key j for one item; the softmax statistics are
// warp reductions; for P.V each lane owns dims lane, lane+32, ... (d <= 256). Tiles move
// through registers in 16-byte pieces, the next one loaded while the current one is used
// (head dims that are multiples of 8 up to 128; others 4 bytes at a time, tile by tile).
//
// Decode has one query row, so its grid would be only KVH blocks: there the keys are split
// over gridDim.z blocks of `kchunk` keys each (flash-decoding); each writes its unnormalised
// state (max, sum, P.V) and attention_combine merges them.
#include "common.cuh"

#define ATT_WARPS 8
#define ATT_TILE 32
#define MAX_ITEMS_PER_WARP 4
#define MAX_DIM_CHUNKS 8
#define ATT_PIECES 2  // 16-byte pieces of a K (and a V) tile per thread: 32 keys x 128 dims

// The 16-byte pieces of the K/V tile at key k0 this thread moves (zeros past kend): piece p
// is item i = threadIdx.x + p * blockDim.x, key i / (d/8), dims 8 * (i % (d/8)) on.
__device__ __forceinline__ void load_tile(const u16* k_cache, const u16* v_cache, int k0,
                                          int kend, u64 kvw, int kh, int d,
                                          uint4 (&pk)[ATT_PIECES], uint4 (&pv)[ATT_PIECES]) {
    const int per_key = d / 8;
#pragma unroll
    for (int p = 0; p < ATT_PIECES; p++) {
        const int i = threadIdx.x + p * blockDim.x, j = i / per_key, c = 8 * (i % per_key);
        pk[p] = pv[p] = make_uint4(0, 0, 0, 0);
        if (i < ATT_TILE * per_key && k0 + j < kend) {
            const u64 off = (u64)(k0 + j) * kvw + (u64)kh * d + c;
            pk[p] = *(const uint4*)(k_cache + off);
            pv[p] = *(const uint4*)(v_cache + off);
        }
    }
}

// load_tile's pieces into the shared K/V tiles (row stride ds; 4-byte stores, as ds = d + 2
// keeps the scoring reads conflict-free but rows only 4-byte aligned).
__device__ __forceinline__ void store_tile(u16* ks, u16* vs, int ds, int d,
                                           const uint4 (&pk)[ATT_PIECES],
                                           const uint4 (&pv)[ATT_PIECES]) {
    const int per_key = d / 8;
#pragma unroll
    for (int p = 0; p < ATT_PIECES; p++) {
        const int i = threadIdx.x + p * blockDim.x, j = i / per_key, c = 8 * (i % per_key);
        if (i >= ATT_TILE * per_key) continue;
        u32* kd = (u32*)(ks + j * ds + c);
        u32* vd = (u32*)(vs + j * ds + c);
        kd[0] = pk[p].x, kd[1] = pk[p].y, kd[2] = pk[p].z, kd[3] = pk[p].w;
        vd[0] = pv[p].x, vd[1] = pv[p].y, vd[2] = pv[p].z, vd[3] = pv[p].w;
    }
}

// q: bf16 [t][H*d]; caches bf16 [max_seq][KVH*d] holding positions 0..pos+t, pos = *posp
// (in device memory: a captured decode step serves every position); out bf16 [t][H*d].
// Grid (ceil(t/rq), KVH, splits), block 256, dynamic shared memory
// rq*G*d*4 + 2 * 32*(d+2)*2 bytes. Block z takes keys [z*chunk, (z+1)*chunk) (unsplit:
// one z, kchunk 2^30); split, chunk = the fewest whole 32-key tiles that let the splits
// cover the keys seen so far, at most kchunk (a multiple of 32, of the whole cache). Split,
// it writes
// part[z][row][head] = (max score, sum of exp, unnormalised P.V [d]) as f32
// [splits][t][H][d+2] instead of `out`; a split past the last key writes max = -inf.
extern "C" __global__ void attention(const u16* q, const u16* k_cache, const u16* v_cache,
                                     u16* out, int t, const int* posp, int H, int KVH, int d,
                                     int rq, float scale, int kchunk, float* part) {
    grid_dep_start();
    DYNAMIC_SMEM(float, smem);
    const int G = H / KVH, items = rq * G, kh = blockIdx.y, pos = *posp;
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
    // Keys needed by the last row of the block (causal), within this block's split. The
    // splits share out the keys there are now, pos + t: a captured decode step's kchunk was
    // sized for the whole cache, and early on most of its splits would have no key while
    // a few took them all. The same chunk for every block: each row's splits cover its keys.
    const int kmax = pos + min(t, row0 + rq);
    const int nz = (int)gridDim.z, tiles = (pos + t + nz * ATT_TILE - 1) / (nz * ATT_TILE);
    const int chunk = nz > 1 ? min(kchunk, tiles * ATT_TILE) : kchunk;
    const int kbeg = blockIdx.z * chunk, kend = min(kmax, kbeg + chunk);
    const int half_d = d / 2;
    // Head dims that are multiples of 8 move K/V in 16-byte pieces, the next tile's loaded
    // while this one's scores and P.V are computed; others 4 bytes at a time.
    const bool pieces = d % 8 == 0 && (int)blockDim.x * ATT_PIECES * 8 >= ATT_TILE * d;
    uint4 pk[ATT_PIECES], pv[ATT_PIECES];
    if (pieces) load_tile(k_cache, v_cache, kbeg, kend, kvw, kh, d, pk, pv);
    for (int k0 = kbeg; k0 < kend; k0 += ATT_TILE) {
        __syncthreads();  // previous tile fully consumed (and q loaded, first time)
        if (pieces) store_tile(ks, vs, ds, d, pk, pv);
        for (int i = threadIdx.x; !pieces && i < ATT_TILE * half_d; i += blockDim.x) {
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
        if (pieces && k0 + ATT_TILE < kend)
            load_tile(k_cache, v_cache, k0 + ATT_TILE, kend, kvw, kh, d, pk, pv);
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
    grid_dep_start();
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

// ---- prefill attention on tensor cores ----
//
// FlashAttention-2 style: a block of 4 warps takes 64 query rows (16 per warp) of one q head;
// key tiles of 32 positions are staged in shared memory (K as is, V transposed); each warp
// computes its 16x32 score tile with mma.sync m16n8k16 (BF16 in, f32 accumulate), keeps an
// online softmax per row, and multiplies the probabilities (rounded to BF16, as FlashAttention
// does) by V with mma into f32 accumulators. The score accumulator's fragment layout is the
// layout of the next mma's A operand, so probabilities never leave registers. No [T, T]
// buffer exists; tiles wholly in a warp's future are skipped.
#define MMA_ROWS 64
#define MMA_KEYS 32
#define MMA_PAD 8  // bf16 padding per shared-memory row: conflict-free fragment reads

__device__ __forceinline__ u32 ld_u32(const u16* p) { return *(const u32*)p; }

// q: bf16 [t][H*D]; caches bf16 [max_seq][KVH*D] holding positions 0..pos+t, pos = *posp;
// out bf16 [t][H*D]. Grid (ceil(t/64), H), block 128, dynamic shared memory
// attention_mma_smem(D) bytes.
template <int D>
__device__ __forceinline__ void attention_mma_body(const u16* q, const u16* k_cache,
                                                   const u16* v_cache, u16* out, int t,
                                                   const int* posp, int H, int KVH, float scale,
                                                   float* smem) {
    const int QS = D + MMA_PAD, VS = MMA_KEYS + MMA_PAD;
    u16* qs = (u16*)smem;             // [64][QS]
    u16* ks = qs + MMA_ROWS * QS;     // [32][QS]
    u16* vt = ks + MMA_KEYS * QS;     // [D][VS]: V transposed
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, tg = lane & 3;
    const int h = blockIdx.y, kh = h / (H / KVH), pos = *posp;
    const int row0 = blockIdx.x * MMA_ROWS, wrow = row0 + warp * 16;
    const u64 qw = (u64)H * D, kvw = (u64)KVH * D;
    for (int i = tid; i < MMA_ROWS * D / 2; i += blockDim.x) {
        const int r = i / (D / 2), c = 2 * (i % (D / 2));
        const u32 v = row0 + r < t ? ld_u32(q + (u64)(row0 + r) * qw + (u64)h * D + c) : 0u;
        *(u32*)(qs + r * QS + c) = v;
    }
    // This warp's rows g and g+8 (as positions), and the last key any of its rows sees.
    const int ra = wrow + g, rb = ra + 8;
    const int wlast = pos + min(t - 1, wrow + 15);
    const int kmax = pos + min(t, row0 + MMA_ROWS);  // keys the block needs
    float o[D / 8][4], m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f};
#pragma unroll
    for (int n = 0; n < D / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    for (int k0 = 0; k0 < kmax; k0 += MMA_KEYS) {
        __syncthreads();  // the previous tile is consumed (and q staged, first time)
        for (int i = tid; i < MMA_KEYS * D / 2; i += blockDim.x) {
            const int j = i / (D / 2), c = 2 * (i % (D / 2));
            u32 kv = 0, vv = 0;
            if (k0 + j < kmax) {
                const u64 off = (u64)(k0 + j) * kvw + (u64)kh * D + c;
                kv = ld_u32(k_cache + off);
                vv = ld_u32(v_cache + off);
            }
            *(u32*)(ks + j * QS + c) = kv;
            vt[c * VS + j] = (u16)(vv & 0xffffu);
            vt[(c + 1) * VS + j] = (u16)(vv >> 16);
        }
        __syncthreads();
        if (wrow >= t || k0 > wlast) continue;  // uniform per warp: no mma divergence
        // S = Q K^T for this warp's 16 rows and the tile's 32 keys (4 n-tiles of 8).
        float s[4][4];
#pragma unroll
        for (int j = 0; j < 4; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            const u16* qa = qs + (warp * 16 + g) * QS + kk * 16 + 2 * tg;
            const u32 a0 = ld_u32(qa), a1 = ld_u32(qa + 8 * QS), a2 = ld_u32(qa + 8),
                      a3 = ld_u32(qa + 8 * QS + 8);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const u16* kb = ks + (j * 8 + g) * QS + kk * 16 + 2 * tg;
                mma_bf16(s[j], a0, a1, a2, a3, ld_u32(kb), ld_u32(kb + 8));
            }
        }
        // Scale, causal mask, and the online softmax of rows ra (i < 2) and rb (i >= 2).
        float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int key = k0 + j * 8 + 2 * tg + (i & 1), row = i < 2 ? ra : rb;
                const bool see = row < t && key <= pos + row;
                s[j][i] = see ? s[j][i] * scale : NEG_INF;
                mx[i >> 1] = fmaxf(mx[i >> 1], s[j][i]);
            }
#pragma unroll
        for (int x = 0; x < 2; x++) {
            mx[x] = fmaxf(mx[x], __shfl_xor_sync(0xffffffffu, mx[x], 1));
            mx[x] = fmaxf(mx[x], __shfl_xor_sync(0xffffffffu, mx[x], 2));
            const float mnew = fmaxf(m[x], mx[x]);
            const float corr = mnew == NEG_INF ? 1.0f : expf(m[x] - mnew);
            m[x] = mnew;
            l[x] *= corr;
#pragma unroll
            for (int n = 0; n < D / 8; n++) {
                o[n][2 * x] *= corr;
                o[n][2 * x + 1] *= corr;
            }
        }
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const float p = s[j][i] == NEG_INF ? 0.0f : expf(s[j][i] - m[i >> 1]);
                s[j][i] = p;
                l[i >> 1] += p;
            }
        // O += P V, two k-steps of 16 keys; P's accumulator fragments are the A operand.
#pragma unroll
        for (int kk = 0; kk < 2; kk++) {
            const u32 a0 = f32x2_to_bf16x2(s[2 * kk][0], s[2 * kk][1]);
            const u32 a1 = f32x2_to_bf16x2(s[2 * kk][2], s[2 * kk][3]);
            const u32 a2 = f32x2_to_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            const u32 a3 = f32x2_to_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int n = 0; n < D / 8; n++) {
                const u16* vb = vt + (n * 8 + g) * VS + kk * 16 + 2 * tg;
                mma_bf16(o[n], a0, a1, a2, a3, ld_u32(vb), ld_u32(vb + 8));
            }
        }
    }
    if (wrow >= t) return;
#pragma unroll
    for (int x = 0; x < 2; x++) {
        l[x] += __shfl_xor_sync(0xffffffffu, l[x], 1);
        l[x] += __shfl_xor_sync(0xffffffffu, l[x], 2);
    }
#pragma unroll
    for (int x = 0; x < 2; x++) {
        const int row = x == 0 ? ra : rb;
        if (row >= t) continue;
        const float inv = 1.0f / l[x];
        u16* orow = out + (u64)row * qw + (u64)h * D + 2 * tg;
#pragma unroll
        for (int n = 0; n < D / 8; n++)
            *(u32*)(orow + n * 8) = f32x2_to_bf16x2(o[n][2 * x] * inv, o[n][2 * x + 1] * inv);
    }
}

#define ATTENTION_MMA(D)                                                                       \
    extern "C" __global__ void __launch_bounds__(128)                                          \
        attention_mma_##D(const u16* q, const u16* k_cache, const u16* v_cache, u16* out,      \
                          int t, const int* posp, int H, int KVH, float scale) {               \
        grid_dep_start();                                                                      \
        DYNAMIC_SMEM(float, smem);                                                             \
        attention_mma_body<D>(q, k_cache, v_cache, out, t, posp, H, KVH, scale, smem);         \
    }
ATTENTION_MMA(64)
ATTENTION_MMA(128)
ATTENTION_MMA(256)
