// Host-side pieces shared by selfext_cuda.cu and cope_cuda.cu: stream-ordered scratch memory, the
// split-K plan, and the merge launch.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "attention/attention_tiles.cuh"
#include "core/cuda_check.cuh"
#include "core/errors.h"

namespace selfext {
namespace attn_cuda {

// Device scratch on the caller's stream: cudaMallocAsync now, cudaFreeAsync when the call ends (also
// when it throws), so the memory is reusable by the stream's later work without a synchronization.
class DeviceScratch {
 public:
  DeviceScratch(size_t bytes, cudaStream_t stream) : stream_(stream) {
    if (bytes) SELFEXT_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, stream));
  }
  ~DeviceScratch() {
    if (ptr_) cudaFreeAsync(ptr_, stream_);  // nothing to report from a destructor; the pool keeps it
  }
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  template <typename U>
  U* as(size_t byte_offset = 0) const { return reinterpret_cast<U*>(static_cast<char*>(ptr_) + byte_offset); }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

inline int multiprocessor_count() {
  int dev = 0, sms = 0;
  SELFEXT_CUDA_CHECK(cudaGetDevice(&dev));
  SELFEXT_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return sms;
}

// Flash-decoding plan: when the (query tile, kv head) blocks cannot fill the GPU twice over, split
// each block's key range into n_splits ranges of tiles_per_split tiles, merged afterwards by LSE.
struct SplitPlan {
  int n_splits = 1;
  int tiles_per_split = 0;
};
inline SplitPlan plan_splits(int64_t n_blocks, int64_t n_key_tiles, int sms) {
  SplitPlan sp;
  sp.tiles_per_split = int(n_key_tiles);
  if (n_blocks >= sms || n_key_tiles < 4) return sp;
  int64_t want = (2 * int64_t(sms) + n_blocks - 1) / n_blocks;
  want = std::min<int64_t>(want, n_key_tiles / 2);  // at least 2 tiles per split
  want = std::min<int64_t>(want, 128);
  if (want <= 1) return sp;
  sp.tiles_per_split = int((n_key_tiles + want - 1) / want);
  sp.n_splits = int((n_key_tiles + sp.tiles_per_split - 1) / sp.tiles_per_split);
  return sp;
}

// Split-K scratch: the partial accumulators, then the (max, sum) pairs, each 256-byte aligned.
struct SplitWorkspace {
  size_t o_offset, ml_offset, total;
};
inline SplitWorkspace split_workspace(int n_splits, int64_t T_q, int n_heads, int head_dim) {
  auto up = [](size_t b) { return (b + 255) / 256 * 256; };
  SplitWorkspace w;
  w.o_offset = 0;
  w.ml_offset = up(size_t(n_splits) * T_q * n_heads * head_dim * sizeof(float));
  w.total = w.ml_offset + up(size_t(n_splits) * T_q * n_heads * 2 * sizeof(float));
  return w;
}

template <typename T>
void launch_merge(const float* ws_o, const float* ws_ml, int n_splits, int64_t T_q, int n_heads, int head_dim,
                  void* out, int64_t stride_t, int64_t stride_h, cudaStream_t stream) {
  const int64_t n_rows = T_q * n_heads;
  SELFEXT_CHECK(n_splits >= 1 && n_splits <= kMaxSplits, BackendError, "split-K merge: ", n_splits, " splits (at most ",
                kMaxSplits, ")");
  launch_kernel(merge_splits_kernel<T>, dim3(unsigned(n_rows)), dim3(head_dim), 0, stream, ws_o, ws_ml, n_splits,
                n_rows, head_dim, n_heads, static_cast<T*>(out), stride_t, stride_h);
}

}  // namespace attn_cuda
}  // namespace selfext
