// Q5_K: Q4_K plus a fifth bit per code: w = (d * sc_j) * q - (dmin * m_j), q = low4 | high << 4.
//
//   bytes  0-1     d (fp16)
//   bytes  2-3     dmin (fp16)
//   bytes  4-15    scales[12]: as Q4_K (k4_scale_min)
//   bytes 16-47    qh[32]: bit c of byte l = high bit of element 32 c + l
//   bytes 48-175   qs[128]: as Q4_K, byte l of group g: low nibble = element 64 g + l, high = 64 g + 32 + l
#pragma once
#include <cstdint>

#include "core/half.h"
#include "quant/q4_k.h"  // k4_scale_min
#include "quant/q8_k.h"

namespace selfext {

struct block_q5_k {
  uint16_t d;     // fp16 super-scale of the scales
  uint16_t dmin;  // fp16 super-scale of the mins
  uint8_t scales[12];
  uint8_t qh[kQK_K / 8];
  uint8_t qs[kQK_K / 2];
};
static_assert(sizeof(block_q5_k) == 4 + 12 + kQK_K / 8 + kQK_K / 2, "wrong q5_k block size/padding");

inline namespace SELFEXT_ISA_NAMESPACE {

SELFEXT_HD int q5_k_code(const block_q5_k& b, int i) {
  const int g = i >> 6, h = (i >> 5) & 1, l = i & 31;
  const int lo = (b.qs[32 * g + l] >> (4 * h)) & 0xF;
  return lo | (((b.qh[l] >> (i >> 5)) & 1) << 4);
}

SELFEXT_HD int kquant_code(const block_q5_k& b, int i) { return q5_k_code(b, i); }
// Run j: low nibbles as Q4_K; fifth bit (j >> 2) of qh[8 (j & 3) ..] (byte 16: 8-byte aligned).
SELFEXT_HD void run_codes(const block_q5_k& b, int j, float (&q)[kRun]) {
  uint32_t c0, c1, h0, h1;
  k4_run_low_words(b.qs, j, &c0, &c1);
  load_u32x2_a8(b.qh + 8 * (j & 3), &h0, &h1);
  const int hs = j >> 2;
  codes8_to_float(c0 | (((h0 >> hs) & 0x01010101u) << 4), c1 | (((h1 >> hs) & 0x01010101u) << 4), 0.0f, q);
}
SELFEXT_HD constexpr int runs_per_scale(const block_q5_k&) { return 4; }
SELFEXT_HD void run_scale(const block_q5_k& b, int j, float* dl, float* ml) { k4_run_scale(b, j, dl, ml); }
SELFEXT_HD void dequantize_block(const block_q5_k& b, float* y) { k4_dequantize_block(b, y); }

SELFEXT_HD void kquant_scales(const block_q5_k& b, int16_t* sc, int16_t* mn, float* d, float* dm) {
  k4_kquant_scales(b, sc, mn, d, dm);
}

SELFEXT_HD float vec_dot_block(const block_q5_k& b, const block_q8_k& a) { return kquant_vec_dot(b, a); }

}  // inline namespace SELFEXT_ISA_NAMESPACE
}  // namespace selfext
