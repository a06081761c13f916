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
#include "quant/runs.h"

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

// Run j (0..31), elements 8 j ..: half g = j >> 4, bit pair s = (j >> 2) & 3, bytes l = 8 (j & 3) ..
// of that half (qs at byte 16 of an 84-byte block: 4-byte aligned).
SELFEXT_HD void run_codes(const block_q2_k& b, int j, float (&q)[kRun]) {
  const uint8_t* p = b.qs + 32 * (j >> 4) + 8 * (j & 3);
  const uint32_t w0 = load_u32_a4(p), w1 = load_u32_a4(p + 4);
  const int sh = 2 * ((j >> 2) & 3);
  codes8_to_float((w0 >> sh) & 0x03030303u, (w1 >> sh) & 0x03030303u, 0.0f, q);
}
// Sub-block j >> 1 (16 elements): dl = d * scale, ml = dmin * min.
SELFEXT_HD constexpr int runs_per_scale(const block_q2_k&) { return 2; }
SELFEXT_HD void run_scale(const block_q2_k& b, int j, float* dl, float* ml) {
  const int s = b.scales[j >> 1];
  *dl = scale_to_float(b.d) * float(s & 0xF);
  *ml = scale_to_float(b.dmin) * float(s >> 4);
}

// gguf: (d * sc) * float(q) - (dmin * m), float32.
SELFEXT_HD void dequantize_block(const block_q2_k& b, float* y) {
  for (int j = 0; j < kQK_K / kRun; ++j) dequantize_run(b, j, y + kRun * j);
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
