// Products with quantized weight matrices, straight from their GGUF blocks. The interface the inference
// loop calls; implementations per SIMD level live in matmul_*_cpu.cpp / *_avx2.cpp / *_avx512.cpp.
#pragma once
#include <cstddef>
#include <cstdint>

namespace selfext {

class ThreadPool;

// GGML type ids, as stored in GGUF files.
enum class QType : int {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15, BF16 = 30,
};

// A weight matrix (rows, cols) in row-major blocks: row r starts at data + r * row_bytes.
struct QMatrix {
  const void* data = nullptr;
  QType type = QType::F32;
  int64_t rows = 0, cols = 0;
  int64_t row_bytes = 0;
};

// Throws ArgumentError unless `type` is a supported weight format (naming the type).
void check_qtype_supported(int type);
// Bytes of one row of `cols` values; throws ArgumentError if cols is not a multiple of the block size.
int64_t qtype_row_bytes(QType type, int64_t cols);
const char* qtype_name(QType type);

// Scratch bytes matmul_cpu needs for n activation rows of length cols (8-bit quantized activations).
size_t matmul_workspace_bytes(QType type, int64_t cols, int64_t n);
// y[t, r] = sum_c x[t, c] * W[r, c] for t < n: x (n, cols) row stride ldx, y (n, rows) row stride ldy.
// workspace: matmul_workspace_bytes(...) bytes, 64-byte aligned. No allocation inside.
void matmul_cpu(const QMatrix& w, const float* x, int64_t n, int64_t ldx, float* y, int64_t ldy,
                void* workspace, ThreadPool& pool);
// One row of k values (k a multiple of the block size) to float32.
void dequantize_row_cpu(QType type, const void* src, float* dst, int64_t k);

}  // namespace selfext
