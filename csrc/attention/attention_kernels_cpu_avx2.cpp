// The CPU attention leaf kernels for AVX2 + FMA + F16C (compiled with those flags; see attention_cpu.h).
#include "attention/attention_kernels_cpu.h"

namespace selfext {

const AttnCpuKernels* attn_kernels_avx2(int head_dim) { return attn_simd::kernels_for<attn_simd::VecAvx2>(head_dim); }

}  // namespace selfext
