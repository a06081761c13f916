// Online softmax (Milakov & Gimelshein 2018): running max m and running sum l of exp(s - m); two partial
// states over disjoint key sets merge exactly. Shared by the flash-style kernels and split-K decode.
#pragma once
#include <cmath>

#include "core/hd.h"

namespace selfext {
inline namespace SELFEXT_ISA_NAMESPACE {

// Merge partial (m_b, l_b) into (m_a, l_a); returns the factors the two accumulators are scaled by:
// acc = acc_a * alpha + acc_b * beta.
SELFEXT_HD void softmax_merge(float& m_a, float& l_a, float m_b, float l_b, float& alpha, float& beta) {
  const float m = m_a > m_b ? m_a : m_b;
  if (m == -INFINITY) {  // both empty
    alpha = 1.f;
    beta = 0.f;
    return;
  }
  alpha = expf(m_a - m);
  beta = expf(m_b - m);
  l_a = l_a * alpha + l_b * beta;
  m_a = m;
}

}  // inline namespace SELFEXT_ISA_NAMESPACE
}  // namespace selfext
