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

int64_t qdim(const ModelConfig& c) { return c.q_dim(); }
int64_t kvdim(const ModelConfig& c) { return c.kv_dim(); }

// SiLU(gate) * up, in place into gate.
void swiglu(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    gate[i] = g / (1.f + std::exp(-g)) * up[i];
  }
}

}  // namespace

ModelCpu::ModelCpu(ModelConfig config, ModelWeights weights) : Model(std::move(config), std::move(weights)) {
  SELFEXT_CHECK(cfg_.kv_dtype == DType::kFloat16 || cfg_.kv_dtype == DType::kFloat32, ArgumentError,
                "the KV cache type on the CPU must be f16 or f32, got ", dtype_name(cfg_.kv_dtype));
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

int64_t ModelCpu::plan_bytes(const ModelConfig& c) {
  const int64_t B = c.n_batch;
  int64_t bytes = int64_t(c.n_ctx) * (c.rope_dim / 2) * 2 * 4;
  bytes += 2 * int64_t(c.n_layer) * kvdim(c) * c.n_ctx * dtype_size(c.kv_dtype);
  bytes += B * c.n_embd * 4 + B * std::max<int64_t>(c.n_embd, qdim(c)) * 4 + B * qdim(c) * 4 +
           2 * B * kvdim(c) * 4 + 2 * B * c.n_ff * 4;
  bytes += B * std::max<int64_t>(c.n_ff, c.n_embd) * 2;  // quantized activations, roughly
  return bytes;
}

int64_t ModelCpu::allocated_bytes() const {
  return int64_t(rope_table_.bytes() + k_cache_.bytes() + v_cache_.bytes() + x_.bytes() + xb_.bytes() + q_.bytes() +
                 kv_new_.bytes() + ff_.bytes() + workspace_.bytes());
}

void ModelCpu::forward_chunk(const int32_t* tokens, int64_t n, float* logits, bool all_logits,
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

    AttentionParams ap = layer_attention_params(c, q, kc, vc, xb, n, pos0 + n, rope_table_.as<float>());
    ap.q_dtype = DType::kFloat32;
    ap.kv_dtype = c.kv_dtype;
    ap.out_dtype = DType::kFloat32;
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
