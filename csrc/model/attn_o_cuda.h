// The fused decode layer's attention and output projection (SelfExtend, one token): one kernel instead of
// the decode attention, its split-K merge and the output product. Plain C++; defined in attn_o_cuda.cu
// (SELFEXT_WITH_CUDA builds only).
#pragma once
#include <cstdint>

#include "attention/params.h"
#include "quant/matmul.h"

namespace selfext {

// Whether self_extend_attn_o_cuda takes p (T_q = 1, RoPE over the whole head in a layout the tensor-core
// decode kernel takes, head_dim 64 or 128, GQA groups up to 8) with output matrix wo (n_embd rows,
// n_heads * head_dim columns, any supported type), for p.T_k keys (the planned bound). Off with
// SELFEXT_CUDA_ATTO=0 or SELFEXT_CUDA_SE_DEC_MMA=0; the key bound is SELFEXT_CUDA_ATTO_MAX_KEYS
// (default kAttnOMaxKeys). Read at every call.
constexpr int64_t kAttnOMaxKeys = 1024;
bool attn_o_supported(const AttentionParams& p, const QMatrix& wo);

// parts[h * wo.rows + r] = sum over the columns c of kv head h's query heads of wo[r, c] * att[c], where
// att is the attention output of p (one split over all keys, rounded to the cache type as the separate
// kernel stores it). The residual add is the next products' (MatvecAddends, h = 0, 1, ...). Grid
// (n_kv_heads, row parts): every block of kv head h runs the whole attention of h (the key walk is
// repeated per part, out of L2) and projects it onto its share of wo's rows. p.out is not written.
void self_extend_attn_o_cuda(const AttentionParams& p, const QMatrix& wo, float* parts);

}  // namespace selfext
