// gradcam/error.hpp: the one exception type gradcam throws for bad input, and its check macro.
//
// Every user error (unknown layer, bad shape, class out of range, unreadable file...) is reported
// as gradcam::Error with a message that names the bad value and, where it helps, the valid
// choices. Internal invariants use GRADCAM_ASSERT: a failure there is a bug in gradcam.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace gradcam {

/// The exception thrown for every error caused by the caller's input.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Throws gradcam::Error(message).
[[noreturn]] void fail(const std::string& message);

namespace detail {
template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}
[[noreturn]] void internal_error(const char* file, int line, const std::string& what);
}  // namespace detail
}  // namespace gradcam

/// Throws gradcam::Error with the concatenated message when `cond` is false.
#define GRADCAM_CHECK(cond, ...)                                   \
  do {                                                             \
    if (!(cond)) ::gradcam::fail(::gradcam::detail::concat(__VA_ARGS__)); \
  } while (0)

/// Internal invariant; a failure is a bug in gradcam, not a user error.
#define GRADCAM_ASSERT(cond)                                                   \
  do {                                                                         \
    if (!(cond)) ::gradcam::detail::internal_error(__FILE__, __LINE__, #cond); \
  } while (0)
