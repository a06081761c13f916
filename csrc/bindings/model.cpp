// The native Model object. Python (llm.py) validates the GGUF file and passes the tensors as buffers
// over the file's memory map (weights) or float32 arrays (norms, biases); this keeps them alive.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <map>
#include <mutex>

#include "bindings/interop.h"
#include "bindings/registry.h"
#include "model/model.h"
#include "model/model_cuda.h"

namespace selfext {
namespace {

// What one tensor entry from Python holds: (array, ggml type id, rows, cols).
struct TensorArg {
  ArrayArg array;
  QMatrix matrix;
};

// The model's settings from Python's config dict (llm.py builds it); every key is required.
ModelConfig config_from_dict(const py::dict& config) {
  ModelConfig c;
  auto get = [&](const char* key) -> py::object {
    SELFEXT_CHECK(config.contains(key), ArgumentError, "model config lacks '", key, "'");
    return config[key];
  };
  c.n_layer = get("n_layer").cast<int>();
  c.n_embd = get("n_embd").cast<int>();
  c.n_head = get("n_head").cast<int>();
  c.n_head_kv = get("n_head_kv").cast<int>();
  c.head_dim = get("head_dim").cast<int>();
  c.n_ff = get("n_ff").cast<int>();
  c.n_vocab = get("n_vocab").cast<int>();
  c.rms_eps = get("rms_eps").cast<float>();
  const std::string style = get("rope_style").cast<std::string>();
  SELFEXT_CHECK(style == "norm" || style == "neox", ArgumentError, "rope_style must be 'norm' or 'neox', got '",
                style, "'");
  c.rope_style = style == "norm" ? RopeStyle::kNorm : RopeStyle::kNeox;
  c.rope_dim = get("rope_dim").cast<int>();
  c.inv_freq = get("inv_freq").cast<std::vector<double>>();
  c.mscale = get("mscale").cast<double>();
  c.n_ctx = get("n_ctx").cast<int64_t>();
  c.group = get("group").cast<int64_t>();
  c.window = get("window").cast<int64_t>();
  const std::string kv = get("kv_type").cast<std::string>();
  SELFEXT_CHECK(kv == "f16" || kv == "f32" || kv == "bf16", ArgumentError,
                "kv_type must be 'f16', 'bf16' or 'f32', got '", kv, "'");
  c.kv_dtype = kv == "f16" ? DType::kFloat16 : (kv == "bf16" ? DType::kBFloat16 : DType::kFloat32);
  c.n_batch = get("n_batch").cast<int64_t>();
  c.n_threads = get("n_threads").cast<int>();
  if (config.contains("cope_npos_max")) {
    c.cope = true;
    c.npos_max = get("cope_npos_max").cast<int>();
    c.cope_per_head = get("cope_per_head").cast<bool>();
    c.cope_scale_pos_logits = get("cope_scale_pos_logits").cast<bool>();
  }
  return c;
}

class PyModel {
 public:
  PyModel(const py::dict& config, const py::dict& tensors) {
    ModelConfig c = config_from_dict(config);
    ModelWeights w;
    w.token_embd = matrix("token_embd", tensors);
    w.output_norm = vector("output_norm", tensors, c.n_embd);
    w.output = tensors.contains("output") ? matrix("output", tensors) : w.token_embd;
    for (int il = 0; il < c.n_layer; ++il) {
      const std::string p = "blk." + std::to_string(il) + ".";
      LayerWeights l;
      l.attn_norm = vector(p + "attn_norm", tensors, c.n_embd);
      l.ffn_norm = vector(p + "ffn_norm", tensors, c.n_embd);
      l.wq = matrix(p + "attn_q", tensors);
      l.wk = matrix(p + "attn_k", tensors);
      l.wv = matrix(p + "attn_v", tensors);
      l.wo = matrix(p + "attn_output", tensors);
      l.w_gate = matrix(p + "ffn_gate", tensors);
      l.w_up = matrix(p + "ffn_up", tensors);
      l.w_down = matrix(p + "ffn_down", tensors);
      const int64_t qd = int64_t(c.n_head) * c.head_dim, kd = int64_t(c.n_head_kv) * c.head_dim;
      if (c.cope)
        l.cope_pos = vector(p + "cope_pos", tensors,
                            int64_t(c.cope_per_head ? c.n_head : 1) * c.npos_max * c.head_dim);
      if (tensors.contains(p + "attn_q.bias")) l.bq = vector(p + "attn_q.bias", tensors, qd);
      if (tensors.contains(p + "attn_k.bias")) l.bk = vector(p + "attn_k.bias", tensors, kd);
      if (tensors.contains(p + "attn_v.bias")) l.bv = vector(p + "attn_v.bias", tensors, kd);
      w.layers.push_back(l);
    }
    const std::string device = config.contains("device") ? config["device"].cast<std::string>() : "cpu";
    device_ = device;
    if (device == "cuda") {
#if defined(SELFEXT_WITH_CUDA)
      const int index = config.contains("cuda_device") ? config["cuda_device"].cast<int>() : 0;
      py::gil_scoped_release release;  // the upload takes a while for a large model
      model_ = make_model_cuda(std::move(c), std::move(w), index);
#else
      throw BackendError("this build has no CUDA backend (built without SELFEXT_CUDA)");
#endif
    } else {
      SELFEXT_CHECK(device == "cpu", ArgumentError, "device must be 'cpu' or 'cuda', got '", device, "'");
      model_ = std::make_unique<ModelCpu>(std::move(c), std::move(w));
    }
  }

  py::array_t<float> forward(py::object tokens_obj, bool all_logits) {
    ArrayArg tokens = to_array(tokens_obj, "tokens", false);
    check_dtype(tokens.view, "tokens", {DType::kInt32});
    check_ndim(tokens.view, "tokens", 1);
    check_contiguous(tokens.view, "tokens");
    const int64_t n = tokens.view.shape[0];
    SELFEXT_CHECK(n >= 1, ArgumentError, "tokens must not be empty");
    const int64_t rows = all_logits ? n : 1;
    py::array_t<float> logits({rows, int64_t(model_->config().n_vocab)});
    float* out = logits.mutable_data();
    // One forward at a time per model: a second thread gets a clear error, never a corrupted cache.
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    SELFEXT_CHECK(busy.owns_lock(), BackendError,
                  "this model is already running in another thread; use one LLM object per thread");
    cancel_.store(false);
    {
      py::gil_scoped_release release;
      model_->forward(tokens.view.ptr<int32_t>(), n, out, all_logits, &cancel_);
    }
    return logits;
  }

  Model& model() { return *model_; }
  std::string device() const { return device_; }
  void cancel() { cancel_.store(true); }

 private:
  QMatrix matrix(const std::string& name, const py::dict& tensors) {
    SELFEXT_CHECK(tensors.contains(name), ArgumentError, "tensor '", name, "' is missing");
    py::tuple t = tensors[py::str(name)].cast<py::tuple>();
    SELFEXT_CHECK(t.size() == 4, ArgumentError, "tensor '", name, "' must be (array, type, rows, cols)");
    ArrayArg a = to_array(t[0], name.c_str(), false);
    check_device(a.view, name.c_str(), Device::kCPU);
    check_contiguous(a.view, name.c_str());
    const int type = t[1].cast<int>();
    check_qtype_supported(type);
    QMatrix m;
    m.type = QType(type);
    m.rows = t[2].cast<int64_t>();
    m.cols = t[3].cast<int64_t>();
    SELFEXT_CHECK(m.rows > 0 && m.cols > 0, ArgumentError, "tensor '", name, "' has an empty shape");
    m.row_bytes = qtype_row_bytes(m.type, m.cols);
    const int64_t bytes = a.view.numel() * dtype_size(a.view.dtype);
    SELFEXT_CHECK(bytes == m.rows * m.row_bytes, ArgumentError, "tensor '", name, "' holds ", bytes,
                  " bytes; a ", qtype_name(m.type), " matrix of (", m.rows, ", ", m.cols, ") needs ",
                  m.rows * m.row_bytes);
    m.data = a.view.data;
    keep_.push_back(std::move(a));
    return m;
  }
  const float* vector(const std::string& name, const py::dict& tensors, int64_t n) {
    SELFEXT_CHECK(tensors.contains(name), ArgumentError, "tensor '", name, "' is missing");
    ArrayArg a = to_array(tensors[py::str(name)], name.c_str(), false);
    check_device(a.view, name.c_str(), Device::kCPU);
    check_dtype(a.view, name.c_str(), {DType::kFloat32});
    check_contiguous(a.view, name.c_str());
    SELFEXT_CHECK(a.view.numel() == n, ArgumentError, "tensor '", name, "' must have ", n, " values, got ",
                  a.view.numel());
    const float* p = a.view.ptr<float>();
    keep_.push_back(std::move(a));
    return p;
  }

  std::vector<ArrayArg> keep_;  // the buffers the weights point into
  std::unique_ptr<Model> model_;
  std::string device_ = "cpu";
  std::atomic<bool> cancel_{false};
  std::mutex busy_;
};

void register_model(py::module_& m) {
  py::class_<PyModel>(m, "Model")
      .def(py::init<const py::dict&, const py::dict&>(), py::arg("config"), py::arg("tensors"))
      .def("forward", &PyModel::forward, py::arg("tokens"), py::arg("all_logits") = false,
           "Run int32 tokens at the next positions; returns float32 logits (n or 1, n_vocab).")
      .def("cancel", &PyModel::cancel, "Ask a running forward (in another thread) to stop between layers.")
      .def_property_readonly("n_past", [](PyModel& s) { return s.model().n_past(); })
      .def_property_readonly("n_ctx", [](PyModel& s) { return s.model().config().n_ctx; })
      .def_property_readonly("self_extend", [](PyModel& s) {
        return py::make_tuple(s.model().config().group, s.model().config().window);
      })
      .def("truncate", [](PyModel& s, int64_t n) { s.model().truncate(n); }, py::arg("n"))
      .def("set_self_extend", [](PyModel& s, int64_t g, int64_t w) { s.model().set_self_extend(g, w); },
           py::arg("group"), py::arg("window"))
      .def_property_readonly("device", [](PyModel& s) { return s.device(); })
      .def_property_readonly("allocated_bytes", [](PyModel& s) { return s.model().allocated_bytes(); })
      .def_property_readonly("decode_path", [](PyModel& s) { return s.model().decode_path(); },
                             "How a one-token step runs: cpu, megakernel, graphs-fused, graphs or eager.")
      .def_static("plan_bytes", [](const py::dict& config) { return ModelCpu::plan_bytes(config_from_dict(config)); },
                  py::arg("config"), "Bytes a Model with this config allocates (KV cache, scratch, RoPE table).");
}

BindingRegistrar registrar("model", &register_model);

}  // namespace
}  // namespace selfext
