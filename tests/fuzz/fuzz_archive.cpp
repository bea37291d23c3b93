// libFuzzer target: gradcam's own zip reader (src/archive.cpp), which checks a model file's
// records and sums before LibTorch sees them. It runs under AddressSanitizer, unlike fuzz_model,
// whose LibTorch part cannot (scripts/fuzz.sh). Damaged input must raise gradcam::Error.
#include <gradcam/error.hpp>

#include <cstdint>
#include <string>

#include "../../src/archive.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  const gradcam::detail::ReadAt read_at = [&](std::uint64_t at, char* out, std::size_t n) {
    bytes.copy(out, n, at);
  };
  for (const auto which : {gradcam::detail::Records::parsed, gradcam::detail::Records::tensors}) {
    try {
      gradcam::detail::verify_archive(bytes.size(), read_at, "the data", which);
    } catch (const gradcam::Error&) {
    }
  }
  return 0;
}
