// Q6_K: 256 weights in 16 sub-blocks of 16; 6-bit codes = 4 low bits + 2 high bits, offset 32; int8
// sub-block scales: w = (d * sc_j) * (q - 32).
//
//   bytes   0-127  ql[128]: two halves of 64; byte m of half g = hhhhllll, low nibble = low 4 bits of
//                  element 128 g + m, high nibble = element 128 g + 64 + m
//   bytes 128-191  qh[64]: two halves of 32; bits 2s..2s+1 of byte l of half g = high 2 bits of
//                  element 128 g + 32 s + l
//   bytes 192-207  scales[16]: int8 scale of sub-block j
//   bytes 208-209  d (fp16)
#pragma once
#include <cstdint>

#include "core/half.h"
#include "quant/q8_k.h"
#include "quant/runs.h"

namespace selfext {

struct block_q6_k {
  uint8_t ql[kQK_K / 2];
  uint8_t qh[kQK_K / 4];
  int8_t scales[kQK_K / 16];
  uint16_t d;  // fp16 super-scale
};
static_assert(sizeof(block_q6_k) == kQK_K / 2 + kQK_K / 4 + kQK_K / 16 + 2, "wrong q6_k block size/padding");

inline namespace SELFEXT_ISA_NAMESPACE {

// Unsigned code 0..63 (the value is code - 32).
SELFEXT_HD int q6_k_code(const block_q6_k& b, int i) {
  const int g = i >> 7, r = i & 127;
  const int lo = (b.ql[64 * g + (r & 63)] >> (4 * (r >> 6))) & 0xF;
  const int hi = (b.qh[32 * g + (r & 31)] >> (2 * (r >> 5))) & 3;
  return lo | (hi << 4);
}

// Run j (0..31), elements 8 j ..: half g = j >> 4; low nibble (j >> 3) & 1 of ql[64 g + 8 (j & 7) ..],
// high pair (j >> 2) & 3 of qh[32 g + 8 (j & 3) ..]. 210-byte block: 2-byte aligned. Values code - 32.
SELFEXT_HD void run_codes(const block_q6_k& b, int j, float (&q)[kRun]) {
  const int g = j >> 4;
  uint32_t l0, l1, h0, h1;
  load_u32x2_a2(b.ql + 64 * g + 8 * (j & 7), &l0, &l1);
  load_u32x2_a2(b.qh + 32 * g + 8 * (j & 3), &h0, &h1);
  const int ls = 4 * ((j >> 3) & 1), hs = 2 * ((j >> 2) & 3);
  const uint32_t c0 = ((l0 >> ls) & 0x0F0F0F0Fu) | (((h0 >> hs) & 0x03030303u) << 4);
  const uint32_t c1 = ((l1 >> ls) & 0x0F0F0F0Fu) | (((h1 >> hs) & 0x03030303u) << 4);
  codes8_to_float(c0, c1, 32.0f, q);
}
SELFEXT_HD constexpr int runs_per_scale(const block_q6_k&) { return 2; }
SELFEXT_HD void run_scale(const block_q6_k& b, int j, float* dl, float* ml) {
  *dl = scale_to_float(b.d) * float(b.scales[j >> 1]);
  *ml = 0.0f;
}

// gguf: (d * sc) * float(q - 32), float32.
SELFEXT_HD void dequantize_block(const block_q6_k& b, float* y) {
  for (int j = 0; j < kQK_K / kRun; ++j) dequantize_run(b, j, y + kRun * j);
}

// kquant_dot description: sc = int8 scale, mn = 32 * sc (the code offset), dm = d.
SELFEXT_HD void kquant_scales(const block_q6_k& b, int16_t* sc, int16_t* mn, float* d, float* dm) {
  for (int j = 0; j < 16; ++j) {
    sc[j] = int16_t(b.scales[j]);
    mn[j] = int16_t(32 * sc[j]);
  }
  *d = fp16_to_float(b.d);
  *dm = *d;
}

SELFEXT_HD int kquant_code(const block_q6_k& b, int i) { return q6_k_code(b, i); }

SELFEXT_HD float vec_dot_block(const block_q6_k& b, const block_q8_k& a) { return kquant_vec_dot(b, a); }

}  // inline namespace SELFEXT_ISA_NAMESPACE
}  // namespace selfext
