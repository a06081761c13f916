// The SelfExtend decode kernel's device code (T_q = 1), shared by selfext_cuda.cu (the kernel) and
// model/decode_mega.cu (the persistent decode kernel), and the decode plan.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "attention/attention_tiles.cuh"
#include "attention/params.h"
#include "attention/positions.h"
#include "core/cuda_launch.cuh"

namespace selfext {
namespace attn_cuda {

struct SeArgs {
  const void* q;  // (T_q, n_heads, head_dim)
  const void* k;  // (T_k, n_kv_heads, head_dim), before RoPE
  const void* v;  // (T_k, n_kv_heads, head_dim)
  int64_t q_st, q_sh, k_st, k_sh, v_st, v_sh;
  RowMap rm;
  float scale2;       // scale * log2(e): logits in base-2 units
  int group, window;  // clamped to [1, T_k] (the same attention; see plan below)
  RopeArgs rope;
  int tiles_per_split;
  OutArgs oa;
  const int32_t* T_k_dev;  // the key count at run time (<= rm.T_k, the planned bound), or null
  // kPre kernels: K rotated once per call at normal (kn_rot) and grouped (kg_rot) positions, layout
  // (T_k, n_kv_heads, head_dim) contiguous; kg_rot is null when no pair reaches the grouped branch.
  const void* kn_rot;
  const void* kg_rot;
  // se_wgmma_kernel: V transposed once per call, (n_kv_heads, head_dim, vt_st) with zero keys past T_k.
  const void* v_t;
  int64_t vt_st;
  bool prefetch;  // decode kernel: the block's keys and values prefetched into L2 before the PDL wait
  bool past_kv_ready;  // AttentionParams::past_kv_ready (the tensor-core decode kernel)
  // The tensor-core decode kernel: the splits of a kv head are one thread-block cluster (y) and merge their
  // states through distributed shared memory, no merge kernel (compute capability >= 9.0, <= 8 splits).
  bool cluster_merge;
};

// The phased prefill kernels' key tiles (bn keys each) for query positions i_lo..i_hi, in visiting order:
// first the n_g tiles with a pair at i - j >= W (the grouped phase, tiles 0..n_g-1), then the tiles from
// n_first (the first with a pair at 0 <= i - j < W) to the causal end (the neighbor phase); n_v in all.
// Every tile of the list has a pair of these rows in its phase's branch.
struct PhasedTiles {
  int n_g, n_first, n_v;
  __device__ __forceinline__ PhasedTiles(int i_lo, int i_hi, int W, int bn) {
    const int n_kt = i_hi / bn + 1;  // causal: keys 0..i_hi
    n_g = i_hi >= W ? min(n_kt, (i_hi - W) / bn + 1) : 0;
    n_first = max(0, i_lo - W + 1) / bn;
    n_v = n_g + (n_kt - n_first);
  }
  __device__ __forceinline__ int tile(int vt) const { return vt < n_g ? vt : n_first + (vt - n_g); }
};

// The Q row of packed row m0 + r of kv head kvh (the prefill kernels; rows past the end read the last valid
// row, computed but never stored).
template <typename T>
__device__ __forceinline__ const T* packed_q_row(const T* q, int64_t q_st, int64_t q_sh, const RowMap& rm, int64_t m0,
                                                 int kvh, int r) {
  int64_t R = m0 + r;
  if (R >= rm.rows) R = rm.rows - 1;
  return q + (R / rm.n_rep) * q_st + (int64_t(kvh) * rm.n_rep + R % rm.n_rep) * q_sh;
}

// The prefill kernels' Q tile: rows [m0, m0 + kRows) of kv head kvh rotated at their grouped positions
// (floor(i/G) + W - floor(W/G)) or their own, chunk c of row r written to dst_chunk(r, c).
template <typename T, int kHeadDim, int kThreads, int kRows, typename DstChunk>
__device__ __forceinline__ void se_rope_q_tile(const SeArgs& a, const RowMap& rm, int64_t m0, int kvh, bool grouped,
                                               DstChunk dst_chunk) {
  const T* q = static_cast<const T*>(a.q);
  auto q_row = [&](int r) { return packed_q_row<T>(q, a.q_st, a.q_sh, rm, m0, kvh, r); };
  if (grouped)
    rope_rows_to<T, kHeadDim, kThreads, kRows>(q_row, dst_chunk, a.rope, [&](int r) {
      return int(se_grouped_query_pos(rm.pos(m0 + r), a.group, a.window));
    });
  else
    rope_rows_to<T, kHeadDim, kThreads, kRows>(q_row, dst_chunk, a.rope, [&](int r) { return rm.pos(m0 + r); });
}

// --- decode: one query row per head (T_q = 1) --------------------------------------------------------
// The tile kernel above pads a decode step's n_rep query rows to 64 and runs ~10 dependent phases per
// key tile (Q staging and rotation, K rotation, two MMA passes), ~17 us for 640 keys of SmolLM2 on an
// H200 (CUPTI, 2026-12-02), the largest kernel of its decode step. Here each block takes one kv head and
// a range of 64-key chunks: K and V chunks land in shared memory by cp.async, q is rotated once per
// block at the normal and the grouped query position (scaled to base-2 logits) and kept in float;
// four threads per key rotate the key at its normal or grouped position (the branch is per key: i - j <
// W) and dot it with the n_rep rows; the chunk's softmax is online, in float32, and P V is accumulated
// by four threads per element pair (each over a quarter of the chunk's keys, summed once at the end).
// Partial states go to the split-K workspace and the merge kernel combines them. Measured before the
// four-thread layout (128 threads, two per key, one per output element; H200, CUDA graph, bf16, G=4,
// W=1024): 140 us at T = 32k for (32, 8, 128) vs the tile kernel's 203; 11.7 vs 12.9 us at T = 640
// for (9, 3, 64); a single block per kv head took ~6 us per 64-key chunk, so the work per chunk is
// spread over more threads now. After (same bench, tree of ea8fcb0): 110 us at 32k (1.23 TB/s, 0.30 of the
// read rate; tile kernel 189), 10.3 / 8.2 us at T = 640 for (32, 8, 128) / (9, 3, 64).
// kThreads = 256 (the default) or 128 (SELFEXT_CUDA_SE_DEC_THREADS=128, opt-in until measured: half the
// shared memory per block, so more independent blocks per SM): kThreads / 4 keys per chunk, four threads
// per key in the logit phase.
constexpr int kDecThreads = 256;
constexpr int kDecMinThreads = 128;  // the smallest block: the most blocks per SM any variant plans for
constexpr int kDecMaxRep = 8;  // query heads per kv head this kernel takes (GQA groups up to 8)

// Latency: chunk 0's K/V copies are issued before the query setup, chunk c+1's while chunk c is computed
// (double-buffered, dynamic shared memory), and each thread's RoPE table loads for its key before the
// wait for the chunk; a plan of one split writes the normalized output itself (no merge kernel).
template <int kHeadDim, int kThreads>
constexpr size_t dec_smem_bytes() {
  // K and V, two buffers each; then q at both positions, the chunk's probabilities, m, l and alpha.
  return size_t(4) * (kThreads / 4) * Layout<kHeadDim>::kStride * 2 +
         (size_t(2) * kDecMaxRep * kHeadDim + size_t(kDecMaxRep) * (kThreads / 4) + 3 * kDecMaxRep) * 4;
}

// Block (kvh, split) of the decode grid (n_kv_heads, n_splits), kThreads threads, smem: dec_smem_bytes
// of 16-byte aligned shared memory. The kernel in selfext_cuda.cu runs it as its own block, the decode
// megakernel (model/decode_mega.cu) as one of a phase's virtual blocks.
template <typename T, int kHeadDim, int kThreads>
__device__ __forceinline__ void se_decode_block(const SeArgs& a, int chunks_per_split, int kvh, int split, int n_splits,
                                                unsigned char* smem) {
  constexpr int kKeys = kThreads / 4;  // keys per chunk
  static_assert(kKeys % 32 == 0, "the softmax phase takes whole warps of keys");
  using L = Layout<kHeadDim>;
  constexpr int S = L::kStride;
  constexpr int kPairs = kHeadDim / 2;
  constexpr int kGroups = kThreads / 4;                        // P V: four threads per group of pairs
  constexpr int kPPT = (kPairs + kGroups - 1) / kGroups;       // element pairs per thread
  T* ks = reinterpret_cast<T*>(smem);  // (2, kKeys, S) K chunks as read
  T* vsm = ks + 2 * kKeys * S;         // (2, kKeys, S) V chunks
  float(*qn)[kHeadDim] = reinterpret_cast<float(*)[kHeadDim]>(vsm + 2 * kKeys * S);  // (kDecMaxRep, kHeadDim)
  float(*qg)[kHeadDim] = qn + kDecMaxRep;
  float(*pr)[kKeys] = reinterpret_cast<float(*)[kKeys]>(qg + kDecMaxRep);  // (kDecMaxRep, kKeys)
  float* m_sh = reinterpret_cast<float*>(pr + kDecMaxRep);
  float* l_sh = m_sh + kDecMaxRep;
  float* alpha_sh = l_sh + kDecMaxRep;

  const int tid = threadIdx.x;
  const int warp = tid >> 5, lane = tid & 31;
  const int n_rep = a.rm.n_rep;
  const int T_k = a.T_k_dev ? *a.T_k_dev : a.rm.T_k;
  const int i = T_k - 1;  // the query's position
  const int G = a.group, W = a.window;
  const int rd = a.rope.rope_dim, np = rd / 2;
  const int j_begin = split * chunks_per_split * kKeys;
  const int j_end = min(T_k, j_begin + chunks_per_split * kKeys);
  const bool need_g = j_begin < j_end && i - j_begin >= W;  // some key of this block is outside the window
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  if (j_begin < j_end) {  // chunk 0 in flight during the query setup
    load_kv_async<T, kHeadDim, kThreads, kKeys>(ks, k, a.k_st, a.k_sh, kvh, j_begin, j_end);
    load_kv_async<T, kHeadDim, kThreads, kKeys>(vsm, v, a.v_st, a.v_sh, kvh, j_begin, j_end);
    cp_async_commit();
  }

  // q of the n_rep heads, rotated at i and at the grouped query position, times scale * log2(e).
  {
    const uint16_t* q = static_cast<const uint16_t*>(a.q);
    const int ig = int(se_grouped_query_pos(i, G, W));
    for (int e = tid; e < n_rep * kHeadDim; e += kThreads) {
      const int r = e / kHeadDim, d = e % kHeadDim;
      const uint16_t* qr = q + int64_t(kvh * n_rep + r) * a.q_sh;
      if (d >= rd) {
        const float x = ld_float<T>(qr[d]) * a.scale2;
        qn[r][d] = x;
        qg[r][d] = x;
        continue;
      }
      int p, ia, ib;
      bool first;
      rope_pair_of(d, rd, a.rope.style, p, first);
      rope_pair(p, rd, a.rope.style, ia, ib);
      float xa = ld_float<T>(qr[ia]), xb = ld_float<T>(qr[ib]);
      float ya = xa, yb = xb;
      const float* cs = a.rope.table + (int64_t(min(i, a.rope.n_pos - 1)) * np + p) * 2;
      rope_rotate(xa, xb, cs[0], cs[1]);
      qn[r][d] = (first ? xa : xb) * a.scale2;
      if (need_g) {
        const float* cg = a.rope.table + (int64_t(min(ig, a.rope.n_pos - 1)) * np + p) * 2;
        rope_rotate(ya, yb, cg[0], cg[1]);
        qg[r][d] = (first ? ya : yb) * a.scale2;
      }
    }
    if (tid < kDecMaxRep) {
      m_sh[tid] = -INFINITY;
      l_sh[tid] = 0.f;
    }
  }
  // P V: thread (dp, kq) = (tid / 4, tid % 4) accumulates the element pairs dp, dp + kGroups, ... (kPPT of
  // them) of every row over the keys kq, kq + 4, ... of each chunk; the four partial sums meet once, after
  // the last chunk.
  const int dp = tid >> 2, kq = tid & 3;
  const bool pv_active = dp < kPairs;  // whole warps (4 kPairs is a multiple of 32)
  float o[kDecMaxRep][kPPT][2];
#pragma unroll
  for (int r = 0; r < kDecMaxRep; ++r)
#pragma unroll
    for (int u = 0; u < kPPT; ++u) o[r][u][0] = o[r][u][1] = 0.f;

  int buf = 0;
  for (int j0 = j_begin; j0 < j_end; j0 += kKeys, buf ^= 1) {
    // This thread's key: position, branch and every (cos, sin) of its pairs, loaded before the wait.
    const int kk = tid >> 2, sub = tid & 3, j = j0 + kk;
    const bool valid = j < j_end;
    const bool grouped = i - j >= W;
    const int pos = grouped ? int(se_grouped_key_pos(j, G)) : j;
    const float* cs_row = a.rope.table + int64_t(min(pos, a.rope.n_pos - 1)) * np * 2;
    constexpr int kPT = kHeadDim / 8;  // pairs per thread at rope_dim = head_dim
    float2 csv[kPT];
#pragma unroll
    for (int u = 0; u < kPT; ++u) {
      const int p = sub + 4 * u;
      csv[u] = p < np ? __ldg(reinterpret_cast<const float2*>(cs_row) + p) : make_float2(1.f, 0.f);
    }
    cp_async_wait<0>();
    __syncthreads();  // chunk landed; q ready; every thread done with the previous chunk (other buffer, pr)
    if (j0 + kKeys < j_end) {
      load_kv_async<T, kHeadDim, kThreads, kKeys>(ks + (buf ^ 1) * kKeys * S, k, a.k_st, a.k_sh, kvh, j0 + kKeys, j_end);
      load_kv_async<T, kHeadDim, kThreads, kKeys>(vsm + (buf ^ 1) * kKeys * S, v, a.v_st, a.v_sh, kvh, j0 + kKeys, j_end);
      cp_async_commit();
    }
    const uint16_t* kb = reinterpret_cast<const uint16_t*>(ks + buf * kKeys * S);
    const uint16_t* vb = reinterpret_cast<const uint16_t*>(vsm + buf * kKeys * S);
    // Logits: key kk = tid / 4; the four threads of a key take every fourth pair and tail element.
    {
      const float(*qq)[kHeadDim] = grouped ? qg : qn;
      const uint16_t* kr = kb + kk * S;
      float sc[kDecMaxRep];
#pragma unroll
      for (int r = 0; r < kDecMaxRep; ++r) sc[r] = 0.f;
#pragma unroll
      for (int u = 0; u < kPT; ++u) {
        const int p = sub + 4 * u;
        if (p >= np) break;
        int ia, ib;
        rope_pair(p, rd, a.rope.style, ia, ib);
        float xa = ld_float<T>(kr[ia]), xb = ld_float<T>(kr[ib]);
        rope_rotate(xa, xb, csv[u].x, csv[u].y);
#pragma unroll
        for (int r = 0; r < kDecMaxRep; ++r)
          if (r < n_rep) sc[r] = fmaf(qq[r][ia], xa, fmaf(qq[r][ib], xb, sc[r]));
      }
      for (int d = rd + sub; d < kHeadDim; d += 4) {
        const float x = ld_float<T>(kr[d]);
#pragma unroll
        for (int r = 0; r < kDecMaxRep; ++r)
          if (r < n_rep) sc[r] = fmaf(qq[r][d], x, sc[r]);
      }
#pragma unroll
      for (int r = 0; r < kDecMaxRep; ++r) {
        sc[r] += __shfl_xor_sync(0xffffffffu, sc[r], 1);
        sc[r] += __shfl_xor_sync(0xffffffffu, sc[r], 2);
        if (sub == 0 && r < n_rep) pr[r][kk] = valid ? sc[r] : -INFINITY;
      }
    }
    __syncthreads();
    // Online softmax of the chunk: warp w takes row w (n_rep <= 8 warps).
    for (int r = warp; r < n_rep; r += kThreads / 32) {
      constexpr int kPerLane = kKeys / 32;
      float xs[kPerLane];
      float cmax = -INFINITY;
#pragma unroll
      for (int t = 0; t < kPerLane; ++t) {
        xs[t] = pr[r][lane + 32 * t];
        cmax = fmaxf(cmax, xs[t]);
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) cmax = fmaxf(cmax, __shfl_xor_sync(0xffffffffu, cmax, off));
      const float m_old = m_sh[r];
      const float m_new = fmaxf(m_old, cmax);
      const float base = m_new == -INFINITY ? 0.f : m_new;  // a chunk with no valid key yet: p = 0
      float psum = 0.f;
#pragma unroll
      for (int t = 0; t < kPerLane; ++t) {
        const float pv = exp2f(xs[t] - base);
        pr[r][lane + 32 * t] = pv;
        psum += pv;
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) psum += __shfl_xor_sync(0xffffffffu, psum, off);
      if (lane == 0) {
        const float alpha = exp2f(m_old - base);  // m_old = -inf: 0
        alpha_sh[r] = alpha;
        l_sh[r] = l_sh[r] * alpha + psum;
        m_sh[r] = m_new;
      }
    }
    __syncthreads();
    if (pv_active) {
#pragma unroll
      for (int r = 0; r < kDecMaxRep; ++r) {
        const float al = r < n_rep ? alpha_sh[r] : 0.f;
#pragma unroll
        for (int u = 0; u < kPPT; ++u) {
          o[r][u][0] *= al;
          o[r][u][1] *= al;
        }
      }
#pragma unroll 4
      for (int q = kq; q < kKeys; q += 4) {
#pragma unroll
        for (int u = 0; u < kPPT; ++u) {
          const int pp = dp + u * kGroups;
          if (kPPT > 1 && pp >= kPairs) break;
          const uint32_t vv = *reinterpret_cast<const uint32_t*>(vb + q * S + 2 * pp);
          const float v0 = ld_float<T>(uint16_t(vv & 0xffffu)), v1 = ld_float<T>(uint16_t(vv >> 16));
#pragma unroll
          for (int r = 0; r < kDecMaxRep; ++r) {
            if (r >= n_rep) break;
            const float pw = pr[r][q];
            o[r][u][0] = fmaf(pw, v0, o[r][u][0]);
            o[r][u][1] = fmaf(pw, v1, o[r][u][1]);
          }
        }
      }
    }
  }
  __syncthreads();
  if (!pv_active) return;
#pragma unroll
  for (int r = 0; r < kDecMaxRep; ++r)
#pragma unroll
    for (int u = 0; u < kPPT; ++u)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        o[r][u][c] += __shfl_xor_sync(0xffffffffu, o[r][u][c], 1);
        o[r][u][c] += __shfl_xor_sync(0xffffffffu, o[r][u][c], 2);
      }
  if (n_splits == 1) {  // one split: the normalized output, no merge
    if (kq != 0) return;
#pragma unroll
    for (int r = 0; r < kDecMaxRep; ++r) {
      if (r >= n_rep) break;
      const float lsum = l_sh[r], inv = lsum > 0.f ? 1.f / lsum : 0.f;
#pragma unroll
      for (int u = 0; u < kPPT; ++u) {
        const int pp = dp + u * kGroups;
        if (kPPT > 1 && pp >= kPairs) break;
        T* dst = static_cast<T*>(a.oa.out) + int64_t(kvh * n_rep + r) * a.oa.stride_h + 2 * pp;
        *reinterpret_cast<uint32_t*>(dst) = pack2<T>(o[r][u][0] * inv, o[r][u][1] * inv);
      }
    }
    return;
  }
  // The block's partial state: unnormalized accumulators, max in natural-log units, and the sum.
  const int64_t row0 = int64_t(split) * a.oa.n_heads + int64_t(kvh) * n_rep;  // T_q = 1
  if (kq == 0) {
#pragma unroll
    for (int r = 0; r < kDecMaxRep; ++r) {
      if (r >= n_rep) break;
#pragma unroll
      for (int u = 0; u < kPPT; ++u) {
        const int pp = dp + u * kGroups;
        if (kPPT > 1 && pp >= kPairs) break;
        *reinterpret_cast<float2*>(a.oa.ws_o + (row0 + r) * kHeadDim + 2 * pp) =
            make_float2(o[r][u][0], o[r][u][1]);
      }
    }
  }
  if (tid < n_rep) {
    a.oa.ws_ml[(row0 + tid) * 2] = m_sh[tid] == -INFINITY ? -INFINITY : m_sh[tid] * kLn2;
    a.oa.ws_ml[(row0 + tid) * 2 + 1] = l_sh[tid];
  }
}


// One thread's L2 prefetch of split `split`'s keys and values of kv head kvh (keys_per_split keys, up to
// the planned bound a.rm.T_k), for caches laid out as the model's: rows of one kv head contiguous.
template <typename T, int kHeadDim>
__device__ __forceinline__ void se_decode_prefetch(const SeArgs& a, int keys_per_split, int kvh, int split) {
  if (a.k_st != kHeadDim || a.v_st != kHeadDim) return;
  const int jb = split * keys_per_split;
  const int je = min(a.rm.T_k, jb + keys_per_split);
  if (jb >= je) return;
  const int64_t bytes = int64_t(je - jb) * kHeadDim * int64_t(sizeof(T));
  prefetch_l2(static_cast<const T*>(a.k) + int64_t(kvh) * a.k_sh + int64_t(jb) * kHeadDim, bytes);
  prefetch_l2(static_cast<const T*>(a.v) + int64_t(kvh) * a.v_sh + int64_t(jb) * kHeadDim, bytes);
}

// Decode plan: chunks of `keys` keys spread so every SM holds as many blocks as fit (blocks_per_sm, from the
// occupancy of the kernel; at most 128 splits per kv head). SELFEXT_CUDA_SE_DEC_CPS=N raises the chunks per
// split to at least N (fewer splits; N >= the chunk count: one split and no merge), for measuring.
struct DecodePlan {
  int n_splits, chunks_per_split;
};
inline DecodePlan decode_plan(int64_t T_k, int n_kv_heads, int sms, int blocks_per_sm, int keys) {
  const int64_t chunks = std::max<int64_t>(1, (T_k + keys - 1) / keys);
  int64_t want = std::max<int64_t>(1, int64_t(std::max(1, blocks_per_sm)) * sms / std::max(1, n_kv_heads));
  want = std::min<int64_t>({want, chunks, 128});
  DecodePlan d;
  d.chunks_per_split = int((chunks + want - 1) / want);
  if (const char* e = std::getenv("SELFEXT_CUDA_SE_DEC_CPS")) {
    const long n = std::strtol(e, nullptr, 10);
    if (n > d.chunks_per_split) d.chunks_per_split = int(std::min<int64_t>(n, chunks));
  }
  d.n_splits = int((chunks + d.chunks_per_split - 1) / d.chunks_per_split);
  return d;
}

// The decode kernel's arguments and plan for a model's decode step run by the decode megakernel:
// 128-thread blocks (the megakernel's), the key range split for `blocks` resident blocks in all. Checks
// p as self_extend_attention_cuda does (ArgumentError); p.T_k is the planned bound, p.T_k_dev the
// run-time count. Defined in selfext_cuda.cu.
struct SeDecodeMega {
  SeArgs a;
  DecodePlan plan;
  int head_dim;
  bool bf16;
};
SeDecodeMega se_decode_mega_plan(const AttentionParams& p, int blocks);

}  // namespace attn_cuda
}  // namespace selfext
