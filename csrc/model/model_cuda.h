// The forward pass on a CUDA GPU, behind the same Model interface as the CPU. Plain C++ (no CUDA
// types): bindings/model.cpp includes it in every build; the definitions live in model_cuda.cu and exist
// only when SELFEXT_WITH_CUDA is set.
//
// The weights are uploaded once and stay quantized (the GGUF blocks, multiplied by quant/matmul_cuda);
// the KV cache (float16 or bfloat16, K before RoPE) and the scratch of one n_batch chunk live on the
// device; only the logits asked for come back to the host.
#pragma once
#include <cstdint>
#include <memory>

#include "model/model.h"

namespace selfext {

// What a CUDA model of this config and these weights takes on the device, by part (bytes).
struct CudaModelPlan {
  int64_t weights = 0, kv_cache = 0, scratch = 0;
  int64_t total() const { return weights + kv_cache + scratch; }
};
CudaModelPlan cuda_model_plan(const ModelConfig& cfg, const ModelWeights& weights);

// Uploads the weights to device `device` and allocates the cache; before allocating anything, refuses
// with OutOfMemoryError (needed vs free, by part) when the plan does not fit in the free device memory.
std::unique_ptr<Model> make_model_cuda(ModelConfig cfg, ModelWeights weights, int device);

}  // namespace selfext
