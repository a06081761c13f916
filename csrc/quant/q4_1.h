// Q4_1: 32 weights, fp16 scale and min, 4-bit codes: w = d * q + m.
//
//   bytes 0-1   d (fp16)
//   bytes 2-3   m (fp16)
//   bytes 4-19  qs[16]: qs[j] = hhhhllll, low nibble = element j, high nibble = element j + 16
#pragma once
#include <cstdint>

#include "core/half.h"
#include "quant/q8_act.h"
#include "quant/runs.h"

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

// Run j (0..3): nibble j >> 1 of qs[8 (j & 1) ..]. qs sits at byte 4 of a 20-byte block: 4-byte aligned.
SELFEXT_HD void run_codes(const block_q4_1& b, int j, float (&q)[kRun]) {
  const uint8_t* p = b.qs + 8 * (j & 1);
  const uint32_t w0 = load_u32_a4(p), w1 = load_u32_a4(p + 4);
  const int sh = 4 * (j >> 1);
  codes8_to_float((w0 >> sh) & 0x0F0F0F0Fu, (w1 >> sh) & 0x0F0F0F0Fu, 0.0f, q);
}
SELFEXT_HD constexpr int runs_per_scale(const block_q4_1&) { return 4; }
SELFEXT_HD void run_scale(const block_q4_1& b, int, float* dl, float* ml) {
  *dl = scale_to_float(b.d);
  *ml = -scale_to_float(b.m);
}

// gguf: (d * float(q)) + m, float32.
SELFEXT_HD void dequantize_block(const block_q4_1& b, float* y) {
  for (int j = 0; j < kQK4_1 / kRun; ++j) dequantize_run(b, j, y + kRun * j);
}

// d_w d_a sum q a + m_w d_a sum a.
SELFEXT_HD float vec_dot_block(const block_q4_1& b, const block_q8_act& a) {
  int s = 0;
  for (int i = 0; i < kQK4_1; ++i) s += q4_1_code(b, i) * a.qs[i];
  return fp16_to_float(b.d) * a.d * float(s) + fp16_to_float(b.m) * a.s;
}

}  // inline namespace SELFEXT_ISA_NAMESPACE
}  // namespace selfext
