#include "core/cuda_launch.cuh"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace selfext {

bool l2_prefetch_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("SELFEXT_CUDA_PREFETCH");
    return !(e != nullptr && std::strcmp(e, "0") == 0);
  }();
  return on;
}

bool pdl_enabled_on_current_device() {
  static const bool env_off = [] {
    const char* e = std::getenv("SELFEXT_CUDA_PDL");
    return e != nullptr && std::strcmp(e, "0") == 0;
  }();
  if (env_off) return false;
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cached[kMaxDevices];  // 0 unknown, 1 no, 2 yes
  int dev = 0;
  SELFEXT_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= kMaxDevices) return false;
  int v = cached[dev].load(std::memory_order_relaxed);
  if (v == 0) {
    int major = 0;
    SELFEXT_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    v = major >= 9 ? 2 : 1;
    cached[dev].store(v, std::memory_order_relaxed);
  }
  return v == 2;
}

}  // namespace selfext
