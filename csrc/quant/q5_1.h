// Q5_1: 32 weights, fp16 scale and min, 5-bit codes: w = d * q + m.
//
//   bytes 0-1   d (fp16)
//   bytes 2-3   m (fp16)
//   bytes 4-7   qh: uint32 little endian, bit i = fifth (high) bit of element i
//   bytes 8-23  qs[16]: qs[j] = hhhhllll, low nibble = low 4 bits of element j, high nibble = element j + 16
#pragma once
#include <cstdint>

#include "core/half.h"
#include "quant/q5_0.h"  // load_u32_le, q5_code
#include "quant/q8_act.h"

namespace selfext {

constexpr int kQK5_1 = 32;

struct block_q5_1 {
  uint16_t d;     // fp16 scale
  uint16_t m;     // fp16 min
  uint8_t qh[4];  // high bits, little-endian uint32
  uint8_t qs[kQK5_1 / 2];
};
static_assert(sizeof(block_q5_1) == 4 + 4 + kQK5_1 / 2, "wrong q5_1 block size/padding");

inline namespace SELFEXT_ISA_NAMESPACE {

// gguf: (d * float(q)) + m, float32.
SELFEXT_HD void dequantize_block(const block_q5_1& b, float* y) {
  const float d = fp16_to_float(b.d), m = fp16_to_float(b.m);
  const uint32_t qh = load_u32_le(b.qh);
  for (int i = 0; i < kQK5_1; ++i) y[i] = d * float(q5_code(b.qs, qh, i)) + m;
}

SELFEXT_HD float vec_dot_block(const block_q5_1& b, const block_q8_act& a) {
  const uint32_t qh = load_u32_le(b.qh);
  int s = 0;
  for (int i = 0; i < kQK5_1; ++i) s += q5_code(b.qs, qh, i) * a.qs[i];
  return fp16_to_float(b.d) * a.d * float(s) + fp16_to_float(b.m) * a.s;
}

}  // inline namespace SELFEXT_ISA_NAMESPACE
}  // namespace selfext
