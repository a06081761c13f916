#include "quant/matmul_kernels.h"
namespace selfext {
GemmFn gemm_kernel_avx2(int) { return nullptr; }
}
