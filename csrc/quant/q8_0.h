// Q8_0: 32 weights, fp16 scale, signed 8-bit codes: w = q * d.
//
//   bytes 0-1   d (fp16)
//   bytes 2-33  qs[32]: int8 code of element i
#pragma once
#include <cstdint>

#include "core/half.h"
#include "quant/q8_act.h"

namespace selfext {

constexpr int kQK8_0 = 32;

struct block_q8_0 {
  uint16_t d;  // fp16 scale
  int8_t qs[kQK8_0];
};
static_assert(sizeof(block_q8_0) == 2 + kQK8_0, "wrong q8_0 block size/padding");

inline namespace SELFEXT_ISA_NAMESPACE {

// gguf: float(q) * d, float32.
SELFEXT_HD void dequantize_block(const block_q8_0& b, float* y) {
  const float d = fp16_to_float(b.d);
  for (int i = 0; i < kQK8_0; ++i) y[i] = float(b.qs[i]) * d;
}

SELFEXT_HD float vec_dot_block(const block_q8_0& b, const block_q8_act& a) {
  int s = 0;
  for (int i = 0; i < kQK8_0; ++i) s += int(b.qs[i]) * a.qs[i];
  return fp16_to_float(b.d) * a.d * float(s);
}

}  // inline namespace SELFEXT_ISA_NAMESPACE
}  // namespace selfext
