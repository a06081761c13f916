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
#include "quant/runs.h"

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

// qh at byte 4 of a 24-byte block: 4-byte aligned.
SELFEXT_HD void run_codes(const block_q5_1& b, int j, float (&q)[kRun]) {
  uint32_t c0, c1;
  q5_run_words(b.qs, load_u32_a4(b.qh), j, &c0, &c1);
  codes8_to_float(c0, c1, 0.0f, q);
}
SELFEXT_HD constexpr int runs_per_scale(const block_q5_1&) { return 4; }
SELFEXT_HD void run_scale(const block_q5_1& b, int, float* dl, float* ml) {
  *dl = scale_to_float(b.d);
  *ml = -scale_to_float(b.m);
}

// gguf: (d * float(q)) + m, float32.
SELFEXT_HD void dequantize_block(const block_q5_1& b, float* y) {
  for (int j = 0; j < kQK5_1 / kRun; ++j) dequantize_run(b, j, y + kRun * j);
}

SELFEXT_HD float vec_dot_block(const block_q5_1& b, const block_q8_act& a) {
  const uint32_t qh = load_u32_le(b.qh);
  int s = 0;
  for (int i = 0; i < kQK5_1; ++i) s += q5_code(b.qs, qh, i) * a.qs[i];
  return fp16_to_float(b.d) * a.d * float(s) + fp16_to_float(b.m) * a.s;
}

}  // inline namespace SELFEXT_ISA_NAMESPACE
}  // namespace selfext
