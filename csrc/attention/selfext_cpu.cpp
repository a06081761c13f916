// SelfExtend attention on the CPU (Jin et al. 2024, arXiv 2401.01325): exact two-branch attention with
// one softmax, flash-style (online softmax over key tiles, nothing of size T_q x T_k stored).
//
// Prefill / chunks (T_q > 1), per kv head:
//   1. pack its keys into panels (D, kAttnBlockK), rotated at the normal positions j and, where some query
//      reaches them through the grouped branch, at floor(j/G): O(T_k * D) scratch, shared by the H/H_kv
//      query heads and every query block (the rotation cost is amortized over them);
//   2. tasks (query head x query block of kAttnBlockQ) run the tile loop: a tile entirely inside the
//      neighbor window computes only the neighbor logits, one entirely past it only the grouped logits,
//      a boundary tile both and picks per element (i - j < W).
// Decode (T_q = 1): split-K over chunks of keys (all kv heads per chunk). For one query each key lies in exactly one
// branch, so each key is rotated once, at its branch's position, straight from the (float16) cache,
// and dotted with the H/H_kv query heads (rotated once at i and at the grouped position). This needs
// one rotation per key shared by the H/H_kv heads; the relative-rotation alternative (<R(a)q, R(b)k> =
// <R(a-b)q, k>) needs H/H_kv rotations of q per run of G grouped keys and per neighbor key, i.e.
// (H/H_kv)/G and H/H_kv rotations per key: no cheaper for the GQA shapes we target (H/H_kv >= G).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "attention/attention_cpu.h"
#include "attention/attention_kernels_cpu.h"
#include "attention/params.h"
#include "attention/positions.h"
#include "attention/softmax.h"
#include "core/cpu_features.h"
#include "core/dispatch.h"
#include "core/errors.h"
#include "core/thread_pool.h"

namespace selfext {

const AttnCpuKernels* attn_kernels_scalar(int head_dim) {
  return attn_simd::kernels_for<attn_simd::VecScalar>(head_dim);
}

const AttnCpuKernels& attn_cpu_kernels(int head_dim) {
  const AttnCpuKernels* k = nullptr;
  // Every level is named (no default), so a new level not mapped here is a -Wswitch warning rather
  // than a silent fall back to the scalar kernels.
  int width = 0;  // vector kernels: 512 (the AVX-512 table), 256 (AVX2), 0 (scalar)
  switch (simd_level()) {
    case SimdLevel::kAVX512:
    case SimdLevel::kAVX512VNNI:
    case SimdLevel::kAMX: width = 512; break;  // VNNI and AMX add nothing attention uses
    case SimdLevel::kAVX2: width = 256; break;
    case SimdLevel::kScalar:
    case SimdLevel::kNEON: width = 0; break;
  }
#if defined(SELFEXT_HAVE_X86_SIMD)
  if (width == 512) k = attn_kernels_avx512(head_dim);
  if (width == 256) k = attn_kernels_avx2(head_dim);
#endif
  if (width == 0) k = attn_kernels_scalar(head_dim);
  SELFEXT_CHECK(k != nullptr, ArgumentError, "head_dim ", head_dim,
                " is not supported by the CPU attention kernels; supported: 64, 80, 96, 128");
  return *k;
}

void attn_cpu_validate(const AttentionParams& p, const char* who) {
  SELFEXT_CHECK(p.T_q >= 1 && p.T_k >= p.T_q, ArgumentError, who, ": need 1 <= T_q <= T_k, got T_q = ", p.T_q,
                ", T_k = ", p.T_k);
  SELFEXT_CHECK(p.n_heads >= 1 && p.n_kv_heads >= 1 && p.n_heads % p.n_kv_heads == 0, ArgumentError, who,
                ": n_heads (", p.n_heads, ") must be a positive multiple of n_kv_heads (", p.n_kv_heads, ")");
  SELFEXT_CHECK(p.q && p.k && p.v && p.out, ArgumentError, who, ": q, k, v and out must be non-null");
  for (DType t : {p.q_dtype, p.kv_dtype, p.out_dtype})
    SELFEXT_CHECK(t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16, ArrayTypeError, who,
                  ": dtype ", dtype_name(t), " is not supported; supported: float32, float16, bfloat16");
  SELFEXT_CHECK(p.rope_dim >= 0 && p.rope_dim % 2 == 0 && p.rope_dim <= p.head_dim, ArgumentError, who,
                ": rope_dim must be even and in [0, head_dim = ", p.head_dim, "], got ", p.rope_dim);
  if (p.rope_dim > 0)
    SELFEXT_CHECK(p.rope_table != nullptr && p.rope_n_pos >= p.T_k, ArgumentError, who,
                  ": the RoPE table must cover positions 0..T_k-1 = ", p.T_k - 1, ", it has ", p.rope_n_pos);
  SELFEXT_CHECK(std::isfinite(p.scale), ArgumentError, who, ": scale must be finite, got ", p.scale);
  attn_cpu_kernels(p.head_dim);  // throws for an unsupported head_dim
}

void attn_store_row(void* dst, DType dtype, const float* src, float mul, int n) {
  SELFEXT_DISPATCH_FLOAT(dtype, T, [&] {
    T* d = static_cast<T*>(dst);
    for (int i = 0; i < n; ++i) d[i] = from_float<T>(src[i] * mul);
  });
}

void attn_pack_key_block(const AttnCpuKernels& kr, const AttentionParams& p, const void* k_head, int64_t j0,
                         int64_t group, float* panel) {
  const int D = p.head_dim;
  float row[kAttnMaxHeadDim];
  for (int jj = 0; jj < kAttnBlockK; ++jj) {
    const int64_t j = j0 + jj;
    if (j >= p.T_k) {
      for (int d = 0; d < D; ++d) panel[d * kAttnBlockK + jj] = 0.f;
      continue;
    }
    const float* rope_row = p.rope_dim > 0 ? p.rope_table + (j / group) * p.rope_dim : nullptr;
    kr.load_row(attn_elem(k_head, p.kv_dtype, j * p.k_stride_t), p.kv_dtype, rope_row, p.rope_dim, p.rope_style,
                1.f, row);
    for (int d = 0; d < D; ++d) panel[d * kAttnBlockK + jj] = row[d];
  }
}

void attn_pack_values(const AttnCpuKernels& kr, const AttentionParams& p, const void* v_head, int64_t j0, int64_t n,
                      float* dst) {
  for (int64_t j = j0; j < j0 + n; ++j)
    kr.load_row(attn_elem(v_head, p.kv_dtype, j * p.v_stride_t), p.kv_dtype, nullptr, 0, RopeStyle::kNorm, 1.f,
                dst + (j - j0) * p.head_dim);
}

namespace {

// Per-thread scratch, grown on demand and kept: tasks of one call on one thread reuse it.
float* thread_scratch(size_t n) {
  thread_local std::vector<float> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// ---------------------------------------------------------------------------------------------------
// Prefill / chunk.

void se_prefill(const AttentionParams& p, ThreadPool& pool, const AttnCpuKernels& kr) {
  const int D = p.head_dim, Hg = p.n_heads / p.n_kv_heads;
  const int64_t T_q = p.T_q, T_k = p.T_k, G = p.group, W = p.window;
  const int64_t i_min = T_k - T_q, i_max = T_k - 1;
  // G = 1 (or a window no query can leave) is plain RoPE attention: every pair is a neighbor pair.
  const bool grouped_any = G > 1 && i_max >= W && p.rope_dim > 0;
  const int64_t n_kb = (T_k + kAttnBlockK - 1) / kAttnBlockK;
  const int64_t panel = int64_t(D) * kAttnBlockK;
  // Blocks some tile needs at normal positions (j > i_min - W) and at grouped ones (j <= i_max - W).
  const int64_t kb_n0 = grouped_any ? std::max<int64_t>(0, i_min - W + 1) / kAttnBlockK : 0;
  const int64_t kb_g1 = grouped_any ? (i_max - W) / kAttnBlockK : -1;  // inclusive
  std::vector<float> kn(size_t(n_kb * panel)), kg(grouped_any ? size_t((kb_g1 + 1) * panel) : 0);
  std::vector<float> vp(size_t(T_k) * D);  // (T_k, D) values of one kv head, float32
  const int64_t n_qb = (T_q + kAttnBlockQ - 1) / kAttnBlockQ;

  for (int kvh = 0; kvh < p.n_kv_heads; ++kvh) {
    const void* k_head = attn_elem(p.k, p.kv_dtype, kvh * p.k_stride_h);
    const void* v_head = attn_elem(p.v, p.kv_dtype, kvh * p.v_stride_h);
    pool.parallel_for(n_kb, [&](int64_t kb) {
      if (kb >= kb_n0) attn_pack_key_block(kr, p, k_head, kb * kAttnBlockK, 1, kn.data() + kb * panel);
      if (kb <= kb_g1) attn_pack_key_block(kr, p, k_head, kb * kAttnBlockK, G, kg.data() + kb * panel);
      const int64_t j0 = kb * kAttnBlockK;
      attn_pack_values(kr, p, v_head, j0, std::min<int64_t>(kAttnBlockK, T_k - j0), vp.data() + j0 * D);
    });
    // Largest query blocks (most keys) first, so the last tasks to start are the short ones.
    pool.parallel_for(n_qb * Hg, [&](int64_t task) {
      const int64_t qb = n_qb - 1 - task / Hg;
      const int h = kvh * Hg + int(task % Hg);
      const int64_t i0 = i_min + qb * kAttnBlockQ;
      const int nq = int(std::min<int64_t>(kAttnBlockQ, T_k - i0));
      const int64_t i1 = i0 + nq;  // exclusive
      const bool q_grouped = grouped_any && i1 - 1 >= W;
      float* qn = thread_scratch(size_t(kAttnBlockQ) * (3 * D + 2 * kAttnBlockK + 2));
      float* qg = qn + kAttnBlockQ * D;                  // (nq, D) query rotated at the grouped position
      float* acc = qg + kAttnBlockQ * D;                 // (nq, D)
      float* s = acc + kAttnBlockQ * D;                  // (nq, kAttnBlockK) logits, then probabilities
      float* s2 = s + kAttnBlockQ * kAttnBlockK;         // (nq, kAttnBlockK) grouped logits of boundary tiles
      float* m = s2 + kAttnBlockQ * kAttnBlockK;         // (nq,)
      float* l = m + kAttnBlockQ;                        // (nq,)
      for (int r = 0; r < nq; ++r) {
        const int64_t i = i0 + r;
        const void* q_row = attn_elem(p.q, p.q_dtype, (i - i_min) * p.q_stride_t + h * p.q_stride_h);
        const float* rn = p.rope_dim > 0 ? p.rope_table + i * p.rope_dim : nullptr;
        kr.load_row(q_row, p.q_dtype, rn, p.rope_dim, p.rope_style, p.scale, qn + r * D);
        if (q_grouped) {
          const float* rg = p.rope_table + se_grouped_query_pos(i, G, W) * p.rope_dim;
          kr.load_row(q_row, p.q_dtype, rg, p.rope_dim, p.rope_style, p.scale, qg + r * D);
        }
        m[r] = -INFINITY;
        l[r] = 0.f;
      }
      std::fill(acc, acc + nq * D, 0.f);
      const int64_t kb_end = (i1 - 1) / kAttnBlockK;
      for (int64_t kb = 0; kb <= kb_end; ++kb) {
        const int64_t j0 = kb * kAttnBlockK;
        const int64_t j_last = std::min(j0 + kAttnBlockK, T_k) - 1;
        const bool all_neighbor = !grouped_any || (i1 - 1) - j0 < W;
        const bool all_grouped = grouped_any && i0 - j_last >= W;
        if (all_neighbor) {
          kr.qk_packed(qn, nq, kn.data() + kb * panel, s, kAttnBlockK);
        } else if (all_grouped) {
          kr.qk_packed(qg, nq, kg.data() + kb * panel, s, kAttnBlockK);
        } else {  // boundary tile: row i takes grouped logits for j <= i - W, neighbor ones after
          kr.qk_packed(qn, nq, kn.data() + kb * panel, s, kAttnBlockK);
          kr.qk_packed(qg, nq, kg.data() + kb * panel, s2, kAttnBlockK);
          for (int r = 0; r < nq; ++r) {
            const int64_t c = std::clamp<int64_t>(i0 + r - W + 1 - j0, 0, kAttnBlockK);
            std::memcpy(s + r * kAttnBlockK, s2 + r * kAttnBlockK, size_t(c) * sizeof(float));
          }
        }
        if (j0 + kAttnBlockK - 1 > i0) {  // causal mask (and keys past T_k)
          for (int r = 0; r < nq; ++r) {
            const int64_t first_masked = std::clamp<int64_t>(i0 + r - j0 + 1, 0, kAttnBlockK);
            std::fill(s + r * kAttnBlockK + first_masked, s + (r + 1) * kAttnBlockK, -INFINITY);
          }
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

// ---------------------------------------------------------------------------------------------------
// Decode: one query at i = T_k - 1.

void se_decode(const AttentionParams& p, ThreadPool& pool, const AttnCpuKernels& kr) {
  const int D = p.head_dim, H = p.n_heads, Hg = p.n_heads / p.n_kv_heads;
  const int64_t T_k = p.T_k, G = p.group, W = p.window, i = T_k - 1;
  const bool grouped_any = G > 1 && i >= W && p.rope_dim > 0;
  // Keys [0, jb) are grouped, [jb, T_k) neighbors.
  const int64_t jb = grouped_any ? i - W + 1 : 0;
  // (H, D) queries at i and at the grouped position, scale folded in.
  std::vector<float> qn(size_t(H) * D), qg(grouped_any ? size_t(H) * D : 0);
  for (int h = 0; h < H; ++h) {
    const void* q_row = attn_elem(p.q, p.q_dtype, h * p.q_stride_h);
    const float* rn = p.rope_dim > 0 ? p.rope_table + i * p.rope_dim : nullptr;
    kr.load_row(q_row, p.q_dtype, rn, p.rope_dim, p.rope_style, p.scale, qn.data() + h * D);
    if (grouped_any)
      kr.load_row(q_row, p.q_dtype, p.rope_table + se_grouped_query_pos(i, G, W) * p.rope_dim, p.rope_dim,
                  p.rope_style, p.scale, qg.data() + h * D);
  }
  // Tasks are chunks of keys over all kv heads, loaded key-major (for each key, every kv head): in the
  // (T_k, H_kv, D) layout that is one contiguous walk, and in a (H_kv, n_ctx, D) cache H_kv sequential
  // streams. Walking one kv head's keys H_kv*D apart instead touches a new 4 KiB page per key and runs
  // at DRAM latency (measured 1.4x slower at T = 8k, H_kv = 8). Chunk: ~256 KiB of K and of V per task.
  const int n_kv = p.n_kv_heads;
  const int64_t kc = std::clamp<int64_t>(65536 / (int64_t(n_kv) * D) / 16 * 16, 16, kAttnDecodeChunk);
  const int64_t n_ch = (T_k + kc - 1) / kc;
  // Partial softmax states per (head, chunk): m, l (H * n_ch each), acc (H * n_ch, D). Kept per calling
  // thread between calls: fresh pages every decode step cost ~6% in page zeroing.
  thread_local std::vector<float> partials;
  partials.resize(std::max(partials.size(), size_t(H) * n_ch * (D + 2)));
  float* pm = partials.data();
  float* pl = pm + H * n_ch;
  float* pacc = pl + H * n_ch;
  pool.parallel_for(n_ch, [&](int64_t c) {
    const int64_t j0 = c * kc, j1 = std::min(T_k, j0 + kc);
    const int nk = int(j1 - j0);
    float* kbuf = thread_scratch(2 * size_t(n_kv) * kc * D + size_t(H) * (kc + D + 2));
    float* vbuf = kbuf + n_kv * kc * D;  // (H_kv, kc, D) rotated keys, values
    float* s = vbuf + n_kv * kc * D;     // (H, kc)
    float* acc = s + H * kc;             // (H, D)
    float* m = acc + H * D;
    float* l = m + H;
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t pos = j < jb ? se_grouped_key_pos(j, G) : j;
      const float* rope_row = p.rope_dim > 0 ? p.rope_table + pos * p.rope_dim : nullptr;
      for (int kvh = 0; kvh < n_kv; ++kvh) {
        float* kd = kbuf + (kvh * kc + (j - j0)) * D;
        kr.load_row(attn_elem(p.k, p.kv_dtype, j * p.k_stride_t + kvh * p.k_stride_h), p.kv_dtype, rope_row,
                    p.rope_dim, p.rope_style, 1.f, kd);
        kr.load_row(attn_elem(p.v, p.kv_dtype, j * p.v_stride_t + kvh * p.v_stride_h), p.kv_dtype, nullptr, 0,
                    RopeStyle::kNorm, 1.f, vbuf + (kvh * kc + (j - j0)) * D);
      }
    }
    const int n_grouped = int(std::clamp<int64_t>(jb - j0, 0, nk));
    for (int kvh = 0; kvh < n_kv; ++kvh) {
      const float* kh = kbuf + kvh * kc * D;
      float* sh = s + kvh * Hg * kc;
      if (n_grouped > 0) kr.qk_rows(qg.data() + kvh * Hg * D, Hg, kh, D, n_grouped, sh, kc);
      if (n_grouped < nk)
        kr.qk_rows(qn.data() + kvh * Hg * D, Hg, kh + n_grouped * D, D, nk - n_grouped, sh + n_grouped, kc);
    }
    for (int r = 0; r < H; ++r) {
      m[r] = -INFINITY;
      l[r] = 0.f;
    }
    std::fill(acc, acc + H * D, 0.f);
    kr.softmax_update(s, H, nk, kc, m, l, acc);
    for (int kvh = 0; kvh < n_kv; ++kvh)
      kr.pv(s + kvh * Hg * kc, Hg, nk, kc, vbuf + kvh * kc * D, DType::kFloat32, D, acc + kvh * Hg * D);
    for (int h = 0; h < H; ++h) {
      const int64_t slot = int64_t(h) * n_ch + c;
      pm[slot] = m[h];
      pl[slot] = l[h];
      std::memcpy(pacc + slot * D, acc + h * D, size_t(D) * sizeof(float));
    }
  });
  // Merge the chunks of each head (softmax.h), in chunk order.
  for (int h = 0; h < H; ++h) {
    float mh = -INFINITY, lh = 0.f;
    float acc[kAttnMaxHeadDim] = {};
    for (int64_t c = 0; c < n_ch; ++c) {
      const int64_t slot = int64_t(h) * n_ch + c;
      float alpha, beta;
      softmax_merge(mh, lh, pm[slot], pl[slot], alpha, beta);
      for (int d = 0; d < D; ++d) acc[d] = acc[d] * alpha + pacc[slot * D + d] * beta;
    }
    attn_store_row(attn_elem(p.out, p.out_dtype, h * p.out_stride_h), p.out_dtype, acc, 1.f / lh, D);
  }
}

}  // namespace

void self_extend_attention_cpu(const AttentionParams& p, ThreadPool& pool) {
  attn_cpu_validate(p, "self_extend_attention");
  SELFEXT_CHECK(p.group >= 1, ArgumentError, "self_extend_attention: group must be >= 1, got ", p.group);
  SELFEXT_CHECK(p.window >= 1, ArgumentError, "self_extend_attention: window must be >= 1, got ", p.window);
  const AttnCpuKernels& kr = attn_cpu_kernels(p.head_dim);
  if (p.T_q == 1)
    se_decode(p, pool, kr);
  else
    se_prefill(p, pool, kr);
}

}  // namespace selfext
