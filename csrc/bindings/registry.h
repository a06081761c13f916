// Each area's binding file (bindings/attention.cpp, bindings/quant.cpp, ...) registers its functions
// with a static BindingRegistrar, so module.cpp need not know the list. Binding files are compiled into
// the module itself (never a static library, whose unreferenced objects the linker would drop).
#pragma once
#include <pybind11/pybind11.h>

#include <utility>
#include <vector>

namespace selfext {

using RegisterFn = void (*)(pybind11::module_&);

std::vector<std::pair<const char*, RegisterFn>>& binding_registry();

struct BindingRegistrar {
  BindingRegistrar(const char* area, RegisterFn fn) { binding_registry().emplace_back(area, fn); }
};

}  // namespace selfext
