// RMSNorm (Zhang & Sennrich 2019), as llama and qwen2 use it: y = x / sqrt(mean(x^2) + eps) * w.
// The same contract for both backends: rows of length n, float32 weight, any float storage type.
#pragma once
#include <cstdint>

#include "core/thread_pool.h"

namespace selfext {

struct RmsNormParams {
  const void* x;     // (rows, n), row stride x_stride elements
  const float* w;    // (n,)
  void* y;           // (rows, n), row stride y_stride elements; may alias x
  int64_t rows, n, x_stride, y_stride;
  float eps;
  void* stream;      // CUDA only
};

// T is the storage type of x and y (float, f16, bf16).
template <typename T> void rms_norm_cpu(const RmsNormParams& p, ThreadPool& pool);
template <typename T> void rms_norm_cuda(const RmsNormParams& p);

}  // namespace selfext
