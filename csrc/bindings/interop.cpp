#include "interop.h"

#include <Python.h>

#include "core/dlpack.h"
#include "core/errors.h"

namespace selfext {

namespace {

const char* kVersionedName = "dltensor_versioned";
const char* kLegacyName = "dltensor";

DType dtype_from_dlpack(const DLDataType& t, const char* name) {
  SELFEXT_CHECK(t.lanes == 1, ArrayTypeError, name, ": vector dtypes (lanes=", t.lanes, ") are not supported");
  if (t.code == kDLFloat && t.bits == 32) return DType::kFloat32;
  if (t.code == kDLFloat && t.bits == 16) return DType::kFloat16;
  if (t.code == kDLFloat && t.bits == 64) return DType::kFloat64;
  if (t.code == kDLBfloat && t.bits == 16) return DType::kBFloat16;
  if (t.code == kDLInt && t.bits == 32) return DType::kInt32;
  if (t.code == kDLInt && t.bits == 64) return DType::kInt64;
  if (t.code == kDLInt && t.bits == 8) return DType::kInt8;
  if (t.code == kDLUInt && t.bits == 8) return DType::kUInt8;
  throw ArrayTypeError(detail::concat(name, ": unsupported DLPack dtype (code ", int(t.code), ", bits ",
                                      int(t.bits), ")"));
}

DType dtype_from_format(const std::string& fmt, py::ssize_t itemsize, const char* name) {
  // Buffer-protocol format strings, optionally prefixed by a byte-order mark.
  std::string f = fmt;
  if (!f.empty() && (f[0] == '<' || f[0] == '@' || f[0] == '=')) f = f.substr(1);
  if (f == "f" && itemsize == 4) return DType::kFloat32;
  if (f == "e" && itemsize == 2) return DType::kFloat16;
  if (f == "d" && itemsize == 8) return DType::kFloat64;
  if ((f == "i" || f == "l") && itemsize == 4) return DType::kInt32;
  if ((f == "l" || f == "q") && itemsize == 8) return DType::kInt64;
  if (f == "B" && itemsize == 1) return DType::kUInt8;
  if (f == "b" && itemsize == 1) return DType::kInt8;
  throw ArrayTypeError(detail::concat(name, ": unsupported buffer format '", fmt, "' (itemsize ", itemsize, ")"));
}

void fill_from_dltensor(const DLTensor& t, const char* name, ArrayView& v) {
  SELFEXT_CHECK(t.ndim >= 0 && t.ndim <= kMaxDims, ArgumentError, name, " has ", t.ndim,
                " dimensions; at most ", kMaxDims, " are supported");
  switch (t.device.device_type) {
    case kDLCPU:
    case kDLCUDAHost:  // pinned host memory is ordinary host memory to us
      v.device = Device::kCPU;
      break;
    case kDLCUDA:
    case kDLCUDAManaged:
      v.device = Device::kCUDA;
      break;
    default:
      throw ArrayTypeError(detail::concat(name, " lives on DLPack device type ", t.device.device_type,
                                          "; only CPU and CUDA arrays are supported"));
  }
  v.device_id = t.device.device_id;
  v.dtype = dtype_from_dlpack(t.dtype, name);
  v.ndim = t.ndim;
  int64_t expect = 1;
  for (int i = t.ndim - 1; i >= 0; --i) {
    v.shape[i] = t.shape[i];
    v.strides[i] = t.strides ? t.strides[i] : expect;
    expect *= t.shape[i];
  }
  v.data = static_cast<char*>(t.data) + t.byte_offset;
}

ArrayArg from_dlpack(py::handle obj, const char* name, bool writable, int64_t cuda_stream) {
  py::object capsule;
  // The consumer names the stream: for CUDA, the stream our kernel will run on (never 0, which DLPack
  // reserves as ambiguous: the legacy default stream is 1). For CPU arrays, no stream.
  py::object stream = py::none();
  if (cuda_stream == kStreamNoSync) stream = py::int_(-1);  // DLPack: no synchronization
  else if (cuda_stream != kNoStream) stream = py::int_(cuda_stream == 0 ? 1 : cuda_stream);
  try {
    capsule = obj.attr("__dlpack__")(py::arg("stream") = stream, py::arg("max_version") = py::make_tuple(1, 1));
  } catch (py::error_already_set& e) {
    if (!e.matches(PyExc_TypeError)) throw;
    // Producers older than DLPack 1.0 accept no max_version.
    capsule = cuda_stream != kNoStream ? obj.attr("__dlpack__")(py::arg("stream") = stream)
                                       : obj.attr("__dlpack__")();
  }
  PyObject* cap = capsule.ptr();
  ArrayArg arg;
  if (PyCapsule_IsValid(cap, kVersionedName)) {
    auto* mt = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(cap, kVersionedName));
    SELFEXT_CHECK(mt->version.major == 1, ArrayTypeError, name, ": DLPack major version ", mt->version.major,
                  " is not supported (expected 1)");
    // Renaming marks the capsule consumed: its own destructor then leaves the tensor to us.
    PyCapsule_SetName(cap, "used_dltensor_versioned");
    arg.managed = std::shared_ptr<void>(mt, [](void* p) {
      auto* m = static_cast<DLManagedTensorVersioned*>(p);
      if (m->deleter) m->deleter(m);
    });
    fill_from_dltensor(mt->dl_tensor, name, arg.view);
    arg.view.readonly = (mt->flags & kDLPackFlagReadOnly) != 0;
  } else if (PyCapsule_IsValid(cap, kLegacyName)) {
    auto* mt = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, kLegacyName));
    PyCapsule_SetName(cap, "used_dltensor");
    arg.managed = std::shared_ptr<void>(mt, [](void* p) {
      auto* m = static_cast<DLManagedTensor*>(p);
      if (m->deleter) m->deleter(m);
    });
    fill_from_dltensor(mt->dl_tensor, name, arg.view);
  } else {
    throw ArrayTypeError(detail::concat(name, ".__dlpack__() returned something that is not a DLPack capsule"));
  }
  if (writable) check_writable(arg.view, name);
  arg.owner = py::reinterpret_borrow<py::object>(obj);
  return arg;
}

ArrayArg from_buffer(py::handle obj, const char* name, bool writable) {
  ArrayArg arg;
  py::buffer buf = py::reinterpret_borrow<py::buffer>(obj);
  py::buffer_info info;
  try {
    info = buf.request(writable);
  } catch (py::error_already_set& e) {
    throw ArgumentError(detail::concat(name, ": cannot get a ", writable ? "writable " : "", "buffer: ", e.what()));
  }
  ArrayView& v = arg.view;
  v.dtype = dtype_from_format(info.format, info.itemsize, name);
  SELFEXT_CHECK(info.ndim <= kMaxDims, ArgumentError, name, " has ", info.ndim, " dimensions; at most ",
                kMaxDims, " are supported");
  v.ndim = int(info.ndim);
  for (int i = 0; i < v.ndim; ++i) {
    v.shape[i] = info.shape[i];
    SELFEXT_CHECK(info.strides[i] % info.itemsize == 0, ArgumentError, name,
                  " has a byte stride that is not a multiple of its item size");
    v.strides[i] = info.strides[i] / info.itemsize;
  }
  v.data = info.ptr;
  v.readonly = info.readonly;
  v.device = Device::kCPU;
  arg.owner = py::reinterpret_borrow<py::object>(obj);
  return arg;
}

}  // namespace

ArrayArg to_array(py::handle obj, const char* name, bool writable, int64_t cuda_stream) {
  if (py::hasattr(obj, "__dlpack__")) {
    auto [device, id] = array_device(obj, name);
    (void)id;
    return from_dlpack(obj, name, writable, device == Device::kCUDA ? cuda_stream : kNoStream);
  }
  if (PyObject_CheckBuffer(obj.ptr())) return from_buffer(obj, name, writable);
  throw ArrayTypeError(detail::concat(name, " must be an array (NumPy, torch, or any object with __dlpack__ or ",
                                      "the buffer protocol), got ", std::string(py::str(py::type::of(obj).attr("__name__")))));
}

std::pair<Device, int> array_device(py::handle obj, const char* name) {
  if (py::hasattr(obj, "__dlpack_device__")) {
    py::tuple dev = obj.attr("__dlpack_device__")();
    int type = dev[0].cast<int>();
    int id = dev[1].cast<int>();
    if (type == kDLCPU || type == kDLCUDAHost) return {Device::kCPU, id};
    if (type == kDLCUDA || type == kDLCUDAManaged) return {Device::kCUDA, id};
    throw ArrayTypeError(detail::concat(name, " lives on DLPack device type ", type,
                                        "; only CPU and CUDA arrays are supported"));
  }
  return {Device::kCPU, 0};
}

}  // namespace selfext
