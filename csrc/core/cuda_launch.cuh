// Kernel launches with programmatic dependent launch (PDL, compute capability 9.0 and later).
//
// A decode step is a chain of ~150-300 small kernels, each waiting for the one before. Launched plainly,
// every boundary costs the full drain of one grid and the launch of the next (a few microseconds, most of
// a small kernel's time). With PDL the next kernel is launched while the current one still runs, its
// blocks become resident and wait in `griddepcontrol.wait` until the current grid has completed and its
// memory is visible, so only the wait's release remains on the critical path.
//
// The contract every kernel launched through launch_kernel keeps (kernel_prologue() as its first
// statement does it):
//   - pdl_wait() before its first global-memory access that may depend on an earlier kernel (reads of
//     earlier results and every write: a write before the wait could race with the earlier grid's reads);
//     it must run in every block, including blocks that then find nothing to do, or the grid could
//     complete before its predecessor and release the kernel after it too early;
//   - pdl_launch_dependents() after that wait, so at most one grid waits behind the running one.
// On devices before 9.0, or with SELFEXT_CUDA_PDL=0 in the environment, launches are plain (both
// instructions are no-ops for a grid not launched with the attribute). Works in stream capture: the
// graph keeps the programmatic edges.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

#include "core/cuda_check.cuh"

namespace selfext {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
// The first statement of every kernel launched through launch_kernel.
__device__ __forceinline__ void kernel_prologue() {
  pdl_wait();
  pdl_launch_dependents();
}

// A hint to bring the bytes [p, p + bytes) into L2, for a kernel's inputs that are (all or mostly) not
// written by the kernels just before it (weights; the cached keys and values), issued before pdl_wait:
// with PDL the kernel's blocks are resident while the previous kernel still runs, so the lines are on
// their way from DRAM before the wait is released and the first loads after it hit L2. Nothing waits for
// it and nothing is fetched into L1, so it cannot change what the kernel reads: L2 is where every SM's
// writes land (a line fetched early is updated there). sm_90 bulk prefetches of whole 16-byte granules of
// the range (the instruction's alignment rule: a partial granule at either end is left out), one per
// 64 KiB; a no-op on older devices.
__device__ __forceinline__ void prefetch_l2(const void* p, int64_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  uint64_t a = (reinterpret_cast<uint64_t>(p) + 15) & ~uint64_t(15);
  const uint64_t e = (reinterpret_cast<uint64_t>(p) + uint64_t(bytes > 0 ? bytes : 0)) & ~uint64_t(15);
  constexpr uint64_t kChunk = 64 * 1024;
  for (; a < e; a += kChunk) {
    const uint32_t n = uint32_t(e - a < kChunk ? e - a : kChunk);
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(a), "r"(n) : "memory");
  }
#endif
}

// Whether kernels issue their prefetch_l2 hints (SELFEXT_CUDA_PREFETCH=0 turns them off; read once).
bool l2_prefetch_enabled();

// Whether launches on the current device use PDL (cached per device; SELFEXT_CUDA_PDL=0 turns it off).
bool pdl_enabled_on_current_device();
// The current device's compute capability as 10 * major + minor (90 for an H100), cached per device; 0 for
// a device index past the cache.
int current_device_compute_capability();

// A launch with the PDL attribute (where enabled) and, when cluster is not (1, 1, 1), thread-block clusters of
// that shape (compute capability >= 9.0; the caller checks the cluster can be scheduled).
template <typename... KArgs, typename... Args>
void launch_kernel_clustered(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                             dim3 cluster, Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  int n = 0;
  if (pdl_enabled_on_current_device()) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  if (cluster.x * cluster.y * cluster.z > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = cluster.x;
    attr[n].val.clusterDim.y = cluster.y;
    attr[n].val.clusterDim.z = cluster.z;
    ++n;
  }
  cfg.attrs = n ? attr : nullptr;
  cfg.numAttrs = n;
  SELFEXT_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

template <typename... KArgs, typename... Args>
void launch_kernel(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                   Args&&... args) {
  launch_kernel_clustered(kernel, grid, block, smem, stream, dim3(1, 1, 1), std::forward<Args>(args)...);
}

}  // namespace selfext
