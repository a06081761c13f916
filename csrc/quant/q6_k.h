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

SELFEXT_HD void dequantize_block(const block_q6_k& b, float* y) {
  const float d = fp16_to_float(b.d);
  for (int i = 0; i < kQK_K; ++i) {
    const float dl = d * float(b.scales[i >> 4]);
    y[i] = dl * float(q6_k_code(b, i) - 32);
  }
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
