// AMX product kernels (AMX-TILE + AMX-INT8, e.g. Intel Sapphire Rapids and later) for prefill.
//
// One tile instruction (tdpbssd / tdpbsud) computes a 16 x 16 int32 tile of 32-element dot products of
// int8 codes: 8192 multiply-adds, where a 256-bit vpdpbusd does 32. The formats' scales change every
// 32 elements (a legacy block, or a K-quant sub-block), so each tile product covers exactly one such
// unit and is then widened and scaled into float32 accumulators in zmm registers — the same formula as
// the vector kernels (matmul_x86.h), summed in another order:
//   y[t, r] = sum_u d_w[r, u] d_a[t, u] I[t, r, u]  (+ min terms),  I = int8 dot product of unit u.
//
// Operands: A = 16 activation rows x 32 int8 codes, read in place from the 8-bit activation blocks
// (the rows are a_stride apart); B = 16 weight rows' codes in the tile's K-by-4 layout (B[k/4][4 r +
// k%4]), unpacked once per 16-row weight panel and reused by every activation tile of the task.
// Weight codes are signed where the format has an offset (Q4_0: q - 8, Q5_0: q - 16) or is signed
// (Q8_0), so no offset correction is needed (tdpbssd); the formats with a min keep unsigned codes
// (tdpbsud) and add their min term: legacy m_w * d_a * sum(a) per block (float, from the activation
// block), K-quants dmin * m_j * sum over the sub-block of a — an integer tile product of the
// activations with m_j repeated, accumulated over the 8 sub-blocks of a super-block in its own tile.
//
// Q3_K and Q6_K, whose scales change every 16 elements, use 16-element units (tiles of K = 16) with
// signed codes (q - 4, q - 32). What tiles do not cover (fewer than 16 weight rows or activation rows
// left, decode, Q2_K and the float formats) runs the avx512_vnni kernels compiled into this file from
// matmul_x86.h.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "quant/matmul_x86.h"

namespace selfext {
namespace {

constexpr int kTile = 16;        // output tile: 16 activation rows x 16 weight rows
constexpr int kUnitBytes = 512;  // one unit's B tile: 8 rows (K / 4) x 64 bytes (16 rows x 4 codes)

// Tile registers: 0 A (activations), 1 B (weight codes), 2 and 3 C (alternate units, so a unit's
// product can run while the previous one is drained), 4 B of the K-quant mins, 5 C of the mins.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// kUnitK: the elements of one unit (32, or 16 for the formats with a scale per 16 elements).
template <int kUnitK>
void configure_tiles() {
  TileConfig c;
  c.rows[0] = 16, c.colsb[0] = kUnitK;     // A: 16 rows of kUnitK int8
  c.rows[1] = kUnitK / 4, c.colsb[1] = 64;  // B: kUnitK / 4 rows of 16 x 4 codes
  c.rows[2] = 16, c.colsb[2] = 64;         // C: 16 x 16 int32
  c.rows[3] = 16, c.colsb[3] = 64;
  c.rows[4] = kUnitK / 4, c.colsb[4] = 64;  // B of the mins
  c.rows[5] = 16, c.colsb[5] = 64;         // C of the mins
  _tile_loadconfig(&c);
}

// Configures the tiles and releases the tile state when the kernel returns.
template <int kUnitK>
struct TileScope {
  TileScope() { configure_tiles<kUnitK>(); }
  ~TileScope() { _tile_release(); }
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;
};

// 16 rows x K codes (row-major, K bytes per row) into the B layout: int32 k4 of row r goes to
// dst[k4 * 16 + r], so a 64-byte B row k4 holds the four codes k4*4..k4*4+3 of all 16 rows.
template <int K = 32>
inline void to_b_layout(const uint8_t* rows, uint8_t* dst) {
  const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                         _mm512_set1_epi32(K / 4));
  for (int k4 = 0; k4 < K / 4; ++k4) {
    const __m512i v = _mm512_i32gather_epi32(_mm512_add_epi32(idx, _mm512_set1_epi32(k4)), rows, 4);
    _mm512_store_si512(reinterpret_cast<__m512i*>(dst + 64 * k4), v);
  }
}

// The per-thread buffer a panel is unpacked into (64-byte aligned, grown as needed).
uint8_t* panel_buffer(size_t bytes) {
  thread_local std::vector<uint8_t> buf;
  if (buf.size() < bytes + 64) buf.resize(bytes + 64);
  const uintptr_t p = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<uint8_t*>((p + 63) & ~uintptr_t(63));
}

// One unit's 16 x 16 product of tiles 0 (A) and 1 (B) into C tile 2 or 3 (alternating with the unit's
// parity, so the next unit's product can start while this one is widened), stored to cb.
template <bool kSignedB>
inline void unit_product(bool odd, int32_t* cb) {
  if (odd) {
    _tile_zero(3);
    if constexpr (kSignedB) _tile_dpbssd(3, 0, 1); else _tile_dpbsud(3, 0, 1);
    _tile_stored(3, cb, 64);
  } else {
    _tile_zero(2);
    if constexpr (kSignedB) _tile_dpbssd(2, 0, 1); else _tile_dpbsud(2, 0, 1);
    _tile_stored(2, cb, 64);
  }
}

// acc[j] += C[j] * scale * da[j]: a stored int32 tile (row j = activation row j) widened and scaled by
// the weight rows' scales (lanes) and the activation rows' scales (da).
inline void widen_scaled(const int32_t* cb, __m512 scale, const float* da, __m512* acc) {
  for (int j = 0; j < kTile; ++j) {
    const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(cb + 16 * j)), scale);
    acc[j] = _mm512_fmadd_ps(v, _mm512_set1_ps(da[j]), acc[j]);
  }
}

// --- legacy 32-element formats --------------------------------------------------------------------

// Panel of 16 weight rows: per block u, the B tile (512 bytes), then 16 scales d and 16 mins m.
template <typename L>
struct LegacyPanel {
  static constexpr bool kSignedCodes = L::kSigned || L::kOffset != 0;
  static constexpr size_t kBlockBytes = kUnitBytes + 2 * 64;  // per weight block

  static void build(const GemmArgs& g, int64_t r, uint8_t* panel) {
    using Block = typename L::Block;
    alignas(64) uint8_t rows32[kTile * 32];
    for (int64_t u = 0; u < g.nb; ++u) {
      uint8_t* unit = panel + u * kBlockBytes;
      float* d = reinterpret_cast<float*>(unit + kUnitBytes);
      float* m = d + 16;
      for (int i = 0; i < kTile; ++i) {
        const Block& b = reinterpret_cast<const Block*>(g.w + (r + i) * g.w_stride)[u];
        __m256i c = L::codes(b);
        if constexpr (L::kOffset != 0) c = _mm256_sub_epi8(c, _mm256_set1_epi8(char(L::kOffset)));
        _mm256_store_si256(reinterpret_cast<__m256i*>(rows32 + 32 * i), c);
        d[i] = L::d(b);
        m[i] = L::m(b);
      }
      to_b_layout(rows32, unit);
    }
  }
};

template <typename L>
void amx_tile_legacy(const GemmArgs& g, const uint8_t* panel, int64_t r, int64_t t) {
  using P = LegacyPanel<L>;
  alignas(64) int32_t cbuf[2][kTile * kTile];
  __m512 acc[kTile];
  for (int j = 0; j < kTile; ++j) acc[j] = _mm512_setzero_ps();
  const uint8_t* a0 = g.a + t * g.a_stride;
  for (int64_t u = 0; u < g.nb; ++u) {
    const uint8_t* unit = panel + u * P::kBlockBytes;
    const uint8_t* aq = a0 + u * int64_t(sizeof(block_q8_act)) + offsetof(block_q8_act, qs);
    _tile_loadd(0, aq, g.a_stride);
    _tile_loadd(1, unit, 64);
    int32_t* c = cbuf[u & 1];
    unit_product<P::kSignedCodes>(u & 1, c);
    alignas(64) float da[kTile], sa[kTile];
    for (int j = 0; j < kTile; ++j) {
      const block_q8_act& a = *reinterpret_cast<const block_q8_act*>(aq - offsetof(block_q8_act, qs) + j * g.a_stride);
      da[j] = a.d;
      sa[j] = a.s;
    }
    widen_scaled(c, _mm512_load_ps(reinterpret_cast<const float*>(unit + kUnitBytes)), da, acc);
    if constexpr (L::kMin) {
      const __m512 mw = _mm512_load_ps(reinterpret_cast<const float*>(unit + kUnitBytes + 64));
      for (int j = 0; j < kTile; ++j) acc[j] = _mm512_fmadd_ps(mw, _mm512_set1_ps(sa[j]), acc[j]);
    }
  }
  for (int j = 0; j < kTile; ++j) _mm512_storeu_ps(g.y + (t + j) * g.ldy + r, acc[j]);
}

// --- K-quants with one scale per 32 elements (Q4_K, Q5_K) -------------------------------------------

// Panel of 16 weight rows: per super-block, for each of its 8 sub-blocks the B tile of the codes, the
// B tile of the mins (m_j of each row in all four bytes of every int32), and d * sc_j (16 floats);
// then -dmin (16 floats).
template <typename K>
struct KPanel {
  static constexpr size_t kSub = 2 * kUnitBytes + 64;
  static constexpr size_t kBlockBytes = 8 * kSub + 64;  // per super-block

  static void build(const GemmArgs& g, int64_t r, uint8_t* panel) {
    using Block = typename K::Block;
    alignas(64) uint8_t rows32[8][kTile * 32];
    alignas(32) int16_t mins[16];
    for (int64_t b = 0; b < g.nb; ++b) {
      uint8_t* sb = panel + b * kBlockBytes;
      float* ndm = reinterpret_cast<float*>(sb + 8 * kSub);
      for (int i = 0; i < kTile; ++i) {
        const Block& blk = reinterpret_cast<const Block*>(g.w + (r + i) * g.w_stride)[b];
        typename K::Prep p;
        K::prep(blk, p);
        _mm256_store_si256(reinterpret_cast<__m256i*>(mins), p.mins);  // m_j at lanes 2j and 2j + 1
        for (int c = 0; c < 8; ++c) {
          _mm256_store_si256(reinterpret_cast<__m256i*>(rows32[c] + 32 * i), K::codes(blk, c));
          uint8_t* sub = sb + c * kSub;
          reinterpret_cast<float*>(sub + 2 * kUnitBytes)[i] = p.d * float(p.sc[c]);
          // the mins B tile: row k4, column i = m_j repeated in the four bytes
          const int32_t rep = int32_t(uint32_t(uint16_t(mins[2 * c])) * 0x01010101u);
          for (int k4 = 0; k4 < 8; ++k4) reinterpret_cast<int32_t*>(sub + kUnitBytes)[k4 * 16 + i] = rep;
        }
        ndm[i] = -p.dm;
      }
      for (int c = 0; c < 8; ++c) to_b_layout(rows32[c], sb + c * kSub);
    }
  }
};

template <typename K>
void amx_tile_k(const GemmArgs& g, const uint8_t* panel, int64_t r, int64_t t) {
  using P = KPanel<K>;
  alignas(64) int32_t cbuf[2][kTile * kTile];
  alignas(64) int32_t mbuf[kTile * kTile];
  __m512 acc[kTile];
  for (int j = 0; j < kTile; ++j) acc[j] = _mm512_setzero_ps();
  const uint8_t* a0 = g.a + t * g.a_stride;
  for (int64_t b = 0; b < g.nb; ++b) {
    const uint8_t* sb = panel + b * P::kBlockBytes;
    const uint8_t* ablk = a0 + b * int64_t(sizeof(block_q8_k));
    _tile_zero(5);
    // d_a of each activation row for this super-block, as 16 floats
    alignas(64) float da[kTile];
    for (int j = 0; j < kTile; ++j) da[j] = reinterpret_cast<const block_q8_k*>(ablk + j * g.a_stride)->d;
    for (int c = 0; c < 8; ++c) {
      const uint8_t* sub = sb + c * P::kSub;
      _tile_loadd(0, ablk + offsetof(block_q8_k, qs) + 32 * c, g.a_stride);
      _tile_loadd(1, sub, 64);
      _tile_loadd(4, sub + kUnitBytes, 64);
      _tile_dpbsud(5, 0, 4);  // sum over the sub-block of a, times m_j: the mins, all 8 sub-blocks
      int32_t* cb = cbuf[c & 1];
      unit_product</*kSignedB=*/false>(c & 1, cb);
      widen_scaled(cb, _mm512_load_ps(reinterpret_cast<const float*>(sub + 2 * kUnitBytes)), da, acc);
    }
    _tile_stored(5, mbuf, 64);
    widen_scaled(mbuf, _mm512_load_ps(reinterpret_cast<const float*>(sb + 8 * P::kSub)), da, acc);
  }
  for (int j = 0; j < kTile; ++j) _mm512_storeu_ps(g.y + (t + j) * g.ldy + r, acc[j]);
}

// --- K-quants with one signed scale per 16 elements and a code offset (Q3_K: 4, Q6_K: 32) -----------
// w = d sc_j (q - o): the codes minus o are int8, so each 16-element unit is one tdpbssd (K = 16) with
// no min term; the unit's d * sc_j is applied in the drain.

template <typename K, int kOffset>
struct KPanel16 {
  static constexpr size_t kSub = kUnitBytes / 2 + 64;  // B tile (4 rows x 64 bytes) + 16 d * sc_j
  static constexpr size_t kBlockBytes = 16 * kSub;    // per super-block

  static void build(const GemmArgs& g, int64_t r, uint8_t* panel) {
    using Block = typename K::Block;
    alignas(64) uint8_t rows16[16][kTile * 16];
    for (int64_t b = 0; b < g.nb; ++b) {
      uint8_t* sb = panel + b * kBlockBytes;
      for (int i = 0; i < kTile; ++i) {
        const Block& blk = reinterpret_cast<const Block*>(g.w + (r + i) * g.w_stride)[b];
        typename K::Prep p;
        K::prep(blk, p);
        for (int c = 0; c < 8; ++c) {
          alignas(32) uint8_t codes[32];
          _mm256_store_si256(reinterpret_cast<__m256i*>(codes),
                             _mm256_sub_epi8(K::codes(blk, c), _mm256_set1_epi8(char(kOffset))));
          std::memcpy(rows16[2 * c] + 16 * i, codes, 16);
          std::memcpy(rows16[2 * c + 1] + 16 * i, codes + 16, 16);
        }
        for (int j = 0; j < 16; ++j) reinterpret_cast<float*>(sb + j * kSub + kUnitBytes / 2)[i] = p.d * float(p.sc[j]);
      }
      for (int j = 0; j < 16; ++j) to_b_layout<16>(rows16[j], sb + j * kSub);
    }
  }
};

template <typename K, int kOffset>
void amx_tile_k16(const GemmArgs& g, const uint8_t* panel, int64_t r, int64_t t) {
  using P = KPanel16<K, kOffset>;
  alignas(64) int32_t cbuf[2][kTile * kTile];
  __m512 acc[kTile];
  for (int j = 0; j < kTile; ++j) acc[j] = _mm512_setzero_ps();
  const uint8_t* a0 = g.a + t * g.a_stride;
  for (int64_t b = 0; b < g.nb; ++b) {
    const uint8_t* sb = panel + b * P::kBlockBytes;
    const uint8_t* ablk = a0 + b * int64_t(sizeof(block_q8_k));
    alignas(64) float da[kTile];
    for (int j = 0; j < kTile; ++j) da[j] = reinterpret_cast<const block_q8_k*>(ablk + j * g.a_stride)->d;
    for (int u = 0; u < 16; ++u) {
      const uint8_t* sub = sb + u * P::kSub;
      _tile_loadd(0, ablk + offsetof(block_q8_k, qs) + 16 * u, g.a_stride);
      _tile_loadd(1, sub, 64);
      int32_t* cb = cbuf[u & 1];
      unit_product</*kSignedB=*/true>(u & 1, cb);
      widen_scaled(cb, _mm512_load_ps(reinterpret_cast<const float*>(sub + kUnitBytes / 2)), da, acc);
    }
  }
  for (int j = 0; j < kTile; ++j) _mm512_storeu_ps(g.y + (t + j) * g.ldy + r, acc[j]);
}

// --- driver -----------------------------------------------------------------------------------------

// [r0, r1) x [t0, t1): whole 16 x 16 tiles on AMX (each 16-row panel unpacked once and passed over
// every activation tile), the rest on the avx512_vnni kernel.
template <typename Panel, void (*Tile)(const GemmArgs&, const uint8_t*, int64_t, int64_t), GemmFn kFallback,
          int kUnitK = 32>
void gemm_amx(const GemmArgs& g, int64_t r0, int64_t r1, int64_t t0, int64_t t1) {
  const int64_t r16 = r0 + (r1 - r0) / kTile * kTile, t16 = t0 + (t1 - t0) / kTile * kTile;
  if (r16 > r0 && t16 > t0) {
    TileScope<kUnitK> tiles;
    uint8_t* panel = panel_buffer(size_t(g.nb) * Panel::kBlockBytes);
    for (int64_t r = r0; r < r16; r += kTile) {
      Panel::build(g, r, panel);
      for (int64_t t = t0; t < t16; t += kTile) Tile(g, panel, r, t);
    }
  }
  if (t16 > t0 && r16 < r1) kFallback(g, r16, r1, t0, t16);
  if (t16 < t1) kFallback(g, r0, r1, t16, t1);
}

// The avx512_vnni kernels (matmul_x86.h's tiles, as x86_kernel<true, true> picks them), for what
// tiles do not cover.
template <typename L>
constexpr GemmFn kLegacyVnni = &gemm_tiles<tile_legacy<L, true, 4, 4>, 4, 4, tile_legacy<L, true, 4, 1>, 4>;
template <typename K>
constexpr GemmFn kKVnni = &gemm_tiles<tile_k<K, true, 2, 4>, 2, 4, tile_k<K, true, 4, 1>, 4>;

}  // namespace

bool amx_covers(int type) {
  switch (QType(type)) {
    case QType::Q4_0: case QType::Q4_1: case QType::Q5_0: case QType::Q5_1: case QType::Q8_0:
    case QType::Q3_K: case QType::Q4_K: case QType::Q5_K: case QType::Q6_K:
      return true;
    default:
      return false;
  }
}

GemmFn gemm_kernel_amx(int type) {
  switch (QType(type)) {
#define SELFEXT_AMX_LEGACY(Q, L) \
  case QType::Q: return &gemm_amx<LegacyPanel<L>, amx_tile_legacy<L>, kLegacyVnni<L>>;
    SELFEXT_AMX_LEGACY(Q4_0, LQ4_0)
    SELFEXT_AMX_LEGACY(Q4_1, LQ4_1)
    SELFEXT_AMX_LEGACY(Q5_0, LQ5_0)
    SELFEXT_AMX_LEGACY(Q5_1, LQ5_1)
    SELFEXT_AMX_LEGACY(Q8_0, LQ8_0)
#undef SELFEXT_AMX_LEGACY
    case QType::Q4_K: return &gemm_amx<KPanel<KQ4_K>, amx_tile_k<KQ4_K>, kKVnni<KQ4_K>>;
    case QType::Q5_K: return &gemm_amx<KPanel<KQ5_K>, amx_tile_k<KQ5_K>, kKVnni<KQ5_K>>;
    case QType::Q3_K: return &gemm_amx<KPanel16<KQ3_K, 4>, amx_tile_k16<KQ3_K, 4>, kKVnni<KQ3_K>, 16>;
    case QType::Q6_K: return &gemm_amx<KPanel16<KQ6_K, 32>, amx_tile_k16<KQ6_K, 32>, kKVnni<KQ6_K>, 16>;
    default: return x86_kernel</*kVnni=*/true, /*kRegs32=*/true>(type);
  }
}

}  // namespace selfext
