// Checks the wgmma building blocks of csrc/attention/wgmma.cuh on the device, against a host product:
// S = Q K^T (m64n64k16 from 128B-swizzled shared memory) and O = P V (m64n{64,128}k16, P from registers in
// the m16n8k16 A layout, V^T from shared memory), f16 and bf16, head dims 64 and 128. The accumulators are
// written out by the register layout wgmma.cuh states, so a wrong descriptor, swizzle or layout fails here.
//   nvcc -std=c++17 -Icsrc -arch=sm_90a -O2 --expt-relaxed-constexpr -o /tmp/wgmma_probe scripts/wgmma_probe.cu
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "attention/attention_tiles.cuh"
#include "attention/wgmma.cuh"

using namespace selfext;
using namespace selfext::attn_cuda;

template <typename T, int D>
__global__ void probe(const uint16_t* q, const uint16_t* k, const uint16_t* pm, const uint16_t* v, float* s_out,
                      float* o_out) {
  extern __shared__ unsigned char raw[];
  const uint32_t r32 = smem_u32(raw), b32 = (r32 + 1023u) & ~1023u;
  unsigned char* base = raw + (b32 - r32);
  unsigned char* qs = base;                 // 64 x D
  unsigned char* ks = qs + 64 * D * 2;      // 64 x D
  unsigned char* vts = ks + 64 * D * 2;     // D x 64 (V^T)
  for (int idx = threadIdx.x; idx < 64 * D / 8; idx += 128) {
    const int r = idx / (D / 8), c = idx % (D / 8);
    *reinterpret_cast<uint4*>(qs + sw128_offset<64>(r, c)) = *reinterpret_cast<const uint4*>(q + r * D + c * 8);
    *reinterpret_cast<uint4*>(ks + sw128_offset<64>(r, c)) = *reinterpret_cast<const uint4*>(k + r * D + c * 8);
  }
  for (int idx = threadIdx.x; idx < D * 8; idx += 128) {
    const int d = idx / 8, c = idx % 8;
    uint16_t e[8];
    for (int t = 0; t < 8; ++t) e[t] = v[(c * 8 + t) * D + d];
    *reinterpret_cast<uint4*>(vts + sw128_offset<D>(d, c)) = *reinterpret_cast<const uint4*>(e);
  }
  fence_proxy_async();
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float s[8][4];
  wgmma_fence();
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t off = (kk >> 2) * 64 * 128 + (kk & 3) * 32;
    wgmma_m64n64k16_ss<T>(s, sw128_desc(smem_u32(qs) + off), sw128_desc(smem_u32(ks) + off), kk > 0);
  }
  wgmma_commit();
  wgmma_wait<0>();
  acc_fence(s);
  for (int j = 0; j < 8; ++j)
    for (int c = 0; c < 4; ++c) {
      const int row = warp * 16 + lane / 4 + 8 * (c / 2), col = 8 * j + 2 * (lane % 4) + (c % 2);
      s_out[row * 64 + col] = s[j][c];
    }
  float o[D / 8][4];
  for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  wgmma_fence();
  for (int kk = 0; kk < 4; ++kk) {
    const int r = warp * 16 + lane / 4, k0 = 16 * kk + 2 * (lane % 4);
    auto pk = [&](int rr, int cc) { return uint32_t(pm[rr * 64 + cc]) | (uint32_t(pm[rr * 64 + cc + 1]) << 16); };
    const uint32_t a[4] = {pk(r, k0), pk(r + 8, k0), pk(r, k0 + 8), pk(r + 8, k0 + 8)};
    if constexpr (D == 64) wgmma_m64n64k16_rs<T>(o, a, sw128_desc(smem_u32(vts) + kk * 32), 1);
    else wgmma_m64n128k16_rs<T>(o, a, sw128_desc(smem_u32(vts) + kk * 32), 1);
  }
  wgmma_commit();
  wgmma_wait<0>();
  acc_fence(o);
  for (int j = 0; j < D / 8; ++j)
    for (int c = 0; c < 4; ++c) {
      const int row = warp * 16 + lane / 4 + 8 * (c / 2), col = 8 * j + 2 * (lane % 4) + (c % 2);
      o_out[row * D + col] = o[j][c];
    }
}

static float to_f(uint16_t b, bool bf) {
  return bf ? bf16_to_float(b) : fp16_to_float(b);
}

template <typename T, int D>
static bool run(const char* name) {
  const bool bf = std::is_same<T, bf16>::value;
  std::mt19937 rng(1234 + D);
  std::normal_distribution<float> nd;
  auto bits = [&](float x) { return bf ? uint16_t(float_to_bf16(x)) : uint16_t(float_to_fp16(x)); };
  std::vector<uint16_t> q(64 * D), k(64 * D), p(64 * 64), v(64 * D);
  for (auto& x : q) x = bits(nd(rng));
  for (auto& x : k) x = bits(nd(rng));
  for (auto& x : p) x = bits(std::fabs(nd(rng)));
  for (auto& x : v) x = bits(nd(rng));
  uint16_t *dq, *dk, *dp, *dv;
  float *ds, *dout;
  cudaMalloc(&dq, q.size() * 2); cudaMalloc(&dk, k.size() * 2); cudaMalloc(&dp, p.size() * 2); cudaMalloc(&dv, v.size() * 2);
  cudaMalloc(&ds, 64 * 64 * 4); cudaMalloc(&dout, 64 * D * 4);
  cudaMemcpy(dq, q.data(), q.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(dk, k.data(), k.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(dp, p.data(), p.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(dv, v.data(), v.size() * 2, cudaMemcpyHostToDevice);
  cudaMemset(ds, 0xff, 64 * 64 * 4);  // NaN: unwritten elements fail
  cudaMemset(dout, 0xff, 64 * D * 4);
  const size_t smem = 3 * 64 * D * 2 + 1024;
  cudaFuncSetAttribute(probe<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  probe<T, D><<<1, 128, smem>>>(dq, dk, dp, dv, ds, dout);
  cudaError_t err = cudaDeviceSynchronize();
  if (err != cudaSuccess) {
    std::printf("%s: CUDA error %s\n", name, cudaGetErrorString(err));
    return false;
  }
  std::vector<float> s(64 * 64), o(64 * D);
  cudaMemcpy(s.data(), ds, s.size() * 4, cudaMemcpyDeviceToHost);
  cudaMemcpy(o.data(), dout, o.size() * 4, cudaMemcpyDeviceToHost);
  double es = 0, ns = 0, eo = 0, no = 0;
  for (int i = 0; i < 64; ++i)
    for (int j = 0; j < 64; ++j) {
      double ref = 0;
      for (int d = 0; d < D; ++d) ref += double(to_f(q[i * D + d], bf)) * to_f(k[j * D + d], bf);
      es = std::fmax(es, std::fabs(s[i * 64 + j] - ref)) + (std::isnan(s[i * 64 + j]) ? 1e30 : 0);
      ns = std::fmax(ns, std::fabs(ref));
    }
  for (int i = 0; i < 64; ++i)
    for (int d = 0; d < D; ++d) {
      double ref = 0;
      for (int j = 0; j < 64; ++j) ref += double(to_f(p[i * 64 + j], bf)) * to_f(v[j * D + d], bf);
      eo = std::fmax(eo, std::fabs(o[i * D + d] - ref)) + (std::isnan(o[i * D + d]) ? 1e30 : 0);
      no = std::fmax(no, std::fabs(ref));
    }
  const bool ok = es / ns < 1e-5 && eo / no < 1e-5;
  std::printf("%s D=%d: S max err %.3g of %.3g, O max err %.3g of %.3g: %s\n", name, D, es, ns, eo, no,
              ok ? "ok" : "FAIL");
  return ok;
}

int main() {
  bool ok = run<bf16, 128>("bf16") & run<bf16, 64>("bf16") & run<f16, 128>("f16") & run<f16, 64>("f16");
  std::printf(ok ? "wgmma probe: all ok\n" : "wgmma probe: FAILED\n");
  return ok ? 0 : 1;
}
