// RoPE (Su et al. 2021) as GGUF models use it. The kernels take RoPE as a table of per-position,
// per-pair (cos, sin), built once in double precision from the per-pair inverse frequencies that
// python/selfext_native/rope.py derives from the file (base, linear, YaRN, Llama-3.1 factors) and
// premultiplied by the magnitude factor (YaRN's attention factor; 1 otherwise). float32 angles
// (position x frequency) would lose ~1e-3 rad at 32k positions; a table in double does not.
//
// Pair convention: "norm" (llama in GGUF: the converter permuted Q/K rows) rotates (x[2p], x[2p+1]);
// "neox" (qwen2) rotates (x[p], x[p + rope_dim/2]). Dimensions >= rope_dim are not rotated.
#pragma once
#include <cstdint>

#include "core/hd.h"

namespace selfext {

enum class RopeStyle : int { kNorm = 0, kNeox = 1 };

inline namespace SELFEXT_ISA_NAMESPACE {

// Indices of the two elements pair p rotates.
SELFEXT_HD void rope_pair(int p, int rope_dim, RopeStyle style, int& a, int& b) {
  if (style == RopeStyle::kNorm) {
    a = 2 * p;
    b = 2 * p + 1;
  } else {
    a = p;
    b = p + rope_dim / 2;
  }
}

// The inverse of rope_pair: the pair p that element d (< rope_dim) belongs to, and whether d is its
// first element (a) or its second (b).
SELFEXT_HD void rope_pair_of(int d, int rope_dim, RopeStyle style, int& p, bool& first) {
  if (style == RopeStyle::kNorm) {
    p = d / 2;
    first = d % 2 == 0;
  } else {
    const int half = rope_dim / 2;
    first = d < half;
    p = first ? d : d - half;
  }
}

// (xa, xb) <- (xa cos - xb sin, xa sin + xb cos)
SELFEXT_HD void rope_rotate(float& xa, float& xb, float c, float s) {
  const float a = xa, b = xb;
  xa = a * c - b * s;
  xb = a * s + b * c;
}

}  // inline namespace SELFEXT_ISA_NAMESPACE

// table: (n_pos, n_pairs, 2) float32 = mscale * (cos, sin)(pos * inv_freq[p]), computed in double.
void build_rope_table(const double* inv_freq, int n_pairs, double mscale, int64_t n_pos, float* table);

}  // namespace selfext
