// Shared helpers for qforge's kernels. Compiled by NVRTC at run time for the GPU's exact
// architecture (sm_89 / sm_90a); needs no CUDA header: BF16 and FP8 conversions are written
// as PTX `cvt` instructions (sm_89+), math comes from NVRTC's built-ins.
#pragma once

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

// Largest finite E4M3 value and vLLM's smallest per-token activation scale 1/(448*512).
#define FP8_MAX 448.0f
#define MIN_ACT_SCALE (1.0f / (448.0f * 512.0f))
#define NEG_INF (-__int_as_float(0x7f800000))

__device__ __forceinline__ float bf16_to_f32(u16 b) { return __uint_as_float(((u32)b) << 16); }

#ifndef QFORGE_EMU  // kernels/emu/emu.h defines these (and DYNAMIC_SMEM) for the host
// The kernel's dynamic shared memory.
#define DYNAMIC_SMEM(T, name) extern __shared__ T name[]

// f32 -> bf16, round to nearest even (NaN stays NaN).
__device__ __forceinline__ u16 f32_to_bf16(float f) {
    u16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
}

// Two f32 -> two bf16 in one word (`lo` in the low half), each rounded to nearest even: one
// instruction for what two f32_to_bf16 and a shift-or do.
__device__ __forceinline__ u32 f32x2_to_bf16x2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// a*b + c on BF16 pairs, rounded once to nearest even (sm_80+).
__device__ __forceinline__ u32 bf16x2_fma(u32 a, u32 b, u32 c) {
    u32 r;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}

// Two f32 -> two E4M3 codes (round to nearest even, saturating to +-448; NaN stays NaN).
// `lo` lands in the low byte (lower address), `hi` in the high byte.
__device__ __forceinline__ u16 f32x2_to_e4m3x2(float lo, float hi) {
    u16 r;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
    return r;
}

// Two E4M3 codes (low byte first) -> two f32, exactly (via f16, which holds every E4M3 value).
__device__ __forceinline__ float2 e4m3x2_to_f32x2(u16 v) {
    u32 h2;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h2) : "h"(v));
    u16 lo = (u16)(h2 & 0xffffu), hi = (u16)(h2 >> 16);
    float a, b;
    asm("cvt.f32.f16 %0, %1;" : "=f"(a) : "h"(lo));
    asm("cvt.f32.f16 %0, %1;" : "=f"(b) : "h"(hi));
    return make_float2(a, b);
}

// f32 -> int8, round to nearest even, saturating (NaN -> 0); the code in the low byte.
__device__ __forceinline__ u32 f32_to_s8(float x) {
    u32 r;
    asm("cvt.rni.sat.s8.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}

// D = A.B + C on tensor cores: A 16x16, B 16x8 BF16 fragments, f32 accumulators (PTX ISA,
// "Matrix Fragments for mma.m16n8k16"; lane = 4*group + thread-in-group).
__device__ __forceinline__ void mma_bf16(float* d, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Programmatic dependent launch (Hopper; see src/runtime/cuda/graph.rs). In a decode graph a
// kernel may start while its predecessor is still finishing: every kernel calls
// grid_dep_wait() before it reads anything an earlier kernel wrote or writes anything one
// reads (GEMVs first load weights, which no kernel writes), then grid_dep_launch() to let
// its successor start. Both are no-ops without a programmatic launch, and before sm_90.
__device__ __forceinline__ void grid_dep_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void grid_dep_launch() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
// grid_dep_wait() once `dep` has arrived. ptxas moves a plain wait above the loads written
// before it (the memory model allows it), so a GEMV's first weights would be fetched only
// after its predecessor ends. A wait predicated on the loaded value cannot be: the predicate
// (dep & (never >> 31)) == 0 is true whenever `never` >= 0, which the caller guarantees and
// ptxas cannot know.
__device__ __forceinline__ void grid_dep_wait_after(u32 dep, int never) {
#if __CUDA_ARCH__ >= 900
    asm volatile(
        "{\n\t.reg .pred p;\n\t.reg .b32 t;\n\tand.b32 t, %0, %1;\n\t"
        "setp.eq.u32 p, t, 0;\n\t@p griddepcontrol.wait;\n\t}"
        ::"r"(dep), "r"((u32)never >> 31) : "memory");
#endif
}
// Asks for `bytes` at `p` (both multiples of 16) to be brought into L2, without waiting and
// without registers: a bulk prefetch (Hopper's copy engine; nothing before sm_90).
__device__ __forceinline__ void prefetch_l2(const u8* p, int bytes) {
#if __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#endif
}
#endif  // QFORGE_EMU

// The start of every kernel but the GEMVs: wait for the predecessor, then let the successor
// launch.
__device__ __forceinline__ void grid_dep_start() {
    grid_dep_wait();
    grid_dep_launch();
}

// max that propagates NaN (as torch's amax does), so a NaN row gets a NaN scale.
__device__ __forceinline__ float nan_max(float a, float b) { return (a > b || a != a) ? a : b; }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide sum in double (fixed order: deterministic). `smem` holds 32 doubles.
__device__ __forceinline__ double block_sum_f64(double v, double* smem) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0) smem[w] = v;
    __syncthreads();
    double s = 0.0;
    for (int i = 0; i < nw; i++) s += smem[i];
    return s;
}

// Block-wide NaN-propagating max. `smem` holds 32 floats.
__device__ __forceinline__ float block_max(float v, float* smem) {
    v = warp_max(v);
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0) smem[w] = v;
    __syncthreads();
    float m = smem[0];
    for (int i = 1; i < nw; i++) m = nan_max(m, smem[i]);
    return m;
}

// vLLM's per-token dynamic scale from a row's absmax: max(amax / 448, 1/(448*512)).
// Written as a comparison so that a NaN amax gives a NaN scale.
__device__ __forceinline__ float act_scale(float amax) {
    float s = amax / FP8_MAX;
    return s < MIN_ACT_SCALE ? MIN_ACT_SCALE : s;
}

// Quantizes two values with scale `s`: e4m3(clamp(v / s, -448, 448)), divisions in IEEE f32.
__device__ __forceinline__ u16 quant2(float a, float b, float s) {
    return f32x2_to_e4m3x2(a / s, b / s);
}

// Two int8 codes sat_i8(rne(v * inv)) (NaN -> 0), `a` in the low byte: vLLM's
// float_to_int8_rn.
__device__ __forceinline__ u16 quant2_int8(float a, float b, float inv) {
    return (u16)((f32_to_s8(a * inv) & 0xffu) | ((f32_to_s8(b * inv) & 0xffu) << 8));
}

// Quantizes one row of `n` values `v(i)` (n even) for the next Linear, as vLLM does:
//   int8 == 0: FP8 codes, *s = act_scale(max|v|) (NaN propagates: a NaN row, a NaN scale);
//   int8 != 0: int8 codes sat_i8(rne(v * (127 / amax))), *s = amax / 127, amax = max|v| with
//              NaN skipped (fmaxf), as `dynamic_scaled_int8_quant_kernel`.
// Every thread of the block calls it; `redf` holds 32 floats.
template <class V>
__device__ __forceinline__ void quant_row(V v, int n, int int8, u8* q, float* s, float* redf) {
    float amax = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        amax = int8 ? fmaxf(amax, fabsf(v(i))) : nan_max(amax, fabsf(v(i)));
    amax = block_max(amax, redf);
    u16* qr = (u16*)q;
    if (int8) {
        if (threadIdx.x == 0) *s = amax / 127.0f;
        const float inv = 127.0f / amax;
        for (int i = threadIdx.x; i < n / 2; i += blockDim.x) qr[i] = quant2_int8(v(2 * i), v(2 * i + 1), inv);
        return;
    }
    const float sc = act_scale(amax);
    if (threadIdx.x == 0) *s = sc;
    for (int i = threadIdx.x; i < n / 2; i += blockDim.x) qr[i] = quant2(v(2 * i), v(2 * i + 1), sc);
}
