// Contextual position encoding (Golovneva et al. 2024, arXiv 2405.18719, Sec. 3) on CUDA: one fused
// flash-style pass per query tile, key tiles visited backwards from the diagonal, gates and their
// running suffix sums in float32 registers, online softmax. Nothing of size T_q x T_k is stored.
//
// Per query tile the block first computes the integer position logits L[r][p] = <q_r, e[p]> (times
// the z scaling: 1 for the paper's listing, `scale` for the authors' code) with the same tensor-core
// tile product as Q K^T, into shared memory (npos_max <= 192) or a global workspace. Per key tile:
// S = Q K^T, gates g = sigmoid(S * scale), positions p = carry + suffix sum of g within the tile
// (a quad-shuffle scan, since a row's 64 columns are spread over 4 lanes), z = cope_interp(clamp(p)),
// logits S * scale + z. Gates are >= 0: once a row's carry reaches npos_max - 1 every earlier key sits
// at the clamp, so a warp whose 16 rows are all saturated skips gates, scan and gathers (z = L[npos-1]).
//
// Decode and short chunks split the key range across blocks. A split needs the gate sum of all later
// keys (the suffix over later splits), a dependency that runs against the blocks' order, so it is two
// passes rather than a single pass with a look-back (which would make blocks wait on blocks that may
// not be resident): pass 1 computes each split's gate total, stopping as soon as the total reaches
// npos_max - 1 (beyond that the clamp makes its exact value irrelevant), so it reads only a few K tiles
// per split; pass 2 starts each split at carry = sum of the later splits' totals and writes partial
// softmax states, merged by LSE as in SelfExtend.
#include <algorithm>
#include <climits>
#include <cmath>

#include "attention/attention_cuda.h"
#include "attention/attention_host.cuh"
#include "attention/attention_tiles.cuh"
#include "attention/cope.h"
#include "core/cuda_check.cuh"
#include "core/dispatch.h"

namespace selfext {
namespace {

using namespace attn_cuda;

constexpr int kWarps = 4;  // 64 rows per block: keeps the integer logits of npos_max <= 192 in smem
constexpr int kThreads = kWarps * 32;
constexpr int kBM = 16 * kWarps;
constexpr int kMaxSmemNpos = 192;

enum CopeMode : int { kFull = 0, kSplitPartial = 1, kGateTotals = 2 };

// Floats between consecutive rows of the integer logits: odd, so the gathers of one warp instruction
// (8 rows at nearby positions) fall in different banks (an even stride such as 64 put rows with equal
// positions on one bank).
__host__ __device__ inline int l_stride(int npos) { return npos | 1; }

// The gate sigmoid(s) on the SFU: ex2.approx and an IEEE reciprocal (a few ulp; expf and the IEEE
// division of cope.h's formula take ~20 instructions). Large |s| gives exactly 0 or 1, NaN stays NaN.
__device__ __forceinline__ float gate_fast(float s) { return __frcp_rn(1.f + __expf(-s)); }

struct CopeArgs {
  const void* q;  // (T_q, n_heads, head_dim)
  const void* k;  // (T_k, n_kv_heads, head_dim)
  const void* v;
  int64_t q_st, q_sh, k_st, k_sh, v_st, v_sh;
  RowMap rm;
  float scale;   // gate / logit scale
  float zscale;  // multiplies the integer logits: 1 (paper) or scale (authors' code)
  const void* pe;       // (npos_max, head_dim) or (n_heads, npos_max, head_dim)
  int64_t pe_stride_h;  // 0 when shared by the heads
  int npos;
  bool l_in_smem;
  float* lws;  // (n_kv_heads, n_mtiles * kBM, l_stride(npos)) when !l_in_smem
  int tiles_per_split, n_splits;
  float* ws_tot;  // (n_splits, T_q, n_heads) gate totals
  OutArgs oa;
};

template <int kHeadDim>
size_t cope_smem_bytes(int npos, bool l_in_smem) {
  return size_t(kBM + 4 * kBN) * Layout<kHeadDim>::kStride * 2 + (l_in_smem ? size_t(kBM) * l_stride(npos) * 4 : 0);
}

template <typename T, int kHeadDim, int kMode>
__global__ void __launch_bounds__(kThreads) cope_attention_kernel(const CopeArgs a) {
  kernel_prologue();
  using Lay = Layout<kHeadDim>;
  constexpr int S = Lay::kStride;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* qs = reinterpret_cast<T*>(smem_raw);  // (kBM, S)
  T* ks = qs + kBM * S;                    // (2, kBN, S)
  T* vs = ks + 2 * kBN * S;                // (2, kBN, S)
  float* lsm = reinterpret_cast<float*>(vs + 2 * kBN * S);  // (kBM, l_stride(npos)) when l_in_smem

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int mt = gridDim.x - 1 - blockIdx.x;
  const int kvh = blockIdx.y;
  const RowMap rm = a.rm;
  const int npos = a.npos, ldl = l_stride(npos);
  const float top = float(npos - 1);
  const int64_t m0 = int64_t(mt) * kBM;
  const int i_hi = rm.pos(m0 + kBM - 1);
  const int n_kt = i_hi / kBN + 1;
  int kt_begin = 0, kt_end = n_kt;
  if (kMode != kFull) {
    kt_begin = blockIdx.z * a.tiles_per_split;
    kt_end = min(n_kt, kt_begin + a.tiles_per_split);
  }
  const int64_t wr0 = m0 + warp * 16;
  const bool warp_has_rows = wr0 < rm.rows;
  const int wi_lo = rm.pos(wr0), wi_hi = rm.pos(wr0 + 15);
  const int row_i[2] = {rm.pos(wr0 + (lane >> 2)), rm.pos(wr0 + (lane >> 2) + 8)};
  const T* q = static_cast<const T*>(a.q);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);

  load_q_async<T, kHeadDim, kBM, kThreads>(qs, q, a.q_st, a.q_sh, rm, m0, kvh);
  cp_async_commit();

  // --- integer position logits L[r][p] = zscale * <q_r, e_head(r)[p]> -------------------------------------
  // In a global workspace, the splits of one query tile write the same values to the same place; each
  // block reads only after writing them itself, so it reads either its own or an identical value.
  float* lbase = a.l_in_smem ? lsm : a.lws + (int64_t(kvh) * gridDim.x + mt) * kBM * ldl;
  const T* pe = static_cast<const T*>(a.pe);
  if (kMode != kGateTotals) {
    if (a.pe_stride_h == 0 || rm.n_rep == 1) {
      // One table for all rows of the block: tensor-core tiles of 64 positions, as Q K^T.
      const T* pe_head = pe + (a.pe_stride_h == 0 ? 0 : int64_t(kvh) * a.pe_stride_h);
      for (int p0 = 0; p0 < npos; p0 += kBN) {
        load_kv_async<T, kHeadDim, kThreads>(ks, pe_head, kHeadDim, 0, 0, p0, npos);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
        float sl[8][4];
        qk_tile<T, kHeadDim>(qs, ks, warp, lane, sl);
#pragma unroll
        for (int nb = 0; nb < 8; ++nb)
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            const int p = p0 + nb * 8 + (lane & 3) * 2 + (c & 1);
            const int r = warp * 16 + (lane >> 2) + (c >> 1) * 8;
            if (p < npos) lbase[int64_t(r) * ldl + p] = sl[nb][c] * a.zscale;
          }
        __syncthreads();
      }
    } else {
      // Per-head tables under GQA: rows of one block use different tables; plain dot products.
      cp_async_wait<0>();
      __syncthreads();
      for (int idx = threadIdx.x; idx < kBM * npos; idx += kThreads) {
        const int r = idx / npos, p = idx % npos;
        int64_t R = m0 + r;
        if (R >= rm.rows) R = rm.rows - 1;
        const int64_t head = int64_t(kvh) * rm.n_rep + R % rm.n_rep;
        const T* e = pe + head * a.pe_stride_h + int64_t(p) * kHeadDim;
        const T* qr = qs + r * S;
        float acc = 0.f;
        for (int d = 0; d < kHeadDim; ++d) acc += ld_float<T>(qr[d].bits) * ld_float<T>(e[d].bits);
        lbase[int64_t(r) * ldl + p] = acc * a.zscale;
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();

  // --- running gate sums ------------------------------------------------------------------------------
  float carry[2] = {0.f, 0.f};
  if (kMode == kSplitPartial) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t R = wr0 + (lane >> 2) + 8 * h;
      if (R < rm.rows) {
        const int64_t t = R / rm.n_rep, head = int64_t(kvh) * rm.n_rep + R % rm.n_rep;
        for (int s = blockIdx.z + 1; s < a.n_splits; ++s)
          carry[h] += a.ws_tot[(int64_t(s) * rm.T_q + t) * a.oa.n_heads + head];
      } else {
        carry[h] = INFINITY;  // rows past the end never hold back the saturated path
      }
    }
  }
  const float* lrow[2] = {lbase + int64_t(warp * 16 + (lane >> 2)) * ldl,
                          lbase + int64_t(warp * 16 + (lane >> 2) + 8) * ldl};
  float ztop[2] = {0.f, 0.f};
  if (kMode != kGateTotals) {
    ztop[0] = lrow[0][npos - 1];
    ztop[1] = lrow[1][npos - 1];
  }
  bool saturated = __all_sync(0xffffffffu, carry[0] >= top && carry[1] >= top);

  float o[kHeadDim / 8][4];
#pragma unroll
  for (int db = 0; db < kHeadDim / 8; ++db) o[db][0] = o[db][1] = o[db][2] = o[db][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const float s2 = a.scale * kLog2e;

  // --- key tiles, backwards from the diagonal ------------------------------------------------------------
  if (kt_begin < kt_end) {
    load_kv_async<T, kHeadDim, kThreads>(ks, k, a.k_st, a.k_sh, kvh, (kt_end - 1) * kBN, rm.T_k);
    if (kMode != kGateTotals) load_kv_async<T, kHeadDim, kThreads>(vs, v, a.v_st, a.v_sh, kvh, (kt_end - 1) * kBN, rm.T_k);
    cp_async_commit();
  }
  for (int kt = kt_end - 1; kt >= kt_begin; --kt) {
    const int buf = (kt_end - 1 - kt) & 1;
    cp_async_wait<0>();
    __syncthreads();
    if (kt - 1 >= kt_begin) {
      load_kv_async<T, kHeadDim, kThreads>(ks + (buf ^ 1) * kBN * S, k, a.k_st, a.k_sh, kvh, (kt - 1) * kBN, rm.T_k);
      if (kMode != kGateTotals)
        load_kv_async<T, kHeadDim, kThreads>(vs + (buf ^ 1) * kBN * S, v, a.v_st, a.v_sh, kvh, (kt - 1) * kBN, rm.T_k);
      cp_async_commit();
    }
    const int j0 = kt * kBN, j1 = j0 + kBN - 1;
    const bool active = warp_has_rows && j0 <= wi_hi && !(kMode == kGateTotals && saturated);
    if (active) {
      float x[8][4];
      qk_tile<T, kHeadDim>(qs, ks + buf * kBN * S, warp, lane, x);
      const bool need_mask = j1 > wi_lo;
      if (!saturated) {
        float g[8][4];
#pragma unroll
        for (int nb = 0; nb < 8; ++nb)
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            const int j = j0 + nb * 8 + (lane & 3) * 2 + (c & 1);
            const bool masked = need_mask && j > row_i[c >> 1];
            const float sv = x[nb][c] * a.scale;
            g[nb][c] = masked ? 0.f : gate_fast(sv);
            x[nb][c] = masked ? -INFINITY : sv;
          }
        const int qd = lane & 3;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float run = carry[h];
#pragma unroll
          for (int nb = 7; nb >= 0; --nb) {
            // Inclusive suffix sum over the quad's lanes (columns 2*qd, 2*qd+1 of this 8-column block).
            const float ps = g[nb][2 * h] + g[nb][2 * h + 1];
            float sfx = ps;
            float t = __shfl_down_sync(0xffffffffu, sfx, 1);
            if (qd < 3) sfx += t;
            t = __shfl_down_sync(0xffffffffu, sfx, 2);
            if (qd < 2) sfx += t;
            const float block_total = __shfl_sync(0xffffffffu, sfx, lane & ~3);
            const float p1 = run + (sfx - ps) + g[nb][2 * h + 1];
            const float p0 = p1 + g[nb][2 * h];
            run += block_total;
            if (kMode != kGateTotals) {
              x[nb][2 * h] = (x[nb][2 * h] + cope_interp(cope_clamp(p0, npos), lrow[h])) * kLog2e;
              x[nb][2 * h + 1] = (x[nb][2 * h + 1] + cope_interp(cope_clamp(p1, npos), lrow[h])) * kLog2e;
            }
          }
          carry[h] = run;
        }
        saturated = __all_sync(0xffffffffu, carry[0] >= top && carry[1] >= top);
      } else {
#pragma unroll
        for (int nb = 0; nb < 8; ++nb)
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            const int j = j0 + nb * 8 + (lane & 3) * 2 + (c & 1);
            x[nb][c] = (need_mask && j > row_i[c >> 1]) ? -INFINITY : x[nb][c] * s2 + ztop[c >> 1] * kLog2e;
          }
      }
      if (kMode != kGateTotals) softmax_pv<T, kHeadDim>(x, m, l, o, vs + buf * kBN * S, lane);
    }
    if (kMode == kGateTotals) {
      // Stop once every warp's rows are saturated: later (earlier-position) keys cannot matter.
      if (__syncthreads_and(saturated || !warp_has_rows)) break;
    }
  }
  cp_async_wait<0>();

  if (kMode == kGateTotals) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t R = wr0 + (lane >> 2) + 8 * h;
      if (R < rm.rows && (lane & 3) == 0) {
        const int64_t t = R / rm.n_rep, head = int64_t(kvh) * rm.n_rep + R % rm.n_rep;
        a.ws_tot[(int64_t(blockIdx.z) * rm.T_q + t) * a.oa.n_heads + head] = carry[h];
      }
    }
    return;
  }
  store_rows<T, kHeadDim>(a.oa, rm, m0, warp, lane, kvh, o, m, l, kMode == kSplitPartial, blockIdx.z);
}

template <typename T, int kHeadDim, int kMode>
void launch_cope(const CopeArgs& a, int64_t n_mtiles, int n_kv_heads, int n_splits, cudaStream_t stream) {
  auto kernel = cope_attention_kernel<T, kHeadDim, kMode>;
  const size_t smem = cope_smem_bytes<kHeadDim>(a.npos, a.l_in_smem);
  SELFEXT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  SELFEXT_CHECK(n_mtiles <= INT_MAX, ArgumentError, "cope_attention: too many query rows");
  launch_kernel(kernel, dim3(unsigned(n_mtiles), unsigned(n_kv_heads), unsigned(n_splits)), dim3(kThreads), smem, stream, a);
}

struct CopePlan {
  int64_t n_mtiles = 0;
  SplitPlan split;
  bool l_in_smem = true;
  size_t l_bytes = 0, tot_bytes = 0, o_bytes = 0, ml_bytes = 0;
  size_t total() const { return l_bytes + tot_bytes + o_bytes + ml_bytes; }
};

// Workspace regions start on 256-byte boundaries (the partial accumulators are stored as float2).
inline size_t round_up_256(size_t n) { return (n + 255) / 256 * 256; }

CopePlan plan_cope(const AttentionParams& p) {
  CopePlan pl;
  const int n_rep = p.n_heads / p.n_kv_heads;
  const int64_t rows = p.T_q * n_rep;
  pl.n_mtiles = (rows + kBM - 1) / kBM;
  pl.l_in_smem = p.npos_max <= kMaxSmemNpos;
  // A causal prefill whose blocks all fit in one wave takes as long as its longest block (the last query
  // tile walks every key tile). Splitting the key range in 4 there (gate totals, partial states, merge)
  // was measured twice as slow (H200, 2026-12-03: T = 1k, H = 16, D = 64: 117 against 55 us on the GPU
  // clock), so only calls that cannot fill the GPU split (plan_splits).
  pl.split = plan_splits(pl.n_mtiles * p.n_kv_heads, (p.T_k + kBN - 1) / kBN, multiprocessor_count());
  if (!pl.l_in_smem) pl.l_bytes = round_up_256(size_t(p.n_kv_heads) * pl.n_mtiles * kBM * l_stride(p.npos_max) * sizeof(float));
  if (pl.split.n_splits > 1) {
    const size_t rows_all = size_t(pl.split.n_splits) * p.T_q * p.n_heads;
    pl.tot_bytes = round_up_256(rows_all * sizeof(float));
    pl.o_bytes = round_up_256(rows_all * p.head_dim * sizeof(float));
    pl.ml_bytes = round_up_256(rows_all * 2 * sizeof(float));
  }
  return pl;
}

template <typename T, int kHeadDim>
void run_cope(const AttentionParams& p) {
  cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  const CopePlan pl = plan_cope(p);
  CopeArgs a{};
  a.q = p.q; a.k = p.k; a.v = p.v;
  a.q_st = p.q_stride_t; a.q_sh = p.q_stride_h;
  a.k_st = p.k_stride_t; a.k_sh = p.k_stride_h;
  a.v_st = p.v_stride_t; a.v_sh = p.v_stride_h;
  const int n_rep = p.n_heads / p.n_kv_heads;
  a.rm = RowMap{p.T_q * n_rep, n_rep, int(p.T_q), int(p.T_k)};
  a.scale = p.scale;
  a.zscale = p.scale_pos_logits ? p.scale : 1.f;
  a.pe = p.pos_emb;
  a.pe_stride_h = p.pe_stride_h;
  a.npos = p.npos_max;
  a.l_in_smem = pl.l_in_smem;
  a.n_splits = pl.split.n_splits;
  a.tiles_per_split = pl.split.tiles_per_split;
  a.oa = OutArgs{p.out, p.out_stride_t, p.out_stride_h, nullptr, nullptr, p.n_heads};
  DeviceScratch ws(pl.total(), stream);
  a.lws = pl.l_bytes ? ws.as<float>() : nullptr;
  if (pl.split.n_splits == 1) {
    launch_cope<T, kHeadDim, kFull>(a, pl.n_mtiles, p.n_kv_heads, 1, stream);
    return;
  }
  a.ws_tot = ws.as<float>(pl.l_bytes);
  a.oa.ws_o = ws.as<float>(pl.l_bytes + pl.tot_bytes);
  a.oa.ws_ml = ws.as<float>(pl.l_bytes + pl.tot_bytes + pl.o_bytes);
  launch_cope<T, kHeadDim, kGateTotals>(a, pl.n_mtiles, p.n_kv_heads, pl.split.n_splits, stream);
  launch_cope<T, kHeadDim, kSplitPartial>(a, pl.n_mtiles, p.n_kv_heads, pl.split.n_splits, stream);
  launch_merge<T>(a.oa.ws_o, a.oa.ws_ml, pl.split.n_splits, p.T_q, p.n_heads, kHeadDim, p.out, p.out_stride_t,
                  p.out_stride_h, stream);
}

}  // namespace

void cope_attention_cuda(const AttentionParams& p) {
  SELFEXT_CHECK(p.q_dtype == p.kv_dtype && p.q_dtype == p.out_dtype, ArrayTypeError,
                "cope_attention: q, k, v, pos_emb and out must share one dtype");
  SELFEXT_CHECK(p.q_dtype == DType::kFloat16 || p.q_dtype == DType::kBFloat16, ArrayTypeError,
                "cope_attention on CUDA takes float16 or bfloat16, got ", dtype_name(p.q_dtype));
  SELFEXT_CHECK(p.T_q >= 0 && p.T_q <= p.T_k, ArgumentError, "cope_attention: T_q (", p.T_q,
                ") must be in [0, T_k = ", p.T_k, "]");
  SELFEXT_CHECK(p.T_k < (int64_t(1) << 30), ArgumentError, "cope_attention: T_k = ", p.T_k, " exceeds 2^30");
  SELFEXT_CHECK(p.n_kv_heads >= 1 && p.n_heads % p.n_kv_heads == 0, ArgumentError, "cope_attention: n_heads (",
                p.n_heads, ") must be a multiple of n_kv_heads (", p.n_kv_heads, ")");
  SELFEXT_CHECK(p.npos_max >= 2, ArgumentError, "npos_max must be >= 2, got ", p.npos_max);
  SELFEXT_CHECK(p.pos_emb != nullptr, ArgumentError, "cope_attention: pos_emb is required");
  SELFEXT_CHECK(p.T_k_dev == nullptr, ArgumentError, "cope_attention takes T_k by value (T_k_dev is SelfExtend's)");
  check_rows_aligned_16(p.q, p.q_stride_t, p.q_stride_h, "cope_attention", "q");
  check_rows_aligned_16(p.k, p.k_stride_t, p.k_stride_h, "cope_attention", "k");
  check_rows_aligned_16(p.v, p.v_stride_t, p.v_stride_h, "cope_attention", "v");
  check_rows_aligned_16(p.out, p.out_stride_t, p.out_stride_h, "cope_attention", "out");
  check_rows_aligned_16(p.pos_emb, p.pe_stride_h, 0, "cope_attention", "pos_emb");
  SELFEXT_CHECK(p.rope_dim == 0, ArgumentError,
                "cope_attention on CUDA takes k as given (rope_dim must be 0; rotate q and k beforehand)");
  if (p.T_q == 0) return;
  SELFEXT_DISPATCH_HEAD_DIM(p.head_dim, kD, [&] {
    if (p.q_dtype == DType::kFloat16)
      run_cope<f16, kD>(p);
    else
      run_cope<bf16, kD>(p);
  });
}

int64_t cope_attention_cuda_workspace_bytes(const AttentionParams& p) {
  if (p.T_q == 0 || p.n_kv_heads < 1) return 0;
  return int64_t(plan_cope(p).total());
}

}  // namespace selfext
