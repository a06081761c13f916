// Q2_K: 256 weights in 16 sub-blocks of 16; 2-bit codes; per sub-block 4-bit scale and 4-bit min, both
// multiplied by fp16 super-scales: w = (d * sc_j) * q - (dmin * m_j).
//
//   bytes  0-15  scales[16]: mmmmssss for sub-block j (s = scale, m = min)
//   bytes 16-79  qs[64]: two halves of 32 bytes; in half g, byte l holds 4 codes, bits 2s..2s+1 =
//                element 128 g + 32 s + l                        (byte l: 33 22 11 00, s = 3 2 1 0)
//   bytes 80-81  d (fp16)
//   bytes 82-83  dmin (fp16)
#pragma once
#include <cstdint>

#include "core/half.h"
#include "quant/q8_k.h"

namespace selfext {

struct block_q2_k {
  uint8_t scales[kQK_K / 16];
  uint8_t qs[kQK_K / 4];
  uint16_t d;     // fp16 super-scale of the scales
  uint16_t dmin;  // fp16 super-scale of the mins
};
static_assert(sizeof(block_q2_k) == kQK_K / 16 + kQK_K / 4 + 4, "wrong q2_k block size/padding");

inline namespace SELFEXT_ISA_NAMESPACE {

SELFEXT_HD int q2_k_code(const block_q2_k& b, int i) {
  const int g = i >> 7, s = (i >> 5) & 3, l = i & 31;
  return (b.qs[32 * g + l] >> (2 * s)) & 3;
}

SELFEXT_HD void dequantize_block(const block_q2_k& b, float* y) {
  const float d = fp16_to_float(b.d), dmin = fp16_to_float(b.dmin);
  for (int i = 0; i < kQK_K; ++i) {
    const int j = i >> 4;
    const float dl = d * float(b.scales[j] & 0xF), ml = dmin * float(b.scales[j] >> 4);
    y[i] = dl * float(q2_k_code(b, i)) - ml;
  }
}

// The kquant_dot description (q8_k.h): sc = low nibbles, mn = high nibbles, dm = dmin.
SELFEXT_HD void kquant_scales(const block_q2_k& b, int16_t* sc, int16_t* mn, float* d, float* dm) {
  for (int j = 0; j < 16; ++j) {
    sc[j] = int16_t(b.scales[j] & 0xF);
    mn[j] = int16_t(b.scales[j] >> 4);
  }
  *d = fp16_to_float(b.d);
  *dm = fp16_to_float(b.dmin);
}

SELFEXT_HD int kquant_code(const block_q2_k& b, int i) { return q2_k_code(b, i); }

SELFEXT_HD float vec_dot_block(const block_q2_k& b, const block_q8_k& a) { return kquant_vec_dot(b, a); }

}  // inline namespace SELFEXT_ISA_NAMESPACE
}  // namespace selfext
