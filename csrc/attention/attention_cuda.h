// Host-side entry points of the CUDA attention kernels beyond the two in params.h. Plain C++ (no CUDA
// types), so bindings/attention_cuda.cpp and the model can include it in a build without CUDA; the
// definitions live in selfext_cuda.cu / cope_cuda.cu and exist only when SELFEXT_WITH_CUDA is set.
//
// For CUDA, every pointer in AttentionParams (q, k, v, out, pos_emb, rope_table) is a device pointer,
// and p.stream is the caller's cudaStream_t. Temporaries (the RoPE table when built here, split-K
// partial states, CoPE workspaces) are taken with cudaMallocAsync on that stream and freed on it.
#pragma once
#include <cstdint>

#include "attention/params.h"

namespace selfext {

// The largest rope_dim / 2 the device table builder takes by value (head_dim <= 128).
constexpr int kMaxRopePairs = 64;

// Fill a device table (n_pos, n_pairs, 2) float32 with mscale * (cos, sin)(pos * inv_freq[p]), angles
// and trig in double on the device: the same numbers as build_rope_table (rope.h) on the host.
void build_rope_table_cuda(const double* inv_freq_host, int n_pairs, double mscale, int64_t n_pos, float* table_dev,
                           void* stream);

// SelfExtend with the table built on the device for this call (positions 0..T_k-1) when
// p.rope_table is null; otherwise exactly self_extend_attention_cuda(p).
void self_extend_attention_cuda_freqs(AttentionParams p, const double* inv_freq_host, double mscale);

// Device bytes a call takes beyond its inputs and output (for the benches' memory report).
int64_t self_extend_attention_cuda_workspace_bytes(const AttentionParams& p);
int64_t cope_attention_cuda_workspace_bytes(const AttentionParams& p);

// Throws ArgumentError unless ptr is 16-byte aligned and both strides are multiples of 8 elements.
void check_rows_aligned_16(const void* ptr, int64_t stride_t, int64_t stride_h, const char* op, const char* name);

// Make `device` current; returns the previous device (restore with the same call).
int cuda_exchange_device(int device);

}  // namespace selfext
