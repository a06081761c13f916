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
// Decode and short chunks (T_q <= kCopeSplitMaxQ) take the split-K path below instead: a per-query walk
// would leave one sequential task per (kv head, query head) for a couple of microseconds of work per key.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "attention/attention_cpu.h"
#include "attention/cope.h"
#include "attention/params.h"
#include "attention/softmax.h"
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

// Split-K decode and short chunks (T_q <= kCopeSplitMaxQ). The carried gate sum makes a backward key walk
// sequential; splitting it needs each chunk's starting carry first, so two passes over chunks of keys
// (all kv heads per chunk, loaded key-major like SelfExtend's decode):
//   pass 1: logits s = Q·Kᵀ·scale of the chunk, kept for pass 2, and each row's chunk gate total
//           (walked backwards; stopped once it reaches npos_max - 1: past the clamp the exact sum of this
//           chunk and of every earlier one is irrelevant);
//   scan:   carry of chunk c = sum of the totals of chunks > c (exclusive suffix scan, in double);
//   pass 2: gates, positions and z from that carry, online softmax and P·V of the chunk, one partial
//           (m, l, acc) per (row, chunk), merged in chunk order with softmax_merge (softmax.h).
// Rows: per kv head its T_q x H/H_kv (query, head) pairs, row r = t * H/H_kv + hh. Keeping the logits costs
// H * T_q * T_k floats, H/H_kv * T_q / D of K's size (at most 1/8 at T_q = 1 for the shapes we serve), and
// saves reading K twice.
constexpr int kCopeSplitMaxQ = 8;

// Per-call state of cope_split_k, kept per calling thread between calls (a decode step allocates nothing
// once sizes stop growing). Separate from cope_scratch: the caller also runs tasks.
struct CopeSplitState {
  std::vector<float> f;
  std::vector<double> d;
};

void cope_split_k(const AttentionParams& p, ThreadPool& pool, const AttnCpuKernels& kr) {
  const int D = p.head_dim, H = p.n_heads, n_kv = p.n_kv_heads, Hg = H / n_kv;
  const int64_t T_q = p.T_q, T_k = p.T_k, i_min = T_k - T_q;
  const int R = int(T_q) * Hg;  // rows per kv head
  const int n_rows = n_kv * R;  // = H * T_q; row g * R + r
  const bool per_head = p.pe_stride_h != 0;
  const int64_t n_pos = std::min<int64_t>(p.npos_max, T_k + 1);
  const double top = double(p.npos_max - 1);
  const float zmul = p.scale_pos_logits ? p.scale : 1.f;
  // Chunk: ~256 KiB of K (and of V) per task, as SelfExtend's decode.
  const int64_t kc = std::clamp<int64_t>(65536 / (int64_t(n_kv) * D) / 16 * 16, 16, kAttnDecodeChunk);
  const int64_t n_ch = (T_k + kc - 1) / kc;

  thread_local CopeSplitState st;
  const size_t n_f = size_t(n_rows) * (2 * D + n_pos) + size_t(n_ch) * n_rows * (kc + D + 2);
  if (st.f.size() < n_f) st.f.resize(n_f);
  if (st.d.size() < size_t(2 * n_ch * n_rows)) st.d.resize(size_t(2 * n_ch * n_rows));
  float* qr = st.f.data();                  // (n_rows, D) rotated queries
  float* qs = qr + n_rows * D;              // (n_rows, D) the same, times scale
  float* zl = qs + n_rows * D;              // (n_rows, n_pos) integer position logits <q, e[t]> * zmul
  float* logits = zl + n_rows * n_pos;      // (n_ch, n_rows, kc) pass 1 -> pass 2
  float* part_m = logits + n_ch * n_rows * kc;  // (n_rows, n_ch) partial softmax states
  float* part_l = part_m + n_rows * n_ch;       // (n_rows, n_ch)
  float* part_acc = part_l + n_rows * n_ch;     // (n_rows, n_ch, D)
  double* total = st.d.data();              // (n_ch, n_rows) gate totals of each chunk (capped, see above)
  double* carry = total + n_ch * n_rows;    // (n_ch, n_rows) gate sum of the keys after the chunk

  auto row_query = [&](int row) { return i_min + (row % R) / Hg; };  // the row's query position i
  auto row_head = [&](int row) { return (row / R) * Hg + (row % R) % Hg; };
  // Keys of chunk [j0, j1) that row `row` sees (j <= i).
  auto row_valid = [&](int row, int64_t j0, int64_t j1) {
    return int(std::clamp<int64_t>(std::min(row_query(row) + 1, j1) - j0, 0, j1 - j0));
  };
  for (int row = 0; row < n_rows; ++row) {
    const int64_t i = row_query(row);
    const float* rn = p.rope_dim > 0 ? p.rope_table + i * p.rope_dim : nullptr;
    kr.load_row(attn_elem(p.q, p.q_dtype, (i - i_min) * p.q_stride_t + row_head(row) * p.q_stride_h), p.q_dtype,
                rn, p.rope_dim, p.rope_style, 1.f, qr + row * D);
    for (int d = 0; d < D; ++d) qs[row * D + d] = qr[row * D + d] * p.scale;
  }

  // Pass 1: tasks [0, n_ch) are chunks, [n_ch, n_ch + n_kv) the position logits of one kv head's rows.
  pool.parallel_for(n_ch + n_kv, [&](int64_t task) {
    if (task >= n_ch) {
      const int g = int(task - n_ch);
      float* e32 = cope_scratch(size_t(n_pos) * D);
      for (int hh = 0; hh < (per_head ? Hg : 1); ++hh) {
        const void* e = attn_elem(p.pos_emb, p.q_dtype, (g * Hg + hh) * p.pe_stride_h);
        const float* eh = static_cast<const float*>(e);
        if (p.q_dtype != DType::kFloat32) {  // float16 / bfloat16 tables: convert the rows in use once
          for (int64_t t = 0; t < n_pos; ++t)
            kr.load_row(attn_elem(e, p.q_dtype, t * D), p.q_dtype, nullptr, 0, RopeStyle::kNorm, 1.f, e32 + t * D);
          eh = e32;
        }
        if (per_head) {  // this head's rows, one per query
          for (int t = 0; t < T_q; ++t) {
            const int row = g * R + t * Hg + hh;
            kr.qk_rows(qr + row * D, 1, eh, D, int(n_pos), zl + row * n_pos, n_pos);
          }
        } else {
          kr.qk_rows(qr + g * R * D, R, eh, D, int(n_pos), zl + g * R * n_pos, n_pos);
        }
      }
      if (zmul != 1.f)
        for (int64_t x = int64_t(g) * R * n_pos; x < int64_t(g + 1) * R * n_pos; ++x) zl[x] *= zmul;
      return;
    }
    const int64_t c = task, j0 = c * kc, j1 = std::min(T_k, j0 + kc);
    const int nk = int(j1 - j0);
    float* kbuf = cope_scratch(size_t(n_kv) * kc * D + kAttnBlockK);  // (n_kv, kc, D) keys, rotated
    float* gb = kbuf + n_kv * kc * D;                                 // (kAttnBlockK,) gates
    for (int64_t j = j0; j < j1; ++j) {
      const float* rn = p.rope_dim > 0 ? p.rope_table + j * p.rope_dim : nullptr;
      for (int g = 0; g < n_kv; ++g)
        kr.load_row(attn_elem(p.k, p.kv_dtype, j * p.k_stride_t + g * p.k_stride_h), p.kv_dtype, rn, p.rope_dim,
                    p.rope_style, 1.f, kbuf + (g * kc + (j - j0)) * D);
    }
    float* s = logits + c * n_rows * kc;
    for (int g = 0; g < n_kv; ++g) kr.qk_rows(qs + g * R * D, R, kbuf + g * kc * D, D, nk, s + g * R * kc, kc);
    for (int row = 0; row < n_rows; ++row) {
      double sum = 0.0;
      for (int b1 = row_valid(row, j0, j1); b1 > 0 && sum < top; b1 -= kAttnBlockK) {
        const int b0 = std::max(0, b1 - kAttnBlockK);
        kr.sigmoid(s + row * kc + b0, gb, b1 - b0);
        for (int x = b1 - b0 - 1; x >= 0; --x) sum += double(gb[x]);
      }
      total[c * n_rows + row] = sum;
    }
  });

  for (int row = 0; row < n_rows; ++row) {
    double sum = 0.0;
    for (int64_t c = n_ch - 1; c >= 0; --c) {
      carry[c * n_rows + row] = sum;
      sum += total[c * n_rows + row];
    }
  }

  pool.parallel_for(n_ch, [&](int64_t c) {
    const int64_t j0 = c * kc, j1 = std::min(T_k, j0 + kc);
    const int nk = int(j1 - j0);
    float* vbuf = cope_scratch(size_t(n_kv) * kc * D + kc + size_t(R) * (D + 2));
    float* gb = vbuf + n_kv * kc * D;  // (kc,) gates of one row
    float* acc = gb + kc;              // (R, D)
    float* m = acc + R * D;            // (R,)
    float* l = m + R;                  // (R,)
    for (int64_t j = j0; j < j1; ++j)
      for (int g = 0; g < n_kv; ++g)
        kr.load_row(attn_elem(p.v, p.kv_dtype, j * p.v_stride_t + g * p.v_stride_h), p.kv_dtype, nullptr, 0,
                    RopeStyle::kNorm, 1.f, vbuf + (g * kc + (j - j0)) * D);
    for (int g = 0; g < n_kv; ++g) {
      float* s = logits + (c * n_rows + g * R) * kc;  // (R, kc)
      for (int r = 0; r < R; ++r) {
        const int row = g * R + r;
        double cs = carry[c * n_rows + row];
        bool sat = cs >= top;
        cope_apply_row(kr, s + r * kc, row_valid(row, j0, j1), nk, cs, sat, zl + row * n_pos, p.npos_max, gb);
        m[r] = -INFINITY;
        l[r] = 0.f;
      }
      std::fill(acc, acc + R * D, 0.f);
      kr.softmax_update(s, R, nk, kc, m, l, acc);
      kr.pv(s, R, nk, kc, vbuf + g * kc * D, DType::kFloat32, D, acc);
      for (int r = 0; r < R; ++r) {
        const int64_t slot = int64_t(g * R + r) * n_ch + c;
        part_m[slot] = m[r];
        part_l[slot] = l[r];
        std::memcpy(part_acc + slot * D, acc + r * D, size_t(D) * sizeof(float));
      }
    }
  });

  // Merge each row's chunks in chunk order.
  for (int row = 0; row < n_rows; ++row) {
    float mh = -INFINITY, lh = 0.f;
    float acc[kAttnMaxHeadDim] = {};
    for (int64_t c = 0; c < n_ch; ++c) {
      const int64_t slot = int64_t(row) * n_ch + c;
      float alpha, beta;
      softmax_merge(mh, lh, part_m[slot], part_l[slot], alpha, beta);
      for (int d = 0; d < D; ++d) acc[d] = acc[d] * alpha + part_acc[slot * D + d] * beta;
    }
    const int64_t t = row_query(row) - i_min;
    attn_store_row(attn_elem(p.out, p.out_dtype, t * p.out_stride_t + row_head(row) * p.out_stride_h), p.out_dtype,
                   acc, 1.f / lh, D);
  }
}

}  // namespace

void cope_attention_cpu(const AttentionParams& p, ThreadPool& pool) {
  attn_cpu_validate(p, "cope_attention");
  SELFEXT_CHECK(p.npos_max >= 2, ArgumentError, "cope_attention: npos_max must be >= 2, got ", p.npos_max);
  SELFEXT_CHECK(p.pos_emb != nullptr, ArgumentError, "cope_attention: pos_emb must be non-null");
  const AttnCpuKernels& kr = attn_cpu_kernels(p.head_dim);
  if (p.T_q <= kCopeSplitMaxQ) return cope_split_k(p, pool, kr);
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
