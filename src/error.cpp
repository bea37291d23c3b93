// src/error.cpp: gradcam/error.hpp's functions.
#include <gradcam/error.hpp>

namespace gradcam {

void fail(const std::string& message) { throw Error(message); }

namespace detail {
void internal_error(const char* file, int line, const std::string& what) {
  throw std::logic_error(concat("gradcam internal error at ", file, ":", line, ": ", what,
                                " (please report this bug)"));
}
}  // namespace detail

}  // namespace gradcam
