// Q8_0: 32 weights, fp16 scale, signed 8-bit codes: w = q * d.
//
//   bytes 0-1   d (fp16)
//   bytes 2-33  qs[32]: int8 code of element i
#pragma once
#include <cstdint>

#include "core/half.h"
#include "quant/q8_act.h"
#include "quant/runs.h"

namespace selfext {

constexpr int kQK8_0 = 32;

struct block_q8_0 {
  uint16_t d;  // fp16 scale
  int8_t qs[kQK8_0];
};
static_assert(sizeof(block_q8_0) == 2 + kQK8_0, "wrong q8_0 block size/padding");

inline namespace SELFEXT_ISA_NAMESPACE {

// Run j (0..3): qs[8 j .. 8 j + 7] (byte 2 of a 34-byte block: 2-byte aligned). The signed code
// q is stored as the byte q + 128 after flipping bit 7, so the values are byte - 128.
SELFEXT_HD void run_codes(const block_q8_0& b, int j, float (&q)[kRun]) {
  uint32_t w0, w1;
  load_u32x2_a2(reinterpret_cast<const uint8_t*>(b.qs) + 8 * j, &w0, &w1);
  codes8_to_float(w0 ^ 0x80808080u, w1 ^ 0x80808080u, 128.0f, q);
}
SELFEXT_HD constexpr int runs_per_scale(const block_q8_0&) { return 4; }
SELFEXT_HD void run_scale(const block_q8_0& b, int, float* dl, float* ml) {
  *dl = scale_to_float(b.d);
  *ml = 0.0f;
}

// gguf: float(q) * d, float32.
SELFEXT_HD void dequantize_block(const block_q8_0& b, float* y) {
  for (int j = 0; j < kQK8_0 / kRun; ++j) dequantize_run(b, j, y + kRun * j);
}

SELFEXT_HD float vec_dot_block(const block_q8_0& b, const block_q8_act& a) {
  int s = 0;
  for (int i = 0; i < kQK8_0; ++i) s += int(b.qs[i]) * a.qs[i];
  return fp16_to_float(b.d) * a.d * float(s);
}

}  // inline namespace SELFEXT_ISA_NAMESPACE
}  // namespace selfext
