// Device-only building blocks of the flash-style attention kernels (SelfExtend and CoPE): async tile
// copies, ldmatrix, tensor-core mma.sync m16n8k16 (fp16/bf16 in, fp32 accumulate), RoPE applied to a
// tile in shared memory from the (pos, pair, 2) table of rope.h, one online-softmax step, P·V, and the
// split-K merge. Both kernels are "one warp owns 16 query rows": the register layouts below are the
// PTX ISA's m16n8k16 fragment layouts (accumulator c0,c1 at row lane/4, cols 2*(lane%4)+{0,1};
// c2,c3 eight rows lower).
//
// Rows of a block are packed (query position, head of the GQA group): packed row R of kv head kvh is
// query t = R / n_rep, head kvh * n_rep + R % n_rep. All heads of a group then share the block's K/V
// tiles (read and rotated once per block, not once per head), and a decode step (T_q = 1) still fills
// n_rep rows.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "attention/rope.h"
#include "attention/softmax.h"
#include "core/cuda_launch.cuh"
#include "core/split_merge.cuh"
#include "core/half.h"

namespace selfext {
namespace attn_cuda {

constexpr int kBN = 64;                        // keys per tile
constexpr float kLog2e = 1.4426950408889634f;  // softmax runs in base 2 (2^x is one MUFU op: exp2_ftz)
constexpr float kLn2 = 0.6931471805599453f;

// Shared-memory rows are padded by 16 bytes: 8 consecutive rows of any head dim (64/80/96/128) then
// start in 8 different 16-byte bank groups, so ldmatrix is conflict-free without a swizzle (a swizzle
// needs a power-of-two number of 16-byte chunks per row; 80 and 96 have 10 and 12).
template <int kHeadDim>
struct Layout {
  static constexpr int kStride = kHeadDim + 8;  // elements per smem row
  static constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per row
  static_assert(kHeadDim % 16 == 0, "head_dim must be a multiple of 16 for m16n8k16");
};

// --- element conversion (hardware intrinsics; half.h's software versions are the host reference) ----
template <typename T> __device__ __forceinline__ float ld_float(uint16_t bits);
template <> __device__ __forceinline__ float ld_float<f16>(uint16_t b) { return __half2float(__ushort_as_half(b)); }
template <> __device__ __forceinline__ float ld_float<bf16>(uint16_t b) { return __bfloat162float(__ushort_as_bfloat16(b)); }
template <typename T> __device__ __forceinline__ uint16_t st_bits(float x);
template <> __device__ __forceinline__ uint16_t st_bits<f16>(float x) { return __half_as_ushort(__float2half_rn(x)); }
template <> __device__ __forceinline__ uint16_t st_bits<bf16>(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }

// Two floats -> one 32-bit register of two halves, the low half first (the element with the lower column).
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<f16>(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}
template <> __device__ __forceinline__ uint32_t pack2<bf16>(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

// --- PTX wrappers --------------------------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// 16-byte global -> shared copy; when !pred the 16 bytes are zero-filled (src-size 0), so tiles past
// the end of K/V hold zeros, never stale NaNs that 0 * NaN would carry into P·V.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
               "r"(pred ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

template <typename T> __device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1);
template <> __device__ __forceinline__ void mma16816<f16>(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma16816<bf16>(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// --- packed rows ---------------------------------------------------------------------------------------
struct RowMap {
  int64_t rows;  // T_q * n_rep packed rows per kv head
  int n_rep;
  int T_q, T_k;
  // Query position of packed row R; rows past the end take the last valid row's position (computed,
  // never stored).
  __device__ __forceinline__ int pos(int64_t R) const {
    if (R >= rows) R = rows - 1;
    return T_k - T_q + int(R / n_rep);
  }
};

// --- tile loads ----------------------------------------------------------------------------------------
// Q rows [m0, m0 + kRows) of kv head kvh (packed) into smem rows of stride Layout::kStride.
template <typename T, int kHeadDim, int kRows, int kThreads>
__device__ __forceinline__ void load_q_async(T* smem, const T* q, int64_t stride_t, int64_t stride_h,
                                             const RowMap& rm, int64_t m0, int kvh) {
  using L = Layout<kHeadDim>;
  for (int idx = threadIdx.x; idx < kRows * L::kChunks; idx += kThreads) {
    const int r = idx / L::kChunks, c = idx % L::kChunks;
    const int64_t R = m0 + r;
    const bool ok = R < rm.rows;
    const int64_t Rc = ok ? R : 0;
    const T* src = q + (Rc / rm.n_rep) * stride_t + (int64_t(kvh) * rm.n_rep + Rc % rm.n_rep) * stride_h + c * 8;
    cp_async16(smem + r * L::kStride + c * 8, src, ok);
  }
}

// kRows (kBN) rows of K or V starting at key j0 (rows >= j_end zero-filled). The trip count is a
// compile-time constant, so the copies unroll with their shared-memory offsets as immediates; with the
// head dim's chunks dividing the thread count (64 and 128) each thread keeps one chunk column and steps
// its source by a fixed number of rows. (A run-time loop from threadIdx.x cost ~20 instructions per
// 16-byte copy, SASS sm_90a: ~300 per 64-key tile and thread at D = 128, a third of the softmax's.)
template <typename T, int kHeadDim, int kThreads, int kRows = kBN>
__device__ __forceinline__ void load_kv_async(T* smem, const T* x, int64_t stride_t, int64_t stride_h, int kvh,
                                              int j0, int j_end) {
  using L = Layout<kHeadDim>;
  constexpr int kTotal = kRows * L::kChunks;
  constexpr int kIters = (kTotal + kThreads - 1) / kThreads;
  const T* head = x + int64_t(kvh) * stride_h;
  if constexpr (kThreads % L::kChunks == 0 && kTotal % kThreads == 0) {
    constexpr int kRowStep = kThreads / L::kChunks;
    const int c = threadIdx.x % L::kChunks, r0 = threadIdx.x / L::kChunks;
    const int64_t off0 = int64_t(j0 + r0) * stride_t + c * 8, step = int64_t(kRowStep) * stride_t;
    T* dst = smem + r0 * L::kStride + c * 8;
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const bool ok = j0 + r0 + it * kRowStep < j_end;
      cp_async16(dst + it * kRowStep * L::kStride, head + (ok ? off0 + it * step : 0), ok);
    }
  } else {
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int idx = int(threadIdx.x) + it * kThreads;
      if (kTotal % kThreads != 0 && idx >= kTotal) break;
      const int r = idx / L::kChunks, c = idx % L::kChunks;
      const int j = j0 + r;
      const bool ok = j < j_end;
      cp_async16(smem + r * L::kStride + c * 8, head + int64_t(ok ? j : 0) * stride_t + c * 8, ok);
    }
  }
}

// --- RoPE on a tile --------------------------------------------------------------------------------------
struct RopeArgs {
  const float* table;  // (n_pos, rope_dim/2, 2) mscale * (cos, sin), device
  int n_pos;
  int rope_dim;
  RopeStyle style;
};

// dst[r] = RoPE(src[r], pos_of(r)) for rows [0, kRows), with the pair convention and rotation of rope.h.
// Each thread rotates 16-byte chunks (8 elements). "norm" with an even pair count (every GGUF llama
// head) takes the fast path: a chunk is 4 whole pairs whose (cos, sin) are 32 contiguous table bytes,
// and each thread issues the table loads of kBatch chunks before using any, so the table's L2 latency
// is paid once per batch, not once per element (H100, 2026-11-23: with one dependent table load per
// element, SE prefill ran at ~55 TFLOP/s, a quarter of the CoPE kernel's rate on the same tiles). "neox" or odd pair counts take the
// general path; a "neox" partner is read from the source row, so dst may not alias src.
// rope_rows is the same with row r read from src_row(r) (shared or global memory: the SelfExtend prefill
// rotates Q straight from global memory into its tile).
// rope_rows_to writes chunk c of row r to dst_chunk(r, c) (a uint4*: the wgmma kernel's swizzled tiles).
template <typename T, int kHeadDim, int kThreads, int kRows, typename SrcRow, typename DstChunk, typename PosFn>
__device__ __forceinline__ void rope_rows_to(SrcRow src_row, DstChunk dst_chunk, const RopeArgs& ra, PosFn pos_of) {
  using L = Layout<kHeadDim>;
  constexpr int kTotal = kRows * L::kChunks;
  constexpr int kPerThread = (kTotal + kThreads - 1) / kThreads;
  constexpr int kBatch = kPerThread < 4 ? kPerThread : 4;
  constexpr int kIters = (kTotal + kThreads * kBatch - 1) / (kThreads * kBatch);
  const int n_pairs = ra.rope_dim / 2;
  if (ra.style == RopeStyle::kNorm && n_pairs % 2 == 0) {
#pragma unroll 1
    for (int it = 0; it < kIters; ++it) {
      uint4 raw[kBatch];
      float4 cs[kBatch][2];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {  // issue every load of the batch first
        const int idx = threadIdx.x + (it * kBatch + b) * kThreads;
        cs[b][0] = cs[b][1] = make_float4(1.f, 0.f, 1.f, 0.f);
        if (idx < kTotal) {
          const int r = idx / L::kChunks, c = idx % L::kChunks;
          raw[b] = *reinterpret_cast<const uint4*>(src_row(r) + c * 8);
          if (c * 4 < n_pairs) {
            int pos = pos_of(r);
            pos = pos < ra.n_pos ? pos : ra.n_pos - 1;  // only rows that never use this branch clamp
            const float4* t = reinterpret_cast<const float4*>(ra.table + (int64_t(pos) * n_pairs + c * 4) * 2);
            cs[b][0] = __ldg(t);
            if (c * 4 + 2 < n_pairs) cs[b][1] = __ldg(t + 1);
          }
        }
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int idx = threadIdx.x + (it * kBatch + b) * kThreads;
        if (idx >= kTotal) continue;
        const int r = idx / L::kChunks, c = idx % L::kChunks;
        uint16_t* x = reinterpret_cast<uint16_t*>(&raw[b]);
        const float cc[4] = {cs[b][0].x, cs[b][0].z, cs[b][1].x, cs[b][1].z};
        const float ss[4] = {cs[b][0].y, cs[b][0].w, cs[b][1].y, cs[b][1].w};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (c * 4 + e >= n_pairs) break;
          float xa = ld_float<T>(x[2 * e]), xb = ld_float<T>(x[2 * e + 1]);
          rope_rotate(xa, xb, cc[e], ss[e]);
          x[2 * e] = st_bits<T>(xa);
          x[2 * e + 1] = st_bits<T>(xb);
        }
        *dst_chunk(r, c) = raw[b];
      }
    }
    return;
  }
  for (int idx = threadIdx.x; idx < kTotal; idx += kThreads) {
    const int r = idx / L::kChunks, c = idx % L::kChunks;
    const T* srow = src_row(r);
    const uint4 raw = *reinterpret_cast<const uint4*>(srow + c * 8);
    const uint16_t* x = reinterpret_cast<const uint16_t*>(&raw);
    uint4 outv;
    uint16_t* o = reinterpret_cast<uint16_t*>(&outv);
    const int d0 = c * 8;
    if (d0 >= ra.rope_dim) {
      outv = raw;
    } else {
      int pos = pos_of(r);
      pos = pos < ra.n_pos ? pos : ra.n_pos - 1;
      const float2* trow = reinterpret_cast<const float2*>(ra.table) + int64_t(pos) * n_pairs;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const int d = d0 + e;
        if (d >= ra.rope_dim) {
          o[e] = x[e];
          continue;
        }
        int a, b, p;
        if (ra.style == RopeStyle::kNorm) {
          p = d >> 1;
        } else {
          p = d < n_pairs ? d : d - n_pairs;
        }
        rope_pair(p, ra.rope_dim, ra.style, a, b);
        const float2 cs = __ldg(trow + p);
        float xa = a == d ? ld_float<T>(x[e]) : ld_float<T>(a - d0 >= 0 && a - d0 < 8 ? x[a - d0] : srow[a].bits);
        float xb = b == d ? ld_float<T>(x[e]) : ld_float<T>(b - d0 >= 0 && b - d0 < 8 ? x[b - d0] : srow[b].bits);
        rope_rotate(xa, xb, cs.x, cs.y);
        o[e] = st_bits<T>(a == d ? xa : xb);
      }
    }
    *dst_chunk(r, c) = outv;
  }
}

template <typename T, int kHeadDim, int kThreads, int kRows, typename SrcRow, typename PosFn>
__device__ __forceinline__ void rope_rows(SrcRow src_row, T* dst, const RopeArgs& ra, PosFn pos_of) {
  rope_rows_to<T, kHeadDim, kThreads, kRows>(
      src_row, [dst](int r, int c) { return reinterpret_cast<uint4*>(dst + r * Layout<kHeadDim>::kStride + c * 8); },
      ra, pos_of);
}

template <typename T, int kHeadDim, int kThreads, int kRows, typename PosFn>
__device__ __forceinline__ void rope_tile(const T* src, T* dst, const RopeArgs& ra, PosFn pos_of) {
  rope_rows<T, kHeadDim, kThreads, kRows>([src](int r) { return src + r * Layout<kHeadDim>::kStride; }, dst, ra, pos_of);
}

// --- S = Q K^T for one warp's 16 rows and a key tile (kTileN keys: 64, or 32) ---------------------------
template <typename T, int kHeadDim, int kTileN = kBN>
__device__ __forceinline__ void qk_tile(const T* qs, const T* ks, int warp, int lane, float s[kTileN / 8][4]) {
  using L = Layout<kHeadDim>;
  static_assert(kTileN % 16 == 0, "key tiles are whole 16-key ldmatrix groups");
#pragma unroll
  for (int nb = 0; nb < kTileN / 8; ++nb) s[nb][0] = s[nb][1] = s[nb][2] = s[nb][3] = 0.f;
#pragma unroll
  for (int kk = 0; kk < kHeadDim / 16; ++kk) {
    uint32_t a[4];
    ldmatrix_x4(a, qs + (warp * 16 + (lane & 15)) * L::kStride + kk * 16 + (lane >> 4) * 8);
#pragma unroll
    for (int np = 0; np < kTileN / 16; ++np) {
      uint32_t b[4];
      ldmatrix_x4(b, ks + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * L::kStride + kk * 16 + ((lane >> 3) & 1) * 8);
      mma16816<T>(s[2 * np], a, b[0], b[1]);
      mma16816<T>(s[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// --- online softmax step + O += P V -------------------------------------------------------------------------
// 2^x on the special-function unit with subnormal results flushed to zero (ex2.approx.ftz.f32). Plain
// exp2f (no --use_fast_math) wraps the same instruction in a range test and two multiplies so that
// results below 2^-126 stay subnormal: 3 of the ~17 instructions a softmax element costs (SASS, sm_90a).
// A softmax weight below 2^-126 of its row's largest term (which is 1) is below float32's resolution of
// their sum either way. 2^-inf = +0, as the masks need.
__device__ __forceinline__ float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// x: logits, in base-2 units once multiplied by scale2 (masked = -inf; callers that scaled x already
// pass 1, which keeps the arithmetic exact). m: running max (base 2), l: this lane's partial running sum
// (summed over the quad at the end). Rows: h = 0 is lane/4, h = 1 is lane/4 + 8.
// The online-softmax step of one 16-row tile: x becomes P (unnormalized, base 2), m and l
// move on, o is rescaled. The scale rides in the exponent's FMA, not in a multiply per logit. When no row
// of the warp raised its max, alpha is 1 for every row and the rescale of o (kHeadDim / 2 multiplies per
// lane) is skipped, which is exact; past the first tiles of a long row that is the common case.
// Warp-collective (a vote): every caller runs it on whole warps, as the multiplies that follow need.
// softmax_probs is the step without the rescale of o: it returns alpha per row and whether any row of
// the warp raised its max (then o must be multiplied by alpha, rescale_o, before the next P V is added;
// the wgmma kernel does that once the previous tile's P V, in flight meanwhile, has completed).
template <int kTileN = kBN>
__device__ __forceinline__ bool softmax_probs(float x[kTileN / 8][4], float m[2], float l[2], float alpha[2],
                                              float scale2 = 1.f) {
  bool raised = false;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float mx = -INFINITY;
#pragma unroll
    for (int nb = 0; nb < kTileN / 8; ++nb) mx = fmaxf(mx, fmaxf(x[nb][2 * h], x[nb][2 * h + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m[h], mx * scale2);
    const float base = m_new == -INFINITY ? 0.f : m_new;  // a row with nothing unmasked yet stays empty
    alpha[h] = exp2_ftz(m[h] - base);
    raised |= m_new != m[h];
    m[h] = m_new;
    float sum = 0.f;
#pragma unroll
    for (int nb = 0; nb < kTileN / 8; ++nb) {
      x[nb][2 * h] = exp2_ftz(fmaf(x[nb][2 * h], scale2, -base));
      x[nb][2 * h + 1] = exp2_ftz(fmaf(x[nb][2 * h + 1], scale2, -base));
      sum += x[nb][2 * h] + x[nb][2 * h + 1];
    }
    l[h] = l[h] * alpha[h] + sum;
  }
  return __any_sync(0xffffffffu, raised);
}

template <int kHeadDim>
__device__ __forceinline__ void rescale_o(float o[kHeadDim / 8][4], const float alpha[2]) {
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int db = 0; db < kHeadDim / 8; ++db) {
      o[db][2 * h] *= alpha[h];
      o[db][2 * h + 1] *= alpha[h];
    }
}

template <int kHeadDim, int kTileN = kBN>
__device__ __forceinline__ void softmax_step(float x[kTileN / 8][4], float m[2], float l[2], float o[kHeadDim / 8][4],
                                             float scale2 = 1.f) {
  float alpha[2];
  if (softmax_probs<kTileN>(x, m, l, alpha, scale2)) rescale_o<kHeadDim>(o, alpha);
}

template <typename T, int kHeadDim>
__device__ __forceinline__ void softmax_pv(float x[8][4], float m[2], float l[2], float o[kHeadDim / 8][4],
                                           const T* vs, int lane) {
  using L = Layout<kHeadDim>;
  softmax_step<kHeadDim>(x, m, l, o);
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {  // 16 keys per step: P (accumulator layout) is the A fragment as is
    uint32_t a[4];
    a[0] = pack2<T>(x[2 * kk][0], x[2 * kk][1]);
    a[1] = pack2<T>(x[2 * kk][2], x[2 * kk][3]);
    a[2] = pack2<T>(x[2 * kk + 1][0], x[2 * kk + 1][1]);
    a[3] = pack2<T>(x[2 * kk + 1][2], x[2 * kk + 1][3]);
#pragma unroll
    for (int dp = 0; dp < kHeadDim / 16; ++dp) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, vs + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * L::kStride + dp * 16 + (lane >> 4) * 8);
      mma16816<T>(o[2 * dp], a, b[0], b[1]);
      mma16816<T>(o[2 * dp + 1], a, b[2], b[3]);
    }
  }
}

// --- kMT 16-row tiles per warp ----------------------------------------------------------------------------
// The same products for a warp that owns kMT consecutive 16-row tiles (rows vw * 16 .. of the block for
// virtual warps vw = warp * kMT + mt): every K and V fragment read from shared memory feeds kMT multiplies
// instead of one, so a tile's ldmatrix traffic per FLOP drops by kMT (with 8 warps of one tile each it
// was 2.25x the tensor cores' time for the same tile at D = 128, by count of 512-byte ldmatrix.x4 at 128
// bytes per clock against one m16n8k16 per clock).
template <typename T, int kHeadDim, int kMT, int kTileN = kBN>
__device__ __forceinline__ void qk_tiles(const T* qs, const T* ks, int warp, int lane, float s[kMT][kTileN / 8][4]) {
  using L = Layout<kHeadDim>;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int nb = 0; nb < kTileN / 8; ++nb) s[mt][nb][0] = s[mt][nb][1] = s[mt][nb][2] = s[mt][nb][3] = 0.f;
#pragma unroll
  for (int kk = 0; kk < kHeadDim / 16; ++kk) {
    uint32_t a[kMT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
      ldmatrix_x4(a[mt], qs + ((warp * kMT + mt) * 16 + (lane & 15)) * L::kStride + kk * 16 + (lane >> 4) * 8);
#pragma unroll
    for (int np = 0; np < kTileN / 16; ++np) {
      uint32_t b[4];
      ldmatrix_x4(b, ks + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * L::kStride + kk * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        mma16816<T>(s[mt][2 * np], a[mt], b[0], b[1]);
        mma16816<T>(s[mt][2 * np + 1], a[mt], b[2], b[3]);
      }
    }
  }
}

// softmax_pv for kMT tiles: each tile's softmax step, then O += P V with every V fragment shared.
template <typename T, int kHeadDim, int kMT, int kTileN = kBN>
__device__ __forceinline__ void softmax_pv_tiles(float x[kMT][kTileN / 8][4], float m[kMT][2], float l[kMT][2],
                                                 float o[kMT][kHeadDim / 8][4], const T* vs, int lane,
                                                 float scale2 = 1.f) {
  using L = Layout<kHeadDim>;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) softmax_step<kHeadDim, kTileN>(x[mt], m[mt], l[mt], o[mt], scale2);
#pragma unroll
  for (int kk = 0; kk < kTileN / 16; ++kk) {
    uint32_t a[kMT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      a[mt][0] = pack2<T>(x[mt][2 * kk][0], x[mt][2 * kk][1]);
      a[mt][1] = pack2<T>(x[mt][2 * kk][2], x[mt][2 * kk][3]);
      a[mt][2] = pack2<T>(x[mt][2 * kk + 1][0], x[mt][2 * kk + 1][1]);
      a[mt][3] = pack2<T>(x[mt][2 * kk + 1][2], x[mt][2 * kk + 1][3]);
    }
#pragma unroll
    for (int dp = 0; dp < kHeadDim / 16; ++dp) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, vs + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * L::kStride + dp * 16 + (lane >> 4) * 8);
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        mma16816<T>(o[mt][2 * dp], a[mt], b[0], b[1]);
        mma16816<T>(o[mt][2 * dp + 1], a[mt], b[2], b[3]);
      }
    }
  }
}

// --- epilogue ---------------------------------------------------------------------------------------------
struct OutArgs {
  void* out;  // (T_q, n_heads, head_dim) storage type T, when not split
  int64_t stride_t, stride_h;
  float* ws_o;   // split: (n_splits, T_q, n_heads, head_dim) unnormalized accumulators
  float* ws_ml;  // split: (n_splits, T_q, n_heads, 2) running max (natural log units) and sum
  int n_heads;
};

template <typename T, int kHeadDim>
__device__ __forceinline__ void store_rows(const OutArgs& oa, const RowMap& rm, int64_t m0, int warp, int lane,
                                           int kvh, float o[kHeadDim / 8][4], const float m[2], float l[2],
                                           bool split, int split_idx) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float lsum = l[h];
    lsum += __shfl_xor_sync(0xffffffffu, lsum, 1);
    lsum += __shfl_xor_sync(0xffffffffu, lsum, 2);
    const int64_t R = m0 + warp * 16 + (lane >> 2) + 8 * h;
    if (R >= rm.rows) continue;
    const int64_t t = R / rm.n_rep;
    const int64_t head = int64_t(kvh) * rm.n_rep + R % rm.n_rep;
    if (!split) {
      const float inv = lsum > 0.f ? 1.f / lsum : 0.f;
      T* dst = static_cast<T*>(oa.out) + t * oa.stride_t + head * oa.stride_h;
#pragma unroll
      for (int db = 0; db < kHeadDim / 8; ++db) {
        const int d = db * 8 + (lane & 3) * 2;
        *reinterpret_cast<uint32_t*>(dst + d) = pack2<T>(o[db][2 * h] * inv, o[db][2 * h + 1] * inv);
      }
    } else {
      const int64_t row = (int64_t(split_idx) * rm.T_q + t) * oa.n_heads + head;
      float* dst = oa.ws_o + row * kHeadDim;
#pragma unroll
      for (int db = 0; db < kHeadDim / 8; ++db) {
        const int d = db * 8 + (lane & 3) * 2;
        *reinterpret_cast<float2*>(dst + d) = make_float2(o[db][2 * h], o[db][2 * h + 1]);
      }
      if ((lane & 3) == 0) {
        oa.ws_ml[row * 2] = m[h] == -INFINITY ? -INFINITY : m[h] * kLn2;
        oa.ws_ml[row * 2 + 1] = lsum;
      }
    }
  }
}

// Split-K merge (flash-decoding) as its own kernel: one block per (query, head), one thread per element
// of head_dim; the formula and the loads are core/split_merge.cuh's (a serial loop over 10 splits cost
// ~6.6 us per call on an H200; all splits' loads at once, 2.7 us).
// Row `row` of the merge (one (query, head) pair), any block size; the kernel below runs one row per
// block, the decode megakernel one per virtual block.
template <typename T>
__device__ __forceinline__ void merge_splits_row(const float* ws_o, const float* ws_ml, int n_splits, int64_t n_rows,
                                                 int head_dim, int n_heads, T* out, int64_t stride_t,
                                                 int64_t stride_h, int64_t row) {
  __shared__ float w_sh[kMaxSplits];
  __shared__ float inv_sh;
  const int64_t t = row / n_heads, h = row % n_heads;
  // Up to kPre splits with one element per thread: the states are loaded before the weights are known,
  // so their L2 round trip overlaps the (max, sum) loads instead of following them (same sums, same order
  // as split_merge_sum: the same bits).
  constexpr int kPre = 16;
  const bool pre_ok = n_splits <= kPre && head_dim <= int(blockDim.x);
  float pre[kPre];
  if (pre_ok && int(threadIdx.x) < head_dim) {
#pragma unroll
    for (int s = 0; s < kPre; ++s)
      pre[s] = s < n_splits ? __ldcg(ws_o + (int64_t(s) * n_rows + row) * head_dim + threadIdx.x) : 0.f;
  }
  if (threadIdx.x < 32) {
    const float inv = split_merge_weights(ws_ml, n_splits, n_rows, row, threadIdx.x, w_sh);
    if (threadIdx.x == 0) inv_sh = inv;
  }
  __syncthreads();
  const float inv = inv_sh;
  if (pre_ok) {
    const int d = threadIdx.x;
    if (d < head_dim) {
      float acc = 0.f;
#pragma unroll
      for (int s = 0; s < kPre; ++s)
        if (s < n_splits) acc = fmaf(w_sh[s], pre[s], acc);
      out[t * stride_t + h * stride_h + d].bits = st_bits<T>(acc * inv);
    }
    return;
  }
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    const float acc = split_merge_sum(ws_o + row * head_dim + d, n_rows * head_dim, n_splits, w_sh);
    out[t * stride_t + h * stride_h + d].bits = st_bits<T>(acc * inv);
  }
}

template <typename T>
__global__ void merge_splits_kernel(const float* __restrict__ ws_o, const float* __restrict__ ws_ml, int n_splits,
                                    int64_t n_rows, int head_dim, int n_heads, T* out, int64_t stride_t,
                                    int64_t stride_h) {
  kernel_prologue();
  merge_splits_row<T>(ws_o, ws_ml, n_splits, n_rows, head_dim, n_heads, out, stride_t, stride_h, blockIdx.x);
}

}  // namespace attn_cuda
}  // namespace selfext
