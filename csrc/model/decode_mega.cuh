// The decode megakernel: a whole decode step (every layer's products, attention and merge, and the
// head) as one persistent cooperative kernel, for the fused decode path of small models.
//
// Why: a SmolLM2-sized step is ~190 dependent kernels of 1-7 us each (H200, CUPTI, 2026-12-02: 0.72 ms
// of kernel time in a 1.07 ms step); with PDL each boundary still costs the previous grid's drain and
// the release of the next (~1.5-2 us), and each small kernel pays DRAM latency for its first weights.
// Here the step is a list of phases (MegaPhase) run by one grid of resident 128-thread blocks: each
// block takes the phase's virtual blocks vb = blockIdx.x, blockIdx.x + gridDim.x, ..., running the same
// device code as the separate kernels (matvec_block, se_decode_block, merge_splits_row), and a grid
// barrier separates dependent phases. While a block works on phase p (and waits at its barrier), its
// share of phase p + 1's weights (or keys and values) is already on its way into L2.
//
// Memory ordering: a phase's writes (plain stores by any block) are ordered before the barrier's
// release (thread 0, after the block's __syncthreads: fence.acq_rel.gpu, then the arrival add), and
// the next phase's reads after the waiters' ld.acquire.gpu of the arrival count, which at gpu scope
// also discards the SM's L1 lines: so plain (L1-cached) loads of data written in earlier phases are
// correct. Nothing written in the kernel is read through the non-coherent (ld.global.nc) path: the
// activation loads are plain loads (checked in the SASS, see decode_mega.cu).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "attention/se_decode.cuh"
#include "quant/matvec_cuda.cuh"

namespace selfext {
namespace mega {

enum PhaseKind : int { kMatvec = 0, kSeDecode = 1, kMerge = 2 };

struct MergeArgs {
  const float* ws_o;
  const float* ws_ml;
  int n_splits;
  int64_t n_rows;
  int head_dim, n_heads;
  void* out;  // 16-bit (f16 or bf16)
  int64_t stride_t, stride_h;
};

struct MegaPhase {
  int kind = kMatvec;
  int n_blocks = 0;       // virtual blocks
  int barrier = 0;        // a grid barrier after the phase (the next phase reads what this one wrote)
  int bf16 = 0;           // attention and merge: 16-bit type
  // kMatvec: the fused product as matvec_cuda_fused would launch it.
  int qtype = 0, in = 0, warp_rows = 0;
  mv_cuda::ProductArgs mv;
  // kSeDecode: block vb is (kv head vb / n_splits, split vb % n_splits).
  attn_cuda::SeArgs se{};
  int head_dim = 0, chunks_per_split = 0, n_splits = 1;
  // kMerge: row vb.
  MergeArgs mg{};
  // L2 prefetch of this phase's inputs (weights rows; keys and values) issued during the phase before.
  int prefetch = 0;
};

// Grid-barrier state: zero before a launch, zero again after it (the last block to leave resets it).
struct MegaSync {
  unsigned arrive, exit, pad[2];
};

// Whether the megakernel runs products of this type (the formats instantiated in decode_mega.cu).
bool supported_type(QType t);
// Whether the current device can run it (cooperative launch; compute capability >= 7.0).
bool device_supported();

// A decode step's phases, built on the host, uploaded once and launched (captured in the model's decode
// graphs). Blocks: the grid size, fixed when the list is built (the attention is planned for it).
class DecodeMega {
 public:
  explicit DecodeMega(int blocks) : blocks_(blocks) {}
  ~DecodeMega();
  DecodeMega(const DecodeMega&) = delete;
  DecodeMega& operator=(const DecodeMega&) = delete;

  // The grid for the current device: resident blocks per SM (at most SELFEXT_CUDA_MEGA_BPS, default 2)
  // times the SMs.
  static int grid_blocks();
  void add_matvec(const mv_cuda::FusedMatvec& f);
  // The decode attention; a plan of several splits adds its merge as a second phase.
  void add_attention(const attn_cuda::SeDecodeMega& s, int n_heads);
  // The next phase reads what the phases since the last barrier wrote.
  void barrier();
  // Copies the phases to the device (synchronous: before any graph that launches them is captured).
  void upload();
  void launch(MegaSync* sync, cudaStream_t stream) const;
  int blocks() const { return blocks_; }
  size_t phases() const { return host_.size(); }

 private:
  std::vector<MegaPhase> host_;
  MegaPhase* dev_ = nullptr;
  int blocks_ = 0;
  size_t smem_ = 0;
};

}  // namespace mega
}  // namespace selfext
