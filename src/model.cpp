// src/model.cpp: model loading with clear errors, and the error helpers.
#include <gradcam/model.hpp>

#include <ATen/Context.h>
#include <torch/csrc/jit/serialization/import.h>

#include <torch/version.h>

#include <filesystem>
#include <regex>
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
/// The error for a model that `torch::jit::load` refused. `what` names it ("'m.pt'", "the data").
/// A file written by a newer torch than this LibTorch reads names both versions: otherwise the
/// user sees only "is not a readable TorchScript model" and re-exports what is already fine.
[[noreturn]] void fail_load(const std::string& what, const std::exception& e) {
  const std::string message = detail::torch_message(e);
  static const std::regex too_new(
      "file with version ([0-9]+), but the maximum supported version for reading is ([0-9]+)");
  std::smatch m;
  if (std::regex_search(message, m, too_new)) {
    fail(detail::concat(what, " was saved by a newer PyTorch than this LibTorch ", TORCH_VERSION,
                        " reads: the file's format version is ", m[1].str(), ", and LibTorch ",
                        TORCH_VERSION, " reads versions up to ", m[2].str(),
                        "; link a newer LibTorch, or export the model with torch ",
                        TORCH_VERSION_MAJOR, ".", TORCH_VERSION_MINOR));
  }
  fail(detail::concat(what, " is not a readable TorchScript model (", message, "); ", kHowToExport));
}
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
    fail_load(detail::concat("'", path, "'"), e);
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
    fail_load("the data", e);
  }
}

}  // namespace gradcam
