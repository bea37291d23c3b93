// src/cli/explain_detection.hpp: `gradcam explain --task detection`, one map per detected box
// (explain_detection.cpp; docs/detection.md). explain.cpp runs the batches; this file has the
// flags, the target, and each image's files and records.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include <gradcam/gradcam.hpp>

#include "batches.hpp"
#include "common.hpp"

namespace gradcam_cli {

/// --task and the detection flags of `explain`.
struct DetectionFlags {
  std::string task = "classification";
  double score_threshold = 0.5;
  int max_boxes = 20;
  std::vector<int64_t> classes;
  std::string layout = "torchvision";
  bool on() const { return task == "detection"; }
};

/// Declares --task, --score-threshold, --max-boxes, --classes and --layout.
void add_detection_flags(CLI::App* app, DetectionFlags& f);

/// With --task detection: checks the methods (the CAM methods a detection score can drive), and
/// makes the preprocessing default to the image as it is (--resize 0 --crop 0 --mean 0 0 0
/// --std 1 1 1: detectors take [0, 1] images, and torchvision's normalise inside) unless given.
void prepare_detection(const CLI::App& app, const DetectionFlags& f, Common& common,
                       const std::vector<std::string>& methods);

/// The library's options from the flags, and the target: every box they select, one rank each.
gradcam::detection::DetectionOptions detection_options(const DetectionFlags& f);
gradcam::Target detection_target(const DetectionFlags& f);

/// A detection's box (continuous input coordinates) as the image pixels it covers (inclusive).
gradcam::Box image_box(const gradcam::detection::Detection& d, const gradcam::Geometry& g);

/// What explain_boxes() writes with.
struct BoxWriter {
  const DetectionFlags& flags;
  const std::vector<std::string>& layers;
  const std::vector<std::string>& methods;
  const gradcam::Labels& labels;
  std::string out;
  int colormap;
  double alpha;
};

/// Writes image `n`'s files: per box, layer and method an overlay of its map with the box drawn
/// and the map as .npy; per image one overlay of every box's map (each normalised and masked to
/// its box) with the boxes drawn. Returns the records, one per box, layer and method.
std::vector<nlohmann::json> explain_boxes(const BoxWriter& w, const gradcam::GradCAMResult& r,
                                          const LoadedImage& im, int64_t n, const std::string& stem);

/// `eval-loc --task detection` (eval_loc_detection.cpp): the pointing game per detected box.
struct DetectionLocArgs {
  const Common& common;
  const DetectionFlags& flags;
  std::string annotations, images_dir, report;
  std::string method = "gradcam";  ///< the CAM method whose maps point (prepare_detection checked it)
  int tolerance = 15;
  double iou = 0.5;  ///< a detection matches a true box of its class with IoU >= this
};
int run_eval_loc_detection(const DetectionLocArgs& a);

}  // namespace gradcam_cli
