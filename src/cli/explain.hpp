// src/cli/explain.hpp (private to `gradcam explain`): its arguments, and the setup steps that
// read only them (explain_setup.cpp): the inputs, the explainer's options, the Finer-CAM target.
// The run itself is in explain.cpp, the detection task's parts in explain_detection.cpp.
#pragma once

#include <string>
#include <vector>

#include <gradcam/gradcam.hpp>

#include "common.hpp"
#include "explain_detection.hpp"

namespace gradcam_cli {

struct ExplainArgs {
  Common common;
  std::vector<std::string> layers;
  std::string fuse;
  int perturbation_batch = 0;
  std::vector<std::string> images;
  std::string images_dir;
  std::vector<int64_t> classes;
  int topk = 0;
  int finer = 0;             ///< --finer K: Finer-CAM's reference classes (0: off)
  double finer_alpha = 1.0;  ///< --finer-alpha
  std::vector<std::string> methods = {"gradcam"};
  std::string colormap = "jet";
  double alpha = 0.5;
  std::string out = "gradcam_out";
  bool json_lines = false;
  double threshold = 0.15;
  DetectionFlags detection;
};

/// The images to explain (--image, then --images' files, then --shard's share), and a writable
/// --out.
std::vector<std::string> explain_inputs(const ExplainArgs& a);

/// True when --method names m1 or m2.
bool wants(const ExplainArgs& a, const char* m1, const char* m2);

/// One explainer computes every CAM method (one forward pass); Grad-CAM is always computed: the
/// guided methods, counterfactual maps and boxes of non-map methods use it.
gradcam::GradCAMOptions explain_options(const ExplainArgs& a, const std::vector<int64_t>& own_hw);

/// --finer K: the Finer-CAM target of --class (one class) or of each image's top-1.
gradcam::Target finer_target(const ExplainArgs& a);

}  // namespace gradcam_cli
