// src/cli/explain_setup.cpp: `gradcam explain`'s setup steps that read only its arguments
// (explain.hpp): the images and the output folder, the explainer's options, the Finer-CAM target.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <system_error>

#include <gradcam/gradcam.hpp>

#include "common.hpp"
#include "explain.hpp"
#include "shard.hpp"

namespace gradcam_cli {

std::vector<std::string> explain_inputs(const ExplainArgs& a) {
  std::vector<std::string> images = a.images;
  if (!a.images_dir.empty()) {
    auto more = list_images(a.images_dir);
    images.insert(images.end(), more.begin(), more.end());
  }
  GRADCAM_CHECK(!images.empty(), "no images given: use --image PATH or --images DIR");
  // --shard: ranked by the path inside --images (--image files by the path as given)
  images = take_shard(images, parse_shard(a.common.shard),
                      [&](const std::string& path) { return shard_key(path, a.images_dir); });
  std::error_code ec;
  fs::create_directories(a.out, ec);
  GRADCAM_CHECK(fs::is_directory(a.out), "cannot create output directory '", a.out, "'");
  const std::string probe = (fs::path(a.out) / ".gradcam_write_test").string();
  std::ofstream t(probe);
  GRADCAM_CHECK(t.good(), "output directory '", a.out, "' is not writable");
  t.close();
  fs::remove(probe, ec);
  return images;
}

bool wants(const ExplainArgs& a, const char* m1, const char* m2) {
  return std::count(a.methods.begin(), a.methods.end(), m1) + std::count(a.methods.begin(), a.methods.end(), m2) > 0;
}

gradcam::GradCAMOptions explain_options(const ExplainArgs& a, const std::vector<int64_t>& own_hw) {
  std::vector<gradcam::Method> cam_methods = {gradcam::Method::gradcam};
  for (const auto& m : a.methods) {
    if (is_cam_method(m) && m != "gradcam") cam_methods.push_back(gradcam::method_from_name(m));
  }
  const std::vector<std::string> layer_args = a.layers.empty() ? std::vector<std::string>{a.common.layer} : a.layers;
  GRADCAM_CHECK(a.fuse.empty() || layer_args.size() > 1, "--fuse combines several layers; give two or more --layer");
  gradcam::GradCAMOptions opts = cam_options(a.common, layer_args, own_hw);
  opts.keep_signed(true).methods(cam_methods).perturbation_batch(command_perturbation_batch(a.perturbation_batch))
      .guided(wants(a, "guided", "guided-gradcam") ? gradcam::GuidedMode::guided : gradcam::GuidedMode::none);
  return opts;
}

gradcam::Target finer_target(const ExplainArgs& a) {
  GRADCAM_CHECK(!a.detection.on(), "--finer contrasts class scores; it does not apply to --task detection");
  GRADCAM_CHECK(a.classes.size() <= 1, "--finer explains one class: give one --class, or none for each image's top-1");
  return gradcam::targets::finer(a.classes, a.finer, a.finer_alpha);
}

}  // namespace gradcam_cli
