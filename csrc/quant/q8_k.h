// 8-bit activation blocks for the K-quant weight formats (Q2_K..Q6_K): 256 values, one float32 scale,
// and the sums of each 16 codes (bsums), which the K-quants' per-sub-block mins and offsets need.
// Same layout as llama.cpp's block_q8_K; same symmetric rule as q8_act.h (d = amax / 127, round half
// to even), so |x_i - d * q_i| <= d / 2. Activation-only: Q8_K is refused as a weight format.
#pragma once
#include <cstdint>

#include "quant/q8_act.h"

namespace selfext {

constexpr int kQK_K = 256;  // super-block size of every K-quant

struct block_q8_k {
  float d;                 // scale
  int8_t qs[kQK_K];        // codes, element order
  int16_t bsums[kQK_K / 16];  // bsums[j] = sum(qs[16 j .. 16 j + 15])
};
static_assert(sizeof(block_q8_k) == 4 + kQK_K + kQK_K / 8, "wrong block_q8_k size/padding");

inline namespace SELFEXT_ISA_NAMESPACE {

SELFEXT_HD void quantize_block_q8_k(const float* x, block_q8_k& b) {
  int32_t sum;
  b.d = quantize_symmetric_i8(x, kQK_K, b.qs, &sum);
  for (int j = 0; j < kQK_K / 16; ++j) {
    int s = 0;
    for (int i = 0; i < 16; ++i) s += b.qs[16 * j + i];
    b.bsums[j] = int16_t(s);
  }
}

// Every K-quant's dot product in one form. A weight super-block is described by unsigned codes
// (element order), 16 integer sub-block scales sc[j] and 16 integer "min" weights mn[j] (one per 16
// elements), and two float multipliers:
//   sum_i w_i a_i = d_w d_a sum_j sc[j] sum_{i in j} code_i q_i  -  dm_w d_a sum_j mn[j] bsums[j]
// Formats with a min (Q2_K, Q4_K, Q5_K) put it in mn with dm = dmin; formats with a code offset o
// (Q3_K: 4, Q6_K: 32) put o * sc[j] in mn with dm = d. The SIMD kernels use the same description.
SELFEXT_HD float kquant_dot(const uint8_t* codes, const int16_t* sc, const int16_t* mn, float d, float dm,
                            const block_q8_k& a) {
  int32_t sum_q = 0, sum_m = 0;
  for (int j = 0; j < kQK_K / 16; ++j) {
    int32_t s = 0;
    for (int i = 0; i < 16; ++i) s += int32_t(codes[16 * j + i]) * a.qs[16 * j + i];
    sum_q += s * sc[j];
    sum_m += int32_t(mn[j]) * a.bsums[j];
  }
  return d * a.d * float(sum_q) - dm * a.d * float(sum_m);
}

// One K-quant block against one Q8_K block. Every K-quant header supplies, for its block type,
// kquant_code(b, i) (the unsigned code of element i) and kquant_scales(b, sc, mn, &d, &dm) (the
// description above); found by argument-dependent lookup when this is instantiated.
template <typename Block>
SELFEXT_HD float kquant_vec_dot(const Block& b, const block_q8_k& a) {
  uint8_t codes[kQK_K];
  for (int i = 0; i < kQK_K; ++i) codes[i] = uint8_t(kquant_code(b, i));
  int16_t sc[16], mn[16];
  float d, dm;
  kquant_scales(b, sc, mn, &d, &dm);
  return kquant_dot(codes, sc, mn, d, dm, a);
}

}  // inline namespace SELFEXT_ISA_NAMESPACE
}  // namespace selfext
