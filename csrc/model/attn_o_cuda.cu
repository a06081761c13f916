// The fused decode layer's attention and output projection (attn_o_cuda.h).
//
// Why: a small model's decode step is a chain of ~6 short kernels per layer, each costing its own launch
// ramp and first-load latency (~5 us per kernel for SmolLM2 on an H200, docs/cuda_loop.md), not bandwidth.
// The split-K merge and the output product are two of them. Here they are one kernel, grid (n_kv_heads,
// n_parts): each block merges its kv head's n_rep rows of the split states (the merge kernel's formula),
// rounds them to the cache type as that kernel stores them, and multiplies them by the matching column
// slice of wo for rows [part * rows_per_part, ...). The n_kv_heads partial products of a row are summed, in
// order, by the next two products' loads and store (MatvecAddends) instead of being added into the
// residual here: no atomics, and the two reads of the residual agree to the bit.
//
// Tried first (H200, session 15, SmolLM2-shaped random weights, 512-token prefill then 64 steps): the whole
// attention in this kernel, one split per kv head walked by each block (no merge): 1.24 ms per step against
// 1.09 for the three separate kernels. One block's walk over ~600 keys (5 of the decode kernel's 16-key
// steps per warp) is slower than the split plan's one step per warp plus the merge; the attention with one
// split and the separate merge-free chain (SELFEXT_CUDA_SE_DEC_CPS=12) measured 1.15 ms.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "attention/se_decode_mma.cuh"
#include "attention/selfext_cuda_impl.cuh"
#include "core/cuda_check.cuh"
#include "core/cuda_launch.cuh"
#include "core/split_merge.cuh"
#include "model/attn_o_cuda.h"
#include "quant/matvec_cuda.cuh"

namespace selfext {
namespace {

using namespace attn_cuda;

struct AttnOArgs {
  const uint8_t* w;  // wo: (rows, row_bytes) blocks
  int64_t row_bytes, rows, cols;
  QType type;
  float* parts;  // (n_kv_heads, rows)
  int64_t rows_per_part;
  bool prefetch;  // the block's rows of wo prefetched into L2 before the PDL wait
};

constexpr int kGroup = 8;  // lanes per output row in the projection

// Rows [r0, r1) of the partial product of kv head kvh: groups of kGroup lanes per row, each lane a
// strided share of the slice's 8-element runs, the matvec's formula per run (w = dl q - ml).
template <typename F>
__device__ __forceinline__ void project_rows(const AttnOArgs& o, const float* __restrict__ att, int kvh, int slice,
                                             int64_t r0, int64_t r1) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane / kGroup, gl = lane % kGroup;
  constexpr int kRowsPerWarp = 32 / kGroup;
  const int j0 = kvh * slice / kRun, n_runs = slice / kRun;
  for (int64_t rb = r0 + warp * kRowsPerWarp; rb < r1; rb += kDmWarps * kRowsPerWarp) {
    const int64_t r = rb + g;
    float acc = 0.f;
    if (r < r1) {
      const uint8_t* row = o.w + r * o.row_bytes;
      for (int jr = gl; jr < n_runs; jr += kGroup) {
        float q[kRun], dl, ml;
        F::run(row, j0 + jr, o.cols, q, dl, ml);
        const float4 xa = *reinterpret_cast<const float4*>(att + jr * kRun);
        const float4 xb = *reinterpret_cast<const float4*>(att + jr * kRun + 4);
        const float xv[kRun] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
        float d = 0.f, sx = 0.f;
#pragma unroll
        for (int k = 0; k < kRun; ++k) {
          d = fmaf(q[k], xv[k], d);
          if constexpr (F::kHasMin) sx += xv[k];
        }
        acc = fmaf(dl, d, acc);
        if constexpr (F::kHasMin) acc = fmaf(-ml, sx, acc);
      }
    }
#pragma unroll
    for (int off = kGroup / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (gl == 0 && r < r1) o.parts[int64_t(kvh) * o.rows + r] = acc;
  }
}

// Grid (n_kv_heads, row parts), kDmWarps * 32 threads. Kv head kvh's n_rep rows of the attention output:
// merged from the split-K states (n_splits > 1: the merge kernel's formula and loads, core/split_merge.cuh)
// or read from `out` (one split: the decode kernel wrote it), rounded to the cache type either way, as the
// separate kernels store it; then its projection onto this block's rows of wo.
template <typename T>
__global__ void __launch_bounds__(kDmWarps * 32) merge_o_kernel(const float* __restrict__ ws_o,
                                                                const float* __restrict__ ws_ml, int n_splits,
                                                                const uint16_t* __restrict__ out, int64_t out_sh,
                                                                int n_heads, int n_rep, int head_dim,
                                                                const AttnOArgs o) {
  __shared__ float w_sh[kDecMaxRep][kMaxSplits];
  __shared__ float inv_sh[kDecMaxRep];
  __shared__ __align__(16) float att[kDecMaxRep * 128];
  const int kvh = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t r0 = int64_t(blockIdx.y) * o.rows_per_part;
  const int64_t r1 = min(o.rows, r0 + o.rows_per_part);
  if (o.prefetch && threadIdx.x == 0) prefetch_l2(o.w + r0 * o.row_bytes, (r1 - r0) * o.row_bytes);
  kernel_prologue();
  const int slice = n_rep * head_dim;
  if (n_splits > 1) {
    if (warp < n_rep) {
      const float inv = split_merge_weights(ws_ml, n_splits, n_heads, kvh * n_rep + warp, lane, w_sh[warp]);
      if (lane == 0) inv_sh[warp] = inv;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < slice; e += kDmWarps * 32) {
      const int r = e / head_dim, d = e % head_dim;
      const int64_t row = int64_t(kvh) * n_rep + r;
      const float acc = split_merge_sum(ws_o + row * head_dim + d, int64_t(n_heads) * head_dim, n_splits, w_sh[r]);
      att[e] = ld_float<T>(st_bits<T>(acc * inv_sh[r]));
    }
  } else {
    for (int e = threadIdx.x; e < slice; e += kDmWarps * 32) {
      const int r = e / head_dim, d = e % head_dim;
      att[e] = ld_float<T>(__ldcg(out + (int64_t(kvh) * n_rep + r) * out_sh + d));
    }
  }
  __syncthreads();
  using namespace mv_cuda;
  switch (o.type) {
    case QType::F32: project_rows<FloatFmt<float>>(o, att, kvh, slice, r0, r1); break;
    case QType::F16: project_rows<FloatFmt<f16>>(o, att, kvh, slice, r0, r1); break;
    case QType::BF16: project_rows<FloatFmt<bf16>>(o, att, kvh, slice, r0, r1); break;
    case QType::Q4_0: project_rows<QuantFmt<block_q4_0, QType::Q4_0>>(o, att, kvh, slice, r0, r1); break;
    case QType::Q4_1: project_rows<QuantFmt<block_q4_1, QType::Q4_1>>(o, att, kvh, slice, r0, r1); break;
    case QType::Q5_0: project_rows<QuantFmt<block_q5_0, QType::Q5_0>>(o, att, kvh, slice, r0, r1); break;
    case QType::Q5_1: project_rows<QuantFmt<block_q5_1, QType::Q5_1>>(o, att, kvh, slice, r0, r1); break;
    case QType::Q8_0: project_rows<QuantFmt<block_q8_0, QType::Q8_0>>(o, att, kvh, slice, r0, r1); break;
    case QType::Q2_K: project_rows<QuantFmt<block_q2_k, QType::Q2_K>>(o, att, kvh, slice, r0, r1); break;
    case QType::Q3_K: project_rows<QuantFmt<block_q3_k, QType::Q3_K>>(o, att, kvh, slice, r0, r1); break;
    case QType::Q4_K: project_rows<QuantFmt<block_q4_k, QType::Q4_K>>(o, att, kvh, slice, r0, r1); break;
    case QType::Q5_K: project_rows<QuantFmt<block_q5_k, QType::Q5_K>>(o, att, kvh, slice, r0, r1); break;
    case QType::Q6_K: project_rows<QuantFmt<block_q6_k, QType::Q6_K>>(o, att, kvh, slice, r0, r1); break;
    default: break;  // attn_o_supported admits only the types above
  }
}

bool supported_type(QType t) {
  switch (t) {
    case QType::F32: case QType::F16: case QType::BF16: case QType::Q4_0: case QType::Q4_1: case QType::Q5_0:
    case QType::Q5_1: case QType::Q8_0: case QType::Q2_K: case QType::Q3_K: case QType::Q4_K: case QType::Q5_K:
    case QType::Q6_K:
      return true;
    default:
      return false;
  }
}

int64_t env_int(const char* name, int64_t fallback) {
  const char* e = std::getenv(name);
  return e && *e ? std::strtoll(e, nullptr, 10) : fallback;
}

template <typename T, int kHeadDim, bool kNeox>
void launch_attn_o(const AttentionParams& p, const QMatrix& wo, float* parts) {
  cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  // The decode attention as run_se launches it (its plan, the states in the caller's workspace) ...
  SeArgs a = make_se_args(p);
  const DecodePlan dp = decode_mma_plan(p.T_k, p.n_kv_heads, multiprocessor_count(),
                                        decode_mma_blocks_per_sm<T, kHeadDim, kNeox>());
  if (dp.n_splits > 1) {
    const SplitWorkspace wl = split_workspace(dp.n_splits, 1, p.n_heads, kHeadDim);
    SELFEXT_CHECK(p.workspace != nullptr && p.workspace_bytes >= int64_t(wl.total), ArgumentError,
                  "self_extend_attn_o: the workspace has ", p.workspace ? p.workspace_bytes : 0,
                  " bytes, this call needs ", wl.total);
    char* base = static_cast<char*>(p.workspace);
    a.oa.ws_o = reinterpret_cast<float*>(base + wl.o_offset);
    a.oa.ws_ml = reinterpret_cast<float*>(base + wl.ml_offset);
  }
  launch_kernel(se_decode_mma_kernel<T, kHeadDim, kNeox>, dim3(unsigned(p.n_kv_heads), unsigned(dp.n_splits)),
                dim3(kDmWarps * 32), dm_smem_bytes<kHeadDim>(), stream, a, dp.chunks_per_split);
  // ... then the merge and the projection in one kernel.
  AttnOArgs o{static_cast<const uint8_t*>(wo.data), int64_t(wo.row_bytes), wo.rows, wo.cols, wo.type, parts, 0,
              l2_prefetch_enabled()};
  // Row parts per kv head: short row ranges per block (the projection's time grows with them), few
  // enough blocks that each still has a few dozen rows (SELFEXT_CUDA_ATTO_PARTS, for measuring).
  const int64_t n_parts = std::clamp<int64_t>(env_int("SELFEXT_CUDA_ATTO_PARTS", 16), 1, (wo.rows + 15) / 16);
  o.rows_per_part = (wo.rows + n_parts - 1) / n_parts;
  const unsigned grid_y = unsigned((wo.rows + o.rows_per_part - 1) / o.rows_per_part);
  launch_kernel(merge_o_kernel<T>, dim3(unsigned(p.n_kv_heads), grid_y), dim3(kDmWarps * 32), 0, stream,
                a.oa.ws_o, a.oa.ws_ml, dp.n_splits, static_cast<const uint16_t*>(p.out), p.out_stride_h, p.n_heads,
                p.n_heads / p.n_kv_heads, kHeadDim, o);
}

}  // namespace

bool attn_o_supported(const AttentionParams& p, const QMatrix& wo) {
  if (env_int("SELFEXT_CUDA_ATTO", 1) == 0 || !use_decode_mma(p)) return false;
  if (p.T_q != 1 || p.n_kv_heads < 1 || p.n_heads % p.n_kv_heads != 0) return false;
  const int n_rep = p.n_heads / p.n_kv_heads;
  if (n_rep > kDecMaxRep || (p.head_dim != 64 && p.head_dim != 128)) return false;
  if (!decode_mma_supported(p.head_dim, p.rope_dim, p.rope_style) || p.rope_table == nullptr) return false;
  if (p.T_k < 1 || p.out_stride_t < 0) return false;
  return supported_type(wo.type) && wo.data != nullptr && wo.cols == int64_t(p.n_heads) * p.head_dim && wo.rows >= 1;
}

void self_extend_attn_o_cuda(const AttentionParams& p, const QMatrix& wo, float* parts) {
  check_common(p, "self_extend_attn_o");
  SELFEXT_CHECK(attn_o_supported(p, wo), ArgumentError,
                "self_extend_attn_o: this call is not one the fused attention-projection kernel takes "
                "(check attn_o_supported first)");
  SELFEXT_CHECK(parts != nullptr && reinterpret_cast<uintptr_t>(parts) % 16 == 0, ArgumentError,
                "self_extend_attn_o: parts must be a 16-byte aligned device pointer");
  SELFEXT_CHECK(p.rope_n_pos >= p.T_k, ArgumentError, "self_extend_attn_o: the RoPE table must cover positions 0..",
                p.T_k - 1, ", has ", p.rope_n_pos);
  const bool neox = p.rope_style != RopeStyle::kNorm;
  const bool bf = p.q_dtype == DType::kBFloat16;
  auto go = [&](auto t, auto d) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value;
    if (neox) launch_attn_o<T, D, true>(p, wo, parts);
    else launch_attn_o<T, D, false>(p, wo, parts);
  };
  if (p.head_dim == 64) {
    if (bf) go(bf16{}, std::integral_constant<int, 64>{});
    else go(f16{}, std::integral_constant<int, 64>{});
  } else {
    if (bf) go(bf16{}, std::integral_constant<int, 128>{});
    else go(f16{}, std::integral_constant<int, 128>{});
  }
}

}  // namespace selfext
