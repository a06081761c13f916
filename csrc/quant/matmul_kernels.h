// The internal interface between the product's driver (matmul_cpu.cpp: validation, activation
// quantization, threading) and its kernels, one set per SIMD level (scalar in matmul_cpu.cpp, SIMD in
// matmul_avx2.cpp / matmul_avx512.cpp). Plain pointers and strides only; kernels never throw.
#pragma once
#include <cstdint>

#include "core/cpu_features.h"
#include "quant/matmul.h"

namespace selfext {

struct GemmArgs {
  const uint8_t* w;  // (rows, nb) weight blocks; row r at w + r * w_stride
  int64_t w_stride;  // bytes per weight row
  int64_t rows, cols;
  int64_t nb;        // blocks per row of the weight format (cols for the float formats)
  const uint8_t* a;  // (n, ...) activations: 8-bit blocks (q8_act / q8_k) or float32 for F32/F16/BF16
  int64_t a_stride;  // bytes per activation row
  int64_t n;
  float* y;          // (n, rows), row stride ldy
  int64_t ldy;
};

// The 8-bit activation blocks matmul_cpu computes for an integer format (n rows of cols values, row
// stride ldx) into dst, matmul_workspace_bytes(type, cols, n) bytes: exposed so tests can see them.
void quantize_activations_cpu(QType type, const float* x, int64_t n, int64_t ldx, int64_t cols, void* dst);

// Computes y[t, r] for r in [r0, r1), t in [t0, t1).
using GemmFn = void (*)(const GemmArgs& args, int64_t r0, int64_t r1, int64_t t0, int64_t t1);

// Kernels of one SIMD level for GGML type id `type`; nullptr where that level has none of its own
// (the driver then runs the scalar kernel, which is the implementation for that pair).
GemmFn gemm_kernel_scalar(int type);
#if defined(SELFEXT_HAVE_X86_SIMD)
GemmFn gemm_kernel_avx2(int type);
GemmFn gemm_kernel_avx512(int type, bool vnni);
#if defined(SELFEXT_HAVE_AMX)
// AMX tiles for prefill (16 x 16 output tiles), the avx512_vnni kernel for what tiles do not cover.
GemmFn gemm_kernel_amx(int type);
bool amx_covers(int type);  // whether `type` has tile kernels (the others run the avx512_vnni ones)
#endif
#endif

}  // namespace selfext
