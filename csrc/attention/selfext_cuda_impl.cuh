// SelfExtend attention on CUDA: the kernels, their launchers and run_se<T, head_dim> (the whole host
// side of one call), shared by selfext_cuda.cu (the entry points) and the per-(dtype, head dim) files
// of se_instances/, each of which instantiates one run_se: eight translation units a parallel build
// compiles side by side (one file holding all of them took ~4 minutes of nvcc with sm_90a).
// The design and measurements: selfext_cuda.cu's header comment.
#pragma once
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "attention/attention_cuda.h"
#include "attention/attention_host.cuh"
#include "attention/attention_tiles.cuh"
#include "attention/positions.h"
#include "attention/se_decode.cuh"
#include "attention/se_decode_mma.cuh"
#include "attention/se_wgmma.cuh"
#include "core/cuda_check.cuh"
#include "core/dispatch.h"

namespace selfext {
namespace {

using namespace attn_cuda;


template <int kHeadDim, int kWarps, int kMT = 1, int kTileN = kBN>
struct SeShape {
  static constexpr int kBM = 16 * kWarps * kMT;  // kMT 16-row tiles per warp
  static constexpr int kStride = Layout<kHeadDim>::kStride;
  // Qn, Qg (kBM rows each); Kn, Kg; raw K and V, double-buffered (2 x kTileN rows each).
  static constexpr size_t kSmemBytes = size_t(2 * kBM + 6 * kTileN) * kStride * 2;
};

// kPre: K comes pre-rotated (rotate_k_kernel, once per call) and its tiles land by cp.async straight in
// double-buffered Kn / Kg buffers: no rotation and one barrier fewer per tile. The same shared memory:
// Qn, Qg; Kn and Kg (2 x kBN rows each) in place of Kn, Kg and the two raw K tiles; V.
// kMT: 16-row tiles per warp (qk_tiles / softmax_pv_tiles: each K and V fragment feeds kMT multiplies).
// kTileN: keys per tile, kBN = 64, or 32 (kPre only) where kMT = 2 would not fit the registers at 64.
template <typename T, int kHeadDim, int kWarps, bool kSplit, bool kPre = false, int kMT = 1, int kTileN = kBN>
__global__ void __launch_bounds__(kWarps * 32) se_attention_kernel(const SeArgs a) {
  kernel_prologue();
  constexpr int kThreads = kWarps * 32;
  constexpr int BN = kTileN;
  using Sh = SeShape<kHeadDim, kWarps, kMT, BN>;
  constexpr int kBM = Sh::kBM, S = Sh::kStride;
  // Raw Q is staged where the first K tiles go: the raw K buffers (2 x BN rows), or with kPre the Kn, Kg
  // and V buffers (6 x BN rows).
  static_assert(kPre ? kBM <= 6 * BN : kBM <= 2 * BN, "raw Q does not fit its staging area");
  static_assert(kPre || BN == kBN, "tiles rotated in the kernel are kBN keys");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* qn = reinterpret_cast<T*>(smem_raw);  // (kBM, S) Q at normal positions
  T* qg = qn + kBM * S;                    // (kBM, S) Q at grouped positions
  T* kn = qg + kBM * S;                    // (BN, S) K tile at normal positions (kPre: (2, BN, S))
  T* kg = kn + (kPre ? 2 : 1) * BN * S;   // (BN, S) K tile at grouped positions (kPre: (2, BN, S))
  T* kraw = kg + BN * S;                  // (2, BN, S) K tiles as read (kPre: Kg's second buffer, then V)
  T* vs = kraw + 2 * BN * S;              // (2, BN, S) V tiles
  if constexpr (kPre) {
    kraw = kn;  // Q's staging area
    vs = kg + 2 * BN * S;
  }

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int mt = gridDim.x - 1 - blockIdx.x;  // longest causal rows first: less tail imbalance
  const int kvh = blockIdx.y;
  RowMap rm = a.rm;
  if (a.T_k_dev) rm.T_k = *a.T_k_dev;  // blocks past the run-time length find no key tiles
  const int G = a.group, W = a.window;
  const int64_t m0 = int64_t(mt) * kBM;
  const int i_lo = rm.pos(m0), i_hi = rm.pos(m0 + kBM - 1);
  const int n_kt = i_hi / BN + 1;  // causal: keys 0..i_hi
  int kt_begin = 0, kt_end = n_kt;
  if (kSplit) {
    kt_begin = blockIdx.z * a.tiles_per_split;
    kt_end = min(n_kt, kt_begin + a.tiles_per_split);
  }

  const int64_t wr0 = m0 + warp * 16 * kMT;
  const bool warp_has_rows = wr0 < rm.rows;
  const int wi_lo = rm.pos(wr0), wi_hi = rm.pos(wr0 + 16 * kMT - 1);
  int row_i[kMT][2];  // this lane's two rows of each tile
#pragma unroll
  for (int mi = 0; mi < kMT; ++mi) {
    row_i[mi][0] = rm.pos(wr0 + mi * 16 + (lane >> 2));
    row_i[mi][1] = rm.pos(wr0 + mi * 16 + (lane >> 2) + 8);
  }

  float o[kMT][kHeadDim / 8][4];
  float m[kMT][2], l[kMT][2];
#pragma unroll
  for (int mi = 0; mi < kMT; ++mi) {
#pragma unroll
    for (int db = 0; db < kHeadDim / 8; ++db) o[mi][db][0] = o[mi][db][1] = o[mi][db][2] = o[mi][db][3] = 0.f;
    m[mi][0] = m[mi][1] = -INFINITY;
    l[mi][0] = l[mi][1] = 0.f;
  }

  if (kt_begin < kt_end) {
    const T* q = static_cast<const T*>(a.q);
    const T* k = static_cast<const T*>(a.k);
    const T* v = static_cast<const T*>(a.v);
    load_q_async<T, kHeadDim, kBM, kThreads>(kraw, q, a.q_st, a.q_sh, rm, m0, kvh);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    rope_tile<T, kHeadDim, kThreads, kBM>(kraw, qn, a.rope, [&](int r) { return rm.pos(m0 + r); });
    if (i_hi >= W)  // some row may reach the grouped branch
      rope_tile<T, kHeadDim, kThreads, kBM>(kraw, qg, a.rope, [&](int r) {
        return int(se_grouped_query_pos(rm.pos(m0 + r), G, W));
      });
    __syncthreads();  // the raw Q staging area becomes the first K tile

    // Which branches the block's rows need on tile kt (min and max of i - j over causal pairs).
    auto tile_needs_n = [&](int kt) { return max(0, i_lo - (kt * BN + BN - 1)) < W; };
    auto tile_needs_g = [&](int kt) { return i_hi - kt * BN >= W; };
    const T* kn_rot = static_cast<const T*>(a.kn_rot);
    const T* kg_rot = static_cast<const T*>(a.kg_rot);
    const int64_t rot_st = int64_t(gridDim.y) * kHeadDim;  // (T_k, n_kv_heads, head_dim) contiguous
    auto load_k_tile = [&](int kt, int b) {
      if constexpr (kPre) {
        if (tile_needs_n(kt))
          load_kv_async<T, kHeadDim, kThreads, BN>(kn + b * BN * S, kn_rot, rot_st, kHeadDim, kvh, kt * BN, rm.T_k);
        if (tile_needs_g(kt))
          load_kv_async<T, kHeadDim, kThreads, BN>(kg + b * BN * S, kg_rot, rot_st, kHeadDim, kvh, kt * BN, rm.T_k);
      } else {
        load_kv_async<T, kHeadDim, kThreads, BN>(kraw + b * BN * S, k, a.k_st, a.k_sh, kvh, kt * BN, rm.T_k);
      }
    };
    load_k_tile(kt_begin, 0);
    load_kv_async<T, kHeadDim, kThreads, BN>(vs, v, a.v_st, a.v_sh, kvh, kt_begin * BN, rm.T_k);
    cp_async_commit();
    for (int kt = kt_begin; kt < kt_end; ++kt) {
      const int buf = (kt - kt_begin) & 1;
      cp_async_wait<0>();
      __syncthreads();  // tile kt landed; every warp is done with tile kt-1 (its buffers and Kn/Kg)
      if (kt + 1 < kt_end) {
        load_k_tile(kt + 1, buf ^ 1);
        load_kv_async<T, kHeadDim, kThreads, BN>(vs + (buf ^ 1) * BN * S, v, a.v_st, a.v_sh, kvh, (kt + 1) * BN, rm.T_k);
        cp_async_commit();
      }
      const int j0 = kt * BN, j1 = j0 + BN - 1;
      const T* knb = kn;
      const T* kgb = kg;
      if constexpr (kPre) {
        knb = kn + buf * BN * S;
        kgb = kg + buf * BN * S;
      } else {
        const T* kr = kraw + buf * BN * S;
        if (tile_needs_n(kt))
          rope_tile<T, kHeadDim, kThreads, BN>(kr, kn, a.rope, [&](int r) { return j0 + r; });
        if (tile_needs_g(kt))
          rope_tile<T, kHeadDim, kThreads, BN>(kr, kg, a.rope, [&](int r) { return int(se_grouped_key_pos(j0 + r, G)); });
        __syncthreads();
      }

      if (warp_has_rows && j0 <= wi_hi) {
        const bool wn = max(0, wi_lo - j1) < W;
        const bool wg = wi_hi - j0 >= W;
        float x[kMT][BN / 8][4];
        if (wn && wg) {  // boundary tile: both branches, select per element (one 16-row tile at a time)
#pragma unroll
          for (int mi = 0; mi < kMT; ++mi) {
            float xg[BN / 8][4];
            qk_tile<T, kHeadDim, BN>(qn, knb, warp * kMT + mi, lane, x[mi]);
            qk_tile<T, kHeadDim, BN>(qg, kgb, warp * kMT + mi, lane, xg);
#pragma unroll
            for (int nb = 0; nb < BN / 8; ++nb)
#pragma unroll
              for (int c = 0; c < 4; ++c) {
                const int j = j0 + nb * 8 + (lane & 3) * 2 + (c & 1);
                if (!se_is_neighbor(row_i[mi][c >> 1], j, W)) x[mi][nb][c] = xg[nb][c];
              }
          }
        } else if (wg) {
          qk_tiles<T, kHeadDim, kMT, BN>(qg, kgb, warp, lane, x);
        } else {
          qk_tiles<T, kHeadDim, kMT, BN>(qn, knb, warp, lane, x);
        }
        const bool need_mask = j1 > wi_lo;
#pragma unroll
        for (int mi = 0; mi < kMT; ++mi)
#pragma unroll
          for (int nb = 0; nb < BN / 8; ++nb)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
              const int j = j0 + nb * 8 + (lane & 3) * 2 + (c & 1);
              x[mi][nb][c] = (need_mask && j > row_i[mi][c >> 1]) ? -INFINITY : x[mi][nb][c] * a.scale2;
            }
        softmax_pv_tiles<T, kHeadDim, kMT, BN>(x, m, l, o, vs + buf * BN * S, lane);
      }
    }
  }
#pragma unroll
  for (int mi = 0; mi < kMT; ++mi)
    store_rows<T, kHeadDim>(a.oa, rm, m0, warp * kMT + mi, lane, kvh, o[mi], m[mi], l[mi], kSplit, blockIdx.z);
}

// --- the prefill kernel for large calls: one branch per key tile, in two phases -------------------------
// K comes pre-rotated (rotate_k_kernel: kn_rot at j, kg_rot at j / G). A block's key tiles are visited in
// two phases: first every tile holding some pair at distance >= W (the grouped branch: Q rotated at the
// grouped query position), then every tile holding some pair at distance < W (the neighbor branch: Q
// rotated at i). A tile on the window boundary is visited once in each phase, each time masked to its own
// branch's pairs; the online softmax does not care in which order, or in how many pieces, a row's keys
// arrive, so the result is the one softmax over both branches. What this buys over se_attention_kernel:
// one Q tile and one K tile in shared memory at a time (104 KB at D = 128: two blocks per SM, against one
// of 174 KB), no second logit tile in registers on boundary tiles, so two 16-row tiles per warp fit at
// every head dim (each K and V fragment feeds two multiplies), and one code path per tile (its branch
// only picks the K source and the mask). Q is rotated straight from global memory into its tile at the
// start of each phase. The softmax scale rides in the exponent's FMA. Measured: docs/cuda_loop.md.
template <int kHeadDim, int kWarps, int kMT>
struct SePhasedShape {
  static constexpr int kBM = 16 * kWarps * kMT;
  static constexpr int kStride = Layout<kHeadDim>::kStride;
  // Q (kBM rows); K and V tiles, double-buffered (2 x kBN rows each).
  static constexpr size_t kSmemBytes = size_t(kBM + 4 * kBN) * kStride * 2;
};

template <typename T, int kHeadDim, int kWarps, int kMT>
__global__ void __launch_bounds__(kWarps * 32) se_phased_kernel(const SeArgs a) {
  kernel_prologue();
  constexpr int kThreads = kWarps * 32, BN = kBN;
  using Sh = SePhasedShape<kHeadDim, kWarps, kMT>;
  constexpr int kBM = Sh::kBM, S = Sh::kStride;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* qs = reinterpret_cast<T*>(smem_raw);  // (kBM, S) Q rotated for the current phase's branch
  T* ks = qs + kBM * S;                    // (2, BN, S) K tiles (pre-rotated for their branch)
  T* vs = ks + 2 * BN * S;                 // (2, BN, S) V tiles

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int mt = gridDim.x - 1 - blockIdx.x;  // longest causal rows first: less tail imbalance
  const int kvh = blockIdx.y;
  const RowMap rm = a.rm;
  const int W = a.window;
  const int64_t m0 = int64_t(mt) * kBM;
  const int i_lo = rm.pos(m0), i_hi = rm.pos(m0 + kBM - 1);
  const PhasedTiles pt(i_lo, i_hi, W, BN);
  const int n_g = pt.n_g, n_v = pt.n_v;

  const int64_t wr0 = m0 + warp * 16 * kMT;
  const bool warp_has_rows = wr0 < rm.rows;
  const int wi_lo = rm.pos(wr0), wi_hi = rm.pos(wr0 + 16 * kMT - 1);

  float o[kMT][kHeadDim / 8][4];
  float m[kMT][2], l[kMT][2];
#pragma unroll
  for (int mi = 0; mi < kMT; ++mi) {
#pragma unroll
    for (int db = 0; db < kHeadDim / 8; ++db) o[mi][db][0] = o[mi][db][1] = o[mi][db][2] = o[mi][db][3] = 0.f;
    m[mi][0] = m[mi][1] = -INFINITY;
    l[mi][0] = l[mi][1] = 0.f;
  }

  const T* v = static_cast<const T*>(a.v);
  const T* kn_rot = static_cast<const T*>(a.kn_rot);
  const T* kg_rot = static_cast<const T*>(a.kg_rot);
  const int64_t rot_st = int64_t(gridDim.y) * kHeadDim;  // (T_k, n_kv_heads, head_dim) contiguous
  auto q_chunk = [qs](int r, int c) { return reinterpret_cast<uint4*>(qs + r * S + c * 8); };
  auto load_q = [&](bool grouped) { se_rope_q_tile<T, kHeadDim, kThreads, kBM>(a, rm, m0, kvh, grouped, q_chunk); };
  auto tile_of = [&](int vt) { return pt.tile(vt); };
  auto load_tile = [&](int vt, int b) {
    const int kt = tile_of(vt);
    load_kv_async<T, kHeadDim, kThreads, BN>(ks + b * BN * S, vt < n_g ? kg_rot : kn_rot, rot_st, kHeadDim, kvh,
                                             kt * BN, rm.T_k);
    load_kv_async<T, kHeadDim, kThreads, BN>(vs + b * BN * S, v, a.v_st, a.v_sh, kvh, kt * BN, rm.T_k);
    cp_async_commit();
  };

  if (n_v > 0) {
    load_tile(0, 0);
    load_q(n_g > 0);
  }
  for (int vt = 0; vt < n_v; ++vt) {
    const int buf = vt & 1;
    cp_async_wait<0>();
    __syncthreads();  // tile vt (and Q) landed; every warp is done with tile vt-1 and the previous Q
    if (vt + 1 < n_v) load_tile(vt + 1, buf ^ 1);
    const bool grouped = vt < n_g;
    if (vt == n_g && n_g > 0) {  // the neighbor phase starts: Q at the normal positions
      load_q(false);
      __syncthreads();
    }
    const int j0 = tile_of(vt) * BN, j1 = j0 + BN - 1;
    // This warp's rows against the tile, in this phase's branch: any pair in it, and any pair outside it.
    bool any, mask;
    if (grouped) {
      any = wi_hi - j0 >= W;
      mask = wi_lo - j1 < W;
    } else {
      any = j0 <= wi_hi && wi_lo - j1 < W;
      mask = j1 > wi_lo || wi_hi - j0 >= W;
    }
    if (warp_has_rows && any) {
      float x[kMT][BN / 8][4];
      qk_tiles<T, kHeadDim, kMT, BN>(qs, ks + buf * BN * S, warp, lane, x);
      if (mask) {
#pragma unroll
        for (int mi = 0; mi < kMT; ++mi)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int i = rm.pos(wr0 + mi * 16 + (lane >> 2) + 8 * h);
#pragma unroll
            for (int nb = 0; nb < BN / 8; ++nb)
#pragma unroll
              for (int c = 0; c < 2; ++c) {
                const int d = i - (j0 + nb * 8 + (lane & 3) * 2 + c);  // i - j
                const bool keep = grouped ? d >= W : (d >= 0 && d < W);
                if (!keep) x[mi][nb][2 * h + c] = -INFINITY;
              }
          }
      }
      softmax_pv_tiles<T, kHeadDim, kMT, BN>(x, m, l, o, vs + buf * BN * S, lane, a.scale2);
    }
  }
#pragma unroll
  for (int mi = 0; mi < kMT; ++mi)
    store_rows<T, kHeadDim>(a.oa, rm, m0, warp * kMT + mi, lane, kvh, o[mi], m[mi], l[mi], false, 0);
}

template <typename T, int kHeadDim, int kThreads>
__global__ void __launch_bounds__(kThreads) se_decode_kernel(const SeArgs a, int chunks_per_split) {
  constexpr int kKeys = kThreads / 4;
  // The block's keys and values up to the planned bound, while the previous kernel runs (rows of one kv
  // head contiguous, as in the model's cache; the run-time key count is read only after the wait).
  if (a.prefetch && threadIdx.x == 0) se_decode_prefetch<T, kHeadDim>(a, chunks_per_split * kKeys, blockIdx.x, blockIdx.y);
  kernel_prologue();
  extern __shared__ __align__(16) unsigned char dec_smem[];
  se_decode_block<T, kHeadDim, kThreads>(a, chunks_per_split, blockIdx.x, blockIdx.y, gridDim.y, dec_smem);
}

// Blocks of the decode kernel resident per SM (its dynamic shared memory set), cached per instantiation.
template <typename T, int kHeadDim, int kThreads>
int decode_blocks_per_sm() {
  static int cached = [] {
    auto kernel = se_decode_kernel<T, kHeadDim, kThreads>;
    constexpr size_t smem = dec_smem_bytes<kHeadDim, kThreads>();
    SELFEXT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    int n = 0;
    SELFEXT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kThreads, smem));
    return std::max(1, n);
  }();
  return cached;
}

// Blocks of the tensor-core decode kernel resident per SM (its dynamic shared memory set), per instantiation.
template <typename T, int kHeadDim, bool kNeox>
int decode_mma_blocks_per_sm() {
  static int cached = [] {
    auto kernel = se_decode_mma_kernel<T, kHeadDim, kNeox>;
    constexpr size_t smem = dm_smem_bytes<kHeadDim>();
    SELFEXT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    int n = 0;
    SELFEXT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kDmWarps * 32, smem));
    return std::max(1, n);
  }();
  return cached;
}

// The largest number of splits (<= kDecMaxSplitsCluster) the tensor-core decode kernel can run as one
// thread-block cluster on the current device (its shared memory set), 0 below compute capability 9.0 or when
// no cluster of 2 fits; cached per instantiation, as the occupancy above.
template <typename T, int kHeadDim, bool kNeox>
int decode_mma_max_cluster() {
  static int cached = [] {
    if (current_device_compute_capability() < 90) return 0;
    auto kernel = se_decode_mma_kernel<T, kHeadDim, kNeox>;
    constexpr size_t smem = dm_smem_bytes<kHeadDim>();
    SELFEXT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    for (int n = kDecMaxSplitsCluster; n >= 2; --n) {
      cudaLaunchConfig_t cfg{};
      cfg.gridDim = dim3(1u, unsigned(n));
      cfg.blockDim = dim3(kDmWarps * 32);
      cfg.dynamicSmemBytes = smem;
      cudaLaunchAttribute attr;
      attr.id = cudaLaunchAttributeClusterDimension;
      attr.val.clusterDim.x = 1;
      attr.val.clusterDim.y = unsigned(n);
      attr.val.clusterDim.z = 1;
      cfg.attrs = &attr;
      cfg.numAttrs = 1;
      int clusters = 0;
      if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) != cudaSuccess) {
        (void)cudaGetLastError();  // clear it: the merge kernel path stays
        continue;
      }
      if (clusters >= 1) return n;
    }
    return 0;
  }();
  return cached;
}

// Whether the tensor-core decode kernel merges its splits within a cluster where it can (the default);
// SELFEXT_CUDA_SE_DEC_CLUSTER=0 keeps the merge kernel (read at every call, so a process can compare both).
inline bool decode_cluster_merge_enabled() {
  const char* e = std::getenv("SELFEXT_CUDA_SE_DEC_CLUSTER");
  return !(e && std::strcmp(e, "0") == 0);
}

// Whether a decode call takes the tensor-core kernel (se_decode_mma.cuh): wherever its RoPE layout is
// supported, unless SELFEXT_CUDA_SE_DEC_MMA=0 (the CUDA-core kernel, for comparison; read at every call).
inline bool use_decode_mma(const AttentionParams& p) {
  const char* e = std::getenv("SELFEXT_CUDA_SE_DEC_MMA");
  if (e && std::strcmp(e, "0") == 0) return false;
  return decode_mma_supported(p.head_dim, p.rope_dim, p.rope_style);
}

// The decode block's thread count: kDecThreads, or 128 with SELFEXT_CUDA_SE_DEC_THREADS=128 (read at
// every call, so a process can compare both).
inline int decode_threads() {
  const char* e = std::getenv("SELFEXT_CUDA_SE_DEC_THREADS");
  return e && std::strcmp(e, "128") == 0 ? 128 : kDecThreads;
}

// Whether run_se takes the decode kernel: T_q = 1 with GQA groups up to 8, unless SELFEXT_CUDA_SE_DECODE=0
// (the tile kernel, for comparison). Measured on an H200 (2026-12-02, scripts/device_decode_ab.sh): decode
// step 1.085 vs 1.25-1.27 ms (SmolLM2 shapes), 3.47 vs 3.85 ms (Llama-3-8B shapes).
inline bool use_decode_kernel(int64_t T_q, int n_rep, int rope_dim) {
  const char* e = std::getenv("SELFEXT_CUDA_SE_DECODE");
  return T_q == 1 && n_rep <= kDecMaxRep && rope_dim > 0 && !(e && std::strcmp(e, "0") == 0);
}

// K rotated once per call (kPre kernels): kn = RoPE(k, j), kg = RoPE(k, j / G) when want_g, rounded to
// the storage type exactly as rope_tile rounds its tiles, so both kernels see the same K.
template <typename T>
__global__ void rotate_k_kernel(const uint16_t* __restrict__ k, int64_t k_st, int64_t k_sh, int T_k, int n_kv,
                                int head_dim, RopeArgs rope, int G, bool want_g, uint16_t* kn, uint16_t* kg) {
  kernel_prologue();
  const int64_t n = int64_t(T_k) * n_kv * head_dim;
  const int rd = rope.rope_dim, np = rd / 2;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += int64_t(gridDim.x) * blockDim.x) {
    const int d = int(idx % head_dim);
    const int h = int((idx / head_dim) % n_kv);
    const int t = int(idx / (int64_t(head_dim) * n_kv));
    const uint16_t* kr = k + int64_t(t) * k_st + int64_t(h) * k_sh;
    if (d >= rd) {
      kn[idx] = kr[d];
      if (want_g) kg[idx] = kr[d];
      continue;
    }
    int p, ia, ib;
    bool first;
    rope_pair_of(d, rd, rope.style, p, first);
    rope_pair(p, rd, rope.style, ia, ib);
    const float xa = ld_float<T>(kr[ia]), xb = ld_float<T>(kr[ib]);
    float na = xa, nb = xb;
    const float* cs = rope.table + (int64_t(min(t, rope.n_pos - 1)) * np + p) * 2;
    rope_rotate(na, nb, cs[0], cs[1]);
    kn[idx] = st_bits<T>(first ? na : nb);
    if (want_g) {
      float ga = xa, gb = xb;
      const float* cg = rope.table + (int64_t(min(int(se_grouped_key_pos(t, G)), rope.n_pos - 1)) * np + p) * 2;
      rope_rotate(ga, gb, cg[0], cg[1]);
      kg[idx] = st_bits<T>(first ? ga : gb);
    }
  }
}

// 16-row tiles per warp of the large prefill blocks with K rotated once: 2 at head dims <= 80 (64-key
// tiles), 1 above. SELFEXT_CUDA_SE_MT=1 / 2 forces either at head dims <= 80 (read at every call).
// Measured in one run (bench/attention_cuda.py --prefill-only, H200, bf16, G=4, W=1024, 2026-12-02,
// bench/results/attention_cuda-nvidia_h200-prefill.json): (9, 3, 64) 44 / 132 / 148 -> 45 / 157 / 178
// TFLOP/s at T = 4k / 16k / 32k (SDPA-flash 117 / 244 / 288). At head dims 96 and 128 the doubled
// accumulators with 64-key logits spill (ptxas, sm_90a: 1.0-1.7 KB of spill loads per thread); two tiles
// with 32-key tiles there were measured slower and removed (2026-12-03, same bench, (32, 8, 128):
// 96 / 123 / 129 TFLOP/s against 142 / 199 / 212 with one tile per warp).
inline int se_tiles_per_warp(int head_dim) {
  if (head_dim > 80) return 1;
  const char* e = std::getenv("SELFEXT_CUDA_SE_MT");
  if (e && (std::strcmp(e, "1") == 0 || std::strcmp(e, "2") == 0)) return e[0] - '0';
  return 2;
}

// Pre-rotated K (rotate_k_kernel once per call, then the kPre kernels) for calls with more than one
// 128-row query block per kv head: there each K tile would be rotated once per query block, and the
// rotation's table loads sit between two barriers with nothing to hide them (one block per SM at
// D = 128). Measured in one run (bench/attention_cuda.py, H200, bf16, G=4, W=1024, 2026-12-02,
// bench/results/attention_cuda-nvidia_h200-noflex-prerot.json): (32, 8, 128) 115 / 130 / 131 ->
// 145 / 203 / 213 TFLOP/s at T = 4k / 16k / 32k, (9, 3, 64) 51 / 95 / 101 -> 54 / 133 / 148. With a single
// query block (short chunks) each tile is rotated once either way and the copies would only add traffic.
// SELFEXT_CUDA_SE_PREROT=0 / 1 forces either; graphs (T_k_dev) always rotate per tile.
inline bool use_prerotated_k(const AttentionParams& p) {
  if (p.rope_dim <= 0 || p.T_k_dev != nullptr) return false;
  const char* e = std::getenv("SELFEXT_CUDA_SE_PREROT");
  if (e && (std::strcmp(e, "0") == 0 || std::strcmp(e, "1") == 0)) return e[0] == '1';
  const int64_t rows = p.T_q * (p.n_heads / std::max<int64_t>(1, p.n_kv_heads));
  return rows > 128;
}

// The phased kernel (se_phased_kernel) for the large pre-rotated calls, unless SELFEXT_CUDA_SE_PHASED=0
// (se_attention_kernel, for comparison; read at every call) or a non-positive scale (the phased kernel
// takes the running max of the unscaled logits).
inline bool use_phased(const AttentionParams& p) {
  const char* e = std::getenv("SELFEXT_CUDA_SE_PHASED");
  return p.scale > 0 && !(e && std::strcmp(e, "0") == 0);
}

// Whether the large pre-rotated prefill calls take se_wgmma_kernel (se_wgmma.cuh): head dims 64 and 128, a
// compute capability 9.0 device (wgmma exists on sm_90a only) and a build with sm_90a code, unless
// SELFEXT_CUDA_SE_WGMMA=0 (the mma.sync phased kernel, for comparison; read at every call).
#ifndef SELFEXT_CUDA_SM90A
#define SELFEXT_CUDA_SM90A 0
#endif
inline bool use_wgmma(int head_dim) {
  if (!SELFEXT_CUDA_SM90A || (head_dim != 64 && head_dim != 128)) return false;
  const char* e = std::getenv("SELFEXT_CUDA_SE_WGMMA");
  if (e && std::strcmp(e, "0") == 0) return false;
  return current_device_compute_capability() == 90;  // wgmma is sm_90a only: not on 10.x or 12.x
}

// Warpgroups (64 query rows each) per se_wgmma_kernel block: 2, the phased kernel's 128-row blocks.
constexpr int kSeWgmmaWG = 2;

// se_wgmma_kernel's configuration: SELFEXT_CUDA_SE_WGMMA_CFG = {s|q}{64|128}[p] (Q read by every multiply
// from shared memory, or held in registers; 64- or 128-key tiles; p: the software-pipelined loop), read at
// every call. Defaults from one run of bench/attention_cuda.py (H200, bf16, G=4, W=1024, tree of 7ded45e,
// TFLOP/s at T = 16k / 32k): head dim 128 q128p (370 / 409; q128 349 / 381, s64 312 / 346), head dim 64
// s64 (244 / 316; s64p 190 / 255 at one block per SM, s128p 223 / 281): docs/cuda_loop.md.
// "s64p2" (head dim 64 only): s64p with the registers capped for two blocks per SM (it spills).
struct WgmmaCfg {
  int tile_n;
  bool q_reg, pipe, two_blocks;
};
inline WgmmaCfg wgmma_cfg(int head_dim) {
  WgmmaCfg c = head_dim > 64 ? WgmmaCfg{128, true, true, false} : WgmmaCfg{64, false, false, false};
  const char* e = std::getenv("SELFEXT_CUDA_SE_WGMMA_CFG");
  if (e && (e[0] == 's' || e[0] == 'q')) {
    c.q_reg = e[0] == 'q';
    c.tile_n = std::strncmp(e + 1, "128", 3) == 0 ? 128 : 64;
    c.pipe = std::strchr(e, 'p') != nullptr;
    c.two_blocks = std::strcmp(e, "s64p2") == 0;
  }
  return c;
}
// V^T rows are padded to whole tiles of either size.
constexpr int kVtPad = 128;

template <typename T, int kHeadDim, int kTileN, bool kQReg, bool kPipe, int kMinBlocks = 0>
void launch_wgmma_cfg(const SeArgs& a, int64_t n_mtiles, int n_kv_heads, cudaStream_t stream) {
  auto kernel = se_wgmma_kernel<T, kHeadDim, kSeWgmmaWG, kTileN, kQReg, kPipe>;  // its default register cap
  if constexpr (kMinBlocks > 0) kernel = se_wgmma_kernel<T, kHeadDim, kSeWgmmaWG, kTileN, kQReg, kPipe, kMinBlocks>;
  const size_t smem = SeWgmmaShape<kHeadDim, kSeWgmmaWG, kTileN>::kSmemBytes;
  SELFEXT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  SELFEXT_CHECK(n_mtiles <= INT_MAX, ArgumentError, "self_extend_attention: too many query rows");
  launch_kernel(kernel, dim3(unsigned(n_mtiles), unsigned(n_kv_heads)), dim3(kSeWgmmaWG * 128), smem, stream, a);
}

template <typename T, int kHeadDim>
void launch_wgmma(const SeArgs& a, int64_t n_mtiles, int n_kv_heads, cudaStream_t stream) {
  if constexpr (kHeadDim == 64 || kHeadDim == 128) {
    const WgmmaCfg c = wgmma_cfg(kHeadDim);
    if constexpr (kHeadDim == 64) {
      if (c.two_blocks) return launch_wgmma_cfg<T, kHeadDim, 64, false, true, 2>(a, n_mtiles, n_kv_heads, stream);
    }
    auto go = [&](auto n_c, auto q_c, auto p_c) {
      launch_wgmma_cfg<T, kHeadDim, decltype(n_c)::value, decltype(q_c)::value, decltype(p_c)::value>(
          a, n_mtiles, n_kv_heads, stream);
    };
    using N64 = std::integral_constant<int, 64>;
    using N128 = std::integral_constant<int, 128>;
    auto by_pipe = [&](auto n_c, auto q_c) {
      if (c.pipe) go(n_c, q_c, std::true_type{});
      else go(n_c, q_c, std::false_type{});
    };
    auto by_q = [&](auto n_c) {
      if (c.q_reg) by_pipe(n_c, std::true_type{});
      else by_pipe(n_c, std::false_type{});
    };
    if (c.tile_n == 128) by_q(N128{});
    else by_q(N64{});
  }
}

template <typename T, int kHeadDim, int kWarps, int kMT>
void launch_phased(const SeArgs& a, int64_t n_mtiles, int n_kv_heads, cudaStream_t stream) {
  auto kernel = se_phased_kernel<T, kHeadDim, kWarps, kMT>;
  const size_t smem = SePhasedShape<kHeadDim, kWarps, kMT>::kSmemBytes;
  SELFEXT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  SELFEXT_CHECK(n_mtiles <= INT_MAX, ArgumentError, "self_extend_attention: too many query rows");
  launch_kernel(kernel, dim3(unsigned(n_mtiles), unsigned(n_kv_heads)), dim3(kWarps * 32), smem, stream, a);
}

template <typename T, int kHeadDim, int kWarps, bool kSplit, bool kPre = false, int kMT = 1, int kTileN = kBN>
void launch_se(const SeArgs& a, int64_t n_mtiles, int n_kv_heads, int n_splits, cudaStream_t stream) {
  auto kernel = se_attention_kernel<T, kHeadDim, kWarps, kSplit, kPre, kMT, kTileN>;
  const size_t smem = SeShape<kHeadDim, kWarps, kMT, kTileN>::kSmemBytes;
  SELFEXT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  SELFEXT_CHECK(n_mtiles <= INT_MAX, ArgumentError, "self_extend_attention: too many query rows");
  launch_kernel(kernel, dim3(unsigned(n_mtiles), unsigned(n_kv_heads), unsigned(n_splits)), dim3(kWarps * 32), smem, stream, a);
}

}  // namespace

namespace {

inline void check_common(const AttentionParams& p, const char* op) {
  check_rows_aligned_16(p.q, p.q_stride_t, p.q_stride_h, op, "q");
  check_rows_aligned_16(p.k, p.k_stride_t, p.k_stride_h, op, "k");
  check_rows_aligned_16(p.v, p.v_stride_t, p.v_stride_h, op, "v");
  check_rows_aligned_16(p.out, p.out_stride_t, p.out_stride_h, op, "out");
  SELFEXT_CHECK(p.q_dtype == p.kv_dtype && p.q_dtype == p.out_dtype, ArrayTypeError, op,
                ": q, k, v and out must share one dtype");
  SELFEXT_CHECK(p.q_dtype == DType::kFloat16 || p.q_dtype == DType::kBFloat16, ArrayTypeError, op,
                " on CUDA takes float16 or bfloat16, got ", dtype_name(p.q_dtype));
  SELFEXT_CHECK(p.T_q >= 0 && p.T_q <= p.T_k, ArgumentError, op, ": T_q (", p.T_q, ") must be in [0, T_k = ", p.T_k, "]");
  SELFEXT_CHECK(p.T_k < (int64_t(1) << 30), ArgumentError, op, ": T_k = ", p.T_k, " exceeds 2^30");
  SELFEXT_CHECK(p.n_kv_heads >= 1 && p.n_heads % p.n_kv_heads == 0, ArgumentError, op, ": n_heads (", p.n_heads,
                ") must be a multiple of n_kv_heads (", p.n_kv_heads, ")");
}

// Whether decode calls that allow it (AttentionParams::past_kv_ready) issue the past keys' copies before
// the PDL wait (SELFEXT_CUDA_SE_DEC_EARLY=0 turns it off; read at every call).
inline bool early_kv_enabled() {
  const char* e = std::getenv("SELFEXT_CUDA_SE_DEC_EARLY");
  return !(e && std::strcmp(e, "0") == 0);
}

// The kernels' arguments for p (split-K workspace pointers and tiles_per_split left to the caller).
inline SeArgs make_se_args(const AttentionParams& p) {
  SeArgs a{};
  a.q = p.q; a.k = p.k; a.v = p.v;
  a.q_st = p.q_stride_t; a.q_sh = p.q_stride_h;
  a.k_st = p.k_stride_t; a.k_sh = p.k_stride_h;
  a.v_st = p.v_stride_t; a.v_sh = p.v_stride_h;
  const int n_rep = p.n_heads / p.n_kv_heads;
  a.rm = RowMap{p.T_q * n_rep, n_rep, int(p.T_q), int(p.T_k)};
  a.scale2 = p.scale * kLog2e;
  // G = 1 and W >= T_k are plain RoPE attention: W = T_k puts every pair in the neighbor branch.
  // G > T_k groups every position to 0, as G = T_k does.
  int64_t W = std::min<int64_t>(p.window, p.T_k), G = std::min<int64_t>(p.group, std::max<int64_t>(p.T_k, 1));
  if (G == 1) W = p.T_k;
  a.group = int(G);
  a.window = int(std::max<int64_t>(W, 1));
  a.rope = RopeArgs{p.rope_table, int(p.rope_n_pos), p.rope_dim, p.rope_style};
  a.oa = OutArgs{p.out, p.out_stride_t, p.out_stride_h, nullptr, nullptr, p.n_heads};
  a.T_k_dev = p.T_k_dev;
  a.prefetch = l2_prefetch_enabled();
  a.past_kv_ready = p.past_kv_ready && p.T_q == 1 && early_kv_enabled();
  return a;
}

template <typename T, int kHeadDim>
void run_se(const AttentionParams& p) {
  cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  SeArgs a = make_se_args(p);
  const int n_rep = p.n_heads / p.n_kv_heads;

  const int64_t rows = a.rm.rows;
  const int64_t n_key_tiles = (p.T_k + kBN - 1) / kBN;
  const int sms = multiprocessor_count();
  // A decode kernel (either one: the same arguments) over plan dp, then the split-K merge when it splits;
  // the partial states in the caller's workspace when given (the model's graphs: no allocation).
  // max_cluster: the most splits the kernel may merge within a thread-block cluster (0: never).
  auto run_decode = [&](void (*kernel)(const SeArgs, int), unsigned threads, size_t smem, const DecodePlan& dp,
                        int max_cluster) {
    if (dp.n_splits == 1) {  // the kernel writes the output
      launch_kernel(kernel, dim3(unsigned(p.n_kv_heads), 1u), dim3(threads), smem, stream, a, dp.chunks_per_split);
      return;
    }
    if (dp.n_splits <= max_cluster) {  // the splits merge in their cluster: no workspace, no merge kernel
      a.cluster_merge = true;
      launch_kernel_clustered(kernel, dim3(unsigned(p.n_kv_heads), unsigned(dp.n_splits)), dim3(threads), smem,
                              stream, dim3(1u, unsigned(dp.n_splits), 1u), a, dp.chunks_per_split);
      return;
    }
    const SplitWorkspace wl = split_workspace(dp.n_splits, 1, p.n_heads, kHeadDim);
    DeviceScratch own(p.workspace ? 0 : wl.total, stream);
    char* base = p.workspace ? static_cast<char*>(p.workspace) : own.as<char>();
    SELFEXT_CHECK(!p.workspace || p.workspace_bytes >= int64_t(wl.total), ArgumentError,
                  "self_extend_attention: the workspace has ", p.workspace_bytes, " bytes, this call needs ",
                  wl.total);
    a.oa.ws_o = reinterpret_cast<float*>(base + wl.o_offset);
    a.oa.ws_ml = reinterpret_cast<float*>(base + wl.ml_offset);
    launch_kernel(kernel, dim3(unsigned(p.n_kv_heads), unsigned(dp.n_splits)), dim3(threads), smem, stream, a,
                  dp.chunks_per_split);
    launch_merge<T>(a.oa.ws_o, a.oa.ws_ml, dp.n_splits, 1, p.n_heads, kHeadDim, p.out, p.out_stride_t,
                    p.out_stride_h, stream);
  };
  if (use_decode_kernel(p.T_q, n_rep, p.rope_dim) && use_decode_mma(p)) {
    auto decode_mma = [&](auto neox_c) {
      constexpr bool kNeox = decltype(neox_c)::value;
      run_decode(se_decode_mma_kernel<T, kHeadDim, kNeox>, kDmWarps * 32, dm_smem_bytes<kHeadDim>(),
                 decode_mma_plan(p.T_k, p.n_kv_heads, sms, decode_mma_blocks_per_sm<T, kHeadDim, kNeox>()),
                 decode_cluster_merge_enabled() ? decode_mma_max_cluster<T, kHeadDim, kNeox>() : 0);
    };
    if (p.rope_style == RopeStyle::kNorm) decode_mma(std::false_type{});
    else if constexpr ((kHeadDim / 2) % 16 == 0) decode_mma(std::true_type{});
    return;
  }
  if (use_decode_kernel(p.T_q, n_rep, p.rope_dim)) {
    auto decode = [&](auto threads_c) {
      constexpr int kThreads = decltype(threads_c)::value;
      run_decode(se_decode_kernel<T, kHeadDim, kThreads>, kThreads, dec_smem_bytes<kHeadDim, kThreads>(),
                 decode_plan(p.T_k, p.n_kv_heads, sms, decode_blocks_per_sm<T, kHeadDim, kThreads>(), kThreads / 4), 0);
    };
    if (decode_threads() == 128) decode(std::integral_constant<int, 128>{});
    else decode(std::integral_constant<int, kDecThreads>{});
    return;
  }
  // Prefill: 8 warps (128 rows) per block amortize each K tile's rotation over more rows.
  constexpr int kBigWarps = 8, kSmallWarps = 4;
  // Pre-rotated K (use_prerotated_k): both copies rotated once here instead of once per query block and tile.
  const bool pre = use_prerotated_k(p);
  const size_t rot_bytes = size_t(p.T_k) * p.n_kv_heads * kHeadDim * 2;
  const bool want_g = a.window < p.T_k;  // some pair can be outside the neighbor window
  DeviceScratch rot(pre ? rot_bytes * (want_g ? 2 : 1) : 0, stream);
  if (pre) {
    a.kn_rot = rot.as<void>();
    a.kg_rot = want_g ? rot.as<void>(rot_bytes) : nullptr;
    const int64_t n = p.T_k * p.n_kv_heads * kHeadDim;
    const unsigned blocks = unsigned(std::min<int64_t>((n + 255) / 256, int64_t(sms) * 16));
    launch_kernel(rotate_k_kernel<T>, dim3(blocks), dim3(256), 0, stream, static_cast<const uint16_t*>(p.k),
                  p.k_stride_t, p.k_stride_h, int(p.T_k), p.n_kv_heads, kHeadDim, a.rope, a.group, want_g,
                  static_cast<uint16_t*>(rot.as<void>()),
                  want_g ? static_cast<uint16_t*>(rot.as<void>(rot_bytes)) : nullptr);
  }
  const int64_t big_tiles = (rows + 16 * kBigWarps - 1) / (16 * kBigWarps);
  if (big_tiles * p.n_kv_heads >= sms) {
    a.tiles_per_split = int(n_key_tiles);
    if (pre && use_phased(p) && use_wgmma(kHeadDim) && 64 * kSeWgmmaWG == 16 * kBigWarps) {
      // V^T once per call (both wgmma B operands K-major), then the warpgroup kernel.
      const int64_t T_pad = (p.T_k + kVtPad - 1) / kVtPad * kVtPad;
      DeviceScratch vt(size_t(p.n_kv_heads) * kHeadDim * T_pad * 2, stream);
      a.v_t = vt.as<void>();
      a.vt_st = T_pad;
      if constexpr (kHeadDim == 64 || kHeadDim == 128)
        launch_kernel(transpose_v_kernel<kHeadDim>, dim3(unsigned(T_pad / 64), unsigned(p.n_kv_heads)), dim3(256), 0,
                      stream, static_cast<const uint16_t*>(p.v), p.v_stride_t, p.v_stride_h, int(p.T_k), T_pad,
                      static_cast<uint16_t*>(vt.as<void>()));
      launch_wgmma<T, kHeadDim>(a, big_tiles, p.n_kv_heads, stream);
      return;
    }
    if (pre && use_phased(p)) {  // 4 warps of two 16-row tiles: the same 128-row blocks
      launch_phased<T, kHeadDim, kBigWarps / 2, 2>(a, big_tiles, p.n_kv_heads, stream);
      return;
    }
    // The same 128-row blocks as 4 warps of two 16-row tiles each (se_tiles_per_warp): half the K/V
    // fragment reads per multiply (head dims <= 80 only: above, the accumulators spill).
    if constexpr (kHeadDim <= 80) {
      if (pre && se_tiles_per_warp(kHeadDim) == 2) {
        launch_se<T, kHeadDim, kBigWarps / 2, false, true, 2>(a, big_tiles, p.n_kv_heads, 1, stream);
        return;
      }
    }
    if (pre) launch_se<T, kHeadDim, kBigWarps, false, true>(a, big_tiles, p.n_kv_heads, 1, stream);
    else launch_se<T, kHeadDim, kBigWarps, false>(a, big_tiles, p.n_kv_heads, 1, stream);
    return;
  }
  const int64_t small_tiles = (rows + 16 * kSmallWarps - 1) / (16 * kSmallWarps);
  const SplitPlan sp = plan_splits(small_tiles * p.n_kv_heads, n_key_tiles, sms);
  a.tiles_per_split = sp.tiles_per_split;
  if (sp.n_splits == 1) {
    if (pre) launch_se<T, kHeadDim, kSmallWarps, false, true>(a, small_tiles, p.n_kv_heads, 1, stream);
    else launch_se<T, kHeadDim, kSmallWarps, false>(a, small_tiles, p.n_kv_heads, 1, stream);
    return;
  }
  // Partial states in the caller's workspace when given (the model's decode steps: no allocation, so
  // no memory nodes in its graphs), else in the stream-ordered pool.
  const SplitWorkspace wl = split_workspace(sp.n_splits, p.T_q, p.n_heads, kHeadDim);
  if (p.workspace) {
    SELFEXT_CHECK(p.workspace_bytes >= int64_t(wl.total), ArgumentError, "self_extend_attention: the workspace has ",
                  p.workspace_bytes, " bytes, this call needs ", wl.total);
    SELFEXT_CHECK(reinterpret_cast<uintptr_t>(p.workspace) % 256 == 0, ArgumentError,
                  "self_extend_attention: the workspace must be 256-byte aligned");
  }
  DeviceScratch own(p.workspace ? 0 : wl.total, stream);
  char* base = p.workspace ? static_cast<char*>(p.workspace) : own.as<char>();
  a.oa.ws_o = reinterpret_cast<float*>(base + wl.o_offset);
  a.oa.ws_ml = reinterpret_cast<float*>(base + wl.ml_offset);
  if (pre) launch_se<T, kHeadDim, kSmallWarps, true, true>(a, small_tiles, p.n_kv_heads, sp.n_splits, stream);
  else launch_se<T, kHeadDim, kSmallWarps, true>(a, small_tiles, p.n_kv_heads, sp.n_splits, stream);
  launch_merge<T>(a.oa.ws_o, a.oa.ws_ml, sp.n_splits, p.T_q, p.n_heads, kHeadDim, p.out, p.out_stride_t,
                  p.out_stride_h, stream);
}
}  // namespace

namespace attn_cuda {
// run_se<T, head_dim>, one per file of se_instances/ (SELFEXT_SE_INSTANCE).
#define SELFEXT_SE_DECLARE(T, D) void run_se_##T##_d##D(const AttentionParams& p);
SELFEXT_SE_DECLARE(f16, 64) SELFEXT_SE_DECLARE(f16, 80) SELFEXT_SE_DECLARE(f16, 96) SELFEXT_SE_DECLARE(f16, 128)
SELFEXT_SE_DECLARE(bf16, 64) SELFEXT_SE_DECLARE(bf16, 80) SELFEXT_SE_DECLARE(bf16, 96) SELFEXT_SE_DECLARE(bf16, 128)
#undef SELFEXT_SE_DECLARE
}  // namespace attn_cuda
}  // namespace selfext

#define SELFEXT_SE_INSTANCE(T, D) \
  namespace selfext::attn_cuda { void run_se_##T##_d##D(const AttentionParams& p) { run_se<T, D>(p); } }
