// The CPU attention leaf kernels, written once over a small vector abstraction V and instantiated per
// ISA: VecScalar (4 plain floats, the reference path), VecAvx2 (AVX2 + FMA + F16C), VecAvx512.
// Included only by selfext_cpu.cpp (scalar) and attention_kernels_cpu_{avx2,avx512}.cpp; everything here
// sits in the ISA inline namespace. No std containers, no exceptions (see attention_cpu.h).
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "attention/attention_cpu.h"
#include "attention/rope.h"
#include "core/half.h"
#include "core/hd.h"

namespace selfext {
inline namespace SELFEXT_ISA_NAMESPACE {
namespace attn_simd {

// Cephes-style expf constants (max error ~2 ulp on [-87, 88]); exp(-inf) and anything below -88.37
// come out as exactly 0 (2^-127 is encoded as +0), which the masks rely on.
constexpr float kExpHi = 88.3762626647949f, kExpLo = -88.3762626647949f;
constexpr float kLog2e = 1.44269504088896341f, kExpC1 = 0.693359375f, kExpC2 = -2.12194440e-4f;
constexpr float kExpP0 = 1.9875691500e-4f, kExpP1 = 1.3981999507e-3f, kExpP2 = 8.3334519073e-3f;
constexpr float kExpP3 = 4.1665795894e-2f, kExpP4 = 1.6666665459e-1f, kExpP5 = 5.0000001201e-1f;

// ---------------------------------------------------------------------------------------------------
// Vector types

struct VecScalar {
  static constexpr int W = 4;
  struct reg { float x[4]; };
  static reg zero() { return reg{{0.f, 0.f, 0.f, 0.f}}; }
  static reg set1(float a) { return reg{{a, a, a, a}}; }
  static reg load(const float* p) { return reg{{p[0], p[1], p[2], p[3]}}; }
  static reg load(const f16* p) {
    return reg{{to_float(p[0]), to_float(p[1]), to_float(p[2]), to_float(p[3])}};
  }
  static reg load(const bf16* p) {
    return reg{{to_float(p[0]), to_float(p[1]), to_float(p[2]), to_float(p[3])}};
  }
  static void store(float* p, reg a) {
    for (int i = 0; i < 4; ++i) p[i] = a.x[i];
  }
  static reg fma(reg a, reg b, reg c) {  // a*b + c, two roundings (the reference path)
    reg r;
    for (int i = 0; i < 4; ++i) r.x[i] = a.x[i] * b.x[i] + c.x[i];
    return r;
  }
  static reg add(reg a, reg b) {
    reg r;
    for (int i = 0; i < 4; ++i) r.x[i] = a.x[i] + b.x[i];
    return r;
  }
  static reg mul(reg a, reg b) {
    reg r;
    for (int i = 0; i < 4; ++i) r.x[i] = a.x[i] * b.x[i];
    return r;
  }
  static reg max(reg a, reg b) {
    reg r;
    for (int i = 0; i < 4; ++i) r.x[i] = a.x[i] > b.x[i] ? a.x[i] : b.x[i];
    return r;
  }
  static float hsum(reg a) { return (a.x[0] + a.x[1]) + (a.x[2] + a.x[3]); }
  static float hmax(reg a) {
    float m = a.x[0];
    for (int i = 1; i < 4; ++i) m = a.x[i] > m ? a.x[i] : m;
    return m;
  }
  static reg exp(reg a) {
    reg r;
    for (int i = 0; i < 4; ++i) r.x[i] = expf(a.x[i]);
    return r;
  }
};

#if defined(__AVX2__)
struct VecAvx2 {
  static constexpr int W = 8;
  using reg = __m256;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg set1(float a) { return _mm256_set1_ps(a); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static reg load(const f16* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static reg load(const bf16* p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  static void store(float* p, reg a) { _mm256_storeu_ps(p, a); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
  static float hsum(reg a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float hmax(reg a) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static reg exp(reg x) {
    x = _mm256_min_ps(_mm256_max_ps(x, set1(kExpLo)), set1(kExpHi));
    reg fx = _mm256_floor_ps(_mm256_fmadd_ps(x, set1(kLog2e), set1(0.5f)));
    x = _mm256_fnmadd_ps(fx, set1(kExpC1), x);
    x = _mm256_fnmadd_ps(fx, set1(kExpC2), x);
    reg y = set1(kExpP0);
    y = _mm256_fmadd_ps(y, x, set1(kExpP1));
    y = _mm256_fmadd_ps(y, x, set1(kExpP2));
    y = _mm256_fmadd_ps(y, x, set1(kExpP3));
    y = _mm256_fmadd_ps(y, x, set1(kExpP4));
    y = _mm256_fmadd_ps(y, x, set1(kExpP5));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, set1(1.f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  }
};
#endif

#if defined(__AVX512F__)
struct VecAvx512 {
  static constexpr int W = 16;
  using reg = __m512;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg set1(float a) { return _mm512_set1_ps(a); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static reg load(const f16* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static reg load(const bf16* p) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
  static void store(float* p, reg a) { _mm512_storeu_ps(p, a); }
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
  static float hsum(reg a) { return _mm512_reduce_add_ps(a); }
  static float hmax(reg a) { return _mm512_reduce_max_ps(a); }
  static reg exp(reg x) {
    x = _mm512_min_ps(_mm512_max_ps(x, set1(kExpLo)), set1(kExpHi));
    reg fx = _mm512_roundscale_ps(_mm512_fmadd_ps(x, set1(kLog2e), set1(0.5f)),
                                  _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    x = _mm512_fnmadd_ps(fx, set1(kExpC1), x);
    x = _mm512_fnmadd_ps(fx, set1(kExpC2), x);
    reg y = set1(kExpP0);
    y = _mm512_fmadd_ps(y, x, set1(kExpP1));
    y = _mm512_fmadd_ps(y, x, set1(kExpP2));
    y = _mm512_fmadd_ps(y, x, set1(kExpP3));
    y = _mm512_fmadd_ps(y, x, set1(kExpP4));
    y = _mm512_fmadd_ps(y, x, set1(kExpP5));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), _mm512_add_ps(x, set1(1.f)));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(fx), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(y, _mm512_castsi512_ps(e));
  }
};
#endif

// ---------------------------------------------------------------------------------------------------
// Register-blocking choices per vector type: QK rows x key vectors, PV rows x head_dim vectors.
// AVX-512 (32 registers): 4 x 4 accumulators for both. AVX2 / scalar (16 registers): 2 x 4.
template <class V> struct Blocking { static constexpr int kQkRows = 2, kQkVecs = 4, kPvRows = 2, kPvVecs = 4; };
#if defined(__AVX512F__)
template <> struct Blocking<VecAvx512> { static constexpr int kQkRows = 6, kQkVecs = 4, kPvRows = 6, kPvVecs = 4; };
#endif

// ---------------------------------------------------------------------------------------------------
// Row load + RoPE. The rotation loops are plain C++ (the compiler vectorizes them for the unit's ISA).

template <class V, int D, class T>
inline void convert_row(const T* src, float* dst) {
  for (int d = 0; d < D; d += V::W) V::store(dst + d, V::load(src + d));
}

template <class V, int D>
void load_row(const void* src, DType dtype, const float* rope_row, int rope_dim, RopeStyle style, float mul,
              float* dst) {
  switch (dtype) {
    case DType::kFloat16: convert_row<V, D>(static_cast<const f16*>(src), dst); break;
    case DType::kBFloat16: convert_row<V, D>(static_cast<const bf16*>(src), dst); break;
    default: convert_row<V, D>(static_cast<const float*>(src), dst); break;
  }
  if (rope_row != nullptr) {
    const int half = rope_dim / 2;
    if (style == RopeStyle::kNorm) {
      for (int p = 0; p < half; ++p) {
        const float a = dst[2 * p], b = dst[2 * p + 1], c = rope_row[2 * p], s = rope_row[2 * p + 1];
        dst[2 * p] = a * c - b * s;
        dst[2 * p + 1] = a * s + b * c;
      }
    } else {
      for (int p = 0; p < half; ++p) {
        const float a = dst[p], b = dst[p + half], c = rope_row[2 * p], s = rope_row[2 * p + 1];
        dst[p] = a * c - b * s;
        dst[p + half] = a * s + b * c;
      }
    }
  }
  if (mul != 1.f)
    for (int d = 0; d < D; ++d) dst[d] *= mul;
}

// ---------------------------------------------------------------------------------------------------
// S = Q · Kpanel: R query rows x NV key vectors of accumulators; per head-dim step NV panel loads and R
// broadcasts feed R*NV FMAs.

template <class V, int D, int R, int NV>
inline void qk_tile(const float* q, const float* kp, float* s, int64_t ld_s, int c0) {
  typename V::reg acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NV; ++c) acc[r][c] = V::zero();
  for (int d = 0; d < D; ++d) {
    typename V::reg kv[NV];
    for (int c = 0; c < NV; ++c) kv[c] = V::load(kp + d * kAttnBlockK + c0 + c * V::W);
    for (int r = 0; r < R; ++r) {
      const typename V::reg b = V::set1(q[r * D + d]);
      for (int c = 0; c < NV; ++c) acc[r][c] = V::fma(b, kv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NV; ++c) V::store(s + r * ld_s + c0 + c * V::W, acc[r][c]);
}

template <class V, int D>
void qk_packed(const float* q, int nq, const float* kp, float* s, int64_t ld_s) {
  constexpr int R = Blocking<V>::kQkRows, NV = Blocking<V>::kQkVecs;
  static_assert(kAttnBlockK % (NV * V::W) == 0, "key panel must split into whole register blocks");
  for (int c0 = 0; c0 < kAttnBlockK; c0 += NV * V::W) {
    int r = 0;
    for (; r + R <= nq; r += R) qk_tile<V, D, R, NV>(q + r * D, kp, s + r * ld_s, ld_s, c0);
    for (; r < nq; ++r) qk_tile<V, D, 1, NV>(q + r * D, kp, s + r * ld_s, ld_s, c0);
  }
}

template <class V, int D>
void qk_rows(const float* q, int nq, const float* k, int64_t ld_k, int nk, float* s, int64_t ld_s) {
  for (int j = 0; j < nk; ++j) {
    const float* kj = k + j * ld_k;
    for (int r = 0; r < nq; ++r) {
      const float* qr = q + r * D;
      typename V::reg a0 = V::zero(), a1 = V::zero();
      int d = 0;
      for (; d + 2 * V::W <= D; d += 2 * V::W) {
        a0 = V::fma(V::load(qr + d), V::load(kj + d), a0);
        a1 = V::fma(V::load(qr + d + V::W), V::load(kj + d + V::W), a1);
      }
      for (; d < D; d += V::W) a0 = V::fma(V::load(qr + d), V::load(kj + d), a0);
      s[r * ld_s + j] = V::hsum(V::add(a0, a1));
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Online softmax (Milakov & Gimelshein 2018) over one tile.

template <class V>
inline void exp_sub_inplace(float* x, int n, float m, float& sum) {
  const typename V::reg mv = V::set1(-m);
  typename V::reg acc = V::zero();
  int j = 0;
  for (; j + V::W <= n; j += V::W) {
    const typename V::reg e = V::exp(V::add(V::load(x + j), mv));
    V::store(x + j, e);
    acc = V::add(acc, e);
  }
  float total = V::hsum(acc);
  if (j < n) {  // tail through a padded vector, so every element sees the same exp
    float buf[V::W];
    for (int t = 0; t < V::W; ++t) buf[t] = j + t < n ? x[j + t] : -INFINITY;
    const typename V::reg e = V::exp(V::add(V::load(buf), mv));
    V::store(buf, e);
    for (int t = 0; j + t < n; ++t) {
      x[j + t] = buf[t];
      total += buf[t];
    }
  }
  sum = total;
}

template <class V, int D>
void softmax_update(float* s, int nq, int nk, int64_t ld_s, float* m, float* l, float* acc) {
  for (int r = 0; r < nq; ++r) {
    float* row = s + r * ld_s;
    typename V::reg mv = V::set1(-INFINITY);
    int j = 0;
    for (; j + V::W <= nk; j += V::W) mv = V::max(mv, V::load(row + j));
    float mx = V::hmax(mv);
    for (; j < nk; ++j) mx = row[j] > mx ? row[j] : mx;
    const float m_new = m[r] > mx ? m[r] : mx;
    if (m_new == -INFINITY) {  // nothing visible yet: every p is 0
      for (int t = 0; t < nk; ++t) row[t] = 0.f;
      continue;
    }
    float sum = 0.f;
    exp_sub_inplace<V>(row, nk, m_new, sum);
    if (m_new != m[r]) {
      const float alpha = expf(m[r] - m_new);  // m[r] = -inf: alpha = 0
      const typename V::reg av = V::set1(alpha);
      float* a = acc + r * D;
      for (int d = 0; d < D; d += V::W) V::store(a + d, V::mul(V::load(a + d), av));
      l[r] = l[r] * alpha + sum;
      m[r] = m_new;
    } else {
      l[r] += sum;
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// acc += P · V: R rows x NC head-dim vectors of accumulators, V rows streamed (converted in registers).

template <class V, int D, int R, int NC, class T>
inline void pv_tile(const float* p, int nk, int64_t ld_p, const T* v, int64_t ld_v, float* acc, int c0) {
  typename V::reg a[R][NC];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NC; ++c) a[r][c] = V::load(acc + r * D + (c0 + c) * V::W);
  for (int j = 0; j < nk; ++j) {
    typename V::reg vv[NC];
    for (int c = 0; c < NC; ++c) vv[c] = V::load(v + j * ld_v + (c0 + c) * V::W);
    for (int r = 0; r < R; ++r) {
      const typename V::reg b = V::set1(p[r * ld_p + j]);
      for (int c = 0; c < NC; ++c) a[r][c] = V::fma(b, vv[c], a[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NC; ++c) V::store(acc + r * D + (c0 + c) * V::W, a[r][c]);
}

template <class V, int D, int R, class T>
inline void pv_rows(const float* p, int nk, int64_t ld_p, const T* v, int64_t ld_v, float* acc) {
  constexpr int NVD = D / V::W, NC = Blocking<V>::kPvVecs;
  constexpr int kFull = NVD / NC * NC, kTail = NVD - kFull;
  for (int c0 = 0; c0 < kFull; c0 += NC) pv_tile<V, D, R, NC>(p, nk, ld_p, v, ld_v, acc, c0);
  if constexpr (kTail > 0) pv_tile<V, D, R, kTail>(p, nk, ld_p, v, ld_v, acc, kFull);
}

template <class V, int D, class T>
inline void pv_typed(const float* p, int nq, int nk, int64_t ld_p, const T* v, int64_t ld_v, float* acc) {
  constexpr int R = Blocking<V>::kPvRows;
  int r = 0;
  for (; r + R <= nq; r += R) pv_rows<V, D, R>(p + r * ld_p, nk, ld_p, v, ld_v, acc + r * D);
  for (; r < nq; ++r) pv_rows<V, D, 1>(p + r * ld_p, nk, ld_p, v, ld_v, acc + r * D);
}

template <class V, int D>
void pv(const float* p, int nq, int nk, int64_t ld_p, const void* v, DType v_dtype, int64_t ld_v, float* acc) {
  switch (v_dtype) {
    case DType::kFloat16: pv_typed<V, D>(p, nq, nk, ld_p, static_cast<const f16*>(v), ld_v, acc); break;
    case DType::kBFloat16: pv_typed<V, D>(p, nq, nk, ld_p, static_cast<const bf16*>(v), ld_v, acc); break;
    default: pv_typed<V, D>(p, nq, nk, ld_p, static_cast<const float*>(v), ld_v, acc); break;
  }
}

template <class V>
void sigmoid(const float* src, float* dst, int n) {
  const typename V::reg one = V::set1(1.f), neg = V::set1(-1.f);
  int j = 0;
  for (; j + V::W <= n; j += V::W) {
    const typename V::reg e = V::exp(V::mul(V::load(src + j), neg));
    float buf[V::W];
    V::store(buf, V::add(one, e));
    for (int t = 0; t < V::W; ++t) dst[j + t] = 1.f / buf[t];
  }
  for (; j < n; ++j) dst[j] = 1.f / (1.f + expf(-src[j]));
}

template <class V, int D>
constexpr AttnCpuKernels make_kernels() {
  return AttnCpuKernels{D, &load_row<V, D>, &qk_packed<V, D>, &qk_rows<V, D>, &softmax_update<V, D>, &pv<V, D>,
                        &sigmoid<V>};
}

// The supported head dims (the same list as SELFEXT_DISPATCH_HEAD_DIM).
template <class V>
const AttnCpuKernels* kernels_for(int head_dim) {
  static constexpr AttnCpuKernels k64 = make_kernels<V, 64>(), k80 = make_kernels<V, 80>(),
                                  k96 = make_kernels<V, 96>(), k128 = make_kernels<V, 128>();
  switch (head_dim) {
    case 64: return &k64;
    case 80: return &k80;
    case 96: return &k96;
    case 128: return &k128;
    default: return nullptr;
  }
}

}  // namespace attn_simd
}  // inline namespace SELFEXT_ISA_NAMESPACE
}  // namespace selfext
