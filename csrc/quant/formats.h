// Per-format facts in one table: GGML type id, name, elements per block, bytes per block, and whether
// this package multiplies it as a weight. Every GGML id a GGUF file may hold is named here, so a
// refusal can say which type it refused. Usable from host and CUDA code (constexpr, no I/O).
#pragma once
#include <cstdint>

#include "quant/float_formats.h"
#include "quant/q2_k.h"
#include "quant/q3_k.h"
#include "quant/q4_0.h"
#include "quant/q4_1.h"
#include "quant/q4_k.h"
#include "quant/q5_0.h"
#include "quant/q5_1.h"
#include "quant/q5_k.h"
#include "quant/q6_k.h"
#include "quant/q8_0.h"
#include "quant/q8_act.h"
#include "quant/q8_k.h"

namespace selfext {

struct QTypeInfo {
  int id;              // GGML type id (GGUF tensor type)
  const char* name;    // GGML name
  int block_size;      // elements per block (0: unknown layout)
  int block_bytes;     // bytes per block
  bool supported;      // accepted as a weight format by the products here
};

// Sizes of the supported formats come from the structs (their static_asserts pin them to GGML's).
inline constexpr QTypeInfo kQTypeTable[] = {
    {0, "F32", 1, 4, true},
    {1, "F16", 1, int(sizeof(f16)), true},
    {2, "Q4_0", kQK4_0, int(sizeof(block_q4_0)), true},
    {3, "Q4_1", kQK4_1, int(sizeof(block_q4_1)), true},
    {4, "Q4_2", 0, 0, false},  // removed from GGML
    {5, "Q4_3", 0, 0, false},  // removed from GGML
    {6, "Q5_0", kQK5_0, int(sizeof(block_q5_0)), true},
    {7, "Q5_1", kQK5_1, int(sizeof(block_q5_1)), true},
    {8, "Q8_0", kQK8_0, int(sizeof(block_q8_0)), true},
    {9, "Q8_1", 32, 36, false},  // activation format of llama.cpp, never a weight
    {10, "Q2_K", kQK_K, int(sizeof(block_q2_k)), true},
    {11, "Q3_K", kQK_K, int(sizeof(block_q3_k)), true},
    {12, "Q4_K", kQK_K, int(sizeof(block_q4_k)), true},
    {13, "Q5_K", kQK_K, int(sizeof(block_q5_k)), true},
    {14, "Q6_K", kQK_K, int(sizeof(block_q6_k)), true},
    {15, "Q8_K", kQK_K, int(sizeof(block_q8_k)), false},  // activation format, never a weight
    {16, "IQ2_XXS", 256, 66, false},
    {17, "IQ2_XS", 256, 74, false},
    {18, "IQ3_XXS", 256, 98, false},
    {19, "IQ1_S", 256, 50, false},
    {20, "IQ4_NL", 32, 18, false},
    {21, "IQ3_S", 256, 110, false},
    {22, "IQ2_S", 256, 82, false},
    {23, "IQ4_XS", 256, 136, false},
    {24, "I8", 1, 1, false},
    {25, "I16", 1, 2, false},
    {26, "I32", 1, 4, false},
    {27, "I64", 1, 8, false},
    {28, "F64", 1, 8, false},
    {29, "IQ1_M", 256, 56, false},
    {30, "BF16", 1, int(sizeof(bf16)), true},
    {31, "Q4_0_4_4", 0, 0, false},  // removed from GGML
    {32, "Q4_0_4_8", 0, 0, false},  // removed from GGML
    {33, "Q4_0_8_8", 0, 0, false},  // removed from GGML
    {34, "TQ1_0", 256, 54, false},
    {35, "TQ2_0", 256, 66, false},
    {36, "IQ4_NL_4_4", 0, 0, false},  // removed from GGML
    {37, "IQ4_NL_4_8", 0, 0, false},  // removed from GGML
    {38, "IQ4_NL_8_8", 0, 0, false},  // removed from GGML
    {39, "MXFP4", 32, 17, false},
    {40, "NVFP4", 64, 36, false},
};
inline constexpr int kQTypeTableSize = int(sizeof(kQTypeTable) / sizeof(kQTypeTable[0]));

// The row of type id `id`, or nullptr for an id GGML never defined (ids are the table's indices).
constexpr const QTypeInfo* qtype_info(int id) {
  return (id >= 0 && id < kQTypeTableSize) ? &kQTypeTable[id] : nullptr;
}

// True for the formats whose products quantize the activations to 8 bits (everything but F32/F16/BF16).
constexpr bool qtype_is_integer(int id) { return id != 0 && id != 1 && id != 30; }
// True for the K-quants (256-element super-blocks, Q8_K activations).
constexpr bool qtype_is_k(int id) { return id >= 10 && id <= 14; }

}  // namespace selfext
