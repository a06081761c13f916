// The host/device marker for math written once and shared by the CPU and CUDA kernels.
#pragma once
#if defined(__CUDACC__)
#define SELFEXT_HD __host__ __device__ __forceinline__
#else
#define SELFEXT_HD inline
#endif

// Inline functions of shared headers live in an ISA-specific inline namespace: a file compiled with
// -mavx512f gets selfext::isa_avx512::fp16_to_float, a baseline file selfext::isa_base::fp16_to_float,
// so the linker can never keep the AVX-512 copy for a caller on a baseline CPU. CMake sets SELFEXT_ISA
// for *_avx2.cpp, *_avx512.cpp and *_neon.cpp. Types stay outside it (they must match across files).
#ifndef SELFEXT_ISA
#define SELFEXT_ISA base
#endif
#define SELFEXT_ISA_CAT2_(a, b) a##b
#define SELFEXT_ISA_CAT_(a, b) SELFEXT_ISA_CAT2_(a, b)
#define SELFEXT_ISA_NAMESPACE SELFEXT_ISA_CAT_(isa_, SELFEXT_ISA)
