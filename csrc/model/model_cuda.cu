// The forward pass on CUDA. Per layer, on the model's own stream:
//   RMSNorm -> Q,K,V (one quantized product when the three share a type: their rows are uploaded
//   back to back) -> qkv_post (biases; K, V into the cache, K un-rotated for SelfExtend; Q to the cache
//   dtype) -> SelfExtend or CoPE attention (attention/*_cuda.cu) -> output projection added into the
//   residual (the product's accumulate epilogue) -> RMSNorm -> gate and up (one product when they share
//   a type) -> SwiGLU -> down projection added into the residual.
// A CoPE model with RoPE rotates q and k at their normal positions in qkv_post and caches K rotated:
// CoPE has no second position per key, so nothing needs the un-rotated K.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdlib>
#include <map>
#include <tuple>
#include <vector>

#include "attention/attention_cuda.h"
#include "attention/params.h"
#include "attention/rope.h"
#include "core/cuda_check.cuh"
#include "core/cuda_launch.cuh"
#include "core/cuda_info.h"
#include "core/half.h"
#include "model/decode_cluster.cuh"
#include "model/decode_mega.cuh"
#include "model/model_cuda.h"
#include "model/rms_norm.h"
#include "quant/formats.h"
#include "quant/matmul_cuda.h"

namespace selfext {
namespace {

constexpr int64_t kAlign = 256;
constexpr int64_t kLogitRows = 16;  // logits computed and copied back this many rows at a time

int64_t align_up(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
int64_t matrix_bytes(const QMatrix& m) { return m.rows * m.row_bytes; }

// A device allocation, freed on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void reset(int64_t bytes, const char* what) {
    if (ptr_) SELFEXT_CUDA_CHECK(cudaFree(ptr_));
    ptr_ = nullptr;
    bytes_ = 0;
    if (bytes <= 0) return;
    const cudaError_t err = cudaMalloc(&ptr_, size_t(bytes));
    if (err != cudaSuccess) {
      cudaGetLastError();
      ptr_ = nullptr;
      throw OutOfMemoryError(detail::concat("CUDA could not allocate ", bytes >> 20, " MiB for ", what, " (",
                                            cudaGetErrorString(err), ")"));
    }
    bytes_ = bytes;
  }
  template <typename U>
  U* as(int64_t byte_offset = 0) const { return reinterpret_cast<U*>(static_cast<char*>(ptr_) + byte_offset); }
  int64_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  int64_t bytes_ = 0;
};

// Page-locked host memory (the logits and token transfers), freed on destruction.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer() {
    if (ptr_) cudaFreeHost(ptr_);
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  void reset(int64_t bytes) {
    if (ptr_) SELFEXT_CUDA_CHECK(cudaFreeHost(ptr_));
    ptr_ = nullptr;
    if (bytes > 0) SELFEXT_CUDA_CHECK(cudaMallocHost(&ptr_, size_t(bytes)));
  }
  template <typename U>
  U* as() const { return static_cast<U*>(ptr_); }

 private:
  void* ptr_ = nullptr;
};

// Makes the model's device current for the lifetime of the guard.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) : prev_(cuda_exchange_device(device)), device_(device) {}
  ~DeviceGuard() {
    if (prev_ != device_) cudaSetDevice(prev_);
  }

 private:
  int prev_, device_;
};

// --- elementwise kernels ---------------------------------------------------------------------------

struct QkvPostArgs {
  const float* qkv;  // (n, ld): [q (QD) | k (KD) | v (KD)] per token, float32, before biases
  int64_t ld;
  const float *bq, *bk, *bv;  // (QD,), (KD,), (KD,) or null
  void* q_out;                // (n, QD) cache dtype
  void *k_cache, *v_cache;    // this layer's (n_kv, n_ctx, head_dim)
  int64_t n_ctx, pos0;
  const int32_t* pos_dev;  // when set (decode graphs), pos0 is read here at run time
  int n_head, n_kv, head_dim;
  const float* rope_table;  // rotate q and k at their normal positions (CoPE with RoPE), else null
  int rope_dim;
  RopeStyle rope_style;
};

template <typename T>
__global__ void qkv_post_kernel(const QkvPostArgs a) {
  kernel_prologue();
  const int64_t t = blockIdx.x;
  const int hd = a.head_dim;
  const int QD = a.n_head * hd, KD = a.n_kv * hd;
  const float* row = a.qkv + t * a.ld;
  const int64_t pos = (a.pos_dev ? int64_t(*a.pos_dev) : a.pos0) + t;
  // grid (tokens, element blocks): one element per thread (a decode step's single token used to be one
  // block looping over all q/k/v elements, 9.5 us per layer at Llama-3-8B's 6144)
  for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < QD + 2 * KD; e += gridDim.y * blockDim.x) {
    const int seg = e < QD ? 0 : (e < QD + KD ? 1 : 2);
    const int local = e - (seg == 0 ? 0 : (seg == 1 ? QD : QD + KD));
    const float* bias = seg == 0 ? a.bq : (seg == 1 ? a.bk : a.bv);
    const int d = local % hd;
    float val = row[e] + (bias ? bias[local] : 0.f);
    if (a.rope_table && seg < 2 && d < a.rope_dim) {
      int p, ia, ib;
      bool first;
      rope_pair_of(d, a.rope_dim, a.rope_style, p, first);
      rope_pair(p, a.rope_dim, a.rope_style, ia, ib);
      const int head0 = e - d, lhead0 = local - d;
      float xa = row[head0 + ia] + (bias ? bias[lhead0 + ia] : 0.f);
      float xb = row[head0 + ib] + (bias ? bias[lhead0 + ib] : 0.f);
      const float* cs = a.rope_table + (pos * (a.rope_dim / 2) + p) * 2;
      rope_rotate(xa, xb, cs[0], cs[1]);
      val = first ? xa : xb;
    }
    if (seg == 0) {
      static_cast<T*>(a.q_out)[t * QD + local] = from_float<T>(val);
    } else {
      const int h = local / hd;
      T* cache = static_cast<T*>(seg == 1 ? a.k_cache : a.v_cache);
      cache[(int64_t(h) * a.n_ctx + pos) * hd + d] = from_float<T>(val);
    }
  }
}

template <typename T>
__global__ void to_float_kernel(const T* __restrict__ in, float* __restrict__ out, int64_t n) {
  kernel_prologue();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = to_float(in[i]);
}

// out[t, i] = SiLU(ff[t, i]) * ff[t, F + i]: ff holds gate and up side by side, (n, 2F).
__global__ void swiglu_kernel(const float* __restrict__ ff, float* __restrict__ out, int64_t n, int64_t F) {
  kernel_prologue();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * F) return;
  const int64_t t = i / F, c = i % F;
  const float g = ff[t * 2 * F + c];
  out[i] = g / (1.f + expf(-g)) * ff[t * 2 * F + F + c];
}

unsigned blocks_for(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }

// --- the model -------------------------------------------------------------------------------------

struct DeviceLayer {
  const float *attn_norm = nullptr, *ffn_norm = nullptr;
  const float *bq = nullptr, *bk = nullptr, *bv = nullptr;
  const void* cope_pos = nullptr;  // cache dtype, (npos_max, head_dim) or (n_head, npos_max, head_dim)
  QMatrix wq, wk, wv, wqkv;        // wqkv.data: Q, K, V rows back to back (shared type), else null
  QMatrix wo, w_gate, w_up, w_gate_up, w_down;
};

// Scratch of one chunk, by part: float32 unless noted. B = n_batch.
struct ScratchLayout {
  int64_t ids, pos, x, xb, qkv, q16, att16, ff, ffa, logits, matmul_ws, xq, attn_ws, attn_decode_ws, attn_decode_bytes,
      mega_sync, total;
};

ScratchLayout scratch_layout(const ModelConfig& c, const ModelWeights& w) {
  const int64_t B = c.n_batch, E = c.n_embd, QD = c.q_dim(), KD = c.kv_dim(), F = c.n_ff;
  const int esz = dtype_size(c.kv_dtype);
  ScratchLayout s{};
  int64_t off = 0;
  auto take = [&](int64_t bytes) {
    const int64_t at = off;
    off += align_up(std::max<int64_t>(bytes, 1));
    return at;
  };
  s.ids = take(B * 4);
  s.pos = take(2 * 4);  // decode graphs: (position of the token, key count)
  s.x = take(B * E * 4);
  s.xb = take(B * std::max(E, QD) * 4);
  s.qkv = take(B * (QD + 2 * KD) * 4);
  s.q16 = take(B * QD * esz);
  s.att16 = take(B * QD * esz);
  s.ff = take(B * 2 * F * 4);
  s.ffa = take(B * F * 4);
  s.logits = take(std::min(B, kLogitRows) * int64_t(c.n_vocab) * 4);
  size_t ws = 0;
  auto need = [&](const QMatrix& m) { ws = std::max(ws, matmul_cuda_workspace_bytes(m.type, m.cols, B)); };
  need(w.output);
  for (const LayerWeights& l : w.layers)
    for (const QMatrix* m : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) need(*m);
  s.matmul_ws = take(int64_t(ws));
  // One decode row prepared for the 16-bit-activation products (matvec_q_cuda).
  s.xq = take(int64_t(activation_q_bytes(std::max({E, QD, F}))));
  // The attention kernels take their split-K partial states from the stream-ordered pool; the plan
  // counts the largest call (a full chunk at the end of the cache, or one token over all of it).
  AttentionParams p;
  p.n_heads = c.n_head;
  p.n_kv_heads = c.n_head_kv;
  p.head_dim = c.head_dim;
  p.rope_dim = 0;  // the model passes its own RoPE table: none is built per call
  p.npos_max = c.npos_max;
  int64_t attn = 0;
  for (int64_t tq : {int64_t(1), B}) {
    p.T_q = tq;
    p.T_k = c.n_ctx;
    attn = std::max(attn, c.cope ? cope_attention_cuda_workspace_bytes(p) : self_extend_attention_cuda_workspace_bytes(p));
  }
  s.attn_ws = attn;
  // Decode steps (SelfExtend) take their split-K workspace from the scratch instead: no per-step
  // allocation (no memory nodes in the decode graphs).
  s.attn_decode_bytes = 0;
  if (!c.cope) {
    p.T_q = 1;
    p.T_k = c.n_ctx;
    s.attn_decode_bytes = self_extend_attention_cuda_workspace_bytes(p);
  }
  s.attn_decode_ws = take(s.attn_decode_bytes);
  s.mega_sync = take(sizeof(mega::MegaSync));  // zeroed once; every megakernel launch leaves it zero
  s.total = off;
  return s;
}

class ModelCuda final : public Model {
 public:
  ModelCuda(ModelConfig config, ModelWeights weights, int device);
  ~ModelCuda() override {
    for (auto& kv : graphs_) cudaGraphExecDestroy(kv.second);
    if (stream_) {
      cudaStreamSynchronize(stream_);
      cudaStreamDestroy(stream_);
    }
  }
  int64_t allocated_bytes() const override {
    return weights_.bytes() + k_cache_.bytes() + v_cache_.bytes() + scratch_.bytes() + rope_table_.bytes();
  }
  std::string decode_path() const override {
    return !use_graphs_ ? "eager" : mega_ ? "megakernel" : cluster_ ? "graphs-cluster" : fuse_decode_ ? "graphs-fused" : "graphs";
  }

 private:
  void forward_chunk(const int32_t* tokens, int64_t n, float* logits, bool all_logits,
                     const std::atomic<bool>* cancel) override;
  void upload(const CudaModelPlan& plan);
  template <typename T>
  void layer(int il, int64_t n, int64_t pos0, int64_t graph_bound);
  void layers(int il, int64_t n, int64_t pos0, int64_t graph_bound) {
    if (cfg_.kv_dtype == DType::kFloat16)
      layer<f16>(il, n, pos0, graph_bound);
    else
      layer<bf16>(il, n, pos0, graph_bound);
  }
  // The last row of x through the final norm and the head, into host_logits_ (rows r0 .. r0+rows-1).
  void head(int64_t r0, int64_t rows);
  void decode_graphed(int32_t token, float* logits);
  // The decode step as the megakernel's phases (the fused path's products, attention, merge and head).
  template <typename T>
  void mega_phases(mega::DecodeMega& m, int64_t bound);
  bool mega_eligible() const;
  void sync() { SELFEXT_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

  int device_;
  cudaStream_t stream_ = nullptr;
  ScratchLayout sl_;
  DeviceBuffer weights_, k_cache_, v_cache_, scratch_, rope_table_;
  PinnedBuffer host_ids_, host_pos_, host_logits_;
  // Decode graphs, captured on first use, one per (key-count bucket, G, W): see decode_graphed.
  bool use_graphs_ = true;
  // Decode rows (n = 1) with RMSNorm, SwiGLU and the attention output's widening folded into the
  // products' loads (matvec_cuda_fused): four kernels fewer per layer, but every block of a product
  // then re-reads (and for RMSNorm re-reduces) the whole input row, which costs more than the launches
  // saved once the rows are wide. Measured on an H200 (bench/generate.py --device cuda --unfused,
  // 2026-12-02): SmolLM2 (n_embd 576) decodes 742 t/s fused vs 660 unfused; Llama-3-8B shapes (n_embd
  // 4096) 136 vs 180 (Q4_K_M) and 147 vs 202 (Q4_0). So fused up to n_embd 1024 (kFuseMaxEmbd);
  // SELFEXT_CUDA_FUSED=0 / =1 force either path (tests/test_llm_cuda.py compares the two).
  static constexpr int64_t kFuseMaxEmbd = 1024;
  bool fuse_decode_ = false;
  // Unfused decode rows: the step before each product group (RMSNorm, the attention output's widening,
  // SwiGLU) is prepare_activation_cuda, which writes the float row and its 16-bit codes, and the Q4_0 /
  // Q4_K products run matvec_q_cuda on the codes (SELFEXT_CUDA_MVQ=0 turns it off).
  bool decode_q_ = false;
  // Decode rows of SelfExtend models: the Q/K/V products store through QkvScatter (bias, rounding, the
  // query row and the cache writes of qkv_post, the same bits) and qkv_post is not launched: one kernel
  // fewer per layer. Measured on an H200 (2026-12-02, scripts/device_decode_ab.sh, two alternating
  // rounds): SmolLM2-shaped steps (fused) 1.089 / 1.106 -> 1.085 / 1.065 ms; Llama-3-8B Q4_K_M shapes
  // (unfused, three separate products there) 3.007 / 3.018 -> 3.084 / 3.086 ms. So on by default for
  // the fused path only; SELFEXT_CUDA_QKV_STORE=0 / 1 forces it off / on.
  bool qkv_store_ = false;
  // Decode steps of the fused path as one persistent kernel (model/decode_mega.cuh): SELFEXT_CUDA_MEGA=1
  // (opt-in until measured on a GPU), where mega_eligible(); its phase lists per decode graph.
  bool mega_ = false;
  int mega_blocks_ = 0;
  std::map<std::tuple<int64_t, int64_t, int64_t>, std::unique_ptr<mega::DecodeMega>> megas_;
  // Decode steps of small Q4_1 models in one thread-block cluster (model/decode_cluster.cuh), for caches of
  // up to cluster_max_keys_ keys (longer ones take the graphed kernels, which use the whole GPU for the
  // attention). SELFEXT_CUDA_CLUSTER=0 turns it off; SELFEXT_CUDA_CLUSTER_MAX_KEYS sets the bound,
  // SELFEXT_CUDA_CLUSTER_KV_KEYS the keys per split staged at a time (tests: several chunks at short caches).
  std::unique_ptr<clus::ClusterDecode> cluster_;
  int64_t cluster_max_keys_ = 0;
  void init_cluster();
  std::map<std::tuple<int64_t, int64_t, int64_t>, cudaGraphExec_t> graphs_;
  QMatrix token_embd_, output_;
  const float* output_norm_ = nullptr;
  std::vector<DeviceLayer> layers_;
};

// The weight bytes as uploaded: every matrix and vector once (a tied output head is the embedding),
// each 256-byte aligned except K and V, which follow Q directly when the three share a type (and up
// follows gate likewise), so that one product covers them. CoPE tables are stored in the cache dtype.
struct WeightLayout {
  std::map<const void*, int64_t> offset;  // host pointer -> offset in the device arena
  int64_t total = 0;
};

bool same_type(const QMatrix& a, const QMatrix& b) { return a.type == b.type && a.cols == b.cols; }

WeightLayout weight_layout(const ModelConfig& c, const ModelWeights& w) {
  WeightLayout L;
  auto place = [&](const void* host, int64_t bytes, bool aligned) {
    if (!host || L.offset.count(host)) return;
    if (aligned) L.total = align_up(L.total);
    L.offset[host] = L.total;
    L.total += bytes;
  };
  const int esz = dtype_size(c.kv_dtype);
  place(w.token_embd.data, matrix_bytes(w.token_embd), true);
  place(w.output.data, matrix_bytes(w.output), true);
  place(w.output_norm, c.n_embd * 4, true);
  for (const LayerWeights& l : w.layers) {
    const bool qkv = same_type(l.wq, l.wk) && same_type(l.wq, l.wv);
    place(l.wq.data, matrix_bytes(l.wq), true);
    place(l.wk.data, matrix_bytes(l.wk), !qkv);
    place(l.wv.data, matrix_bytes(l.wv), !qkv);
    place(l.wo.data, matrix_bytes(l.wo), true);
    const bool gu = same_type(l.w_gate, l.w_up);
    place(l.w_gate.data, matrix_bytes(l.w_gate), true);
    place(l.w_up.data, matrix_bytes(l.w_up), !gu);
    place(l.w_down.data, matrix_bytes(l.w_down), true);
    place(l.attn_norm, c.n_embd * 4, true);
    place(l.ffn_norm, c.n_embd * 4, true);
    place(l.bq, c.q_dim() * 4, true);
    place(l.bk, c.kv_dim() * 4, true);
    place(l.bv, c.kv_dim() * 4, true);
    if (c.cope) place(l.cope_pos, int64_t(c.cope_per_head ? c.n_head : 1) * c.npos_max * c.head_dim * esz, true);
  }
  L.total = align_up(L.total);
  return L;
}

}  // namespace

CudaModelPlan cuda_model_plan(const ModelConfig& c, const ModelWeights& w) {
  CudaModelPlan p;
  p.weights = weight_layout(c, w).total;
  p.kv_cache = 2 * int64_t(c.n_layer) * c.kv_dim() * c.n_ctx * dtype_size(c.kv_dtype);
  const ScratchLayout s = scratch_layout(c, w);
  p.scratch = s.total + s.attn_ws + align_up(c.n_ctx * (c.rope_dim / 2) * 2 * 4);
  return p;
}

namespace {

ModelCuda::ModelCuda(ModelConfig config, ModelWeights weights, int device)
    : Model(std::move(config), std::move(weights)), device_(device) {
  const ModelConfig& c = cfg_;
  SELFEXT_CHECK(c.kv_dtype == DType::kFloat16 || c.kv_dtype == DType::kBFloat16, ArgumentError,
                "the KV cache type on CUDA must be f16 or bf16, got ", dtype_name(c.kv_dtype));
  SELFEXT_CHECK(c.head_dim == 64 || c.head_dim == 80 || c.head_dim == 96 || c.head_dim == 128, ArgumentError,
                "head_dim ", c.head_dim, " is not supported by the CUDA attention kernels (64, 80, 96, 128); use "
                "device='cpu'");
  SELFEXT_CHECK(c.rope_dim / 2 <= kMaxRopePairs, ArgumentError, "rope_dim ", c.rope_dim, " exceeds ",
                2 * kMaxRopePairs);
  require_cuda();
  int n_devices = 0;
  SELFEXT_CUDA_CHECK(cudaGetDeviceCount(&n_devices));
  SELFEXT_CHECK(device >= 0 && device < n_devices, ArgumentError, "CUDA device ", device, " does not exist (",
                n_devices, " found)");
  DeviceGuard guard(device_);

  // The memory plan, checked against the free device memory before anything is allocated.
  const CudaModelPlan plan = cuda_model_plan(c, w_);
  size_t free_b = 0, total_b = 0;
  SELFEXT_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  const int64_t reserve = 64 << 20;  // the CUDA context's own growth, the attention pool's rounding
  if (plan.total() + reserve > int64_t(free_b)) {
    throw OutOfMemoryError(detail::concat(
        "the model needs ", (plan.total() + reserve) >> 20, " MiB on cuda:", device_, " (weights ", plan.weights >> 20,
        " MiB, KV cache ", plan.kv_cache >> 20, " MiB for n_ctx=", c.n_ctx, ", scratch ", plan.scratch >> 20,
        " MiB for n_batch=", c.n_batch, ") but only ", int64_t(free_b) >> 20, " of ", int64_t(total_b) >> 20,
        " MiB are free; lower n_ctx or n_batch, or use a smaller quantization"));
  }
  SELFEXT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  upload(plan);

  const size_t cache_bytes = size_t(c.n_layer) * c.kv_dim() * c.n_ctx * dtype_size(c.kv_dtype);
  k_cache_.reset(int64_t(cache_bytes), "the K cache");
  v_cache_.reset(int64_t(cache_bytes), "the V cache");
  sl_ = scratch_layout(c, w_);
  scratch_.reset(sl_.total, "activations");
  if (c.rope_dim > 0) {
    rope_table_.reset(c.n_ctx * (c.rope_dim / 2) * 2 * 4, "the RoPE table");
    build_rope_table_cuda(c.inv_freq.data(), c.rope_dim / 2, c.mscale, c.n_ctx, rope_table_.as<float>(), stream_);
  }
  host_ids_.reset(c.n_batch * 4);
  host_pos_.reset(2 * 4);
  // CoPE's kernels take the key count by value, so CoPE models decode without graphs.
  const char* env = std::getenv("SELFEXT_CUDA_GRAPHS");
  use_graphs_ = !c.cope && !(env && std::strcmp(env, "0") == 0);
  const char* fenv = std::getenv("SELFEXT_CUDA_FUSED");
  fuse_decode_ = fenv && (std::strcmp(fenv, "0") == 0 || std::strcmp(fenv, "1") == 0) ? fenv[0] == '1'
                                                                                      : c.n_embd <= kFuseMaxEmbd;
  host_logits_.reset(std::min<int64_t>(c.n_batch, kLogitRows) * c.n_vocab * 4);
  bool any_q = matvec_q_supported(output_);
  for (const DeviceLayer& l : layers_)
    for (const QMatrix* m : {&l.wqkv, &l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate_up, &l.w_gate, &l.w_up, &l.w_down})
      any_q = any_q || (m->data && matvec_q_supported(*m));
  decode_q_ = !fuse_decode_ && any_q && c.n_embd % 32 == 0 && c.q_dim() % 32 == 0 && c.n_ff % 32 == 0;
  const char* senv = std::getenv("SELFEXT_CUDA_QKV_STORE");
  qkv_store_ = !c.cope && (senv && (std::strcmp(senv, "0") == 0 || std::strcmp(senv, "1") == 0) ? senv[0] == '1'
                                                                                                : fuse_decode_);
  const char* menv = std::getenv("SELFEXT_CUDA_MEGA");
  mega_ = menv && std::strcmp(menv, "1") == 0 && mega_eligible();
  if (mega_) mega_blocks_ = mega::DecodeMega::grid_blocks();
  init_cluster();
  SELFEXT_CUDA_CHECK(cudaMemsetAsync(scratch_.as<char>(sl_.mega_sync), 0, sizeof(mega::MegaSync), stream_));
  sync();
}

void ModelCuda::init_cluster() {
  const ModelConfig& c = cfg_;
  const char* env = std::getenv("SELFEXT_CUDA_CLUSTER");
  if ((env && std::strcmp(env, "0") == 0) || !fuse_decode_ || !use_graphs_ || mega_ || c.cope || c.rope_dim <= 0)
    return;
  const char* kenv = std::getenv("SELFEXT_CUDA_CLUSTER_MAX_KEYS");
  cluster_max_keys_ = kenv ? std::atoll(kenv) : 2048;
  clus::Config cc;
  cc.n_layer = int(c.n_layer);
  cc.E = int(c.n_embd);
  cc.QD = int(c.q_dim());
  cc.KD = int(c.kv_dim());
  cc.F = int(c.n_ff);
  cc.H = int(c.n_head);
  cc.Hkv = int(c.n_head_kv);
  cc.D = int(c.head_dim);
  cc.n_ctx = c.n_ctx;
  cc.eps = c.rms_eps;
  cc.scale = float(1.0 / std::sqrt(double(c.head_dim)));
  cc.group = c.group;
  cc.window = c.window;
  cc.rope_table = rope_table_.as<float>();
  cc.rope_n_pos = c.n_ctx;
  cc.rope_dim = int(c.rope_dim);
  cc.style = c.rope_style;
  cc.bf16 = c.kv_dtype == DType::kBFloat16;
  if (const char* kk = std::getenv("SELFEXT_CUDA_CLUSTER_KV_KEYS")) cc.kv_keys = std::atoi(kk);
  std::vector<clus::LayerPtrs> lp;
  const size_t layer_elems = size_t(c.kv_dim()) * c.n_ctx;
  for (int il = 0; il < c.n_layer; ++il) {
    const DeviceLayer& l = layers_[size_t(il)];
    if (!l.wqkv.data || !l.w_gate.data || !l.w_up.data) return;
    for (const QMatrix* m : {&l.wqkv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) cc.types.push_back(m->type);
    const size_t off = size_t(il) * layer_elems * dtype_size(c.kv_dtype);
    lp.push_back(clus::LayerPtrs{l.wqkv.data, l.wo.data, l.w_gate.data, l.w_up.data, l.w_down.data, l.attn_norm,
                                 l.ffn_norm, l.bq, l.bk, l.bv, k_cache_.as<char>() + off, v_cache_.as<char>() + off});
  }
  if (!clus::why_not(cc).empty()) return;
  cluster_ = std::make_unique<clus::ClusterDecode>(cc, lp);
}

bool ModelCuda::mega_eligible() const {
  const ModelConfig& c = cfg_;
  const char* se_env = std::getenv("SELFEXT_CUDA_SE_DECODE");
  if (!fuse_decode_ || !use_graphs_ || c.cope || !qkv_store_ || c.rope_dim <= 0 || (se_env && std::strcmp(se_env, "0") == 0))
    return false;
  if (!(c.head_dim == 64 || c.head_dim == 128) || c.n_head % c.n_head_kv != 0 ||
      c.n_head / c.n_head_kv > attn_cuda::kDecMaxRep)
    return false;
  if (!mega::supported_type(output_.type)) return false;
  for (const DeviceLayer& l : layers_)
    for (const QMatrix* m : {&l.wqkv, &l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate_up, &l.w_gate, &l.w_up, &l.w_down})
      if (m->data && !mega::supported_type(m->type)) return false;
  return mega::device_supported();
}

void ModelCuda::upload(const CudaModelPlan& plan) {
  const ModelConfig& c = cfg_;
  const WeightLayout L = weight_layout(c, w_);
  weights_.reset(plan.weights, "the weights");
  char* base = weights_.as<char>();
  auto copy = [&](const void* host, int64_t bytes) {
    SELFEXT_CUDA_CHECK(cudaMemcpyAsync(base + L.offset.at(host), host, size_t(bytes), cudaMemcpyHostToDevice, stream_));
    return static_cast<const void*>(base + L.offset.at(host));
  };
  std::map<const void*, const void*> done;  // host -> device, so a tied head is copied once
  auto matrix = [&](const QMatrix& m) {
    QMatrix d = m;
    auto it = done.find(m.data);
    d.data = it != done.end() ? it->second : (done[m.data] = copy(m.data, matrix_bytes(m)));
    return d;
  };
  auto vec = [&](const float* host, int64_t n) -> const float* {
    return host ? static_cast<const float*>(copy(host, n * 4)) : nullptr;
  };
  token_embd_ = matrix(w_.token_embd);
  output_ = matrix(w_.output);
  output_norm_ = vec(w_.output_norm, c.n_embd);
  std::vector<std::vector<uint16_t>> keep;  // CoPE tables in the cache dtype, kept until the copies end
  for (const LayerWeights& l : w_.layers) {
    DeviceLayer d;
    d.attn_norm = vec(l.attn_norm, c.n_embd);
    d.ffn_norm = vec(l.ffn_norm, c.n_embd);
    d.bq = vec(l.bq, c.q_dim());
    d.bk = vec(l.bk, c.kv_dim());
    d.bv = vec(l.bv, c.kv_dim());
    d.wq = matrix(l.wq);
    d.wk = matrix(l.wk);
    d.wv = matrix(l.wv);
    d.wo = matrix(l.wo);
    d.w_gate = matrix(l.w_gate);
    d.w_up = matrix(l.w_up);
    d.w_down = matrix(l.w_down);
    auto follows = [](const QMatrix& a, const QMatrix& b) {
      return static_cast<const char*>(a.data) + matrix_bytes(a) == static_cast<const char*>(b.data);
    };
    if (same_type(l.wq, l.wk) && same_type(l.wq, l.wv) && follows(d.wq, d.wk) && follows(d.wk, d.wv)) {
      d.wqkv = d.wq;
      d.wqkv.rows = l.wq.rows + l.wk.rows + l.wv.rows;
    }
    if (same_type(l.w_gate, l.w_up) && follows(d.w_gate, d.w_up)) {
      d.w_gate_up = d.w_gate;
      d.w_gate_up.rows = l.w_gate.rows + l.w_up.rows;
    }
    if (c.cope) {
      const int64_t n = int64_t(c.cope_per_head ? c.n_head : 1) * c.npos_max * c.head_dim;
      keep.emplace_back(size_t(n));
      std::vector<uint16_t>& h = keep.back();
      for (int64_t i = 0; i < n; ++i)
        h[size_t(i)] = c.kv_dtype == DType::kFloat16 ? float_to_fp16(l.cope_pos[i]) : float_to_bf16(l.cope_pos[i]);
      SELFEXT_CUDA_CHECK(cudaMemcpyAsync(base + L.offset.at(l.cope_pos), h.data(), size_t(n) * 2,
                                         cudaMemcpyHostToDevice, stream_));
      d.cope_pos = base + L.offset.at(l.cope_pos);
    }
    layers_.push_back(d);
  }
  sync();  // the host sources (file map, converted tables) must outlive the copies
}

// graph_bound > 0: this is a decode step captured into a graph. The position and the key count come from
// the device ints at sl_.pos (written by the graph's first copy), and the attention is planned for
// graph_bound keys.
template <typename T>
void ModelCuda::layer(int il, int64_t n, int64_t pos0, int64_t graph_bound) {
  const ModelConfig& c = cfg_;
  const DeviceLayer& l = layers_[size_t(il)];
  const int64_t E = c.n_embd, QD = c.q_dim(), KD = c.kv_dim(), F = c.n_ff, QKVD = QD + 2 * KD;
  float* x = scratch_.as<float>(sl_.x);
  float* xb = scratch_.as<float>(sl_.xb);
  float* qkv = scratch_.as<float>(sl_.qkv);
  float* ff = scratch_.as<float>(sl_.ff);
  float* ffa = scratch_.as<float>(sl_.ffa);
  T* q16 = scratch_.as<T>(sl_.q16);
  T* att16 = scratch_.as<T>(sl_.att16);
  void* ws = scratch_.as<void>(sl_.matmul_ws);
  const size_t layer_elems = size_t(KD) * c.n_ctx;
  T* kc = k_cache_.as<T>() + size_t(il) * layer_elems;
  T* vc = v_cache_.as<T>() + size_t(il) * layer_elems;

  // Each product reads either the separate kernel's float output (plain: xb, ffa) or, fused, the step's
  // input through matvec_cuda_fused, which skips that kernel.
  const bool fuse = fuse_decode_ && n == 1;
  // decode_q: each elementwise step writes its float row and the 16-bit codes (xq) the Q4_0 / Q4_K
  // products read; the other products read the float row.
  const bool dq = decode_q_ && n == 1;
  void* xq = scratch_.as<void>(sl_.xq);
  auto product = [&](const QMatrix& w, const MatvecInput& fused_in, const float* plain_x, int64_t ldx, float* y,
                     int64_t ldy, bool accumulate, const QkvScatter* sc = nullptr) {
    if (fuse) matvec_cuda_fused(w, fused_in, y, accumulate, stream_, sc);
    else if (dq && matvec_q_supported(w)) matvec_q_cuda(w, xq, y, accumulate, stream_, sc);
    else matmul_cuda(w, plain_x, n, ldx, y, ldy, accumulate, ws, stream_, sc);
  };
  // The separate step before a product group, writing `out` (n rows of cols floats).
  auto step = [&](const MatvecInput& in, int64_t cols, float* out, auto&& plain) {
    if (fuse) return;
    if (dq) prepare_activation_cuda(in, cols, out, xq, stream_);
    else plain();
  };

  // --- attention ---
  const MatvecInput attn_in{MatvecInput::kRmsNorm, x, E, l.attn_norm, c.rms_eps};
  step(attn_in, E, xb, [&] { rms_norm_cuda<float>(RmsNormParams{x, l.attn_norm, xb, n, E, E, E, c.rms_eps, stream_}); });
  const int32_t* dpos = graph_bound > 0 ? scratch_.as<int32_t>(sl_.pos) : nullptr;
  // qkv_store_: the products do qkv_post's work in their stores (QkvScatter; row0 per product).
  const bool scatter = qkv_store_ && n == 1;
  QkvScatter sc{q16, kc, vc, l.bq, l.bk, l.bv, 0, int(QD), int(KD), int(c.head_dim), c.n_ctx, pos0, dpos,
                c.kv_dtype == DType::kBFloat16};
  auto part = [&](int64_t row0) {
    sc.row0 = row0;
    return scatter ? &sc : nullptr;
  };
  if (l.wqkv.data) {
    product(l.wqkv, attn_in, xb, E, qkv, QKVD, false, part(0));
  } else {
    product(l.wq, attn_in, xb, E, qkv, QKVD, false, part(0));
    product(l.wk, attn_in, xb, E, qkv + QD, QKVD, false, part(QD));
    product(l.wv, attn_in, xb, E, qkv + QD + KD, QKVD, false, part(QD + KD));
  }
  if (!scatter) {
    QkvPostArgs qa{qkv, QKVD, l.bq, l.bk, l.bv, q16, kc, vc, c.n_ctx, pos0, dpos, c.n_head, c.n_head_kv, c.head_dim,
                   (c.cope && c.rope_dim > 0) ? rope_table_.as<float>() : nullptr, c.rope_dim, c.rope_style};
    launch_kernel(qkv_post_kernel<T>, dim3(unsigned(n), unsigned(blocks_for(QKVD, 256))), dim3(256), 0, stream_, qa);
  }

  // A decode graph plans for graph_bound keys and reads the run-time count from the device.
  AttentionParams ap = layer_attention_params(c, q16, kc, vc, att16, n, graph_bound > 0 ? graph_bound : pos0 + n,
                                              rope_table_.as<float>());
  ap.T_k_dev = graph_bound > 0 ? dpos + 1 : nullptr;
  ap.q_dtype = ap.kv_dtype = ap.out_dtype = c.kv_dtype;
  ap.stream = stream_;
  // One row: this step writes only the cache row of its own token (the Q/K/V product just before), and
  // the key count was copied in before the step's first kernel.
  ap.past_kv_ready = n == 1;
  if (c.cope) {
    ap.rope_dim = 0;  // q and k were rotated in qkv_post
    ap.pos_emb = l.cope_pos;
    ap.npos_max = c.npos_max;
    ap.pe_stride_h = c.cope_per_head ? int64_t(c.npos_max) * c.head_dim : 0;
    ap.scale_pos_logits = c.cope_scale_pos_logits;
    cope_attention_cuda(ap);
  } else {
    if (n == 1 && sl_.attn_decode_bytes > 0) {
      ap.workspace = scratch_.as<void>(sl_.attn_decode_ws);
      ap.workspace_bytes = sl_.attn_decode_bytes;
    }
    self_extend_attention_cuda(ap);
  }
  const MatvecInput att_in{c.kv_dtype == DType::kBFloat16 ? MatvecInput::kBF16 : MatvecInput::kF16, att16, QD};
  step(att_in, QD, xb, [&] {
    launch_kernel(to_float_kernel<T>, dim3(blocks_for(n * QD, 256)), dim3(256), 0, stream_, att16, xb, n * QD);
  });
  product(l.wo, att_in, xb, QD, x, E, true);  // x += attn · Wo^T

  // --- feed-forward (SwiGLU) ---
  const MatvecInput ffn_in{MatvecInput::kRmsNorm, x, E, l.ffn_norm, c.rms_eps};
  step(ffn_in, E, xb, [&] { rms_norm_cuda<float>(RmsNormParams{x, l.ffn_norm, xb, n, E, E, E, c.rms_eps, stream_}); });
  if (l.w_gate_up.data) {
    product(l.w_gate_up, ffn_in, xb, E, ff, 2 * F, false);
  } else {
    product(l.w_gate, ffn_in, xb, E, ff, 2 * F, false);
    product(l.w_up, ffn_in, xb, E, ff + F, 2 * F, false);
  }
  const MatvecInput down_in{MatvecInput::kSwiGlu, ff, 2 * F};
  step(down_in, F, ffa, [&] { launch_kernel(swiglu_kernel, dim3(blocks_for(n * F, 256)), dim3(256), 0, stream_, ff, ffa, n, F); });
  product(l.w_down, down_in, ffa, F, x, E, true);  // x += down(SwiGLU)
}

template <typename T>
void ModelCuda::mega_phases(mega::DecodeMega& m, int64_t bound) {
  const ModelConfig& c = cfg_;
  const int64_t E = c.n_embd, QD = c.q_dim(), KD = c.kv_dim(), F = c.n_ff;
  float* x = scratch_.as<float>(sl_.x);
  float* qkv = scratch_.as<float>(sl_.qkv);
  float* ff = scratch_.as<float>(sl_.ff);
  T* q16 = scratch_.as<T>(sl_.q16);
  T* att16 = scratch_.as<T>(sl_.att16);
  const int32_t* dpos = scratch_.as<int32_t>(sl_.pos);
  const size_t layer_elems = size_t(KD) * c.n_ctx;
  using mv_cuda::fused_matvec_plan;
  for (int il = 0; il < c.n_layer; ++il) {
    const DeviceLayer& l = layers_[size_t(il)];
    T* kc = k_cache_.as<T>() + size_t(il) * layer_elems;
    T* vc = v_cache_.as<T>() + size_t(il) * layer_elems;
    // Q, K, V stored by the products (QkvScatter, as the graphed fused path with qkv_store_).
    const MatvecInput attn_in{MatvecInput::kRmsNorm, x, E, l.attn_norm, c.rms_eps};
    QkvScatter sc{q16, kc, vc, l.bq, l.bk, l.bv, 0, int(QD), int(KD), int(c.head_dim), c.n_ctx, 0, dpos,
                  c.kv_dtype == DType::kBFloat16};
    if (l.wqkv.data) {
      m.add_matvec(fused_matvec_plan(l.wqkv, attn_in, qkv, false, &sc));
    } else {
      const QMatrix* ws[3] = {&l.wq, &l.wk, &l.wv};
      const int64_t row0[3] = {0, QD, QD + KD};
      for (int i = 0; i < 3; ++i) {
        sc.row0 = row0[i];
        m.add_matvec(fused_matvec_plan(*ws[i], attn_in, qkv + row0[i], false, &sc));
      }
    }
    m.barrier();
    AttentionParams ap = layer_attention_params(c, q16, kc, vc, att16, 1, bound, rope_table_.as<float>());
    ap.T_k_dev = dpos + 1;
    ap.q_dtype = ap.kv_dtype = ap.out_dtype = c.kv_dtype;
    ap.stream = stream_;
    ap.workspace = scratch_.as<void>(sl_.attn_decode_ws);
    ap.workspace_bytes = sl_.attn_decode_bytes;
    m.add_attention(attn_cuda::se_decode_mega_plan(ap, m.blocks()), int(c.n_head));
    m.barrier();
    const MatvecInput att_in{c.kv_dtype == DType::kBFloat16 ? MatvecInput::kBF16 : MatvecInput::kF16, att16, QD};
    m.add_matvec(fused_matvec_plan(l.wo, att_in, x, true, nullptr));  // x += attn · Wo^T
    m.barrier();
    const MatvecInput ffn_in{MatvecInput::kRmsNorm, x, E, l.ffn_norm, c.rms_eps};
    if (l.w_gate_up.data) {
      m.add_matvec(fused_matvec_plan(l.w_gate_up, ffn_in, ff, false, nullptr));
    } else {
      m.add_matvec(fused_matvec_plan(l.w_gate, ffn_in, ff, false, nullptr));
      m.add_matvec(fused_matvec_plan(l.w_up, ffn_in, ff + F, false, nullptr));
    }
    m.barrier();
    m.add_matvec(fused_matvec_plan(l.w_down, MatvecInput{MatvecInput::kSwiGlu, ff, 2 * F}, x, true, nullptr));
    m.barrier();
  }
  m.add_matvec(fused_matvec_plan(output_, MatvecInput{MatvecInput::kRmsNorm, x, E, output_norm_, c.rms_eps},
                                 scratch_.as<float>(sl_.logits), false, nullptr));
}

void ModelCuda::head(int64_t r0, int64_t rows) {
  const ModelConfig& c = cfg_;
  const int64_t E = c.n_embd, V = c.n_vocab;
  float* x = scratch_.as<float>(sl_.x);
  float* xb = scratch_.as<float>(sl_.xb);
  float* dlog = scratch_.as<float>(sl_.logits);
  // One row: the 16-bit-code product wherever the head's type has one, also in the fused path. The head is
  // the step's largest matrix (SmolLM2's Q8_0 49152 x 576: ~30 us fused, ~1 TB/s), and one prepare kernel
  // is cheap beside it. SELFEXT_CUDA_HEAD_Q=0 keeps the fused product for it (read at every call).
  const char* hq = std::getenv("SELFEXT_CUDA_HEAD_Q");
  const bool head_q = rows == 1 && (decode_q_ || fuse_decode_) && E % 32 == 0 && matvec_q_supported(output_) &&
                      !(hq && std::strcmp(hq, "0") == 0);
  if (fuse_decode_ && rows == 1 && !head_q) {
    matvec_cuda_fused(output_, MatvecInput{MatvecInput::kRmsNorm, x + r0 * E, E, output_norm_, c.rms_eps}, dlog,
                      false, stream_);
  } else if (head_q) {
    void* xq = scratch_.as<void>(sl_.xq);
    prepare_activation_cuda(MatvecInput{MatvecInput::kRmsNorm, x + r0 * E, E, output_norm_, c.rms_eps}, E, xb, xq,
                            stream_);
    matvec_q_cuda(output_, xq, dlog, false, stream_);
  } else {
    rms_norm_cuda<float>(RmsNormParams{x + r0 * E, output_norm_, xb, rows, E, E, E, c.rms_eps, stream_});
    matmul_cuda(output_, xb, rows, E, dlog, V, false, scratch_.as<void>(sl_.matmul_ws), stream_);
  }
  SELFEXT_CUDA_CHECK(cudaMemcpyAsync(host_logits_.as<float>(), dlog, size_t(rows * V) * 4, cudaMemcpyDeviceToHost,
                                     stream_));
}

void ModelCuda::forward_chunk(const int32_t* tokens, int64_t n, float* logits, bool all_logits,
                              const std::atomic<bool>* cancel) {
  const ModelConfig& c = cfg_;
  DeviceGuard guard(device_);
  if (n == 1 && use_graphs_) {
    decode_graphed(tokens[0], logits);
    return;
  }
  const int64_t pos0 = n_past_, V = c.n_vocab;
  int32_t* ids = scratch_.as<int32_t>(sl_.ids);
  // The pinned staging buffers are reused by the next call only after this one synchronized.
  std::memcpy(host_ids_.as<int32_t>(), tokens, size_t(n) * 4);
  SELFEXT_CUDA_CHECK(cudaMemcpyAsync(ids, host_ids_.as<int32_t>(), size_t(n) * 4, cudaMemcpyHostToDevice, stream_));
  embed_rows_cuda(token_embd_, ids, n, scratch_.as<float>(sl_.x), c.n_embd, stream_);
  for (int il = 0; il < c.n_layer; ++il) {
    if (cancel && cancel->load(std::memory_order_relaxed)) {
      sync();  // nothing of this chunk may still be running when the cache is reused
      throw Cancelled("interrupted");
    }
    layers(il, n, pos0, 0);
  }
  if (logits) {
    const int64_t first = all_logits ? 0 : n - 1;
    for (int64_t r0 = first; r0 < n; r0 += kLogitRows) {
      const int64_t rows = std::min(kLogitRows, n - r0);
      head(r0, rows);
      sync();
      std::memcpy(logits + (r0 - first) * V, host_logits_.as<float>(), size_t(rows * V) * 4);
    }
  }
  sync();  // errors of this chunk surface here, and the cache grows only when it is complete
  n_past_ = pos0 + n;
}

// A decode step is one graph launch: the step's kernels (about ten per layer) would otherwise cost a
// launch each from the host, which bounds a small model's decode rate. The graph reads the token, its
// position and the key count from pinned host memory through its first two copies, so one captured
// graph serves every length in its bucket: the attention is planned (split-K) for the bucket's largest
// key count and its blocks past the run-time length find no tiles.
void ModelCuda::decode_graphed(int32_t token, float* logits) {
  const ModelConfig& c = cfg_;
  constexpr int64_t kBucket = 256;
  const int64_t pos0 = n_past_, T_k = pos0 + 1;
  const int64_t bound = std::min(c.n_ctx, (T_k + kBucket - 1) / kBucket * kBucket);
  host_ids_.as<int32_t>()[0] = token;
  host_pos_.as<int32_t>()[0] = int32_t(pos0);
  host_pos_.as<int32_t>()[1] = int32_t(T_k);
  const auto key = std::make_tuple(bound, c.group, c.window);
  cudaGraphExec_t& exec = graphs_[key];
  if (!exec) {
    mega::DecodeMega* mg = nullptr;
    if (mega_) {
      try {
        auto m = std::make_unique<mega::DecodeMega>(mega_blocks_);
        if (c.kv_dtype == DType::kFloat16) mega_phases<f16>(*m, bound);
        else mega_phases<bf16>(*m, bound);
        m->upload();
        mg = (megas_[key] = std::move(m)).get();
      } catch (...) {
        graphs_.erase(key);
        megas_.erase(key);
        throw;
      }
    }
    cudaGraph_t graph = nullptr;
    SELFEXT_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    try {
      SELFEXT_CUDA_CHECK(cudaMemcpyAsync(scratch_.as<int32_t>(sl_.ids), host_ids_.as<int32_t>(), 4,
                                         cudaMemcpyHostToDevice, stream_));
      SELFEXT_CUDA_CHECK(cudaMemcpyAsync(scratch_.as<int32_t>(sl_.pos), host_pos_.as<int32_t>(), 8,
                                         cudaMemcpyHostToDevice, stream_));
      embed_rows_cuda(token_embd_, scratch_.as<int32_t>(sl_.ids), 1, scratch_.as<float>(sl_.x), c.n_embd, stream_);
      if (cluster_ && bound <= cluster_max_keys_) {
        cluster_->launch(scratch_.as<int32_t>(sl_.pos), scratch_.as<float>(sl_.x), stream_);
        head(0, 1);
      } else if (mg) {
        mg->launch(scratch_.as<mega::MegaSync>(sl_.mega_sync), stream_);
        SELFEXT_CUDA_CHECK(cudaMemcpyAsync(host_logits_.as<float>(), scratch_.as<float>(sl_.logits),
                                           size_t(c.n_vocab) * 4, cudaMemcpyDeviceToHost, stream_));
      } else {
        for (int il = 0; il < c.n_layer; ++il) layers(il, 1, pos0, bound);
        head(0, 1);
      }
    } catch (...) {
      cudaStreamEndCapture(stream_, &graph);
      if (graph) cudaGraphDestroy(graph);
      graphs_.erase(key);
      megas_.erase(key);
      cudaGetLastError();
      throw;
    }
    SELFEXT_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
    const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    if (err != cudaSuccess) {
      graphs_.erase(key);
      megas_.erase(key);
      SELFEXT_CUDA_CHECK(err);
    }
  }
  SELFEXT_CUDA_CHECK(cudaGraphLaunch(exec, stream_));
  sync();
  if (logits) std::memcpy(logits, host_logits_.as<float>(), size_t(c.n_vocab) * 4);
  n_past_ = T_k;
}

}  // namespace

std::unique_ptr<Model> make_model_cuda(ModelConfig cfg, ModelWeights weights, int device) {
  return std::make_unique<ModelCuda>(std::move(cfg), std::move(weights), device);
}

}  // namespace selfext
