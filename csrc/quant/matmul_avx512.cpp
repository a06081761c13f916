// AVX-512 product kernels. 256-bit vectors (with AVX-512VL's 32 registers, for larger tiles): on
// Zen 4 a 512-bit op takes two 256-bit pipe slots, so wider vectors buy no throughput there, and a
// 32-element legacy block is one 256-bit vector. With VNNI, vpdpbusd / vpdpwssd replace
// vpmaddubsw + vpmaddwd + vpaddd.
#include "quant/matmul_x86.h"

namespace selfext {

GemmFn gemm_kernel_avx512(int type, bool vnni) {
  return vnni ? x86_kernel</*kVnni=*/true, /*kRegs32=*/true>(type) : x86_kernel</*kVnni=*/false, /*kRegs32=*/true>(type);
}

}  // namespace selfext
