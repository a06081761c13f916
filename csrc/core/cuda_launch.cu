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

int current_device_compute_capability() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cached[kMaxDevices];  // 0 unknown, else 10 * major + minor
  int dev = 0;
  SELFEXT_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= kMaxDevices) return 0;
  int v = cached[dev].load(std::memory_order_relaxed);
  if (v == 0) {
    int major = 0, minor = 0;
    SELFEXT_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    SELFEXT_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
    v = 10 * major + minor;
    cached[dev].store(v, std::memory_order_relaxed);
  }
  return v;
}

bool pdl_enabled_on_current_device() {
  static const bool env_off = [] {
    const char* e = std::getenv("SELFEXT_CUDA_PDL");
    return e != nullptr && std::strcmp(e, "0") == 0;
  }();
  return !env_off && current_device_compute_capability() >= 90;
}

}  // namespace selfext
