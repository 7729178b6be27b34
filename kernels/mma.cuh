// Tensor-core helpers of the GEMV and GEMM kernels: streaming 128-bit loads, mma.sync
// m16n8k32 for E4M3 and s8 (mma_bf16 is in common.cuh), and one 64-byte k-chunk of a
// 16-row weight tile against 8 activation rows, whatever the element type.
//
// The chunk trick: each thread loads 16 contiguous bytes per row (at tig*16 of the chunk) and
// uses them directly as its mma fragments. That permutes k identically in A (weights) and B
// (activations), which a dot product ignores, so no shuffles or shared memory are needed.
#pragma once
#include "common.cuh"

#ifndef QFORGE_EMU  // kernels/emu/emu.h emulates these two on the host (and mma_bf16)
__device__ __forceinline__ uint4 ld_stream(const u8* p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

__device__ __forceinline__ void mma_e4m3(float* d, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_s8(int* d, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// D = A.B + C on tensor cores with f16 fragments: the m16n8k16 layout of mma_bf16.
__device__ __forceinline__ void mma_f16(float* d, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Two E4M3 codes (low byte first) -> two f16 (low half first), exactly: one conversion
// instruction (F2FP), the one ptxas also emits for mma_e4m3 on Hopper.
__device__ __forceinline__ u32 e4m3x2_to_f16x2(u16 v) {
    u32 r;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(r) : "h"(v));
    return r;
}
#endif  // QFORGE_EMU

// Codes 2h and 2h+1 of the four E4M3 codes in `w` as two f16 (low half first) times 2^-8,
// in integer instructions: a code's 7 magnitude bits moved to bits 13..7 of an f16, with its
// sign at bit 15, are that f16's exponent (bias 15 for E4M3's 7: a factor 2^-8) and mantissa,
// subnormals included. Exact for every finite code; the NaN codes give 480 * 2^-8.
__device__ __forceinline__ u32 e4m3x2_to_f16x2_scaled(u32 w, int h) {
    const u32 t = __byte_perm(w, 0, h == 0 ? 0x1404 : 0x3424);  // the codes in bytes 1 and 3
    return ((t & 0x7f007f00u) >> 1) | (t & 0x80008000u);
}

// The weight (and activation) kinds, and their accumulators.
enum { W_BF16, W_FP8, W_S8 };
template <int W>
struct Acc {
    typedef float T;
};
template <>
struct Acc<W_S8> {
    typedef int T;
};

// CV > 0 (gemv.cu's GEMV_CVT builds): E4M3 k32 products as two f16 m16n8k16 instead of
// mma_e4m3, which Hopper's tensor cores lack (ptxas converts each of its fragments to f16
// with F2FP and issues two f16 mma). CV 1 converts the activations with integer
// instructions, the weights with F2FP; CV 2 also weight rows g+8: fewer F2FP (their unit's
// rate, not HBM, may bound an FP8 GEMV), more integer work. Each word's codes 0-1 and 2-3
// become the f16 words of k 2tig.. and 8+2tig.., in A and B alike (the chunk trick again).
// Integer-converted values carry a factor 2^-8, and so do the sums: chunk_scale undoes it,
// exactly (a power of two).
template <int CV>
__device__ __forceinline__ u32 weight_f16x2(u32 w, int h) {
    return CV == 2 ? e4m3x2_to_f16x2_scaled(w, h) : e4m3x2_to_f16x2((u16)(w >> (16 * h)));
}

template <int CV>
__device__ __forceinline__ void mma_e4m3_via_f16(float* d, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0,
                                                 u32 b1) {
    mma_f16(d, weight_f16x2<1>(a0, 0), weight_f16x2<CV>(a1, 0), weight_f16x2<1>(a0, 1),
            weight_f16x2<CV>(a1, 1), e4m3x2_to_f16x2_scaled(b0, 0), e4m3x2_to_f16x2_scaled(b0, 1));
    mma_f16(d, weight_f16x2<1>(a2, 0), weight_f16x2<CV>(a3, 0), weight_f16x2<1>(a2, 1),
            weight_f16x2<CV>(a3, 1), e4m3x2_to_f16x2_scaled(b1, 0), e4m3x2_to_f16x2_scaled(b1, 1));
}

// Accumulator element i of a chunk's sums (rows g for i < 2, g+8 above) in true units.
template <int W, int CV, class T>
__device__ __forceinline__ T chunk_scale(T v, int i) {
    if constexpr (W == W_FP8 && CV != 0) return v * (i >= 2 && CV == 2 ? 65536.0f : 256.0f);
    return v;
}

// One 64-byte k-chunk: rows g (wa) and g+8 (wb) against one activation column (xv).
// (CV: see mma_e4m3_via_f16; its sums then need chunk_scale.)
template <int W, int CV = 0>
__device__ __forceinline__ void mma_chunk(typename Acc<W>::T* c, uint4 wa, uint4 wb, uint4 xv) {
    if constexpr (W == W_FP8 && CV != 0) {
        mma_e4m3_via_f16<CV>(c, wa.x, wb.x, wa.y, wb.y, xv.x, xv.y);
        mma_e4m3_via_f16<CV>(c, wa.z, wb.z, wa.w, wb.w, xv.z, xv.w);
    } else if constexpr (W == W_FP8) {
        mma_e4m3(c, wa.x, wb.x, wa.y, wb.y, xv.x, xv.y);
        mma_e4m3(c, wa.z, wb.z, wa.w, wb.w, xv.z, xv.w);
    } else if constexpr (W == W_S8) {
        mma_s8(c, wa.x, wb.x, wa.y, wb.y, xv.x, xv.y);
        mma_s8(c, wa.z, wb.z, wa.w, wb.w, xv.z, xv.w);
    } else {
        mma_bf16(c, wa.x, wb.x, wa.y, wb.y, xv.x, xv.y);
        mma_bf16(c, wa.z, wb.z, wa.w, wb.w, xv.z, xv.w);
    }
}

