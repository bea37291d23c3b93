// tests/support.hpp: shared helpers for the tests: fixture paths, reference stores, comparisons.
#pragma once

#include <ATen/ATen.h>
#include <torch/csrc/jit/api/module.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>
#include <unistd.h>

#include <torch/csrc/jit/serialization/import.h>

#include <gradcam/model.hpp>

namespace test {

/// Directory the fixture script wrote to (set by CTest in GRADCAM_FIXTURES).
inline std::string fixtures() {
  const char* dir = std::getenv("GRADCAM_FIXTURES");
  return dir ? dir : "fixtures";
}

/// GRADCAM_TEST_QUICK=1 (the sanitizer run) skips the heaviest model cases; every file still runs.
inline bool quick() {
  const char* q = std::getenv("GRADCAM_TEST_QUICK");
  return q != nullptr && std::string(q) == "1";
}

inline std::string fixture(const std::string& name) { return fixtures() + "/" + name; }

/// This test process's scratch folder, made on first use and removed at exit: the tests write
/// their files under it, never under a fixed name in /tmp, so that two suites running at once (a
/// release and a sanitizer build on one machine) cannot overwrite each other's files.
inline std::filesystem::path scratch_root() {
  struct Root {
    std::filesystem::path path =
        std::filesystem::temp_directory_path() / ("gradcam_tests_" + std::to_string(::getpid()));
    Root() {
      std::filesystem::remove_all(path);
      std::filesystem::create_directories(path);
    }
    ~Root() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  };
  static Root root;
  return root.path;
}

inline torch::jit::Module model(const std::string& name) {
  return gradcam::load_model(fixture(name + ".pt"));
}

/// The module in float64, as Python's module.double(): floating-point parameters and buffers only
/// (LibTorch's Module::to(dtype) converts integer buffers too, such as Swin's
/// relative_position_index, which must stay an index).
inline void to_double(torch::jit::Module& module) {
  for (const auto& p : module.parameters()) {
    if (p.is_floating_point()) p.set_data(p.to(at::kDouble));
  }
  for (const auto& b : module.buffers()) {
    if (b.is_floating_point()) b.set_data(b.to(at::kDouble));
  }
}

/// A reference store written by make_fixtures.py: buffers by name.
struct Ref {
  explicit Ref(const std::string& name) : store(torch::jit::load(fixture(name + "_ref.pt"))) {}
  bool has(const std::string& key) const { return store.hasattr(key); }
  at::Tensor get(const std::string& key) const { return store.attr(key).toTensor(); }
  torch::jit::Module store;
};

inline std::string key(const std::string& kind, std::string layer, int64_t batch, int64_t call) {
  for (auto& c : layer)
    if (c == '.') c = '_';
  return kind + "__" + layer + "__b" + std::to_string(batch) + "__c" + std::to_string(call);
}

/// max |a - b| / max |b|: the agreement measure "within 1e-5 of the map's max".
inline double rel_err(const at::Tensor& a, const at::Tensor& b) {
  const double scale = b.abs().max().item<double>();
  const double diff = (a.to(at::kDouble).cpu() - b.to(at::kDouble).cpu()).abs().max().item<double>();
  return scale > 0 ? diff / scale : diff;
}

}  // namespace test
