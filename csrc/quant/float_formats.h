// Float weight formats F32, F16 and BF16: one element per "block", no scale. Dequantization is the
// exact widening to float32 (core/half.h); the products multiply float32 activations directly.
#pragma once
#include <cstdint>

#include "core/half.h"

namespace selfext {

static_assert(sizeof(f16) == 2, "wrong f16 size");
static_assert(sizeof(bf16) == 2, "wrong bf16 size");

inline namespace SELFEXT_ISA_NAMESPACE {

SELFEXT_HD void dequantize_block(const float& b, float* y) { y[0] = b; }
SELFEXT_HD void dequantize_block(const f16& b, float* y) { y[0] = fp16_to_float(b.bits); }
// bf16 is the top half of a float32: widening is a 16-bit shift (gguf: int16 << 16 viewed as float32).
SELFEXT_HD void dequantize_block(const bf16& b, float* y) { y[0] = bf16_to_float(b.bits); }

}  // inline namespace SELFEXT_ISA_NAMESPACE
}  // namespace selfext
