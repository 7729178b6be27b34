// Host emulation of the CUDA features qforge's kernels use, so that the very same
// kernels/*.cu run on a CPU (QFORGE_CUDA_EMULATE=1, see src/runtime/cuda/emu.rs). It checks
// the kernel logic, the launch parameters and the host code on machines without a GPU (CI).
//
// Every CUDA thread is a fiber; a worker thread runs one block at a time, switching between its
// fibers at barriers. Warp shuffles and the tensor-core `mma` instructions are warp-collective:
// each lane deposits its operands, the warp meets, each lane computes its result from all the
// lanes' operands using the PTX ISA's fragment layouts. Barriers reached by only part of a
// warp or block (divergence), collectives out of step, and non-full shuffle masks are errors.
//
// Numerics: FP8 and BF16 conversions are exact as on the GPU (RNE, satfinite). Math functions
// come from the host libm (CUDA's expf/logf may differ by an ulp), and mma sums its products
// exactly and rounds once (tensor cores truncate a little), so results agree with a GPU to
// about 1e-6 relative, not bit for bit.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace emu {

struct dim3u {
    unsigned x, y, z;
};

enum State : int { RUN, AT_BLOCK, AT_WARP, DONE };

[[noreturn]] void fail(const char* msg);

// One lane's operands of a warp collective (an mma needs 10 words).
struct Lane {
    uint32_t w[12];
};

struct Fiber {
    void* sp;  // saved stack pointer while switched out
    State st;
    dim3u tid;
    int lane, warp;
    unsigned seq;  // collectives done: picks the exchange buffer and checks warps stay in step
    bool dep_waited;  // called grid_dep_wait(): every thread of every kernel must
};

struct Block {
    dim3u bid, bdim, gdim;
    int nthreads;
    Fiber* fibers;
    void* sched_sp;
    unsigned char* dyn_smem;
    Lane xch[2][32][32];  // [seq parity][warp][lane]
};

extern thread_local Block* g_block;
extern thread_local Fiber* g_fiber;

// Switches from the running fiber back to its block's scheduler.
void yield();

inline void syncthreads() {
    g_fiber->st = AT_BLOCK;
    yield();
}

// This lane's slot for its next collective, and the warp's row of slots.
inline Lane* slot(Lane** warp_row) {
    Fiber* f = g_fiber;
    if ((f->warp + 1) * 32 > g_block->nthreads) fail("warp collective in a partial warp");
    *warp_row = g_block->xch[f->seq++ & 1][f->warp];
    return &(*warp_row)[f->lane];
}

inline void warp_meet() {
    g_fiber->st = AT_WARP;
    yield();
}

template <class T>
T shfl_from(unsigned mask, T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    if (mask != 0xffffffffu) fail("shuffle with a partial lane mask");
    Lane* row;
    Lane* me = slot(&row);
    std::memcpy(me->w, &v, sizeof(T));
    warp_meet();
    T r;
    std::memcpy(&r, row[src & 31].w, sizeof(T));
    return r;
}

// __match_any_sync: the lanes whose `v` equals this lane's.
inline unsigned match_any(unsigned mask, unsigned v) {
    if (mask != 0xffffffffu) fail("match with a partial lane mask");
    Lane* row;
    Lane* me = slot(&row);
    me->w[0] = v;
    warp_meet();
    unsigned m = 0;
    for (int l = 0; l < 32; l++)
        if (row[l].w[0] == v) m |= 1u << l;
    return m;
}

inline uint32_t bits_of(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

inline float float_of(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// E4M3 (OCP "fn": no infinities, 0x7f/0xff NaN) code -> value, computed.
inline float e4m3_decode(uint8_t c) {
    const int e = (c >> 3) & 15, m = c & 7;
    float v;
    if (e == 15 && m == 7) v = NAN;
    else if (e == 0) v = std::ldexp((float)m, -9);
    else v = std::ldexp(1.0f + m / 8.0f, e - 7);
    return (c & 0x80) ? -v : v;
}

struct E4m3Table {
    float v[256];
    E4m3Table() {
        for (int c = 0; c < 256; c++) v[c] = e4m3_decode((uint8_t)c);
    }
};

// The same, by table (the emulated mma decodes 8192 codes per call).
inline float e4m3_value(uint8_t c) {
    static const E4m3Table t;
    return t.v[c];
}

// f32 -> E4M3 as `cvt.rn.satfinite`: round to nearest even, +-448 for anything beyond
// (infinities included), NaN -> 0x7f, sign of zero kept.
inline uint8_t e4m3_code(float x) {
    if (x != x) return 0x7f;
    const uint8_t sign = std::signbit(x) ? 0x80 : 0;
    const float a = std::fabs(x);
    if (a >= 464.0f) return sign | 0x7e;
    if (a < 0.015625f) return sign | (uint8_t)std::nearbyint(a * 512.0f);  // subnormal steps
    int e;
    std::frexp(a, &e);
    int E = e - 1;  // a = 1.m * 2^E, -6 <= E <= 8
    int r = (int)std::nearbyint(std::ldexp(a, 3 - E));  // 8..16
    if (r == 16) {
        E += 1;
        r = 8;
    }
    return sign | (uint8_t)(((E + 7) << 3) | (r - 8));
}

// f32 -> bf16 as `cvt.rn.bf16.f32`: round to nearest even, NaN -> 0x7fff.
inline uint16_t bf16_code(float f) {
    const uint32_t b = bits_of(f);
    if (f != f) return 0x7fff;
    return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

inline uint8_t byte_of(uint32_t w, int i) { return (uint8_t)(w >> (8 * i)); }
inline uint16_t half_of(uint32_t w, int i) { return (uint16_t)(w >> (16 * i)); }

// mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32, m16n8k32 ... s32.s8.s8.s32 (the same
// fragment layout) and m16n8k16 ... bf16: D = A.B + C for a 16xK A, Kx8 B held in fragments
// across the warp (PTX ISA, "Matrix Fragments for mma.m16n8k32" / "mma.m16n8k16"). `d` is
// this lane's C on entry and D on return; float sums are exact and rounded once, int sums
// exact.
// f16 bits -> value (subnormals, infinities and NaN included).
inline float f16_value(uint16_t h) {
    const int e = (h >> 10) & 31, m = h & 1023;
    float v;
    if (e == 31) v = m ? NAN : INFINITY;
    else if (e == 0) v = std::ldexp((float)m, -24);
    else v = std::ldexp((float)(1024 + m), e - 25);
    return (h & 0x8000) ? -v : v;
}

// An E4M3 code -> the f16 bits of its value, exactly (every E4M3 value is a normal f16 or
// zero), as `cvt.rn.f16x2.e4m3x2` gives it; NaN -> 0x7fff.
inline uint16_t e4m3_f16_bits(uint8_t c) {
    const float v = e4m3_value(c);
    const uint16_t sign = (c & 0x80) ? 0x8000 : 0;
    if (v != v) return 0x7fff;
    if (v == 0.0f) return sign;
    int e;
    const float f = std::frexp(std::fabs(v), &e);  // v = f * 2^e, f in [0.5, 1)
    return sign | (uint16_t)((e + 14) << 10) | (uint16_t)((f * 2.0f - 1.0f) * 1024.0f);
}

enum MmaKind { MMA_BF16, MMA_E4M3, MMA_S8, MMA_F16 };

template <int KIND, class T>
void mma(T* d, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
    Lane* row;
    Lane* me = slot(&row);
    const uint32_t in[6] = {a0, a1, a2, a3, b0, b1};
    std::memcpy(me->w, in, sizeof in);
    warp_meet();
    const int lane = g_fiber->lane, g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; i++) {
        const int r = g + 8 * (i >> 1), c = 2 * t + (i & 1);  // this lane's D element
        double s = 0.0;
        int64_t si = 0;
        const auto half_value = [](uint16_t h) {
            return KIND == MMA_F16 ? (double)f16_value(h) : (double)float_of((uint32_t)h << 16);
        };
        if (KIND == MMA_E4M3 || KIND == MMA_S8) {
            for (int k = 0; k < 32; k++) {
                // A[r][k]: lane (r%8)*4 + (k%16)/4, register (k<16 ? 0 : 2) + (r>=8), byte k%4
                const int al = (r & 7) * 4 + ((k & 15) >> 2), ar = (k < 16 ? 0 : 2) + (r >> 3);
                // B[k][c]: lane c*4 + (k%16)/4, register 4 + (k>=16), byte k%4
                const int bl = c * 4 + ((k & 15) >> 2), br = 4 + (k >> 4);
                const uint8_t x = byte_of(row[al].w[ar], k & 3), y = byte_of(row[bl].w[br], k & 3);
                if (KIND == MMA_S8) si += (int64_t)(int8_t)x * (int64_t)(int8_t)y;
                else s += (double)e4m3_value(x) * (double)e4m3_value(y);
            }
        } else {
            for (int k = 0; k < 16; k++) {
                // A[r][k]: lane (r%8)*4 + (k%8)/2, register (k<8 ? 0 : 2) + (r>=8), half k%2
                const int al = (r & 7) * 4 + ((k & 7) >> 1), ar = (k < 8 ? 0 : 2) + (r >> 3);
                // B[k][c]: lane c*4 + (k%8)/2, register 4 + (k>=8), half k%2
                const int bl = c * 4 + ((k & 7) >> 1), br = 4 + (k >> 3);
                s += half_value(half_of(row[al].w[ar], k & 1)) *
                     half_value(half_of(row[bl].w[br], k & 1));
            }
        }
        if constexpr (KIND == MMA_S8) d[i] = (T)((int64_t)d[i] + si);
        else d[i] = (T)((double)d[i] + s);
    }
}

void* dyn_smem();

}  // namespace emu

// ---- the CUDA C++ surface the kernels use ----
#define __global__
#define __device__ static
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define threadIdx (emu::g_fiber->tid)
#define blockIdx (emu::g_block->bid)
#define blockDim (emu::g_block->bdim)
#define gridDim (emu::g_block->gdim)
#define DYNAMIC_SMEM(T, name) T* name = (T*)emu::dyn_smem()

struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned x, y;
};
struct alignas(8) float2 {
    float x, y;
};
static inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
static inline float2 make_float2(float x, float y) { return {x, y}; }
static inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
static inline uint4 __ldg(const uint4* p) { return *p; }
static inline float __uint_as_float(unsigned u) { return emu::float_of(u); }
static inline float __int_as_float(int i) { return emu::float_of((unsigned)i); }
static inline unsigned __float_as_uint(float f) { return emu::bits_of(f); }
// Atomic, as worker threads may run blocks of one grid at once.
static inline unsigned atomicAdd(unsigned* p, unsigned v) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
// Built with -ffp-contract=off: these two never fuse, as on the GPU.
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline float cospif(float x) { return (float)std::cos(M_PI * (double)x); }
static inline void __syncthreads() { emu::syncthreads(); }
template <class T>
static inline T __shfl_xor_sync(unsigned mask, T v, int o) {
    return emu::shfl_from(mask, v, (int)(emu::g_fiber->lane ^ o));
}
template <class T>
static inline T __shfl_sync(unsigned mask, T v, int src) {
    return emu::shfl_from(mask, v, src);
}
static inline unsigned __match_any_sync(unsigned mask, unsigned v) { return emu::match_any(mask, v); }
static inline int __popc(unsigned v) { return __builtin_popcount(v); }

// The PTX helpers of common.cuh and gemv.cu (which compile them only without QFORGE_EMU).
static inline unsigned short f32_to_bf16(float f) { return emu::bf16_code(f); }
static inline unsigned f32x2_to_bf16x2(float lo, float hi) {
    return (unsigned)emu::bf16_code(lo) | ((unsigned)emu::bf16_code(hi) << 16);
}
// Rounded once: a*b + c is exact in a double, and here (the kernels' uses) also in a float.
static inline unsigned bf16x2_fma(unsigned a, unsigned b, unsigned c) {
    unsigned r = 0;
    for (int h = 0; h < 2; h++) {
        const auto half = [&](unsigned v) { return (double)emu::float_of((v >> (16 * h)) << 16); };
        r |= (unsigned)emu::bf16_code((float)(half(a) * half(b) + half(c))) << (16 * h);
    }
    return r;
}
static inline unsigned short f32x2_to_e4m3x2(float lo, float hi) {
    return (unsigned short)(emu::e4m3_code(lo) | (emu::e4m3_code(hi) << 8));
}
static inline float2 e4m3x2_to_f32x2(unsigned short v) {
    return make_float2(emu::e4m3_value((uint8_t)(v & 0xff)), emu::e4m3_value((uint8_t)(v >> 8)));
}
static inline unsigned f32_to_s8(float x) {
    if (x != x) return 0u;
    const float r = std::nearbyint(x);  // the default rounding mode: to nearest even
    return (unsigned)(int)(r < -128.0f ? -128.0f : r > 127.0f ? 127.0f : r);
}
static inline uint4 ld_stream(const unsigned char* p) { return *(const uint4*)p; }
// A hint on the GPU; here its rules are checked and its first and last bytes read, so that
// a range past the allocation stops at the guard page as a load would.
static inline void prefetch_l2(const unsigned char* p, int bytes) {
    if (bytes <= 0 || bytes % 16 != 0 || (uintptr_t)p % 16 != 0)
        emu::fail("prefetch_l2: bytes and address must be positive multiples of 16");
    volatile unsigned char first = p[0], last = p[bytes - 1];
    (void)first;
    (void)last;
}
// Launches run one after the other here; the emulator only checks that every thread waits
// (emu.cpp fails a kernel that returns without it) and launches its successor after that.
static inline void grid_dep_wait() { emu::g_fiber->dep_waited = true; }
static inline void grid_dep_launch() {
    if (!emu::g_fiber->dep_waited) emu::fail("grid_dep_launch() before grid_dep_wait()");
}
// As on the GPU: the wait is skipped if `never` < 0 (then the kernel fails here).
static inline void grid_dep_wait_after(unsigned dep, int never) {
    if ((dep & ((unsigned)never >> 31)) == 0) grid_dep_wait();
}
static inline void mma_e4m3(float* d, unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                            unsigned b0, unsigned b1) {
    emu::mma<emu::MMA_E4M3>(d, a0, a1, a2, a3, b0, b1);
}
static inline void mma_bf16(float* d, unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                            unsigned b0, unsigned b1) {
    emu::mma<emu::MMA_BF16>(d, a0, a1, a2, a3, b0, b1);
}
static inline void mma_f16(float* d, unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                           unsigned b0, unsigned b1) {
    emu::mma<emu::MMA_F16>(d, a0, a1, a2, a3, b0, b1);
}
static inline unsigned e4m3x2_to_f16x2(unsigned short v) {
    return (unsigned)emu::e4m3_f16_bits((uint8_t)(v & 0xff)) |
           ((unsigned)emu::e4m3_f16_bits((uint8_t)(v >> 8)) << 16);
}
// Byte i of the result is byte (s >> 4i) & 7 of the eight bytes of {y, x} (x the low word).
static inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const uint64_t b = (uint64_t)x | ((uint64_t)y << 32);
    unsigned r = 0;
    for (int i = 0; i < 4; i++) r |= (unsigned)((b >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}
static inline void mma_s8(int* d, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0,
                          unsigned b1) {
    emu::mma<emu::MMA_S8>(d, a0, a1, a2, a3, b0, b1);
}
