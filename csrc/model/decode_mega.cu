// The decode megakernel (see decode_mega.cuh for the design and its memory ordering).
#include "model/decode_mega.cuh"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/cuda_check.cuh"
#include "core/cuda_launch.cuh"
#include "core/errors.h"

namespace selfext {
namespace mega {
namespace {

using mv_cuda::kFusedNR;
using mv_cuda::kFusedU;
using mv_cuda::kInHalf;
using mv_cuda::kInRmsNorm;
using mv_cuda::kInSwiGlu;
using mv_cuda::kMvWarps;
using mv_cuda::ProductArgs;
using mv_cuda::QuantFmt;

constexpr int kThreads = kMvWarps * 32;  // every phase's block: the matvec's 4 warps, the 128-thread decode
static_assert(kThreads == attn_cuda::kDecMinThreads, "the decode attention block must match the matvec's");
constexpr int64_t kPrefetchMaxBytes = int64_t(8) << 20;  // as the decode products' (matmul_cuda.cu)

__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Barrier k (0, 1, ...) of the launch: the arrival count only grows within a launch, so barrier k is
// passed when it reaches (k + 1) * gridDim.x; one atomic and one polled word, no reset on the critical
// path (the last block to leave the kernel zeroes it). Thread 0's fence.acq_rel after the block's
// __syncthreads releases the block's writes of the phase (cumulativity); its acquiring loads order the
// next phase's reads after every other block's release.
__device__ __forceinline__ void grid_barrier(MegaSync* s, unsigned k) {
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned target = (k + 1) * gridDim.x;
    asm volatile("fence.acq_rel.gpu;" ::: "memory");
    asm volatile("red.relaxed.gpu.global.add.u32 [%0], 1;" ::"l"(&s->arrive) : "memory");
    while (ld_acquire(&s->arrive) < target) {
    }
  }
  __syncthreads();
}

template <typename F>
__device__ __forceinline__ void run_matvec(const ProductArgs& a, int in, int warp_rows, int vb) {
  if (warp_rows) {
    if (in == kInRmsNorm) mv_cuda::matvec_block<F, kFusedNR, 1, kFusedU, kInRmsNorm, true>(a, vb, 0);
    else if (in == kInSwiGlu) mv_cuda::matvec_block<F, kFusedNR, 1, kFusedU, kInSwiGlu, true>(a, vb, 0);
    else mv_cuda::matvec_block<F, kFusedNR, 1, kFusedU, kInHalf, true>(a, vb, 0);
  } else {
    if (in == kInRmsNorm) mv_cuda::matvec_block<F, kFusedNR, 1, kFusedU, kInRmsNorm, false>(a, vb, 0);
    else if (in == kInSwiGlu) mv_cuda::matvec_block<F, kFusedNR, 1, kFusedU, kInSwiGlu, false>(a, vb, 0);
    else mv_cuda::matvec_block<F, kFusedNR, 1, kFusedU, kInHalf, false>(a, vb, 0);
  }
}

// The formats the megakernel instantiates (supported_type): the legacy 4- and 8-bit ones and the common
// K-quants of small models' GGUFs.
#define SELFEXT_MEGA_FORMATS(X)   \
  X(Q4_0, block_q4_0)             \
  X(Q4_1, block_q4_1)             \
  X(Q5_0, block_q5_0)             \
  X(Q8_0, block_q8_0)             \
  X(Q4_K, block_q4_k)             \
  X(Q5_K, block_q5_k)             \
  X(Q6_K, block_q6_k)

__device__ __forceinline__ void matvec_phase(const MegaPhase& ph, int vb) {
  switch (QType(ph.qtype)) {
#define SELFEXT_MEGA_CASE(T, B) \
  case QType::T: run_matvec<QuantFmt<B, QType::T>>(ph.mv, ph.in, ph.warp_rows, vb); break;
    SELFEXT_MEGA_FORMATS(SELFEXT_MEGA_CASE)
#undef SELFEXT_MEGA_CASE
    default: break;  // refused on the host
  }
}

__device__ __forceinline__ void attention_phase(const MegaPhase& ph, int vb, unsigned char* smem) {
  const int kvh = vb / ph.n_splits, split = vb % ph.n_splits;
  if (ph.head_dim == 64) {
    if (ph.bf16) attn_cuda::se_decode_block<bf16, 64, kThreads>(ph.se, ph.chunks_per_split, kvh, split, ph.n_splits, smem);
    else attn_cuda::se_decode_block<f16, 64, kThreads>(ph.se, ph.chunks_per_split, kvh, split, ph.n_splits, smem);
  } else {
    if (ph.bf16) attn_cuda::se_decode_block<bf16, 128, kThreads>(ph.se, ph.chunks_per_split, kvh, split, ph.n_splits, smem);
    else attn_cuda::se_decode_block<f16, 128, kThreads>(ph.se, ph.chunks_per_split, kvh, split, ph.n_splits, smem);
  }
}

__device__ __forceinline__ void merge_phase(const MegaPhase& ph, int vb) {
  const MergeArgs& m = ph.mg;
  if (ph.bf16)
    attn_cuda::merge_splits_row<bf16>(m.ws_o, m.ws_ml, m.n_splits, m.n_rows, m.head_dim, m.n_heads,
                                      static_cast<bf16*>(m.out), m.stride_t, m.stride_h, vb);
  else
    attn_cuda::merge_splits_row<f16>(m.ws_o, m.ws_ml, m.n_splits, m.n_rows, m.head_dim, m.n_heads,
                                     static_cast<f16*>(m.out), m.stride_t, m.stride_h, vb);
}

// Thread 0: this block's share of phase ph's inputs into L2 (its virtual blocks' weight rows, or keys
// and values), a hint issued one phase ahead.
__device__ __forceinline__ void prefetch_phase(const MegaPhase& ph) {
  if (!ph.prefetch) return;
  for (int vb = blockIdx.x; vb < ph.n_blocks; vb += gridDim.x) {
    if (ph.kind == kMatvec) {
      const ProductArgs& a = ph.mv;
      const int64_t br = ph.warp_rows ? mv_cuda::matvec_block_rows<kFusedNR, true>()
                                      : mv_cuda::matvec_block_rows<kFusedNR, false>();
      const int64_t b0 = int64_t(vb) * br;
      if (b0 < a.rows) prefetch_l2(a.w + b0 * a.row_bytes, (min(a.rows, b0 + br) - b0) * a.row_bytes);
    } else if (ph.kind == kSeDecode) {
      const int keys = ph.chunks_per_split * (kThreads / 4);
      if (ph.head_dim == 64) attn_cuda::se_decode_prefetch<f16, 64>(ph.se, keys, vb / ph.n_splits, vb % ph.n_splits);
      else attn_cuda::se_decode_prefetch<f16, 128>(ph.se, keys, vb / ph.n_splits, vb % ph.n_splits);
    }
  }
}

// The phases' parameters are read from shared memory: a phase's fields in global memory would be
// re-read from L2 after every barrier (the acquire discards the SM's L1 lines), a chain of dependent
// round trips before the first weight load. The block copies phase p + 1 while it runs phase p.
constexpr int kPhaseWords = int(sizeof(MegaPhase) / 8);
static_assert(sizeof(MegaPhase) % 8 == 0, "phases are copied in 8-byte words");

__device__ __forceinline__ void copy_phase(MegaPhase* dst, const MegaPhase* src) {
  const uint64_t* s = reinterpret_cast<const uint64_t*>(src);
  uint64_t* d = reinterpret_cast<uint64_t*>(dst);
  for (int i = threadIdx.x; i < kPhaseWords; i += blockDim.x) d[i] = __ldg(s + i);
}

// diag (benchmarks only, SELFEXT_CUDA_MEGA_DIAG): 1 skips the phases' work (the barriers' cost), 2 skips
// the barriers (the work's cost; wrong results).
__global__ void __launch_bounds__(kThreads) decode_mega_kernel(const MegaPhase* phases, int n_phases, MegaSync* sync,
                                                               int diag) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ MegaPhase sph[3];  // phases p, p + 1 (ready, prefetched at p's start) and p + 2 (being copied)
  for (int i = 0; i < 2 && i < n_phases; ++i) copy_phase(&sph[i], &phases[i]);
  __syncthreads();
  if (threadIdx.x == 0 && n_phases > 0) prefetch_phase(sph[0]);
  unsigned k = 0;  // barriers passed
  for (int p = 0; p < n_phases; ++p) {
    const MegaPhase& ph = sph[p % 3];
    if (threadIdx.x == 0 && p + 1 < n_phases) prefetch_phase(sph[(p + 1) % 3]);
    if (p + 2 < n_phases) copy_phase(&sph[(p + 2) % 3], &phases[p + 2]);  // the slot of phase p - 1
    const bool bar = ph.barrier && diag != 2;  // read before the __syncthreads after which sph[p % 3] is rewritten
    if (diag != 1) {
      for (int vb = blockIdx.x; vb < ph.n_blocks; vb += gridDim.x) {
        if (ph.kind == kMatvec) matvec_phase(ph, vb);
        else if (ph.kind == kSeDecode) attention_phase(ph, vb, smem);
        else merge_phase(ph, vb);
        __syncthreads();  // the next virtual block reuses the shared memory
      }
    }
    __syncthreads();  // phase p + 2's copy is complete; nothing reads phase p's slot after this
    if (bar) grid_barrier(sync, k++);
  }
  // The last block to leave resets the barrier state for the next launch (every other block is past its
  // last barrier by then).
  if (threadIdx.x == 0) {
    __threadfence();
    if (atomicAdd(&sync->exit, 1u) == gridDim.x - 1) {
      atomicExch(&sync->arrive, 0u);
      atomicExch(&sync->exit, 0u);
    }
  }
}

size_t mega_smem_bytes() {
  return std::max(attn_cuda::dec_smem_bytes<64, kThreads>(), attn_cuda::dec_smem_bytes<128, kThreads>());
}

bool prefetch_enabled() {
  const char* e = std::getenv("SELFEXT_CUDA_MEGA_PREFETCH");
  return l2_prefetch_enabled() && !(e && std::strcmp(e, "0") == 0);
}

}  // namespace

bool supported_type(QType t) {
  switch (t) {
#define SELFEXT_MEGA_CASE(T, B) case QType::T:
    SELFEXT_MEGA_FORMATS(SELFEXT_MEGA_CASE)
#undef SELFEXT_MEGA_CASE
    return true;
    default: return false;
  }
}

bool device_supported() {
  int dev = 0, coop = 0, major = 0;
  SELFEXT_CUDA_CHECK(cudaGetDevice(&dev));
  SELFEXT_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev));
  SELFEXT_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  return coop != 0 && major >= 7;
}

int DecodeMega::grid_blocks() {
  int dev = 0, sms = 0, per_sm = 0;
  SELFEXT_CUDA_CHECK(cudaGetDevice(&dev));
  SELFEXT_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  const size_t smem = mega_smem_bytes();
  SELFEXT_CUDA_CHECK(cudaFuncSetAttribute(decode_mega_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  SELFEXT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, decode_mega_kernel, kThreads, smem));
  int want = 2;
  if (const char* e = std::getenv("SELFEXT_CUDA_MEGA_BPS")) want = std::max(1, std::atoi(e));
  SELFEXT_CHECK(per_sm >= 1, BackendError, "the decode megakernel does not fit on an SM of this device");
  return sms * std::min(want, per_sm);
}

DecodeMega::~DecodeMega() {
  if (dev_) cudaFree(dev_);
}

void DecodeMega::add_matvec(const mv_cuda::FusedMatvec& f) {
  SELFEXT_CHECK(supported_type(f.type), ArgumentError, "the decode megakernel does not take ", qtype_name(f.type),
                " weights");
  SELFEXT_CHECK(f.in == kInRmsNorm || f.in == kInSwiGlu || f.in == kInHalf, ArgumentError,
                "the decode megakernel takes RMSNorm, SwiGLU or 16-bit product inputs");
  MegaPhase ph;
  ph.kind = kMatvec;
  ph.n_blocks = int(f.n_blocks);
  ph.qtype = int(f.type);
  ph.in = f.in;
  ph.warp_rows = f.warp_rows ? 1 : 0;
  ph.mv = f.a;
  ph.mv.prefetch = false;
  ph.prefetch = prefetch_enabled() && f.a.rows * f.a.row_bytes <= kPrefetchMaxBytes;
  host_.push_back(ph);
}

void DecodeMega::add_attention(const attn_cuda::SeDecodeMega& s, int n_heads) {
  MegaPhase ph;
  ph.kind = kSeDecode;
  ph.bf16 = s.bf16;
  ph.se = s.a;
  ph.se.prefetch = false;
  ph.head_dim = s.head_dim;
  ph.chunks_per_split = s.plan.chunks_per_split;
  ph.n_splits = s.plan.n_splits;
  ph.n_blocks = (n_heads / s.a.rm.n_rep) * s.plan.n_splits;
  ph.prefetch = prefetch_enabled();
  host_.push_back(ph);
  if (s.plan.n_splits == 1) return;  // the attention wrote the output
  barrier();
  MegaPhase m;
  m.kind = kMerge;
  m.bf16 = s.bf16;
  m.n_blocks = n_heads;  // T_q = 1: one row per head
  m.mg = MergeArgs{s.a.oa.ws_o, s.a.oa.ws_ml, s.plan.n_splits, n_heads, s.head_dim, n_heads,
                   s.a.oa.out, s.a.oa.stride_t, s.a.oa.stride_h};
  host_.push_back(m);
}

void DecodeMega::barrier() {
  if (!host_.empty()) host_.back().barrier = 1;
}

void DecodeMega::upload() {
  if (dev_) SELFEXT_CUDA_CHECK(cudaFree(dev_));
  dev_ = nullptr;
  smem_ = mega_smem_bytes();
  if (host_.empty()) return;
  SELFEXT_CUDA_CHECK(cudaMalloc(&dev_, host_.size() * sizeof(MegaPhase)));
  SELFEXT_CUDA_CHECK(cudaMemcpy(dev_, host_.data(), host_.size() * sizeof(MegaPhase), cudaMemcpyHostToDevice));
}

void DecodeMega::launch(MegaSync* sync, cudaStream_t stream) const {
  SELFEXT_CHECK(dev_ != nullptr && blocks_ > 0, BackendError, "the decode megakernel was launched before upload");
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(unsigned(blocks_));
  cfg.blockDim = dim3(unsigned(kThreads));
  cfg.dynamicSmemBytes = smem_;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeCooperative;
  attr[0].val.cooperative = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  int diag = 0;
  if (const char* e = std::getenv("SELFEXT_CUDA_MEGA_DIAG")) diag = std::atoi(e);
  SELFEXT_CUDA_CHECK(cudaLaunchKernelEx(&cfg, decode_mega_kernel, static_cast<const MegaPhase*>(dev_),
                                        int(host_.size()), sync, diag));
}

}  // namespace mega
}  // namespace selfext
