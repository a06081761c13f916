// Every CUDA call and launch is checked; failures throw (never exit) with expression, file and line.
#pragma once
#include <cuda_runtime.h>

#include "errors.h"

namespace selfext {
[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* expr, const char* file, int line) {
  // Clear the sticky-free error state so the process stays usable after e.g. an out-of-memory.
  cudaGetLastError();
  if (err == cudaErrorMemoryAllocation)
    throw OutOfMemoryError(detail::concat("CUDA out of memory in ", expr, " (", file, ":", line, ")"));
  throw BackendError(detail::concat("CUDA error ", cudaGetErrorName(err), " (", cudaGetErrorString(err),
                                    ") in ", expr, " at ", file, ":", line));
}
}  // namespace selfext

#define SELFEXT_CUDA_CHECK(expr)                                                     \
  do {                                                                               \
    cudaError_t selfext_err_ = (expr);                                               \
    if (selfext_err_ != cudaSuccess) ::selfext::throw_cuda_error(selfext_err_, #expr, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: launch-configuration errors surface here.
#define SELFEXT_CUDA_CHECK_LAUNCH() SELFEXT_CUDA_CHECK(cudaGetLastError())
