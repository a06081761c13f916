// 8-bit activation blocks for the legacy 32-element weight formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0):
// each activation row is quantized once per product, then the weights' integer codes are dotted with
// these int8 codes. Like llama.cpp's block_q8_1, but the scale stays float32 (no fp16 rounding of d)
// and the integer sum rides along for the offset formats.
//
// Quantization rule (the test re-implements it; every SIMD level uses exactly this one):
//   d = amax / 127 (float32), id = d != 0 ? 1 / d : 0, q_i = round_half_even(x_i * id), |q_i| <= 127
// so |x_i - d * q_i| <= d / 2 = amax / 254 for every element.
#pragma once
#include <cstdint>

#include "core/half.h"
#include "core/hd.h"

namespace selfext {

constexpr int kQ8ActBlock = 32;

struct block_q8_act {
  float d;             // scale
  float s;             // d * sum(qs), float32 (used by the formats with a min: Q4_1, Q5_1)
  int32_t sum;         // sum(qs) (used by the formats with an offset: Q4_0 -8, Q5_0 -16)
  int32_t pad;         // keeps qs 16-byte aligned within the block
  int8_t qs[kQ8ActBlock];
};
static_assert(sizeof(block_q8_act) == 16 + kQ8ActBlock, "wrong block_q8_act size/padding");

inline namespace SELFEXT_ISA_NAMESPACE {

// Round to nearest, ties to even, for |v| < 2^22: adding 1.5 * 2^23 pushes the fraction bits out
// under the default rounding mode. Exact and branch-free; the same two float32 additions in SIMD.
SELFEXT_HD float round_half_even_small(float v) {
  const float kMagic = 12582912.0f;  // 1.5 * 2^23
  return (v + kMagic) - kMagic;
}

// amax-scaled symmetric quantization of n values (n = 32 here, 256 for Q8_K); returns d.
SELFEXT_HD float quantize_symmetric_i8(const float* x, int n, int8_t* q, int32_t* sum) {
  float amax = 0.f;
  for (int i = 0; i < n; ++i) {
    const float a = x[i] < 0.f ? -x[i] : x[i];
    amax = a > amax ? a : amax;
  }
  const float d = amax / 127.f;
  const float id = d != 0.f ? 1.f / d : 0.f;
  int32_t s = 0;
  bool finite = true;
  for (int i = 0; i < n; ++i) {
    // |x_i * id| <= 127 for finite inputs. A NaN, or an infinite amax (id = 0, inf * 0 = NaN), fails the
    // test: int(NaN) is undefined behaviour, so such a block gets codes 0 and a NaN scale instead, and
    // the NaN reaches the product's output rather than a silently finite value.
    const float r = round_half_even_small(x[i] * id);
    const bool ok = r >= -127.f && r <= 127.f;
    finite = finite && ok;
    const int v = ok ? int(r) : 0;
    q[i] = int8_t(v);
    s += v;
  }
  *sum = s;
  return finite ? d : bits_to_float(0x7fc00000u);  // quiet NaN
}

SELFEXT_HD void quantize_block_q8_act(const float* x, block_q8_act& b) {
  int32_t sum;
  b.d = quantize_symmetric_i8(x, kQ8ActBlock, b.qs, &sum);
  b.sum = sum;
  b.s = b.d * float(sum);
  b.pad = 0;
}

}  // inline namespace SELFEXT_ISA_NAMESPACE
}  // namespace selfext
