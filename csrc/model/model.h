// The llama-family forward pass (llama, qwen2) over a KV cache that stores K before RoPE.
// Python owns files, tokens and sampling; this owns every loop over model-sized data. One call per
// prefill chunk or decode step.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "attention/params.h"
#include "attention/rope.h"
#include "core/aligned_buffer.h"
#include "core/array.h"
#include "core/thread_pool.h"
#include "quant/matmul.h"

namespace selfext {

struct LayerWeights {
  const float* attn_norm = nullptr;  // (n_embd,)
  QMatrix wq, wk, wv, wo;            // (n_head*head_dim, n_embd), (n_kv*head_dim, n_embd) x2, (n_embd, n_head*head_dim)
  const float* bq = nullptr;         // qwen2 biases, or null: (n_head*head_dim,), (n_kv*head_dim,) x2
  const float* bk = nullptr;
  const float* bv = nullptr;
  const float* cope_pos = nullptr;   // CoPE models: (npos_max, head_dim), or (n_head, npos_max, head_dim) per head
  const float* ffn_norm = nullptr;   // (n_embd,)
  QMatrix w_gate, w_up, w_down;      // (n_ff, n_embd) x2, (n_embd, n_ff)
};

struct ModelWeights {
  QMatrix token_embd;                 // (n_vocab, n_embd)
  const float* output_norm = nullptr; // (n_embd,)
  QMatrix output;                     // (n_vocab, n_embd); token_embd when tied
  std::vector<LayerWeights> layers;
};

struct ModelConfig {
  int n_layer = 0, n_embd = 0, n_head = 0, n_head_kv = 0, head_dim = 0, n_ff = 0, n_vocab = 0;
  float rms_eps = 1e-5f;
  RopeStyle rope_style = RopeStyle::kNorm;
  int rope_dim = 0;
  std::vector<double> inv_freq;  // (rope_dim/2,), from python/selfext_native/rope.py
  double mscale = 1.0;           // RoPE magnitude factor (YaRN)
  int64_t n_ctx = 0;             // KV cache length
  int64_t group = 1, window = 1; // SelfExtend; group 1 = off
  // Contextual position encoding (selfext-cope files): attention is CoPE instead of SelfExtend, after
  // RoPE at the normal positions when rope_dim > 0.
  bool cope = false;
  int npos_max = 0;
  bool cope_per_head = false;
  bool cope_scale_pos_logits = false;
  DType kv_dtype = DType::kFloat16;
  int64_t n_batch = 512;         // tokens per prefill chunk: bounds scratch memory
  int n_threads = 1;

  int64_t q_dim() const { return int64_t(n_head) * head_dim; }     // width of Q (and of the attention output)
  int64_t kv_dim() const { return int64_t(n_head_kv) * head_dim; }  // width of K and of V
};

// One layer's attention call over the cache layout both backends use: q and out (n, n_head, head_dim)
// rows of width q_dim; k and v this layer's (n_kv, n_ctx, head_dim) cache, K before RoPE; the n queries
// end at T_k; scale 1/sqrt(head_dim). SelfExtend's G and W and the model's RoPE table (n_ctx positions)
// are filled in; dtypes, CoPE fields and the stream are the caller's.
AttentionParams layer_attention_params(const ModelConfig& c, const void* q, const void* k, const void* v, void* out,
                                       int64_t n, int64_t T_k, const float* rope_table);

// What both backends share: the validated config and weights, the cache length, and the chunk loop.
// The CPU implementation is ModelCpu below; the CUDA one (model_cuda.h) uploads the weights once.
class Model {
 public:
  virtual ~Model() = default;

  const ModelConfig& config() const { return cfg_; }
  int64_t n_past() const { return n_past_; }
  // Forget cached positions >= n (n <= n_past): the next forward continues at position n.
  void truncate(int64_t n);
  // Changing G/W keeps the cache but makes it inexact for layers >= 1 (their K/V depend on G/W);
  // callers re-prefill. Validated here.
  void set_self_extend(int64_t group, int64_t window);

  // Runs tokens[0..n) at positions n_past..n_past+n-1, in chunks of n_batch, and appends them to the
  // cache. logits (host memory): (n, n_vocab) if all_logits, else (1, n_vocab) for the last token; may
  // be null. cancel, when set by another thread, stops between layers/chunks: the cache keeps the last
  // complete chunk and Cancelled is thrown.
  void forward(const int32_t* tokens, int64_t n, float* logits, bool all_logits,
               const std::atomic<bool>* cancel = nullptr);

  // Bytes this object allocated (KV cache + scratch + tables; on CUDA also the weights), on its device.
  virtual int64_t allocated_bytes() const = 0;
  // How a decode step (one token) runs here: "cpu"; on CUDA "megakernel", "graphs-fused", "graphs" or
  // "eager" (tests and benchmarks report it; environment switches choose it).
  virtual std::string decode_path() const { return "cpu"; }

 protected:
  Model(ModelConfig config, ModelWeights weights);
  // One chunk of n <= n_batch tokens at positions n_past_..; sets n_past_ only when it completes.
  virtual void forward_chunk(const int32_t* tokens, int64_t n, float* logits, bool all_logits,
                             const std::atomic<bool>* cancel) = 0;

  ModelConfig cfg_;
  ModelWeights w_;
  int64_t n_past_ = 0;

 private:
  void validate() const;
};

class ModelCpu final : public Model {
 public:
  ModelCpu(ModelConfig config, ModelWeights weights);
  int64_t allocated_bytes() const override;
  static int64_t plan_bytes(const ModelConfig& cfg);

 private:
  void forward_chunk(const int32_t* tokens, int64_t n, float* logits, bool all_logits,
                     const std::atomic<bool>* cancel) override;

  std::unique_ptr<ThreadPool> pool_;
  AlignedBuffer rope_table_;         // (n_ctx, rope_dim/2, 2) float
  AlignedBuffer k_cache_, v_cache_;  // (n_layer, n_kv, n_ctx, head_dim) of kv_dtype; K before RoPE
  // Scratch for one chunk of n_batch tokens (float32).
  AlignedBuffer x_;      // (n_batch, n_embd) residual stream
  AlignedBuffer xb_;     // (n_batch, max(n_embd, n_head*head_dim)) normed input / attention output
  AlignedBuffer q_;      // (n_batch, max(n_head*head_dim, n_embd)) queries, then projection outputs
  AlignedBuffer kv_new_; // (2, n_batch, n_kv*head_dim) this chunk's K and V before they enter the cache
  AlignedBuffer ff_;     // (2, n_batch, n_ff) gate and up
  AlignedBuffer workspace_;  // quantized-activation scratch of matmul_cpu
};

}  // namespace selfext
