#include "quant/matmul_kernels.h"
namespace selfext {
GemmFn gemm_kernel_avx512(int, bool) { return nullptr; }
}
