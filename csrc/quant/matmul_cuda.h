// Products with quantized weight matrices on CUDA, straight from their GGUF blocks (the block layouts of
// csrc/quant/<fmt>.h, shared with the CPU). Plain C++ (no CUDA types) so the model and the bindings can
// include it in a build without CUDA; the definitions live in matmul_cuda*.cu and exist only when
// SELFEXT_WITH_CUDA is set.
//
// Every pointer is a device pointer; `stream` is a cudaStream_t. Nothing here allocates, synchronizes or
// copies to the host, so every call can be captured into a CUDA graph.
#pragma once
#include <cstddef>
#include <cstdint>

#include "quant/matmul.h"

namespace selfext {

struct QkvScatter;  // below: a decode Q/K/V product's store into the query row and the caches

// Scratch bytes matmul_cuda needs for n activation rows of length cols (0 when it needs none).
size_t matmul_cuda_workspace_bytes(QType type, int64_t cols, int64_t n);

// y[t, r] = (accumulate ? y[t, r] : 0) + sum_c x[t, c] * W[r, c] for t < n, r < w.rows.
// w.data: device copy of the blocks (row r at w.data + r * w.row_bytes, 16-byte aligned base);
// x: (n, w.cols) float32, row stride ldx; y: (n, w.rows) float32, row stride ldy; workspace:
// matmul_cuda_workspace_bytes(w.type, w.cols, n) bytes (256-byte aligned), or null when that is 0.
void matmul_cuda(const QMatrix& w, const float* x, int64_t n, int64_t ldx, float* y, int64_t ldy, bool accumulate,
                 void* workspace, void* stream, const QkvScatter* scatter = nullptr);

// One decode row through the matrix-vector kernel with the elementwise step before it folded into the
// loads: y[r] = (accumulate ? y[r] : 0) + sum_c in(c) * W[r, c], where in(c) is
//   kFloat   x[c]                                     (x: float32)
//   kRmsNorm x[c] / sqrt(mean(x^2) + eps) * norm_w[c]  (x: float32, the residual stream)
//   kSwiGlu  silu(x[c]) * x[cols + c]                  (x: float32 gate | up, ldx >= 2 cols)
//   kF16/kBF16 x[c] widened                            (x: 16-bit, the attention output)
// Each formula matches the separate kernel it replaces, in the same order (the RMS sum to float32 rounding).
struct MatvecInput {
  enum Kind { kFloat, kRmsNorm, kSwiGlu, kF16, kBF16 } kind = kFloat;
  const void* x = nullptr;
  int64_t ldx = 0;             // unused for one row except in the kSwiGlu bound check
  const float* norm_w = nullptr;
  float eps = 0.0f;
};
void matvec_cuda_fused(const QMatrix& w, const MatvecInput& in, float* y, bool accumulate, void* stream,
                       const QkvScatter* scatter = nullptr);

// A decode row's Q/K/V product with the model's qkv step as its store (matvec_cuda_fused, matvec_q_cuda,
// and matmul_cuda with n = 1): output row r, at e = row0 + r of the q | k | v row, becomes
// val = y + bias[e'] (e' = e within its part) rounded to the cache's 16-bit type and written to q[e'] or,
// for K and V, to the cache at (kv head, pos) -- the same float add and rounding as the separate step, so
// the results are the same bits; y itself is not written. Without RoPE (the attention rotates).
struct QkvScatter {
  void* q = nullptr;                          // (q_dim) 16-bit query row
  void* k_cache = nullptr;                    // (n_kv, n_ctx, head_dim) 16-bit, this layer's
  void* v_cache = nullptr;
  const float *bq = nullptr, *bk = nullptr, *bv = nullptr;  // biases or null
  int64_t row0 = 0;                           // the product's first output row within q | k | v
  int q_dim = 0, kv_dim = 0, head_dim = 0;
  int64_t n_ctx = 0;
  int64_t pos = 0;                            // the token's position, or *pos_dev when pos_dev is set
  const int32_t* pos_dev = nullptr;
  bool bf16 = false;                          // bf16 (else f16) q and cache
};

// --- decode products over 16-bit activation codes (Q4_0, Q8_0, Q4_K, Q6_K) ---------------------------
// One activation row is first prepared (prepare_activation_cuda: the MatvecInput step applied, then
// quantized per 32 elements to x ~ d * v, v = 256 h + l, |v| <= 32512, h and l signed bytes, so a
// 16-bit code split in two bytes), and the product then runs on integer dot products (dp4a) of the
// weight codes with h and l: every weight byte is read once with 16-byte loads. The codes' error is
// at most d / 2 = amax / 65024 per element (amax of its 32-element block), against fp16's 2^-11 relative.
// Prepared rows live in caller scratch of activation_q_bytes(cols) bytes (256-byte aligned).
bool matvec_q_supported(const QMatrix& w);  // Q4_0, Q4_K or Q6_K (and SELFEXT_CUDA_MVQ is not 0)
size_t activation_q_bytes(int64_t cols);
// in.x as MatvecInput (cols values, cols % 32 == 0); out_f (nullable): the prepared float32 row as well.
void prepare_activation_cuda(const MatvecInput& in, int64_t cols, float* out_f, void* xq, void* stream);
// y[r] = (accumulate ? y[r] : 0) + sum_c W[r, c] x[c], x the row prepared in xq (w.cols values).
void matvec_q_cuda(const QMatrix& w, const void* xq, float* y, bool accumulate, void* stream,
                   const QkvScatter* scatter = nullptr);

// Embedding lookup: out[t, :] = dequantized row ids[t] of w, for t < n (ids: device int32, each in
// [0, w.rows) -- the caller checks them on the host); out (n, w.cols) float32, row stride ldo.
void embed_rows_cuda(const QMatrix& w, const int32_t* ids, int64_t n, float* out, int64_t ldo, void* stream);

}  // namespace selfext
