// src/cli/explain_detection.cpp: `gradcam explain --task detection` (explain_detection.hpp).
#include "explain_detection.hpp"

#include "image_sets.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>

namespace gradcam_cli {

using json = nlohmann::json;
namespace det = gradcam::detection;

void add_detection_flags(CLI::App* app, DetectionFlags& f) {
  app->add_option("--task", f.task, "classification (a class score per map) or detection (a map per detected box)")
      ->check(CLI::IsMember({"classification", "detection"}))->capture_default_str();
  app->add_option("--score-threshold", f.score_threshold, "detection: explain boxes scoring at least this")
      ->check(real_number(0, 1))->capture_default_str();
  app->add_option("--max-boxes", f.max_boxes, "detection: at most this many boxes per image, the best first (0: all)")
      ->check(whole_number(0))->capture_default_str();
  app->add_option("--classes", f.classes, "detection: only boxes of these classes")
      ->expected(1, -1)->check(whole_number(0, std::numeric_limits<long long>::max()));
  app->add_option("--layout", f.layout, "detection: the model's output: torchvision (a list of boxes/scores/labels "
                  "dicts), yolo-nxbx(5+c) ([N, boxes, 5 + classes], YOLOv5/v7), yolo-nx(4+c)xb ([N, 4 + classes, "
                  "boxes], YOLOv8 and later)")
      ->check(CLI::IsMember({"torchvision", "yolo-nxbx(5+c)", "yolo-nx(4+c)xb"}))->capture_default_str();
}

void prepare_detection(const CLI::App& app, const DetectionFlags& f, Common& common,
                       const std::vector<std::string>& methods) {
  if (!f.on()) {
    for (const char* flag : {"--score-threshold", "--max-boxes", "--classes", "--layout"}) {
      GRADCAM_CHECK(app.get_option(flag)->count() == 0, flag, " applies to --task detection");
    }
    return;
  }
  static const std::set<std::string> ok = {"gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam"};
  for (const auto& m : methods) {
    GRADCAM_CHECK(ok.count(m), "--task detection explains a box with gradcam, gradcam++, xgradcam, hirescam, layercam "
                  "or eigencam, not '", m, "'");
  }
  for (const char* flag : {"--class", "--topk"}) {
    const CLI::Option* o = app.get_option_no_throw(flag);
    GRADCAM_CHECK(o == nullptr || o->count() == 0, flag, " chooses classes of a classifier; with --task detection "
                  "use --classes, --score-threshold and --max-boxes");
  }
  if (app.get_option("--resize")->count() == 0) common.resize = 0;
  if (app.get_option("--crop")->count() == 0) common.crop = 0;
  if (app.get_option("--mean")->count() == 0) common.mean = {0, 0, 0};
  if (app.get_option("--std")->count() == 0) common.std = {1, 1, 1};
}

det::DetectionOptions detection_options(const DetectionFlags& f) {
  return det::DetectionOptions()
      .layout(det::layout_from_name(f.layout))
      .score_threshold(f.score_threshold)
      .max_boxes(f.max_boxes)
      .classes(f.classes);
}

gradcam::Target detection_target(const DetectionFlags& f) { return det::boxes(detection_options(f)); }

gradcam::Box image_box(const det::Detection& d, const gradcam::Geometry& g) {
  auto clamp = [](double v, int size) { return std::max(0, std::min(size - 1, static_cast<int>(v))); };
  gradcam::Box b;
  b.x0 = clamp(std::floor((d.x0 + g.crop_x) / g.scale_x), g.image_width);
  b.y0 = clamp(std::floor((d.y0 + g.crop_y) / g.scale_y), g.image_height);
  b.x1 = std::max(b.x0, clamp(std::ceil((d.x1 + g.crop_x) / g.scale_x) - 1, g.image_width));
  b.y1 = std::max(b.y0, clamp(std::ceil((d.y1 + g.crop_y) / g.scale_y) - 1, g.image_height));
  return b;
}

namespace {

std::string caption(const BoxWriter& w, const det::Detection& d) {
  const std::string name = w.labels.name(d.label);
  char score[16];
  std::snprintf(score, sizeof score, "%.2f", d.score);
  return (name.empty() ? std::to_string(d.label) : name) + " " + score;
}

}  // namespace

std::vector<json> explain_boxes(const BoxWriter& w, const gradcam::GradCAMResult& r, const LoadedImage& im,
                                int64_t n, const std::string& stem) {
  const auto found = det::detect(*r.output, detection_options(w.flags))[static_cast<size_t>(n)];
  const gradcam::Geometry& g = im.geometry;
  const std::string first = w.methods.front();
  cv::Mat combined = cv::Mat::zeros(im.image.size(), CV_32F);  // every box's first map, in its box
  std::vector<json> records;
  for (size_t j = 0; j < found.size(); ++j) {
    const det::Detection& d = found[j];
    const gradcam::Box box = image_box(d, g);
    const auto rank = static_cast<int64_t>(j);
    for (const auto& layer : w.layers) {
      for (const auto& method : w.methods) {
        const gradcam::LayerMap& lm = r.get(layer, rank, 0, gradcam::method_from_name(method));
        const at::Tensor map = lm.map[n][0];
        if (gradcam::uses_gradients(lm.method) && lm.map_signed.defined() && !lm.map_signed[n].ne(0).any().item<bool>()) {
          // another image's box of this rank depends on the layer, this one's does not
          records.push_back({{"image", im.path}, {"task", "detection"}, {"box_index", j}, {"layer", layer},
                             {"method", method}, {"error", "the box's score does not depend on layer '" + layer +
                                                  "' (no gradient reaches it), so its map would be blank"}});
          continue;
        }
        std::string suffix = w.layers.size() > 1 ? "_" + layer : std::string();
        std::replace(suffix.begin(), suffix.end(), '%', '_');
        const std::string base = (std::filesystem::path(w.out) /
                                  (stem + "_box" + std::to_string(j) + "_c" + std::to_string(d.label) + "_" + method + suffix))
                                     .string();
        const cv::Mat heat = gradcam::map_to_image(map, g);
        cv::Mat shown = gradcam::overlay(im.image, heat, w.colormap, w.alpha);
        gradcam::draw_box(shown, box, cv::Scalar(255, 255, 255), caption(w, d));
        gradcam::save_image(base + ".png", shown);
        gradcam::save_npy(base + "_map.npy", map);
        if (method == first && layer == w.layers.front()) {
          const cv::Rect inside(box.x0, box.y0, box.x1 - box.x0 + 1, box.y1 - box.y0 + 1);
          cv::Mat roi = combined(inside);  // shares combined's pixels
          cv::max(roi, heat(inside), roi);
        }
        records.push_back({{"image", im.path}, {"task", "detection"}, {"box_index", j}, {"detection", d.index},
                           {"box", json::array({box.x0, box.y0, box.x1, box.y1})},
                           {"box_input", json::array({d.x0, d.y0, d.x1, d.y1})}, {"detection_score", d.score},
                           {"class", d.label}, {"label", w.labels.name(d.label)}, {"layer", layer},
                           {"method", method}, {"files", {{"overlay", base + ".png"}, {"map", base + "_map.npy"}}}});
      }
    }
  }
  if (found.empty()) {  // another image of the batch has boxes; this one has none to explain
    records.push_back({{"image", im.path}, {"task", "detection"}, {"boxes", 0},
                       {"note", "no box has a score >= " + fmt(w.flags.score_threshold, 3)}});
    return records;
  }
  cv::Mat all = gradcam::overlay(im.image, combined, w.colormap, w.alpha);
  for (const auto& d : found) gradcam::draw_box(all, image_box(d, g), cv::Scalar(255, 255, 255), caption(w, d));
  const std::string boxes = (std::filesystem::path(w.out) / (stem + "_boxes_" + first + ".png")).string();
  gradcam::save_image(boxes, all);
  for (auto& rec : records) rec["files"]["boxes"] = boxes;
  return records;
}

}  // namespace gradcam_cli
