// The decode step of a small model in one thread-block cluster (compute capability >= 9.0).
//
// Why: a SmolLM2-sized decode step is ~150 dependent kernels. Under PDL each boundary still costs the
// previous grid's drain and the release of the next, and each kernel's first loads (its input row from L2)
// come after that release; a grid-wide barrier in a persistent kernel costs as much (~1.3 us, H200,
// decode_mega.cuh). The weights of such a model are small (SmolLM2: 2.2 MB per layer) and its arithmetic
// per step tiny (~3.5 M multiply-adds per layer), so 16 SMs are enough for it if nothing else is in the way.
// Here the 16 blocks of one cluster run every layer:
//   - the weights stream from global memory into a ring in each block's shared memory with TMA bulk copies
//     (one per block per matrix slice, issued as soon as the ring has room, so a layer's weights are
//     on chip before its stage starts);
//   - the stages exchange their outputs (q, k, v, attention partial states, the residual row, the SwiGLU
//     row) by pushing them into every block's shared memory (st.shared::cluster), and meet at a cluster
//     barrier (barrier.cluster arrive.release / wait.acquire), which orders those stores;
//   - the past keys and values of a block's attention split arrive by bulk copy while the stages before run.
// Per layer: RMSNorm + Q/K/V (rows split over the blocks; K and V also into the cache) | SelfExtend
// attention (kv head x key split per block; partial states to all) | merge + output projection + residual |
// RMSNorm + gate/up + SwiGLU | down + residual: five cluster barriers.
//
// Products run on 16-bit activation codes (x ~ d v per 32 elements, v = 256 h + l, as the decode products
// of matmul_cuda.cu: error <= amax / 65024 per element) with dp4a; Q4_1 weights only.
// The head stays with the model (the step's largest matrix wants the whole GPU).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "attention/rope.h"
#include "quant/matmul.h"

namespace selfext {
namespace clus {

constexpr int kThreads = 512;
constexpr int kClusterSize = 16;
constexpr int kMaxRep = 8;

struct LayerPtrs {
  const void* wqkv;  // (QD + 2 KD) x E, Q, K, V rows back to back
  const void* wo;    // E x QD
  const void* wg;    // F x E
  const void* wu;    // F x E
  const void* wd;    // E x F
  const float *attn_norm, *ffn_norm;
  const float *bq, *bk, *bv;  // or null
  void *kc, *vc;              // this layer's (Hkv, n_ctx, D) cache, K before RoPE
};

struct Config {
  int n_layer = 0, E = 0, QD = 0, KD = 0, F = 0, H = 0, Hkv = 0, D = 0;
  int64_t n_ctx = 0;
  float eps = 0.f, scale = 0.f;
  int64_t group = 1, window = 1;
  const float* rope_table = nullptr;  // (rope_n_pos, D/2, 2)
  int64_t rope_n_pos = 0;
  int rope_dim = 0;
  RopeStyle style = RopeStyle::kNorm;
  bool bf16 = false;
  int kv_keys = 128;           // past keys of a split staged at a time (the attention's chunk)
  std::vector<QType> types;  // every layer matrix's type
};

// "" when the cluster decode runs this model on the current device, else why not.
std::string why_not(const Config& c);

class ClusterDecode {
 public:
  ClusterDecode(const Config& c, const std::vector<LayerPtrs>& layers);
  ~ClusterDecode();
  ClusterDecode(const ClusterDecode&) = delete;
  ClusterDecode& operator=(const ClusterDecode&) = delete;
  // One decode step: x (E floats, the embedded token) -> x after the last layer. pos_dev = {position, key
  // count}; keys and values 0 .. key count - 2 are in the cache. Launched with PDL after the embedding.
  void launch(const int32_t* pos_dev, float* x, cudaStream_t stream) const;
  // Shared memory per block.
  int smem_bytes() const { return smem_; }

 private:
  Config c_;
  void* dev_ = nullptr;  // LayerPtrs[n_layer] then Chunk[n_chunks]
  int n_chunks_ = 0, smem_ = 0;
  std::vector<int> off_;
};

}  // namespace clus
}  // namespace selfext
