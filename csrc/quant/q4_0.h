// Q4_0: 32 weights, one fp16 scale, 4-bit codes with an implicit offset of 8: w = d * (q - 8).
//
//   bytes 0-1   d (fp16)
//   bytes 2-17  qs[16]: qs[j] = hhhhllll, low nibble = code of element j, high nibble = element j + 16
#pragma once
#include <cstdint>

#include "core/half.h"
#include "quant/q8_act.h"
#include "quant/runs.h"

namespace selfext {

constexpr int kQK4_0 = 32;

struct block_q4_0 {
  uint16_t d;  // fp16 scale
  uint8_t qs[kQK4_0 / 2];
};
static_assert(sizeof(block_q4_0) == 2 + kQK4_0 / 2, "wrong q4_0 block size/padding");

inline namespace SELFEXT_ISA_NAMESPACE {

// Unsigned code (0..15) of element i.
SELFEXT_HD int q4_0_code(const block_q4_0& b, int i) {
  return i < 16 ? (b.qs[i] & 0xF) : (b.qs[i - 16] >> 4);
}

// Run j (0..3), elements 8 j .. 8 j + 7: nibble j >> 1 of qs[8 (j & 1) ..]; values q - 8.
// qs sits at byte 2 of an 18-byte block: 2-byte aligned.
SELFEXT_HD void run_codes(const block_q4_0& b, int j, float (&q)[kRun]) {
  uint32_t w0, w1;
  load_u32x2_a2(b.qs + 8 * (j & 1), &w0, &w1);
  const int sh = 4 * (j >> 1);
  codes8_to_float((w0 >> sh) & 0x0F0F0F0Fu, (w1 >> sh) & 0x0F0F0F0Fu, 8.0f, q);
}
SELFEXT_HD constexpr int runs_per_scale(const block_q4_0&) { return 4; }
SELFEXT_HD void run_scale(const block_q4_0& b, int, float* dl, float* ml) {
  *dl = scale_to_float(b.d);
  *ml = 0.0f;
}

// gguf: d * float(q - 8), float32.
SELFEXT_HD void dequantize_block(const block_q4_0& b, float* y) {
  for (int j = 0; j < kQK4_0 / kRun; ++j) dequantize_run(b, j, y + kRun * j);
}

// sum_i w_i * a_i with the activation codes: d_w * d_a * (sum q a - 8 sum a).
SELFEXT_HD float vec_dot_block(const block_q4_0& b, const block_q8_act& a) {
  int s = 0;
  for (int i = 0; i < kQK4_0; ++i) s += q4_0_code(b, i) * a.qs[i];
  return fp16_to_float(b.d) * a.d * float(s - 8 * a.sum);
}

}  // inline namespace SELFEXT_ISA_NAMESPACE
}  // namespace selfext
