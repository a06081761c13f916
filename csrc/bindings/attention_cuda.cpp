// The CUDA branch of the attention ops: argument checks and conversion only, then the kernels of
// attention/selfext_cuda.cu and attention/cope_cuda.cu on the caller's stream. python/selfext_native
// routes CUDA arrays here; the output comes allocated from the caller's framework.
//
//   _native.self_extend_attention_cuda(q, k, v, out, inv_freq, mscale, group, window, rope_style,
//                                      rope_dim, scale, stream, rope_table=None, same_stream=False)
//   _native.cope_attention_cuda(q, k, v, pos_emb, out, scale, scale_pos_logits, stream, same_stream=False)
//   _native.rope_table_cuda(inv_freq, mscale, table, stream)
//   _native.self_extend_attention_cuda_workspace_bytes(T_q, T_k, n_heads, n_kv_heads, head_dim,
//                                                      rope_dim, with_table)
//   _native.cope_attention_cuda_workspace_bytes(T_q, T_k, n_heads, n_kv_heads, head_dim, npos_max)
#include <cmath>
#include <cstdint>
#include <string>

#include "attention/attention_cuda.h"
#include "attention/params.h"
#include "bindings/attention_args.h"
#include "bindings/cuda_call.h"
#include "bindings/interop.h"
#include "bindings/registry.h"
#include "core/cuda_info.h"

namespace selfext {
namespace {

void check_head_dim(int64_t d) {
  SELFEXT_CHECK(d == 64 || d == 80 || d == 96 || d == 128, ArgumentError, "head_dim ", d,
                " is not supported on CUDA; supported: 64, 80, 96, 128");
}

// A (T, heads, head_dim) array on the call's device, float16/bfloat16, innermost axis contiguous and
// 16-byte aligned rows (the kernels move 16-byte chunks).
void check_tensor3(const ArrayView& a, const char* name, int device_id, DType dtype) {
  check_device(a, name, Device::kCUDA);
  SELFEXT_CHECK(a.device_id == device_id, ArrayTypeError, name, " is on cuda:", a.device_id,
                " but q is on cuda:", device_id, " (all arrays of one call must share a device)");
  check_ndim(a, name, 3);
  check_dtype(a, name, {dtype});
  SELFEXT_CHECK(a.strides[2] == 1 || a.shape[2] == 1, ArgumentError, name,
                ": the last axis (head_dim) must be contiguous, got stride ", a.strides[2]);
  const bool aligned = reinterpret_cast<uintptr_t>(a.data) % 16 == 0 && (a.shape[0] <= 1 || a.strides[0] % 8 == 0) &&
                       (a.shape[1] <= 1 || a.strides[1] % 8 == 0);
  SELFEXT_CHECK(aligned, ArgumentError, name,
                ": rows must start on 16-byte boundaries (data pointer aligned, strides multiples of 8 elements)");
}

struct CallDevice {
  Device device;
  int id;
};

CallDevice cuda_call_device(py::handle q_obj, const char* op) {
  auto [device, id] = array_device(q_obj, "q");
  SELFEXT_CHECK(device == Device::kCUDA, ArrayTypeError, op, ": q is on cpu; this entry point takes CUDA arrays ",
                "(the CPU op takes CPU arrays)");
  require_cuda();
  return {device, id};
}

void fill_qkvo(AttentionParams& p, const ArrayView& q, const ArrayView& k, const ArrayView& v, const ArrayView& out,
               const char* op) {
  SELFEXT_CHECK(k.shape[0] == v.shape[0] && k.shape[1] == v.shape[1] && k.shape[2] == v.shape[2], ArgumentError,
                op, ": v must have the shape of k ", k.shape_str(), ", got ", v.shape_str());
  SELFEXT_CHECK(out.shape[0] == q.shape[0] && out.shape[1] == q.shape[1] && out.shape[2] == q.shape[2],
                ArgumentError, op, ": out must have the shape of q ", q.shape_str(), ", got ", out.shape_str());
  SELFEXT_CHECK(q.shape[2] == k.shape[2], ArgumentError, op, ": q and k must share head_dim, got ", q.shape_str(),
                " and ", k.shape_str());
  check_head_dim(q.shape[2]);
  SELFEXT_CHECK(k.shape[1] >= 1 && q.shape[1] % k.shape[1] == 0, ArgumentError, op, ": the number of query heads (",
                q.shape[1], ") must be a multiple of the number of kv heads (", k.shape[1], ")");
  SELFEXT_CHECK(q.shape[0] <= k.shape[0], ArgumentError, op, ": q has ", q.shape[0], " positions but k only ",
                k.shape[0], " (the queries are the last T_q of the T_k keys)");
  fill_attention_views(p, q, k, v, out);
}

void self_extend_attention_cuda_op(py::object q_obj, py::object k_obj, py::object v_obj, py::object out_obj,
                                   py::object inv_freq_obj, double mscale, int64_t group, int64_t window,
                                   const std::string& rope_style, int rope_dim, double scale, int64_t stream,
                                   py::object rope_table_obj, bool same_stream) {
  const char* op = "self_extend_attention_cuda";
  const CallDevice cd = cuda_call_device(q_obj, op);
  const int64_t ds = dlpack_stream(stream, same_stream);  // what every array's __dlpack__ is asked for
  SELFEXT_CHECK(group >= 1, ArgumentError, "group must be >= 1, got ", group);
  SELFEXT_CHECK(window >= 1, ArgumentError, "window must be >= 1, got ", window);
  SELFEXT_CHECK(std::isfinite(scale), ArgumentError, "scale must be finite, got ", scale);
  SELFEXT_CHECK(std::isfinite(mscale) && mscale > 0, ArgumentError, "mscale must be finite and > 0, got ", mscale);
  ArrayArg q = to_array(q_obj, "q", false, ds);
  check_dtype(q.view, "q", {DType::kFloat16, DType::kBFloat16});
  check_tensor3(q.view, "q", cd.id, q.view.dtype);
  ArrayArg k = to_array(k_obj, "k", false, ds);
  check_tensor3(k.view, "k", cd.id, q.view.dtype);
  ArrayArg v = to_array(v_obj, "v", false, ds);
  check_tensor3(v.view, "v", cd.id, q.view.dtype);
  ArrayArg out = to_array(out_obj, "out", true, ds);
  check_tensor3(out.view, "out", cd.id, q.view.dtype);
  AttentionParams p;
  fill_qkvo(p, q.view, k.view, v.view, out.view, op);
  SELFEXT_CHECK(rope_dim >= 2 && rope_dim % 2 == 0 && rope_dim <= p.head_dim, ArgumentError,
                "rope_dim must be even and in [2, head_dim = ", p.head_dim, "], got ", rope_dim);
  p.scale = float(scale);
  p.group = group;
  p.window = window;
  p.rope_dim = rope_dim;
  p.rope_style = parse_rope_style(rope_style);
  p.stream = reinterpret_cast<void*>(stream);
  const int n_pairs = rope_dim / 2;

  ArrayArg table, inv;
  const double* inv_ptr = nullptr;
  if (!rope_table_obj.is_none()) {
    table = to_array(rope_table_obj, "rope_table", false, ds);
    check_device(table.view, "rope_table", Device::kCUDA);
    SELFEXT_CHECK(table.view.device_id == cd.id, ArrayTypeError, "rope_table is on cuda:", table.view.device_id,
                  " but q is on cuda:", cd.id);
    check_dtype(table.view, "rope_table", {DType::kFloat32});
    check_contiguous(table.view, "rope_table");
    SELFEXT_CHECK(table.view.ndim == 3 && table.view.shape[1] == n_pairs && table.view.shape[2] == 2, ArgumentError,
                  "rope_table must have shape (n_pos, rope_dim/2 = ", n_pairs, ", 2), got ", table.view.shape_str());
    SELFEXT_CHECK(table.view.shape[0] >= p.T_k, ArgumentError, "rope_table covers ", table.view.shape[0],
                  " positions; T_k = ", p.T_k, " needs at least that many");
    p.rope_table = table.view.ptr<float>();
    p.rope_n_pos = table.view.shape[0];
  } else {
    SELFEXT_CHECK(!inv_freq_obj.is_none(), ArgumentError, "inv_freq is required when no rope_table is given");
    inv = to_array(inv_freq_obj, "inv_freq", false);
    check_device(inv.view, "inv_freq", Device::kCPU);
    check_dtype(inv.view, "inv_freq", {DType::kFloat64});
    check_contiguous(inv.view, "inv_freq");
    SELFEXT_CHECK(inv.view.ndim == 1 && inv.view.shape[0] == n_pairs, ArgumentError,
                  "inv_freq must have shape (rope_dim/2 = ", n_pairs, ",), got ", inv.view.shape_str());
    inv_ptr = inv.view.ptr<double>();
    for (int i = 0; i < n_pairs; ++i)
      SELFEXT_CHECK(std::isfinite(inv_ptr[i]) && inv_ptr[i] >= 0, ArgumentError, "inv_freq[", i,
                    "] must be finite and >= 0, got ", inv_ptr[i]);
  }
  run_on_device(cd.id, [&] {
#if defined(SELFEXT_WITH_CUDA)
    self_extend_attention_cuda_freqs(p, inv_ptr, mscale);
#endif
  });
}

void cope_attention_cuda_op(py::object q_obj, py::object k_obj, py::object v_obj, py::object pe_obj,
                            py::object out_obj, double scale, bool scale_pos_logits, int64_t stream,
                            bool same_stream) {
  const char* op = "cope_attention_cuda";
  const CallDevice cd = cuda_call_device(q_obj, op);
  const int64_t ds = dlpack_stream(stream, same_stream);  // what every array's __dlpack__ is asked for
  SELFEXT_CHECK(std::isfinite(scale), ArgumentError, "scale must be finite, got ", scale);
  ArrayArg q = to_array(q_obj, "q", false, ds);
  check_dtype(q.view, "q", {DType::kFloat16, DType::kBFloat16});
  check_tensor3(q.view, "q", cd.id, q.view.dtype);
  ArrayArg k = to_array(k_obj, "k", false, ds);
  check_tensor3(k.view, "k", cd.id, q.view.dtype);
  ArrayArg v = to_array(v_obj, "v", false, ds);
  check_tensor3(v.view, "v", cd.id, q.view.dtype);
  ArrayArg out = to_array(out_obj, "out", true, ds);
  check_tensor3(out.view, "out", cd.id, q.view.dtype);
  ArrayArg pe = to_array(pe_obj, "pos_emb", false, ds);
  check_device(pe.view, "pos_emb", Device::kCUDA);
  SELFEXT_CHECK(pe.view.device_id == cd.id, ArrayTypeError, "pos_emb is on cuda:", pe.view.device_id,
                " but q is on cuda:", cd.id);
  check_dtype(pe.view, "pos_emb", {q.view.dtype});
  check_contiguous(pe.view, "pos_emb");
  SELFEXT_CHECK(reinterpret_cast<uintptr_t>(pe.view.data) % 16 == 0, ArgumentError,
                "pos_emb: data must be 16-byte aligned");
  AttentionParams p;
  fill_qkvo(p, q.view, k.view, v.view, out.view, op);
  if (pe.view.ndim == 2) {
    SELFEXT_CHECK(pe.view.shape[1] == p.head_dim, ArgumentError, "pos_emb must have shape (npos_max, head_dim = ",
                  p.head_dim, ") or (n_heads, npos_max, head_dim), got ", pe.view.shape_str());
    p.npos_max = int(pe.view.shape[0]);
    p.pe_stride_h = 0;
  } else {
    SELFEXT_CHECK(pe.view.ndim == 3 && pe.view.shape[0] == p.n_heads && pe.view.shape[2] == p.head_dim,
                  ArgumentError, "pos_emb must have shape (npos_max, head_dim = ", p.head_dim,
                  ") or (n_heads = ", p.n_heads, ", npos_max, head_dim), got ", pe.view.shape_str());
    p.npos_max = int(pe.view.shape[1]);
    p.pe_stride_h = pe.view.shape[1] * p.head_dim;
  }
  SELFEXT_CHECK(p.npos_max >= 2, ArgumentError, "npos_max (pos_emb's position axis) must be >= 2, got ", p.npos_max);
  p.pos_emb = pe.view.data;
  p.scale = float(scale);
  p.scale_pos_logits = scale_pos_logits;
  p.rope_dim = 0;
  p.stream = reinterpret_cast<void*>(stream);
  run_on_device(cd.id, [&] {
#if defined(SELFEXT_WITH_CUDA)
    cope_attention_cuda(p);
#endif
  });
}

void rope_table_cuda_op(py::object inv_freq_obj, double mscale, py::object table_obj, int64_t stream) {
  auto [device, id] = array_device(table_obj, "table");
  SELFEXT_CHECK(device == Device::kCUDA, ArrayTypeError, "table must be a CUDA array");
  require_cuda();
  ArrayArg inv = to_array(inv_freq_obj, "inv_freq", false);
  check_device(inv.view, "inv_freq", Device::kCPU);
  check_dtype(inv.view, "inv_freq", {DType::kFloat64});
  check_contiguous(inv.view, "inv_freq");
  SELFEXT_CHECK(inv.view.ndim == 1 && inv.view.shape[0] >= 1 && inv.view.shape[0] <= kMaxRopePairs, ArgumentError,
                "inv_freq must be 1-D with 1..", kMaxRopePairs, " entries, got ", inv.view.shape_str());
  SELFEXT_CHECK(std::isfinite(mscale) && mscale > 0, ArgumentError, "mscale must be finite and > 0, got ", mscale);
  ArrayArg table = to_array(table_obj, "table", true, stream);
  check_dtype(table.view, "table", {DType::kFloat32});
  check_contiguous(table.view, "table");
  const int n_pairs = int(inv.view.shape[0]);
  SELFEXT_CHECK(table.view.ndim == 3 && table.view.shape[1] == n_pairs && table.view.shape[2] == 2 &&
                    table.view.shape[0] >= 1,
                ArgumentError, "table must have shape (n_pos, ", n_pairs, ", 2), got ", table.view.shape_str());
  const double* f = inv.view.ptr<double>();
  const int64_t n_pos = table.view.shape[0];
  float* dst = table.view.ptr<float>();
  run_on_device(id, [&] {
#if defined(SELFEXT_WITH_CUDA)
    build_rope_table_cuda(f, n_pairs, mscale, n_pos, dst, reinterpret_cast<void*>(stream));
#endif
  });
}

AttentionParams plan_params(int64_t T_q, int64_t T_k, int n_heads, int n_kv_heads, int head_dim) {
  SELFEXT_CHECK(n_kv_heads >= 1 && n_heads % n_kv_heads == 0 && T_q >= 0 && T_q <= T_k, ArgumentError,
                "inconsistent sizes");
  AttentionParams p;
  p.T_q = T_q;
  p.T_k = T_k;
  p.n_heads = n_heads;
  p.n_kv_heads = n_kv_heads;
  p.head_dim = head_dim;
  return p;
}

void register_attention_cuda(py::module_& m) {
  m.def("self_extend_attention_cuda", &self_extend_attention_cuda_op, py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("out"), py::arg("inv_freq"), py::arg("mscale"), py::arg("group"), py::arg("window"),
        py::arg("rope_style"), py::arg("rope_dim"), py::arg("scale"), py::arg("stream"),
        py::arg("rope_table") = py::none(), py::arg("same_stream") = false,
        "SelfExtend attention on CUDA arrays (float16/bfloat16): q (T_q, H, D), k and v (T_k, H_kv, D) before "
        "RoPE, out like q; runs on `stream`. The RoPE table is built on the device from inv_freq (float64 NumPy, "
        "(rope_dim/2,)) and mscale, unless a device rope_table (n_pos >= T_k, rope_dim/2, 2) float32 is given. "
        "same_stream=True: the arrays were produced on `stream`, so DLPack is asked for no synchronization.");
  m.def("cope_attention_cuda", &cope_attention_cuda_op, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("pos_emb"),
        py::arg("out"), py::arg("scale"), py::arg("scale_pos_logits"), py::arg("stream"), py::arg("same_stream") = false,
        "Contextual position encoding attention on CUDA arrays; pos_emb (npos_max, D) or (H, npos_max, D). "
        "same_stream=True: the arrays were produced on `stream`, so DLPack is asked for no synchronization.");
  m.def("rope_table_cuda", &rope_table_cuda_op, py::arg("inv_freq"), py::arg("mscale"), py::arg("table"),
        py::arg("stream"), "Fill a CUDA float32 table (n_pos, n_pairs, 2) with mscale * (cos, sin)(pos * inv_freq).");
  m.def(
      "self_extend_attention_cuda_workspace_bytes",
      [](int64_t T_q, int64_t T_k, int n_heads, int n_kv_heads, int head_dim, int rope_dim, bool with_table) {
        require_cuda();
        AttentionParams p = plan_params(T_q, T_k, n_heads, n_kv_heads, head_dim);
        p.rope_dim = rope_dim;
        static const float dummy = 0.f;
        p.rope_table = with_table ? &dummy : nullptr;
#if defined(SELFEXT_WITH_CUDA)
        return self_extend_attention_cuda_workspace_bytes(p);
#else
        return int64_t(0);
#endif
      },
      py::arg("T_q"), py::arg("T_k"), py::arg("n_heads"), py::arg("n_kv_heads"), py::arg("head_dim"),
      py::arg("rope_dim"), py::arg("with_table"));
  m.def(
      "cope_attention_cuda_workspace_bytes",
      [](int64_t T_q, int64_t T_k, int n_heads, int n_kv_heads, int head_dim, int npos_max) {
        require_cuda();
        AttentionParams p = plan_params(T_q, T_k, n_heads, n_kv_heads, head_dim);
        p.npos_max = npos_max;
#if defined(SELFEXT_WITH_CUDA)
        return cope_attention_cuda_workspace_bytes(p);
#else
        return int64_t(0);
#endif
      },
      py::arg("T_q"), py::arg("T_k"), py::arg("n_heads"), py::arg("n_kv_heads"), py::arg("head_dim"),
      py::arg("npos_max"));
}

BindingRegistrar registrar("attention_cuda", &register_attention_cuda);

}  // namespace
}  // namespace selfext
