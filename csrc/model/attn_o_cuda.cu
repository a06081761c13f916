// The fused decode layer's attention and output projection (attn_o_cuda.h).
//
// Why: a small model's decode step is a chain of ~6 short kernels per layer, each costing its own launch
// ramp and first-load latency (~5 us per kernel for SmolLM2 on an H200, docs/cuda_loop.md), not bandwidth.
// At short caches the split-K attention, its merge and the output product are three of them. Here one
// kernel does all three: grid (n_kv_heads, n_parts); each block walks all keys of its kv head with the
// tensor-core decode kernel's block (attention/se_decode_mma.cuh, one split, so no merge kernel), widens
// its n_rep heads' output as the separate kernel would have stored it, and multiplies it by the matching
// column slice of wo for rows [part * rows_per_part, ...). The n_kv_heads partial products of a row are
// summed, in order, by the next two products' loads and store (MatvecAddends) instead of being added into
// the residual here: no atomics, and the two reads of the residual agree to the bit.
//
// The key walk is repeated by the n_parts blocks of a kv head (from L2: the keys are prefetched before the
// PDL wait), which costs nothing on the critical path while the GPU is otherwise idle; beyond ~1k keys one
// block's walk is longer than the split plan's (one SM reads all keys), so the model takes this path up to
// kAttnOMaxKeys keys.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "attention/se_decode_mma.cuh"
#include "attention/selfext_cuda_impl.cuh"
#include "core/cuda_check.cuh"
#include "core/cuda_launch.cuh"
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
};

constexpr int kGroup = 8;  // lanes per output row in the projection

template <int kHeadDim>
constexpr size_t attn_o_smem_bytes() {  // the decode block's + the widened output (n_rep x D floats)
  return (dm_smem_bytes<kHeadDim>() + 15) / 16 * 16 + size_t(kDecMaxRep) * kHeadDim * 4;
}

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

template <typename T, int kHeadDim, bool kNeox>
__global__ void __launch_bounds__(kDmWarps * 32) attn_o_kernel(const SeArgs a, int subs, const AttnOArgs o) {
  extern __shared__ __align__(16) unsigned char dm_smem[];
  const int kvh = blockIdx.x;
  const int64_t r0 = int64_t(blockIdx.y) * o.rows_per_part;
  const int64_t r1 = min(o.rows, r0 + o.rows_per_part);
  if (a.prefetch && threadIdx.x == 0) {
    se_decode_prefetch<T, kHeadDim>(a, subs * kDmSub, kvh, 0);
    prefetch_l2(o.w + r0 * o.row_bytes, (r1 - r0) * o.row_bytes);
  }
  kernel_prologue();
  dm_block_states<T, kHeadDim, kNeox>(a, subs, kvh, 0, dm_smem);
  const int n_rep = a.rm.n_rep, slice = n_rep * kHeadDim;
  float* att = reinterpret_cast<float*>(dm_smem + (dm_smem_bytes<kHeadDim>() + 15) / 16 * 16);
  for (int e = threadIdx.x; e < slice; e += kDmWarps * 32) {
    float M, acc, lsum;
    dm_merged<kHeadDim>(dm_smem, e / kHeadDim, e % kHeadDim, M, acc, lsum);
    att[e] = ld_float<T>(st_bits<T>(lsum > 0.f ? acc / lsum : 0.f));  // as the separate kernel stores it
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
  SeArgs a = make_se_args(p);
  const int subs = int((p.T_k + kDmSub - 1) / kDmSub);
  AttnOArgs o{static_cast<const uint8_t*>(wo.data), int64_t(wo.row_bytes), wo.rows, wo.cols, wo.type, parts, 0};
  // Row parts per kv head: enough blocks that each projects a few dozen rows, few enough that the
  // repeated key walks stay a small share of L2's bandwidth (SELFEXT_CUDA_ATTO_PARTS, for measuring).
  const int64_t n_parts = std::clamp<int64_t>(env_int("SELFEXT_CUDA_ATTO_PARTS", 8), 1, (wo.rows + 31) / 32);
  o.rows_per_part = (wo.rows + n_parts - 1) / n_parts;
  const unsigned grid_y = unsigned((wo.rows + o.rows_per_part - 1) / o.rows_per_part);
  auto kernel = attn_o_kernel<T, kHeadDim, kNeox>;
  constexpr size_t smem = attn_o_smem_bytes<kHeadDim>();
  static const bool attr = [&] {
    SELFEXT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    return true;
  }();
  (void)attr;
  launch_kernel(kernel, dim3(unsigned(p.n_kv_heads), grid_y), dim3(kDmWarps * 32), smem,
                static_cast<cudaStream_t>(p.stream), a, subs, o);
}

}  // namespace

bool attn_o_supported(const AttentionParams& p, const QMatrix& wo) {
  if (env_int("SELFEXT_CUDA_ATTO", 1) == 0 || !use_decode_mma(p)) return false;
  if (p.T_q != 1 || p.n_kv_heads < 1 || p.n_heads % p.n_kv_heads != 0) return false;
  const int n_rep = p.n_heads / p.n_kv_heads;
  if (n_rep > kDecMaxRep || (p.head_dim != 64 && p.head_dim != 128)) return false;
  if (!decode_mma_supported(p.head_dim, p.rope_dim, p.rope_style) || p.rope_table == nullptr) return false;
  if (p.T_k < 1 || p.T_k > env_int("SELFEXT_CUDA_ATTO_MAX_KEYS", kAttnOMaxKeys)) return false;
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
