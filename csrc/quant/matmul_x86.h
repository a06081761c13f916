// The x86 SIMD product kernels, written once and included by matmul_avx2.cpp (AVX2) and
// matmul_avx512.cpp (AVX-512 + VNNI; 32 vector registers, so larger tiles). Everything here has
// internal linkage: each ISA translation unit gets its own copy, none leaks to baseline code.
//
// Shape of every kernel: a tile of RW weight rows x RA activation rows is computed in registers over
// the whole row: each weight block is unpacked to u8 codes once and dotted with the RA activation
// rows' int8 codes (AVX2 vpmaddubsw, VNNI vpdpbusd / vpdpwssd), so the unpacking and the weight load
// are shared by RA outputs and prefill is bound by the integer multiply-adds, not by memory. Decode
// (one activation row) uses RA = 1 and more weight rows for independent accumulators.
//
// Every format is reduced to "unsigned codes times int8 activations" (see q8_k.h kquant_dot): code
// offsets (Q4_0: 8, Q5_0: 16, Q3_K: 4, Q6_K: 32) and mins are corrected with the activations' integer
// block sums, so maddubs never sees a negative weight (Q8_0, signed, uses the sign trick).
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "quant/formats.h"
#include "quant/matmul_kernels.h"

namespace selfext {
namespace {

// --- primitives -------------------------------------------------------------------------------------

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float h2f(uint16_t h) { return _cvtsh_ss(h); }  // exact, F16C

// acc + sum over groups of 4 of u8 * s8 (8 int32 lanes).
template <bool kVnni>
inline __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__)
  if constexpr (kVnni) return _mm256_dpbusd_epi32(acc, u, s);
#endif
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}

// acc + sum over pairs of int16 a * b.
template <bool kVnni>
inline __m256i dot_i16(__m256i acc, __m256i a, __m256i b) {
#if defined(__AVX512VNNI__)
  if constexpr (kVnni) return _mm256_dpwssd_epi32(acc, a, b);
#endif
  return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
}

// Decode prefetch: a tile reads RW rows of one contiguous stretch, in RW interleaved streams that
// restart every tile; each block step prefetches the same offset in the next tile's rows (RW * w_stride
// ahead), so the next tile is in cache when it starts. Prefetching is a hint: past the matrix's end it
// cannot fault.

inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// Byte i = 0xFF where bit i of the little-endian uint32 at p is set (the Q5 high bits).
inline __m256i bytes_from_bits_32(const uint8_t* p) {
  uint32_t x;
  std::memcpy(&x, p, 4);
  const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
  __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(int(x)), shuf);
  bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
  return _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
}

// 16 packed nibbles -> 32 codes in element order (low nibbles are elements 0-15, high 16-31): the 16
// bytes broadcast to both lanes (a load), the upper lane's dwords shifted right by 4 (what crosses a
// byte boundary lands above the low nibble), one mask: two ALU operations instead of four.
inline __m256i nibbles_32(const uint8_t* qs) {
  const __m256i x = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
  return _mm256_and_si256(_mm256_srlv_epi32(x, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)), _mm256_set1_epi8(0x0F));
}

inline __m256i srl8(__m256i x, int n, int mask) {
  return _mm256_and_si256(_mm256_srl_epi16(x, _mm_cvtsi32_si128(n)), _mm256_set1_epi8(char(mask)));
}

// --- legacy 32-element formats ------------------------------------------------------------------
// codes(b): 32 u8 codes (or s8 for Q8_0); offset: the code offset (value = code - offset);
// kMin: the block has a min (w = d q + m).

struct LQ4_0 {
  using Block = block_q4_0;
  static constexpr int kOffset = 8;
  static constexpr bool kMin = false, kSigned = false;
  static __m256i codes(const Block& b) { return nibbles_32(b.qs); }
  static float d(const Block& b) { return h2f(b.d); }
  static float m(const Block&) { return 0.f; }
};
struct LQ4_1 {
  using Block = block_q4_1;
  static constexpr int kOffset = 0;
  static constexpr bool kMin = true, kSigned = false;
  static __m256i codes(const Block& b) { return nibbles_32(b.qs); }
  static float d(const Block& b) { return h2f(b.d); }
  static float m(const Block& b) { return h2f(b.m); }
};
struct LQ5_0 {
  using Block = block_q5_0;
  static constexpr int kOffset = 16;
  static constexpr bool kMin = false, kSigned = false;
  static __m256i codes(const Block& b) {
    return _mm256_or_si256(nibbles_32(b.qs), _mm256_and_si256(bytes_from_bits_32(b.qh), _mm256_set1_epi8(0x10)));
  }
  static float d(const Block& b) { return h2f(b.d); }
  static float m(const Block&) { return 0.f; }
};
struct LQ5_1 {
  using Block = block_q5_1;
  static constexpr int kOffset = 0;
  static constexpr bool kMin = true, kSigned = false;
  static __m256i codes(const Block& b) {
    return _mm256_or_si256(nibbles_32(b.qs), _mm256_and_si256(bytes_from_bits_32(b.qh), _mm256_set1_epi8(0x10)));
  }
  static float d(const Block& b) { return h2f(b.d); }
  static float m(const Block& b) { return h2f(b.m); }
};
struct LQ8_0 {
  using Block = block_q8_0;
  static constexpr int kOffset = 0;
  static constexpr bool kMin = false, kSigned = true;
  static __m256i codes(const Block& b) { return load256(b.qs); }
  static float d(const Block& b) { return h2f(b.d); }
  static float m(const Block&) { return 0.f; }
};

// One RW x RA tile over the whole row. w[i] / a[j]: row pointers (clamped to valid rows by the caller).
template <typename L, bool kVnni, int RW, int RA>
inline void tile_legacy(const GemmArgs& g, int64_t r, int nr, int64_t t, int nt) {
  using Block = typename L::Block;
  const Block* w[RW];
  const block_q8_act* a[RA];
  for (int i = 0; i < RW; ++i) w[i] = reinterpret_cast<const Block*>(g.w + (r + (i < nr ? i : nr - 1)) * g.w_stride);
  for (int j = 0; j < RA; ++j)
    a[j] = reinterpret_cast<const block_q8_act*>(g.a + (t + (j < nt ? j : nt - 1)) * g.a_stride);
  // Decode (RA = 1): the min term gets its own accumulators, so no chain of two dependent FMAs per
  // block; prefill has RW * RA independent chains already and no registers to spare.
  constexpr bool kSplitMin = L::kMin && RA == 1;
  __m256 acc[RW][RA], macc[RW][RA];
  for (int i = 0; i < RW; ++i)
    for (int j = 0; j < RA; ++j) acc[i][j] = macc[i][j] = _mm256_setzero_ps();

  for (int64_t b = 0; b < g.nb; ++b) {
    if constexpr (RA == 1)  // decode streams the weights from DRAM: ask for them early
      for (int i = 0; i < RW; ++i) _mm_prefetch(reinterpret_cast<const char*>(w[i] + b) + RW * g.w_stride, _MM_HINT_T0);
    __m256i wc[RW], ws[RW];
    __m256 dw[RW], mw[RW];
    for (int i = 0; i < RW; ++i) {
      wc[i] = L::codes(w[i][b]);
      if constexpr (L::kSigned && kVnni) {
        wc[i] = _mm256_xor_si256(wc[i], _mm256_set1_epi8(char(0x80)));  // w + 128 as u8: no 16-bit saturation in vpdpbusd
      } else if constexpr (L::kSigned) {
        ws[i] = wc[i];
        wc[i] = _mm256_sign_epi8(wc[i], wc[i]);  // |w| as u8 (|-128| = 128 fits)
      }
      dw[i] = _mm256_set1_ps(L::d(w[i][b]));
      if constexpr (L::kMin) mw[i] = _mm256_set1_ps(L::m(w[i][b]));
    }
    for (int j = 0; j < RA; ++j) {
      const block_q8_act& ab = a[j][b];
      const __m256i aq = load256(ab.qs);
      const __m256 da = _mm256_set1_ps(ab.d);
      // Offset formats: sum (q - o) a = sum q a - o sum a, the o sum a spread over the 8 lanes.
      // Q8_0 under VNNI: codes w + 128, offset 128.
      constexpr int kOff = (L::kSigned && kVnni) ? 128 : L::kOffset;
      const __m256i init = kOff ? _mm256_set1_epi32(-(kOff / 8) * ab.sum) : _mm256_setzero_si256();
      __m256 sa;
      if constexpr (L::kMin) sa = _mm256_set1_ps(ab.s * 0.125f);  // m d_a sum a, spread over 8 lanes
      for (int i = 0; i < RW; ++i) {
        __m256i is;
        if constexpr (L::kSigned && !kVnni) {  // maddubs: |w| times sign(w) a (w + 128 would saturate)
          is = dot_u8s8<kVnni>(init, wc[i], _mm256_sign_epi8(aq, ws[i]));
        } else {
          is = dot_u8s8<kVnni>(init, wc[i], aq);
        }
        acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), _mm256_mul_ps(dw[i], da), acc[i][j]);
        if constexpr (kSplitMin) {
          macc[i][j] = _mm256_fmadd_ps(mw[i], sa, macc[i][j]);
        } else if constexpr (L::kMin) {
          acc[i][j] = _mm256_fmadd_ps(mw[i], sa, acc[i][j]);
        }
      }
    }
  }
  for (int j = 0; j < nt; ++j)
    for (int i = 0; i < nr; ++i)
      g.y[(t + j) * g.ldy + r + i] = hsum(kSplitMin ? _mm256_add_ps(acc[i][j], macc[i][j]) : acc[i][j]);
}

// --- K-quants (256-element super-blocks) ------------------------------------------------------------
// codes(b, c): the 32 u8 codes of elements 32 c .. 32 c + 31. prep(b, p): the kquant_dot description
// (q8_k.h) in registers: d, dm, mins (16 int16, one per 16 elements), and scale(p, c): the int16 scales
// of chunk c (lanes 0-7: sub-block 2c, lanes 8-15: sub-block 2c + 1, as maddubs keeps element order).

// Per-16 scales kept as int16[16]; chunk c's pair (sc[2c], sc[2c+1]) broadcast and spread to the halves.
// The pair is dword c of the 16 scales (one vector: the compiler keeps it in a register across the
// unrolled chunks), spread by a dword permute and a byte shuffle.
struct Scales16 {
  alignas(32) int16_t sc[16];
  __m256i scale(int c) const {
    const __m256i ctrl = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,  //
                                          2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
    const __m256i all = _mm256_load_si256(reinterpret_cast<const __m256i*>(sc));
    return _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(all, _mm256_set1_epi32(c)), ctrl);
  }
};

struct KPrep16 : Scales16 {
  float d, dm;
  __m256i mins;
};
// Per-32 scales (Q4_K, Q5_K): chunk c has one scale. sc16 holds the 8 scales as int16 in both 128-bit
// lanes, so chunk c's broadcast is one byte shuffle (a constant control once the chunk loop is
// unrolled) instead of a load, a move and a broadcast.
struct KPrep32 {
  uint8_t sc[8];
  float d, dm;
  __m256i mins;
  __m256i sc16;
  __m256i scale(int c) const {
    return _mm256_shuffle_epi8(sc16, _mm256_set1_epi16(int16_t(0x0100 + 0x0202 * c)));  // bytes 2c, 2c + 1
  }
};

// Q4_K / Q5_K 6-bit scales and mins with three 32-bit masks (llama.cpp's utmp unpacking):
// afterwards bytes 0-7 are sc[0..7], bytes 8-15 m[0..7] (k4_scale_min in q4_k.h, 4 at a time).
inline void k4_prep(const uint8_t* scales, uint16_t d, uint16_t dmin, KPrep32& p) {
  uint32_t u[4];
  std::memcpy(u, scales, 12);
  const uint32_t kmask1 = 0x3f3f3f3f, kmask2 = 0x0f0f0f0f, kmask3 = 0x03030303;
  u[3] = ((u[2] >> 4) & kmask2) | (((u[1] >> 6) & kmask3) << 4);
  const uint32_t m_lo = u[1] & kmask1;
  u[1] = (u[2] & kmask2) | (((u[0] >> 6) & kmask3) << 4);
  u[2] = m_lo;
  u[0] &= kmask1;
  std::memcpy(p.sc, u, 8);
  p.sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(u))));
  const __m128i m8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(u + 2));
  p.mins = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));  // m_j for both 16-halves of sub-block j
  p.d = h2f(d);
  p.dm = h2f(dmin);
}

struct KQ2_K {
  using Block = block_q2_k;
  using Prep = KPrep16;
  static void prep(const Block& b, Prep& p) {
    const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.scales));
    const __m128i m = _mm_set1_epi8(0x0F);
    _mm256_store_si256(reinterpret_cast<__m256i*>(p.sc), _mm256_cvtepu8_epi16(_mm_and_si128(x, m)));
    p.mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(x, 4), m));
    p.d = h2f(b.d);
    p.dm = h2f(b.dmin);
  }
  static __m256i codes(const Block& b, int c) { return srl8(load256(b.qs + 32 * (c >> 2)), 2 * (c & 3), 3); }
};
struct KQ3_K {
  using Block = block_q3_k;
  using Prep = KPrep16;
  // q3_k_scale (q3_k.h) for all 16 sub-blocks at once: low nibbles from scales[0..7] (j < 8: low halves,
  // j >= 8: high halves), the 2 high bits from scales[8 + (j & 3)] >> 2 (j >> 2); minus 32. The u32 of
  // scales[8..11] broadcast to four lanes lays byte j & 3 at byte j; lane k shifted by 2k puts the
  // wanted bit pair at the bottom of every byte (what spills in from the byte above lands higher).
  static void prep(const Block& b, Prep& p) {
    uint64_t lo8;
    uint32_t hi4;
    std::memcpy(&lo8, b.scales, 8);
    std::memcpy(&hi4, b.scales + 8, 4);
    const __m128i l = _mm_cvtsi64_si128(static_cast<long long>(lo8));
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_unpacklo_epi64(_mm_and_si128(l, m4), _mm_and_si128(_mm_srli_epi16(l, 4), m4));
    const __m128i hi = _mm_and_si128(_mm_srlv_epi32(_mm_set1_epi32(int(hi4)), _mm_setr_epi32(0, 2, 4, 6)),
                                     _mm_set1_epi8(3));
    const __m128i s8 = _mm_sub_epi8(_mm_or_si128(lo, _mm_slli_epi16(hi, 4)), _mm_set1_epi8(32));
    const __m256i sc = _mm256_cvtepi8_epi16(s8);
    _mm256_store_si256(reinterpret_cast<__m256i*>(p.sc), sc);
    p.mins = _mm256_slli_epi16(sc, 2);  // 4 * sc: the code offset
    p.d = h2f(b.d);
    p.dm = p.d;
  }
  static __m256i codes(const Block& b, int c) {
    const __m256i lo = srl8(load256(b.qs + 32 * (c >> 2)), 2 * (c & 3), 3);
    return _mm256_or_si256(lo, _mm256_slli_epi16(srl8(load256(b.hmask), c, 1), 2));
  }
};
struct KQ4_K {
  using Block = block_q4_k;
  using Prep = KPrep32;
  static void prep(const Block& b, Prep& p) { k4_prep(b.scales, b.d, b.dmin, p); }
  static __m256i codes(const Block& b, int c) { return srl8(load256(b.qs + 32 * (c >> 1)), 4 * (c & 1), 0xF); }
};
struct KQ5_K {
  using Block = block_q5_k;
  using Prep = KPrep32;
  static void prep(const Block& b, Prep& p) { k4_prep(b.scales, b.d, b.dmin, p); }
  static __m256i codes(const Block& b, int c) {
    const __m256i lo = srl8(load256(b.qs + 32 * (c >> 1)), 4 * (c & 1), 0xF);
    return _mm256_or_si256(lo, _mm256_slli_epi16(srl8(load256(b.qh), c, 1), 4));
  }
};
struct KQ6_K {
  using Block = block_q6_k;
  using Prep = KPrep16;
  static void prep(const Block& b, Prep& p) {
    const __m256i sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.scales)));
    _mm256_store_si256(reinterpret_cast<__m256i*>(p.sc), sc);
    p.mins = _mm256_slli_epi16(sc, 5);  // 32 * sc: the code offset
    p.d = h2f(b.d);
    p.dm = p.d;
  }
  static __m256i codes(const Block& b, int c) {
    const int g = c >> 2, s = c & 3;
    const __m256i lo = srl8(load256(b.ql + 64 * g + 32 * (s & 1)), 4 * (s >> 1), 0xF);
    return _mm256_or_si256(lo, _mm256_slli_epi16(srl8(load256(b.qh + 32 * g), 2 * s, 3), 4));
  }
};

template <typename K, bool kVnni, int RW, int RA>
inline void tile_k(const GemmArgs& g, int64_t r, int nr, int64_t t, int nt) {
  using Block = typename K::Block;
  const Block* w[RW];
  const block_q8_k* a[RA];
  for (int i = 0; i < RW; ++i) w[i] = reinterpret_cast<const Block*>(g.w + (r + (i < nr ? i : nr - 1)) * g.w_stride);
  for (int j = 0; j < RA; ++j) a[j] = reinterpret_cast<const block_q8_k*>(g.a + (t + (j < nt ? j : nt - 1)) * g.a_stride);
  __m256 acc[RW][RA];
  for (int i = 0; i < RW; ++i)
    for (int j = 0; j < RA; ++j) acc[i][j] = _mm256_setzero_ps();

  // VNNI decode: vpdpwssd accumulates in place (latency ~5), so even and odd chunks use separate
  // integer accumulators; prefill has RW * RA independent chains instead.
  constexpr bool kSplit = kVnni && RA == 1;
  for (int64_t b = 0; b < g.nb; ++b) {
    if constexpr (RA == 1)
      for (int i = 0; i < RW; ++i)
        for (int off = 0; off < int(sizeof(Block)); off += 64)
          _mm_prefetch(reinterpret_cast<const char*>(w[i] + b) + RW * g.w_stride + off, _MM_HINT_T0);
    typename K::Prep p[RW];
    for (int i = 0; i < RW; ++i) K::prep(w[i][b], p[i]);
    __m256i iacc[RW][RA], iacc2[RW][RA];
    for (int i = 0; i < RW; ++i)
      for (int j = 0; j < RA; ++j) iacc[i][j] = iacc2[i][j] = _mm256_setzero_si256();
    // Unrolled, so every chunk's shift count and scale lane are constants.
#pragma GCC unroll 8
    for (int c = 0; c < 8; ++c) {
      __m256i wc[RW], sv[RW];
      for (int i = 0; i < RW; ++i) {
        wc[i] = K::codes(w[i][b], c);
        sv[i] = p[i].scale(c);
      }
      for (int j = 0; j < RA; ++j) {
        const __m256i aq = load256(a[j][b].qs + 32 * c);
        for (int i = 0; i < RW; ++i) {
          __m256i& ia = (kSplit && (c & 1)) ? iacc2[i][j] : iacc[i][j];
          ia = dot_i16<kVnni>(ia, _mm256_maddubs_epi16(wc[i], aq), sv[i]);
        }
      }
    }
    if constexpr (kSplit)
      for (int i = 0; i < RW; ++i)
        for (int j = 0; j < RA; ++j) iacc[i][j] = _mm256_add_epi32(iacc[i][j], iacc2[i][j]);
    for (int i = 0; i < RW; ++i) {
      for (int j = 0; j < RA; ++j) {
        const block_q8_k& ab = a[j][b];
        const __m256i im = _mm256_madd_epi16(load256(ab.bsums), p[i].mins);
        acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc[i][j]), _mm256_set1_ps(p[i].d * ab.d), acc[i][j]);
        acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(im), _mm256_set1_ps(-(p[i].dm * ab.d)), acc[i][j]);
      }
    }
  }
  for (int j = 0; j < nt; ++j)
    for (int i = 0; i < nr; ++i) g.y[(t + j) * g.ldy + r + i] = hsum(acc[i][j]);
}

// --- float formats ------------------------------------------------------------------------------------

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const f16* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline __m256 load8(const bf16* p) {
  const __m256i x = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
}

template <typename T, int RW, int RA>
inline void tile_float(const GemmArgs& g, int64_t r, int nr, int64_t t, int nt) {
  const T* w[RW];
  const float* x[RA];
  for (int i = 0; i < RW; ++i) w[i] = reinterpret_cast<const T*>(g.w + (r + (i < nr ? i : nr - 1)) * g.w_stride);
  for (int j = 0; j < RA; ++j) x[j] = reinterpret_cast<const float*>(g.a + (t + (j < nt ? j : nt - 1)) * g.a_stride);
  __m256 acc[RW][RA];
  for (int i = 0; i < RW; ++i)
    for (int j = 0; j < RA; ++j) acc[i][j] = _mm256_setzero_ps();
  const int64_t k8 = g.cols / 8 * 8;
  for (int64_t k = 0; k < k8; k += 8) {
    __m256 wv[RW];
    for (int i = 0; i < RW; ++i) wv[i] = load8(w[i] + k);
    for (int j = 0; j < RA; ++j) {
      const __m256 xv = _mm256_loadu_ps(x[j] + k);
      for (int i = 0; i < RW; ++i) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
    }
  }
  for (int j = 0; j < nt; ++j)
    for (int i = 0; i < nr; ++i) {
      float s = hsum(acc[i][j]);
      for (int64_t k = k8; k < g.cols; ++k) s += to_float(w[i][k]) * x[j][k];
      g.y[(t + j) * g.ldy + r + i] = s;
    }
}

// --- drivers ----------------------------------------------------------------------------------------

// Runs Tile over [r0, r1) x [t0, t1): RW x RA tiles, or RWd x 1 when fewer than RA activation rows.
template <void (*Tile)(const GemmArgs&, int64_t, int, int64_t, int), int RW, int RA,
          void (*Tile1)(const GemmArgs&, int64_t, int, int64_t, int), int RWd>
void gemm_tiles(const GemmArgs& g, int64_t r0, int64_t r1, int64_t t0, int64_t t1) {
  if (t1 - t0 < RA) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t r = r0; r < r1; r += RWd) Tile1(g, r, int(r1 - r < RWd ? r1 - r : RWd), t, 1);
    return;
  }
  for (int64_t t = t0; t < t1; t += RA) {
    const int nt = int(t1 - t < RA ? t1 - t : RA);
    for (int64_t r = r0; r < r1; r += RW) Tile(g, r, int(r1 - r < RW ? r1 - r : RW), t, nt);
  }
}

// Tile sizes per register file: kRegs32 (AVX-512: 32 vector registers) or 16 (AVX2).
template <bool kVnni, bool kRegs32>
GemmFn x86_kernel(int type) {
  constexpr int LW = kRegs32 ? 4 : 2, LA = kRegs32 ? 4 : 4;  // legacy: RW*RA accumulators + RW codes
  constexpr int KW = kRegs32 ? 2 : 1, KA = kRegs32 ? 4 : 4;  // K: 2*RW*RA accumulators
  constexpr int KD = kRegs32 ? 4 : 2;                          // K decode rows
  constexpr int FW = kRegs32 ? 4 : 3, FA = kRegs32 ? 4 : 3;
  switch (QType(type)) {
#define SELFEXT_LEGACY(Q, L) \
  case QType::Q: return &gemm_tiles<tile_legacy<L, kVnni, LW, LA>, LW, LA, tile_legacy<L, kVnni, 4, 1>, 4>;
    SELFEXT_LEGACY(Q4_0, LQ4_0)
    SELFEXT_LEGACY(Q4_1, LQ4_1)
    SELFEXT_LEGACY(Q5_0, LQ5_0)
    SELFEXT_LEGACY(Q5_1, LQ5_1)
    SELFEXT_LEGACY(Q8_0, LQ8_0)
#undef SELFEXT_LEGACY
#define SELFEXT_K(Q, K) \
  case QType::Q: return &gemm_tiles<tile_k<K, kVnni, KW, KA>, KW, KA, tile_k<K, kVnni, KD, 1>, KD>;
    SELFEXT_K(Q2_K, KQ2_K)
    SELFEXT_K(Q3_K, KQ3_K)
    SELFEXT_K(Q4_K, KQ4_K)
    SELFEXT_K(Q5_K, KQ5_K)
    SELFEXT_K(Q6_K, KQ6_K)
#undef SELFEXT_K
    case QType::F32: return &gemm_tiles<tile_float<float, FW, FA>, FW, FA, tile_float<float, 4, 1>, 4>;
    case QType::F16: return &gemm_tiles<tile_float<f16, FW, FA>, FW, FA, tile_float<f16, 4, 1>, 4>;
    case QType::BF16: return &gemm_tiles<tile_float<bf16, FW, FA>, FW, FA, tile_float<bf16, 4, 1>, 4>;
    default: return nullptr;
  }
}

}  // namespace
}  // namespace selfext
