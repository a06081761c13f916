// Typed exceptions thrown by native code. bindings/module.cpp translates each into the Python class of
// the same name in selfext_native.errors. Never abort() or exit(): a library must give control back.
#pragma once
#include <cstdio>
#include <type_traits>
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
// Message building without iostreams: a device build (g++ 13, Python 3.12, torch loaded first) crashed
// inside ostringstream's number formatting, and error paths must never crash. Integers go through
// std::to_string, floating point through snprintf, strings as they are.
inline void append(std::string& s, const std::string& v) { s += v; }
inline void append(std::string& s, const char* v) { s += v ? v : "(null)"; }
inline void append(std::string& s, char c) { s += c; }
inline void append(std::string& s, bool b) { s += b ? "true" : "false"; }
inline void append(std::string& s, double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.6g", v);
  s += buf;
}
inline void append(std::string& s, float v) { append(s, double(v)); }
template <typename T, typename std::enable_if<std::is_integral<T>::value, int>::type = 0>
void append(std::string& s, T v) {
  s += std::to_string(v);
}
template <typename T, typename std::enable_if<std::is_enum<T>::value, int>::type = 0>
void append(std::string& s, T v) {
  s += std::to_string(static_cast<long long>(v));
}
template <typename... Args>
std::string concat(const Args&... args) {
  std::string s;
  (append(s, args), ...);
  return s;
}
}  // namespace detail

}  // namespace selfext

// SELFEXT_CHECK(n > 0, ArgumentError, "n must be positive, got ", n);
#define SELFEXT_CHECK(cond, ErrorType, ...)                                  \
  do {                                                                       \
    if (!(cond)) throw ::selfext::ErrorType(::selfext::detail::concat(__VA_ARGS__)); \
  } while (0)
