// SelfExtend position rule (Jin et al. 2024, arXiv 2401.01325, eq. 2-4 of the method section), written
// once for both backends. Keys at j = 0..T_k-1; the T_q queries are the last T_q positions.
//   neighbor branch, i - j <  W:  query at i,                     key at j
//   grouped branch,  i - j >= W:  query at floor(i/G) + W - floor(W/G), key at floor(j/G)
// The shift W - floor(W/G) makes the two ranges meet at the window edge. G = 1 is plain RoPE.
#pragma once
#include <cstdint>

#include "core/hd.h"

namespace selfext {
inline namespace SELFEXT_ISA_NAMESPACE {

SELFEXT_HD bool se_is_neighbor(int64_t i, int64_t j, int64_t window) { return i - j < window; }
SELFEXT_HD int64_t se_grouped_query_pos(int64_t i, int64_t group, int64_t window) {
  return i / group + window - window / group;
}
SELFEXT_HD int64_t se_grouped_key_pos(int64_t j, int64_t group) { return j / group; }

// The largest sequence whose every position stays below a trained window L: G * (L - W + floor(W/G)).
SELFEXT_HD int64_t se_max_context(int64_t trained_ctx, int64_t group, int64_t window) {
  return group * (trained_ctx - window + window / group);
}

}  // inline namespace SELFEXT_ISA_NAMESPACE
}  // namespace selfext
