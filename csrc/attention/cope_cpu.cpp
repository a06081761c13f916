// Fused CoPE attention on the CPU (Golovneva et al. 2024, arXiv 2405.18719; the formulas are in
// attention/cope.h). Per kv head: keys packed once into panels (rotated at their positions first when the
// model also uses RoPE, rope_dim > 0), then tasks (query head x query block) walk the key tiles backwards
// from the diagonal, carrying each query's running gate sum:
//   logits s = Q·Kᵀ·scale (one tile), gates sigmoid(s), suffix sums p (carried in double: up to
//   npos_max - 1 = 1023 gates are added, and float32 would lose ~1e-4 of a position), the interpolated
//   position logit z from the query's integer logits <q, e[t]> (computed once per query block), online
//   softmax, P·V. Gates are >= 0, so once a query's sum reaches npos_max - 1 every earlier key has the
//   same z = <q, e[npos_max - 1]>: from then on the tile is plain attention plus a per-row constant.
// Nothing of size T_q x T_k is stored; scratch is O(T_k * D) per kv head plus one tile set per thread.
#include <algorithm>
#include <cmath>
#include <vector>

#include "attention/attention_cpu.h"
#include "attention/cope.h"
#include "attention/params.h"
#include "core/errors.h"
#include "core/thread_pool.h"

namespace selfext {
namespace {

float* cope_scratch(size_t n) {
  thread_local std::vector<float> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// cope.h's cope_interp with the position in double (see the note at the top).
inline float cope_interp_double(double pos, const float* pos_logits) {
  const double lo = std::floor(pos);
  const int il = int(lo);
  const double frac = pos - lo;
  const int ih = frac > 0.0 ? il + 1 : il;
  return float(frac * double(pos_logits[ih]) + (1.0 - frac) * double(pos_logits[il]));
}

// Adds z to one query's logits row[0, valid) (keys j0 .. j0 + valid - 1, scanned from the last one) and
// masks row[valid, kAttnBlockK). carry: the gate sum of the keys after this block; sat: carry reached the
// clamp, so every remaining key gets z = pos_logits[npos_max - 1]. pos_logits already multiplied by zmul.
void cope_apply_row(const AttnCpuKernels& kr, float* row, int valid, int row_len, double& carry, bool& sat,
                    const float* pos_logits, int npos_max, float* g) {
  const double top = double(npos_max - 1);
  if (sat) {
    const float zs = pos_logits[npos_max - 1];
    for (int c = 0; c < valid; ++c) row[c] += zs;
  } else if (valid > 0) {
    kr.sigmoid(row, g, valid);
    double cs = carry;
    for (int c = valid - 1; c >= 0; --c) {
      cs += double(g[c]);
      row[c] += cope_interp_double(cs < top ? cs : top, pos_logits);
    }
    carry = cs;
    sat = cs >= top;
  }
  for (int c = valid; c < row_len; ++c) row[c] = -INFINITY;
}

// Pack rows [0, n_rows) of e (n_rows used of (npos_max, D), contiguous rows) into panels (D, kAttnBlockK).
void pack_pos_emb(const AttnCpuKernels& kr, const void* e, DType dtype, int D, int64_t n_rows, float* panels) {
  const int64_t n_blocks = (n_rows + kAttnBlockK - 1) / kAttnBlockK;
  float row[kAttnMaxHeadDim];
  for (int64_t b = 0; b < n_blocks; ++b) {
    float* panel = panels + b * int64_t(D) * kAttnBlockK;
    for (int jj = 0; jj < kAttnBlockK; ++jj) {
      const int64_t t = b * kAttnBlockK + jj;
      if (t < n_rows)
        kr.load_row(attn_elem(e, dtype, t * D), dtype, nullptr, 0, RopeStyle::kNorm, 1.f, row);
      for (int d = 0; d < D; ++d) panel[d * kAttnBlockK + jj] = t < n_rows ? row[d] : 0.f;
    }
  }
}

// Decode (T_q = 1): one task per kv head, its H/H_kv query heads stacked as rows; keys walked backwards in
// blocks straight from the cache (converted, rotated when rope_dim > 0, row-major: no panel packing for a
// single query). The carried gate sum makes the key walk sequential, so the split is over kv heads only.
void cope_decode(const AttentionParams& p, ThreadPool& pool, const AttnCpuKernels& kr) {
  const int D = p.head_dim, H = p.n_heads, Hg = p.n_heads / p.n_kv_heads;
  const int64_t T_k = p.T_k, i = T_k - 1;
  const bool per_head = p.pe_stride_h != 0;
  const int64_t n_pos = std::min<int64_t>(p.npos_max, T_k + 1);
  const float zmul = p.scale_pos_logits ? p.scale : 1.f;
  std::vector<float> qr(size_t(H) * D), qs(size_t(H) * D), pl(size_t(H) * n_pos);
  std::vector<float> e_rows(size_t(n_pos) * D);
  for (int h = 0; h < H; ++h) {
    const float* rn = p.rope_dim > 0 ? p.rope_table + i * p.rope_dim : nullptr;
    kr.load_row(attn_elem(p.q, p.q_dtype, h * p.q_stride_h), p.q_dtype, rn, p.rope_dim, p.rope_style, 1.f,
                qr.data() + h * D);
    for (int d = 0; d < D; ++d) qs[h * D + d] = qr[h * D + d] * p.scale;
    if (h == 0 || per_head)
      for (int64_t t = 0; t < n_pos; ++t)
        kr.load_row(attn_elem(p.pos_emb, p.q_dtype, h * p.pe_stride_h + t * D), p.q_dtype, nullptr, 0,
                    RopeStyle::kNorm, 1.f, e_rows.data() + t * D);
    kr.qk_rows(qr.data() + h * D, 1, e_rows.data(), D, int(n_pos), pl.data() + h * n_pos, n_pos);
    if (zmul != 1.f)
      for (int64_t t = 0; t < n_pos; ++t) pl[h * n_pos + t] *= zmul;
  }
  pool.parallel_for(p.n_kv_heads, [&](int64_t kvh) {
    float* kbuf = cope_scratch(size_t(2 * kAttnBlockK) * D + size_t(Hg) * (kAttnBlockK + D + 2) + kAttnBlockK);
    float* vbuf = kbuf + kAttnBlockK * D;  // (kAttnBlockK, D) keys (rotated), values
    float* s = vbuf + kAttnBlockK * D;     // (Hg, kAttnBlockK)
    float* acc = s + Hg * kAttnBlockK;     // (Hg, D)
    float* m = acc + Hg * D;
    float* l = m + Hg;
    float* g = l + Hg;
    std::vector<double> carry(size_t(Hg), 0.0);
    std::vector<char> sat(size_t(Hg), 0);
    for (int r = 0; r < Hg; ++r) {
      m[r] = -INFINITY;
      l[r] = 0.f;
    }
    std::fill(acc, acc + Hg * D, 0.f);
    for (int64_t kb = (T_k - 1) / kAttnBlockK; kb >= 0; --kb) {
      const int64_t j0 = kb * kAttnBlockK;
      const int nk = int(std::min<int64_t>(kAttnBlockK, T_k - j0));
      for (int jj = 0; jj < nk; ++jj) {
        const int64_t j = j0 + jj;
        const float* rn = p.rope_dim > 0 ? p.rope_table + j * p.rope_dim : nullptr;
        kr.load_row(attn_elem(p.k, p.kv_dtype, j * p.k_stride_t + kvh * p.k_stride_h), p.kv_dtype, rn, p.rope_dim,
                    p.rope_style, 1.f, kbuf + jj * D);
        kr.load_row(attn_elem(p.v, p.kv_dtype, j * p.v_stride_t + kvh * p.v_stride_h), p.kv_dtype, nullptr, 0,
                    RopeStyle::kNorm, 1.f, vbuf + jj * D);
      }
      kr.qk_rows(qs.data() + kvh * Hg * D, Hg, kbuf, D, nk, s, kAttnBlockK);
      for (int r = 0; r < Hg; ++r) {
        bool sr = sat[r] != 0;
        cope_apply_row(kr, s + r * kAttnBlockK, nk, nk, carry[r], sr, pl.data() + (kvh * Hg + r) * n_pos,
                       p.npos_max, g);
        sat[r] = sr;
      }
      kr.softmax_update(s, Hg, nk, kAttnBlockK, m, l, acc);
      kr.pv(s, Hg, nk, kAttnBlockK, vbuf, DType::kFloat32, D, acc);
    }
    for (int r = 0; r < Hg; ++r) {
      const int h = int(kvh) * Hg + r;
      attn_store_row(attn_elem(p.out, p.out_dtype, h * p.out_stride_h), p.out_dtype, acc + r * D, 1.f / l[r], D);
    }
  });
}

}  // namespace

void cope_attention_cpu(const AttentionParams& p, ThreadPool& pool) {
  attn_cpu_validate(p, "cope_attention");
  SELFEXT_CHECK(p.npos_max >= 2, ArgumentError, "cope_attention: npos_max must be >= 2, got ", p.npos_max);
  SELFEXT_CHECK(p.pos_emb != nullptr, ArgumentError, "cope_attention: pos_emb must be non-null");
  const AttnCpuKernels& kr = attn_cpu_kernels(p.head_dim);
  if (p.T_q == 1) return cope_decode(p, pool, kr);
  const int D = p.head_dim, Hg = p.n_heads / p.n_kv_heads;
  const int64_t T_q = p.T_q, T_k = p.T_k, i_min = T_k - T_q;
  const bool per_head = p.pe_stride_h != 0;
  // Positions never exceed the number of visible keys (each gate <= 1): rows past T_k are never read.
  const int64_t n_pos = std::min<int64_t>(p.npos_max, T_k + 1);
  const int64_t n_eb = (n_pos + kAttnBlockK - 1) / kAttnBlockK;
  const int64_t ld_pl = n_eb * kAttnBlockK;
  const float zmul = p.scale_pos_logits ? p.scale : 1.f;  // released code: (qk + z) * scale
  const int64_t n_kb = (T_k + kAttnBlockK - 1) / kAttnBlockK;
  const int64_t panel = int64_t(D) * kAttnBlockK;
  std::vector<float> kp(size_t(n_kb * panel));
  std::vector<float> vp(size_t(T_k) * D);  // (T_k, D) values of one kv head, float32
  std::vector<float> ep(size_t((per_head ? Hg : 1) * n_eb * panel));
  if (!per_head) pack_pos_emb(kr, p.pos_emb, p.q_dtype, D, n_pos, ep.data());
  const int64_t n_qb = (T_q + kAttnBlockQ - 1) / kAttnBlockQ;

  for (int kvh = 0; kvh < p.n_kv_heads; ++kvh) {
    const void* k_head = attn_elem(p.k, p.kv_dtype, kvh * p.k_stride_h);
    const void* v_head = attn_elem(p.v, p.kv_dtype, kvh * p.v_stride_h);
    pool.parallel_for(n_kb + (per_head ? Hg : 0), [&](int64_t t) {
      if (t < n_kb) {
        attn_pack_key_block(kr, p, k_head, t * kAttnBlockK, 1, kp.data() + t * panel);
        const int64_t j0 = t * kAttnBlockK;
        attn_pack_values(kr, p, v_head, j0, std::min<int64_t>(kAttnBlockK, T_k - j0), vp.data() + j0 * D);
      } else {
        const int hh = int(t - n_kb);
        pack_pos_emb(kr, attn_elem(p.pos_emb, p.q_dtype, (kvh * Hg + hh) * p.pe_stride_h), p.q_dtype, D, n_pos,
                     ep.data() + hh * n_eb * panel);
      }
    });
    pool.parallel_for(n_qb * Hg, [&](int64_t task) {
      const int64_t qb = n_qb - 1 - task / Hg;
      const int hh = int(task % Hg), h = kvh * Hg + hh;
      const int64_t i0 = i_min + qb * kAttnBlockQ;
      const int nq = int(std::min<int64_t>(kAttnBlockQ, T_k - i0));
      const int64_t i1 = i0 + nq;
      const float* e_head = ep.data() + (per_head ? hh * n_eb * panel : 0);
      float* qr = cope_scratch(size_t(kAttnBlockQ) * (3 * D + ld_pl + kAttnBlockK + 2) + 3 * kAttnBlockK);
      float* qs = qr + kAttnBlockQ * D;             // (nq, D) rotated q, scaled
      float* acc = qs + kAttnBlockQ * D;            // (nq, D)
      float* pl = acc + kAttnBlockQ * D;            // (nq, ld_pl) integer position logits * zmul
      float* s = pl + kAttnBlockQ * ld_pl;          // (nq, kAttnBlockK)
      float* m = s + kAttnBlockQ * kAttnBlockK;     // (nq,)
      float* l = m + kAttnBlockQ;                   // (nq,)
      float* g = l + kAttnBlockQ;                   // (kAttnBlockK,) gates of one row
      double carry[kAttnBlockQ];                    // running gate sums
      bool sat[kAttnBlockQ];                        // carry reached npos_max - 1
      for (int r = 0; r < nq; ++r) {
        const int64_t i = i0 + r;
        const void* q_row = attn_elem(p.q, p.q_dtype, (i - i_min) * p.q_stride_t + h * p.q_stride_h);
        const float* rn = p.rope_dim > 0 ? p.rope_table + i * p.rope_dim : nullptr;
        kr.load_row(q_row, p.q_dtype, rn, p.rope_dim, p.rope_style, 1.f, qr + r * D);
        for (int d = 0; d < D; ++d) qs[r * D + d] = qr[r * D + d] * p.scale;
        m[r] = -INFINITY;
        l[r] = 0.f;
        carry[r] = 0.0;
        sat[r] = false;
      }
      std::fill(acc, acc + nq * D, 0.f);
      for (int64_t eb = 0; eb < n_eb; ++eb) kr.qk_packed(qr, nq, e_head + eb * panel, pl + eb * kAttnBlockK, ld_pl);
      if (zmul != 1.f)
        for (int r = 0; r < nq; ++r)
          for (int64_t t = 0; t < n_pos; ++t) pl[r * ld_pl + t] *= zmul;

      for (int64_t kb = (i1 - 1) / kAttnBlockK; kb >= 0; --kb) {
        const int64_t j0 = kb * kAttnBlockK;
        kr.qk_packed(qs, nq, kp.data() + kb * panel, s, kAttnBlockK);
        for (int r = 0; r < nq; ++r) {
          const int valid = int(std::clamp<int64_t>(std::min(i0 + r + 1, T_k) - j0, 0, kAttnBlockK));
          cope_apply_row(kr, s + r * kAttnBlockK, valid, kAttnBlockK, carry[r], sat[r], pl + r * ld_pl, p.npos_max,
                         g);
        }
        kr.softmax_update(s, nq, kAttnBlockK, kAttnBlockK, m, l, acc);
        const int nk = int(std::min<int64_t>(kAttnBlockK, i1 - j0));
        kr.pv(s, nq, nk, kAttnBlockK, vp.data() + j0 * D, DType::kFloat32, D, acc);
      }
      for (int r = 0; r < nq; ++r)
        attn_store_row(attn_elem(p.out, p.out_dtype, (i0 + r - i_min) * p.out_stride_t + h * p.out_stride_h),
                       p.out_dtype, acc + r * D, 1.f / l[r], D);
    });
  }
}

}  // namespace selfext
