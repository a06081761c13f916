// Hopper warpgroup MMA (wgmma.mma_async, sm_90a only) for the attention kernels: shared-memory matrix
// descriptors for the 128-byte-swizzled K-major layout, the fences and the multiplies they use.
//
// Layout ("K-major, 128B swizzle"): a tile of R rows whose K extent is a multiple of 64 16-bit elements is
// stored as K/64 column blocks ("atoms") of R rows x 128 bytes each, the atoms 1024-byte aligned; in row
// r the 16-byte chunk c (8 elements) sits at chunk position c ^ (r % 8). The hardware applies the same
// XOR to address bits 4-6 from bits 7-9, so a descriptor whose start moves by 32 bytes (16 elements)
// inside an atom still addresses the right elements: that is how the k-steps of one atom are taken.
// Descriptor fields (PTX ISA, "Matrix Descriptor Format"): start address >> 4 in bits 0-13, leading
// byte offset >> 4 in 16-29 (unused for swizzled K-major operands whose k-step stays in one atom: 1),
// stride byte offset >> 4 in 32-45 (1024: from one 8-row group to the next), swizzle mode in 62-63
// (1 = 128B).
//
// Register fragments: the m64nN accumulator of a warpgroup is, per warp (rows 16 w .. 16 w + 15), the
// m16n8 accumulator layout of mma.sync repeated N / 8 times: d[j][0..1] at row lane / 4, columns
// 8 j + 2 (lane % 4) + {0, 1}, d[j][2..3] eight rows lower. The A operand from registers (m64k16) is the
// m16n8k16 A fragment per warp. So the online softmax and the P fragments of attention_tiles.cuh apply
// unchanged. scripts/wgmma_probe.cu checks all of this against a host product on the device.
#pragma once
#include <cstdint>

#include "core/half.h"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SELFEXT_WGMMA_AVAILABLE 1
#else
#define SELFEXT_WGMMA_AVAILABLE 0
#endif

namespace selfext {
namespace attn_cuda {

// Byte offset of 16-byte chunk c (elements 8 c .. 8 c + 7 of the K extent) of row r in a K-major,
// 128B-swizzled tile of kRows rows.
template <int kRows>
__device__ __forceinline__ uint32_t sw128_offset(int r, int c) {
  return uint32_t((c >> 3) * kRows * 128 + r * 128 + (((c & 7) ^ (r & 7)) << 4));
}

__device__ __forceinline__ uint64_t sw128_desc(uint32_t smem_addr) {
  return uint64_t((smem_addr & 0x3FFFF) >> 4) | (uint64_t(1) << 16) | (uint64_t(1024 >> 4) << 32) |
         (uint64_t(1) << 62);
}

__device__ __forceinline__ void wgmma_fence() {
#if SELFEXT_WGMMA_AVAILABLE
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#if SELFEXT_WGMMA_AVAILABLE
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
#if SELFEXT_WGMMA_AVAILABLE
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Generic-proxy writes to shared memory (st.shared, cp.async) made visible to the async proxy that
// wgmma reads through; then a barrier.
__device__ __forceinline__ void fence_proxy_async() {
#if SELFEXT_WGMMA_AVAILABLE
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// The compiler does not know that wgmma.wait_group is what completes the accumulators: after the wait,
// every accumulator register is "redefined" here so no read of it is scheduled before the wait.
template <int N>
__device__ __forceinline__ void acc_fence(float (&d)[N][4]) {
#pragma unroll
  for (int j = 0; j < N; ++j)
#pragma unroll
    for (int c = 0; c < 4; ++c) asm volatile("" : "+f"(d[j][c])::"memory");
}

// d (64 x N, this warpgroup) = A B (+ d when scale_d): A 64 x 16 and B 16 x N, K-major in shared
// memory (_ss), or A from registers (_rs). Only sm_90a has them; elsewhere they are never called
// (se_wgmma_supported) and compile to nothing.
template <typename T>
__device__ void wgmma_m64n64k16_ss(float (&d)[8][4], uint64_t desc_a, uint64_t desc_b, int scale_d);
template <typename T>
__device__ void wgmma_m64n64k16_rs(float (&d)[8][4], const uint32_t (&a)[4], uint64_t desc_b, int scale_d);
template <typename T>
__device__ void wgmma_m64n128k16_ss(float (&d)[16][4], uint64_t desc_a, uint64_t desc_b, int scale_d);
template <typename T>
__device__ void wgmma_m64n128k16_rs(float (&d)[16][4], const uint32_t (&a)[4], uint64_t desc_b, int scale_d);

#if SELFEXT_WGMMA_AVAILABLE
// Operand lists: the accumulator registers (d[j][0..3] for the N / 8 column blocks), then the rest.
#define SELFEXT_ACC4(d, j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
#define SELFEXT_ACC_64(d)                                                                              \
  SELFEXT_ACC4(d, 0), SELFEXT_ACC4(d, 1), SELFEXT_ACC4(d, 2), SELFEXT_ACC4(d, 3), SELFEXT_ACC4(d, 4), \
      SELFEXT_ACC4(d, 5), SELFEXT_ACC4(d, 6), SELFEXT_ACC4(d, 7)
#define SELFEXT_ACC_128(d)                                                                              \
  SELFEXT_ACC_64(d), SELFEXT_ACC4(d, 8), SELFEXT_ACC4(d, 9), SELFEXT_ACC4(d, 10), SELFEXT_ACC4(d, 11), \
      SELFEXT_ACC4(d, 12), SELFEXT_ACC4(d, 13), SELFEXT_ACC4(d, 14), SELFEXT_ACC4(d, 15)
#define SELFEXT_REGS_64 \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define SELFEXT_REGS_128 \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
// After the N / 2 accumulators: _ss takes desc_a, desc_b, scale_d (operands A, B, P); _rs takes a[0..3],
// desc_b, scale_d.
#define SELFEXT_WGMMA_SS(N, TY, T, A, B, P)                                                                  \
  template <>                                                                                               \
  __device__ __forceinline__ void wgmma_m64n##N##k16_ss<T>(float(&d)[N / 8][4], uint64_t desc_a,           \
                                                          uint64_t desc_b, int scale_d) {                  \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " P ", 0;\nwgmma.mma_async.sync.aligned.m64n" #N          \
                 "k16.f32." TY "." TY " {" SELFEXT_REGS_##N "}, " A ", " B ", p, 1, 1, 0, 0;\n}\n"            \
                 : SELFEXT_ACC_##N(d)                                                                       \
                 : "l"(desc_a), "l"(desc_b), "r"(scale_d));                                                \
  }
#define SELFEXT_WGMMA_RS(N, TY, T, A, B, P)                                                                  \
  template <>                                                                                               \
  __device__ __forceinline__ void wgmma_m64n##N##k16_rs<T>(float(&d)[N / 8][4], const uint32_t(&a)[4],    \
                                                          uint64_t desc_b, int scale_d) {                  \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " P ", 0;\nwgmma.mma_async.sync.aligned.m64n" #N          \
                 "k16.f32." TY "." TY " {" SELFEXT_REGS_##N "}, " A ", " B ", p, 1, 1, 0;\n}\n"               \
                 : SELFEXT_ACC_##N(d)                                                                       \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));                 \
  }
SELFEXT_WGMMA_SS(64, "f16", f16, "%32", "%33", "%34")
SELFEXT_WGMMA_SS(64, "bf16", bf16, "%32", "%33", "%34")
SELFEXT_WGMMA_SS(128, "f16", f16, "%64", "%65", "%66")
SELFEXT_WGMMA_SS(128, "bf16", bf16, "%64", "%65", "%66")
SELFEXT_WGMMA_RS(64, "f16", f16, "{%32, %33, %34, %35}", "%36", "%37")
SELFEXT_WGMMA_RS(64, "bf16", bf16, "{%32, %33, %34, %35}", "%36", "%37")
SELFEXT_WGMMA_RS(128, "f16", f16, "{%64, %65, %66, %67}", "%68", "%69")
SELFEXT_WGMMA_RS(128, "bf16", bf16, "{%64, %65, %66, %67}", "%68", "%69")
#undef SELFEXT_WGMMA_RS
#undef SELFEXT_WGMMA_SS
#undef SELFEXT_REGS_128
#undef SELFEXT_REGS_64
#undef SELFEXT_ACC_128
#undef SELFEXT_ACC_64
#undef SELFEXT_ACC4
#else
template <>
__device__ __forceinline__ void wgmma_m64n64k16_ss<f16>(float (&)[8][4], uint64_t, uint64_t, int) {}
template <>
__device__ __forceinline__ void wgmma_m64n64k16_ss<bf16>(float (&)[8][4], uint64_t, uint64_t, int) {}
template <>
__device__ __forceinline__ void wgmma_m64n64k16_rs<f16>(float (&)[8][4], const uint32_t (&)[4], uint64_t, int) {}
template <>
__device__ __forceinline__ void wgmma_m64n64k16_rs<bf16>(float (&)[8][4], const uint32_t (&)[4], uint64_t, int) {}
template <>
__device__ __forceinline__ void wgmma_m64n128k16_ss<f16>(float (&)[16][4], uint64_t, uint64_t, int) {}
template <>
__device__ __forceinline__ void wgmma_m64n128k16_ss<bf16>(float (&)[16][4], uint64_t, uint64_t, int) {}
template <>
__device__ __forceinline__ void wgmma_m64n128k16_rs<f16>(float (&)[16][4], const uint32_t (&)[4], uint64_t, int) {}
template <>
__device__ __forceinline__ void wgmma_m64n128k16_rs<bf16>(float (&)[16][4], const uint32_t (&)[4], uint64_t, int) {}
#endif

// The same by the N the caller's accumulator has (64 or 128).
template <typename T, int N>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 8][4], uint64_t desc_a, uint64_t desc_b, int scale_d) {
  static_assert(N == 64 || N == 128, "N = 64 or 128");
  if constexpr (N == 64) wgmma_m64n64k16_ss<T>(d, desc_a, desc_b, scale_d);
  else wgmma_m64n128k16_ss<T>(d, desc_a, desc_b, scale_d);
}
template <typename T, int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t desc_b, int scale_d) {
  static_assert(N == 64 || N == 128, "N = 64 or 128");
  if constexpr (N == 64) wgmma_m64n64k16_rs<T>(d, a, desc_b, scale_d);
  else wgmma_m64n128k16_rs<T>(d, a, desc_b, scale_d);
}

}  // namespace attn_cuda
}  // namespace selfext
