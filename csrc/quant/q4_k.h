// Q4_K: 256 weights in 8 sub-blocks of 32; 4-bit codes; per sub-block 6-bit scale and 6-bit min, times
// fp16 super-scales: w = (d * sc_j) * q - (dmin * m_j).
//
//   bytes  0-1    d (fp16)
//   bytes  2-3    dmin (fp16)
//   bytes  4-15   scales[12]: the 6-bit scale (a..h) and min (A..H) of the 8 sub-blocks; lower case /
//                 upper case letters are bits of scales / mins, the high 2 bits of sub-blocks 4-7
//                 are parked in the top bits of bytes 0-7 (see k4_scale_min):
//                    0 eeaaaaaa   4 EEAAAAAA    8 EEEEeeee
//                    1 ffbbbbbb   5 FFBBBBBB    9 FFFFffff
//                    2 ggcccccc   6 GGCCCCCC   10 GGGGgggg
//                    3 hhdddddd   7 HHDDDDDD   11 HHHHhhhh
//   bytes 16-143  qs[128]: four groups of 32 bytes; byte l of group g = hhhhllll, low nibble =
//                 element 64 g + l, high nibble = element 64 g + 32 + l
#pragma once
#include <cstdint>

#include "core/half.h"
#include "quant/q8_k.h"
#include "quant/runs.h"

namespace selfext {

struct block_q4_k {
  uint16_t d;     // fp16 super-scale of the scales
  uint16_t dmin;  // fp16 super-scale of the mins
  uint8_t scales[12];
  uint8_t qs[kQK_K / 2];
};
static_assert(sizeof(block_q4_k) == 4 + 12 + kQK_K / 2, "wrong q4_k block size/padding");

inline namespace SELFEXT_ISA_NAMESPACE {

// The 6-bit scale and min of sub-block j (0..7), shared by Q4_K and Q5_K (llama.cpp get_scale_min_k4).
SELFEXT_HD void k4_scale_min(const uint8_t* s, int j, int* sc, int* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

SELFEXT_HD int q4_k_code(const block_q4_k& b, int i) {
  const int g = i >> 6, h = (i >> 5) & 1, l = i & 31;
  return (b.qs[32 * g + l] >> (4 * h)) & 0xF;
}

// Q4_K and Q5_K share the layout of d, dmin and the 6-bit scales/mins (k4_scale_min); they differ only
// in how a code is stored. Run j (8 elements) lies in sub-block j >> 2: dl = d * sc, ml = dmin * m.
template <typename Block>
SELFEXT_HD void k4_run_scale(const Block& b, int j, float* dl, float* ml) {
  int sc, m;
  k4_scale_min(b.scales, j >> 2, &sc, &m);
  *dl = scale_to_float(b.d) * float(sc);
  *ml = scale_to_float(b.dmin) * float(m);
}

// gguf: (d * sc) * float(q) - (dmin * m), float32. Block supplies run_codes / run_scale.
template <typename Block>
SELFEXT_HD void k4_dequantize_block(const Block& b, float* y) {
  for (int j = 0; j < kQK_K / kRun; ++j) dequantize_run(b, j, y + kRun * j);
}

// The low nibbles of run j: group g = j >> 3, nibble (j >> 2) & 1, bytes 8 (j & 3) .. of the group
// (qs at byte 16 of a 144-byte Q4_K block, byte 48 of a 176-byte Q5_K block: 8-byte aligned both).
SELFEXT_HD void k4_run_low_words(const uint8_t* qs, int j, uint32_t* c0, uint32_t* c1) {
  uint32_t w0, w1;
  load_u32x2_a8(qs + 32 * (j >> 3) + 8 * (j & 3), &w0, &w1);
  const int sh = 4 * ((j >> 2) & 1);
  *c0 = (w0 >> sh) & 0x0F0F0F0Fu;
  *c1 = (w1 >> sh) & 0x0F0F0F0Fu;
}

// kquant_dot description: per-16 sc and mn repeat the per-32 scale and min; dm = dmin.
template <typename Block>
SELFEXT_HD void k4_kquant_scales(const Block& b, int16_t* sc, int16_t* mn, float* d, float* dm) {
  for (int j = 0; j < 8; ++j) {
    int s, m;
    k4_scale_min(b.scales, j, &s, &m);
    sc[2 * j] = sc[2 * j + 1] = int16_t(s);
    mn[2 * j] = mn[2 * j + 1] = int16_t(m);
  }
  *d = fp16_to_float(b.d);
  *dm = fp16_to_float(b.dmin);
}

SELFEXT_HD int kquant_code(const block_q4_k& b, int i) { return q4_k_code(b, i); }
SELFEXT_HD void run_codes(const block_q4_k& b, int j, float (&q)[kRun]) {
  uint32_t c0, c1;
  k4_run_low_words(b.qs, j, &c0, &c1);
  codes8_to_float(c0, c1, 0.0f, q);
}
SELFEXT_HD constexpr int runs_per_scale(const block_q4_k&) { return 4; }
SELFEXT_HD void run_scale(const block_q4_k& b, int j, float* dl, float* ml) { k4_run_scale(b, j, dl, ml); }
SELFEXT_HD void dequantize_block(const block_q4_k& b, float* y) { k4_dequantize_block(b, y); }
SELFEXT_HD void kquant_scales(const block_q4_k& b, int16_t* sc, int16_t* mn, float* d, float* dm) {
  k4_kquant_scales(b, sc, mn, d, dm);
}

SELFEXT_HD float vec_dot_block(const block_q4_k& b, const block_q8_k& a) { return kquant_vec_dot(b, a); }

}  // inline namespace SELFEXT_ISA_NAMESPACE
}  // namespace selfext
