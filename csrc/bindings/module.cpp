// The pybind11 module selfext_native._native: exception translation, backend reports, and the
// registration of every area's bindings. Argument conversion lives in interop.cpp; kernels elsewhere.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <thread>

#include "bindings/registry.h"
#include "core/cpu_features.h"
#include "core/cuda_info.h"
#include "core/errors.h"
#include "core/thread_pool.h"

namespace py = pybind11;

namespace selfext {

std::vector<std::pair<const char*, RegisterFn>>& binding_registry() {
  static std::vector<std::pair<const char*, RegisterFn>> registry;
  return registry;
}

namespace {

// Raise selfext_native.errors.<cls>(msg). The errors module is pure Python, imported on first use.
void raise_py(const char* cls, const char* msg) {
  py::object errors = py::module_::import("selfext_native.errors");
  py::object type = errors.attr(cls);
  PyErr_SetString(type.ptr(), msg);
}

void translate(std::exception_ptr p) {
  try {
    if (p) std::rethrow_exception(p);
  } catch (const ArgumentError& e) {
    raise_py("ArgumentError", e.what());
  } catch (const ArrayTypeError& e) {
    raise_py("ArrayTypeError", e.what());
  } catch (const ContextOverflowError& e) {
    raise_py("ContextOverflowError", e.what());
  } catch (const OutOfMemoryError& e) {
    raise_py("OutOfMemoryError", e.what());
  } catch (const BackendError& e) {
    raise_py("BackendError", e.what());
  } catch (const Cancelled& e) {
    raise_py("Cancelled", e.what());
  } catch (const std::bad_alloc&) {
    raise_py("OutOfMemoryError", "host memory exhausted (std::bad_alloc)");
  }
}

py::dict cpu_report() {
  const CpuFeatures& f = cpu_features();
  py::dict d;
  d["brand"] = f.brand;
  d["simd_level"] = simd_level_name(simd_level());
  py::list supported;
  for (SimdLevel l : known_simd_levels())
    if (simd_level_supported(l)) supported.append(simd_level_name(l));
  d["simd_levels"] = supported;
  py::list feats;
  const std::pair<const char*, bool> flags[] = {
      {"avx2", f.avx2},         {"fma", f.fma},           {"f16c", f.f16c},
      {"avx512f", f.avx512f},   {"avx512bw", f.avx512bw}, {"avx512dq", f.avx512dq},
      {"avx512vl", f.avx512vl}, {"avx512_vnni", f.avx512vnni}, {"avx512_bf16", f.avx512bf16},
      {"amx_tile", f.amx_tile}, {"amx_int8", f.amx_int8},
      {"neon", f.neon},         {"dotprod", f.dotprod}};
  for (auto& [name, on] : flags)
    if (on) feats.append(name);
  d["features"] = feats;
  d["threads"] = default_pool()->size();
  return d;
}

py::dict cuda_report() {
  CudaInfo info = cuda_info();
  py::dict d;
  d["compiled"] = info.compiled;
  d["available"] = info.available;
  d["reason"] = info.reason;
  d["architectures"] = info.architectures;
  d["runtime_version"] = info.runtime_version;
  d["driver_version"] = info.driver_version;
  py::list devs;
  for (const CudaDevice& dev : info.devices) {
    py::dict x;
    x["index"] = dev.index;
    x["name"] = dev.name;
    x["compute_capability"] = py::make_tuple(dev.major, dev.minor);
    x["total_memory"] = dev.total_memory;
    x["free_memory"] = dev.free_memory;
    x["multiprocessors"] = dev.multiprocessors;
    devs.append(x);
  }
  d["devices"] = devs;
  return d;
}

}  // namespace
}  // namespace selfext

PYBIND11_MODULE(_native, m) {
  using namespace selfext;
  m.doc() = "selfext-native kernels (C++/CUDA). Use the selfext_native package, not this module.";
  py::register_exception_translator(&translate);

  m.def("cpu_report", &cpu_report, "CPU brand, SIMD level in use and supported, features, thread count.");
  m.def("cuda_report", &cuda_report, "Whether CUDA was compiled in and is usable, and why not.");
  m.def("_cuda_alloc_probe", &cuda_alloc_probe, py::arg("device"), py::arg("bytes"),
        "Test hook: allocate and free bytes on a CUDA device through the checked allocation path.");
  m.def("set_simd_level", &set_simd_level, py::arg("name"),
        "Force a SIMD level (scalar, avx2, avx512, avx512_vnni, amx, neon); raises if unavailable.");
  m.def("simd_level", [] { return std::string(simd_level_name(simd_level())); });
  m.def("best_simd_level", [] { return std::string(simd_level_name(best_simd_level())); });
  m.def("set_num_threads", &set_default_pool_threads, py::arg("n_threads"));
  m.def("get_num_threads", [] { return default_pool()->size(); });
  m.def("default_thread_count", &default_thread_count);
  m.def(
      "_raise_in_worker",
      [](int64_t n_tasks) {
        // Test hook: every task that runs on a pool worker (not the calling thread) throws; tasks sleep
        // 1 ms so that workers get some. Proves a worker's exception reaches Python as an exception.
        py::gil_scoped_release release;
        auto pool = default_pool();
        const auto caller = std::this_thread::get_id();
        pool->parallel_for(n_tasks, [&](int64_t t) {
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
          SELFEXT_CHECK(std::this_thread::get_id() == caller, ArgumentError, "task ", t,
                        " failed on purpose in a worker thread");
        });
      },
      py::arg("n_tasks"));
#if defined(SELFEXT_WITH_CUDA)
  m.attr("cuda_compiled") = true;
#else
  m.attr("cuda_compiled") = false;
#endif
#ifndef SELFEXT_VERSION
#define SELFEXT_VERSION "0.0.0"
#endif
  m.attr("__version__") = SELFEXT_VERSION;

  for (auto& [area, fn] : binding_registry()) {
    (void)area;
    fn(m);
  }
}
