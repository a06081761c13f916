#include "core/cuda_check.cuh"
#include "core/cuda_launch.cuh"
#include "core/half.h"
#include "model/rms_norm.h"

namespace selfext {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void rms_norm_kernel(const T* __restrict__ x, const float* __restrict__ w, T* __restrict__ y,
                                int64_t n, int64_t x_stride, int64_t y_stride, float eps) {
  kernel_prologue();
  const int64_t row = blockIdx.x;
  const T* xr = x + row * x_stride;
  T* yr = y + row * y_stride;
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) {
    const float v = to_float(xr[i]);
    ss += v * v;
  }
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  __shared__ float partial[kThreads / 32];
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x / 32] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    ss = threadIdx.x < kThreads / 32 ? partial[threadIdx.x] : 0.f;
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (threadIdx.x == 0) partial[0] = ss;
  }
  __syncthreads();
  const float inv = rsqrtf(partial[0] / float(n) + eps);
  for (int64_t i = threadIdx.x; i < n; i += kThreads) yr[i] = from_float<T>(to_float(xr[i]) * inv * w[i]);
}

}  // namespace

template <typename T>
void rms_norm_cuda(const RmsNormParams& p) {
  if (p.rows == 0) return;
  SELFEXT_CHECK(p.rows <= 0x7fffffff, ArgumentError, "rms_norm: too many rows (", p.rows, ")");
  launch_kernel(rms_norm_kernel<T>, dim3(unsigned(p.rows)), dim3(kThreads), 0, static_cast<cudaStream_t>(p.stream),
                static_cast<const T*>(p.x), p.w, static_cast<T*>(p.y), p.n, p.x_stride, p.y_stride, p.eps);
}

template void rms_norm_cuda<float>(const RmsNormParams&);
template void rms_norm_cuda<f16>(const RmsNormParams&);
template void rms_norm_cuda<bf16>(const RmsNormParams&);

}  // namespace selfext
