// Runtime value -> compile-time constant, written once. Anything outside a supported list throws,
// naming the value and the list.
#pragma once
#include "array.h"
#include "errors.h"
#include "half.h"

// SELFEXT_DISPATCH_HEAD_DIM(d, kHeadDim, [&] { run<kHeadDim>(...); });
#define SELFEXT_DISPATCH_HEAD_DIM(value, NAME, ...)                                           \
  [&] {                                                                                        \
    switch (value) {                                                                           \
      case 64: { constexpr int NAME = 64; return __VA_ARGS__(); }                              \
      case 80: { constexpr int NAME = 80; return __VA_ARGS__(); }                              \
      case 96: { constexpr int NAME = 96; return __VA_ARGS__(); }                              \
      case 128: { constexpr int NAME = 128; return __VA_ARGS__(); }                            \
      default:                                                                                 \
        throw ::selfext::ArgumentError(::selfext::detail::concat(                              \
            "head_dim ", value, " is not supported; supported: 64, 80, 96, 128"));            \
    }                                                                                          \
  }()

// Storage types of activations / KV: float32, float16, bfloat16 (uint16_t bit patterns for the halves).
// SELFEXT_DISPATCH_FLOAT(dtype, T, [&] { kernel<T>(...); }); T is float, selfext::f16 or selfext::bf16.

#define SELFEXT_DISPATCH_FLOAT(dtype, NAME, ...)                                              \
  [&] {                                                                                        \
    switch (dtype) {                                                                           \
      case ::selfext::DType::kFloat32: { using NAME = float; return __VA_ARGS__(); }          \
      case ::selfext::DType::kFloat16: { using NAME = ::selfext::f16; return __VA_ARGS__(); } \
      case ::selfext::DType::kBFloat16: { using NAME = ::selfext::bf16; return __VA_ARGS__(); } \
      default:                                                                                 \
        throw ::selfext::ArrayTypeError(::selfext::detail::concat(                             \
            "dtype ", ::selfext::dtype_name(dtype), " is not supported; supported: float32, float16, bfloat16")); \
    }                                                                                          \
  }()
