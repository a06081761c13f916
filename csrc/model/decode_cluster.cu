// The decode step in one thread-block cluster: design in decode_cluster.cuh.
#include "model/decode_cluster.cuh"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "attention/attention_tiles.cuh"
#include "attention/positions.h"
#include "core/cuda_check.cuh"
#include "core/cuda_launch.cuh"
#include "core/errors.h"
#include "core/half.h"
#include "core/sm90.cuh"

namespace selfext {
namespace clus {
namespace {

using attn_cuda::ld_float;
using attn_cuda::st_bits;

constexpr int kWarps = kThreads / 32;
constexpr int kChunksPerLayer = 7;  // attn_norm, qkv, o, ffn_norm, gate, up, down
constexpr int kStagesPerLayer = 5;  // qkv, attention, o, gate/up, down
constexpr int kQ41Bytes = 20;       // Q4_1 block: d, m (f16), 16 bytes of nibbles
constexpr int kActVMax = 32512;     // activation codes v = 256 h + l, |v| <= 32512 (as matmul_cuda.cu)

// One bulk copy per block: bytes from base + rank * stride into the ring at dst, issued once the ring
// slots it overwrites were consumed (after stage `after`; -1: at the start).
struct Chunk {
  const uint8_t* base;
  int64_t stride;
  uint32_t bytes, dst;
  int32_t after, pad;
};

enum Off { kRing, kKv, kXs, kQs, kKvc, kHs, kAtt, kGu, kPart, kCh, kCl, kDa, kSv, kQn, kQg, kSc, kApart, kMl,
           kRed, kProf, kBar, kLayers, kChunkTab, kNumOff };

struct KArgs {
  const LayerPtrs* layers;
  const Chunk* chunks;
  int n_layer, n_chunks, E, QD, KD, F, H, Hkv, n_rep, ns;
  int64_t n_ctx, group, window;
  float eps, scale2;
  const float* rope_table;
  int rope_n_pos, neox;
  const int32_t* pos_dev;
  float* x;
  int kv_keys;  // keys per staged chunk of a split
  int prof;     // SELFEXT_CUDA_CLUSTER_PROF=1: block 0 prints where each step's cycles went
  uint32_t off[kNumOff];
};

// One Q4_1 block (w: d|m, 16 bytes of nibbles) against a block's codes: d da sum q v + m da sum v.
__device__ __forceinline__ float q41_dot(const uint32_t (&w)[5], const uint32_t (&hw)[8], const uint32_t (&lw)[8], float da,
                                         float dsv) {
  int sh = 0, sl = 0;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const uint32_t q = w[1 + k];
    const uint32_t lo = q & 0x0F0F0F0Fu, hi = (q >> 4) & 0x0F0F0F0Fu;
    sh = __dp4a(int(lo), int(hw[k]), sh);
    sh = __dp4a(int(hi), int(hw[4 + k]), sh);
    sl = __dp4a(int(lo), int(lw[k]), sl);
    sl = __dp4a(int(hi), int(lw[4 + k]), sl);
  }
  const float d = __half2float(__ushort_as_half(uint16_t(w[0] & 0xffffu)));
  const float m = __half2float(__ushort_as_half(uint16_t(w[0] >> 16)));
  return d * da * float(256 * sh + sl) + m * dsv;
}

// Profile slots: cycles per stage kind k (0..4) of work, of waiting for weights, of the cluster barrier.
// Sub-phases: attention (q setup, logits, softmax, P V, state push), products (codes, partial sums, rows).
enum Prof { kPWork = 0, kPWeights = 5, kPBarrier = 10, kPKv = 15, kPInit = 16, kPTotal = 17, kPAtt = 18, kPProd = 23,
            kProfSlots = 26 };

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_add(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// A row's value into every block: each of the row's four threads (sub) stores to four blocks.
__device__ __forceinline__ void push(float* p, float v, int sub) {
  st_cluster_range_f32<kClusterSize / 4>(p, v, sub * (kClusterSize / 4));
}

// Everything a block keeps in shared memory, as pointers.
struct Sm {
  uint8_t* ring;
  uint16_t* kst;  // (kv_keys, D) staged keys, then values
  uint16_t* vst;
  float *xs, *qs, *kvc, *hs, *att, *gu, *part;
  int8_t *ch, *cl;
  float* da;
  int* sv;
  float *qn, *qg, *sc, *apart, *ml, *red;
  unsigned long long* prof;  // kProfSlots cycle counters (block 0, thread 0, with KArgs::prof)
  uint64_t* bar;  // n_chunks weight barriers, then the key/value barrier
  LayerPtrs* layers;
  Chunk* chunks;
};

template <typename P>
__device__ __forceinline__ P* at(unsigned char* base, uint32_t off) {
  return reinterpret_cast<P*>(base + off);
}

struct Ctx {
  const KArgs& a;
  Sm s;
  int rank, t, T_k, next_chunk;
  uint32_t kv_phase;
  bool prof;
  long long last;

  // Adds the cycles since the last mark to slot k (profiling only).
  __device__ __forceinline__ void mark(int k) {
    if (!prof) return;
    const long long now = clock64();
    s.prof[k] += (unsigned long long)(now - last);
    last = now;
  }
  // The cluster barrier closing a stage of kind k.
  __device__ __forceinline__ void end_stage(int k) {
    mark(kPWork + k);
    cluster_barrier();
    mark(kPBarrier + k);
  }

  // Thread 0: every chunk whose ring slots are free once stage g was consumed.
  __device__ void issue_upto(int g) {
    if (t != 0) return;
    while (next_chunk < a.n_chunks && s.chunks[next_chunk].after <= g) {
      const Chunk& c = s.chunks[next_chunk];
      mbar_arrive_expect(&s.bar[next_chunk], c.bytes);
      bulk_copy_g2s(s.ring + c.dst, c.base + int64_t(rank) * c.stride, c.bytes, &s.bar[next_chunk]);
      ++next_chunk;
    }
  }
  __device__ const uint8_t* chunk(int k, int kind) {
    mark(kPWork + kind);
    mbar_wait(&s.bar[k], 0);
    mark(kPWeights + kind);
    return s.ring + s.chunks[k].dst;
  }

  // Thread 0: the past keys and values [c0, min(c1, T_k - 1)) of kv head kvh of layer l into the staging area.
  template <int D>
  __device__ void issue_kv(int l, int kvh, int c0, int c1) {
    if (t != 0) return;
    const int n = max(0, min(c1, T_k - 1) - c0);
    const uint32_t bytes = uint32_t(n) * D * 2;
    uint64_t* bar = &s.bar[a.n_chunks];
    mbar_arrive_expect(bar, 2 * bytes);
    if (n > 0) {
      const int64_t e0 = (int64_t(kvh) * a.n_ctx + c0) * D;
      bulk_copy_g2s(s.kst, static_cast<const uint16_t*>(s.layers[l].kc) + e0, bytes, bar);
      bulk_copy_g2s(s.vst, static_cast<const uint16_t*>(s.layers[l].vc) + e0, bytes, bar);
    }
  }

  // 16-bit codes of the K values src(c) into ch, cl, da, sv: 8 threads per 32-element block, 4 elements each
  // (the block's max and sum in three shuffles). An inf or NaN in a block gives it a NaN scale and zero codes:
  // its products come out NaN, as the float path's would.
  template <typename Src>
  __device__ void prep(int K, Src src) {
    for (int base = 0; base < K; base += 4 * kThreads) {
      const int c = base + 4 * t;
      const bool ok = c < K;
      float v[4];
      float amax = 0.f;
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        v[u] = ok ? src(c + u) : 0.f;
        const float m = fabsf(v[u]);
        amax = fmaxf(amax, m <= 3.0e38f ? m : INFINITY);
      }
#pragma unroll
      for (int o = 1; o < 8; o <<= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
      const bool bad = amax == INFINITY;
      int sum = 0;
      uint32_t hw = 0, lw = 0;
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        int q = amax > 0.f && !bad ? __float2int_rn(v[u] * (float(kActVMax) / amax)) : 0;
        q = max(-kActVMax, min(kActVMax, q));
        const int hi = (q + 128) >> 8;
        hw |= uint32_t(uint8_t(int8_t(hi))) << (8 * u);
        lw |= uint32_t(uint8_t(int8_t(q - 256 * hi))) << (8 * u);
        sum += q;
      }
#pragma unroll
      for (int o = 1; o < 8; o <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      if (ok) {
        reinterpret_cast<uint32_t*>(s.ch)[c / 4] = hw;
        reinterpret_cast<uint32_t*>(s.cl)[c / 4] = lw;
        if ((t & 7) == 0) {
          s.da[c / 32] = bad ? __int_as_float(0x7fc00000) : amax / float(kActVMax);
          s.sv[c / 32] = sum;
        }
      }
    }
    __syncthreads();
    mark(kPProd + 0);
  }

  // 1 / rms of the residual row (every block computes it over its own copy).
  __device__ float inv_rms() {
    float ss = 0.f;
    for (int c = t; c < a.E; c += kThreads) ss += s.xs[c] * s.xs[c];
    ss = warp_add(ss);
    if ((t & 31) == 0) s.red[t >> 5] = ss;
    __syncthreads();
    ss = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) ss += s.red[w];
    return rsqrtf(ss / float(a.E) + a.eps);
  }

  // The block's nr rows (rows < nr0 from w0, the rest from w1) of a Q4_1 product with nb blocks per row over
  // the prepared codes, then epi(r, y) once per row (a thread per row). Thread (g, b) takes block b of rows
  // g, g + ng, ...: its activation codes stay in registers, and a warp's weight loads (stride 20 bytes) hit
  // 32 different banks. Stage g's chunks are released for the next copies once the rows are read.
  template <typename Epi>
  __device__ void product(const uint8_t* w0, const uint8_t* w1, int nr0, int nr, int nb, int stage, Epi epi) {
    const int ng = kThreads / nb, g = t / nb, b = t - g * nb;
    if (g < ng) {
      const uint4 h0 = reinterpret_cast<const uint4*>(s.ch)[2 * b], h1 = reinterpret_cast<const uint4*>(s.ch)[2 * b + 1];
      const uint4 l0 = reinterpret_cast<const uint4*>(s.cl)[2 * b], l1 = reinterpret_cast<const uint4*>(s.cl)[2 * b + 1];
      const uint32_t hw[8] = {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w};
      const uint32_t lw[8] = {l0.x, l0.y, l0.z, l0.w, l1.x, l1.y, l1.z, l1.w};
      const float da = s.da[b];
      const float dsv = da * float(s.sv[b]);
      const int rb = nb * kQ41Bytes;
      // Two rows per step: both rows' words are loaded before either is used.
      for (int r = g; r < nr; r += 2 * ng) {
        const int r2 = r + ng;
        const bool two = r2 < nr;
        const uint32_t* wa = reinterpret_cast<const uint32_t*>((r < nr0 ? w0 + r * rb : w1 + (r - nr0) * rb) + b * kQ41Bytes);
        const int rr2 = two ? r2 : r;
        const uint32_t* wb = reinterpret_cast<const uint32_t*>((rr2 < nr0 ? w0 + rr2 * rb : w1 + (rr2 - nr0) * rb) + b * kQ41Bytes);
        uint32_t A[5], B[5];
#pragma unroll
        for (int k = 0; k < 5; ++k) A[k] = wa[k];
#pragma unroll
        for (int k = 0; k < 5; ++k) B[k] = wb[k];
        const float ya = q41_dot(A, hw, lw, da, dsv), yb = q41_dot(B, hw, lw, da, dsv);
        s.part[r * nb + b] = ya;
        if (two) s.part[r2 * nb + b] = yb;
      }
    }
    __syncthreads();
    mark(kPProd + 1);
    issue_upto(stage);
    // Four threads per row sum its nb partials.
    for (int base = 0; base < 4 * nr; base += kThreads) {
      const int r4 = base + t, r = r4 >> 2, sub = r4 & 3;
      float y = 0.f;
      if (r < nr)
        for (int bb = sub; bb < nb; bb += 4) y += s.part[r * nb + bb];
      y += __shfl_xor_sync(0xffffffffu, y, 1);
      y += __shfl_xor_sync(0xffffffffu, y, 2);
      if (r < nr) epi(r, y, sub);
    }
    mark(kPProd + 2);
  }
};

// Attention of one (kv head, split) block over its keys, in chunks of kv_keys staged keys; its partial state
// (o unnormalized, m, l in base-2 units) pushed to every block's apart[split][head].
template <typename T, int D>
__device__ void attention(Ctx& x, int l) {
  const KArgs& a = x.a;
  Sm& s = x.s;
  const int t = x.t, T_k = x.T_k, i = T_k - 1;
  const int ns = a.ns, n_rep = a.n_rep;
  const int kvh = x.rank / ns, sp = x.rank % ns;
  const int64_t G64 = a.group < T_k ? a.group : int64_t(T_k);
  const int G = int(G64);
  const int W = G == 1 ? T_k : int(a.window < T_k ? a.window : int64_t(T_k));
  const int per = (T_k + ns - 1) / ns, j0 = sp * per, j1 = min(T_k, j0 + per);
  constexpr int kPairs = D / 2, kPPT = D / 16;  // pairs per thread of a key (8 threads per key)
  const int ig = int(se_grouped_query_pos(i, G, W));
  const bool need_g = j0 < j1 && i - j0 >= W;
  for (int e = t; e < n_rep * D; e += kThreads) {
    const int r = e / D, d = e % D;
    const float* qr = s.qs + (kvh * n_rep + r) * D;
    int p, ia, ib;
    bool first;
    rope_pair_of(d, D, a.neox ? RopeStyle::kNeox : RopeStyle::kNorm, p, first);
    rope_pair(p, D, a.neox ? RopeStyle::kNeox : RopeStyle::kNorm, ia, ib);
    float xa = qr[ia], xb = qr[ib], ya = xa, yb = xb;
    const float* cs = a.rope_table + (int64_t(min(i, a.rope_n_pos - 1)) * kPairs + p) * 2;
    rope_rotate(xa, xb, cs[0], cs[1]);
    s.qn[r * D + d] = (first ? xa : xb) * a.scale2;
    if (need_g) {
      const float* cg = a.rope_table + (int64_t(min(ig, a.rope_n_pos - 1)) * kPairs + p) * 2;
      rope_rotate(ya, yb, cg[0], cg[1]);
      s.qg[r * D + d] = (first ? ya : yb) * a.scale2;
    }
  }
  if (t < kMaxRep) {
    s.ml[3 * t] = -INFINITY;
    s.ml[3 * t + 1] = 0.f;
  }
  __syncthreads();
  x.mark(kPAtt + 0);

  const int dd = t % (D / 2), ksub = t / (D / 2);
  constexpr int kSubs = kThreads / (D / 2);
  float o[kMaxRep][2];
#pragma unroll
  for (int r = 0; r < kMaxRep; ++r) o[r][0] = o[r][1] = 0.f;
  const float* kcur = s.kvc + kvh * D;
  const float* vcur = s.kvc + a.KD + kvh * D;
  for (int c0 = j0; c0 < j1; c0 += a.kv_keys) {
    const int c1 = min(j1, c0 + a.kv_keys), nk = c1 - c0;
    x.mark(kPWork + 1);
    mbar_wait(&s.bar[a.n_chunks], x.kv_phase);
    x.mark(kPKv);
    x.kv_phase ^= 1u;
    // Logits: 8 threads per key, pairs kPPT c .. kPPT c + kPPT - 1 each.
    const int c = t & 7;
    for (int kb = 0; kb < nk; kb += kThreads / 8) {
      const int kk = kb + (t >> 3);
      const bool valid = kk < nk;
      const int j = c0 + (valid ? kk : 0);
      const bool grouped = i - j >= W;
      const int pos = grouped ? int(se_grouped_key_pos(j, G)) : j;
      const float* cs = a.rope_table + (int64_t(min(pos, a.rope_n_pos - 1)) * kPairs + c * kPPT) * 2;
      const float* qx = grouped ? s.qg : s.qn;
      float acc[kMaxRep];
#pragma unroll
      for (int r = 0; r < kMaxRep; ++r) acc[r] = 0.f;
      const bool cur = j == T_k - 1;
      const uint16_t* krow = s.kst + (j - c0) * D;
#pragma unroll
      for (int u = 0; u < kPPT; ++u) {
        const int p = c * kPPT + u;
        int ia, ib;
        rope_pair(p, D, a.neox ? RopeStyle::kNeox : RopeStyle::kNorm, ia, ib);
        float ka = cur ? kcur[ia] : ld_float<T>(krow[ia]);
        float kb2 = cur ? kcur[ib] : ld_float<T>(krow[ib]);
        const float2 cv = *reinterpret_cast<const float2*>(cs + 2 * u);
        rope_rotate(ka, kb2, cv.x, cv.y);
#pragma unroll
        for (int r = 0; r < kMaxRep; ++r)
          if (r < n_rep) acc[r] += qx[r * D + ia] * ka + qx[r * D + ib] * kb2;
      }
#pragma unroll
      for (int r = 0; r < kMaxRep; ++r) {
        if (r >= n_rep) break;
        float v = acc[r];
        v += __shfl_xor_sync(0xffffffffu, v, 1);
        v += __shfl_xor_sync(0xffffffffu, v, 2);
        v += __shfl_xor_sync(0xffffffffu, v, 4);
        if (valid && c == 0) s.sc[r * a.kv_keys + kk] = v;
      }
    }
    __syncthreads();
    x.mark(kPAtt + 1);
    // Online softmax of the chunk: warp r takes head r.
    const int warp = t >> 5, lane = t & 31;
    if (warp < n_rep) {
      float* sr = s.sc + warp * a.kv_keys;
      float mc = -INFINITY;
      for (int k = lane; k < nk; k += 32) mc = fmaxf(mc, sr[k]);
      mc = warp_max(mc);
      const float m_old = s.ml[3 * warp], m_new = fmaxf(m_old, mc);
      float ls = 0.f;
      for (int k = lane; k < nk; k += 32) {
        const float p = exp2f(sr[k] - m_new);
        sr[k] = p;
        ls += p;
      }
      ls = warp_add(ls);
      __syncwarp();
      if (lane == 0) {
        const float alpha = exp2f(m_old - m_new);
        s.ml[3 * warp] = m_new;
        s.ml[3 * warp + 1] = s.ml[3 * warp + 1] * alpha + ls;
        s.ml[3 * warp + 2] = alpha;
      }
    }
    __syncthreads();
    x.mark(kPAtt + 2);
    // P V: thread (dd, ksub) takes elements 2 dd, 2 dd + 1 of keys ksub, ksub + kSubs, ...
#pragma unroll
    for (int r = 0; r < kMaxRep; ++r) {
      if (r >= n_rep) break;
      const float al = s.ml[3 * r + 2];
      o[r][0] *= al;
      o[r][1] *= al;
    }
    for (int kk = ksub; kk < nk; kk += kSubs) {
      const int j = c0 + kk;
      float v0, v1;
      if (j == T_k - 1) {
        v0 = vcur[2 * dd];
        v1 = vcur[2 * dd + 1];
      } else {
        const uint32_t w = *reinterpret_cast<const uint32_t*>(s.vst + kk * D + 2 * dd);
        v0 = ld_float<T>(uint16_t(w & 0xffffu));
        v1 = ld_float<T>(uint16_t(w >> 16));
      }
#pragma unroll
      for (int r = 0; r < kMaxRep; ++r) {
        if (r >= n_rep) break;
        const float p = s.sc[r * a.kv_keys + kk];
        o[r][0] = fmaf(p, v0, o[r][0]);
        o[r][1] = fmaf(p, v1, o[r][1]);
      }
    }
    __syncthreads();  // the staging area and the logits are free
    if (c1 < j1) x.template issue_kv<D>(l, kvh, c1, min(j1, c1 + a.kv_keys));
  }
  // The next layer's first chunk, while this layer's remaining stages run.
  if (l + 1 < a.n_layer && j0 < j1) x.template issue_kv<D>(l + 1, kvh, j0, min(j1, j0 + a.kv_keys));
  // The split's state: P V partials summed over ksub, then pushed with (m, l).
#pragma unroll
  for (int r = 0; r < kMaxRep; ++r) {
    if (r >= n_rep) break;
    s.part[(ksub * n_rep + r) * D + 2 * dd] = o[r][0];
    s.part[(ksub * n_rep + r) * D + 2 * dd + 1] = o[r][1];
  }
  __syncthreads();
  x.mark(kPAtt + 3);
  for (int e = t; e < 4 * n_rep * (D + 2); e += kThreads) {
    const int sub = e & 3, r = (e >> 2) / (D + 2), d = (e >> 2) % (D + 2);
    float v;
    if (d < D) {
      v = 0.f;
      for (int k = 0; k < kSubs; ++k) v += s.part[(k * n_rep + r) * D + d];
    } else {
      v = s.ml[3 * r + (d - D)];
    }
    push(s.apart + (sp * a.H + kvh * n_rep + r) * (D + 2) + d, v, sub);
  }
  x.mark(kPAtt + 4);
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads, 1) decode_cluster_kernel(const KArgs a) {
  extern __shared__ __align__(128) unsigned char smem[];
  Sm s;
  s.ring = at<uint8_t>(smem, a.off[kRing]);
  s.kst = at<uint16_t>(smem, a.off[kKv]);
  s.vst = s.kst + a.kv_keys * D;
  s.xs = at<float>(smem, a.off[kXs]);
  s.qs = at<float>(smem, a.off[kQs]);
  s.kvc = at<float>(smem, a.off[kKvc]);
  s.hs = at<float>(smem, a.off[kHs]);
  s.att = at<float>(smem, a.off[kAtt]);
  s.gu = at<float>(smem, a.off[kGu]);
  s.part = at<float>(smem, a.off[kPart]);
  s.ch = at<int8_t>(smem, a.off[kCh]);
  s.cl = at<int8_t>(smem, a.off[kCl]);
  s.da = at<float>(smem, a.off[kDa]);
  s.sv = at<int>(smem, a.off[kSv]);
  s.qn = at<float>(smem, a.off[kQn]);
  s.qg = at<float>(smem, a.off[kQg]);
  s.sc = at<float>(smem, a.off[kSc]);
  s.apart = at<float>(smem, a.off[kApart]);
  s.ml = at<float>(smem, a.off[kMl]);
  s.red = at<float>(smem, a.off[kRed]);
  s.prof = at<unsigned long long>(smem, a.off[kProf]);
  s.bar = at<uint64_t>(smem, a.off[kBar]);
  s.layers = at<LayerPtrs>(smem, a.off[kLayers]);
  s.chunks = at<Chunk>(smem, a.off[kChunkTab]);
  const int t = threadIdx.x;
  Ctx x{a, s, cluster_rank(), t, 0, 0, 0u, false, 0};
  x.prof = a.prof && x.rank == 0 && t == 0;
  const long long t_entry = clock64();
  x.last = t_entry;
  if (t < kProfSlots) s.prof[t] = 0;

  // Static inputs first (before the PDL wait): the tables, the barriers, the first weights, the key count
  // (copied before the embedding kernel), the first layer's past keys.
  for (int e = t; e < a.n_layer * int(sizeof(LayerPtrs) / 8); e += kThreads)
    reinterpret_cast<uint64_t*>(s.layers)[e] = reinterpret_cast<const uint64_t*>(a.layers)[e];
  for (int e = t; e < a.n_chunks * int(sizeof(Chunk) / 8); e += kThreads)
    reinterpret_cast<uint64_t*>(s.chunks)[e] = reinterpret_cast<const uint64_t*>(a.chunks)[e];
  if (t == 0) {
    for (int k = 0; k <= a.n_chunks; ++k) mbar_init(&s.bar[k]);
    mbar_init_fence();
  }
  __syncthreads();
  x.issue_upto(-1);
  const int32_t* pd = a.pos_dev;
  x.T_k = pd[1];
  const int pos = pd[0];
  const bool att_block = x.rank < a.Hkv * a.ns;
  const int per = (x.T_k + a.ns - 1) / a.ns;
  const int kvh = x.rank / a.ns;
  const int j0 = (x.rank % a.ns) * per, j1 = min(x.T_k, j0 + per);
  if (att_block && j0 < j1) x.template issue_kv<D>(0, kvh, j0, min(j1, j0 + a.kv_keys));
  pdl_wait();
  pdl_launch_dependents();
  for (int c = t; c < a.E; c += kThreads) s.xs[c] = a.x[c];
  cluster_barrier();  // every block runs before any block's pushes reach it
  x.mark(kPInit);

  const int E = a.E, QD = a.QD, KD = a.KD, F = a.F;
  const int nbE = E / 32, nbQ = QD / 32, nbF = F / 32;
  const int nrq = (QD + 2 * KD) / kClusterSize, nro = E / kClusterSize, nrf = F / kClusterSize;
  for (int l = 0; l < a.n_layer; ++l) {
    const LayerPtrs& L = s.layers[l];
    const int ck = l * kChunksPerLayer, st = l * kStagesPerLayer;
    // 1. RMSNorm, Q/K/V rows; q to every block, k and v to the cache and to every block.
    {
      const float inv = x.inv_rms();
      const float* nw = reinterpret_cast<const float*>(x.chunk(ck + 0, 0));
      x.prep(E, [&](int c) { return s.xs[c] * inv * nw[c]; });
      const uint8_t* w = x.chunk(ck + 1, 0);
      x.product(w, w, nrq, nrq, nbE, st + 0, [&](int r, float y, int sub) {
        const int R = x.rank * nrq + r;
        if (R < QD) {
          if (L.bq) y += L.bq[R];
          push(s.qs + R, ld_float<T>(st_bits<T>(y)), sub);
        } else {
          const bool is_k = R < QD + KD;
          const int kk = R - QD - (is_k ? 0 : KD);
          const float* bias = is_k ? L.bk : L.bv;
          if (bias) y += bias[kk];
          const uint16_t bits = st_bits<T>(y);
          uint16_t* cache = static_cast<uint16_t*>(is_k ? L.kc : L.vc);
          if (sub == 0) cache[(int64_t(kk / D) * a.n_ctx + pos) * D + kk % D] = bits;
          push(s.kvc + (is_k ? 0 : KD) + kk, ld_float<T>(bits), sub);
        }
      });
      x.end_stage(0);
    }
    // 2. Attention.
    if (att_block) attention<T, D>(x, l);
    x.end_stage(1);
    // 3. Merge of the splits (every block, every head), output projection, residual.
    {
      for (int e = t; e < QD; e += kThreads) {
        const int h = e / D, d = e % D;
        float M = -INFINITY;
        for (int p = 0; p < a.ns; ++p) M = fmaxf(M, s.apart[(p * a.H + h) * (D + 2) + D]);
        float acc = 0.f, ls = 0.f;
        if (M != -INFINITY)
          for (int p = 0; p < a.ns; ++p) {
            const float* st2 = s.apart + (p * a.H + h) * (D + 2);
            if (st2[D] == -INFINITY) continue;
            const float w = exp2f(st2[D] - M);
            acc = fmaf(w, st2[d], acc);
            ls = fmaf(w, st2[D + 1], ls);
          }
        s.att[e] = ld_float<T>(st_bits<T>(ls > 0.f ? acc / ls : 0.f));
      }
      __syncthreads();
      x.prep(QD, [&](int c) { return s.att[c]; });
      const uint8_t* w = x.chunk(ck + 2, 2);
      x.product(w, w, nro, nro, nbQ, st + 2, [&](int r, float y, int sub) {
        const int R = x.rank * nro + r;
        push(s.xs + R, s.xs[R] + y, sub);
      });
      x.end_stage(2);
    }
    // 4. RMSNorm, gate and up, SwiGLU to every block.
    {
      const float inv = x.inv_rms();
      const float* nw = reinterpret_cast<const float*>(x.chunk(ck + 3, 3));
      x.prep(E, [&](int c) { return s.xs[c] * inv * nw[c]; });
      const uint8_t* wg = x.chunk(ck + 4, 3);
      const uint8_t* wu = x.chunk(ck + 5, 3);
      x.product(wg, wu, nrf, 2 * nrf, nbE, st + 3, [&](int r, float y, int sub) {
        if (sub == 0) s.gu[r] = y;
      });
      __syncthreads();
      for (int e = t; e < 4 * nrf; e += kThreads) {
        const int r = e >> 2;
        const float g = s.gu[r];
        push(s.hs + x.rank * nrf + r, g / (1.f + expf(-g)) * s.gu[nrf + r], e & 3);
      }
      x.end_stage(3);
    }
    // 5. Down projection, residual.
    {
      x.prep(F, [&](int c) { return s.hs[c]; });
      const uint8_t* w = x.chunk(ck + 6, 4);
      x.product(w, w, nro, nro, nbF, st + 4, [&](int r, float y, int sub) {
        const int R = x.rank * nro + r;
        push(s.xs + R, s.xs[R] + y, sub);
      });
      x.end_stage(4);
    }
  }
  if (x.rank == 0)
    for (int c = t; c < E; c += kThreads) a.x[c] = s.xs[c];
  if (x.prof) {
    s.prof[kPTotal] = (unsigned long long)(clock64() - t_entry);
    const unsigned long long* p = s.prof;
    const double L = double(a.n_layer);
    printf("cluster-prof cycles: total %llu init %llu | per layer: work %.0f %.0f %.0f %.0f %.0f | weights %.0f %.0f "
           "%.0f %.0f %.0f | barrier %.0f %.0f %.0f %.0f %.0f | kv %.0f\n",
           p[kPTotal], p[kPInit], p[0] / L, p[1] / L, p[2] / L, p[3] / L, p[4] / L, p[5] / L, p[6] / L, p[7] / L,
           p[8] / L, p[9] / L, p[10] / L, p[11] / L, p[12] / L, p[13] / L, p[14] / L, p[kPKv] / L);
    printf("cluster-prof per layer: attention q %.0f logits %.0f softmax %.0f pv %.0f push %.0f | products codes %.0f "
           "partials %.0f rows %.0f\n", p[kPAtt] / L, p[kPAtt + 1] / L, p[kPAtt + 2] / L, p[kPAtt + 3] / L,
           p[kPAtt + 4] / L, p[kPProd] / L, p[kPProd + 1] / L, p[kPProd + 2] / L);
  }
}

#else
template <typename T, int D>
__global__ void decode_cluster_kernel(const KArgs) {}
#endif

int64_t q41_row_bytes(int64_t cols) { return cols / 32 * kQ41Bytes; }
uint32_t up16(int64_t n) { return uint32_t((n + 15) / 16 * 16); }

template <typename T, int D>
void* kernel_for() {
  return reinterpret_cast<void*>(&decode_cluster_kernel<T, D>);
}
void* kernel_of(const Config& c) {
  if (c.D == 64) return c.bf16 ? kernel_for<bf16, 64>() : kernel_for<f16, 64>();
  return c.bf16 ? kernel_for<bf16, 128>() : kernel_for<f16, 128>();
}

// The shared-memory layout for c (offsets in bytes; ring: what is left of the device's limit).
struct Plan {
  uint32_t off[kNumOff];
  int smem = 0, ring = 0, n_chunks = 0;
  std::string why;
};

Plan plan_for(const Config& c, int smem_limit) {
  Plan p;
  const int nc = kClusterSize;
  const int QKV = c.QD + 2 * c.KD, n_rep = c.Hkv > 0 ? c.H / c.Hkv : 0, ns = c.Hkv > 0 ? nc / c.Hkv : 0;
  const int nrq = QKV / nc, nro = c.E / nc, nrf = c.F / nc;
  const int Kmax = std::max({c.E, c.QD, c.F});
  const int64_t part = std::max<int64_t>({int64_t(nrq) * (c.E / 32), int64_t(nro) * (c.QD / 32),
                                          int64_t(2 * nrf) * (c.E / 32), int64_t(nro) * (c.F / 32),
                                          int64_t(kThreads) * 2 * n_rep});
  const int64_t sizes[kNumOff] = {
      0,
      int64_t(2) * c.kv_keys * c.D * 2,
      c.E * 4, c.QD * 4, 2 * c.KD * 4, c.F * 4, c.QD * 4, 2 * nrf * 4, part * 4,
      Kmax, Kmax, Kmax / 32 * 4, Kmax / 32 * 4,
      int64_t(n_rep) * c.D * 4, int64_t(n_rep) * c.D * 4, int64_t(n_rep) * c.kv_keys * 4,
      int64_t(ns) * c.H * (c.D + 2) * 4, kMaxRep * 3 * 4, 32 * 4, kProfSlots * 8,
      int64_t(c.n_layer * kChunksPerLayer + 1) * 8,
      int64_t(c.n_layer) * int64_t(sizeof(LayerPtrs)),
      int64_t(c.n_layer * kChunksPerLayer) * int64_t(sizeof(Chunk))};
  uint32_t o = 0;
  for (int k = 1; k < kNumOff; ++k) {
    p.off[k] = o;
    o += up16(sizes[k]);
  }
  p.ring = (smem_limit - int(o)) / 16 * 16;
  for (int k = 1; k < kNumOff; ++k) p.off[k] += uint32_t(std::max(p.ring, 0));
  p.off[kRing] = 0;
  p.smem = std::max(p.ring, 0) + int(o);
  p.n_chunks = c.n_layer * kChunksPerLayer;
  return p;
}

// The chunk list and its ring schedule; false (why set) when the ring cannot hold a stage's weights.
bool schedule(const Config& c, const std::vector<LayerPtrs>& layers, const Plan& p, std::vector<Chunk>& out,
              std::string& why) {
  const int nc = kClusterSize;
  const int QKV = c.QD + 2 * c.KD;
  const int64_t rbE = q41_row_bytes(c.E), rbQ = q41_row_bytes(c.QD), rbF = q41_row_bytes(c.F);
  struct Item { const void* base; int64_t stride, bytes; int consume; };
  std::vector<Item> items;
  for (int l = 0; l < c.n_layer; ++l) {
    const LayerPtrs& L = layers[size_t(l)];
    const int st = l * kStagesPerLayer;
    items.push_back({L.attn_norm, 0, int64_t(c.E) * 4, st});
    items.push_back({L.wqkv, QKV / nc * rbE, QKV / nc * rbE, st});
    items.push_back({L.wo, c.E / nc * rbQ, c.E / nc * rbQ, st + 2});
    items.push_back({L.ffn_norm, 0, int64_t(c.E) * 4, st + 3});
    items.push_back({L.wg, c.F / nc * rbE, c.F / nc * rbE, st + 3});
    items.push_back({L.wu, c.F / nc * rbE, c.F / nc * rbE, st + 3});
    items.push_back({L.wd, c.E / nc * rbF, c.E / nc * rbF, st + 4});
  }
  out.clear();
  int64_t cursor = 0;
  int last_after = -1;
  std::vector<std::pair<int64_t, int64_t>> spans;
  for (size_t k = 0; k < items.size(); ++k) {
    const Item& it = items[k];
    if (it.bytes % 16 != 0 || it.stride % 16 != 0 || reinterpret_cast<uintptr_t>(it.base) % 16 != 0) {
      why = "a weight slice is not 16-byte aligned";
      return false;
    }
    if (it.bytes > p.ring) {
      why = "a weight slice does not fit the shared-memory ring";
      return false;
    }
    if (cursor + it.bytes > p.ring) cursor = 0;
    const int64_t lo = cursor, hi = cursor + it.bytes;
    int after = last_after;
    for (size_t j = 0; j < k; ++j)
      if (spans[j].first < hi && lo < spans[j].second) after = std::max(after, items[j].consume);
    if (after >= it.consume) {
      why = "the shared-memory ring cannot hold one stage's weights";
      return false;
    }
    last_after = after;
    spans.emplace_back(lo, hi);
    Chunk ch{static_cast<const uint8_t*>(it.base), it.stride, uint32_t(it.bytes), uint32_t(lo), after, 0};
    out.push_back(ch);
    cursor = hi;
  }
  return true;
}

int device_smem_limit() {
  int dev = 0, v = 0;
  SELFEXT_CUDA_CHECK(cudaGetDevice(&dev));
  SELFEXT_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return v;
}

}  // namespace

std::string why_not(const Config& c) {
  if (current_device_compute_capability() < 90) return "needs compute capability 9.0 (thread-block clusters)";
  if (!(c.D == 64 || c.D == 128)) return "head_dim must be 64 or 128";
  if (c.kv_keys < 1 || c.kv_keys > 4096) return "kv_keys must be in [1, 4096]";
  if (c.rope_dim != c.D || !c.rope_table) return "RoPE must cover the whole head";
  if (c.Hkv < 1 || c.H % c.Hkv != 0 || c.H / c.Hkv > kMaxRep || c.Hkv > kClusterSize) return "unsupported head grouping";
  for (QType t : c.types)
    if (t != QType::Q4_1) return "the layer weights must all be Q4_1";
  const int QKV = c.QD + 2 * c.KD;
  if (c.E % 32 || c.QD % 32 || c.F % 32 || QKV % kClusterSize || c.E % kClusterSize || c.F % kClusterSize)
    return "the sizes must split evenly over the cluster's 16 blocks";
  if (c.E / 32 > kThreads || c.QD / 32 > kThreads || c.F / 32 > kThreads) return "rows too long";
  const Plan p = plan_for(c, device_smem_limit());
  if (p.ring < 16 * 1024) return "not enough shared memory";
  void* k = kernel_of(c);
  if (cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, p.smem) != cudaSuccess ||
      cudaFuncSetAttribute(k, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess) {
    cudaGetLastError();
    return "the kernel's attributes could not be set";
  }
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(kClusterSize);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = size_t(p.smem);
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = kClusterSize;
  attr.val.clusterDim.y = attr.val.clusterDim.z = 1;
  cfg.attrs = &attr;
  cfg.numAttrs = 1;
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, k, &cfg) != cudaSuccess || clusters < 1) {
    cudaGetLastError();
    return "a cluster of 16 blocks cannot be scheduled";
  }
  return "";
}

ClusterDecode::ClusterDecode(const Config& c, const std::vector<LayerPtrs>& layers) : c_(c) {
  SELFEXT_CHECK(int(layers.size()) == c.n_layer, ArgumentError, "cluster decode: ", layers.size(), " layers for ",
                c.n_layer);
  const std::string why = why_not(c);
  SELFEXT_CHECK(why.empty(), ArgumentError, "cluster decode: ", why);
  const Plan p = plan_for(c, device_smem_limit());
  std::vector<Chunk> chunks;
  std::string w2;
  SELFEXT_CHECK(schedule(c, layers, p, chunks, w2), ArgumentError, "cluster decode: ", w2);
  n_chunks_ = int(chunks.size());
  smem_ = p.smem;
  off_.assign(p.off, p.off + kNumOff);
  const size_t lb = layers.size() * sizeof(LayerPtrs), cb = chunks.size() * sizeof(Chunk);
  SELFEXT_CUDA_CHECK(cudaMalloc(&dev_, lb + cb));
  SELFEXT_CUDA_CHECK(cudaMemcpy(dev_, layers.data(), lb, cudaMemcpyHostToDevice));
  SELFEXT_CUDA_CHECK(cudaMemcpy(static_cast<char*>(dev_) + lb, chunks.data(), cb, cudaMemcpyHostToDevice));
}

ClusterDecode::~ClusterDecode() {
  if (dev_) cudaFree(dev_);
}

void ClusterDecode::launch(const int32_t* pos_dev, float* x, cudaStream_t stream) const {
  KArgs a{};
  a.layers = static_cast<const LayerPtrs*>(dev_);
  a.chunks = reinterpret_cast<const Chunk*>(static_cast<const char*>(dev_) + size_t(c_.n_layer) * sizeof(LayerPtrs));
  a.n_layer = c_.n_layer;
  a.n_chunks = n_chunks_;
  a.E = c_.E;
  a.QD = c_.QD;
  a.KD = c_.KD;
  a.F = c_.F;
  a.H = c_.H;
  a.Hkv = c_.Hkv;
  a.n_rep = c_.H / c_.Hkv;
  a.ns = kClusterSize / c_.Hkv;
  a.n_ctx = c_.n_ctx;
  a.group = c_.group;
  a.window = c_.window;
  a.eps = c_.eps;
  a.scale2 = c_.scale * 1.4426950408889634f;
  a.rope_table = c_.rope_table;
  a.rope_n_pos = int(c_.rope_n_pos);
  a.neox = c_.style == RopeStyle::kNeox;
  a.pos_dev = pos_dev;
  a.x = x;
  a.kv_keys = c_.kv_keys;
  const char* pe = std::getenv("SELFEXT_CUDA_CLUSTER_PROF");
  a.prof = pe && std::strcmp(pe, "1") == 0;
  for (int k = 0; k < kNumOff; ++k) a.off[k] = uint32_t(off_[size_t(k)]);
  void (*k)(const KArgs);
  if (c_.D == 64) k = c_.bf16 ? decode_cluster_kernel<bf16, 64> : decode_cluster_kernel<f16, 64>;
  else k = c_.bf16 ? decode_cluster_kernel<bf16, 128> : decode_cluster_kernel<f16, 128>;
  launch_kernel_clustered(k, dim3(kClusterSize), dim3(kThreads), size_t(smem_), stream, dim3(kClusterSize), a);
}

}  // namespace clus
}  // namespace selfext
