// Q3_K: 256 weights in 16 sub-blocks of 16; 3-bit codes = 2 low bits + 1 high bit; 6-bit signed
// sub-block scales: w = (d * (sc_j - 32)) * (q - 4), q = low | high << 2 in 0..7.
//
//   bytes   0-31   hmask[32]: bit c of byte l = high bit of element 32 c + l
//   bytes  32-95   qs[64]: as Q2_K, bits 2s..2s+1 of byte 32 g + l = low bits of element 128 g + 32 s + l
//   bytes  96-107  scales[12]: sixteen 6-bit scales, low 4 bits then high 2 bits:
//                    byte k (0-7):  [sc(8+k) low 4][sc(k) low 4]
//                    byte 8+k (0-3): [sc(12+k) hi 2][sc(8+k) hi 2][sc(4+k) hi 2][sc(k) hi 2]
//   bytes 108-109  d (fp16)
// (gguf/llama.cpp store "high bit clear" as "subtract 4": q - 4 = low - 4 * (1 - high).)
#pragma once
#include <cstdint>

#include "core/half.h"
#include "quant/q8_k.h"
#include "quant/runs.h"

namespace selfext {

struct block_q3_k {
  uint8_t hmask[kQK_K / 8];
  uint8_t qs[kQK_K / 4];
  uint8_t scales[12];
  uint16_t d;  // fp16 super-scale
};
static_assert(sizeof(block_q3_k) == kQK_K / 8 + kQK_K / 4 + 12 + 2, "wrong q3_k block size/padding");

inline namespace SELFEXT_ISA_NAMESPACE {

// Unsigned code 0..7 (the value is code - 4).
SELFEXT_HD int q3_k_code(const block_q3_k& b, int i) {
  const int g = i >> 7, s = (i >> 5) & 3, l = i & 31;
  const int lo = (b.qs[32 * g + l] >> (2 * s)) & 3;
  const int hi = (b.hmask[l] >> (i >> 5)) & 1;
  return lo | (hi << 2);
}

// Signed scale of sub-block j (-32..31).
SELFEXT_HD int q3_k_scale(const block_q3_k& b, int j) {
  const int lo = (b.scales[j & 7] >> (4 * (j >> 3))) & 0xF;
  const int hi = (b.scales[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
  return (lo | (hi << 4)) - 32;
}

// Run j (0..31), elements 8 j ..: low bits as Q2_K (half j >> 4, pair (j >> 2) & 3, bytes 8 (j & 3) ..),
// high bit (j >> 2) of hmask[8 (j & 3) ..]. 110-byte block: 2-byte aligned. Values code - 4.
SELFEXT_HD void run_codes(const block_q3_k& b, int j, float (&q)[kRun]) {
  uint32_t l0, l1, h0, h1;
  load_u32x2_a2(b.qs + 32 * (j >> 4) + 8 * (j & 3), &l0, &l1);
  load_u32x2_a2(b.hmask + 8 * (j & 3), &h0, &h1);
  const int sh = 2 * ((j >> 2) & 3), hs = j >> 2;
  const uint32_t c0 = ((l0 >> sh) & 0x03030303u) | (((h0 >> hs) & 0x01010101u) << 2);
  const uint32_t c1 = ((l1 >> sh) & 0x03030303u) | (((h1 >> hs) & 0x01010101u) << 2);
  codes8_to_float(c0, c1, 4.0f, q);
}
SELFEXT_HD constexpr int runs_per_scale(const block_q3_k&) { return 2; }
SELFEXT_HD void run_scale(const block_q3_k& b, int j, float* dl, float* ml) {
  *dl = scale_to_float(b.d) * float(q3_k_scale(b, j >> 1));
  *ml = 0.0f;
}

// gguf: (d * sc) * float(q - 4), float32.
SELFEXT_HD void dequantize_block(const block_q3_k& b, float* y) {
  for (int j = 0; j < kQK_K / kRun; ++j) dequantize_run(b, j, y + kRun * j);
}

// kquant_dot description: sc = signed scale, mn = 4 * sc (the code offset), dm = d.
SELFEXT_HD void kquant_scales(const block_q3_k& b, int16_t* sc, int16_t* mn, float* d, float* dm) {
  for (int j = 0; j < 16; ++j) {
    sc[j] = int16_t(q3_k_scale(b, j));
    mn[j] = int16_t(4 * sc[j]);
  }
  *d = fp16_to_float(b.d);
  *dm = *d;
}

SELFEXT_HD int kquant_code(const block_q3_k& b, int i) { return q3_k_code(b, i); }

SELFEXT_HD float vec_dot_block(const block_q3_k& b, const block_q8_k& a) { return kquant_vec_dot(b, a); }

}  // inline namespace SELFEXT_ISA_NAMESPACE
}  // namespace selfext
