// Q5_0: 32 weights, fp16 scale, 5-bit codes with an implicit offset of 16: w = d * (q - 16).
//
//   bytes 0-1   d (fp16)
//   bytes 2-5   qh: uint32 little endian, bit i = fifth (high) bit of element i
//   bytes 6-21  qs[16]: qs[j] = hhhhllll, low nibble = low 4 bits of element j, high nibble = element j + 16
#pragma once
#include <cstdint>

#include "core/half.h"
#include "quant/q8_act.h"

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

// gguf: d * float(q - 16), float32.
SELFEXT_HD void dequantize_block(const block_q5_0& b, float* y) {
  const float d = fp16_to_float(b.d);
  const uint32_t qh = load_u32_le(b.qh);
  for (int i = 0; i < kQK5_0; ++i) y[i] = d * float(q5_code(b.qs, qh, i) - 16);
}

SELFEXT_HD float vec_dot_block(const block_q5_0& b, const block_q8_act& a) {
  const uint32_t qh = load_u32_le(b.qh);
  int s = 0;
  for (int i = 0; i < kQK5_0; ++i) s += q5_code(b.qs, qh, i) * a.qs[i];
  return fp16_to_float(b.d) * a.d * float(s - 16 * a.sum);
}

}  // inline namespace SELFEXT_ISA_NAMESPACE
}  // namespace selfext
