// The fused decode layer's attention and output projection (SelfExtend, one token): the split-K merge and
// the output product as one kernel after the decode attention. Plain C++; defined in attn_o_cuda.cu
// (SELFEXT_WITH_CUDA builds only).
#pragma once
#include <cstdint>

#include "attention/params.h"
#include "quant/matmul.h"

namespace selfext {

// Whether self_extend_attn_o_cuda takes p (T_q = 1, RoPE over the whole head in a layout the tensor-core
// decode kernel takes, head_dim 64 or 128, GQA groups up to 8) with output matrix wo (n_embd rows,
// n_heads * head_dim columns, any supported type). Off with SELFEXT_CUDA_ATTO=0 or SELFEXT_CUDA_SE_DEC_MMA=0
// (read at every call).
bool attn_o_supported(const AttentionParams& p, const QMatrix& wo);

// parts[h * wo.rows + r] = sum over the columns c of kv head h's query heads of wo[r, c] * att[c], where
// att is the attention output of p as self_extend_attention_cuda computes it (the same split-K plan and
// merge, rounded to the cache type). Two kernels: the split decode attention, its states in p.workspace
// (p.workspace_bytes >= self_extend_attention_cuda_workspace_bytes(p)), then the merge and the projection,
// grid (n_kv_heads, row parts). The residual add is left to the next products (MatvecAddends, in order
// h = 0, 1, ...). p.out receives the output only when the plan has one split.
void self_extend_attn_o_cuda(const AttentionParams& p, const QMatrix& wo, float* parts);

}  // namespace selfext
