// tests/catch.hpp: Catch2 v2 or v3, after LibTorch. Debian's LibTorch pulls in glog, whose CHECK
// macro would otherwise replace Catch's. tests/CMakeLists.txt sets GRADCAM_CATCH2_MAJOR from the
// Catch2 that find_package found (Debian 12 ships v2, Debian 13 v3).
#pragma once
#include <ATen/ATen.h>
#include <torch/csrc/jit/api/module.h>
#undef CHECK

#include <string>

#if defined(GRADCAM_CATCH2_MAJOR) && GRADCAM_CATCH2_MAJOR >= 3
#include <catch2/catch_approx.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
using Catch::Approx;
namespace test {
/// v2's Catch::Contains, spelled ContainsSubstring in v3.
inline Catch::Matchers::StringContainsMatcher Contains(const std::string& s) {
  return Catch::Matchers::ContainsSubstring(s);
}
}  // namespace test
#else
#include <catch2/catch.hpp>
namespace test {
using Catch::Matchers::Contains;
}  // namespace test
#endif
