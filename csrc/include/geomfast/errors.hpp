// Two tiers of errors (as in FAISS): user errors throw one of the classes below with a message
// that names the function and says what was expected and what came; broken internal invariants
// go through GF_ASSERT. The bindings map ValueError/TypeError/RuntimeError to Python's.
#pragma once
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

namespace geomfast {

struct ValueError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
struct TypeError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
struct RuntimeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Raised by GramBackend::update when the input holds NaN/Inf; the state is left unchanged.
struct NonFiniteError : ValueError {
  NonFiniteError(const std::string& msg, int64_t count, int64_t first_row)
      : ValueError(msg), count(count), first_row(first_row) {}
  int64_t count;
  int64_t first_row;
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace geomfast

#define GF_THROW(Kind, ...) throw ::geomfast::Kind(::geomfast::detail::concat(__VA_ARGS__))

#define GF_ASSERT(cond, ...)                                                                 \
  do {                                                                                       \
    if (!(cond))                                                                             \
      throw ::geomfast::RuntimeError(::geomfast::detail::concat(                             \
          "internal error (please report): ", #cond, " failed at ", __FILE__, ":", __LINE__, \
          ": ", ##__VA_ARGS__));                                                             \
  } while (0)
