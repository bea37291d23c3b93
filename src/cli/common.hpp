// src/cli/common.hpp: what the `gradcam` subcommands share: common flags, preprocessing, the
// progress bar, image listing. Included by main.cpp and workflows.cpp.
#pragma once

#include <ATen/ATen.h>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <unistd.h>
#include <vector>

#include <gradcam/gradcam.hpp>

namespace gradcam_cli {

namespace fs = std::filesystem;

struct Common {
  std::string model;
  std::string layer = "auto";
  std::string device = "cpu";
  int batch = 8;
  int resize = 256;
  int crop = 224;
  std::vector<double> mean = {0.485, 0.456, 0.406};
  std::vector<double> std = {0.229, 0.224, 0.225};
  std::string labels;
  int threads = 0;
  bool quiet = false;
};

inline void add_common(CLI::App* app, Common& c, bool with_model = true) {
  if (with_model) {
    app->add_option("--model", c.model, "TorchScript model file (torch.jit.script / torch.jit.trace, saved with torch.jit.save)")
        ->required()->check(CLI::ExistingFile);
  }
  app->add_option("--layer", c.layer, "target layer: a module path as named_modules() prints it (layer4, features.29), or auto")
      ->capture_default_str();
  app->add_option("--device", c.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  app->add_option("--batch", c.batch, "images per forward pass")->check(CLI::PositiveNumber)->capture_default_str();
  app->add_option("--resize", c.resize, "resize the shorter side to S pixels (0: keep)")->check(CLI::NonNegativeNumber)->capture_default_str();
  app->add_option("--crop", c.crop, "centre crop C x C (0: none)")->check(CLI::NonNegativeNumber)->capture_default_str();
  app->add_option("--mean", c.mean, "per-channel mean R G B")->expected(3)->capture_default_str();
  app->add_option("--std", c.std, "per-channel standard deviation R G B")->expected(3)->check(CLI::PositiveNumber)->capture_default_str();
  app->add_option("--labels", c.labels, "class names, one per line")->check(CLI::ExistingFile);
  app->add_option("--threads", c.threads, "intra-op threads (default: all cores)")->check(CLI::PositiveNumber);
  app->add_flag("--quiet,-q", c.quiet, "no progress bar");
}

inline gradcam::Preprocess preprocess_of(const Common& c) {
  return gradcam::Preprocess().resize(c.resize).crop(c.crop).mean(c.mean).std(c.std);
}

inline std::vector<std::string> read_labels(const std::string& path) {
  std::vector<std::string> out;
  if (path.empty()) return out;
  std::ifstream in(path);
  GRADCAM_CHECK(in.good(), "cannot read labels file '", path, "'");
  std::string line;
  while (std::getline(in, line)) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    out.push_back(line);
  }
  while (!out.empty() && out.back().empty()) out.pop_back();
  GRADCAM_CHECK(!out.empty(), "labels file '", path, "' is empty");
  return out;
}

/// A progress bar with ETA on stderr, only when stderr is a terminal.
class Progress {
 public:
  Progress(size_t total, bool enabled) : total_(total), enabled_(enabled && total > 1 && isatty(2)) {
    start_ = std::chrono::steady_clock::now();
  }
  void update(size_t done) {
    if (!enabled_) return;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double eta = done > 0 ? elapsed / static_cast<double>(done) * static_cast<double>(total_ - done) : 0;
    const int width = 30;
    const int fill = static_cast<int>(width * done / std::max<size_t>(total_, 1));
    std::fprintf(stderr, "\r[%s%s] %zu/%zu images  ETA %.0fs ", std::string(static_cast<size_t>(fill), '#').c_str(),
                 std::string(static_cast<size_t>(width - fill), ' ').c_str(), done, total_, eta);
    if (done == total_) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }

 private:
  size_t total_;
  bool enabled_;
  std::chrono::steady_clock::time_point start_;
};

/// The image files (by extension) directly in `dir`, sorted; empty if none or not a folder.
inline std::vector<std::string> list_images_or_empty(const std::string& dir) {
  static const std::set<std::string> exts = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"};
  std::error_code ec;
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (!e.is_regular_file()) continue;
    std::string ext = e.path().extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char ch) { return std::tolower(ch); });
    if (exts.count(ext)) out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

inline std::vector<std::string> list_images(const std::string& dir) {
  std::error_code ec;
  GRADCAM_CHECK(fs::is_directory(dir, ec), "--images '", dir, "' is not a directory");
  auto out = list_images_or_empty(dir);
  GRADCAM_CHECK(!out.empty(), "--images '", dir, "' contains no image files (.png, .jpg, ...)");
  return out;
}

/// Writes `text` to `path` through a temporary file and a rename, so that an interrupted run never
/// leaves a half-written report; throws gradcam::Error naming the path.
inline void write_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    GRADCAM_CHECK(out.good(), "cannot write '", path, "'");
    out << text;
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  GRADCAM_CHECK(!ec, "cannot write '", path, "': ", ec.message());
}

}  // namespace gradcam_cli
