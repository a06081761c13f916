#include "cuda_info.h"

#include "errors.h"

#if defined(SELFEXT_WITH_CUDA)
#include <cuda_runtime.h>

#include "cuda_check.cuh"
#endif

#ifndef SELFEXT_CUDA_ARCHS
#define SELFEXT_CUDA_ARCHS ""
#endif

namespace selfext {

CudaInfo cuda_info() {
  CudaInfo info;
#if !defined(SELFEXT_WITH_CUDA)
  info.reason = "this build has no CUDA backend (built with SELFEXT_CUDA=OFF, or AUTO found no CUDA compiler or GPU)";
#else
  info.compiled = true;
  info.architectures = SELFEXT_CUDA_ARCHS;
  cudaRuntimeGetVersion(&info.runtime_version);
  // The runtime is linked statically: without a driver these calls fail cleanly instead of the import.
  cudaError_t err = cudaDriverGetVersion(&info.driver_version);
  if (err != cudaSuccess || info.driver_version == 0) {
    info.reason = "no NVIDIA driver found (the CUDA runtime reported: " +
                  std::string(err != cudaSuccess ? cudaGetErrorString(err) : "driver version 0") + ")";
    return info;
  }
  if (info.driver_version < info.runtime_version) {
    info.reason = "the NVIDIA driver supports CUDA " + std::to_string(info.driver_version / 1000) + "." +
                  std::to_string(info.driver_version % 1000 / 10) + " but this build needs " +
                  std::to_string(info.runtime_version / 1000) + "." +
                  std::to_string(info.runtime_version % 1000 / 10) + ": update the driver";
    return info;
  }
  int count = 0;
  err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    info.reason = err != cudaSuccess ? std::string("cudaGetDeviceCount failed: ") + cudaGetErrorString(err)
                                     : std::string("no CUDA device is visible");
    cudaGetLastError();
    return info;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    CudaDevice d;
    d.index = i;
    d.name = prop.name;
    d.major = prop.major;
    d.minor = prop.minor;
    d.total_memory = int64_t(prop.totalGlobalMem);
    d.multiprocessors = prop.multiProcessorCount;
    int prev = 0;
    cudaGetDevice(&prev);
    if (cudaSetDevice(i) == cudaSuccess) {
      size_t free_b = 0, total_b = 0;
      if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) d.free_memory = int64_t(free_b);
      cudaSetDevice(prev);
    }
    cudaGetLastError();
    info.devices.push_back(d);
  }
  info.available = !info.devices.empty();
  if (!info.available) info.reason = "no CUDA device could be queried";
#endif
  return info;
}

void require_cuda() {
  static const CudaInfo info = cuda_info();
  SELFEXT_CHECK(info.available, BackendError, "CUDA is not available: ", info.reason);
}

void cuda_alloc_probe(int device, int64_t bytes) {
  require_cuda();
  SELFEXT_CHECK(bytes > 0, ArgumentError, "bytes must be > 0, got ", bytes);
#if defined(SELFEXT_WITH_CUDA)
  int count = 0;
  SELFEXT_CUDA_CHECK(cudaGetDeviceCount(&count));
  SELFEXT_CHECK(device >= 0 && device < count, ArgumentError, "device must be in [0, ", count, "), got ", device);
  int prev = 0;
  SELFEXT_CUDA_CHECK(cudaGetDevice(&prev));
  SELFEXT_CUDA_CHECK(cudaSetDevice(device));
  void* p = nullptr;
  try {
    SELFEXT_CUDA_CHECK(cudaMalloc(&p, size_t(bytes)));
  } catch (...) {
    cudaSetDevice(prev);
    throw;
  }
  cudaFree(p);
  SELFEXT_CUDA_CHECK(cudaSetDevice(prev));
#else
  (void)device;
#endif
}

}  // namespace selfext
