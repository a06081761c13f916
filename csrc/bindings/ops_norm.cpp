// rms_norm(x, weight, out, eps, stream): the smallest op that runs on both backends; the inference loop
// uses the same kernels. Shapes: x, out (rows, n) or (n,); weight (n,) float32.
#include <cmath>

#include "bindings/interop.h"
#include "bindings/registry.h"
#include "core/cuda_info.h"
#include "core/dispatch.h"
#include "model/rms_norm.h"

namespace selfext {
namespace {

void rms_norm_op(py::object x_obj, py::object w_obj, py::object out_obj, float eps, int64_t stream) {
  SELFEXT_CHECK(std::isfinite(eps) && eps > 0.f, ArgumentError, "eps must be finite and > 0, got ", eps);
  auto [device, device_id] = array_device(x_obj, "x");
  (void)device_id;
  const int64_t s = device == Device::kCUDA ? stream : kNoStream;
  if (device == Device::kCUDA) require_cuda();
  ArrayArg x = to_array(x_obj, "x", false, s);
  ArrayArg w = to_array(w_obj, "weight", false, s);
  ArrayArg out = to_array(out_obj, "out", true, s);
  for (const ArrayArg* a : {&w, &out}) check_device(a->view, a == &w ? "weight" : "out", device);
  SELFEXT_CHECK(x.view.ndim == 1 || x.view.ndim == 2, ArgumentError, "x must be 1-D or 2-D, got shape ",
                x.view.shape_str());
  check_dtype(x.view, "x", {DType::kFloat32, DType::kFloat16, DType::kBFloat16});
  check_dtype(w.view, "weight", {DType::kFloat32});
  check_dtype(out.view, "out", {x.view.dtype});
  check_contiguous(x.view, "x");
  check_contiguous(w.view, "weight");
  check_contiguous(out.view, "out");
  const int64_t n = x.view.shape[x.view.ndim - 1];
  const int64_t rows = x.view.numel() / std::max<int64_t>(n, 1);
  SELFEXT_CHECK(w.view.ndim == 1 && w.view.shape[0] == n, ArgumentError, "weight must have shape (", n,
                ",), got ", w.view.shape_str());
  SELFEXT_CHECK(out.view.ndim == x.view.ndim && out.view.numel() == x.view.numel(), ArgumentError,
                "out must have the shape of x ", x.view.shape_str(), ", got ", out.view.shape_str());
  RmsNormParams p{x.view.data, w.view.ptr<float>(), out.view.data, rows, n, n, n, eps,
                  reinterpret_cast<void*>(stream)};
  py::gil_scoped_release release;
  if (device == Device::kCPU) {
    auto pool = default_pool();
    SELFEXT_DISPATCH_FLOAT(x.view.dtype, T, [&] { rms_norm_cpu<T>(p, *pool); });
  } else {
#if defined(SELFEXT_WITH_CUDA)
    SELFEXT_DISPATCH_FLOAT(x.view.dtype, T, [&] { rms_norm_cuda<T>(p); });
#endif
  }
}

void register_ops_norm(py::module_& m) {
  m.def("rms_norm", &rms_norm_op, py::arg("x"), py::arg("weight"), py::arg("out"), py::arg("eps"),
        py::arg("stream") = 0);
}

BindingRegistrar registrar("ops_norm", &register_ops_norm);

}  // namespace
}  // namespace selfext
