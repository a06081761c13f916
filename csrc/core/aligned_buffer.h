// A 64-byte-aligned, zero-initialised heap buffer (SIMD loads, no false sharing at its ends). Throws
// OutOfMemoryError naming what it was for when the allocation fails.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#include "errors.h"

namespace selfext {

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  AlignedBuffer(size_t bytes, const char* what) { reset(bytes, what); }
  ~AlignedBuffer() { std::free(data_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  AlignedBuffer(AlignedBuffer&& o) noexcept : data_(o.data_), bytes_(o.bytes_) { o.data_ = nullptr; o.bytes_ = 0; }
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }

  void reset(size_t bytes, const char* what) {
    std::free(data_);
    data_ = nullptr;
    bytes_ = 0;
    if (bytes == 0) return;
    const size_t rounded = (bytes + 63) / 64 * 64;
    data_ = std::aligned_alloc(64, rounded);
    SELFEXT_CHECK(data_ != nullptr, OutOfMemoryError, "could not allocate ", bytes, " bytes for ", what);
    std::memset(data_, 0, rounded);
    bytes_ = bytes;
  }
  template <typename T> T* as() const { return static_cast<T*>(data_); }
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace selfext
