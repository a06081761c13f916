// Typed exceptions thrown by native code. bindings/module.cpp translates each into the Python class of
// the same name in selfext_native.errors. Never abort() or exit(): a library must give control back.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace selfext {

// A parameter is out of range or inconsistent (Python: ArgumentError, a ValueError).
struct ArgumentError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
// An array has the wrong dtype, device or kind (Python: ArrayTypeError, a TypeError).
struct ArrayTypeError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
// A sequence does not fit in the context (Python: ContextOverflowError, a ValueError).
struct ContextOverflowError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
// Host or device memory exhausted, or a plan exceeds what is available (Python: OutOfMemoryError).
struct OutOfMemoryError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// A backend failed at run time: CUDA error, SIMD level not available (Python: BackendError).
struct BackendError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// The caller asked native work to stop (Ctrl-C). Python: selfext_native.errors.Cancelled.
struct Cancelled : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace selfext

// SELFEXT_CHECK(n > 0, ArgumentError, "n must be positive, got ", n);
#define SELFEXT_CHECK(cond, ErrorType, ...)                                  \
  do {                                                                       \
    if (!(cond)) throw ::selfext::ErrorType(::selfext::detail::concat(__VA_ARGS__)); \
  } while (0)
