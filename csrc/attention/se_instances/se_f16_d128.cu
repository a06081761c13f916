// run_se<f16, 128> in its own translation unit (selfext_cuda_impl.cuh).
#include "attention/selfext_cuda_impl.cuh"

SELFEXT_SE_INSTANCE(f16, 128)
