// The CPU attention leaf kernels for AVX-512 F/BW/DQ/VL (compiled with those flags; see attention_cpu.h).
#include "attention/attention_kernels_cpu.h"

namespace selfext {

const AttnCpuKernels* attn_kernels_avx512(int head_dim) {
  return attn_simd::kernels_for<attn_simd::VecAvx512>(head_dim);
}

}  // namespace selfext
