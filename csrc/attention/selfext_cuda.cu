// SelfExtend attention on CUDA (Jin et al. 2024, arXiv 2401.01325): one fused flash-style pass with
// tensor-core tiles and an online softmax; no T_q x T_k matrix exists anywhere.
//
// K arrives un-rotated (the cache stores K before RoPE). Per key tile the block rotates K from the
// RoPE table at the positions the tile needs: normal (j) when some (i, j) of the tile is inside the
// neighbor window, grouped (floor(j/G)) when some pair is outside it. Q is rotated once, at i and at
// floor(i/G) + W - floor(W/G). A warp whose 16 rows see a tile entirely inside (outside) the window
// computes one S = Q K^T; only tiles on the window boundary compute both and select per element, so
// for W << T nearly all tiles cost one plain attention tile plus the rotation of one K tile.
//
// Decode and short chunks split the key range across blocks (flash-decoding) and merge by LSE.
//
// Prefill kernels, fastest first where they apply: se_wgmma_kernel (se_wgmma.cuh; Hopper, head dims 64 and
// 128, K rotated once per call), se_phased_kernel (mma.sync, the same algorithm), se_attention_kernel (both
// branches per boundary tile; K rotated per tile, or once). Measured (H200, bf16, G=4, W=1024, 2026-12-03,
// bench/results/attention_cuda-nvidia_h200.json): (32, 8, 128) 378 / 412 TFLOP/s at T = 16k / 32k, 1.11 /
// 1.19x SDPA-flash; (9, 3, 64) 237 / 297, 1.04 / 1.08x. Decode: se_decode_mma.cuh (tensor cores, the
// default), se_decode_kernel, or the tile kernel; 32k keys at 0.61 of the read rate. docs/cuda_loop.md.
//
// The kernels and run_se live in selfext_cuda_impl.cuh; each (dtype, head dim) is compiled in its own file
// of se_instances/. This file holds the entry points.
#include "attention/selfext_cuda_impl.cuh"

namespace selfext {

// The tile loads move 16-byte chunks: every row of q, k, v, out (and pos_emb) must start 16-byte aligned.
void check_rows_aligned_16(const void* ptr, int64_t stride_t, int64_t stride_h, const char* op, const char* name) {
  SELFEXT_CHECK(reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && stride_t % 8 == 0 && stride_h % 8 == 0, ArgumentError,
                op, ": ", name, " rows must start on 16-byte boundaries on CUDA (aligned data pointer, strides ",
                "multiples of 8 elements)");
}

namespace {

// --- RoPE table on the device --------------------------------------------------------------------------
struct InvFreq {
  double f[kMaxRopePairs];
};

__global__ void rope_table_kernel(const InvFreq inv, int n_pairs, double mscale, int64_t n_pos, float* table) {
  kernel_prologue();
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n_pos * n_pairs) return;
  const int64_t pos = idx / n_pairs;
  const int p = int(idx % n_pairs);
  double s, c;
  sincos(double(pos) * inv.f[p], &s, &c);  // as build_rope_table: angle and trig in double
  table[2 * idx] = float(mscale * c);
  table[2 * idx + 1] = float(mscale * s);
}

}  // namespace

void build_rope_table_cuda(const double* inv_freq_host, int n_pairs, double mscale, int64_t n_pos, float* table_dev,
                           void* stream) {
  SELFEXT_CHECK(n_pairs >= 1 && n_pairs <= kMaxRopePairs, ArgumentError, "rope_dim / 2 = ", n_pairs,
                " must be in [1, ", kMaxRopePairs, "]");
  SELFEXT_CHECK(n_pos >= 1, ArgumentError, "the RoPE table needs n_pos >= 1, got ", n_pos);
  InvFreq inv{};
  for (int p = 0; p < n_pairs; ++p) inv.f[p] = inv_freq_host[p];
  const int64_t n = n_pos * n_pairs;
  const int threads = 256;
  launch_kernel(rope_table_kernel, dim3(unsigned((n + threads - 1) / threads)), dim3(threads), 0,
                static_cast<cudaStream_t>(stream), inv, n_pairs, mscale, n_pos, table_dev);
}

namespace {

void check_se(const AttentionParams& p) {
  check_common(p, "self_extend_attention");
  SELFEXT_CHECK(p.group >= 1, ArgumentError, "group must be >= 1, got ", p.group);
  SELFEXT_CHECK(p.window >= 1, ArgumentError, "window must be >= 1, got ", p.window);
  SELFEXT_CHECK(p.rope_dim >= 0 && p.rope_dim % 2 == 0 && p.rope_dim <= p.head_dim, ArgumentError,
                "rope_dim must be even and in [0, head_dim = ", p.head_dim, "], got ", p.rope_dim);
  SELFEXT_CHECK(p.rope_dim == 0 || (p.rope_table != nullptr && p.rope_n_pos >= p.T_k), ArgumentError,
                "self_extend_attention: the RoPE table must cover positions 0..T_k-1 (", p.T_k, "), has ",
                p.rope_n_pos);
}

}  // namespace

void self_extend_attention_cuda(const AttentionParams& p) {
  check_se(p);
  if (p.T_q == 0) return;
  const bool f = p.q_dtype == DType::kFloat16;
  switch (p.head_dim) {  // run_se<T, head_dim>, each in its own file of se_instances/
    case 64: return f ? attn_cuda::run_se_f16_d64(p) : attn_cuda::run_se_bf16_d64(p);
    case 80: return f ? attn_cuda::run_se_f16_d80(p) : attn_cuda::run_se_bf16_d80(p);
    case 96: return f ? attn_cuda::run_se_f16_d96(p) : attn_cuda::run_se_bf16_d96(p);
    case 128: return f ? attn_cuda::run_se_f16_d128(p) : attn_cuda::run_se_bf16_d128(p);
    default:
      throw ArgumentError(detail::concat("head_dim ", p.head_dim, " is not supported; supported: 64, 80, 96, 128"));
  }
}

namespace attn_cuda {

SeDecodeMega se_decode_mega_plan(const AttentionParams& p, int blocks) {
  check_se(p);
  const int n_rep = p.n_heads / p.n_kv_heads;
  SELFEXT_CHECK(p.T_q == 1 && use_decode_kernel(p.T_q, n_rep, p.rope_dim), ArgumentError,
                "the decode megakernel takes one query row with RoPE and GQA groups up to ", kDecMaxRep);
  SELFEXT_CHECK(p.head_dim == 64 || p.head_dim == 128, ArgumentError,
                "the decode megakernel takes head_dim 64 or 128, got ", p.head_dim);
  SeDecodeMega m;
  m.a = make_se_args(p);
  m.plan = decode_plan(p.T_k, p.n_kv_heads, 1, blocks, kDecMinThreads / 4);
  m.head_dim = p.head_dim;
  m.bf16 = p.q_dtype == DType::kBFloat16;
  if (m.plan.n_splits > 1) {
    const SplitWorkspace wl = split_workspace(m.plan.n_splits, 1, p.n_heads, p.head_dim);
    SELFEXT_CHECK(p.workspace != nullptr && p.workspace_bytes >= int64_t(wl.total), ArgumentError,
                  "self_extend_attention: the decode megakernel needs a workspace of ", wl.total, " bytes, has ",
                  p.workspace ? p.workspace_bytes : 0);
    char* base = static_cast<char*>(p.workspace);
    m.a.oa.ws_o = reinterpret_cast<float*>(base + wl.o_offset);
    m.a.oa.ws_ml = reinterpret_cast<float*>(base + wl.ml_offset);
  }
  return m;
}

}  // namespace attn_cuda

void self_extend_attention_cuda_freqs(AttentionParams p, const double* inv_freq_host, double mscale) {
  if (p.rope_table != nullptr || p.rope_dim == 0 || p.T_q == 0) {
    self_extend_attention_cuda(p);
    return;
  }
  check_common(p, "self_extend_attention");
  const int n_pairs = p.rope_dim / 2;
  cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  attn_cuda::DeviceScratch table(size_t(p.T_k) * n_pairs * 2 * sizeof(float), stream);
  build_rope_table_cuda(inv_freq_host, n_pairs, mscale, p.T_k, table.as<float>(), p.stream);
  p.rope_table = table.as<float>();
  p.rope_n_pos = p.T_k;
  self_extend_attention_cuda(p);
}

int64_t self_extend_attention_cuda_workspace_bytes(const AttentionParams& p) {
  if (p.T_q == 0 || p.n_kv_heads < 1) return 0;
  const int64_t table = p.rope_table == nullptr ? p.T_k * (p.rope_dim / 2) * 2 * int64_t(sizeof(float)) : 0;
  const int n_rep = p.n_heads / p.n_kv_heads;
  const int64_t rows = p.T_q * n_rep;
  const int sms = attn_cuda::multiprocessor_count();
  // p.rope_dim == 0 here may mean "the caller passes its table" (the model), so the decode kernel's
  // plan is counted whenever T_q = 1.
  int64_t dec = 0;
  if (use_decode_kernel(p.T_q, n_rep, 2)) {
    // the most splits any plan takes: at most 2048 / kDecMinThreads resident blocks per SM, the smallest chunks
    const DecodePlan dp = decode_plan(p.T_k, p.n_kv_heads, sms, 2048 / kDecMinThreads, kDecMinThreads / 4);
    dec = int64_t(attn_cuda::split_workspace(dp.n_splits, 1, p.n_heads, p.head_dim).total);
  }
  if (use_prerotated_k(p) && p.T_q > 1) {  // the rotated K copies (both, at most)
    dec += int64_t(2) * p.T_k * p.n_kv_heads * p.head_dim * 2;
  }
  if ((rows + 127) / 128 * p.n_kv_heads >= sms) return table + dec;
  const int64_t groups = (rows + 63) / 64 * p.n_kv_heads;
  const attn_cuda::SplitPlan sp = attn_cuda::plan_splits(groups, (p.T_k + 63) / 64, sms);
  if (sp.n_splits == 1) return table + dec;
  return table + std::max(dec, int64_t(attn_cuda::split_workspace(sp.n_splits, p.T_q, p.n_heads, p.head_dim).total));
}

int cuda_exchange_device(int device) {
  int prev = 0;
  SELFEXT_CUDA_CHECK(cudaGetDevice(&prev));
  if (prev != device) SELFEXT_CUDA_CHECK(cudaSetDevice(device));
  return prev;
}

}  // namespace selfext
