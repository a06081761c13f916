// The decode products' device code shared by matmul_cuda.cu (the kernels) and model/decode_mega.cu (the
// persistent decode kernel): the formats as the kernels see them, the product arguments, the fused input
// modes and the matrix-vector block. See matmul_cuda.cu's header comment for the design and measurements.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

#include "core/half.h"
#include "quant/formats.h"
#include "quant/matmul_cuda.h"

namespace selfext {
namespace mv_cuda {

// --- the formats as the kernels see them ------------------------------------------------------------
// Every format is read in runs of kRun = 8 consecutive elements of a row. run(row, j, cols, q, dl, ml)
// gives run j's values q (codes minus offset, or the float weights) and its scale / min: w = dl q - ml.
// dequant(row, j, cols, y) writes the run's float32 weights by the CPU's formula. kHasMin: ml != 0.

constexpr bool format_has_min(QType t) {
  return t == QType::Q4_1 || t == QType::Q5_1 || t == QType::Q2_K || t == QType::Q4_K || t == QType::Q5_K;
}

template <typename Block, QType kType>
struct QuantFmt {
  static constexpr int kBlockElems = kQTypeTable[int(kType)].block_size;
  static constexpr int kRunsPerBlock = kBlockElems / kRun;
  static constexpr bool kHasMin = format_has_min(kType);
  static_assert(kBlockElems % 32 == 0, "the mma kernel's K step (32) must not straddle blocks");
  static_assert(sizeof(Block) == size_t(kQTypeTable[int(kType)].block_bytes), "block struct / table mismatch");

  __device__ static int runs(int64_t cols) { return int(cols / kRun); }
  __device__ static const Block& block(const uint8_t* row, int j) {
    return reinterpret_cast<const Block*>(row)[j / kRunsPerBlock];
  }
  static constexpr int kRunsPerScale = runs_per_scale(Block{});
  __device__ static void codes(const uint8_t* row, int j, int64_t, float (&q)[kRun]) {
    run_codes(block(row, j), j % kRunsPerBlock, q);
  }
  __device__ static void scale(const uint8_t* row, int j, float& dl, float& ml) {
    run_scale(block(row, j), j % kRunsPerBlock, &dl, &ml);
  }
  __device__ static void run(const uint8_t* row, int j, int64_t cols, float (&q)[kRun], float& dl, float& ml) {
    codes(row, j, cols, q);
    scale(row, j, dl, ml);
  }
  __device__ static void dequant(const uint8_t* row, int j, int64_t, float (&y)[kRun]) {
    dequantize_run(block(row, j), j % kRunsPerBlock, y);
  }
};

// F32 / F16 / BF16: any cols; the last run of a row may be partial (its missing elements read as 0).
// The widening is exact, so the hardware conversion gives the header's value.
template <typename T>
struct FloatFmt {
  static constexpr bool kHasMin = false;
  __device__ static int runs(int64_t cols) { return int((cols + kRun - 1) / kRun); }
  __device__ static float widen(T v);
  __device__ static void load(const uint8_t* row, int j, int64_t cols, float (&y)[kRun]) {
    const T* p = reinterpret_cast<const T*>(row) + int64_t(kRun) * j;
    if ((cols & (kRun - 1)) == 0) {
      // Every row starts at a multiple of 8 elements: 16-byte (halves) / 32-byte (float) aligned.
      if constexpr (sizeof(T) == 4) {
        const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
        y[0] = a.x; y[1] = a.y; y[2] = a.z; y[3] = a.w;
        y[4] = b.x; y[5] = b.y; y[6] = b.z; y[7] = b.w;
      } else {
        const uint4 v = *reinterpret_cast<const uint4*>(p);
        const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          y[2 * k] = widen(T{uint16_t(w[k] & 0xFFFFu)});
          y[2 * k + 1] = widen(T{uint16_t(w[k] >> 16)});
        }
      }
    } else {
      const int64_t c0 = int64_t(kRun) * j;
#pragma unroll
      for (int k = 0; k < kRun; ++k) y[k] = c0 + k < cols ? widen(p[k]) : 0.0f;
    }
  }
  static constexpr int kRunsPerScale = 4;
  __device__ static void codes(const uint8_t* row, int j, int64_t cols, float (&q)[kRun]) { load(row, j, cols, q); }
  __device__ static void scale(const uint8_t*, int, float& dl, float& ml) {
    dl = 1.0f;
    ml = 0.0f;
  }
  __device__ static void run(const uint8_t* row, int j, int64_t cols, float (&q)[kRun], float& dl, float& ml) {
    load(row, j, cols, q);
    dl = 1.0f;
    ml = 0.0f;
  }
  __device__ static void dequant(const uint8_t* row, int j, int64_t cols, float (&y)[kRun]) { load(row, j, cols, y); }
};
template <> __device__ inline float FloatFmt<float>::widen(float v) { return v; }
template <> __device__ inline float FloatFmt<f16>::widen(f16 v) { return __half2float(__ushort_as_half(v.bits)); }
template <> __device__ inline float FloatFmt<bf16>::widen(bf16 v) { return __uint_as_float(uint32_t(v.bits) << 16); }

// SELFEXT_CUDA_FORMAT_SWITCH(type, Fmt, expr): runs expr with Fmt = the kernels' view of `type`.
#define SELFEXT_CUDA_FORMAT_SWITCH(type, FMT, ...)                                           \
  switch (type) {                                                                            \
    case QType::F32: { using FMT = FloatFmt<float>; __VA_ARGS__; break; }                    \
    case QType::F16: { using FMT = FloatFmt<f16>; __VA_ARGS__; break; }                      \
    case QType::BF16: { using FMT = FloatFmt<bf16>; __VA_ARGS__; break; }                    \
    case QType::Q4_0: { using FMT = QuantFmt<block_q4_0, QType::Q4_0>; __VA_ARGS__; break; } \
    case QType::Q4_1: { using FMT = QuantFmt<block_q4_1, QType::Q4_1>; __VA_ARGS__; break; } \
    case QType::Q5_0: { using FMT = QuantFmt<block_q5_0, QType::Q5_0>; __VA_ARGS__; break; } \
    case QType::Q5_1: { using FMT = QuantFmt<block_q5_1, QType::Q5_1>; __VA_ARGS__; break; } \
    case QType::Q8_0: { using FMT = QuantFmt<block_q8_0, QType::Q8_0>; __VA_ARGS__; break; } \
    case QType::Q2_K: { using FMT = QuantFmt<block_q2_k, QType::Q2_K>; __VA_ARGS__; break; } \
    case QType::Q3_K: { using FMT = QuantFmt<block_q3_k, QType::Q3_K>; __VA_ARGS__; break; } \
    case QType::Q4_K: { using FMT = QuantFmt<block_q4_k, QType::Q4_K>; __VA_ARGS__; break; } \
    case QType::Q5_K: { using FMT = QuantFmt<block_q5_k, QType::Q5_K>; __VA_ARGS__; break; } \
    case QType::Q6_K: { using FMT = QuantFmt<block_q6_k, QType::Q6_K>; __VA_ARGS__; break; } \
    default: check_qtype_supported(int(type));                                               \
  }

// --- the arguments every kernel takes -------------------------------------------------------------

struct ProductArgs {
  const uint8_t* w;  // (rows, row_bytes) blocks
  int64_t row_bytes, rows, cols;
  const float* x;    // (n, cols), row stride ldx (elements of the input's type; see MvIn)
  int64_t ldx, n;
  float* y;          // (n, rows), row stride ldy
  int64_t ldy;
  bool accumulate;
  bool vec_x;        // x rows and ldx allow 16-byte loads of 4 consecutive values (and cols % 8 == 0)
  // Fused decode inputs (matvec only, MvIn below): RMSNorm weight and epsilon; bf16 (else f16) halves.
  const float* norm_w = nullptr;
  float eps = 0.0f;
  bool x_bf16 = false;
  bool prefetch = false;  // matvec: each block's weight rows prefetched into L2 before the PDL wait
  bool scatter = false;   // matvec, one row: stores through qkv_store (sc) instead of into y
  QkvScatter sc{};
};

// The Q/K/V product's store of output row r (QkvScatter): the model's qkv step, same float add and
// rounding (core/half.h's round to nearest even).
__device__ __forceinline__ void qkv_store(const QkvScatter& s, int64_t r, float v) {
  const int64_t e = s.row0 + r;
  const int seg = e < s.q_dim ? 0 : (e < s.q_dim + s.kv_dim ? 1 : 2);
  const int64_t local = e - (seg == 0 ? 0 : (seg == 1 ? s.q_dim : s.q_dim + s.kv_dim));
  const float* bias = seg == 0 ? s.bq : (seg == 1 ? s.bk : s.bv);
  const float val = v + (bias ? bias[local] : 0.f);
  const uint16_t bits = s.bf16 ? from_float<bf16>(val).bits : from_float<f16>(val).bits;
  if (seg == 0) {
    static_cast<uint16_t*>(s.q)[local] = bits;
  } else {
    const int64_t pos = s.pos_dev ? int64_t(*s.pos_dev) : s.pos;
    const int64_t h = local / s.head_dim, d = local % s.head_dim;
    static_cast<uint16_t*>(seg == 1 ? s.k_cache : s.v_cache)[(h * s.n_ctx + pos) * s.head_dim + d] = bits;
  }
}

// What the matvec reads as its activations. kFloat: x itself. The others fold the elementwise step
// before a decode product into the product's loads (one kernel fewer each, decode being launch-bound):
// kRmsNorm: x / sqrt(mean(x^2) + eps) * norm_w, the row's mean computed by every block (the rows are
// short and L2-resident); kSwiGlu: silu(g) * u with g = x[c], u = x[cols + c] (x: the gate|up output,
// ldx = 2 cols); kHalf: f16 or bf16 storage (the attention output), widened exactly. Each formula is
// the one of the separate kernel it replaces (rms_norm_cuda, the model's SwiGLU), in the same order.
enum MvIn : int { kInFloat = 0, kInRmsNorm = 1, kInSwiGlu = 2, kInHalf = 3 };

// 8 activations of run j of activation row xr (zeros past cols).
__device__ __forceinline__ void load_x_run(const float* __restrict__ xr, int j, int64_t cols, bool vec,
                                           float (&v)[kRun]) {
  const int64_t c0 = int64_t(kRun) * j;
  if (vec) {
    const float4 a = *reinterpret_cast<const float4*>(xr + c0), b = *reinterpret_cast<const float4*>(xr + c0 + 4);
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
    v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
  } else {
#pragma unroll
    for (int k = 0; k < kRun; ++k) v[k] = c0 + k < cols ? xr[c0 + k] : 0.0f;
  }
}

// --- matrix-vector: decode ------------------------------------------------------------------------

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Products with at most this many activation rows take the matrix-vector kernel. Below it, the
// product is bound by reading the weights once; the matvec reads them at close to the memory's rate,
// while the tensor-core kernel pays for a 128-row activation tile it mostly pads. Above it, the
// matvec re-reads each activation run from L1 once per NR weight rows, and its float32 FMAs (n per
// weight) start to cost more than the weight bytes; the tensor-core kernel does the multiply for free.
constexpr int64_t kMatvecMaxN = 8;
constexpr int kMvWarps = 4;

// Run j of activation row xr as the matvec's input mode reads it (inv: the row's 1/rms for kInRmsNorm).
template <int kIn>
__device__ __forceinline__ void load_in_run(const ProductArgs& a, const float* __restrict__ xr, int j, float inv,
                                            float (&v)[kRun]) {
  const int64_t c0 = int64_t(kRun) * j;
  if constexpr (kIn == kInFloat) {
    load_x_run(xr, j, a.cols, a.vec_x, v);
  } else if constexpr (kIn == kInRmsNorm) {
    float g[kRun];
    load_x_run(xr, j, a.cols, a.vec_x, v);
    load_x_run(a.norm_w, j, a.cols, a.vec_x, g);
#pragma unroll
    for (int k = 0; k < kRun; ++k) v[k] = v[k] * inv * g[k];
  } else if constexpr (kIn == kInSwiGlu) {
    float u[kRun];
    load_x_run(xr, j, a.cols, a.vec_x, v);
    load_x_run(xr + a.cols, j, a.cols, a.vec_x, u);
#pragma unroll
    for (int k = 0; k < kRun; ++k) v[k] = v[k] / (1.f + expf(-v[k])) * u[k];
  } else {  // kInHalf: xr points at 16-bit elements
    const uint16_t* hr = reinterpret_cast<const uint16_t*>(xr);
    uint16_t h[kRun];
    if (a.vec_x) {
      const uint4 q = *reinterpret_cast<const uint4*>(hr + c0);
      std::memcpy(h, &q, sizeof(h));
    } else {
#pragma unroll
      for (int k = 0; k < kRun; ++k) h[k] = c0 + k < a.cols ? hr[c0 + k] : uint16_t(0);
    }
#pragma unroll
    for (int k = 0; k < kRun; ++k)
      v[k] = a.x_bf16 ? __uint_as_float(uint32_t(h[k]) << 16) : __half2float(__ushort_as_half(h[k]));
  }
}

// kWarpRows: each warp takes its own NR rows (a block covers kMvWarps * NR), for rows of at most 32 lane
// units (<= 1024 columns at U = 4): with the block's lanes sharing NR rows, all but n_units of them idle.
// The weight rows block (bx, by) of the matvec grid covers: [b0, b0 + rows) with b0 = bx * this.
template <int NR, bool kWarpRows>
constexpr int64_t matvec_block_rows() { return (kWarpRows ? kMvWarps : 1) * NR; }

// The work of block (bx, by) of the matvec grid (bx: weight rows, by: activation rows), kMvWarps * 32
// threads; the matvec kernel runs it as its own block, the decode megakernel (model/decode_mega.cu) as
// one of a phase's virtual blocks.
template <typename F, int NR, int NT, int U, int kIn = kInFloat, bool kWarpRows = false>
__device__ __forceinline__ void matvec_block(const ProductArgs& a, int bx, int by) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t r0 = (int64_t(bx) * (kWarpRows ? kMvWarps : 1) + (kWarpRows ? warp : 0)) * NR;
  const int64_t t0 = int64_t(by) * NT;
  const int nt = int(a.n - t0 < NT ? a.n - t0 : NT);  // activation rows of this block
  const int nr = int(a.rows - r0 < NR ? (a.rows - r0 > 0 ? a.rows - r0 : 0) : NR);  // kWarpRows: 0 past the end
  // Activation row t of the block; kInHalf rows are 16-bit, so the pointer steps in that type.
  auto x_row = [&](int t) {
    const int64_t off = (t0 + t) * a.ldx;
    return kIn == kInHalf ? reinterpret_cast<const float*>(reinterpret_cast<const uint16_t*>(a.x) + off) : a.x + off;
  };
  const uint8_t* __restrict__ w = a.w + r0 * a.row_bytes;

  // kInRmsNorm: every block computes its activation rows' 1/rms (the same sum as rms_norm_cuda's, in
  // another order: the two agree to float32 rounding).
  float inv[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) inv[t] = 1.0f;
  if constexpr (kIn == kInRmsNorm) {
    __shared__ float ss_part[kMvWarps][NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      float ss = 0.0f;
      if (t < nt)
        for (int64_t c = threadIdx.x; c < a.cols; c += kMvWarps * 32) {
          const float v = x_row(t)[c];
          ss += v * v;
        }
      ss = warp_sum(ss);
      if (lane == 0) ss_part[warp][t] = ss;
    }
    __syncthreads();
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      float ss = 0.0f;
#pragma unroll
      for (int k = 0; k < kMvWarps; ++k) ss += ss_part[k][t];
      inv[t] = rsqrtf(ss / float(a.cols) + a.eps);
    }
  }

  float acc[NR][NT];
#pragma unroll
  for (int r = 0; r < NR; ++r)
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[r][t] = 0.0f;

  // One activation row, accumulating: the storing thread loads its rows' current values now, so that the
  // store at the end does not wait for an L2 round trip (no other thread writes them: the same bits).
  float old[NR];
#pragma unroll
  for (int r = 0; r < NR; ++r) old[r] = 0.0f;
  const bool early_old = NT == 1 && a.accumulate && !a.scatter;
  if (early_old) {
    if constexpr (kWarpRows) {  // lane 0 stores the warp's rows
#pragma unroll
      for (int r = 0; r < NR; ++r)
        if (lane == 0 && r < nr) old[r] = a.y[t0 * a.ldy + r0 + r];
    } else if (int(threadIdx.x) < nr) {  // thread i < NR stores row i
      old[0] = a.y[t0 * a.ldy + r0 + threadIdx.x];
    }
  }

  // A lane's unit: U consecutive runs (U = 4: 32 elements, inside one block of every format), so a
  // scale is loaded and widened once per kRunsPerScale runs (the products are issue-bound, not
  // bandwidth-bound, when every run decodes its own scale: measured on an H200, 2026-12-01, ~15
  // instructions per weight and 20% of the copy bandwidth for Q4_K).
  const int n_runs = F::runs(a.cols);
  const int n_units = (n_runs + U - 1) / U;
  for (int u = kWarpRows ? lane : warp * 32 + lane; u < n_units; u += kWarpRows ? 32 : kMvWarps * 32) {
    float dl[NR], ml[NR];  // the scale of the current runs, loaded once per kRunsPerScale runs
#pragma unroll
    for (int ru = 0; ru < U; ++ru) {
      const int j = u * U + ru;
      if (U > 1 && j >= n_runs) break;  // float formats' last unit only
      float xv[NT][kRun], sx[NT];
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        if (t < nt) {
          load_in_run<kIn>(a, x_row(t), j, inv[t], xv[t]);
        } else {
#pragma unroll
          for (int k = 0; k < kRun; ++k) xv[t][k] = 0.0f;
        }
        sx[t] = 0.0f;
        if constexpr (F::kHasMin) {
#pragma unroll
          for (int k = 0; k < kRun; ++k) sx[t] += xv[t][k];
        }
      }
#pragma unroll
      for (int r = 0; r < NR; ++r) {
        if (r < nr) {
          const uint8_t* row = w + r * a.row_bytes;
          if (U == 1 || ru % F::kRunsPerScale == 0) F::scale(row, j, dl[r], ml[r]);
          float q[kRun];
          F::codes(row, j, a.cols, q);
#pragma unroll
          for (int t = 0; t < NT; ++t) {
            float d = 0.0f;
#pragma unroll
            for (int k = 0; k < kRun; ++k) d = fmaf(q[k], xv[t][k], d);
            acc[r][t] = fmaf(dl[r], d, acc[r][t]);
            if constexpr (F::kHasMin) acc[r][t] = fmaf(-ml[r], sx[t], acc[r][t]);
          }
        }
      }
    }
  }

  if constexpr (kWarpRows) {  // the warp's own rows: a shuffle reduction, no block barrier
#pragma unroll
    for (int r = 0; r < NR; ++r)
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        const float v = warp_sum(acc[r][t]);
        if (lane == 0 && r < nr && t < nt) {
          float* dst = a.y + (t0 + t) * a.ldy + r0 + r;
          if (a.scatter) qkv_store(a.sc, r0 + r, v);
          else *dst = a.accumulate ? (early_old ? old[r] : *dst) + v : v;
        }
      }
  } else {  // the block's warps share its rows: shuffles, then across warps through shared memory
    __shared__ float red[kMvWarps][NR * NT];
#pragma unroll
    for (int r = 0; r < NR; ++r)
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        const float v = warp_sum(acc[r][t]);
        if (lane == 0) red[warp][r * NT + t] = v;
      }
    __syncthreads();
    for (int i = threadIdx.x; i < NR * NT; i += blockDim.x) {
      const int r = i / NT, t = i % NT;
      if (r < nr && t < nt) {
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < kMvWarps; ++k) s += red[k][i];
        float* dst = a.y + (t0 + t) * a.ldy + r0 + r;
        if (a.scatter) qkv_store(a.sc, r0 + r, s);
        else *dst = a.accumulate ? (early_old ? old[0] : *dst) + s : s;
      }
    }
  }
}

// One decode row's fused product as the matvec kernel runs it (matvec_cuda_fused): its arguments, the
// input mode and the block layout (NR = kFusedNR rows, units of kFusedU runs), and its grid's block count.
constexpr int kFusedNR = 4, kFusedU = 4;
struct FusedMatvec {
  ProductArgs a;
  QType type = QType::F32;
  int in = kInFloat;       // MvIn
  bool warp_rows = false;  // matvec_block<F, kFusedNR, 1, kFusedU, in, warp_rows>
  int64_t n_blocks = 0;
};
// Checks the arguments as matvec_cuda_fused does (ArgumentError) and plans the product; host only.
FusedMatvec fused_matvec_plan(const QMatrix& w, const MatvecInput& in, float* y, bool accumulate,
                              const QkvScatter* scatter);
// Whether a one-row product of `cols` columns takes the warp-rows layout (SELFEXT_CUDA_MV_WARP_ROWS=0: never).
bool matvec_warp_rows(int64_t cols);

}  // namespace mv_cuda
}  // namespace selfext
