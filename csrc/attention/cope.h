// Contextual position encoding (Golovneva et al. 2024, arXiv 2405.18719, Sec. 3), written once for both
// backends. For query i and keys j <= i:
//   s_ij = <q_i, k_j> * scale            gate g_ij = sigmoid(s_ij)
//   p_ij = sum_{t=j..i} g_it, clamped to npos_max - 1
//   z_ij = (p - floor p) * <q_i, e[ceil p]> + (1 - p + floor p) * <q_i, e[floor p]>
//   attention = softmax_j(s_ij + z_ij)   (paper's listing: z unscaled)
// or, with scale_pos_logits (the authors' released code), softmax_j((<q,k> + z) * scale) with z from the
// unscaled integer logits. Gates are >= 0, so once p reaches the clamp every earlier key has the same z.
#pragma once
#include <cmath>

#include "core/hd.h"

namespace selfext {
inline namespace SELFEXT_ISA_NAMESPACE {

SELFEXT_HD float cope_gate(float scaled_logit) { return 1.f / (1.f + expf(-scaled_logit)); }

SELFEXT_HD float cope_clamp(float p, int npos_max) {
  const float top = float(npos_max - 1);
  return p < top ? p : top;
}

// Interpolated position logit at (clamped) position p >= 0 from the integer logits
// pos_logits[t] = <q_i, e[t]>, t in [0, npos_max).
SELFEXT_HD float cope_interp(float p, const float* pos_logits) {
  const float lo = floorf(p);
  const int il = int(lo);
  const float frac = p - lo;
  const int ih = frac > 0.f ? il + 1 : il;
  return frac * pos_logits[ih] + (1.f - frac) * pos_logits[il];
}

}  // inline namespace SELFEXT_ISA_NAMESPACE
}  // namespace selfext
