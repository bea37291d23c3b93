// src/model.cpp: model loading with clear errors, and the error helpers.
#include <gradcam/model.hpp>

#include <ATen/Context.h>
#include <torch/csrc/jit/serialization/import.h>

#include <filesystem>
#include <sstream>

#include <gradcam/error.hpp>

#include "graph.hpp"

namespace gradcam {

void fail(const std::string& message) { throw Error(message); }

namespace detail {
void internal_error(const char* file, int line, const std::string& what) {
  throw std::logic_error(concat("gradcam internal error at ", file, ":", line, ": ", what,
                                " (please report this bug)"));
}
}  // namespace detail

namespace {
void check_device(const c10::Device& device) {
  GRADCAM_CHECK(!device.is_cuda() || at::hasCUDA(), "device '", device.str(),
                "' requested but CUDA is not available on this machine or LibTorch build; use "
                "the CPU");
}

const char* kHowToExport =
    "save one from Python with torch.jit.save(torch.jit.script(model), PATH) or "
    "torch.jit.save(torch.jit.trace(model, example), PATH)";
}  // namespace

torch::jit::Module load_model(const std::string& path, c10::Device device) {
  namespace fs = std::filesystem;
  std::error_code ec;
  GRADCAM_CHECK(fs::exists(path, ec), "model file '", path, "' does not exist");
  GRADCAM_CHECK(fs::is_regular_file(path, ec), "model path '", path, "' is not a regular file");
  check_device(device);
  try {
    torch::jit::Module m = torch::jit::load(path, device);
    m.eval();
    return m;
  } catch (const std::exception& e) {
    fail(detail::concat("'", path, "' is not a readable TorchScript model (",
                        detail::torch_message(e), "); ", kHowToExport));
  }
}

torch::jit::Module load_model_from_bytes(const std::string& bytes, c10::Device device) {
  GRADCAM_CHECK(!bytes.empty(), "the model data is empty");
  check_device(device);
  try {
    std::istringstream in(bytes);
    torch::jit::Module m = torch::jit::load(in, device);
    m.eval();
    return m;
  } catch (const std::exception& e) {
    fail(detail::concat("the data is not a readable TorchScript model (",
                        detail::torch_message(e), "); ", kHowToExport));
  }
}

}  // namespace gradcam
