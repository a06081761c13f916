// The quantized product's driver: validation, the 8-bit activation quantization (one rule for every
// SIMD level, q8_act.h / q8_k.h), the split of rows and activation rows over threads, and the scalar
// reference kernels. The SIMD kernels live in matmul_avx2.cpp and matmul_avx512.cpp.
#include <algorithm>
#include <cstring>

#include "core/errors.h"
#include "core/thread_pool.h"
#include "quant/formats.h"
#include "quant/matmul.h"
#include "quant/matmul_kernels.h"

namespace selfext {

// --- type facts ------------------------------------------------------------------------------------

namespace {

const QTypeInfo& supported_info(int type) {
  const QTypeInfo* info = qtype_info(type);
  SELFEXT_CHECK(info != nullptr, ArgumentError, "qtype ", type, " is not a GGML type id");
  SELFEXT_CHECK(info->supported, ArgumentError, "qtype ", info->name, " (GGML id ", type,
                ") is not supported as a weight format; supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1,"
                " Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K");
  return *info;
}

}  // namespace

void check_qtype_supported(int type) { (void)supported_info(type); }

const char* qtype_name(QType type) {
  const QTypeInfo* info = qtype_info(int(type));
  return info ? info->name : "unknown";
}

int64_t qtype_row_bytes(QType type, int64_t cols) {
  const QTypeInfo& info = supported_info(int(type));
  SELFEXT_CHECK(cols > 0 && cols % info.block_size == 0, ArgumentError, "cols must be a positive multiple of ",
                info.block_size, " (the ", info.name, " block size), got ", cols);
  return cols / info.block_size * info.block_bytes;
}

size_t matmul_workspace_bytes(QType type, int64_t cols, int64_t n) {
  const QTypeInfo& info = supported_info(int(type));
  if (!qtype_is_integer(info.id)) return 0;
  const int64_t nb = cols / info.block_size;
  const size_t per_row = qtype_is_k(info.id) ? sizeof(block_q8_k) : sizeof(block_q8_act);
  return size_t(n) * size_t(nb) * per_row;
}

// --- dequantization --------------------------------------------------------------------------------

namespace {

template <typename Block>
void dequantize_blocks(const void* src, float* dst, int64_t nb, int block_size) {
  const Block* b = static_cast<const Block*>(src);
  for (int64_t i = 0; i < nb; ++i) dequantize_block(b[i], dst + i * block_size);
}

// SELFEXT_QTYPE_SWITCH(type, Block, expr): runs expr with Block = the block struct of `type`.
#define SELFEXT_QTYPE_SWITCH(type, BLOCK, ...)                        \
  switch (type) {                                                     \
    case QType::F32: { using BLOCK = float; __VA_ARGS__; break; }     \
    case QType::F16: { using BLOCK = f16; __VA_ARGS__; break; }       \
    case QType::BF16: { using BLOCK = bf16; __VA_ARGS__; break; }     \
    case QType::Q4_0: { using BLOCK = block_q4_0; __VA_ARGS__; break; } \
    case QType::Q4_1: { using BLOCK = block_q4_1; __VA_ARGS__; break; } \
    case QType::Q5_0: { using BLOCK = block_q5_0; __VA_ARGS__; break; } \
    case QType::Q5_1: { using BLOCK = block_q5_1; __VA_ARGS__; break; } \
    case QType::Q8_0: { using BLOCK = block_q8_0; __VA_ARGS__; break; } \
    case QType::Q2_K: { using BLOCK = block_q2_k; __VA_ARGS__; break; } \
    case QType::Q3_K: { using BLOCK = block_q3_k; __VA_ARGS__; break; } \
    case QType::Q4_K: { using BLOCK = block_q4_k; __VA_ARGS__; break; } \
    case QType::Q5_K: { using BLOCK = block_q5_k; __VA_ARGS__; break; } \
    case QType::Q6_K: { using BLOCK = block_q6_k; __VA_ARGS__; break; } \
    default: check_qtype_supported(int(type));                        \
  }

}  // namespace

void dequantize_row_cpu(QType type, const void* src, float* dst, int64_t k) {
  const QTypeInfo& info = supported_info(int(type));
  SELFEXT_CHECK(k % info.block_size == 0, ArgumentError, "k must be a multiple of ", info.block_size,
                " for ", info.name, ", got ", k);
  SELFEXT_QTYPE_SWITCH(type, Block, dequantize_blocks<Block>(src, dst, k / info.block_size, info.block_size));
}

// --- scalar kernels --------------------------------------------------------------------------------

namespace {

// Integer formats: y[t, r] = sum over blocks of vec_dot_block (the block headers' reference dot).
template <typename Block, typename ActBlock>
void gemm_scalar_int(const GemmArgs& g, int64_t r0, int64_t r1, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) {
    const ActBlock* a = reinterpret_cast<const ActBlock*>(g.a + t * g.a_stride);
    for (int64_t r = r0; r < r1; ++r) {
      const Block* w = reinterpret_cast<const Block*>(g.w + r * g.w_stride);
      float acc = 0.f;
      for (int64_t b = 0; b < g.nb; ++b) acc += vec_dot_block(w[b], a[b]);
      g.y[t * g.ldy + r] = acc;
    }
  }
}

// Float formats multiply float32 activations.
template <typename T>
void gemm_scalar_float(const GemmArgs& g, int64_t r0, int64_t r1, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) {
    const float* x = reinterpret_cast<const float*>(g.a + t * g.a_stride);
    for (int64_t r = r0; r < r1; ++r) {
      const T* w = reinterpret_cast<const T*>(g.w + r * g.w_stride);
      float acc = 0.f;
      for (int64_t k = 0; k < g.cols; ++k) acc += to_float(w[k]) * x[k];
      g.y[t * g.ldy + r] = acc;
    }
  }
}

}  // namespace

GemmFn gemm_kernel_scalar(int type) {
  switch (QType(type)) {
    case QType::F32: return &gemm_scalar_float<float>;
    case QType::F16: return &gemm_scalar_float<f16>;
    case QType::BF16: return &gemm_scalar_float<bf16>;
    case QType::Q4_0: return &gemm_scalar_int<block_q4_0, block_q8_act>;
    case QType::Q4_1: return &gemm_scalar_int<block_q4_1, block_q8_act>;
    case QType::Q5_0: return &gemm_scalar_int<block_q5_0, block_q8_act>;
    case QType::Q5_1: return &gemm_scalar_int<block_q5_1, block_q8_act>;
    case QType::Q8_0: return &gemm_scalar_int<block_q8_0, block_q8_act>;
    case QType::Q2_K: return &gemm_scalar_int<block_q2_k, block_q8_k>;
    case QType::Q3_K: return &gemm_scalar_int<block_q3_k, block_q8_k>;
    case QType::Q4_K: return &gemm_scalar_int<block_q4_k, block_q8_k>;
    case QType::Q5_K: return &gemm_scalar_int<block_q5_k, block_q8_k>;
    case QType::Q6_K: return &gemm_scalar_int<block_q6_k, block_q8_k>;
    default: return nullptr;
  }
}

// --- driver ----------------------------------------------------------------------------------------

namespace {

GemmFn pick_kernel(int type) {
  GemmFn fn = nullptr;
  // Every level is named (no default): a level not mapped here is a -Wswitch warning, not a silent
  // fall back to the scalar kernels.
  switch (simd_level()) {
    case SimdLevel::kAVX2:
#if defined(SELFEXT_HAVE_X86_SIMD)
      fn = gemm_kernel_avx2(type);
#endif
      break;
    case SimdLevel::kAVX512:
#if defined(SELFEXT_HAVE_X86_SIMD)
      fn = gemm_kernel_avx512(type, false);
#endif
      break;
    case SimdLevel::kAVX512VNNI:
#if defined(SELFEXT_HAVE_X86_SIMD)
      fn = gemm_kernel_avx512(type, true);
#endif
      break;
    case SimdLevel::kAMX:
#if defined(SELFEXT_HAVE_AMX)
      fn = gemm_kernel_amx(type);
#endif
      break;
    case SimdLevel::kScalar:
    case SimdLevel::kNEON:  // no NEON kernels yet
      break;
  }
  return fn ? fn : gemm_kernel_scalar(type);
}

// Activation row t (cols values) into 8-bit blocks: once per product, shared by every weight row.
void quantize_activation_row(bool k_quant, const float* x, int64_t cols, uint8_t* dst) {
  if (k_quant) {
    block_q8_k* b = reinterpret_cast<block_q8_k*>(dst);
    for (int64_t i = 0; i < cols / kQK_K; ++i) quantize_block_q8_k(x + i * kQK_K, b[i]);
  } else {
    block_q8_act* b = reinterpret_cast<block_q8_act*>(dst);
    for (int64_t i = 0; i < cols / kQ8ActBlock; ++i) quantize_block_q8_act(x + i * kQ8ActBlock, b[i]);
  }
}

// Work split. Activation rows go in chunks of kActChunk (their 8-bit blocks, ~2 KiB a row at
// cols = 2048, stay in L2 while every weight row of a task passes over them); weight rows in chunks
// of kRowChunk for prefill, or about 4 chunks per thread for decode (n small: memory-bound, the
// weights are read once and the split only has to balance the threads).
constexpr int64_t kActChunk = 64;
constexpr int64_t kRowChunk = 16;
constexpr int64_t kActChunkAmx = 256;

}  // namespace

void quantize_activations_cpu(QType type, const float* x, int64_t n, int64_t ldx, int64_t cols, void* dst) {
  const QTypeInfo& info = supported_info(int(type));
  SELFEXT_CHECK(qtype_is_integer(info.id), ArgumentError, info.name, " multiplies float32 activations as they are");
  SELFEXT_CHECK(cols % info.block_size == 0, ArgumentError, "cols must be a multiple of ", info.block_size,
                " for ", info.name, ", got ", cols);
  const bool k_quant = qtype_is_k(info.id);
  const int64_t stride = matmul_workspace_bytes(type, cols, 1);
  for (int64_t t = 0; t < n; ++t)
    quantize_activation_row(k_quant, x + t * ldx, cols, static_cast<uint8_t*>(dst) + t * stride);
}

void matmul_cpu(const QMatrix& w, const float* x, int64_t n, int64_t ldx, float* y, int64_t ldy,
                void* workspace, ThreadPool& pool) {
  const QTypeInfo& info = supported_info(int(w.type));
  SELFEXT_CHECK(w.rows > 0 && w.cols > 0 && n >= 0, ArgumentError, "matmul_cpu: bad shape rows=", w.rows,
                " cols=", w.cols, " n=", n);
  SELFEXT_CHECK(w.cols % info.block_size == 0, ArgumentError, "cols must be a multiple of ", info.block_size,
                " for ", info.name, ", got ", w.cols);
  SELFEXT_CHECK(w.row_bytes >= w.cols / info.block_size * info.block_bytes, ArgumentError,
                "row_bytes ", w.row_bytes, " is smaller than one row of ", info.name);
  SELFEXT_CHECK(ldx >= w.cols && ldy >= w.rows, ArgumentError, "ldx/ldy smaller than the row lengths");
  if (n == 0) return;

  GemmArgs g;
  g.w = static_cast<const uint8_t*>(w.data);
  g.w_stride = w.row_bytes;
  g.rows = w.rows;
  g.cols = w.cols;
  g.nb = w.cols / info.block_size;
  g.n = n;
  g.y = y;
  g.ldy = ldy;
  if (qtype_is_integer(info.id)) {
    const bool k_quant = qtype_is_k(info.id);
    SELFEXT_CHECK(workspace != nullptr, ArgumentError, "matmul_cpu: ", info.name, " needs a workspace of ",
                  matmul_workspace_bytes(w.type, w.cols, n), " bytes");
    g.a = static_cast<const uint8_t*>(workspace);
    g.a_stride = int64_t(g.nb) * int64_t(k_quant ? sizeof(block_q8_k) : sizeof(block_q8_act));
    uint8_t* ws = static_cast<uint8_t*>(workspace);
    const auto quantize = [&](int64_t t) { quantize_activation_row(k_quant, x + t * ldx, w.cols, ws + t * g.a_stride); };
    if (n >= 4 && pool.size() > 1) {
      pool.parallel_for(n, quantize);
    } else {
      for (int64_t t = 0; t < n; ++t) quantize(t);
    }
  } else {
    g.a = reinterpret_cast<const uint8_t*>(x);
    g.a_stride = ldx * int64_t(sizeof(float));
  }

  const GemmFn fn = pick_kernel(info.id);
  const int64_t threads = pool.size();
  int64_t row_chunk = kRowChunk;
  if (n < 4) {
    row_chunk = (w.rows + 4 * threads - 1) / (4 * threads);
    row_chunk = std::max<int64_t>(8, (row_chunk + 7) / 8 * 8);
  }
  int64_t act_chunk = n < 4 ? n : kActChunk;
#if defined(SELFEXT_HAVE_AMX)
  // AMX tasks unpack their 16-row weight panel once and pass it over every activation row of the
  // chunk: a longer chunk spreads that unpacking over more tiles.
  if (n >= 16 && simd_level() == SimdLevel::kAMX && amx_covers(info.id)) act_chunk = kActChunkAmx;
#endif
  const int64_t n_row_chunks = (w.rows + row_chunk - 1) / row_chunk;
  const int64_t n_act_chunks = (n + act_chunk - 1) / act_chunk;
  const int64_t n_tasks = n_row_chunks * n_act_chunks;
  // Task order: activation chunk major, so threads working at the same time share its 8-bit rows.
  const auto task = [&](int64_t id) {
    const int64_t tc = id / n_row_chunks, rc = id % n_row_chunks;
    const int64_t r0 = rc * row_chunk, r1 = std::min(w.rows, r0 + row_chunk);
    const int64_t t0 = tc * act_chunk, t1 = std::min(n, t0 + act_chunk);
    fn(g, r0, r1, t0, t1);
  };
  if (n_tasks == 1 || threads == 1) {
    for (int64_t id = 0; id < n_tasks; ++id) task(id);
  } else {
    pool.parallel_for(n_tasks, task);
  }
}

}  // namespace selfext
