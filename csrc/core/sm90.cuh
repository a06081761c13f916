// PTX wrappers for compute capability 9.0: thread-block clusters (barrier, distributed shared memory) and
// bulk copies into shared memory completed on an mbarrier. Every function here compiles to nothing (or
// is absent) below sm_90; callers guard their use with __CUDA_ARCH__ >= 900.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace selfext {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ uint32_t sm90_smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// Every thread of the cluster arrives (its shared-memory writes released) and waits (the others' acquired).
__device__ __forceinline__ void cluster_barrier() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
__device__ __forceinline__ int cluster_rank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return int(r);
}
// The address of p (this block's shared memory) in the shared memory of the cluster's block `rank`.
__device__ __forceinline__ uint32_t cluster_map(const void* p, int rank) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(sm90_smem_addr(p)), "r"(rank));
  return remote;
}
// The float at p in the shared memory of the cluster's block `rank`.
__device__ __forceinline__ float ld_cluster_f32(const float* p, int rank) {
  float x;
  asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(x) : "r"(cluster_map(p, rank)) : "memory");
  return x;
}
// v into p of every block of the cluster (this one included); visible to them after the next cluster_barrier.
template <int kClusterBlocks>
__device__ __forceinline__ void st_cluster_all_f32(float* p, float v) {
#pragma unroll
  for (int r = 0; r < kClusterBlocks; ++r)
    asm volatile("st.shared::cluster.f32 [%0], %1;" ::"r"(cluster_map(p, r)), "f"(v) : "memory");
}

// v into p of the cluster's blocks r0 .. r0 + kN - 1.
template <int kN>
__device__ __forceinline__ void st_cluster_range_f32(float* p, float v, int r0) {
#pragma unroll
  for (int r = 0; r < kN; ++r)
    asm volatile("st.shared::cluster.f32 [%0], %1;" ::"r"(cluster_map(p, r0 + r)), "f"(v) : "memory");
}

// mbarriers for bulk copies: initialized with one arrival per phase; the arrival also sets the bytes the
// phase waits for (the copies' complete_tx).
__device__ __forceinline__ void mbar_init(uint64_t* bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(sm90_smem_addr(bar)) : "memory");
}
// After the inits, before any copy or wait uses them (the async proxy and the other threads see them).
__device__ __forceinline__ void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\nfence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_arrive_expect(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(sm90_smem_addr(bar)), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred p;\nLAB_WAIT:\nmbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n@!p bra LAB_WAIT;\n}\n" ::"r"(
          sm90_smem_addr(bar)),
      "r"(parity)
      : "memory");
}
// bytes (a multiple of 16; both addresses 16-byte aligned) from global src into this block's dst, counted on bar.
__device__ __forceinline__ void bulk_copy_g2s(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   sm90_smem_addr(dst)),
               "l"(src), "r"(bytes), "r"(sm90_smem_addr(bar))
               : "memory");
}
#endif

}  // namespace selfext
