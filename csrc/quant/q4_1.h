// Q4_1: 32 weights, fp16 scale and min, 4-bit codes: w = d * q + m.
//
//   bytes 0-1   d (fp16)
//   bytes 2-3   m (fp16)
//   bytes 4-19  qs[16]: qs[j] = hhhhllll, low nibble = element j, high nibble = element j + 16
#pragma once
#include <cstdint>

#include "core/half.h"
#include "quant/q8_act.h"

namespace selfext {

constexpr int kQK4_1 = 32;

struct block_q4_1 {
  uint16_t d;  // fp16 scale
  uint16_t m;  // fp16 min
  uint8_t qs[kQK4_1 / 2];
};
static_assert(sizeof(block_q4_1) == 4 + kQK4_1 / 2, "wrong q4_1 block size/padding");

inline namespace SELFEXT_ISA_NAMESPACE {

SELFEXT_HD int q4_1_code(const block_q4_1& b, int i) {
  return i < 16 ? (b.qs[i] & 0xF) : (b.qs[i - 16] >> 4);
}

// gguf: (d * float(q)) + m, float32.
SELFEXT_HD void dequantize_block(const block_q4_1& b, float* y) {
  const float d = fp16_to_float(b.d), m = fp16_to_float(b.m);
  for (int i = 0; i < kQK4_1; ++i) y[i] = d * float(q4_1_code(b, i)) + m;
}

// d_w d_a sum q a + m_w d_a sum a.
SELFEXT_HD float vec_dot_block(const block_q4_1& b, const block_q8_act& a) {
  int s = 0;
  for (int i = 0; i < kQK4_1; ++i) s += q4_1_code(b, i) * a.qs[i];
  return fp16_to_float(b.d) * a.d * float(s) + fp16_to_float(b.m) * a.s;
}

}  // inline namespace SELFEXT_ISA_NAMESPACE
}  // namespace selfext
