// The CUDA branch of the quantized-weight ops: argument checks and conversion only, then the kernels of
// quant/matmul_cuda.cu on the caller's stream. python/selfext_native/quant.py routes CUDA arrays here;
// outputs come allocated from the caller's framework.
//
//   _native.matmul_quant_cuda(weight_bytes, qtype, rows, cols, x, out, accumulate, stream)
//   _native.embed_rows_cuda(weight_bytes, qtype, rows, cols, ids, out, stream)
//   _native.matvec_q_cuda(...), _native.activation_q_bytes(cols)   (the 16-bit-activation decode product)
#include <cstdint>
#include <string>

#include "attention/attention_cuda.h"  // cuda_exchange_device
#include "bindings/cuda_call.h"
#include "bindings/interop.h"
#include "bindings/registry.h"
#include "core/cuda_info.h"
#include "quant/formats.h"
#include "quant/matmul.h"
#include "quant/matmul_cuda.h"

namespace selfext {
namespace {

// The weight blocks: a contiguous CUDA uint8 array of exactly rows * row_bytes bytes, 16-byte aligned.
struct CudaWeight {
  ArrayArg arg;
  QMatrix m;
};

CudaWeight check_cuda_weight(py::handle obj, int qtype, int64_t rows, int64_t cols, int64_t stream) {
  check_qtype_supported(qtype);
  const QTypeInfo* info = qtype_info(qtype);
  SELFEXT_CHECK(rows > 0, ArgumentError, "rows must be positive, got ", rows);
  SELFEXT_CHECK(cols > 0 && cols % info->block_size == 0, ArgumentError, "cols must be a positive multiple of ",
                info->block_size, " (the ", info->name, " block size), got ", cols);
  CudaWeight w{to_array(obj, "weight_bytes", false, stream), {}};
  check_device(w.arg.view, "weight_bytes", Device::kCUDA);
  check_dtype(w.arg.view, "weight_bytes", {DType::kUInt8, DType::kInt8});
  check_contiguous(w.arg.view, "weight_bytes");
  const int64_t row_bytes = qtype_row_bytes(QType(qtype), cols);
  const int64_t nbytes = w.arg.view.numel();
  SELFEXT_CHECK(nbytes == rows * row_bytes, ArgumentError, "weight_bytes has ", nbytes, " bytes but ", rows, " x ",
                cols, " of ", info->name, " is ", rows, " rows x ", cols / info->block_size, " blocks x ",
                info->block_bytes, " bytes = ", rows * row_bytes, " bytes");
  SELFEXT_CHECK(reinterpret_cast<uintptr_t>(w.arg.view.data) % 16 == 0, ArgumentError,
                "weight_bytes must start on a 16-byte boundary (a fresh CUDA allocation does)");
  w.m.data = w.arg.view.data;
  w.m.type = QType(qtype);
  w.m.rows = rows;
  w.m.cols = cols;
  w.m.row_bytes = row_bytes;
  return w;
}

// Every other array of the call must be a CUDA array on the weights' device.
void check_same_cuda(const ArrayView& a, const char* name, int device_id) {
  SELFEXT_CHECK(a.device == Device::kCUDA, ArrayTypeError, name,
                " is on cpu but weight_bytes is on cuda:", device_id, " (all arrays of one call must share a device)");
  SELFEXT_CHECK(a.device_id == device_id, ArrayTypeError, name, " is on cuda:", a.device_id,
                " but weight_bytes is on cuda:", device_id, " (all arrays of one call must share a device)");
}

// The device of a call: weight_bytes must be a CUDA array (the CPU op takes CPU arrays).
int cuda_weight_device(py::handle weight, const char* op) {
  auto [device, id] = array_device(weight, "weight_bytes");
  SELFEXT_CHECK(device == Device::kCUDA, ArrayTypeError, op,
                ": weight_bytes is on cpu; this entry point takes CUDA arrays (the CPU op takes CPU arrays)");
  require_cuda();
  return id;
}

void matmul_quant_cuda_op(py::object weight, int qtype, int64_t rows, int64_t cols, py::object x_obj,
                          py::object out_obj, bool accumulate, int64_t stream) {
  const int dev = cuda_weight_device(weight, "matmul_quant_cuda");
  // x's device first, before any conversion, so mixing devices is an ArrayTypeError.
  auto [x_device, x_id] = array_device(x_obj, "x");
  SELFEXT_CHECK(x_device == Device::kCUDA && x_id == dev, ArrayTypeError, "x is on ",
                x_device == Device::kCUDA ? "cuda:" + std::to_string(x_id) : std::string("cpu"),
                " but weight_bytes is on cuda:", dev, " (all arrays of one call must share a device)");
  CudaWeight w = check_cuda_weight(weight, qtype, rows, cols, stream);
  ArrayArg x = to_array(x_obj, "x", false, stream);
  check_same_cuda(x.view, "x", dev);
  check_dtype(x.view, "x", {DType::kFloat32});
  check_contiguous(x.view, "x");
  SELFEXT_CHECK((x.view.ndim == 1 || x.view.ndim == 2) && x.view.shape[x.view.ndim - 1] == cols, ArgumentError,
                "x must have shape (", cols, ",) or (n, ", cols, "), got ", x.view.shape_str());
  const int64_t n = x.view.ndim == 2 ? x.view.shape[0] : 1;
  ArrayArg out = to_array(out_obj, "out", true, stream);
  check_same_cuda(out.view, "out", dev);
  check_writable(out.view, "out");
  check_dtype(out.view, "out", {DType::kFloat32});
  check_contiguous(out.view, "out");
  const bool shape_ok = x.view.ndim == 1 ? (out.view.ndim == 1 && out.view.shape[0] == rows)
                                         : (out.view.ndim == 2 && out.view.shape[0] == n && out.view.shape[1] == rows);
  SELFEXT_CHECK(shape_ok, ArgumentError, "out must have shape ",
                x.view.ndim == 1 ? detail::concat("(", rows, ",)") : detail::concat("(", n, ", ", rows, ")"),
                ", got ", out.view.shape_str());
  const float* xp = x.view.ptr<float>();
  float* yp = out.view.ptr<float>();
  run_on_device(dev, [&] {
#if defined(SELFEXT_WITH_CUDA)
    // matmul_cuda needs no workspace for any format today; the call below enforces that contract.
    SELFEXT_CHECK(matmul_cuda_workspace_bytes(w.m.type, cols, n) == 0, BackendError,
                  "matmul_cuda asks for a workspace this binding does not provide");
    matmul_cuda(w.m, xp, n, cols, yp, rows, accumulate, nullptr, reinterpret_cast<void*>(stream));
#endif
  });
}

void embed_rows_cuda_op(py::object weight, int qtype, int64_t rows, int64_t cols, py::object ids_obj,
                        py::object out_obj, int64_t stream) {
  const int dev = cuda_weight_device(weight, "embed_rows_cuda");
  CudaWeight w = check_cuda_weight(weight, qtype, rows, cols, stream);
  // ids: a CUDA int32 array. embed_rows_cuda's contract has the caller check them on the host
  // (quant.embed_rows does, before uploading); the kernel writes NaN rows for any id outside [0, rows)
  // rather than reading outside the matrix.
  ArrayArg ids = to_array(ids_obj, "ids", false, stream);
  check_same_cuda(ids.view, "ids", dev);
  check_dtype(ids.view, "ids", {DType::kInt32});
  check_contiguous(ids.view, "ids");
  SELFEXT_CHECK(ids.view.ndim == 1, ArgumentError, "ids must be 1-D, got shape ", ids.view.shape_str());
  const int64_t n = ids.view.shape[0];
  const int32_t* idp = ids.view.ptr<int32_t>();
  ArrayArg out = to_array(out_obj, "out", true, stream);
  check_same_cuda(out.view, "out", dev);
  check_writable(out.view, "out");
  check_dtype(out.view, "out", {DType::kFloat32});
  check_contiguous(out.view, "out");
  SELFEXT_CHECK(out.view.ndim == 2 && out.view.shape[0] == n && out.view.shape[1] == cols, ArgumentError,
                "out must have shape (", n, ", ", cols, "), got ", out.view.shape_str());
  float* op = out.view.ptr<float>();
  run_on_device(dev, [&] {
#if defined(SELFEXT_WITH_CUDA)
    embed_rows_cuda(w.m, idp, n, op, cols, reinterpret_cast<void*>(stream));
#else
    (void)op;
#endif
  });
}

// The 16-bit-activation decode product (matvec_q_cuda), for the tests: x prepared by `kind` ("float",
// "rmsnorm" with norm_w and eps, "swiglu" with x = gate | up, "f16"/"bf16" 16-bit x) into `workspace`
// (a CUDA uint8 array of at least activation_q_bytes(cols) bytes), `prepared` (nullable) receiving the
// prepared float32 row, then out (rows,) float32 (= or +=) W x.
void matvec_q_cuda_op(py::object weight, int qtype, int64_t rows, int64_t cols, py::object x_obj,
                      py::object out_obj, bool accumulate, py::object ws_obj, const std::string& kind,
                      py::object norm_obj, float eps, py::object prepared_obj, int64_t stream) {
  const int dev = cuda_weight_device(weight, "matvec_q_cuda");
  CudaWeight w = check_cuda_weight(weight, qtype, rows, cols, stream);
  SELFEXT_CHECK(w.m.type == QType::Q4_0 || w.m.type == QType::Q8_0 || w.m.type == QType::Q4_K ||
                    w.m.type == QType::Q6_K, ArgumentError,
                "matvec_q_cuda takes Q4_0, Q8_0, Q4_K or Q6_K weights");
  MatvecInput in;
  if (kind == "float") in.kind = MatvecInput::kFloat;
  else if (kind == "rmsnorm") in.kind = MatvecInput::kRmsNorm;
  else if (kind == "swiglu") in.kind = MatvecInput::kSwiGlu;
  else if (kind == "f16") in.kind = MatvecInput::kF16;
  else if (kind == "bf16") in.kind = MatvecInput::kBF16;
  else SELFEXT_CHECK(false, ArgumentError, "kind must be float, rmsnorm, swiglu, f16 or bf16, got ", kind);
  ArrayArg x = to_array(x_obj, "x", false, stream);
  check_same_cuda(x.view, "x", dev);
  check_contiguous(x.view, "x");
  if (kind == "f16") check_dtype(x.view, "x", {DType::kFloat16});
  else if (kind == "bf16") check_dtype(x.view, "x", {DType::kBFloat16});
  else check_dtype(x.view, "x", {DType::kFloat32});
  const int64_t want = (kind == "swiglu" ? 2 : 1) * cols;
  SELFEXT_CHECK(x.view.numel() == want, ArgumentError, "x must hold ", want, " values, got ", x.view.numel());
  in.x = x.view.data;
  in.ldx = want;
  in.eps = eps;
  ArrayArg norm;
  if (in.kind == MatvecInput::kRmsNorm) {
    norm = to_array(norm_obj, "norm_w", false, stream);
    check_same_cuda(norm.view, "norm_w", dev);
    check_dtype(norm.view, "norm_w", {DType::kFloat32});
    check_contiguous(norm.view, "norm_w");
    SELFEXT_CHECK(norm.view.numel() == cols, ArgumentError, "norm_w must hold ", cols, " values");
    in.norm_w = norm.view.ptr<float>();
  }
  ArrayArg ws = to_array(ws_obj, "workspace", true, stream);
  check_same_cuda(ws.view, "workspace", dev);
  check_contiguous(ws.view, "workspace");
  float* prep = nullptr;
  ArrayArg prepared;
  if (!prepared_obj.is_none()) {
    prepared = to_array(prepared_obj, "prepared", true, stream);
    check_same_cuda(prepared.view, "prepared", dev);
    check_dtype(prepared.view, "prepared", {DType::kFloat32});
    check_contiguous(prepared.view, "prepared");
    SELFEXT_CHECK(prepared.view.numel() == cols, ArgumentError, "prepared must hold ", cols, " values");
    prep = prepared.view.ptr<float>();
  }
  ArrayArg out = to_array(out_obj, "out", true, stream);
  check_same_cuda(out.view, "out", dev);
  check_dtype(out.view, "out", {DType::kFloat32});
  check_contiguous(out.view, "out");
  SELFEXT_CHECK(out.view.numel() == rows, ArgumentError, "out must hold ", rows, " values");
  float* yp = out.view.ptr<float>();
  run_on_device(dev, [&] {
#if defined(SELFEXT_WITH_CUDA)
    SELFEXT_CHECK(size_t(ws.view.numel() * dtype_size(ws.view.dtype)) >= activation_q_bytes(cols), ArgumentError,
                  "workspace must hold activation_q_bytes(cols) = ", activation_q_bytes(cols), " bytes");
    prepare_activation_cuda(in, cols, prep, ws.view.data, reinterpret_cast<void*>(stream));
    matvec_q_cuda(w.m, ws.view.data, yp, accumulate, reinterpret_cast<void*>(stream));
#else
    (void)yp;
    (void)prep;
#endif
  });
}

int64_t activation_q_bytes_op(int64_t cols) {
#if defined(SELFEXT_WITH_CUDA)
  return int64_t(activation_q_bytes(cols));
#else
  (void)cols;
  require_cuda();
  return 0;
#endif
}

void register_quant_cuda(py::module_& m) {
  m.def("matmul_quant_cuda", &matmul_quant_cuda_op, py::arg("weight_bytes"), py::arg("qtype"), py::arg("rows"),
        py::arg("cols"), py::arg("x"), py::arg("out"), py::arg("accumulate"), py::arg("stream"),
        "out (= or +=) x @ W.T on CUDA: weight_bytes a CUDA uint8 array of GGUF blocks (rows, cols), x (cols,) or "
        "(n, cols) float32, out (rows,) or (n, rows) float32; runs on `stream`.");
  m.def("matvec_q_cuda", &matvec_q_cuda_op, py::arg("weight_bytes"), py::arg("qtype"), py::arg("rows"),
        py::arg("cols"), py::arg("x"), py::arg("out"), py::arg("accumulate"), py::arg("workspace"), py::arg("kind"),
        py::arg("norm_w"), py::arg("eps"), py::arg("prepared"), py::arg("stream"),
        "The decode product over 16-bit activation codes (Q4_0, Q4_K; tests): x prepared by kind into workspace, "
        "then out (= or +=) W x.");
  m.def("activation_q_bytes", &activation_q_bytes_op, py::arg("cols"),
        "Workspace bytes of one activation row prepared for matvec_q_cuda.");
  m.def("embed_rows_cuda", &embed_rows_cuda_op, py::arg("weight_bytes"), py::arg("qtype"), py::arg("rows"),
        py::arg("cols"), py::arg("ids"), py::arg("out"), py::arg("stream"),
        "out[t] = dequantized row ids[t] of W on CUDA: ids a CUDA int32 array (ids outside [0, rows) give NaN rows), "
        "out (n, cols) float32.");
}

BindingRegistrar registrar("quant_cuda", &register_quant_cuda);

}  // namespace
}  // namespace selfext
