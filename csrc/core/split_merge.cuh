// Device pieces of the split-K (flash-decoding) merge kernel of the attention. (A decode product merging
// the states as it loaded them, every block of the o-projection redoing the merge, measured slower on an
// H200, 2026-12-02: SmolLM2-shaped steps 1.09 -> 1.24-1.29 ms; removed.)
//
// States of split s for row `row` (a (query, head) pair; n_rows of them per split): o (head_dim
// unnormalized accumulators) at o + (s * n_rows + row) * head_dim, and (m, l) = (running max in natural-log
// units, running sum) at ml + (s * n_rows + row) * 2. They combine by log-sum-exp, all splits at once (the
// rule of softmax_merge in softmax.h): w_s = exp(m_s - max m), out = sum_s w_s o_s / sum_s w_s l_s. Every
// load is independent, so the splits' L2 latencies overlap instead of adding up. Loads bypass L1 (the
// states were written by other blocks).
#pragma once
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

namespace selfext {

constexpr int kMaxSplits = 128;  // split-K ranges per row at most (the plans cap there)

// One warp: w[s] = exp(m_s - max m) for s < n_splits (w: shared memory, n_splits floats); returns
// 1 / sum_s w_s l_s (0 when every split is empty), the same value in every lane.
__device__ __forceinline__ float split_merge_weights(const float* __restrict__ ml, int n_splits, int64_t n_rows,
                                                     int64_t row, int lane, float* w) {
  float M = -INFINITY;
  for (int s = lane; s < n_splits; s += 32) {
    const float m = __ldcg(ml + (int64_t(s) * n_rows + row) * 2);
    w[s] = m;
    M = fmaxf(M, m);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, off));
  float L = 0.f;
  for (int s = lane; s < n_splits; s += 32) {
    const float wt = M == -INFINITY ? 0.f : expf(w[s] - M);  // an empty split (m = -inf): 0
    w[s] = wt;
    L += wt * __ldcg(ml + (int64_t(s) * n_rows + row) * 2 + 1);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) L += __shfl_xor_sync(0xffffffffu, L, off);
  return L > 0.f ? 1.f / L : 0.f;
}

// sum_s w[s] * o[s * step] (o: element d of the row in split 0; step: floats between splits), eight
// loads in flight at a time.
__device__ __forceinline__ float split_merge_sum(const float* __restrict__ o, int64_t step, int n_splits,
                                                 const float* w) {
  float acc = 0.f;
  int s = 0;
  for (; s + 8 <= n_splits; s += 8) {
    float x[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) x[u] = __ldcg(o + (s + u) * step);
#pragma unroll
    for (int u = 0; u < 8; ++u) acc = fmaf(w[s + u], x[u], acc);
  }
  for (; s < n_splits; ++s) acc = fmaf(w[s], __ldcg(o + s * step), acc);
  return acc;
}

}  // namespace selfext
