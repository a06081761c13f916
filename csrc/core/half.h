// Scalar float16 / bfloat16 <-> float32 conversions, exact (round to nearest even), host and device.
// SIMD code converts whole vectors with F16C / AVX-512; these are the reference and the scalar path.
#pragma once
#include <cstdint>
#include <cstring>

#include "hd.h"

namespace selfext {

// Storage types for half-precision arrays: plain bit patterns, so host code needs no compiler support.
struct f16 { uint16_t bits; };
struct bf16 { uint16_t bits; };

inline namespace SELFEXT_ISA_NAMESPACE {

SELFEXT_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}
SELFEXT_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

// IEEE binary16 -> binary32; every half is exactly representable.
SELFEXT_HD float fp16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (mant << 13));  // inf / nan
  if (exp == 0) {
    if (mant == 0) return bits_to_float(sign);
    // subnormal: value = mant * 2^-24
    float v = float(mant) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

// binary32 -> binary16 with round-to-nearest-even, overflow to inf, NaN kept NaN.
SELFEXT_HD uint16_t float_to_fp16(float f) {
  const uint32_t x = float_to_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) return uint16_t(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0u));
  if (absx >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (absx < 0x38800000u) {                                   // result is subnormal or zero
    if (absx < 0x33000000u) return uint16_t(sign);            // < 2^-25 rounds to 0
    const uint32_t e = absx >> 23;
    const uint32_t m = (absx & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;  // 14 + (113 - e) - 1 ... value = m * 2^(e-150); unit 2^-24
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return uint16_t(sign | q);
  }
  uint32_t r = absx - 0x38000000u;  // rebias 127 -> 15
  const uint32_t rem = r & 0x1fffu;
  r >>= 13;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
  return uint16_t(sign | r);
}

SELFEXT_HD float bf16_to_float(uint16_t h) { return bits_to_float(uint32_t(h) << 16); }

SELFEXT_HD uint16_t float_to_bf16(float f) {
  uint32_t x = float_to_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40u);  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return uint16_t(x >> 16);
}

SELFEXT_HD float to_float(float x) { return x; }
SELFEXT_HD float to_float(f16 x) { return fp16_to_float(x.bits); }
SELFEXT_HD float to_float(bf16 x) { return bf16_to_float(x.bits); }

template <typename T> SELFEXT_HD T from_float(float x);
template <> SELFEXT_HD float from_float<float>(float x) { return x; }
template <> SELFEXT_HD f16 from_float<f16>(float x) { return f16{float_to_fp16(x)}; }
template <> SELFEXT_HD bf16 from_float<bf16>(float x) { return bf16{float_to_bf16(x)}; }

}  // inline namespace SELFEXT_ISA_NAMESPACE
}  // namespace selfext
