// How a binding runs CUDA work: with the arrays' device current and the GIL released, the previous
// device restored whatever happens. In a build without CUDA it says so.
#pragma once
#include <pybind11/pybind11.h>

#include "attention/attention_cuda.h"  // cuda_exchange_device
#include "core/errors.h"

namespace selfext {

template <typename Fn>
void run_on_device(int device, Fn&& fn) {
#if defined(SELFEXT_WITH_CUDA)
  pybind11::gil_scoped_release release;
  const int prev = cuda_exchange_device(device);
  try {
    fn();
  } catch (...) {
    cuda_exchange_device(prev);
    throw;
  }
  cuda_exchange_device(prev);
#else
  (void)device;
  (void)fn;
  throw BackendError("this build has no CUDA backend");
#endif
}

}  // namespace selfext
