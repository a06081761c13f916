// The forward pass on the CPU. Per layer: RMSNorm -> Q,K,V (quantized matmul) -> K,V into the cache
// (K un-rotated) -> SelfExtend attention (rotates q and k at normal or grouped positions from the
// RoPE table) -> output projection -> residual -> RMSNorm -> SwiGLU FFN -> residual.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "attention/params.h"
#include "attention/positions.h"
#include "core/half.h"
#include "model/model.h"
#include "model/rms_norm.h"

namespace selfext {

namespace {

int64_t qdim(const ModelConfig& c) { return int64_t(c.n_head) * c.head_dim; }
int64_t kvdim(const ModelConfig& c) { return int64_t(c.n_head_kv) * c.head_dim; }

void check_matrix(const QMatrix& m, int64_t rows, int64_t cols, const char* name, int layer) {
  SELFEXT_CHECK(m.data != nullptr, ArgumentError, "tensor ", name, " of layer ", layer, " is missing");
  SELFEXT_CHECK(m.rows == rows && m.cols == cols, ArgumentError, "tensor ", name, " of layer ", layer,
                " has shape (", m.rows, ", ", m.cols, "), expected (", rows, ", ", cols, ")");
  SELFEXT_CHECK(m.row_bytes == qtype_row_bytes(m.type, cols), ArgumentError, "tensor ", name, " of layer ",
                layer, ": row_bytes ", m.row_bytes, " does not match its type ", qtype_name(m.type));
}

// SiLU(gate) * up, in place into gate.
void swiglu(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    gate[i] = g / (1.f + std::exp(-g)) * up[i];
  }
}

}  // namespace

Model::Model(ModelConfig config, ModelWeights weights) : cfg_(std::move(config)), w_(std::move(weights)) {
  validate();
  pool_ = std::make_unique<ThreadPool>(cfg_.n_threads);
  const ModelConfig& c = cfg_;
  const int n_pairs = c.rope_dim / 2;
  rope_table_.reset(size_t(c.n_ctx) * n_pairs * 2 * sizeof(float), "the RoPE table");
  build_rope_table(c.inv_freq.data(), n_pairs, c.mscale, c.n_ctx, rope_table_.as<float>());
  const size_t cache_bytes = size_t(c.n_layer) * kvdim(c) * c.n_ctx * dtype_size(c.kv_dtype);
  k_cache_.reset(cache_bytes, "the K cache");
  v_cache_.reset(cache_bytes, "the V cache");
  const int64_t B = c.n_batch;
  x_.reset(size_t(B) * c.n_embd * 4, "activations");
  xb_.reset(size_t(B) * std::max<int64_t>(c.n_embd, qdim(c)) * 4, "activations");
  q_.reset(size_t(B) * std::max<int64_t>(qdim(c), c.n_embd) * 4, "queries and projection outputs");
  kv_new_.reset(size_t(2) * B * kvdim(c) * 4, "new keys and values");
  ff_.reset(size_t(2) * B * c.n_ff * 4, "feed-forward activations");
  size_t ws = 0;
  auto need = [&](const QMatrix& m) { ws = std::max(ws, matmul_workspace_bytes(m.type, m.cols, B)); };
  need(w_.output);
  for (const LayerWeights& l : w_.layers) {
    for (const QMatrix* m : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) need(*m);
  }
  workspace_.reset(std::max<size_t>(ws, 64), "matmul workspace");
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
  SELFEXT_CHECK(c.kv_dtype == DType::kFloat16 || c.kv_dtype == DType::kFloat32, ArgumentError,
                "the KV cache type must be float16 or float32");
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

int64_t Model::plan_bytes(const ModelConfig& c) {
  const int64_t B = c.n_batch;
  int64_t bytes = int64_t(c.n_ctx) * (c.rope_dim / 2) * 2 * 4;
  bytes += 2 * int64_t(c.n_layer) * kvdim(c) * c.n_ctx * dtype_size(c.kv_dtype);
  bytes += B * c.n_embd * 4 + B * std::max<int64_t>(c.n_embd, qdim(c)) * 4 + B * qdim(c) * 4 +
           2 * B * kvdim(c) * 4 + 2 * B * c.n_ff * 4;
  bytes += B * std::max<int64_t>(c.n_ff, c.n_embd) * 2;  // quantized activations, roughly
  return bytes;
}

int64_t Model::allocated_bytes() const {
  return int64_t(rope_table_.bytes() + k_cache_.bytes() + v_cache_.bytes() + x_.bytes() + xb_.bytes() + q_.bytes() +
                 kv_new_.bytes() + ff_.bytes() + workspace_.bytes());
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

void Model::forward_chunk(const int32_t* tokens, int64_t n, float* logits, bool all_logits,
                          const std::atomic<bool>* cancel) {
  const ModelConfig& c = cfg_;
  ThreadPool& pool = *pool_;
  const int64_t E = c.n_embd, QD = qdim(c), KD = kvdim(c), F = c.n_ff;
  float* x = x_.as<float>();
  float* xb = xb_.as<float>();
  float* q = q_.as<float>();
  float* kn = kv_new_.as<float>();
  float* vn = kn + c.n_batch * KD;
  float* gate = ff_.as<float>();
  float* up = gate + c.n_batch * F;
  void* ws = workspace_.data();
  const int64_t pos0 = n_past_;

  // Embedding rows, dequantized.
  pool.parallel_for(n, [&](int64_t t) {
    const auto* row = static_cast<const uint8_t*>(w_.token_embd.data) + int64_t(tokens[t]) * w_.token_embd.row_bytes;
    dequantize_row_cpu(w_.token_embd.type, row, x + t * E, E);
  });

  auto norm = [&](const float* in, const float* weight, float* out) {
    RmsNormParams p{in, weight, out, n, E, E, E, c.rms_eps, nullptr};
    rms_norm_cpu<float>(p, pool);
  };
  auto add_bias = [&](float* y, const float* b, int64_t dim) {
    if (!b) return;
    for (int64_t t = 0; t < n; ++t)
      for (int64_t i = 0; i < dim; ++i) y[t * dim + i] += b[i];
  };

  const int esz = dtype_size(c.kv_dtype);
  for (int il = 0; il < c.n_layer; ++il) {
    if (cancel && cancel->load(std::memory_order_relaxed)) throw Cancelled("interrupted");
    const LayerWeights& l = w_.layers[il];
    // --- attention ---
    norm(x, l.attn_norm, xb);
    matmul_cpu(l.wq, xb, n, E, q, QD, ws, pool);
    matmul_cpu(l.wk, xb, n, E, kn, KD, ws, pool);
    matmul_cpu(l.wv, xb, n, E, vn, KD, ws, pool);
    add_bias(q, l.bq, QD);
    add_bias(kn, l.bk, KD);
    add_bias(vn, l.bv, KD);

    // K (un-rotated: SelfExtend needs two positions per key) and V into the cache, layout
    // (layer, kv_head, n_ctx, head_dim).
    uint8_t* kc = k_cache_.as<uint8_t>() + size_t(il) * KD * c.n_ctx * esz;
    uint8_t* vc = v_cache_.as<uint8_t>() + size_t(il) * KD * c.n_ctx * esz;
    pool.parallel_for(c.n_head_kv, [&](int64_t h) {
      for (int64_t t = 0; t < n; ++t) {
        const size_t off = (size_t(h) * c.n_ctx + pos0 + t) * c.head_dim;
        const float* ks = kn + t * KD + h * c.head_dim;
        const float* vs = vn + t * KD + h * c.head_dim;
        if (c.kv_dtype == DType::kFloat16) {
          auto* kd = reinterpret_cast<f16*>(kc) + off;
          auto* vd = reinterpret_cast<f16*>(vc) + off;
          for (int d = 0; d < c.head_dim; ++d) {
            kd[d] = from_float<f16>(ks[d]);
            vd[d] = from_float<f16>(vs[d]);
          }
        } else {
          std::memcpy(reinterpret_cast<float*>(kc) + off, ks, c.head_dim * 4);
          std::memcpy(reinterpret_cast<float*>(vc) + off, vs, c.head_dim * 4);
        }
      }
    });

    AttentionParams ap;
    ap.q = q;
    ap.k = kc;
    ap.v = vc;
    ap.out = xb;
    ap.q_dtype = DType::kFloat32;
    ap.kv_dtype = c.kv_dtype;
    ap.out_dtype = DType::kFloat32;
    ap.q_stride_t = QD;
    ap.q_stride_h = c.head_dim;
    ap.k_stride_t = ap.v_stride_t = c.head_dim;
    ap.k_stride_h = ap.v_stride_h = c.n_ctx * c.head_dim;
    ap.out_stride_t = QD;
    ap.out_stride_h = c.head_dim;
    ap.T_q = n;
    ap.T_k = pos0 + n;
    ap.n_heads = c.n_head;
    ap.n_kv_heads = c.n_head_kv;
    ap.head_dim = c.head_dim;
    ap.scale = float(1.0 / std::sqrt(double(c.head_dim)));
    ap.group = c.group;
    ap.window = c.window;
    ap.rope_table = rope_table_.as<float>();
    ap.rope_n_pos = c.n_ctx;
    ap.rope_dim = c.rope_dim;
    ap.rope_style = c.rope_style;
    if (c.cope) {
      ap.rope_table = c.rope_dim > 0 ? rope_table_.as<float>() : nullptr;
      ap.pos_emb = l.cope_pos;
      ap.npos_max = c.npos_max;
      ap.pe_stride_h = c.cope_per_head ? int64_t(c.npos_max) * c.head_dim : 0;
      ap.scale_pos_logits = c.cope_scale_pos_logits;
      cope_attention_cpu(ap, pool);
    } else {
      self_extend_attention_cpu(ap, pool);
    }

    // Output projection straight into the residual: x += attn · Wo^T (via a temporary in q).
    matmul_cpu(l.wo, xb, n, QD, q, E, ws, pool);
    for (int64_t i = 0; i < n * E; ++i) x[i] += q[i];

    // --- feed-forward (SwiGLU) ---
    norm(x, l.ffn_norm, xb);
    matmul_cpu(l.w_gate, xb, n, E, gate, F, ws, pool);
    matmul_cpu(l.w_up, xb, n, E, up, F, ws, pool);
    pool.parallel_for(n, [&](int64_t t) { swiglu(gate + t * F, up + t * F, F); });
    matmul_cpu(l.w_down, gate, n, F, q, E, ws, pool);
    for (int64_t i = 0; i < n * E; ++i) x[i] += q[i];
  }
  // The chunk is complete: only now does the cache grow (an interrupted chunk leaves it as it was).
  n_past_ = pos0 + n;

  if (!logits) return;
  const int64_t first = all_logits ? 0 : n - 1;
  const int64_t rows = n - first;
  RmsNormParams p{x + first * E, w_.output_norm, xb, rows, E, E, E, c.rms_eps, nullptr};
  rms_norm_cpu<float>(p, pool);
  matmul_cpu(w_.output, xb, rows, E, logits, c.n_vocab, ws, pool);
}

}  // namespace selfext
