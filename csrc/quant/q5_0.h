// Q5_0: 32 weights, fp16 scale, 5-bit codes with an implicit offset of 16: w = d * (q - 16).
//
//   bytes 0-1   d (fp16)
//   bytes 2-5   qh: uint32 little endian, bit i = fifth (high) bit of element i
//   bytes 6-21  qs[16]: qs[j] = hhhhllll, low nibble = low 4 bits of element j, high nibble = element j + 16
#pragma once
#include <cstdint>

#include "core/half.h"
#include "quant/q8_act.h"
#include "quant/runs.h"

namespace selfext {

constexpr int kQK5_0 = 32;

struct block_q5_0 {
  uint16_t d;     // fp16 scale
  uint8_t qh[4];  // high bits, little-endian uint32
  uint8_t qs[kQK5_0 / 2];
};
static_assert(sizeof(block_q5_0) == 2 + 4 + kQK5_0 / 2, "wrong q5_0 block size/padding");

inline namespace SELFEXT_ISA_NAMESPACE {

SELFEXT_HD uint32_t load_u32_le(const uint8_t* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}

// Unsigned 5-bit code (0..31) of element i of a block with nibbles qs and high bits qh.
SELFEXT_HD int q5_code(const uint8_t* qs, uint32_t qh, int i) {
  const int lo = i < 16 ? (qs[i] & 0xF) : (qs[i - 16] >> 4);
  return lo | int(((qh >> i) & 1u) << 4);
}

// The 8 codes of run j (0..3) of a Q5_0/Q5_1 block: low nibbles as Q4_0, bit 8 j + k of qh on top.
SELFEXT_HD void q5_run_words(const uint8_t* qs, uint32_t qh, int j, uint32_t* c0, uint32_t* c1) {
  uint32_t w0, w1;
  load_u32x2_a2(qs + 8 * (j & 1), &w0, &w1);
  const int sh = 4 * (j >> 1);
  const uint32_t hb = qh >> (8 * j);
  *c0 = ((w0 >> sh) & 0x0F0F0F0Fu) | spread_bits4(hb & 0xFu, 4);
  *c1 = ((w1 >> sh) & 0x0F0F0F0Fu) | spread_bits4((hb >> 4) & 0xFu, 4);
}

// qh at byte 2, qs at byte 6 of a 22-byte block: 2-byte aligned. Values q - 16.
SELFEXT_HD void run_codes(const block_q5_0& b, int j, float (&q)[kRun]) {
  uint32_t c0, c1;
  q5_run_words(b.qs, load_u32_a2(b.qh), j, &c0, &c1);
  codes8_to_float(c0, c1, 16.0f, q);
}
SELFEXT_HD constexpr int runs_per_scale(const block_q5_0&) { return 4; }
SELFEXT_HD void run_scale(const block_q5_0& b, int, float* dl, float* ml) {
  *dl = scale_to_float(b.d);
  *ml = 0.0f;
}

// gguf: d * float(q - 16), float32.
SELFEXT_HD void dequantize_block(const block_q5_0& b, float* y) {
  for (int j = 0; j < kQK5_0 / kRun; ++j) dequantize_run(b, j, y + kRun * j);
}

SELFEXT_HD float vec_dot_block(const block_q5_0& b, const block_q8_act& a) {
  const uint32_t qh = load_u32_le(b.qh);
  int s = 0;
  for (int i = 0; i < kQK5_0; ++i) s += q5_code(b.qs, qh, i) * a.qs[i];
  return fp16_to_float(b.d) * a.d * float(s - 16 * a.sum);
}

}  // inline namespace SELFEXT_ISA_NAMESPACE
}  // namespace selfext
