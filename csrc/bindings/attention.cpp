// self_extend_attention(q, k, v, out, ...) and cope_attention(q, k, v, pos_emb, out, ...): argument checks,
// the RoPE table (built here from the caller's per-pair inverse frequencies, in double), and dispatch to
// the CPU or CUDA kernels of attention/params.h. Shapes: q, out (T_q, H, D); k, v (T_k, H_kv, D);
// pos_emb (npos_max, D) or (H, npos_max, D). Strided arrays are fine as long as head_dim is contiguous.
#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "attention/params.h"
#include "attention/rope.h"
#include "bindings/attention_args.h"
#include "bindings/cuda_call.h"
#include "bindings/interop.h"
#include "bindings/registry.h"
#include "core/cuda_info.h"
#include "core/thread_pool.h"

namespace selfext {
namespace {

struct AttnArrays {
  ArrayArg q, k, v, out;
  Device device = Device::kCPU;
  int device_id = 0;
  int64_t dlpack_stream = kNoStream;  // what the arrays' __dlpack__ was asked for (to_array); later arrays too
};

void check_float(const ArrayView& a, const char* name) {
  check_dtype(a, name, {DType::kFloat32, DType::kFloat16, DType::kBFloat16});
}

void check_head_dim_contiguous(const ArrayView& a, const char* name) {
  SELFEXT_CHECK(a.shape[a.ndim - 1] == 1 || a.strides[a.ndim - 1] == 1, ArgumentError, name,
                ": the last (head_dim) axis must be contiguous (stride 1), got stride ", a.strides[a.ndim - 1]);
}

AttnArrays convert_qkv(py::handle q, py::handle k, py::handle v, py::handle out, int64_t stream, bool same_stream) {
  AttnArrays a;
  auto [device, device_id] = array_device(q, "q");
  a.device = device;
  a.device_id = device_id;
  if (device == Device::kCUDA) require_cuda();
  a.dlpack_stream = device == Device::kCUDA ? dlpack_stream(stream, same_stream) : kNoStream;
  a.q = to_array(q, "q", false, a.dlpack_stream);
  a.k = to_array(k, "k", false, a.dlpack_stream);
  a.v = to_array(v, "v", false, a.dlpack_stream);
  a.out = to_array(out, "out", true, a.dlpack_stream);
  const std::pair<const ArrayArg*, const char*> all[] = {{&a.q, "q"}, {&a.k, "k"}, {&a.v, "v"}, {&a.out, "out"}};
  for (auto& [arr, name] : all) {
    check_device(arr->view, name, device);
    SELFEXT_CHECK(arr->view.device_id == device_id, ArrayTypeError, name, " is on device ", arr->view.device_id,
                  " but q is on device ", device_id);
    check_ndim(arr->view, name, 3);
    check_float(arr->view, name);
    check_head_dim_contiguous(arr->view, name);
  }
  const ArrayView &qv = a.q.view, &kv = a.k.view, &vv = a.v.view, &ov = a.out.view;
  SELFEXT_CHECK(kv.dtype == vv.dtype, ArrayTypeError, "k and v must share a dtype, got ", dtype_name(kv.dtype),
                " and ", dtype_name(vv.dtype));
  SELFEXT_CHECK(ov.dtype == qv.dtype, ArrayTypeError, "out must have q's dtype ", dtype_name(qv.dtype), ", got ",
                dtype_name(ov.dtype));
  const int64_t D = qv.shape[2];
  SELFEXT_CHECK(kv.shape[2] == D && vv.shape[2] == D, ArgumentError, "k and v must have head_dim ", D,
                " like q; got k ", kv.shape_str(), ", v ", vv.shape_str());
  SELFEXT_CHECK(vv.shape[0] == kv.shape[0] && vv.shape[1] == kv.shape[1], ArgumentError,
                "v must have the shape of k ", kv.shape_str(), ", got ", vv.shape_str());
  SELFEXT_CHECK(kv.shape[1] >= 1 && qv.shape[1] % kv.shape[1] == 0, ArgumentError, "q's heads (", qv.shape[1],
                ") must be a multiple of k's heads (", kv.shape[1], ")");
  SELFEXT_CHECK(qv.shape[0] >= 1 && kv.shape[0] >= qv.shape[0], ArgumentError,
                "need 1 <= T_q <= T_k (the queries are the last T_q positions); got q ", qv.shape_str(), ", k ",
                kv.shape_str());
  SELFEXT_CHECK(ov.shape[0] == qv.shape[0] && ov.shape[1] == qv.shape[1] && ov.shape[2] == D, ArgumentError,
                "out must have q's shape ", qv.shape_str(), ", got ", ov.shape_str());
  SELFEXT_CHECK(D == 64 || D == 80 || D == 96 || D == 128, ArgumentError, "head_dim ", D,
                " is not supported; supported: 64, 80, 96, 128");
  return a;
}

AttentionParams make_params(const AttnArrays& a, float scale) {
  AttentionParams p;
  fill_attention_views(p, a.q.view, a.k.view, a.v.view, a.out.view);
  SELFEXT_CHECK(std::isfinite(scale) && scale > 0.f, ArgumentError, "scale must be finite and > 0, got ", scale);
  p.scale = scale;
  return p;
}

// inv_freq: float64 (rope_dim/2,) on the host. Fills p's RoPE style and dim; returns the checked view.
ArrayArg check_rope(py::handle inv_freq, double mscale, const std::string& style, int rope_dim, AttentionParams& p) {
  SELFEXT_CHECK(rope_dim >= 0 && rope_dim % 2 == 0 && rope_dim <= p.head_dim, ArgumentError,
                "rope_dim must be even and in [0, head_dim = ", p.head_dim, "], got ", rope_dim);
  SELFEXT_CHECK(std::isfinite(mscale) && mscale > 0.0, ArgumentError, "mscale must be finite and > 0, got ", mscale);
  p.rope_style = parse_rope_style(style);
  p.rope_dim = rope_dim;
  ArrayArg f = to_array(inv_freq, "inv_freq", false);
  check_device(f.view, "inv_freq", Device::kCPU);
  check_dtype(f.view, "inv_freq", {DType::kFloat64});
  check_ndim(f.view, "inv_freq", 1);
  check_contiguous(f.view, "inv_freq");
  SELFEXT_CHECK(f.view.shape[0] == rope_dim / 2, ArgumentError, "inv_freq must have rope_dim/2 = ", rope_dim / 2,
                " entries, got ", f.view.shape_str());
  const double* fr = f.view.ptr<double>();
  for (int i = 0; i < rope_dim / 2; ++i)
    SELFEXT_CHECK(std::isfinite(fr[i]) && fr[i] >= 0.0, ArgumentError, "inv_freq[", i,
                  "] must be finite and >= 0, got ", fr[i]);
  return f;
}

// The last RoPE table built, reused while the frequencies and mscale stay the same and it covers T_k
// positions: building one costs n_pos * rope_dim/2 sin/cos pairs in double (~20 ms at 8k positions,
// D = 128), more than a whole decode step. Grown geometrically. Shared ownership: a call still using an
// old table keeps it alive.
struct RopeTable {
  std::vector<double> inv_freq;
  double mscale = 0.0;
  int64_t n_pos = 0;
  std::vector<float> data;
};

std::shared_ptr<const RopeTable> rope_table_for(const double* inv_freq, int n_pairs, double mscale, int64_t n_pos) {
  static std::mutex mutex;
  static std::shared_ptr<const RopeTable> last;
  std::lock_guard<std::mutex> lock(mutex);
  const bool same = last && last->mscale == mscale && int(last->inv_freq.size()) == n_pairs &&
                    std::equal(inv_freq, inv_freq + n_pairs, last->inv_freq.begin());
  if (same && last->n_pos >= n_pos) return last;
  auto t = std::make_shared<RopeTable>();
  t->inv_freq.assign(inv_freq, inv_freq + n_pairs);
  t->mscale = mscale;
  t->n_pos = same ? std::max(n_pos, 2 * last->n_pos) : n_pos;
  t->data.resize(size_t(t->n_pos) * n_pairs * 2);
  build_rope_table(inv_freq, n_pairs, mscale, t->n_pos, t->data.data());
  last = t;
  return t;
}

void run_cpu_or_cuda(const AttnArrays& a, AttentionParams& p, const ArrayArg* inv_freq, double mscale, bool cope) {
  if (a.device == Device::kCPU) {
    py::gil_scoped_release release;
    std::shared_ptr<const RopeTable> table;
    if (p.rope_dim > 0) {
      table = rope_table_for(inv_freq->view.ptr<double>(), p.rope_dim / 2, mscale, p.T_k);
      p.rope_table = table->data.data();
      p.rope_n_pos = table->n_pos;
    }
    auto pool = default_pool();
    if (cope)
      cope_attention_cpu(p, *pool);
    else
      self_extend_attention_cpu(p, *pool);
    return;
  }
  run_on_device(a.device_id, [&] {
    if (cope) {
      SELFEXT_CHECK(p.rope_dim == 0, BackendError,
                    "cope_attention on CUDA takes q and k already rotated (rope_dim = 0); got rope_dim ", p.rope_dim);
      cope_attention_cuda(p);
    } else if (p.rope_dim > 0) {
      self_extend_attention_cuda_freqs(p, inv_freq->view.ptr<double>(), mscale);
    } else {
      self_extend_attention_cuda(p);
    }
  });
}

void self_extend_attention_op(py::object q, py::object k, py::object v, py::object out, int64_t group, int64_t window,
                              py::object inv_freq, int rope_dim, float scale, double mscale,
                              const std::string& rope_style, int64_t stream, bool same_stream) {
  SELFEXT_CHECK(group >= 1, ArgumentError, "group must be >= 1, got ", group);
  SELFEXT_CHECK(window >= 1, ArgumentError, "window must be >= 1, got ", window);
  AttnArrays a = convert_qkv(q, k, v, out, stream, same_stream);
  AttentionParams p = make_params(a, scale);
  p.group = group;
  p.window = window;
  p.stream = reinterpret_cast<void*>(stream);
  SELFEXT_CHECK(rope_dim >= 2, ArgumentError, "self_extend_attention needs RoPE: rope_dim must be >= 2, got ",
                rope_dim);
  ArrayArg f = check_rope(inv_freq, mscale, rope_style, rope_dim, p);
  run_cpu_or_cuda(a, p, &f, mscale, false);
}

void cope_attention_op(py::object q, py::object k, py::object v, py::object pos_emb, py::object out, float scale,
                       bool scale_pos_logits, py::object inv_freq, double mscale, const std::string& rope_style,
                       int rope_dim, int64_t stream, bool same_stream) {
  AttnArrays a = convert_qkv(q, k, v, out, stream, same_stream);
  AttentionParams p = make_params(a, scale);
  p.stream = reinterpret_cast<void*>(stream);
  p.scale_pos_logits = scale_pos_logits;
  ArrayArg e = to_array(pos_emb, "pos_emb", false, a.dlpack_stream);
  check_device(e.view, "pos_emb", a.device);
  SELFEXT_CHECK(e.view.ndim == 2 || e.view.ndim == 3, ArgumentError,
                "pos_emb must be (npos_max, head_dim) or (n_heads, npos_max, head_dim), got ", e.view.shape_str());
  check_dtype(e.view, "pos_emb", {a.q.view.dtype});
  check_contiguous(e.view, "pos_emb");
  const int nd = e.view.ndim;
  SELFEXT_CHECK(e.view.shape[nd - 1] == p.head_dim, ArgumentError, "pos_emb must have head_dim ", p.head_dim,
                " in its last axis, got ", e.view.shape_str());
  if (nd == 3)
    SELFEXT_CHECK(e.view.shape[0] == p.n_heads, ArgumentError, "a per-head pos_emb must have n_heads = ", p.n_heads,
                  " rows in its first axis, got ", e.view.shape_str());
  const int64_t npos = e.view.shape[nd - 2];
  SELFEXT_CHECK(npos >= 2 && npos <= (int64_t(1) << 24), ArgumentError, "pos_emb: npos_max must be >= 2, got ", npos);
  p.pos_emb = e.view.data;
  p.npos_max = int(npos);
  p.pe_stride_h = nd == 3 ? npos * p.head_dim : 0;
  ArrayArg f;
  if (!inv_freq.is_none()) f = check_rope(inv_freq, mscale, rope_style, rope_dim, p);
  else
    SELFEXT_CHECK(rope_dim == 0, ArgumentError, "rope_dim = ", rope_dim, " needs inv_freq");
  run_cpu_or_cuda(a, p, &f, mscale, true);
}

void register_attention(py::module_& m) {
  m.def("self_extend_attention", &self_extend_attention_op, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
        py::kw_only(), py::arg("group"), py::arg("window"), py::arg("inv_freq"), py::arg("rope_dim"), py::arg("scale"),
        py::arg("mscale") = 1.0, py::arg("rope_style") = "norm", py::arg("stream") = 0, py::arg("same_stream") = false,
        "SelfExtend attention into out; q, out (T_q, H, D), k, v (T_k, H_kv, D) un-rotated.");
  m.def("cope_attention", &cope_attention_op, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("pos_emb"),
        py::arg("out"), py::kw_only(), py::arg("scale"), py::arg("scale_pos_logits") = false,
        py::arg("inv_freq") = py::none(), py::arg("mscale") = 1.0, py::arg("rope_style") = "norm",
        py::arg("rope_dim") = 0, py::arg("stream") = 0, py::arg("same_stream") = false,
        "Fused CoPE attention into out; pos_emb (npos_max, D) or (H, npos_max, D).");
}

BindingRegistrar registrar("attention", &register_attention);

}  // namespace
}  // namespace selfext
