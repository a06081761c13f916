// Private to the CPU attention kernels (selfext_cpu.cpp, cope_cpu.cpp and their ISA variants).
//
// Split: the drivers (threads, tiling, positions, masks, scratch) are plain C++ in the baseline
// translation units; the inner loops are a table of leaf functions, one table per (ISA, head_dim),
// instantiated from one template (attention_kernels_cpu.h) in attention_kernels_cpu_avx2.cpp,
// attention_kernels_cpu_avx512.cpp and (scalar) selfext_cpu.cpp. The ISA units hold no std containers,
// no exceptions and no std::function, so no inline library code compiled for AVX-512 can be picked by the
// linker for a caller on a baseline CPU.
#pragma once
#include <cstdint>

#include "attention/params.h"
#include "attention/rope.h"
#include "core/array.h"

namespace selfext {

// Tile sizes. Keys are packed in blocks of kAttnBlockK, transposed to (head_dim, kAttnBlockK), so the
// Q·Kᵀ micro-kernel streams one cache-resident 32 KiB panel (D = 128) past register-blocked queries.
// 64 x 64 tiles: the S tile (16 KiB) and the key panel stay in L1/L2 on the 2-core Zen 4 / Xeon dev
// machines; 32 x 64 measured ~8% slower at T = 4k (H=32, D=128), 128 x 64 no faster.
constexpr int kAttnBlockK = 64;
constexpr int kAttnBlockQ = 64;
// Decode (T_q = 1) splits the keys of each kv head into chunks (split-K), merged with softmax_merge.
constexpr int kAttnDecodeChunk = 256;
constexpr int kAttnMaxHeadDim = 128;

// Leaf kernels for one (ISA, head_dim). All float arrays are row-major float32 unless stated.
struct AttnCpuKernels {
  int head_dim;
  // dst (D,) = mul * RoPE(src row converted to float32, table row) ; rope_row == nullptr: no rotation.
  // rope_row: (rope_dim/2, 2) of mscale*(cos, sin) at the row's position.
  void (*load_row)(const void* src, DType dtype, const float* rope_row, int rope_dim, RopeStyle style, float mul,
                   float* dst);
  // s (nq, ld_s)[:, :kAttnBlockK] = q (nq, D) · kp, kp a packed key panel (D, kAttnBlockK).
  void (*qk_packed)(const float* q, int nq, const float* kp, float* s, int64_t ld_s);
  // s (nq, ld_s)[:, :nk] = q (nq, D) · kᵀ, k rows (nk, D) with row stride ld_k. Decode: no packing.
  void (*qk_rows)(const float* q, int nq, const float* k, int64_t ld_k, int nk, float* s, int64_t ld_s);
  // Online softmax over the logits s (nq, ld_s)[:, :nk] (-inf = masked): updates the running max m (nq,)
  // and sum l (nq,), rescales acc (nq, D), and replaces s by exp(s - m_new).
  void (*softmax_update)(float* s, int nq, int nk, int64_t ld_s, float* m, float* l, float* acc);
  // acc (nq, D) += p (nq, ld_p)[:, :nk] · v, v rows (nk, D) of v_dtype with row stride ld_v (elements).
  void (*pv)(const float* p, int nq, int nk, int64_t ld_p, const void* v, DType v_dtype, int64_t ld_v, float* acc);
  // dst[i] = 1 / (1 + exp(-src[i])), i < n.
  void (*sigmoid)(const float* src, float* dst, int n);
};

// nullptr when head_dim is not one of the supported sizes.
const AttnCpuKernels* attn_kernels_scalar(int head_dim);
#if defined(SELFEXT_HAVE_X86_SIMD)
const AttnCpuKernels* attn_kernels_avx2(int head_dim);
const AttnCpuKernels* attn_kernels_avx512(int head_dim);
#endif

// --- Driver helpers shared by selfext_cpu.cpp and cope_cpu.cpp (defined in selfext_cpu.cpp) ---------

// The table for the SIMD level in use now (simd_level()); throws ArgumentError for an unsupported head_dim.
const AttnCpuKernels& attn_cpu_kernels(int head_dim);
// Checks sizes, strides, dtypes and the RoPE table of p; `who` names the kernel in messages.
void attn_cpu_validate(const AttentionParams& p, const char* who);
// dst (n,) of dtype <- mul * src.
void attn_store_row(void* dst, DType dtype, const float* src, float mul, int n);
// Pack keys [j0, j0 + kAttnBlockK) of one kv head, rotated at positions pos_of(j) (or not rotated when
// rope_dim == 0), into a panel (D, kAttnBlockK); keys >= T_k are zero columns.
void attn_pack_key_block(const AttnCpuKernels& kr, const AttentionParams& p, const void* k_head, int64_t j0,
                         int64_t group, float* panel);
// Copy values [j0, j0 + n) of one kv head (rows of v_head with row stride p.v_stride_t) into dst (n, D)
// float32, contiguous: P·V then streams one contiguous block instead of rows H_kv*D apart (4 KiB strides
// alias in L1 and miss the L1 TLB), and float16 is converted once, not once per query row group.
void attn_pack_values(const AttnCpuKernels& kr, const AttentionParams& p, const void* v_head, int64_t j0, int64_t n,
                      float* dst);
// Element pointer arithmetic on untyped arrays.
inline const void* attn_elem(const void* base, DType t, int64_t offset) {
  return static_cast<const char*>(base) + offset * dtype_size(t);
}
inline void* attn_elem(void* base, DType t, int64_t offset) {
  return static_cast<char*>(base) + offset * dtype_size(t);
}

}  // namespace selfext
