// src/cli/eval_loc_detection.cpp: `gradcam eval-loc --task detection`: the pointing game per
// detected box (explain_detection.hpp; docs/detection.md).
#include <ATen/ATen.h>

#include <chrono>
#include <map>

#include "explain_detection.hpp"
#include "image_sets.hpp"

namespace gradcam_cli {

using json = nlohmann::json;
namespace det = gradcam::detection;

namespace {

/// Counts of one class, or of every box.
struct Pointing {
  int64_t boxes = 0, own_hits = 0, matched = 0, truth_hits = 0;
  json to_json() const {
    auto frac = [](int64_t a, int64_t b) { return b > 0 ? json(static_cast<double>(a) / static_cast<double>(b)) : json(nullptr); };
    return {{"boxes", boxes}, {"pointing_own_box", frac(own_hits, boxes)}, {"matched", matched},
            {"pointing_true_box", frac(truth_hits, matched)}};
  }
};

bool within(const gradcam::Box& b, int x, int y, int tolerance) {
  return x >= b.x0 - tolerance && x <= b.x1 + tolerance && y >= b.y0 - tolerance && y <= b.y1 + tolerance;
}

struct DetectionLocRun {
  const DetectionLocArgs& a;
  c10::Device device;
  torch::jit::Module module;
  std::vector<gradcam::Annotation> annotations;
  gradcam::Labels labels;
  std::unique_ptr<gradcam::GradCAM> cam;
  Pointing all;
  std::map<int64_t, Pointing> per_class;
  size_t done = 0, unreadable = 0, without_boxes = 0;

  explicit DetectionLocRun(const DetectionLocArgs& args)
      : a(args), device(a.common.device), module(gradcam::load_model(a.common.model, device)),
        annotations(gradcam::read_annotations(a.annotations, a.images_dir)) {
    if (!a.common.labels.empty()) labels = gradcam::Labels::read(a.common.labels);
    cam = std::make_unique<gradcam::GradCAM>(
        module, cam_options(a.common, {a.common.layer}).methods({gradcam::method_from_name(a.method)}));
  }

  /// The true box of the detection's class that overlaps it most, if IoU >= a.iou.
  std::optional<gradcam::Box> truth_of(size_t index, int64_t label, const gradcam::Box& box) const {
    std::optional<gradcam::Box> best;
    double best_iou = 0;
    for (const auto& o : annotations[index].objects) {
      const auto c = labels.index(o.label);
      const double overlap = gradcam::iou(o.box, box);
      if (c && *c == label && overlap >= a.iou && overlap > best_iou) {
        best = o.box;
        best_iou = overlap;
      }
    }
    return best;
  }

  /// Scores image n's boxes: does each map's maximum fall in its own box, and in its true box?
  void score_image(const gradcam::GradCAMResult& r, const LoadedImage& im, int64_t n) {
    const auto found = det::detect(*r.output, detection_options(a.flags))[static_cast<size_t>(n)];
    if (found.empty()) ++without_boxes;
    const std::vector<int64_t> size = {im.geometry.input_height, im.geometry.input_width};
    for (size_t j = 0; j < found.size(); ++j) {
      const at::Tensor map = r.get(cam->layers().front(), static_cast<int64_t>(j), 0, gradcam::method_from_name(a.method)).map;
      const at::Tensor up = gradcam::upsample(map[n][0], size);
      const int64_t flat = up.argmax().item<int64_t>();
      const gradcam::Box peak = im.geometry.to_image({static_cast<int>(flat % size[1]), static_cast<int>(flat / size[1]),
                                                      static_cast<int>(flat % size[1]), static_cast<int>(flat / size[1])});
      const int px = (peak.x0 + peak.x1) / 2, py = (peak.y0 + peak.y1) / 2;
      const gradcam::Box own = image_box(found[j], im.geometry);
      const auto truth = truth_of(im.index, found[j].label, own);
      for (Pointing* p : {&all, &per_class[found[j].label]}) {
        ++p->boxes;
        p->own_hits += within(own, px, py, a.tolerance);
        p->matched += truth.has_value();
        p->truth_hits += truth && within(*truth, px, py, a.tolerance);
      }
    }
  }

  void batch(const ImageBatch& b) {
    const at::Tensor x = b.inputs(device);
    gradcam::GradCAMResult r;
    try {
      r = cam->compute(x, detection_target(a.flags));
    } catch (const gradcam::detection::NoDetection&) {
      without_boxes += b.images.size();  // no image of the batch has a box above the threshold
      done += b.images.size();
      return;
    }
    for (size_t i = 0; i < b.images.size(); ++i, ++done) score_image(r, b.images[i], static_cast<int64_t>(i));
  }

  json report(double wall) const {
    json rep = all.to_json();
    json classes = json::object();
    for (const auto& [c, p] : per_class) classes[labels.name(c)] = p.to_json();
    rep.update({{"task", "detection"}, {"per_class", classes}, {"model", a.common.model},
                {"layer", cam->layers().front()}, {"method", a.method}, {"annotations", a.annotations}, {"images", annotations.size()},
                {"unreadable", unreadable}, {"images_without_boxes", without_boxes},
                {"score_threshold", a.flags.score_threshold}, {"max_boxes", a.flags.max_boxes},
                {"layout", a.flags.layout}, {"match_iou", a.iou}, {"pointing_tolerance", a.tolerance},
                {"interrupted", g_interrupted.load()}, {"seconds", wall}});
    return rep;
  }
};

}  // namespace

int run_eval_loc_detection(const DetectionLocArgs& a) {
  DetectionLocRun run(a);
  InterruptGuard interrupt_guard;
  Progress progress(run.annotations.size(), !a.common.quiet);
  const auto t_start = std::chrono::steady_clock::now();
  std::vector<std::string> paths;
  for (const auto& ann : run.annotations) paths.push_back(ann.image);
  for_each_batch(paths, a.common, "skipping unreadable image ", run.unreadable, run.done, progress,
                 [&](const ImageBatch& batch) { run.batch(batch); });
  const json report = run.report(std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count());
  write_atomically(a.report, report.dump(2) + "\n");
  auto pct = [](const json& v) { return v.is_null() ? std::string("-") : fmt(100 * v.get<double>(), 1); };
  std::printf("pointing game of %s at %s: %lld boxes, %s%% in their own box; %lld matched a true box, %s%% in it "
              "(report: %s)\n",
              a.method.c_str(), report["layer"].get<std::string>().c_str(), static_cast<long long>(run.all.boxes),
              pct(report["pointing_own_box"]).c_str(), static_cast<long long>(run.all.matched),
              pct(report["pointing_true_box"]).c_str(), a.report.c_str());
  if (g_interrupted) return 130;
  return run.unreadable > 0 ? 1 : 0;
}

}  // namespace gradcam_cli
