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
#endif  // QFORGE_EMU

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

// One 64-byte k-chunk: rows g (wa) and g+8 (wb) against one activation column (xv).
template <int W>
__device__ __forceinline__ void mma_chunk(typename Acc<W>::T* c, uint4 wa, uint4 wb, uint4 xv) {
    if constexpr (W == W_FP8) {
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

