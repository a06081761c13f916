// Quantized weight products on CUDA, straight from the GGUF blocks (layouts and run accessors of
// csrc/quant/<fmt>.h and runs.h, shared with the CPU). The kernels, templates over the format:
//
//   matvec  (n <= kMatvecMaxN activation rows: decode). Every weight byte is read once. A block of
//           kMvWarps = 4 warps owns NR weight rows (4 for n = 1); its 128 lanes take consecutive units
//           of 4 runs (32 elements, inside one block of every format; a warp covers 1024 consecutive
//           elements of a row). Each lane loads a run's 8 activations once (two 16-byte loads per
//           activation row) and uses them for all NR rows, widens the 8 codes of each row to float
//           exactly (runs.h), dots in float32 and scales once per run: acc += dl * sum(q x) - ml *
//           sum(x), with the scale decoded once per runs_per_scale runs. Warp-shuffle, then shared-
//           memory reduction over the 4 warps. H200, 2026-12-01: 30-33% of the copy bandwidth for Q4_K,
//           Q6_K, Q4_0, 43-49% for Q8_0 (bench/quant_cuda.py); ncu puts the limit in L1 (77% busy,
//           DRAM 25%): the lanes' 8-byte weight loads are scattered over ~5 cache lines per warp
//           instruction. The next step is staging each warp's contiguous row bytes through shared
//           memory with 16-byte loads (or llama.cpp's int8 activations + dp4a), not more rows per block.
//   matvec_q (Q4_0, Q8_0, Q4_K, Q6_K decode rows: the model's unfused path, and the head of any model): the activation row prepared into
//           16-bit codes and multiplied with dp4a over 16-byte weight loads; 0.46-0.58 of the copy
//           bandwidth on the same H200 (see "decode products over 16-bit activation codes" below).
//           SELFEXT_CUDA_MVQ_BITS=8 multiplies by the codes' high bytes only (8-bit activations).
//   mma     (n > kMatvecMaxN: prefill). Tensor cores through nvcuda::wmma 16x16x16, fp16 inputs, fp32
//           accumulation. A block of 4 warps computes a kBM x kBN = 64 weight rows x 128 activation rows
//           tile, stepping K by kBK = 32: the weights are dequantized to float32 (dl * q - ml), rounded
//           to fp16 into shared memory, the activations converted to fp16 beside them; each warp owns
//           32 x 64 of the tile (2 x 4 accumulator fragments). The next K step's global loads are
//           issued before the current step's MMAs. The epilogue goes through shared memory so edges
//           (rows, n, not multiples of the tile) and `accumulate` are plain guarded stores.
//           Precision: the weights and the activations are each rounded to fp16 (relative 2^-11,
//           absolute 2^-25 below fp16's normal range 2^-14), products are exact in fp32 and summed in
//           fp32. Activations beyond fp16's range (|x| > 65504, the largest finite fp16) are clamped
//           to +-65504 rather than becoming inf (inf would turn the whole output row into inf/NaN):
//           fp16 keeps 3 more mantissa bits than bf16, which matters for every value, while
//           activations that large do not occur in the llama models this package runs (the inputs of
//           the products are RMS-normalized, or SwiGLU products of those); a product fed such values
//           is wrong either way, and the clamp keeps it finite. Infinities and NaN pass unchanged.
//   embed   gathers rows by id and writes dequantize_run (the CPU's formula, its product rounded on
//           its own with __fmul_rn) to float32: bit for bit the CPU's dequantization.
//
// Nothing here allocates, synchronizes or copies to the host: every call can be captured in a graph.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "core/cuda_check.cuh"
#include "core/cuda_launch.cuh"
#include "core/errors.h"
#include "core/half.h"
#include "quant/formats.h"
#include "quant/matmul_cuda.h"
#include "quant/matvec_cuda.cuh"

namespace selfext {
namespace {

using namespace mv_cuda;

// matvec_block as a kernel: grid (rows / matvec_block_rows, n / NT).
template <typename F, int NR, int NT, int U, int kIn = kInFloat, bool kWarpRows = false>
__global__ void __launch_bounds__(kMvWarps * 32) matvec_kernel(ProductArgs a) {
  if (a.prefetch && threadIdx.x == 0 && blockIdx.y == 0) {  // the block's rows, while the previous kernel runs
    constexpr int64_t kBlockRows = matvec_block_rows<NR, kWarpRows>();
    const int64_t b0 = int64_t(blockIdx.x) * kBlockRows;
    if (b0 < a.rows) prefetch_l2(a.w + b0 * a.row_bytes, (min(a.rows, b0 + kBlockRows) - b0) * a.row_bytes);
  }
  kernel_prologue();
  matvec_block<F, NR, NT, U, kIn, kWarpRows>(a, int(blockIdx.x), int(blockIdx.y));
}

// NR (weight rows per block) for NT activation rows: one run's activations serve NR rows, while
// registers (NR * NT accumulators, NT * 8 activations) and the number of blocks (rows / NR, to fill
// 132 SMs with 4096-row matrices) limit it. Measured on an H200 (ncu, 14336 x 4096 Q4_K, 2026-12-01):
// NR = 4 and NR = 8 both take 28.0 us with L1 at 77% and DRAM at 25%: the L1 is busy with the weight
// loads (each warp load instruction touches ~5 cache lines for 128 useful bytes), not the activations.
template <typename F, int NT, int kIn = kInFloat>
void launch_matvec_nt(const ProductArgs& a, cudaStream_t s) {
  constexpr int NR = NT == 1 ? 4 : (NT <= 4 ? 2 : 1);
  constexpr int U = NT <= 2 ? 4 : 1;  // runs per lane unit; more activation rows would not fit registers
  // Narrow rows (<= 32 lane units: <= 1024 columns at U = 4): each warp takes its own NR rows, as the
  // block's 128 lanes sharing NR rows would leave all but n_units of them idle. Measured on an H200
  // (2026-12-02, scripts/device_decode_ab.sh, two alternating rounds): SmolLM2-shaped decode steps 1.109 /
  // 1.085 -> 1.087 / 1.072 ms. SELFEXT_CUDA_MV_WARP_ROWS=0 keeps the block layout (the tests run both).
  if constexpr (NT == 1) {
    static_assert(NR == kFusedNR && U == kFusedU, "matvec_warp_rows and FusedMatvec assume this layout");
    if (matvec_warp_rows(a.cols)) {
      const dim3 grid(unsigned((a.rows + NR * kMvWarps - 1) / (NR * kMvWarps)), unsigned(a.n));
      launch_kernel(matvec_kernel<F, NR, NT, U, kIn, true>, grid, dim3(kMvWarps * 32), 0, s, a);
      return;
    }
  }
  const dim3 grid(unsigned((a.rows + NR - 1) / NR), unsigned((a.n + NT - 1) / NT));
  launch_kernel(matvec_kernel<F, NR, NT, U, kIn>, grid, dim3(kMvWarps * 32), 0, s, a);
}

template <typename F>
void launch_matvec(const ProductArgs& a, cudaStream_t s) {
  if (a.n == 1) launch_matvec_nt<F, 1>(a, s);
  else if (a.n == 2) launch_matvec_nt<F, 2>(a, s);
  else if (a.n <= 4) launch_matvec_nt<F, 4>(a, s);
  else launch_matvec_nt<F, 8>(a, s);
}

// --- decode products over 16-bit activation codes ---------------------------------------------------
//
// The float matvec above is bound by its L1 traffic (each lane's narrow loads scatter over ~5 cache
// lines per warp instruction). These kernels read every weight block with 16-byte loads and multiply
// with integer dot products: the activation row is prepared once per product (prepare_activation_cuda)
// into 16-bit codes v = 256 h + l per element with one float scale d per 32 elements (x ~ d v, |v| <=
// 32512), so sum_c q_c v_c = 256 dp4a(q, h) + dp4a(q, l), exact in int32. The only new error is the
// activation's rounding, |x - d v| <= d / 2 = amax / 65024 per element.
//
// Layout of a prepared row (cols rounded up to 256: Kp): h[Kp] bytes, l[Kp] bytes, d[Kp / 32] floats,
// s16[Kp / 16] ints (sums of v over 16 elements: the offset / min terms).

constexpr int kActVMax = 32512;  // 127 * 256: h = (v + 128) >> 8 stays in [-127, 127], l in [-128, 127]

__host__ __device__ inline int64_t act_q_cols(int64_t cols) { return (cols + 255) / 256 * 256; }

struct ActQ {
  const int8_t* h;
  const int8_t* l;
  const float* d;
  const int* s16;
};
struct ActQOut {
  int8_t* h;
  int8_t* l;
  float* d;
  int* s16;
};
template <typename P>
__host__ __device__ inline void act_q_layout(P* base, int64_t cols, P** h, P** l, P** d, P** s) {
  const int64_t kp = act_q_cols(cols);
  *h = base;
  *l = base + kp;
  *d = base + 2 * kp;
  *s = base + 2 * kp + kp / 32 * 4;
}

constexpr int kPrepThreads = 256;

struct PrepArgs {
  int kind;  // MvIn
  const void* x;
  const float* norm_w;
  float eps;
  bool x_bf16;
  int64_t cols;
  float* out_f;
  ActQOut q;
};

__global__ void __launch_bounds__(kPrepThreads) prepare_activation_kernel(const PrepArgs a) {
  kernel_prologue();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const float* xf = static_cast<const float*>(a.x);
  float inv = 1.0f;
  if (a.kind == kInRmsNorm) {  // the row's 1/rms, as rms_norm_cuda computes it (same terms, summed in another order)
    __shared__ float part[kPrepThreads / 32];
    float ss = 0.0f;
    for (int64_t c = threadIdx.x; c < a.cols; c += kPrepThreads) ss += xf[c] * xf[c];
    ss = warp_sum(ss);
    if (lane == 0) part[warp] = ss;
    __syncthreads();
    ss = 0.0f;
#pragma unroll
    for (int k = 0; k < kPrepThreads / 32; ++k) ss += part[k];
    inv = rsqrtf(ss / float(a.cols) + a.eps);
  }
  // Block b quantizes elements [256 b, 256 b + 256), one per thread (RMSNorm: every block sums the row).
  for (int64_t c0 = int64_t(blockIdx.x) * kPrepThreads + warp * 32; c0 < a.cols; c0 += int64_t(gridDim.x) * kPrepThreads) {
    const int64_t c = c0 + lane;
    float v;
    if (a.kind == kInFloat) {
      v = xf[c];
    } else if (a.kind == kInRmsNorm) {
      v = xf[c] * inv * a.norm_w[c];
    } else if (a.kind == kInSwiGlu) {
      const float g = xf[c];
      v = g / (1.f + expf(-g)) * xf[a.cols + c];
    } else {
      const uint16_t hb = static_cast<const uint16_t*>(a.x)[c];
      v = a.x_bf16 ? __uint_as_float(uint32_t(hb) << 16) : __half2float(__ushort_as_half(hb));
    }
    if (a.out_f) a.out_f[c] = v;
    float amax = fabsf(v);
    const bool bad = __any_sync(0xffffffffu, !(amax <= 3.0e38f));  // inf or NaN in the block
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const float d = amax / float(kActVMax);
    int q = amax > 0.0f && !bad ? __float2int_rn(v * (float(kActVMax) / amax)) : 0;
    q = max(-kActVMax, min(kActVMax, q));
    const int hi = (q + 128) >> 8;
    a.q.h[c] = int8_t(hi);
    a.q.l[c] = int8_t(q - 256 * hi);
    int sum = q;
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);  // within each half-warp
    if ((lane & 15) == 0) a.q.s16[c / 16] = sum;
    // A block holding inf or NaN gets a NaN scale: its products come out NaN, as the float path's would.
    if (lane == 0) a.q.d[c / 32] = bad ? __int_as_float(0x7fc00000) : d;
  }
}

__device__ __forceinline__ int dp4a(uint32_t a, uint32_t b, int c) { return __dp4a(int(a), int(b), c); }

// sum over 16 elements of q * v, q the signed bytes of qw[0..3] (nibbles 0..15 or Q8_0's codes), v = 256 h + l;
// exact in int32 (|sum| <= 16 * 128 * 32640).
__device__ __forceinline__ int dot16(const uint32_t (&qw)[4], const uint4& h, const uint4& l) {
  int sh = dp4a(qw[0], h.x, 0), sl = dp4a(qw[0], l.x, 0);
  sh = dp4a(qw[1], h.y, sh); sl = dp4a(qw[1], l.y, sl);
  sh = dp4a(qw[2], h.z, sh); sl = dp4a(qw[2], l.z, sl);
  sh = dp4a(qw[3], h.w, sh); sl = dp4a(qw[3], l.w, sl);
  return 256 * sh + sl;
}

// The same sum with the codes' high bytes only: 256 sum q h, i.e. v rounded to a multiple of 256 (an 8-bit
// code h = (v + 128) >> 8 per element, |v - 256 h| <= 128). Half the activation bytes and dp4a of dot16.
__device__ __forceinline__ int dot16_hi(const uint32_t (&qw)[4], const uint4& h) {
  int sh = dp4a(qw[0], h.x, 0);
  sh = dp4a(qw[1], h.y, sh);
  sh = dp4a(qw[2], h.z, sh);
  sh = dp4a(qw[3], h.w, sh);
  return 256 * sh;
}
// sum of 16 high bytes (times 256: the 8-bit row's own sums, in units of v). With k8 the offset and min
// terms take these instead of the 16-bit sums s16, so the product is exactly the weights times the 8-bit
// row 256 d h: its error is sum_c |w_c| |x_c - 256 d h_c|, not the uncentred codes' q_c times it.
__device__ __forceinline__ int hsum16(const uint4& h) {
  return 256 * dp4a(0x01010101u, h.x, dp4a(0x01010101u, h.y, dp4a(0x01010101u, h.z, dp4a(0x01010101u, h.w, 0))));
}
// dot16 (k8 = false) or dot16_hi (k8): the formats' products below take both.
template <bool k8>
__device__ __forceinline__ int dot16_v(const uint32_t (&qw)[4], const uint4& h, const uint4& l) {
  if constexpr (k8) return dot16_hi(qw, h);
  else return dot16(qw, h, l);
}

// The formats as the kernel below sees them. A warp reads its columns in chunks of
// 1024 elements (1 KiB of 16-bit codes per activation plane): `load` gives a lane its activation codes
// for chunk c (false when the lane's block lies past the row's end), `fetch` its weight bytes of chunk c
// of one row (16-byte loads only, issued before any of them is used), `dot` their product in float:
// scale d_a per 32 activations times the exact int32 sum, times the weight block's scales.
//   Q4_0 (18-byte blocks, 2-byte aligned): lane b takes block 32 c + b, loading the two aligned 16-byte
//     words around its 18 bytes (they never reach past the 16-byte granule of the block's last byte).
//   Q8_0 (34-byte blocks, 2-byte aligned): lane b takes block 32 c + b through the three aligned 16-byte
//     words around its 34 bytes (they never reach past the granule of the block's last byte).
//   Q4_K (144-byte super-blocks): 8 lanes share a super-block, four per chunk; lane i of a group loads
//     the 16-byte header (d, dmin, scales) and code bytes 16 i .. 16 i + 15: elements 64 (i/2) + 16 (i%2)
//     + [0, 16) in the low nibbles (sub-block 2 (i/2)) and 32 further in the high ones (2 (i/2) + 1).
//   Q6_K (210-byte super-blocks, 2-byte aligned): 8 lanes share a super-block; lane i takes half h = i/4
//     (128 elements) and t = i % 4: ql bytes 64 h + 16 t .. +15 (low nibbles: elements 128 h + 16 t +
//     [0, 16); high nibbles: 64 further) and qh bytes 32 h + 16 (t % 2) .. +15 (bit pairs t/2 and t/2 + 2
//     of the same elements), each through the two aligned words around it (inside the super-block).
constexpr int kMvqChunk = 1024;

// X[t] = W[wi + t], t < N, for a run-time wi in 0..3 (selects, not a local-memory index).
template <int N, int M>
__device__ __forceinline__ void words_from(const uint32_t (&W)[M], int wi, uint32_t (&X)[N]) {
  static_assert(N + 3 <= M, "wi + t must stay inside W");
#pragma unroll
  for (int t = 0; t < N; ++t) X[t] = wi == 0 ? W[t] : wi == 1 ? W[t + 1] : wi == 2 ? W[t + 2] : W[t + 3];
}

// The activation codes of block b = 32 c + lane (32 elements) for the formats of 32-element blocks (Q4_0,
// Q8_0): the 16-byte words of both code planes (the high bytes only with k8), the block's scale and, with
// kSum, the codes' sum (Q4_0's offset term). False when the block lies past the row's end.
struct Act32 { uint4 h0, h1, l0, l1; float da; int sv; };
template <bool k8, bool kSum>
__device__ __forceinline__ bool load_act32(const ActQ& x, int64_t cols, int c, int lane, Act32& a) {
  const int b = 32 * c + lane;
  if (b >= int(cols / 32)) return false;
  a.h0 = reinterpret_cast<const uint4*>(x.h)[2 * b];
  a.h1 = reinterpret_cast<const uint4*>(x.h)[2 * b + 1];
  if constexpr (!k8) {
    a.l0 = reinterpret_cast<const uint4*>(x.l)[2 * b];
    a.l1 = reinterpret_cast<const uint4*>(x.l)[2 * b + 1];
  }
  a.da = x.d[b];
  if constexpr (kSum) {
    if constexpr (k8) a.sv = hsum16(a.h0) + hsum16(a.h1);
    else a.sv = x.s16[2 * b] + x.s16[2 * b + 1];
  }
  return true;
}

// 16 bytes at a 2-byte aligned global address, from the two aligned 16-byte words around them.
__device__ __forceinline__ void ld16_a2(const uint8_t* p, uint32_t (&v)[4]) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uint4* q = reinterpret_cast<const uint4*>(a & ~uintptr_t(15));
  const uint4 A = q[0], B = q[1];
  const uint32_t W[8] = {A.x, A.y, A.z, A.w, B.x, B.y, B.z, B.w};
  const int wi = int(a & 15) >> 2;
  const uint32_t sh = uint32_t(a & 2) * 8u;
  uint32_t X[5];
  words_from(W, wi, X);
#pragma unroll
  for (int k = 0; k < 4; ++k) v[k] = __funnelshift_r(X[k], X[k + 1], sh);
}

template <bool k8>
struct MvqQ4_0 {
  using Act = Act32;
  struct Raw { uint4 A, B; int o; };
  __device__ static bool load(const ActQ& x, int64_t cols, int c, int lane, Act& a) {
    return load_act32<k8, true>(x, cols, c, lane, a);
  }
  __device__ static void fetch(const uint8_t* row, int c, int lane, Raw& r) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(row + int64_t(18) * (32 * c + lane));
    const uint4* a16 = reinterpret_cast<const uint4*>(p & ~uintptr_t(15));
    r.A = a16[0];
    r.B = a16[1];
    r.o = int(p & 15);
  }
  __device__ static float dot(const Raw& r, const Act& a) {
    const uint32_t W[8] = {r.A.x, r.A.y, r.A.z, r.A.w, r.B.x, r.B.y, r.B.z, r.B.w};
    const int wi = r.o >> 2;
    const bool odd = (r.o & 2) != 0;  // the block starts in the upper half of word wi
    uint32_t X[5];
    words_from(W, wi, X);
    const uint32_t dbits = (odd ? X[0] >> 16 : X[0]) & 0xFFFFu;
    uint32_t lo[4], hi[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const uint32_t qs = __funnelshift_rc(X[k], X[k + 1], odd ? 32u : 16u);  // code bytes 4k..4k+3
      lo[k] = qs & 0x0F0F0F0Fu;         // elements 4k..4k+3
      hi[k] = (qs >> 4) & 0x0F0F0F0Fu;  // elements 16+4k..
    }
    const int S = dot16_v<k8>(lo, a.h0, a.l0) + dot16_v<k8>(hi, a.h1, a.l1) - 8 * a.sv;
    return __half2float(__ushort_as_half(uint16_t(dbits))) * a.da * float(S);
  }
};

template <bool k8>
struct MvqQ8_0 {
  using Act = Act32;
  struct Raw { uint4 A, B, C; int o; };
  __device__ static bool load(const ActQ& x, int64_t cols, int c, int lane, Act& a) {
    return load_act32<k8, false>(x, cols, c, lane, a);
  }
  __device__ static void fetch(const uint8_t* row, int c, int lane, Raw& r) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(row + int64_t(34) * (32 * c + lane));
    const uint4* a16 = reinterpret_cast<const uint4*>(p & ~uintptr_t(15));
    r.A = a16[0];
    r.B = a16[1];
    r.C = a16[2];
    r.o = int(p & 15);
  }
  __device__ static float dot(const Raw& r, const Act& a) {
    const uint32_t W[12] = {r.A.x, r.A.y, r.A.z, r.A.w, r.B.x, r.B.y, r.B.z, r.B.w, r.C.x, r.C.y, r.C.z, r.C.w};
    const int wi = r.o >> 2;
    const bool odd = (r.o & 2) != 0;  // the block starts in the upper half of word wi
    uint32_t X[9];
    words_from(W, wi, X);
    const uint32_t dbits = (odd ? X[0] >> 16 : X[0]) & 0xFFFFu;
    uint32_t q0[4], q1[4];  // the signed codes of elements 0..15 and 16..31
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      q0[k] = __funnelshift_rc(X[k], X[k + 1], odd ? 32u : 16u);
      q1[k] = __funnelshift_rc(X[k + 4], X[k + 5], odd ? 32u : 16u);
    }
    const int S = dot16_v<k8>(q0, a.h0, a.l0) + dot16_v<k8>(q1, a.h1, a.l1);
    return __half2float(__ushort_as_half(uint16_t(dbits))) * a.da * float(S);
  }
};

template <bool k8>
struct MvqQ4_K {
  struct Act { uint4 hl, hh, ll, lh; float da_lo, da_hi, sv_lo, sv_hi; int jlo; };
  struct Raw { uint4 hdr, q; };
  __device__ static bool load(const ActQ& x, int64_t cols, int c, int lane, Act& a) {
    const int sb = 4 * c + (lane >> 3), i = lane & 7;
    if (sb >= int(cols / 256)) return false;
    const int64_t e = int64_t(256) * sb + 64 * (i >> 1) + 16 * (i & 1);
    a.hl = *reinterpret_cast<const uint4*>(x.h + e);
    a.hh = *reinterpret_cast<const uint4*>(x.h + e + 32);
    if constexpr (!k8) {
      a.ll = *reinterpret_cast<const uint4*>(x.l + e);
      a.lh = *reinterpret_cast<const uint4*>(x.l + e + 32);
    }
    a.da_lo = x.d[e / 32];
    a.da_hi = x.d[e / 32 + 1];
    a.sv_lo = float(k8 ? hsum16(a.hl) : x.s16[e / 16]);
    a.sv_hi = float(k8 ? hsum16(a.hh) : x.s16[e / 16 + 2]);
    a.jlo = 2 * (i >> 1);  // sub-block of the low nibbles; jlo + 1 of the high ones
    return true;
  }
  __device__ static void fetch(const uint8_t* row, int c, int lane, Raw& r) {
    const uint8_t* blk = row + int64_t(144) * (4 * c + (lane >> 3));
    r.hdr = *reinterpret_cast<const uint4*>(blk);
    r.q = *reinterpret_cast<const uint4*>(blk + 16 + 16 * (lane & 7));
  }
  __device__ static float dot(const Raw& r, const Act& a) {
    // k4_scale_min for sub-blocks jlo (< 8) and jlo + 1, from the 12 scale bytes in hdr.y..hdr.w.
    int sc[2], mn[2];
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int j = a.jlo + u;
      if (j < 4) {
        sc[u] = int((r.hdr.y >> (8 * j)) & 63u);
        mn[u] = int((r.hdr.z >> (8 * j)) & 63u);
      } else {
        const int jj = 8 * (j - 4);
        const uint32_t s8 = (r.hdr.w >> jj) & 0xFFu, s0 = (r.hdr.y >> jj) & 0xFFu, s4 = (r.hdr.z >> jj) & 0xFFu;
        sc[u] = int((s8 & 0xFu) | ((s0 >> 6) << 4));
        mn[u] = int((s8 >> 4) | ((s4 >> 6) << 4));
      }
    }
    const float d = __half2float(__ushort_as_half(uint16_t(r.hdr.x & 0xFFFFu)));
    const float dmin = __half2float(__ushort_as_half(uint16_t(r.hdr.x >> 16)));
    const uint32_t qw[4] = {r.q.x, r.q.y, r.q.z, r.q.w};
    uint32_t lo[4], hi[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      lo[k] = qw[k] & 0x0F0F0F0Fu;
      hi[k] = (qw[k] >> 4) & 0x0F0F0F0Fu;
    }
    const float s_lo = float(dot16_v<k8>(lo, a.hl, a.ll)), s_hi = float(dot16_v<k8>(hi, a.hh, a.lh));
    return fmaf(a.da_hi, d * float(sc[1]) * s_hi - dmin * float(mn[1]) * a.sv_hi,
                a.da_lo * (d * float(sc[0]) * s_lo - dmin * float(mn[0]) * a.sv_lo));
  }
};

template <bool k8>
struct MvqQ6_K {
  static constexpr int kBytes = 210;
  struct Act { uint4 hl, hx, ll, lx; float da_lo, da_hi; int sv_lo, sv_hi; int i; };
  struct Raw { uint32_t ql[4], qh[4]; int sc_lo, sc_hi; uint16_t dbits; };
  __device__ static bool load(const ActQ& x, int64_t cols, int c, int lane, Act& a) {
    const int sb = 4 * c + (lane >> 3), i = lane & 7;
    if (sb >= int(cols / 256)) return false;
    const int64_t e = int64_t(256) * sb + 128 * (i >> 2) + 16 * (i & 3);  // low-nibble elements; +64: high
    a.hl = *reinterpret_cast<const uint4*>(x.h + e);
    a.hx = *reinterpret_cast<const uint4*>(x.h + e + 64);
    if constexpr (!k8) {
      a.ll = *reinterpret_cast<const uint4*>(x.l + e);
      a.lx = *reinterpret_cast<const uint4*>(x.l + e + 64);
    }
    a.da_lo = x.d[e / 32];
    a.da_hi = x.d[(e + 64) / 32];
    a.sv_lo = k8 ? hsum16(a.hl) : x.s16[e / 16];
    a.sv_hi = k8 ? hsum16(a.hx) : x.s16[(e + 64) / 16];
    a.i = i;
    return true;
  }
  __device__ static void fetch(const uint8_t* row, int c, int lane, Raw& r) {
    const int i = lane & 7, hh = i >> 2, t = i & 3;
    const uint8_t* blk = row + int64_t(kBytes) * (4 * c + (lane >> 3));
    ld16_a2(blk + 64 * hh + 16 * t, r.ql);
    ld16_a2(blk + 128 + 32 * hh + 16 * (t & 1), r.qh);
    r.sc_lo = int(int8_t(blk[192 + 8 * hh + t]));
    r.sc_hi = int(int8_t(blk[196 + 8 * hh + t]));
    r.dbits = *reinterpret_cast<const uint16_t*>(blk + 208);
  }
  __device__ static float dot(const Raw& r, const Act& a) {
    const int s_pair = 2 * ((a.i & 3) >> 1);
    uint32_t clo[4], chi[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      clo[k] = (r.ql[k] & 0x0F0F0F0Fu) | (((r.qh[k] >> s_pair) & 0x03030303u) << 4);
      chi[k] = ((r.ql[k] >> 4) & 0x0F0F0F0Fu) | (((r.qh[k] >> (s_pair + 4)) & 0x03030303u) << 4);
    }
    const float s_lo = float(dot16_v<k8>(clo, a.hl, a.ll) - 32 * a.sv_lo),
                s_hi = float(dot16_v<k8>(chi, a.hx, a.lx) - 32 * a.sv_hi);
    const float d = __half2float(__ushort_as_half(r.dbits));
    return fmaf(d * float(r.sc_hi) * a.da_hi, s_hi, d * float(r.sc_lo) * a.da_lo * s_lo);
  }
};

// A warp owns NR rows and walks their chunks, loading each chunk's activations once for its NR rows.
// Bound by the L1 on wide matrices (ncu, H200, 2026-12-02, 28672 x 4096 Q4_K: L1 85% busy, DRAM 38%): the
// activations cross L1 once per row, 3.5x the bytes of the row's weights. A layout holding each warp's
// activations in registers across a batch of rows (the block's warps splitting the columns) took that
// traffic off L1 (27% busy) but was slower: 133 registers per thread left 16-20% occupancy, too few loads
// in flight (Llama-3-8B Q4_K_M shapes 3.05-3.11 -> 4.18-4.21 ms per step, H200, two rounds); removed.
constexpr int kMvqWarps = 8;

// KS > 1 (chosen per product by launch in matvec_q_cuda): KS warps share each row group, warp k taking the
// chunks k, k + KS, ... and the block adding their partial sums through shared memory, so a product of
// few rows (1024-row K and V of 8B shapes: 1024 warps for 132 SMs at KS = 1) keeps more loads in flight.
template <typename Ops, int NR, int KS>
__global__ void __launch_bounds__(kMvqWarps * 32) mvq_rows_kernel(const uint8_t* __restrict__ w, int64_t row_bytes,
                                                                  int64_t rows, int64_t cols, ActQ x, float* y,
                                                                  bool accumulate, bool prefetch, bool scatter,
                                                                  const QkvScatter sc) {
  static_assert(kMvqWarps % KS == 0, "KS must divide the block's warps");
  constexpr int kBlockRows = kMvqWarps / KS * NR;
  const int64_t b0 = int64_t(blockIdx.x) * kBlockRows;
  if (prefetch && threadIdx.x == 0 && b0 < rows)  // the block's rows, while the previous kernel runs
    prefetch_l2(w + b0 * row_bytes, (min(rows, b0 + kBlockRows) - b0) * row_bytes);
  kernel_prologue();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t r0 = b0 + int64_t(warp / KS) * NR;
  if (KS == 1 && r0 >= rows) return;  // KS > 1: every warp reaches the barrier below
  const int n_chunks = int((cols + kMvqChunk - 1) / kMvqChunk);
  float acc[NR];
#pragma unroll
  for (int r = 0; r < NR; ++r) acc[r] = 0.0f;
#pragma unroll 2
  for (int c = warp % KS; c < n_chunks; c += KS) {
    typename Ops::Act a;
    if (r0 >= rows || !Ops::load(x, cols, c, lane, a)) continue;
    typename Ops::Raw raw[NR];  // every row's bytes requested before the first product waits on them
#pragma unroll
    for (int r = 0; r < NR; ++r)
      if (r0 + r < rows) Ops::fetch(w + (r0 + r) * row_bytes, c, lane, raw[r]);
#pragma unroll
    for (int r = 0; r < NR; ++r)
      if (r0 + r < rows) acc[r] += Ops::dot(raw[r], a);
  }
  if constexpr (KS == 1) {
#pragma unroll
    for (int r = 0; r < NR; ++r) {
      const float v = warp_sum(acc[r]);
      if (lane == 0 && r0 + r < rows) {
        if (scatter) qkv_store(sc, r0 + r, v);
        else y[r0 + r] = accumulate ? y[r0 + r] + v : v;
      }
    }
  } else {
    __shared__ float red[kMvqWarps][NR];
#pragma unroll
    for (int r = 0; r < NR; ++r) {
      const float v = warp_sum(acc[r]);
      if (lane == 0) red[warp][r] = v;
    }
    __syncthreads();
    const int t = threadIdx.x;
    if (t < kBlockRows && b0 + t < rows) {
      const int g = t / NR, r = t % NR;
      float v = 0.0f;
#pragma unroll
      for (int k = 0; k < KS; ++k) v += red[g * KS + k][r];
      if (scatter) qkv_store(sc, b0 + t, v);
      else y[b0 + t] = accumulate ? y[b0 + t] + v : v;
    }
  }
}

// Read at every call (not cached), so a process can build models with and without it (the tests do).
bool mvq_enabled() {
  const char* e = std::getenv("SELFEXT_CUDA_MVQ");
  return !(e && std::strcmp(e, "0") == 0);
}
// Decode products prefetch their weights into L2 before the PDL wait (prefetch_l2) only when the whole
// matrix is small: measured on an H200 (2026-12-02, bench/results/device-ab-nvidia-h200-2026-12-02.txt, two alternating rounds):
// SmolLM2-shaped steps (matrices <= 1.1 MB, the 28 MB head) 1.088 / 1.078 -> 0.985 / 1.020 ms; Llama-3-8B
// shapes (2.4-66 MB) unchanged (3.41 / 3.39 ms Q4_K_M, 2.47-2.53 ms Q4_0) while standalone products of 33 MB
// were up to 18% slower with it.
constexpr int64_t kPrefetchMaxBytes = int64_t(8) << 20;

// --- matrix-matrix with tensor cores: prefill -----------------------------------------------------

constexpr int kBM = 64;    // weight rows per block
constexpr int kBN = 128;   // activation rows per block (the weight tile is dequantized once per kBN)
constexpr int kBK = 32;    // K step: one legacy block, one Q4_K sub-block
constexpr int kMmaThreads = 128;
constexpr int kPad = 8;    // halves of padding per shared row: rows 80 bytes apart, fewer bank conflicts
constexpr int kLdS = kBK + kPad;
constexpr int kLdC = kBM + 4;  // floats per epilogue row (one activation row of the tile)
constexpr int kWRuns = kBM * kBK / kRun / kMmaThreads;         // weight runs per thread per K step (2)
constexpr int kXQuads = kBN * kBK / 4 / kMmaThreads;           // 4-float activation loads per thread (8)
static_assert(kWRuns * kMmaThreads * kRun == kBM * kBK, "weight tile split");
static_assert(kXQuads * kMmaThreads * 4 == kBN * kBK, "activation tile split");

struct MmaTiles {
  __half w[kBM][kLdS];  // dequantized weights (row, k)
  __half x[kBN][kLdS];  // activations (activation row, k): the col-major B operand
};
union MmaShared {
  MmaTiles t;
  float c[kBN][kLdC];   // epilogue: c[t][r]
};

__device__ __forceinline__ float clamp_fp16_range(float v) {
  return fabsf(v) > 65504.0f && fabsf(v) < INFINITY ? copysignf(65504.0f, v) : v;
}
__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(clamp_fp16_range(lo), clamp_fp16_range(hi));
  return *reinterpret_cast<const uint32_t*>(&h);
}

// One K step's data in registers, loaded before the previous step's MMAs run.
struct MmaStage {
  float wq[kWRuns][kRun];
  float wdl[kWRuns], wml[kWRuns];
  float4 xq[kXQuads];
};

template <typename F>
__device__ __forceinline__ void mma_load(const ProductArgs& a, int64_t r0, int64_t t0, int k0, MmaStage& st) {
  const int n_runs = F::runs(a.cols);
#pragma unroll
  for (int i = 0; i < kWRuns; ++i) {
    const int u = threadIdx.x + i * kMmaThreads;
    const int row = u / (kBK / kRun), jr = u % (kBK / kRun);
    const int j = k0 / kRun + jr;
    if (r0 + row < a.rows && j < n_runs) {
      F::run(a.w + (r0 + row) * a.row_bytes, j, a.cols, st.wq[i], st.wdl[i], st.wml[i]);
    } else {
#pragma unroll
      for (int k = 0; k < kRun; ++k) st.wq[i][k] = 0.0f;
      st.wdl[i] = 0.0f;
      st.wml[i] = 0.0f;
    }
  }
#pragma unroll
  for (int i = 0; i < kXQuads; ++i) {
    const int u = threadIdx.x + i * kMmaThreads;
    const int t = u / (kBK / 4), c = k0 + 4 * (u % (kBK / 4));
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (t0 + t < a.n) {
      const float* xr = a.x + (t0 + t) * a.ldx;
      if (a.vec_x) {
        if (c < a.cols) v = *reinterpret_cast<const float4*>(xr + c);
      } else {
        v.x = c < a.cols ? xr[c] : 0.0f;
        v.y = c + 1 < a.cols ? xr[c + 1] : 0.0f;
        v.z = c + 2 < a.cols ? xr[c + 2] : 0.0f;
        v.w = c + 3 < a.cols ? xr[c + 3] : 0.0f;
      }
    }
    st.xq[i] = v;
  }
}

__device__ __forceinline__ void mma_store(const MmaStage& st, MmaTiles& sm) {
#pragma unroll
  for (int i = 0; i < kWRuns; ++i) {
    const int u = threadIdx.x + i * kMmaThreads;
    const int row = u / (kBK / kRun), jr = u % (kBK / kRun);
    float v[kRun];
#pragma unroll
    for (int k = 0; k < kRun; ++k) v[k] = st.wdl[i] * st.wq[i][k] - st.wml[i];
    *reinterpret_cast<uint4*>(&sm.w[row][kRun * jr]) =
        make_uint4(pack_half2(v[0], v[1]), pack_half2(v[2], v[3]), pack_half2(v[4], v[5]), pack_half2(v[6], v[7]));
  }
#pragma unroll
  for (int i = 0; i < kXQuads; ++i) {
    const int u = threadIdx.x + i * kMmaThreads;
    const int t = u / (kBK / 4), c = 4 * (u % (kBK / 4));
    *reinterpret_cast<uint2*>(&sm.x[t][c]) = make_uint2(pack_half2(st.xq[i].x, st.xq[i].y),
                                                        pack_half2(st.xq[i].z, st.xq[i].w));
  }
}

template <typename F>
__global__ void __launch_bounds__(kMmaThreads) mma_kernel(ProductArgs a) {
  kernel_prologue();
  using namespace nvcuda;
  __shared__ __align__(128) MmaShared sm;
  const int warp = threadIdx.x >> 5;
  const int wm = warp & 1, wn = warp >> 1;  // warp tile: rows 32 wm .., activation rows 64 wn ..
  const int64_t r0 = int64_t(blockIdx.x) * kBM, t0 = int64_t(blockIdx.y) * kBN;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int k = 0; k < 4; ++k) wmma::fill_fragment(acc[i][k], 0.0f);

  const int n_steps = int((a.cols + kBK - 1) / kBK);
  MmaStage st;
  mma_load<F>(a, r0, t0, 0, st);
  for (int s = 0; s < n_steps; ++s) {
    mma_store(st, sm.t);
    __syncthreads();
    if (s + 1 < n_steps) mma_load<F>(a, r0, t0, (s + 1) * kBK, st);
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb[4];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], &sm.t.w[32 * wm + 16 * i][kk], kLdS);
#pragma unroll
      for (int k = 0; k < 4; ++k) wmma::load_matrix_sync(fb[k], &sm.t.x[64 * wn + 16 * k][kk], kLdS);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int k = 0; k < 4; ++k) wmma::mma_sync(acc[i][k], fa[i], fb[k], acc[i][k]);
    }
    __syncthreads();
  }

  // Epilogue: c[t][r] in shared memory (the tiles are dead after the last barrier), then guarded,
  // row-contiguous stores to y (n, rows).
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int k = 0; k < 4; ++k)
      wmma::store_matrix_sync(&sm.c[64 * wn + 16 * k][32 * wm + 16 * i], acc[i][k], kLdC, wmma::mem_col_major);
  __syncthreads();
  for (int i = threadIdx.x; i < kBM * kBN; i += kMmaThreads) {
    const int t = i / kBM, r = i % kBM;
    if (t0 + t < a.n && r0 + r < a.rows) {
      float* dst = a.y + (t0 + t) * a.ldy + r0 + r;
      *dst = a.accumulate ? *dst + sm.c[t][r] : sm.c[t][r];
    }
  }
}

template <typename F>
void launch_mma(const ProductArgs& a, cudaStream_t s) {
  const dim3 grid(unsigned((a.rows + kBM - 1) / kBM), unsigned((a.n + kBN - 1) / kBN));
  launch_kernel(mma_kernel<F>, grid, dim3(kMmaThreads), 0, s, a);
}

// --- embedding rows -------------------------------------------------------------------------------

constexpr int kEmbedThreads = 128;

// An id outside [0, rows) is a caller bug (the contract has ids checked on the host); it gives a NaN
// row instead of a read outside the matrix.
template <typename F>
__global__ void __launch_bounds__(kEmbedThreads) embed_kernel(const uint8_t* __restrict__ w, int64_t row_bytes,
                                                              int64_t rows, int64_t cols,
                                                              const int32_t* __restrict__ ids,
                                                              float* __restrict__ out, int64_t ldo, bool vec) {
  kernel_prologue();
  const int j = int(blockIdx.x) * kEmbedThreads + threadIdx.x;
  if (j >= F::runs(cols)) return;
  const int64_t t = blockIdx.y;
  const int32_t id = ids[t];
  float v[kRun];
  if (id >= 0 && id < rows) {
    F::dequant(w + int64_t(id) * row_bytes, j, cols, v);
  } else {
#pragma unroll
    for (int k = 0; k < kRun; ++k) v[k] = __int_as_float(0x7fc00000);
  }
  float* dst = out + t * ldo + int64_t(kRun) * j;
  if (vec) {
    reinterpret_cast<float4*>(dst)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(dst)[1] = make_float4(v[4], v[5], v[6], v[7]);
  } else {
#pragma unroll
    for (int k = 0; k < kRun; ++k)
      if (int64_t(kRun) * j + k < cols) dst[k] = v[k];
  }
}

// --- argument checks ------------------------------------------------------------------------------

void check_matrix(const QMatrix& w) {
  check_qtype_supported(int(w.type));
  SELFEXT_CHECK(w.rows > 0, ArgumentError, "w.rows must be positive, got ", w.rows);
  const int64_t rb = qtype_row_bytes(w.type, w.cols);  // throws unless cols is a positive multiple
  SELFEXT_CHECK(w.row_bytes == rb, ArgumentError, "w.row_bytes is ", w.row_bytes, " but a row of ", w.cols, " ",
                qtype_name(w.type), " values is ", rb, " bytes");
  SELFEXT_CHECK(w.data != nullptr, ArgumentError, "w.data is null");
  SELFEXT_CHECK(reinterpret_cast<uintptr_t>(w.data) % 16 == 0, ArgumentError,
                "w.data must be 16-byte aligned (the kernels load blocks in 8- and 16-byte words)");
  SELFEXT_CHECK(w.cols / kRun < int64_t(1) << 31, ArgumentError, "w.cols ", w.cols, " is too large");
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The arguments of one product over w (input modes, when any, set by the caller).
ProductArgs product_args(const QMatrix& w, const float* x, int64_t n, int64_t ldx, float* y, int64_t ldy,
                         bool accumulate) {
  ProductArgs a;
  a.w = static_cast<const uint8_t*>(w.data);
  a.row_bytes = w.row_bytes;
  a.rows = w.rows;
  a.cols = w.cols;
  a.x = x;
  a.ldx = ldx;
  a.n = n;
  a.y = y;
  a.ldy = ldy;
  a.accumulate = accumulate;
  a.vec_x = aligned16(x) && ldx % 4 == 0 && w.cols % kRun == 0;
  a.prefetch = l2_prefetch_enabled() && w.rows * w.row_bytes <= kPrefetchMaxBytes;
  return a;
}

// The checks of a QkvScatter against the product it stores.
void check_scatter(const QkvScatter& sc, const QMatrix& w, int64_t n) {
  SELFEXT_CHECK(n == 1, ArgumentError, "a Q/K/V scatter store takes one activation row, got ", n);
  SELFEXT_CHECK(sc.q && sc.k_cache && sc.v_cache && sc.head_dim > 0 && sc.q_dim % sc.head_dim == 0 &&
                    sc.kv_dim % sc.head_dim == 0 && sc.row0 >= 0 && sc.row0 + w.rows <= int64_t(sc.q_dim) + 2 * sc.kv_dim &&
                    (sc.pos_dev || (sc.pos >= 0 && sc.pos < sc.n_ctx)),
                ArgumentError, "Q/K/V scatter: the query row, both caches, head_dim dividing q_dim and kv_dim, rows ",
                sc.row0, " + ", w.rows, " within q_dim + 2 kv_dim = ", int64_t(sc.q_dim) + 2 * sc.kv_dim,
                " and a position in [0, n_ctx) are needed");
}

}  // namespace

size_t matmul_cuda_workspace_bytes(QType type, int64_t cols, int64_t n) {
  (void)qtype_row_bytes(type, cols);  // validates type and cols
  SELFEXT_CHECK(n >= 0, ArgumentError, "n must be >= 0, got ", n);
  return 0;  // the kernels dequantize in registers and shared memory
}

void matmul_cuda(const QMatrix& w, const float* x, int64_t n, int64_t ldx, float* y, int64_t ldy, bool accumulate,
                 void* workspace, void* stream, const QkvScatter* scatter) {
  (void)workspace;
  check_matrix(w);
  SELFEXT_CHECK(n >= 0, ArgumentError, "n must be >= 0, got ", n);
  if (n == 0) return;
  SELFEXT_CHECK(x != nullptr && y != nullptr, ArgumentError, "x and y must not be null");
  SELFEXT_CHECK(ldx >= w.cols, ArgumentError, "ldx must be >= cols = ", w.cols, ", got ", ldx);
  SELFEXT_CHECK(ldy >= w.rows, ArgumentError, "ldy must be >= rows = ", w.rows, ", got ", ldy);
  SELFEXT_CHECK(n <= int64_t(65535) * kBN, ArgumentError, "n = ", n, " activation rows is too many for one call");
  ProductArgs a = product_args(w, x, n, ldx, y, ldy, accumulate);
  if (scatter) {
    check_scatter(*scatter, w, n);
    a.scatter = true;
    a.sc = *scatter;
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  SELFEXT_CUDA_FORMAT_SWITCH(w.type, F, {
    if (n <= kMatvecMaxN) launch_matvec<F>(a, s);
    else launch_mma<F>(a, s);
  });
}

namespace mv_cuda {

bool matvec_warp_rows(int64_t cols) {
  const int64_t n_units = ((cols + kRun - 1) / kRun + kFusedU - 1) / kFusedU;  // F::runs on the host
  const char* wr = std::getenv("SELFEXT_CUDA_MV_WARP_ROWS");
  return n_units <= 32 && !(wr && std::strcmp(wr, "0") == 0);
}

FusedMatvec fused_matvec_plan(const QMatrix& w, const MatvecInput& in, float* y, bool accumulate,
                              const QkvScatter* scatter) {
  check_matrix(w);
  SELFEXT_CHECK(in.x != nullptr && y != nullptr, ArgumentError, "x and y must not be null");
  const bool swiglu = in.kind == MatvecInput::kSwiGlu;
  SELFEXT_CHECK(in.ldx >= (swiglu ? 2 : 1) * w.cols, ArgumentError, "ldx must be >= ", (swiglu ? 2 : 1) * w.cols,
                ", got ", in.ldx);
  SELFEXT_CHECK(in.kind != MatvecInput::kRmsNorm || in.norm_w != nullptr, ArgumentError,
                "an RMSNorm input needs its weight");
  FusedMatvec f;
  ProductArgs& a = f.a;
  a = product_args(w, static_cast<const float*>(in.x), 1, in.ldx, y, w.rows, accumulate);
  a.norm_w = in.norm_w;
  a.eps = in.eps;
  a.x_bf16 = in.kind == MatvecInput::kBF16;
  if (scatter) {
    check_scatter(*scatter, w, 1);
    a.scatter = true;
    a.sc = *scatter;
  }
  // One row: only the row's own alignment matters for the 16-byte loads (kSwiGlu's up half starts cols
  // elements in, aligned whenever cols % 8 == 0), and the norm weight's for kRmsNorm.
  a.vec_x = w.cols % kRun == 0 && aligned16(in.x) && (in.kind != MatvecInput::kRmsNorm || aligned16(in.norm_w));
  f.type = w.type;
  f.in = in.kind == MatvecInput::kFloat ? kInFloat : in.kind == MatvecInput::kRmsNorm ? kInRmsNorm
       : in.kind == MatvecInput::kSwiGlu ? kInSwiGlu : kInHalf;
  f.warp_rows = matvec_warp_rows(w.cols);
  const int64_t block_rows = f.warp_rows ? matvec_block_rows<kFusedNR, true>() : matvec_block_rows<kFusedNR, false>();
  f.n_blocks = (w.rows + block_rows - 1) / block_rows;
  return f;
}

}  // namespace mv_cuda

void matvec_cuda_fused(const QMatrix& w, const MatvecInput& in, float* y, bool accumulate, void* stream,
                       const QkvScatter* scatter) {
  const FusedMatvec f = fused_matvec_plan(w, in, y, accumulate, scatter);
  const ProductArgs& a = f.a;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  SELFEXT_CUDA_FORMAT_SWITCH(w.type, F, {
    switch (f.in) {
      case kInFloat: launch_matvec_nt<F, 1, kInFloat>(a, s); break;
      case kInRmsNorm: launch_matvec_nt<F, 1, kInRmsNorm>(a, s); break;
      case kInSwiGlu: launch_matvec_nt<F, 1, kInSwiGlu>(a, s); break;
      default: launch_matvec_nt<F, 1, kInHalf>(a, s); break;
    }
  });
}

bool matvec_q_supported(const QMatrix& w) {
  return mvq_enabled() &&
         (w.type == QType::Q4_0 || w.type == QType::Q8_0 || w.type == QType::Q4_K || w.type == QType::Q6_K);
}

size_t activation_q_bytes(int64_t cols) {
  SELFEXT_CHECK(cols > 0, ArgumentError, "cols must be positive, got ", cols);
  const int64_t kp = act_q_cols(cols);
  return size_t(2 * kp + kp / 32 * 4 + kp / 16 * 4);
}

void prepare_activation_cuda(const MatvecInput& in, int64_t cols, float* out_f, void* xq, void* stream) {
  SELFEXT_CHECK(cols > 0 && cols % 32 == 0, ArgumentError, "prepare_activation: cols must be a positive multiple "
                "of 32, got ", cols);
  SELFEXT_CHECK(in.x != nullptr && xq != nullptr, ArgumentError, "x and xq must not be null");
  SELFEXT_CHECK(reinterpret_cast<uintptr_t>(xq) % 256 == 0, ArgumentError, "xq must be 256-byte aligned");
  SELFEXT_CHECK(in.kind != MatvecInput::kRmsNorm || in.norm_w != nullptr, ArgumentError,
                "an RMSNorm input needs its weight");
  PrepArgs a{};
  a.kind = in.kind == MatvecInput::kFloat ? kInFloat : in.kind == MatvecInput::kRmsNorm ? kInRmsNorm
         : in.kind == MatvecInput::kSwiGlu ? kInSwiGlu : kInHalf;
  a.x = in.x;
  a.norm_w = in.norm_w;
  a.eps = in.eps;
  a.x_bf16 = in.kind == MatvecInput::kBF16;
  a.cols = cols;
  a.out_f = out_f;
  act_q_layout(static_cast<int8_t*>(xq), cols, &a.q.h, &a.q.l, reinterpret_cast<int8_t**>(&a.q.d),
               reinterpret_cast<int8_t**>(&a.q.s16));
  launch_kernel(prepare_activation_kernel, dim3(unsigned((cols + kPrepThreads - 1) / kPrepThreads)), dim3(kPrepThreads),
                0, static_cast<cudaStream_t>(stream), a);
}

void matvec_q_cuda(const QMatrix& w, const void* xq, float* y, bool accumulate, void* stream,
                   const QkvScatter* scatter) {
  check_matrix(w);
  SELFEXT_CHECK(w.type == QType::Q4_0 || w.type == QType::Q8_0 || w.type == QType::Q4_K || w.type == QType::Q6_K,
                ArgumentError, "matvec_q takes Q4_0, Q8_0, Q4_K or Q6_K weights, got ", qtype_name(w.type));
  SELFEXT_CHECK(xq != nullptr && y != nullptr, ArgumentError, "xq and y must not be null");
  SELFEXT_CHECK(reinterpret_cast<uintptr_t>(xq) % 256 == 0, ArgumentError, "xq must be 256-byte aligned");
  if (scatter) check_scatter(*scatter, w, 1);
  ActQ x{};
  const int8_t* base = static_cast<const int8_t*>(xq);
  const int8_t *h, *l, *d, *s16;
  act_q_layout(base, w.cols, &h, &l, &d, &s16);
  x.h = h;
  x.l = l;
  x.d = reinterpret_cast<const float*>(d);
  x.s16 = reinterpret_cast<const int*>(s16);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const uint8_t* wp = static_cast<const uint8_t*>(w.data);
  const int64_t bytes = w.rows * w.row_bytes;
  const bool pf = l2_prefetch_enabled() && bytes <= kPrefetchMaxBytes;
  // NR rows per warp, KS warps per row group. Measured on an H200 in decode steps (2026-12-02,
  // scripts/device_decode_ab.sh, random weights, two alternating rounds; bench/results/device-ab-*.txt):
  // NR = 2 with KS = auto (the smallest KS, at most 4 and at most half the chunk count per step, giving
  // >= 32 warps per SM: the 1024-row K and V products get KS = 4) against NR = 1, KS = 1: Llama-3-8B
  // Q4_K_M shapes 3.007 / 3.018 -> 2.887 / 2.937 ms, Q4_0 shapes 2.420 / 2.462 -> 2.286 / 2.269 ms;
  // KS = auto alone 3.07 / 2.50-2.55 ms and KS = 2 everywhere 3.16-3.22 / 2.53 ms (both slower).
  // SELFEXT_CUDA_MVQ_NR=1|2|4 and SELFEXT_CUDA_MVQ_KS=1|2|4|auto override them (read at every call).
  const char* nr_env = std::getenv("SELFEXT_CUDA_MVQ_NR");
  const char* ks_env = std::getenv("SELFEXT_CUDA_MVQ_KS");
  int nr = 2;
  if (nr_env && (std::strcmp(nr_env, "1") == 0 || std::strcmp(nr_env, "2") == 0 || std::strcmp(nr_env, "4") == 0))
    nr = std::atoi(nr_env);
  int ks = 1;
  if (ks_env && (std::strcmp(ks_env, "1") == 0 || std::strcmp(ks_env, "2") == 0 || std::strcmp(ks_env, "4") == 0)) {
    ks = std::atoi(ks_env);
  } else {  // auto
    int dev = 0, sms = 0;
    SELFEXT_CUDA_CHECK(cudaGetDevice(&dev));
    SELFEXT_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    const int64_t n_chunks = (w.cols + kMvqChunk - 1) / kMvqChunk;
    while (ks < 4 && 2 * ks <= n_chunks && (w.rows + nr - 1) / nr * ks < 32 * int64_t(sms)) ks *= 2;
  }
  auto rows_layout = [&](auto ops) {
    using Ops = decltype(ops);
    auto go = [&](auto nr_c, auto ks_c) {
      constexpr int NR = decltype(nr_c)::value, KS = decltype(ks_c)::value;
      constexpr int kBlockRows = kMvqWarps / KS * NR;
      const dim3 grid(unsigned((w.rows + kBlockRows - 1) / kBlockRows));
      launch_kernel(mvq_rows_kernel<Ops, NR, KS>, grid, dim3(kMvqWarps * 32), 0, s, wp, w.row_bytes, w.rows, w.cols, x,
                    y, accumulate, pf, scatter != nullptr, scatter ? *scatter : QkvScatter{});
    };
    auto by_ks = [&](auto nr_c) {
      if (ks == 1) go(nr_c, std::integral_constant<int, 1>{});
      else if (ks == 2) go(nr_c, std::integral_constant<int, 2>{});
      else go(nr_c, std::integral_constant<int, 4>{});
    };
    if (nr == 1) by_ks(std::integral_constant<int, 1>{});
    else if (nr == 2) by_ks(std::integral_constant<int, 2>{});
    else by_ks(std::integral_constant<int, 4>{});
  };
  // SELFEXT_CUDA_MVQ_BITS=8: the codes' high bytes only (8-bit activations, half the activation bytes
  // through L1; error <= 128.51 d per element against 0.51 d; the offset / min sums from the same bytes),
  // read at every call.
  const char* bits_env = std::getenv("SELFEXT_CUDA_MVQ_BITS");
  const bool k8 = bits_env && std::strcmp(bits_env, "8") == 0;
  auto by_bits = [&](auto fmt8, auto fmt16) {
    if (k8) rows_layout(fmt8);
    else rows_layout(fmt16);
  };
  if (w.type == QType::Q4_0) by_bits(MvqQ4_0<true>{}, MvqQ4_0<false>{});
  else if (w.type == QType::Q8_0) by_bits(MvqQ8_0<true>{}, MvqQ8_0<false>{});
  else if (w.type == QType::Q4_K) by_bits(MvqQ4_K<true>{}, MvqQ4_K<false>{});
  else by_bits(MvqQ6_K<true>{}, MvqQ6_K<false>{});
}

void embed_rows_cuda(const QMatrix& w, const int32_t* ids, int64_t n, float* out, int64_t ldo, void* stream) {
  check_matrix(w);
  SELFEXT_CHECK(n >= 0 && n <= 65535, ArgumentError, "n must be in [0, 65535], got ", n);
  if (n == 0) return;
  SELFEXT_CHECK(ids != nullptr && out != nullptr, ArgumentError, "ids and out must not be null");
  SELFEXT_CHECK(ldo >= w.cols, ArgumentError, "ldo must be >= cols = ", w.cols, ", got ", ldo);
  const bool vec = aligned16(out) && ldo % 4 == 0 && w.cols % kRun == 0;
  const int64_t n_runs = (w.cols + kRun - 1) / kRun;
  const dim3 grid(unsigned((n_runs + kEmbedThreads - 1) / kEmbedThreads), unsigned(n));
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  SELFEXT_CUDA_FORMAT_SWITCH(w.type, F, {
    launch_kernel(embed_kernel<F>, grid, dim3(kEmbedThreads), 0, s, static_cast<const uint8_t*>(w.data), w.row_bytes,
                  w.rows, w.cols, ids, out, ldo, vec);
  });
}

}  // namespace selfext
