#include <cmath>

#include "attention/rope.h"

namespace selfext {

void build_rope_table(const double* inv_freq, int n_pairs, double mscale, int64_t n_pos, float* table) {
  for (int64_t pos = 0; pos < n_pos; ++pos) {
    float* row = table + pos * n_pairs * 2;
    for (int p = 0; p < n_pairs; ++p) {
      const double angle = double(pos) * inv_freq[p];
      row[2 * p] = float(mscale * std::cos(angle));
      row[2 * p + 1] = float(mscale * std::sin(angle));
    }
  }
}

}  // namespace selfext
