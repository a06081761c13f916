// Arrays across the Python boundary: DLPack (torch, CuPy, JAX, NumPy; CPU and CUDA) and the buffer
// protocol (NumPy, array.array, memoryview), turned into checked ArrayViews. The DLPack layer is written
// once here: versioned and legacy capsules, strides, byte offset, capsule renamed when consumed.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>

#include "core/array.h"

namespace selfext {

namespace py = pybind11;

// A view plus whatever keeps its memory alive (the exporting object, or the DLPack managed tensor whose
// deleter runs when the last copy of this goes away).
struct ArrayArg {
  ArrayView view;
  py::object owner;
  std::shared_ptr<void> managed;
};

// Stream value meaning "not a CUDA call" in to_array's cuda_stream argument.
constexpr int64_t kNoStream = -1;
// Stream value for CUDA arrays the caller produced on the stream the call runs on (its framework's current
// stream): the producer is asked for no synchronization, __dlpack__(stream=-1). torch's __dlpack__ with a
// stream builds stream objects and compares them in Python (~20 us per tensor) to find nothing to do.
constexpr int64_t kStreamNoSync = -2;
// The stream argument of to_array for a call on `stream`: kStreamNoSync when the caller says its arrays are
// already ordered on it (same_stream), else the stream itself.
inline int64_t dlpack_stream(int64_t stream, bool same_stream) { return same_stream ? kStreamNoSync : stream; }

// Converts obj into an ArrayArg. `name` is the argument's name for error messages. For a CUDA array,
// cuda_stream is the stream the consumer (us) will use; the producer makes the data ready on it
// (DLPack's __dlpack__(stream=...) contract). Throws ArrayTypeError for objects that are not arrays.
ArrayArg to_array(py::handle obj, const char* name, bool writable, int64_t cuda_stream = kNoStream);

// Device of a DLPack/buffer object without consuming it: ("cpu"|"cuda", device id).
std::pair<Device, int> array_device(py::handle obj, const char* name);

}  // namespace selfext
