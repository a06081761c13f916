// What the CUDA backend can do on this machine. Defined whether or not CUDA was compiled in, so the
// module always imports and can say why CUDA is off.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace selfext {

struct CudaDevice {
  int index = 0;
  std::string name;
  int major = 0, minor = 0;
  int64_t total_memory = 0, free_memory = 0;
  int multiprocessors = 0;
};

struct CudaInfo {
  bool compiled = false;   // built with SELFEXT_CUDA
  bool available = false;  // compiled, driver present, at least one device our kernels run on
  std::string reason;      // why not available
  std::string architectures;  // what the kernels were compiled for
  int runtime_version = 0, driver_version = 0;
  std::vector<CudaDevice> devices;
};

CudaInfo cuda_info();

// Throws BackendError with the reason unless CUDA is usable.
void require_cuda();

// Allocates `bytes` on `device` through the same checked path as every device buffer, then frees them:
// a request larger than the device throws OutOfMemoryError and leaves the device usable. For tests of
// that error path (tests/test_llm_cuda.py), which the memory plan otherwise keeps from being reached.
void cuda_alloc_probe(int device, int64_t bytes);

}  // namespace selfext
