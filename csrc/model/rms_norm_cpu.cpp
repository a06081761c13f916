#include <algorithm>
#include <cmath>

#include "core/half.h"
#include "model/rms_norm.h"

namespace selfext {

template <typename T>
void rms_norm_cpu(const RmsNormParams& p, ThreadPool& pool) {
  const int64_t rows_per_task = p.n >= 4096 ? 1 : 16;
  pool.parallel_for((p.rows + rows_per_task - 1) / rows_per_task, [&](int64_t task) {
    const int64_t r_end = std::min(p.rows, (task + 1) * rows_per_task);
    for (int64_t r = task * rows_per_task; r < r_end; ++r) {
      const T* x = static_cast<const T*>(p.x) + r * p.x_stride;
      T* y = static_cast<T*>(p.y) + r * p.y_stride;
      // Sum of squares in double: rows of 8k+ float32 values would otherwise lose digits.
      double ss = 0.0;
      for (int64_t i = 0; i < p.n; ++i) {
        const double v = to_float(x[i]);
        ss += v * v;
      }
      const float inv = float(1.0 / std::sqrt(ss / double(p.n) + double(p.eps)));
      for (int64_t i = 0; i < p.n; ++i) y[i] = from_float<T>(to_float(x[i]) * inv * p.w[i]);
    }
  });
}

template void rms_norm_cpu<float>(const RmsNormParams&, ThreadPool&);
template void rms_norm_cpu<f16>(const RmsNormParams&, ThreadPool&);
template void rms_norm_cpu<bf16>(const RmsNormParams&, ThreadPool&);

}  // namespace selfext
