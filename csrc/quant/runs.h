// Runs: 8 consecutive elements of a quantized block, the unit the scalar dequantization and the CUDA
// kernels share. Every quantized format's header supplies, for its block type,
//   run_codes(b, j, q)        q[k] = code of element 8 j + k minus the format's offset, as an exact float
//   run_scale(b, j, &dl, &ml) the run's scale and min: w = dl * q - ml (ml = 0 for offset formats;
//                             ml = -m for the "d * q + m" formats, and x - (-m) == x + m bit for bit)
//   runs_per_scale(b)         how many consecutive runs (aligned) share one run_scale: 4 where scales
//                             cover 32 elements or the whole block, 2 for 16-element sub-blocks
// and dequantize_run below is the one dequantization formula built on them (dequantize_block of each
// header loops over it, so gguf's bit-exact test covers these accessors on the CPU too).
//
// The helpers are written for the GPU's benefit and are exact on both sides: codes are packed four to a
// 32-bit word (one byte each, element order) and widened to float with a byte permute into the
// mantissa of 2^23 instead of an integer-to-float conversion (a slow instruction on NVIDIA GPUs).
#pragma once
#include <cstdint>
#include <cstring>

#include "core/half.h"
#include "core/hd.h"
#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

namespace selfext {

constexpr int kRun = 8;  // elements per run; every block size (32, 256) is a multiple

inline namespace SELFEXT_ISA_NAMESPACE {

// Loads from block bytes. Blocks are only as aligned as their size allows (a 18-byte Q4_0 block is
// 2-byte aligned), so the suffix names the alignment the caller guarantees.
SELFEXT_HD uint32_t load_u32_a2(const uint8_t* p) {
#if defined(__CUDA_ARCH__)
  const uint16_t* h = reinterpret_cast<const uint16_t*>(p);
  return uint32_t(h[0]) | (uint32_t(h[1]) << 16);
#else
  uint32_t v;
  std::memcpy(&v, p, 4);  // little-endian hosts (x86-64, arm64), as GGUF is
  return v;
#endif
}
SELFEXT_HD uint32_t load_u32_a4(const uint8_t* p) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const uint32_t*>(p);
#else
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
#endif
}
// Two consecutive words from an 8-byte aligned address (one 64-bit load on the GPU).
SELFEXT_HD void load_u32x2_a8(const uint8_t* p, uint32_t* w0, uint32_t* w1) {
#if defined(__CUDA_ARCH__)
  const uint2 v = *reinterpret_cast<const uint2*>(p);
  *w0 = v.x;
  *w1 = v.y;
#else
  std::memcpy(w0, p, 4);
  std::memcpy(w1, p + 4, 4);
#endif
}
// Eight bytes from a 2-byte aligned address. On the GPU: the aligned words around them, funnel-shifted
// (3 word loads instead of 4 half-word ones); the third word is read only when the bytes straddle it,
// so nothing past the block's last byte is touched.
SELFEXT_HD void load_u32x2_a2(const uint8_t* p, uint32_t* w0, uint32_t* w1) {
#if defined(__CUDA_ARCH__)
  const uintptr_t addr = reinterpret_cast<uintptr_t>(p);
  const uint32_t* w = reinterpret_cast<const uint32_t*>(addr & ~uintptr_t(3));
  const uint32_t sh = uint32_t(addr & 3u) * 8u;
  const uint32_t a = w[0], b = w[1], c = sh ? w[2] : 0u;
  *w0 = __funnelshift_r(a, b, sh);
  *w1 = __funnelshift_r(b, c, sh);
#else
  *w0 = load_u32_a2(p);
  *w1 = load_u32_a2(p + 4);
#endif
}

// An fp16 scale widened to float32: exact both ways (the GPU's conversion instruction, or half.h's
// bit manipulation on the host), so the same value on both sides.
SELFEXT_HD float scale_to_float(uint16_t h) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(h));
#else
  return fp16_to_float(h);
#endif
}

// y[k] = float(byte k of w) - offset, exactly (codes < 256, integer offsets).
SELFEXT_HD void bytes4_to_float(uint32_t w, float offset, float* y) {
#if defined(__CUDA_ARCH__)
  // 0x4B0000bb is the float 2^23 + bb; subtracting 2^23 + offset is exact.
  const float base = 8388608.0f + offset;
  y[0] = __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7540)) - base;
  y[1] = __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7541)) - base;
  y[2] = __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7542)) - base;
  y[3] = __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7543)) - base;
#else
  for (int k = 0; k < 4; ++k) y[k] = float(int((w >> (8 * k)) & 0xFFu)) - offset;
#endif
}

SELFEXT_HD void codes8_to_float(uint32_t w0, uint32_t w1, float offset, float (&q)[kRun]) {
  bytes4_to_float(w0, offset, q);
  bytes4_to_float(w1, offset, q + 4);
}

// Bits 0..3 of b spread to bit `to` of bytes 0..3 (the fifth / third code bit of four elements).
SELFEXT_HD uint32_t spread_bits4(uint32_t b, int to) {
  return (((b & 1u) | ((b & 2u) << 7) | ((b & 4u) << 14) | ((b & 8u) << 21))) << to;
}

// A float32 product rounded on its own: gguf's NumPy rounds d * q before adding the min, and nvcc would
// otherwise contract "d * q - m" into one FMA (one rounding), breaking bit-exactness on the GPU.
SELFEXT_HD float fmul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;  // the package compiles with -ffp-contract=off
#endif
}

// The dequantization formula of every quantized format: w = dl * q - ml, float32, product rounded first.
template <typename Block>
SELFEXT_HD void dequantize_run(const Block& b, int j, float* y) {
  float q[kRun], dl, ml;
  run_codes(b, j, q);
  run_scale(b, j, &dl, &ml);
  for (int k = 0; k < kRun; ++k) y[k] = fmul_rn(dl, q[k]) - ml;
}

}  // inline namespace SELFEXT_ISA_NAMESPACE
}  // namespace selfext
