// What both attention bindings (CPU: attention.cpp, CUDA: attention_cuda.cpp) turn Python arguments
// into: the RoPE style and the pointer/stride/size part of AttentionParams. Shape and dtype checks stay
// with each binding (the backends support different dtypes).
#pragma once
#include <string>

#include "attention/params.h"
#include "core/array.h"
#include "core/errors.h"

namespace selfext {

inline RopeStyle parse_rope_style(const std::string& s) {
  if (s == "norm") return RopeStyle::kNorm;
  if (s == "neox") return RopeStyle::kNeox;
  throw ArgumentError(detail::concat("rope_style must be 'norm' or 'neox', got '", s, "'"));
}

// q, out: (T_q, n_heads, head_dim); k, v: (T_k, n_kv_heads, head_dim), already checked by the caller.
inline void fill_attention_views(AttentionParams& p, const ArrayView& q, const ArrayView& k, const ArrayView& v,
                                 const ArrayView& out) {
  p.q = q.data;
  p.k = k.data;
  p.v = v.data;
  p.out = out.data;
  p.q_dtype = q.dtype;
  p.kv_dtype = k.dtype;
  p.out_dtype = out.dtype;
  p.q_stride_t = q.strides[0];
  p.q_stride_h = q.strides[1];
  p.k_stride_t = k.strides[0];
  p.k_stride_h = k.strides[1];
  p.v_stride_t = v.strides[0];
  p.v_stride_h = v.strides[1];
  p.out_stride_t = out.strides[0];
  p.out_stride_h = out.strides[1];
  p.T_q = q.shape[0];
  p.T_k = k.shape[0];
  p.n_heads = int(q.shape[1]);
  p.n_kv_heads = int(k.shape[1]);
  p.head_dim = int(q.shape[2]);
}

}  // namespace selfext
