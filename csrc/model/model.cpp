// The backend-neutral half of Model: validation of the config and weights, the cache length, and the
// chunk loop. The per-chunk work is ModelCpu (model_cpu.cpp) or ModelCuda (model_cuda.cu).
#include <algorithm>
#include <cmath>

#include "model/model.h"

namespace selfext {

namespace {

int64_t qdim(const ModelConfig& c) { return c.q_dim(); }
int64_t kvdim(const ModelConfig& c) { return c.kv_dim(); }

void check_matrix(const QMatrix& m, int64_t rows, int64_t cols, const char* name, int layer) {
  SELFEXT_CHECK(m.data != nullptr, ArgumentError, "tensor ", name, " of layer ", layer, " is missing");
  SELFEXT_CHECK(m.rows == rows && m.cols == cols, ArgumentError, "tensor ", name, " of layer ", layer,
                " has shape (", m.rows, ", ", m.cols, "), expected (", rows, ", ", cols, ")");
  SELFEXT_CHECK(m.row_bytes == qtype_row_bytes(m.type, cols), ArgumentError, "tensor ", name, " of layer ",
                layer, ": row_bytes ", m.row_bytes, " does not match its type ", qtype_name(m.type));
}

}  // namespace

AttentionParams layer_attention_params(const ModelConfig& c, const void* q, const void* k, const void* v, void* out,
                                       int64_t n, int64_t T_k, const float* rope_table) {
  AttentionParams ap;
  ap.q = q;
  ap.k = k;
  ap.v = v;
  ap.out = out;
  ap.q_stride_t = ap.out_stride_t = c.q_dim();
  ap.q_stride_h = ap.out_stride_h = c.head_dim;
  ap.k_stride_t = ap.v_stride_t = c.head_dim;
  ap.k_stride_h = ap.v_stride_h = c.n_ctx * c.head_dim;
  ap.T_q = n;
  ap.T_k = T_k;
  ap.n_heads = c.n_head;
  ap.n_kv_heads = c.n_head_kv;
  ap.head_dim = c.head_dim;
  ap.scale = float(1.0 / std::sqrt(double(c.head_dim)));
  ap.group = c.group;
  ap.window = c.window;
  ap.rope_table = rope_table;
  ap.rope_n_pos = c.n_ctx;
  ap.rope_dim = c.rope_dim;
  ap.rope_style = c.rope_style;
  return ap;
}

Model::Model(ModelConfig config, ModelWeights weights) : cfg_(std::move(config)), w_(std::move(weights)) {
  validate();
}

void Model::validate() const {
  const ModelConfig& c = cfg_;
  SELFEXT_CHECK(c.n_layer > 0 && c.n_embd > 0 && c.n_head > 0 && c.n_head_kv > 0 && c.head_dim > 0 &&
                    c.n_ff > 0 && c.n_vocab > 0,
                ArgumentError, "model dimensions must be positive");
  SELFEXT_CHECK(c.n_head % c.n_head_kv == 0, ArgumentError, "n_head (", c.n_head,
                ") must be a multiple of n_head_kv (", c.n_head_kv, ")");
  // A CoPE model may carry no RoPE at all (rope_dim 0); every other model needs it.
  SELFEXT_CHECK((c.rope_dim > 0 || c.cope) && c.rope_dim >= 0 && c.rope_dim % 2 == 0 && c.rope_dim <= c.head_dim,
                ArgumentError, "rope_dim must be even and in [", c.cope ? 0 : 2, ", head_dim=", c.head_dim, "], got ",
                c.rope_dim);
  SELFEXT_CHECK(!c.cope || c.npos_max >= 2, ArgumentError, "CoPE needs npos_max >= 2, got ", c.npos_max);
  SELFEXT_CHECK(!c.cope || c.group == 1, ArgumentError,
                "SelfExtend does not apply to a CoPE model (its positions are contextual); use group 1");
  SELFEXT_CHECK(int64_t(c.inv_freq.size()) == c.rope_dim / 2, ArgumentError, "inv_freq must have rope_dim/2 = ",
                c.rope_dim / 2, " entries, got ", c.inv_freq.size());
  SELFEXT_CHECK(c.n_ctx >= 1, ArgumentError, "n_ctx must be >= 1, got ", c.n_ctx);
  SELFEXT_CHECK(c.n_batch >= 1, ArgumentError, "n_batch must be >= 1, got ", c.n_batch);
  SELFEXT_CHECK(c.group >= 1 && c.window >= 1, ArgumentError, "SelfExtend group and window must be >= 1, got G=",
                c.group, " W=", c.window);
  SELFEXT_CHECK(c.n_threads >= 1, ArgumentError, "n_threads must be >= 1, got ", c.n_threads);
  SELFEXT_CHECK(std::isfinite(c.rms_eps) && c.rms_eps > 0, ArgumentError, "rms_eps must be finite and > 0");
  SELFEXT_CHECK(int(w_.layers.size()) == c.n_layer, ArgumentError, "expected ", c.n_layer, " layers of weights, got ",
                w_.layers.size());
  check_matrix(w_.token_embd, c.n_vocab, c.n_embd, "token_embd", -1);
  check_matrix(w_.output, c.n_vocab, c.n_embd, "output", -1);
  SELFEXT_CHECK(w_.output_norm != nullptr, ArgumentError, "output_norm is missing");
  for (int il = 0; il < c.n_layer; ++il) {
    const LayerWeights& l = w_.layers[il];
    SELFEXT_CHECK(l.attn_norm && l.ffn_norm, ArgumentError, "layer ", il, " lacks a norm weight");
    SELFEXT_CHECK(!c.cope || l.cope_pos, ArgumentError, "layer ", il, " lacks its CoPE position table (cope_pos)");
    check_matrix(l.wq, qdim(c), c.n_embd, "attn_q", il);
    check_matrix(l.wk, kvdim(c), c.n_embd, "attn_k", il);
    check_matrix(l.wv, kvdim(c), c.n_embd, "attn_v", il);
    check_matrix(l.wo, c.n_embd, qdim(c), "attn_output", il);
    check_matrix(l.w_gate, c.n_ff, c.n_embd, "ffn_gate", il);
    check_matrix(l.w_up, c.n_ff, c.n_embd, "ffn_up", il);
    check_matrix(l.w_down, c.n_embd, c.n_ff, "ffn_down", il);
  }
}

void Model::truncate(int64_t n) {
  SELFEXT_CHECK(n >= 0 && n <= n_past_, ArgumentError, "cannot truncate the cache to ", n, " tokens: it holds ",
                n_past_);
  n_past_ = n;
}

void Model::set_self_extend(int64_t group, int64_t window) {
  SELFEXT_CHECK(group >= 1 && window >= 1, ArgumentError, "SelfExtend group and window must be >= 1, got G=", group,
                " W=", window);
  cfg_.group = group;
  cfg_.window = window;
}

void Model::forward(const int32_t* tokens, int64_t n, float* logits, bool all_logits,
                    const std::atomic<bool>* cancel) {
  SELFEXT_CHECK(n >= 1, ArgumentError, "forward needs at least one token");
  SELFEXT_CHECK(n_past_ + n <= cfg_.n_ctx, ContextOverflowError, "the cache holds ", n_past_, " tokens; ", n,
                " more exceed n_ctx=", cfg_.n_ctx);
  for (int64_t i = 0; i < n; ++i)
    SELFEXT_CHECK(tokens[i] >= 0 && tokens[i] < cfg_.n_vocab, ArgumentError, "token id ", tokens[i],
                  " at index ", i, " is outside the vocabulary [0, ", cfg_.n_vocab, ")");
  for (int64_t start = 0; start < n; start += cfg_.n_batch) {
    const int64_t m = std::min(cfg_.n_batch, n - start);
    const bool last = start + m == n;
    float* out = nullptr;
    if (logits && all_logits) out = logits + start * cfg_.n_vocab;
    else if (logits && last) out = logits;
    forward_chunk(tokens + start, m, out, all_logits, cancel);
  }
}

}  // namespace selfext
