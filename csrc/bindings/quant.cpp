// Quantized weights from Python: matmul_quant(weight_bytes, qtype, rows, cols, x, out),
// dequantize(weight_bytes, qtype, rows, cols, out) and quantize_activations(qtype, x, out) (the 8-bit
// activation blocks the integer products use, for tests). Every size is checked before a pointer is
// used; kernels in quant/.
#include <cstdlib>
#include <memory>

#include "bindings/interop.h"
#include "bindings/registry.h"
#include "core/thread_pool.h"
#include "quant/formats.h"
#include "quant/matmul.h"
#include "quant/matmul_kernels.h"

namespace selfext {
namespace {

// A weight buffer: any contiguous CPU array; its bytes are the GGUF blocks, row-major.
struct Weight {
  ArrayArg arg;
  const QTypeInfo* info;
  int64_t row_bytes;
};

Weight check_weight(py::handle obj, int qtype, int64_t rows, int64_t cols) {
  check_qtype_supported(qtype);
  const QTypeInfo* info = qtype_info(qtype);
  SELFEXT_CHECK(rows > 0, ArgumentError, "rows must be positive, got ", rows);
  SELFEXT_CHECK(cols > 0 && cols % info->block_size == 0, ArgumentError, "cols must be a positive multiple of ",
                info->block_size, " (the ", info->name, " block size), got ", cols);
  auto [device, id] = array_device(obj, "weight_bytes");
  (void)id;
  SELFEXT_CHECK(device == Device::kCPU, ArrayTypeError, "weight_bytes must be on the CPU");
  Weight w{to_array(obj, "weight_bytes", false), info, qtype_row_bytes(QType(qtype), cols)};
  check_contiguous(w.arg.view, "weight_bytes");
  const int64_t nbytes = w.arg.view.numel() * dtype_size(w.arg.view.dtype);
  SELFEXT_CHECK(nbytes == rows * w.row_bytes, ArgumentError, "weight_bytes has ", nbytes, " bytes but ", rows,
                " x ", cols, " of ", info->name, " is ", rows, " rows x ", cols / info->block_size, " blocks x ",
                info->block_bytes, " bytes = ", rows * w.row_bytes, " bytes");
  return w;
}

// x: (cols,) or (n, cols) float32, contiguous.
ArrayArg check_x(py::handle obj, int64_t cols, int64_t* n) {
  SELFEXT_CHECK(array_device(obj, "x").first == Device::kCPU, ArrayTypeError, "x must be on the CPU");
  ArrayArg x = to_array(obj, "x", false);
  check_dtype(x.view, "x", {DType::kFloat32});
  check_contiguous(x.view, "x");
  SELFEXT_CHECK((x.view.ndim == 1 || x.view.ndim == 2) && x.view.shape[x.view.ndim - 1] == cols, ArgumentError,
                "x must have shape (", cols, ",) or (n, ", cols, "), got ", x.view.shape_str());
  *n = x.view.ndim == 2 ? x.view.shape[0] : 1;
  return x;
}

ArrayArg check_out(py::handle obj, std::initializer_list<int64_t> shape, const char* expect, DType dtype) {
  SELFEXT_CHECK(array_device(obj, "out").first == Device::kCPU, ArrayTypeError, "out must be on the CPU");
  ArrayArg out = to_array(obj, "out", true);
  check_writable(out.view, "out");
  check_dtype(out.view, "out", {dtype});
  check_contiguous(out.view, "out");
  bool ok = out.view.ndim == int(shape.size());
  int i = 0;
  for (int64_t s : shape) ok = ok && out.view.shape[i++] == s;
  SELFEXT_CHECK(ok, ArgumentError, "out must have shape ", expect, ", got ", out.view.shape_str());
  return out;
}

// 64-byte-aligned scratch for the 8-bit activations (outside the kernels' hot path).
struct Scratch {
  explicit Scratch(size_t bytes) : raw(bytes ? new uint8_t[bytes + 64] : nullptr) {}
  void* get() const {
    if (!raw) return nullptr;
    return reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(raw.get()) + 63) & ~uintptr_t(63));
  }
  std::unique_ptr<uint8_t[]> raw;
};

void matmul_quant_op(py::object weight, int qtype, int64_t rows, int64_t cols, py::object x_obj, py::object out_obj) {
  Weight w = check_weight(weight, qtype, rows, cols);
  int64_t n = 0;
  ArrayArg x = check_x(x_obj, cols, &n);
  const std::string expect = x.view.ndim == 1 ? detail::concat("(", rows, ",)") : detail::concat("(", n, ", ", rows, ")");
  ArrayArg out = x.view.ndim == 1 ? check_out(out_obj, {rows}, expect.c_str(), DType::kFloat32)
                                  : check_out(out_obj, {n, rows}, expect.c_str(), DType::kFloat32);
  QMatrix m;
  m.data = w.arg.view.data;
  m.type = QType(qtype);
  m.rows = rows;
  m.cols = cols;
  m.row_bytes = w.row_bytes;
  Scratch ws(matmul_workspace_bytes(m.type, cols, n));
  py::gil_scoped_release release;
  auto pool = default_pool();
  matmul_cpu(m, x.view.ptr<float>(), n, cols, out.view.ptr<float>(), rows, ws.get(), *pool);
}

void dequantize_op(py::object weight, int qtype, int64_t rows, int64_t cols, py::object out_obj) {
  Weight w = check_weight(weight, qtype, rows, cols);
  const std::string expect = detail::concat("(", rows, ", ", cols, ")");
  ArrayArg out = check_out(out_obj, {rows, cols}, expect.c_str(), DType::kFloat32);
  const uint8_t* src = static_cast<const uint8_t*>(w.arg.view.data);
  float* dst = out.view.ptr<float>();
  py::gil_scoped_release release;
  for (int64_t r = 0; r < rows; ++r) dequantize_row_cpu(QType(qtype), src + r * w.row_bytes, dst + r * cols, cols);
}

void quantize_activations_op(int qtype, py::object x_obj, py::object out_obj) {
  check_qtype_supported(qtype);
  const QTypeInfo* info = qtype_info(qtype);
  SELFEXT_CHECK(qtype_is_integer(qtype), ArgumentError, info->name, " multiplies float32 activations as they are");
  SELFEXT_CHECK(array_device(x_obj, "x").first == Device::kCPU, ArrayTypeError, "x must be on the CPU");
  ArrayArg x = to_array(x_obj, "x", false);
  check_dtype(x.view, "x", {DType::kFloat32});
  check_contiguous(x.view, "x");
  SELFEXT_CHECK(x.view.ndim == 2, ArgumentError, "x must have shape (n, cols), got ", x.view.shape_str());
  const int64_t n = x.view.shape[0], cols = x.view.shape[1];
  SELFEXT_CHECK(cols > 0 && cols % info->block_size == 0, ArgumentError, "cols must be a positive multiple of ",
                info->block_size, " for ", info->name, ", got ", cols);
  const int64_t bytes = int64_t(matmul_workspace_bytes(QType(qtype), cols, n));
  const std::string expect = detail::concat("(", bytes, ",)");
  ArrayArg out = check_out(out_obj, {bytes}, expect.c_str(), DType::kUInt8);
  py::gil_scoped_release release;
  quantize_activations_cpu(QType(qtype), x.view.ptr<float>(), n, cols, cols, out.view.data);
}

py::list qtype_table() {
  py::list l;
  for (const QTypeInfo& t : kQTypeTable) {
    py::dict d;
    d["id"] = t.id;
    d["name"] = t.name;
    d["block_size"] = t.block_size;
    d["block_bytes"] = t.block_bytes;
    d["supported"] = t.supported;
    l.append(d);
  }
  return l;
}

void register_quant(py::module_& m) {
  m.def("matmul_quant", &matmul_quant_op, py::arg("weight_bytes"), py::arg("qtype"), py::arg("rows"),
        py::arg("cols"), py::arg("x"), py::arg("out"));
  m.def("dequantize", &dequantize_op, py::arg("weight_bytes"), py::arg("qtype"), py::arg("rows"), py::arg("cols"),
        py::arg("out"));
  m.def("quantize_activations", &quantize_activations_op, py::arg("qtype"), py::arg("x"), py::arg("out"));
  m.def("qtype_table", &qtype_table);
}

BindingRegistrar registrar("quant", &register_quant);

}  // namespace
}  // namespace selfext
