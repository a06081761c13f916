// AVX2 (+FMA, F16C) product kernels: vpmaddubsw for the integer formats, 16 vector registers.
#include "quant/matmul_x86.h"

namespace selfext {

GemmFn gemm_kernel_avx2(int type) { return x86_kernel</*kVnni=*/false, /*kRegs32=*/false>(type); }

}  // namespace selfext
