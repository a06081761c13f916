// A checked, non-owning view of an array that crossed the Python boundary (buffer protocol or DLPack).
// Kernels never see Python objects: they get plain pointers and element strides from these views.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <string>

#include "errors.h"

namespace selfext {

enum class DType : int { kFloat32, kFloat16, kBFloat16, kFloat64, kInt32, kInt64, kUInt8, kInt8 };
enum class Device : int { kCPU, kCUDA };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat64: return "float64";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
    case DType::kUInt8: return "uint8";
    case DType::kInt8: return "int8";
  }
  return "?";
}

inline int dtype_size(DType t) {
  switch (t) {
    case DType::kFloat64: case DType::kInt64: return 8;
    case DType::kFloat32: case DType::kInt32: return 4;
    case DType::kFloat16: case DType::kBFloat16: return 2;
    default: return 1;
  }
}

constexpr int kMaxDims = 8;

struct ArrayView {
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  Device device = Device::kCPU;
  int device_id = 0;
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};  // in elements
  bool readonly = false;

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  bool is_contiguous() const {
    int64_t expect = 1;
    for (int i = ndim - 1; i >= 0; --i) {
      if (shape[i] != 1 && strides[i] != expect) return false;
      expect *= shape[i];
    }
    return true;
  }
  std::string shape_str() const {
    std::string s = "(";
    for (int i = 0; i < ndim; ++i) s += std::to_string(shape[i]) + (i + 1 < ndim ? ", " : (ndim == 1 ? "," : ""));
    return s + ")";
  }
  template <typename T>
  T* ptr() const { return static_cast<T*>(data); }
};

// Boundary checks; each names the argument and what was expected.
inline void check_ndim(const ArrayView& a, const char* name, int ndim) {
  SELFEXT_CHECK(a.ndim == ndim, ArgumentError, name, " must have ", ndim, " dimensions, got shape ",
                a.shape_str());
}
inline void check_dtype(const ArrayView& a, const char* name, std::initializer_list<DType> allowed) {
  for (DType t : allowed)
    if (a.dtype == t) return;
  std::string list;
  for (DType t : allowed) list += std::string(list.empty() ? "" : ", ") + dtype_name(t);
  throw ArrayTypeError(detail::concat(name, " has dtype ", dtype_name(a.dtype), "; expected one of: ", list));
}
inline void check_contiguous(const ArrayView& a, const char* name) {
  SELFEXT_CHECK(a.is_contiguous(), ArgumentError, name,
                " must be contiguous (row-major); call .contiguous() / np.ascontiguousarray first");
}
inline void check_device(const ArrayView& a, const char* name, Device d) {
  SELFEXT_CHECK(a.device == d, ArrayTypeError, name, " is on ", a.device == Device::kCPU ? "cpu" : "cuda",
                " but this operation needs it on ", d == Device::kCPU ? "cpu" : "cuda",
                " (all arrays of one call must share a device)");
}
inline void check_writable(const ArrayView& a, const char* name) {
  SELFEXT_CHECK(!a.readonly, ArgumentError, name, " is read-only; the output must be writable");
}

}  // namespace selfext
