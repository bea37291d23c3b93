// libFuzzer target: loading a TorchScript model from bytes. A corrupt or truncated file must
// raise gradcam::Error, never crash.
#include <gradcam/error.hpp>
#include <gradcam/model.hpp>

#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto m = gradcam::load_model_from_bytes(std::string(reinterpret_cast<const char*>(data), size));
    (void)m;
  } catch (const gradcam::Error&) {
  }
  return 0;
}
