// SelfExtend prefill on Hopper's warpgroup MMA (sm_90a): the phased kernel's algorithm (se_phased_kernel in
// selfext_cuda.cu) with both products as wgmma.mma_async reading their shared-memory operands through
// descriptors (wgmma.cuh), instead of mma.sync fed by ldmatrix.
//
// Per block: kWG warpgroups of 64 query rows each (packed rows, attention_tiles.cuh), one Q tile and
// double-buffered K and V^T tiles of 64 or 128 keys in shared memory, 128-byte swizzled. The grouped-branch tiles come
// first with Q rotated at its grouped positions, then the neighbor tiles with Q rotated at i; window-boundary
// tiles are visited once per phase with complementary masks, so the one online softmax sees every pair once
// in the branch the paper assigns it. K arrives rotated once per call at both positions (rotate_k_kernel)
// and V transposed once per call, (n_kv, head_dim, T_pad) with zero keys past T_k (transpose_v_kernel), so
// both B operands are K-major: S = Q K^T takes K rows as they are, O += P V takes V^T rows.
//
// Per tile of N keys and warpgroup: S (64 x N, fp32) by head_dim / 16 m64nNk16 multiplies (K from shared
// memory, Q from shared memory or registers); the mask and the online softmax of attention_tiles.cuh on the
// accumulators (the same register layout as mma.sync's); P rounded to the storage type as A fragments in
// registers; O (64 x head_dim) += P V by N / 16 m64n{head_dim}k16 multiplies. The configurations and the
// defaults per head dim, with their measurements: wgmma_cfg in selfext_cuda.cu, docs/cuda_loop.md. What it saves against the mma.sync kernel: every ldmatrix (the B fragments
// were read from shared memory once per 16-row tile), the registers those fragments held, and the
// issue slots of 16x more multiply instructions. Head dims 64 and 128 (the swizzle atom is 64 elements).
#pragma once
#include "attention/attention_tiles.cuh"
#include "attention/positions.h"
#include "attention/se_decode.cuh"
#include "attention/wgmma.cuh"

namespace selfext {
namespace attn_cuda {

template <int kHeadDim, int kWG, int kTileN>
struct SeWgmmaShape {
  static constexpr int kBM = 64 * kWG, kBN = kTileN;
  static constexpr uint32_t kQBytes = uint32_t(kBM) * kHeadDim * 2;
  static constexpr uint32_t kKBytes = uint32_t(kBN) * kHeadDim * 2;  // one K tile (and one V^T tile)
  // Q, two K tiles, two V^T tiles, and the slack to align the first to 1024 bytes.
  static constexpr size_t kSmemBytes = size_t(kQBytes) + 4 * kKBytes + 1024;
  static_assert(kHeadDim % 64 == 0, "the 128B swizzle atom is 64 elements of the K extent");
};

// V (T_k, n_kv, head_dim) -> V^T (n_kv, head_dim, T_pad), keys past T_k zero (0 * a masked P is 0, never
// 0 * stale NaN). Block: 64 keys of one kv head.
template <int kHeadDim>
__global__ void __launch_bounds__(256) transpose_v_kernel(const uint16_t* __restrict__ v, int64_t v_st, int64_t v_sh,
                                                          int T_k, int64_t T_pad, uint16_t* __restrict__ vt) {
  kernel_prologue();
  __shared__ uint32_t tile[64][kHeadDim / 2 + 1];  // pairs of elements; +1 word: columns hit 32 banks
  const int j0 = blockIdx.x * 64, h = blockIdx.y;
  for (int idx = threadIdx.x; idx < 64 * kHeadDim / 2; idx += blockDim.x) {
    const int r = idx / (kHeadDim / 2), c2 = idx % (kHeadDim / 2);
    const int j = j0 + r;
    tile[r][c2] = j < T_k ? *reinterpret_cast<const uint32_t*>(v + int64_t(j) * v_st + int64_t(h) * v_sh + 2 * c2) : 0u;
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < kHeadDim * 32; idx += blockDim.x) {
    const int d = idx / 32, kp = idx % 32;  // output row d, keys 2 kp and 2 kp + 1
    const uint32_t w0 = tile[2 * kp][d / 2], w1 = tile[2 * kp + 1][d / 2];
    const uint32_t e0 = (d & 1) ? w0 >> 16 : w0 & 0xffffu, e1 = (d & 1) ? w1 >> 16 : w1 & 0xffffu;
    *reinterpret_cast<uint32_t*>(vt + (int64_t(h) * kHeadDim + d) * T_pad + j0 + 2 * kp) = e0 | (e1 << 16);
  }
}

// kTileN: keys per tile (64 or 128). kQReg: Q as A fragments in registers (loaded by ldmatrix once per
// phase) instead of read from shared memory by every S multiply: an m64n64k16 with both operands in
// shared memory reads 4 KB per 64K multiply-adds, the 128 bytes per clock that shared memory delivers at
// the tensor cores' full rate; with A in registers it reads half. kPipe: the software-pipelined loop below
// (a tile's softmax under the previous tile's P V) instead of one tile at a time.
// kMinBlocks: blocks per SM the registers are capped for (2: 128 per thread at two warpgroups).
template <typename T, int kHeadDim, int kWG, int kTileN, bool kQReg, bool kPipe,
          int kMinBlocks = (kHeadDim <= 64 && !kQReg && kTileN == 64 && !kPipe) ? 2 : 1>
__global__ void __launch_bounds__(kWG * 128, kMinBlocks) se_wgmma_kernel(const SeArgs a) {
#if SELFEXT_WGMMA_AVAILABLE
  kernel_prologue();
  using Sh = SeWgmmaShape<kHeadDim, kWG, kTileN>;
  constexpr int kThreads = kWG * 128, BN = Sh::kBN, kBM = Sh::kBM;
  constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per K row
  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw_u32 = smem_u32(smem_raw);
  const uint32_t base_u32 = (raw_u32 + 1023u) & ~1023u;
  unsigned char* const base = smem_raw + (base_u32 - raw_u32);
  // Q: warpgroup g's 64 rows at g * 64 * kHeadDim * 2; K tiles at kQBytes + b * kKBytes; V^T tiles after.
  const uint32_t k_u32 = base_u32 + Sh::kQBytes, v_u32 = k_u32 + 2 * Sh::kKBytes;

  const int wg = threadIdx.x / 128, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int mt = gridDim.x - 1 - blockIdx.x;  // longest causal rows first: less tail imbalance
  const int kvh = blockIdx.y;
  const RowMap rm = a.rm;
  const int W = a.window;
  const int64_t m0 = int64_t(mt) * kBM;
  const int i_lo = rm.pos(m0), i_hi = rm.pos(m0 + kBM - 1);
  const PhasedTiles pt(i_lo, i_hi, W, BN);
  const int n_g = pt.n_g, n_v = pt.n_v;

  const int64_t g_r0 = m0 + wg * 64;  // this warpgroup's rows
  const bool wg_has_rows = g_r0 < rm.rows;
  const int gi_lo = rm.pos(g_r0), gi_hi = rm.pos(g_r0 + 63);
  const int64_t wr0 = m0 + warp * 16;  // this warp's rows (its accumulator rows)

  float o[kHeadDim / 8][4];
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
#pragma unroll
  for (int db = 0; db < kHeadDim / 8; ++db) o[db][0] = o[db][1] = o[db][2] = o[db][3] = 0.f;

  const T* kn_rot = static_cast<const T*>(a.kn_rot);
  const T* kg_rot = static_cast<const T*>(a.kg_rot);
  const T* vt = static_cast<const T*>(a.v_t);
  const int64_t rot_st = int64_t(gridDim.y) * kHeadDim;
  auto q_chunk = [base](int r, int c) {
    return reinterpret_cast<uint4*>(base + (r >> 6) * (64 * kHeadDim * 2) + sw128_offset<64>(r & 63, c));
  };
  auto load_q = [&](bool grouped) { se_rope_q_tile<T, kHeadDim, kThreads, kBM>(a, rm, m0, kvh, grouped, q_chunk); };
  auto tile_of = [&](int vt_) { return pt.tile(vt_); };
  // K tile: thread keeps chunk column kc and steps kRowStep rows (a multiple of 8: one swizzle phase).
  constexpr int kRowStep = kThreads / kChunks, kKIters = BN / kRowStep;
  static_assert(kThreads % kChunks == 0 && BN % kRowStep == 0 && kRowStep % 8 == 0, "K tile copy layout");
  const int kc = threadIdx.x % kChunks, kr0 = threadIdx.x / kChunks;
  // V^T tile: head_dim rows of BN keys (BN / 8 chunks); thread keeps chunk vc, steps kVStep rows.
  constexpr int kVChunks = BN / 8, kVStep = kThreads / kVChunks, kVIters = kHeadDim / kVStep;
  static_assert(kThreads % kVChunks == 0 && kHeadDim % kVStep == 0 && kVStep % 8 == 0, "V^T tile copy layout");
  const int vc = threadIdx.x % kVChunks, vr0 = threadIdx.x / kVChunks;
  auto load_k = [&](int vt_, int b) {
    const int kt = tile_of(vt_);
    const T* kh = (vt_ < n_g ? kg_rot : kn_rot) + int64_t(kvh) * kHeadDim + kc * 8;
    unsigned char* kd = base + Sh::kQBytes + b * Sh::kKBytes;
#pragma unroll
    for (int it = 0; it < kKIters; ++it) {
      const int r = kr0 + it * kRowStep, j = kt * BN + r;
      const bool ok = j < rm.T_k;
      cp_async16(kd + sw128_offset<BN>(r, kc), kh + (ok ? int64_t(j) * rot_st : 0), ok);
    }
  };
  auto load_v = [&](int vt_, int b) {
    const T* vh = vt + int64_t(kvh) * kHeadDim * a.vt_st + int64_t(tile_of(vt_)) * BN + vc * 8;
    unsigned char* vd = base + Sh::kQBytes + 2 * Sh::kKBytes + b * Sh::kKBytes;
#pragma unroll
    for (int it = 0; it < kVIters; ++it) {
      const int d = vr0 + it * kVStep;
      cp_async16(vd + sw128_offset<kHeadDim>(d, vc), vh + int64_t(d) * a.vt_st, true);
    }
  };

  const uint32_t q_u32 = base_u32 + wg * (64 * kHeadDim * 2);
  uint32_t qf[kQReg ? kHeadDim / 16 : 1][4];  // kQReg: this warp's 16 Q rows as m16n8k16 A fragments
  auto load_qf = [&]() {
    if constexpr (kQReg) {
#pragma unroll
      for (int kk = 0; kk < kHeadDim / 16; ++kk)
        ldmatrix_x4(qf[kk], base + wg * (64 * kHeadDim * 2) +
                                sw128_offset<64>(16 * (warp & 3) + (lane & 15), 2 * kk + (lane >> 4)));
    }
  };
  // Whether this warpgroup's rows have a pair in tile vt_ in its phase's branch (any), and whether some
  // pair of the tile is outside it (mask): uniform over the warpgroup, as wgmma needs.
  // The pipelined loop takes the block's rows instead (lo, hi = i_lo, i_hi): its wgmma sit under these
  // conditions across iterations, and ptxas serializes every wgmma behind a condition it cannot prove
  // uniform over the warpgroup (one derived from threadIdx); a warpgroup without pairs in a tile then
  // multiplies fully masked rows, which adds nothing.
  auto tile_flags = [&](int vt_, int lo, int hi, bool& any, bool& mask) {
    const int j0 = tile_of(vt_) * BN, j1 = j0 + BN - 1;
    if (vt_ < n_g) {
      any = hi - j0 >= W;
      mask = lo - j1 < W;
    } else {
      any = j0 <= hi && lo - j1 < W;
      mask = j1 > lo || hi - j0 >= W;
    }
  };
  auto issue_s = [&](float (&s)[BN / 8][4], int kstage) {
    const uint32_t kb = k_u32 + kstage * Sh::kKBytes;
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      const uint64_t dk = sw128_desc(kb + (kk >> 2) * BN * 128 + (kk & 3) * 32);
      if constexpr (kQReg) wgmma_rs<T, BN>(s, qf[kk], dk, kk > 0);
      else wgmma_ss<T, BN>(s, sw128_desc(q_u32 + (kk >> 2) * 64 * 128 + (kk & 3) * 32), dk, kk > 0);
    }
    wgmma_commit();
  };
  auto mask_s = [&](float (&s)[BN / 8][4], int vt_) {
    const int j0 = tile_of(vt_) * BN;
    const bool grouped = vt_ < n_g;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int i = rm.pos(wr0 + (lane >> 2) + 8 * h);
#pragma unroll
      for (int nb = 0; nb < BN / 8; ++nb)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int d = i - (j0 + nb * 8 + (lane & 3) * 2 + c);  // i - j
          const bool keep = grouped ? d >= W : (d >= 0 && d < W);
          if (!keep) s[nb][2 * h + c] = -INFINITY;
        }
    }
  };
  auto pack_p = [&](float (&s)[BN / 8][4], uint32_t (&p)[BN / 16][4]) {
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      p[kk][0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
      p[kk][1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
      p[kk][2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      p[kk][3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
    }
  };
  auto issue_pv = [&](uint32_t (&p)[BN / 16][4], int vstage) {
    const uint32_t vb = v_u32 + vstage * Sh::kKBytes;
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk)
      wgmma_rs<T, kHeadDim>(o, p[kk], sw128_desc(vb + (kk >> 2) * kHeadDim * 128 + (kk & 3) * 32), 1);
    wgmma_commit();
  };

  if constexpr (!kPipe) {
    // One tile at a time: S, its softmax, P V, each waited for.
    if (n_v > 0) {
      load_k(0, 0);
      load_v(0, 0);
      cp_async_commit();
      load_q(n_g > 0);
    }
    for (int vt_ = 0; vt_ < n_v; ++vt_) {
      const int buf = vt_ & 1;
      cp_async_wait<0>();
      fence_proxy_async();
      __syncthreads();  // tile vt_ (and Q) landed and visible to wgmma; every warpgroup is done with vt_ - 1
      if (vt_ + 1 < n_v) {
        load_k(vt_ + 1, buf ^ 1);
        load_v(vt_ + 1, buf ^ 1);
        cp_async_commit();
      }
      if (vt_ == n_g && n_g > 0) {  // the neighbor phase starts: Q at the normal positions
        load_q(false);
        fence_proxy_async();
        __syncthreads();
        load_qf();
      } else if (vt_ == 0) {
        load_qf();
      }
      bool any, mask;
      tile_flags(vt_, gi_lo, gi_hi, any, mask);
      if (!(any && wg_has_rows)) continue;
      float s[BN / 8][4];
      issue_s(s, buf);
      wgmma_wait<0>();
      acc_fence(s);
      if (mask) mask_s(s, vt_);
      softmax_step<kHeadDim, BN>(s, m, l, o, a.scale2);
      uint32_t p[BN / 16][4];
      pack_p(s, p);
      issue_pv(p, buf);
      wgmma_wait<0>();
      acc_fence(o);
    }
  } else {
    // Software-pipelined: tile vt_'s S = Q K^T is issued with the previous tile's O += P V behind it, and
    // its softmax runs while that P V is on the tensor cores; O is rescaled once the P V has completed.
    // K runs one tile ahead of V: iteration vt_ reads K_vt_ and V_(vt_-1), and loads K_(vt_+1) into the
    // stage K_(vt_-1) held (its S completed in iteration vt_ - 1) and V_vt_ into the stage of V_(vt_-2)
    // (its P V completed there too); the barrier at the top of each iteration orders both.
    // Every tile of the block's list has a pair of the block's rows in its branch (PhasedTiles), so
    // the wgmma below sit under no condition: ptxas serializes every wgmma behind a
    // branch it cannot prove uniform over the warpgroup (C7518). A warpgroup whose own rows have no pair in
    // a tile multiplies fully masked rows (mask is set whenever any pair of the block's rows is outside
    // the branch), which adds nothing. n_v >= 1: every block has rows.
    uint32_t p[BN / 16][4];
    float s[BN / 8][4];
    auto softmax_tile = [&](int vt_, bool pv_in_flight) {
      bool any, mask;
      tile_flags(vt_, i_lo, i_hi, any, mask);
      if (mask) mask_s(s, vt_);
      float alpha[2];
      const bool raised = softmax_probs<BN>(s, m, l, alpha, a.scale2);
      if (pv_in_flight) {
        wgmma_wait<0>();
        acc_fence(o);
      }
      if (raised) rescale_o<kHeadDim>(o, alpha);
      pack_p(s, p);
    };
    load_k(0, 0);
    cp_async_commit();
    load_q(n_g > 0);
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();  // K_0 and Q landed
    if (n_v > 1) load_k(1, 1);
    load_v(0, 0);
    cp_async_commit();
    load_qf();
    issue_s(s, 0);
    wgmma_wait<0>();
    acc_fence(s);
    softmax_tile(0, false);
    for (int vt_ = 1; vt_ < n_v; ++vt_) {
      cp_async_wait<0>();
      fence_proxy_async();
      __syncthreads();  // K_vt_, V_(vt_-1) (and Q) landed; every warpgroup is done with S_(vt_-1), PV_(vt_-2)
      if (vt_ + 1 < n_v) load_k(vt_ + 1, (vt_ + 1) & 1);
      load_v(vt_, vt_ & 1);
      cp_async_commit();
      if (vt_ == n_g) {  // the neighbor phase starts: Q at the normal positions
        load_q(false);
        fence_proxy_async();
        __syncthreads();
        load_qf();
      }
      issue_s(s, vt_ & 1);
      issue_pv(p, (vt_ - 1) & 1);
      wgmma_wait<1>();  // S_vt_ done; PV_(vt_-1) may still run under the softmax
      acc_fence(s);
      softmax_tile(vt_, true);
    }
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();  // V of the last tile landed
    issue_pv(p, (n_v - 1) & 1);
    wgmma_wait<0>();
    acc_fence(o);
  }
  store_rows<T, kHeadDim>(a.oa, rm, m0, warp, lane, kvh, o, m, l, false, 0);
#endif
}

}  // namespace attn_cuda
}  // namespace selfext
