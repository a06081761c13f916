// The SelfExtend decode kernel on tensor cores (T_q = 1, GQA groups up to 8, RoPE over the whole head).
//
// Why: the CUDA-core decode kernel (se_decode.cuh) spends ~5 us on each 64-key chunk in a block (H200,
// bench/attention_cuda.py: 47.5 us for 640 keys in one split, (32, 8, 128)), two block barriers and one
// shared-memory load per multiply-add, so at 32k keys it reads K/V at only 0.30-0.34 of the read rate.
// Here one m16n8k16 multiply takes a whole group's logits for 8 keys at once:
//   - the A operand is the query tile: rows 0..n_rep-1 the group's heads rotated at the query's own
//     position i, rows 8..8+n_rep-1 the same heads rotated at the grouped position i/G + W - W/G. A lane's
//     accumulator holds row r = lane/4 in c0/c1 and row r + 8 in c2/c3 for the same keys, so both branches'
//     logits of head r sit in one lane and the per-key choice (neighbor: i - j < W) is a select;
//   - the B operand is the raw K rows from shared memory (ldmatrix), rotated in registers: each key at its
//     own branch's position (j or j/G), from the (pos, pair) table of rope.h. In "norm" layout a 32-bit
//     fragment register is one whole pair; in "neox" (pairs d, d + D/2) the partner sits in the same
//     register of the fragment D/32 k-steps on (whole k-steps when (D/2) % 16 == 0);
//   - P (rows 8..15 zero) times V is a second multiply per 8 output columns.
// Each warp walks its own 16-key steps (keys j0 = first + 16 * kDmWarps * t) through its own kStages-deep
// cp.async ring: no block barrier inside the key loop. At the end the block's warps merge their states in
// shared memory; the block writes the output (one split) or its split-K state for the merge kernel.
//
// With AttentionParams::past_kv_ready (the model's decode steps) the first ring slots' copies of the past
// keys go out before the PDL wait, so they overlap the Q/K/V product still running; the current token's
// row, which that product writes, is a plain load after the wait (H200, SmolLM2-shaped steps: 1.021-1.033
// -> 0.993-1.001 ms, docs/cuda_loop.md session 15).
//
// Precision: q and the rotated keys enter the multiply rounded to the storage type, as in the prefill
// kernels (rope_tile); logits, softmax and P V accumulate in float32.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "attention/se_decode.cuh"
#include "core/sm90.cuh"

namespace selfext {
namespace attn_cuda {

constexpr int kDmWarps = 8;   // warps per block
constexpr int kDmSub = 16;    // keys per warp step
constexpr int kDmStages = 3;  // cp.async ring depth per warp
constexpr int kDecMaxSplitsCluster = 8;  // the portable cluster size: splits merged in a cluster at most

template <int kHeadDim>
constexpr size_t dm_ring_bytes() {
  return size_t(kDmWarps) * kDmStages * 2 * kDmSub * Layout<kHeadDim>::kStride * 2;
}
template <int kHeadDim>
constexpr size_t dm_red_bytes() {  // the warps' states at the end: o (n_rep x D) and (m, l) per row
  return size_t(kDmWarps) * kDecMaxRep * (kHeadDim + 2) * 4;
}
template <int kHeadDim>
constexpr size_t dm_q_offset() {
  return dm_ring_bytes<kHeadDim>() > dm_red_bytes<kHeadDim>() ? dm_ring_bytes<kHeadDim>() : dm_red_bytes<kHeadDim>();
}
template <int kHeadDim>
constexpr size_t dm_smem_bytes() {  // + the 16-row query tile
  return dm_q_offset<kHeadDim>() + size_t(16) * Layout<kHeadDim>::kStride * 2;
}

// The rope layouts this kernel takes: RoPE over the whole head, and for "neox" pair partners in whole
// k-steps ((D/2) % 16 == 0: head dims 64, 96, 128; not 80).
inline bool decode_mma_supported(int head_dim, int rope_dim, RopeStyle style) {
  if (rope_dim != head_dim) return false;
  return style == RopeStyle::kNorm || (head_dim / 2) % 16 == 0;
}

// Rotate the two halves of fragment register x (one "norm" pair) by (c, s).
template <typename T>
__device__ __forceinline__ uint32_t rot_pair(uint32_t x, float c, float s) {
  float xa = ld_float<T>(uint16_t(x & 0xffffu)), xb = ld_float<T>(uint16_t(x >> 16));
  rope_rotate(xa, xb, c, s);
  return pack2<T>(xa, xb);
}
// "neox": x holds dims (d, d + 1), y their partners (d + D/2, d + D/2 + 1); cs = the two pairs' (c, s).
template <typename T>
__device__ __forceinline__ void rot_neox(uint32_t& x, uint32_t& y, float4 cs) {
  float x0 = ld_float<T>(uint16_t(x & 0xffffu)), x1 = ld_float<T>(uint16_t(x >> 16));
  float y0 = ld_float<T>(uint16_t(y & 0xffffu)), y1 = ld_float<T>(uint16_t(y >> 16));
  rope_rotate(x0, y0, cs.x, cs.y);
  rope_rotate(x1, y1, cs.z, cs.w);
  x = pack2<T>(x0, x1);
  y = pack2<T>(y0, y1);
}


// The split-K merge inside one cluster (grid (n_kv_heads, n_splits), cluster (1, n_splits), so the block of
// split s has cluster rank s): each block's merged (o, M, l) sits in its shared memory at cl_o / cl_ml; after
// a cluster barrier the blocks share the kv head's n_rep x head_dim outputs and combine every split's state,
// read remotely, by the merge kernel's formula (in base 2). The second barrier keeps each block's shared
// memory alive until the others have read it.
template <typename T, int kHeadDim>
__device__ __forceinline__ void cluster_merge_splits(const SeArgs& a, const float* cl_o, const float* cl_ml, int kvh,
                                                     int split, int n_splits, int n_rep) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cluster_barrier();
  const int stride = n_splits * int(blockDim.x);
  for (int e = split * int(blockDim.x) + int(threadIdx.x); e < n_rep * kHeadDim; e += stride) {
    const int r = e / kHeadDim, d = e % kHeadDim;
    float ms[kDecMaxSplitsCluster];
    float M = -INFINITY;
#pragma unroll
    for (int s = 0; s < kDecMaxSplitsCluster; ++s) {
      ms[s] = s < n_splits ? ld_cluster_f32(cl_ml + 2 * r, s) : -INFINITY;
      M = fmaxf(M, ms[s]);
    }
    float acc = 0.f, lsum = 0.f;
    if (M != -INFINITY) {
#pragma unroll
      for (int s = 0; s < kDecMaxSplitsCluster; ++s) {
        if (s >= n_splits || ms[s] == -INFINITY) continue;  // a split without keys
        const float w = exp2f(ms[s] - M);
        acc = fmaf(w, ld_cluster_f32(cl_o + r * kHeadDim + d, s), acc);
        lsum = fmaf(w, ld_cluster_f32(cl_ml + 2 * r + 1, s), lsum);
      }
    }
    uint16_t* out = static_cast<uint16_t*>(a.oa.out);
    out[int64_t(kvh * n_rep + r) * a.oa.stride_h + d] = st_bits<T>(lsum > 0.f ? acc / lsum : 0.f);
  }
  cluster_barrier();
#endif
}

// Grid (n_kv_heads, n_splits), kDmWarps * 32 threads, dm_smem_bytes<kHeadDim>() of dynamic shared memory.
// Split s takes keys [s * subs_per_split * 16, (s + 1) * subs_per_split * 16) of the run-time key count.
template <typename T, int kHeadDim, bool kNeox>
__global__ void __launch_bounds__(kDmWarps * 32) se_decode_mma_kernel(const SeArgs a, int subs_per_split) {
  if constexpr (kNeox && (kHeadDim / 2) % 16 != 0) {
    return;  // never launched (decode_mma_supported)
  } else {
    using L = Layout<kHeadDim>;
    constexpr int S = L::kStride;
    constexpr int kKS = kHeadDim / 16;        // k-steps of the logits
    constexpr int kStage = 2 * kDmSub * S;    // elements per ring slot: K then V
    constexpr int kStep = kDmWarps * kDmSub;  // keys between a warp's steps
    extern __shared__ __align__(16) unsigned char dm_smem[];
    uint16_t* ring = reinterpret_cast<uint16_t*>(dm_smem);
    uint16_t* qs = reinterpret_cast<uint16_t*>(dm_smem + dm_q_offset<kHeadDim>());

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int kvh = blockIdx.x, split = blockIdx.y, n_splits = gridDim.y;
    if (a.prefetch && threadIdx.x == 0) se_decode_prefetch<T, kHeadDim>(a, subs_per_split * kDmSub, kvh, split);
    // past_kv_ready: the key count and the keys before the current one were written before the previous
    // kernel started, so their copies go out before the PDL wait; only the current row waits for it.
    const bool early = a.past_kv_ready;
    if (!early) kernel_prologue();
    const int T_k = a.T_k_dev ? *a.T_k_dev : a.rm.T_k;
    const int i = T_k - 1;  // the query's position
    const int G = a.group, W = a.window, n_rep = a.rm.n_rep, n_pos = a.rope.n_pos;
    const int j_lo = split * subs_per_split * kDmSub;
    const int j_hi = min(T_k, j_lo + subs_per_split * kDmSub);
    const int first = j_lo + warp * kDmSub;
    const int n_my = first < j_hi ? (j_hi - first + kStep - 1) / kStep : 0;
    const uint16_t* k = static_cast<const uint16_t*>(a.k);
    const uint16_t* v = static_cast<const uint16_t*>(a.v);
    uint16_t* my = ring + warp * kDmStages * kStage;
    const int j_cur = early ? T_k - 1 : -1;  // the row the previous kernel wrote (early only)
    auto issue = [&](int t, int skip_j) {  // slot t's copies, except row skip_j's
      const int j0 = first + t * kStep;
      uint16_t* ks = my + (t % kDmStages) * kStage;
      uint16_t* vs = ks + kDmSub * S;
#pragma unroll
      for (int idx = lane; idx < kDmSub * L::kChunks; idx += 32) {
        const int r = idx / L::kChunks, c = idx % L::kChunks;
        const int j = j0 + r;
        if (j == skip_j) continue;
        const bool ok = j < j_hi;
        const int64_t jj = ok ? j : 0;
        cp_async16(ks + r * S + c * 8, k + jj * a.k_st + int64_t(kvh) * a.k_sh + c * 8, ok);
        cp_async16(vs + r * S + c * 8, v + jj * a.v_st + int64_t(kvh) * a.v_sh + c * 8, ok);
      }
    };
#pragma unroll
    for (int t = 0; t < kDmStages - 1; ++t) {  // the ring's first slots in flight during the query setup
      if (t < n_my) issue(t, j_cur);
      cp_async_commit();
    }
    // early: the current row, when it falls in one of those slots of this warp, is loaded after the wait
    // (lanes 0 .. 2 kChunks - 1: its K then V chunks) and stored into the slot after the query setup.
    uint4 cur_val = make_uint4(0u, 0u, 0u, 0u);
    uint16_t* cur_dst = nullptr;
    if (early) {
      kernel_prologue();
      const int rel = j_cur - j_lo;
      if (j_cur >= j_lo && j_cur < j_hi && (rel / kDmSub) % kDmWarps == warp && rel / kStep < kDmStages - 1 &&
          lane < 2 * L::kChunks) {
        const int t = rel / kStep, r = rel % kDmSub, c = lane % L::kChunks;
        const bool is_v = lane >= L::kChunks;
        const uint16_t* src = (is_v ? v + int64_t(j_cur) * a.v_st + int64_t(kvh) * a.v_sh
                                    : k + int64_t(j_cur) * a.k_st + int64_t(kvh) * a.k_sh) + c * 8;
        cur_val = __ldcg(reinterpret_cast<const uint4*>(src));
        cur_dst = my + (t % kDmStages) * kStage + (is_v ? kDmSub * S : 0) + r * S + c * 8;
      }
    }

    // The query tile: row h < n_rep head kvh * n_rep + h at position i, row 8 + h at the grouped position.
    {
      const uint16_t* q = static_cast<const uint16_t*>(a.q);
      const int ig = int(se_grouped_query_pos(i, G, W));
      const int rd = a.rope.rope_dim;
      for (int e = threadIdx.x; e < 16 * kHeadDim; e += kDmWarps * 32) {
        const int row = e / kHeadDim, d = e % kHeadDim, h = row & 7;
        float val = 0.f;
        if (h < n_rep) {
          const uint16_t* qr = q + int64_t(kvh * n_rep + h) * a.q_sh;
          const int pos = min(row < 8 ? i : ig, n_pos - 1);
          int p, ia, ib;
          bool fst;
          rope_pair_of(d, rd, a.rope.style, p, fst);
          rope_pair(p, rd, a.rope.style, ia, ib);
          float xa = ld_float<T>(qr[ia]), xb = ld_float<T>(qr[ib]);
          const float* cs = a.rope.table + (int64_t(pos) * (rd / 2) + p) * 2;
          rope_rotate(xa, xb, cs[0], cs[1]);
          val = fst ? xa : xb;
        }
        qs[row * S + d] = st_bits<T>(val);
      }
    }
    if (cur_dst) *reinterpret_cast<uint4*>(cur_dst) = cur_val;
    __syncthreads();
    uint32_t qa[kKS][4];
#pragma unroll
    for (int kk = 0; kk < kKS; ++kk) ldmatrix_x4(qa[kk], qs + (lane & 15) * S + kk * 16 + (lane >> 4) * 8);

    float o[kHeadDim / 8][4];
#pragma unroll
    for (int db = 0; db < kHeadDim / 8; ++db) o[db][0] = o[db][1] = o[db][2] = o[db][3] = 0.f;
    float m_run = -INFINITY, l_run = 0.f;
    const float2* tab = reinterpret_cast<const float2*>(a.rope.table);
    constexpr int np = kHeadDim / 2;

#pragma unroll 1
    for (int t = 0; t < n_my; ++t) {
      const int j0 = first + t * kStep;
      // This lane's two keys of the K fragments (n = lane/4 and lane/4 + 8) at their branch's position;
      // their table entries are loaded before the wait for the ring slot.
      const float2* trow[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int j = j0 + (lane >> 2) + 8 * h;
        const int pj = i - j >= W ? int(se_grouped_key_pos(j, G)) : j;
        trow[h] = tab + int64_t(min(pj, n_pos - 1)) * np;
      }
      constexpr int kCs = kNeox ? kKS / 2 : kKS;
      float4 cs[kCs][2][2];  // norm: (c, s) of pairs p0 and p0 + 4 in .xy / .zw; neox: two pairs each
#pragma unroll
      for (int kk = 0; kk < kCs; ++kk)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          if constexpr (kNeox) {
            const int d0 = kk * 16 + (lane & 3) * 2;
            cs[kk][h][0] = __ldg(reinterpret_cast<const float4*>(trow[h] + d0));
            cs[kk][h][1] = __ldg(reinterpret_cast<const float4*>(trow[h] + d0 + 8));
          } else {
            const int p0 = kk * 8 + (lane & 3);
            const float2 c0 = __ldg(trow[h] + p0), c1 = __ldg(trow[h] + p0 + 4);
            cs[kk][h][0] = make_float4(c0.x, c0.y, c1.x, c1.y);
          }
        }
      cp_async_wait<kDmStages - 2>();
      __syncwarp();  // every lane's copies of slot t landed; every lane done with slot t - 1
      if (t + kDmStages - 1 < n_my) issue(t + kDmStages - 1, -1);
      cp_async_commit();
      const uint16_t* ks = my + (t % kDmStages) * kStage;
      const uint16_t* vs = ks + kDmSub * S;

      uint32_t kb[kKS][4];
#pragma unroll
      for (int kk = 0; kk < kKS; ++kk)
        ldmatrix_x4(kb[kk], ks + ((lane & 7) + ((lane >> 4) << 3)) * S + kk * 16 + ((lane >> 3) & 1) * 8);
      // kb[kk][0..1]: key lane/4, dims kk*16 + 2*(lane%4) + {0,1} and + 8; kb[kk][2..3]: key lane/4 + 8.
#pragma unroll
      for (int kk = 0; kk < kCs; ++kk)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          if constexpr (kNeox) {
            rot_neox<T>(kb[kk][2 * h], kb[kk + kKS / 2][2 * h], cs[kk][h][0]);
            rot_neox<T>(kb[kk][2 * h + 1], kb[kk + kKS / 2][2 * h + 1], cs[kk][h][1]);
          } else {
            kb[kk][2 * h] = rot_pair<T>(kb[kk][2 * h], cs[kk][h][0].x, cs[kk][h][0].y);
            kb[kk][2 * h + 1] = rot_pair<T>(kb[kk][2 * h + 1], cs[kk][h][0].z, cs[kk][h][0].w);
          }
        }
      float s[2][4];
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < kKS; ++kk) {
        mma16816<T>(s[0], qa[kk], kb[kk][0], kb[kk][1]);
        mma16816<T>(s[1], qa[kk], kb[kk][2], kb[kk][3]);
      }
      // Logits of head lane/4: the neighbor branch (c0, c1) or the grouped one (c2, c3), per key.
      float x[4];
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int j = j0 + nt * 8 + (lane & 3) * 2 + e;
          const float val = i - j >= W ? s[nt][2 + e] : s[nt][e];
          x[nt * 2 + e] = j < j_hi ? val * a.scale2 : -INFINITY;
        }
      float mx = fmaxf(fmaxf(x[0], x[1]), fmaxf(x[2], x[3]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m_run, mx);  // finite: key j0 < j_hi is in every step
      const float alpha = exp2_ftz(m_run - m_new);
      m_run = m_new;
      float pr[4], sum = 0.f;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        pr[e] = exp2_ftz(x[e] - m_new);
        sum += pr[e];
      }
      l_run = l_run * alpha + sum;
      if (!__all_sync(0xffffffffu, alpha == 1.f)) {
#pragma unroll
        for (int db = 0; db < kHeadDim / 8; ++db) {
          o[db][0] *= alpha;
          o[db][1] *= alpha;
        }
      }
      const uint32_t pa[4] = {pack2<T>(pr[0], pr[1]), 0u, pack2<T>(pr[2], pr[3]), 0u};
#pragma unroll
      for (int dp = 0; dp < kHeadDim / 16; ++dp) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, vs + ((lane & 7) + ((lane >> 3) & 1) * 8) * S + dp * 16 + (lane >> 4) * 8);
        mma16816<T>(o[2 * dp], pa, b[0], b[1]);
        mma16816<T>(o[2 * dp + 1], pa, b[2], b[3]);
      }
    }
    l_run += __shfl_xor_sync(0xffffffffu, l_run, 1);
    l_run += __shfl_xor_sync(0xffffffffu, l_run, 2);

    // The block's warps merge: states in shared memory (over the ring, once every warp is done with it).
    cp_async_wait<0>();
    __syncthreads();
    float* red_o = reinterpret_cast<float*>(dm_smem);         // (kDmWarps, kDecMaxRep, kHeadDim)
    float* red_ml = red_o + kDmWarps * kDecMaxRep * kHeadDim;  // (kDmWarps, kDecMaxRep, 2)
    {
      const int r = lane >> 2;
      if (r < n_rep) {
        float* dst = red_o + (warp * kDecMaxRep + r) * kHeadDim + (lane & 3) * 2;
#pragma unroll
        for (int db = 0; db < kHeadDim / 8; ++db) *reinterpret_cast<float2*>(dst + db * 8) = make_float2(o[db][0], o[db][1]);
        if ((lane & 3) == 0) {
          red_ml[(warp * kDecMaxRep + r) * 2] = m_run;
          red_ml[(warp * kDecMaxRep + r) * 2 + 1] = l_run;
        }
      }
    }
    __syncthreads();
    // cluster_merge: the block's merged state goes over the query tile (read into registers before the key
    // loop), where the other splits of the kv head read it through distributed shared memory.
    const bool cluster = a.cluster_merge && n_splits > 1;
    float* cl_o = reinterpret_cast<float*>(qs);  // (n_rep, kHeadDim), then (M, l) per row
    float* cl_ml = cl_o + kDecMaxRep * kHeadDim;
    static_assert(size_t(kDecMaxRep) * (kHeadDim + 2) * 4 <= size_t(16) * S * 2, "cluster state fits the query tile");
    for (int e = threadIdx.x; e < n_rep * kHeadDim; e += kDmWarps * 32) {
      const int r = e / kHeadDim, d = e % kHeadDim;
      float M = -INFINITY;
#pragma unroll
      for (int w = 0; w < kDmWarps; ++w) M = fmaxf(M, red_ml[(w * kDecMaxRep + r) * 2]);
      float acc = 0.f, lsum = 0.f;
      if (M != -INFINITY) {
#pragma unroll
        for (int w = 0; w < kDmWarps; ++w) {
          const float mw = red_ml[(w * kDecMaxRep + r) * 2];
          if (mw == -INFINITY) continue;  // a warp without keys
          const float wgt = exp2f(mw - M);
          acc = fmaf(wgt, red_o[(w * kDecMaxRep + r) * kHeadDim + d], acc);
          lsum = fmaf(wgt, red_ml[(w * kDecMaxRep + r) * 2 + 1], lsum);
        }
      }
      if (cluster) {  // this split's state, for the cluster's merge below
        cl_o[r * kHeadDim + d] = acc;
        if (d == 0) {
          cl_ml[2 * r] = M;
          cl_ml[2 * r + 1] = lsum;
        }
      } else if (n_splits == 1) {
        uint16_t* out = static_cast<uint16_t*>(a.oa.out);
        out[int64_t(kvh * n_rep + r) * a.oa.stride_h + d] = st_bits<T>(lsum > 0.f ? acc / lsum : 0.f);
      } else {
        const int64_t row = int64_t(split) * a.oa.n_heads + int64_t(kvh) * n_rep + r;  // T_q = 1
        a.oa.ws_o[row * kHeadDim + d] = acc;
        if (d == 0) {
          a.oa.ws_ml[row * 2] = M == -INFINITY ? -INFINITY : M * kLn2;
          a.oa.ws_ml[row * 2 + 1] = lsum;
        }
      }
    }
    if (cluster) cluster_merge_splits<T, kHeadDim>(a, cl_o, cl_ml, kvh, split, n_splits, n_rep);
  }
}

// The tensor-core decode kernel's plan: 16-key steps spread so every SM holds blocks_per_sm blocks, each
// warp at least one step, at most 128 splits. SELFEXT_CUDA_SE_DEC_CPS=N (64-key chunks, as for the
// CUDA-core kernel) raises the keys per split to at least 64 N, for measuring. chunks_per_split holds the
// 16-key steps per split.
inline DecodePlan decode_mma_plan(int64_t T_k, int n_kv_heads, int sms, int blocks_per_sm) {
  const int64_t subs = std::max<int64_t>(1, (T_k + kDmSub - 1) / kDmSub);
  int64_t want = std::max<int64_t>(1, int64_t(std::max(1, blocks_per_sm)) * sms / std::max(1, n_kv_heads));
  want = std::min<int64_t>({want, (subs + kDmWarps - 1) / kDmWarps, 128});
  DecodePlan d;
  d.chunks_per_split = int((subs + want - 1) / want);
  if (const char* e = std::getenv("SELFEXT_CUDA_SE_DEC_CPS")) {
    const int64_t n = std::strtol(e, nullptr, 10) * 4;
    if (n > d.chunks_per_split) d.chunks_per_split = int(std::min<int64_t>(n, subs));
  }
  d.n_splits = int((subs + d.chunks_per_split - 1) / d.chunks_per_split);
  return d;
}

}  // namespace attn_cuda
}  // namespace selfext
