// The one plain struct both attention kernels (CPU and CUDA, SelfExtend and CoPE) take. Pointers,
// element strides, sizes; no framework types. Built by bindings/attention.cpp and by the model.
#pragma once
#include <cstdint>

#include "attention/rope.h"
#include "core/array.h"

namespace selfext {

struct AttentionParams {
  // q: (T_q, n_heads, head_dim); k, v: (T_k, n_kv_heads, head_dim) K before RoPE; out like q.
  // Strides in elements; the innermost (head_dim) stride is 1.
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  DType q_dtype = DType::kFloat32, kv_dtype = DType::kFloat32, out_dtype = DType::kFloat32;
  int64_t q_stride_t = 0, q_stride_h = 0;
  int64_t k_stride_t = 0, k_stride_h = 0;
  int64_t v_stride_t = 0, v_stride_h = 0;
  int64_t out_stride_t = 0, out_stride_h = 0;
  int64_t T_q = 0, T_k = 0;  // queries are positions T_k - T_q .. T_k - 1
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
  float scale = 0.f;  // usually 1/sqrt(head_dim)

  // SelfExtend (group = 1 or window >= T_k: plain RoPE attention).
  int64_t group = 1, window = 1;
  // RoPE: table (rope_n_pos, rope_dim/2, 2) of mscale*(cos, sin), rope_n_pos >= T_k; rope_dim even <= head_dim.
  // rope_dim == 0 disables RoPE (CoPE models without it).
  const float* rope_table = nullptr;
  int64_t rope_n_pos = 0;
  int rope_dim = 0;
  RopeStyle rope_style = RopeStyle::kNorm;

  // CoPE: pos_emb (npos_max, head_dim) shared by all heads (pe_stride_h = 0), or (n_heads, npos_max,
  // head_dim) with pe_stride_h = npos_max * head_dim. Same dtype as q. When CoPE is used with RoPE, the
  // kernel applies RoPE to q and k at their normal positions first (rope_dim > 0).
  const void* pos_emb = nullptr;
  int npos_max = 0;
  int64_t pe_stride_h = 0;
  bool scale_pos_logits = false;

  void* stream = nullptr;  // CUDA stream (cudaStream_t), the caller's

  // CUDA SelfExtend only: when set, the kernels read the key count from this device int when they run,
  // and T_k is only its upper bound, which the launch is planned for. A CUDA graph captured once then
  // serves every length up to T_k (the model's decode graphs, one per length bucket).
  const int32_t* T_k_dev = nullptr;

  // CUDA SelfExtend only: caller-owned device scratch for the split-K partial states, 256-byte aligned,
  // at least self_extend_attention_cuda_workspace_bytes(p) bytes. With it a call allocates nothing (no
  // memory nodes in a graph).
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;

  // CUDA SelfExtend decode (T_q = 1) only: the caller promises that keys and values 0 .. T_k - 2 (and the
  // key count at T_k_dev) were complete before the previous kernel on the stream started (the model's
  // decode steps: only the current token's row is written within the step). The decode kernel then issues
  // their copies before the PDL wait, so they overlap the previous kernel's tail; the current row is read
  // after the wait.
  bool past_kv_ready = false;
};

class ThreadPool;
void self_extend_attention_cpu(const AttentionParams& p, ThreadPool& pool);
void cope_attention_cpu(const AttentionParams& p, ThreadPool& pool);
void self_extend_attention_cuda(const AttentionParams& p);
void cope_attention_cuda(const AttentionParams& p);

}  // namespace selfext
