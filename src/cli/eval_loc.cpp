// src/cli/eval_loc.cpp: `gradcam eval-loc`: weakly supervised localization accuracy against
// ground-truth boxes (docs/localization.md).
#include <ATen/ATen.h>
#include <torch/csrc/jit/api/module.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <iomanip>
#include <iostream>
#include <map>
#include <memory>
#include <set>

#include <gradcam/gradcam.hpp>

#include "batches.hpp"
#include "commands.hpp"
#include "common.hpp"
#include "explain_detection.hpp"
#include "image_sets.hpp"
#include "loc_report.hpp"
#include "shard.hpp"

namespace gradcam_cli {

using json = nlohmann::json;

namespace {

struct EvalArgs {
  Common common;
  std::string annotations;
  std::string images_dir;
  std::string report = "eval_loc.json";
  double threshold = 0.15;
  bool sweep = false;
  int connectivity = 8;
  bool by_box_area = false;
  int tolerance = 15;
  std::string method = "gradcam";
  DetectionFlags detection;
};

/// The thresholds evaluated: --threshold, and with --sweep 0.05, 0.10 ... 0.95 as well.
std::vector<double> thresholds_of(const EvalArgs& a) {
  std::vector<double> thresholds = {a.threshold};
  if (a.sweep) {
    for (int i = 1; i <= 19; ++i) {
      const double t = i * 0.05;
      if (std::abs(t - a.threshold) > 1e-9) thresholds.push_back(t);
    }
    std::sort(thresholds.begin(), thresholds.end());
  }
  return thresholds;
}

/// One `eval-loc` run: its model, annotations, accumulators per threshold and counts.
struct LocRun {
  const EvalArgs& a;
  c10::Device device;
  torch::jit::Module module;
  Shard shard;
  std::vector<gradcam::Annotation> annotations;  // of this shard
  gradcam::Labels labels;
  std::unique_ptr<gradcam::GradCAM> cam;
  std::string layer;
  std::map<double, gradcam::LocAccumulator> acc;
  size_t done = 0, unreadable = 0, nonfinite = 0;
  double compute_s = 0;  // in the network and Grad-CAM
  int64_t top_k = -1;    // min(5, classes), known after the first batch

  explicit LocRun(const EvalArgs& args)
      : a(args), device(a.common.device), module(gradcam::load_model(a.common.model, device)),
        shard(parse_shard(a.common.shard)),
        annotations(take_shard(gradcam::read_annotations(a.annotations, a.images_dir), shard,
                               [&](const gradcam::Annotation& an) { return shard_key(an.image, a.images_dir); })) {
    if (!a.common.labels.empty()) labels = gradcam::Labels::read(a.common.labels);
    // A label that names no class is the annotation file's error, with its line, before any image
    // runs; not an "unreadable image" among the results.
    for (const auto& ann : annotations) class_of(labels, ann.objects.front(), a.common.labels);
    cam = std::make_unique<gradcam::GradCAM>(module, cam_options(a.common, {a.common.layer}).keep_signed(true));
    layer = cam->layers().front();
    for (double t : thresholds_of(a)) acc.emplace(t, gradcam::LocAccumulator(0.5, a.tolerance));
  }

  int64_t true_class(size_t index) const {
    return class_of(labels, annotations[index].objects.front(), a.common.labels);
  }
  /// The --method's map [N,1,h,w] (or [1,h,w] of one image) from a LayerMap's tensors.
  at::Tensor chosen(const at::Tensor& map, const at::Tensor& map_signed) const {
    return a.method == "gradcam" ? map : at::relu(-map_signed);
  }
};

/// Maps of a batch: the top-k classes' (`ranked`) and the true classes' [N,1,h,w] (`known`).
struct LocMaps {
  gradcam::GradCAMResult ranked;
  at::Tensor known;
};

LocMaps loc_maps(LocRun& run, const ImageBatch& batch, const at::Tensor& x) {
  LocMaps out;
  if (run.top_k < 0) {  // the first batch tells how many classes the model has
    out.ranked = run.cam->compute(x, gradcam::Target::topk(1));
    check_map_has_extent(run.module, out.ranked, x);
    run.top_k = std::min<int64_t>(5, out.ranked.logits.size(1));
    check_label_count(run.labels, run.a.common.labels, out.ranked.logits.size(1));
  }
  if (out.ranked.maps.empty() || run.top_k > 1) out.ranked = run.cam->compute(x, gradcam::Target::topk(run.top_k));
  const gradcam::GradCAMResult& ranked = out.ranked;
  std::vector<int64_t> truth_classes;
  for (const auto& im : batch.images) {
    truth_classes.push_back(run.true_class(im.index));
    GRADCAM_CHECK(truth_classes.back() < ranked.logits.size(1), "class ", truth_classes.back(), " of ", im.path,
                  " is out of range: the model has ", ranked.logits.size(1), " classes");
  }
  // the true class's map is among the top-k ones when every true class is in its image's top k
  std::vector<at::Tensor> rows;
  for (int64_t n = 0; n < static_cast<int64_t>(truth_classes.size()); ++n) {
    int64_t found = -1;
    for (int64_t r = 0; r < run.top_k; ++r)
      if (ranked.classes[n][r].item<int64_t>() == truth_classes[static_cast<size_t>(n)]) found = r;
    if (found < 0) break;
    const auto& lm = ranked.get(run.layer, found);
    rows.push_back(run.chosen(lm.map[n], lm.map_signed[n]));
  }
  if (rows.size() == truth_classes.size()) {
    out.known = at::stack(rows, 0);
  } else {
    const auto known = run.cam->compute(x, gradcam::Target::classes(truth_classes));
    const auto& lm = known.get(run.layer);
    out.known = run.chosen(lm.map, lm.map_signed);
  }
  return out;
}

/// Adds image `n`'s boxes, at every threshold, to the accumulators.
void score_image(LocRun& run, const LocMaps& maps, const LoadedImage& im, int64_t n) {
  const int64_t truth_class = run.true_class(im.index);
  std::vector<gradcam::Box> truth;
  for (const auto& o : run.annotations[im.index].objects) {
    auto oc = run.labels.index(o.label);
    if (oc && *oc == truth_class) truth.push_back(o.box);
  }
  const std::vector<int64_t> size = {im.geometry.input_height, im.geometry.input_width};
  std::vector<at::Tensor> ups;
  std::vector<int64_t> predicted;
  for (int64_t r = 0; r < run.top_k; ++r) {
    const auto& lm = maps.ranked.get(run.layer, r);
    ups.push_back(gradcam::upsample(run.chosen(lm.map[n][0], lm.map_signed[n][0]), size));
    predicted.push_back(maps.ranked.classes[n][r].item<int64_t>());
  }
  const at::Tensor known_up = gradcam::upsample(maps.known[n][0], size);
  const int64_t flat = known_up.argmax().item<int64_t>();
  const int px = static_cast<int>(flat % size[1]), py = static_cast<int>(flat / size[1]);
  const gradcam::Box peak = im.geometry.to_image({px, py, px, py});
  auto to_image = [&](const std::optional<gradcam::Box>& b) -> std::optional<gradcam::Box> {
    if (!b) return std::nullopt;
    return im.geometry.to_image(*b);
  };
  for (auto& [t, acc] : run.acc) {
    const auto opts = gradcam::LocalizeOptions().threshold(t).connectivity(run.a.connectivity)
                          .largest_by_box_area(run.a.by_box_area);
    gradcam::LocSample s;
    s.true_class = truth_class;
    s.truth = truth;
    s.predicted = predicted;
    for (const auto& up : ups) s.boxes.push_back(to_image(gradcam::localize(up, opts).front().box));
    s.known_box = to_image(gradcam::localize(known_up, opts).front().box);
    s.peak = std::make_pair((peak.x0 + peak.x1) / 2, (peak.y0 + peak.y1) / 2);
    acc.add(s);
  }
}

void eval_batch(LocRun& run, const ImageBatch& batch) {
  const at::Tensor x = batch.inputs(run.device);
  const auto t0 = std::chrono::steady_clock::now();
  const LocMaps maps = loc_maps(run, batch, x);
  run.compute_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (size_t i = 0; i < batch.images.size(); ++i) {
    const auto n = static_cast<int64_t>(i);
    ++run.done;
    if (const std::string why = nonfinite_reason(maps.ranked, n); !why.empty()) {
      say() << "skipping " << batch.images[i].path << ": " << why << "\n";
      ++run.nonfinite;
      continue;
    }
    score_image(run, maps, batch.images[i], n);
  }
}

json report_of(const LocRun& run, double wall) {
  const EvalArgs& a = run.a;
  LocReportParts p;
  p.settings = {{"method", a.method}, {"layer", run.layer}, {"model", a.common.model},
                {"annotations", a.annotations}, {"connectivity", a.connectivity},
                {"largest_by", a.by_box_area ? "box_area" : "pixels"}, {"pointing_tolerance", a.tolerance}};
  if (run.shard.on()) p.settings["shard"] = run.shard.str();
  p.threshold = a.threshold;
  p.sweep = a.sweep;
  for (const auto& [t, ac] : run.acc) p.counts[t] = ac.counts();
  p.images = run.annotations.size();
  p.unreadable = run.unreadable;
  p.nonfinite = run.nonfinite;
  p.interrupted = g_interrupted.load();
  const double n = static_cast<double>(run.acc.at(a.threshold).counts().n);
  p.images_per_s = wall > 0 ? n / wall : 0.0;
  p.network_images_per_s = run.compute_s > 0 ? n / run.compute_s : 0.0;
  return loc_report(p);
}

void print_loc_table(const LocRun& run, const json& report) {
  const EvalArgs& a = run.a;
  auto pct = [](double v) { return fmt(100 * v, 1); };
  std::printf("%s at %s, threshold %.2f, %lld images%s\n", a.method.c_str(), run.layer.c_str(), a.threshold,
              static_cast<long long>(run.acc.at(a.threshold).metrics().n), g_interrupted ? " (interrupted)" : "");
  std::printf("| threshold | top-1 cls | top-1 loc | top-5 loc | GT-known loc | mean IoU | pointing |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- |\n");
  for (const auto& [t, ac] : run.acc) {
    const auto m = ac.metrics();
    std::printf("| %.2f%s | %s | %s | %s | %s | %.3f | %s |\n", t, t == a.threshold ? "*" : "", pct(m.top1_cls).c_str(),
                pct(m.top1_loc).c_str(), pct(m.top5_loc).c_str(), pct(m.gt_known_loc).c_str(), m.mean_iou,
                pct(m.pointing_game).c_str());
  }
  std::printf("(accuracies in %%; %.1f images/s; report: %s)\n", report["images_per_s"].get<double>(), a.report.c_str());
}

int run_eval_loc(const EvalArgs& a) {
  LocRun run(a);
  InterruptGuard interrupt_guard;
  Progress progress(run.annotations.size(), !a.common.quiet);
  const auto t_start = std::chrono::steady_clock::now();
  std::vector<std::string> paths;
  for (const auto& ann : run.annotations) paths.push_back(ann.image);
  for_each_batch(paths, a.common, "skipping unreadable image ", run.unreadable, run.done, progress,
                 [&](const ImageBatch& batch) { eval_batch(run, batch); });
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  const json report = report_of(run, wall);
  write_atomically(a.report, report.dump(2) + "\n");
  print_loc_table(run, report);
  if (g_interrupted) return 130;
  return run.unreadable + run.nonfinite > 0 ? 1 : 0;
}

}  // namespace

Subcommand add_eval_loc(CLI::App* eval) {
  auto ev = std::make_shared<EvalArgs>();
  add_common(eval, ev->common);
  add_shard(eval, ev->common.shard);
  eval->add_option("--annotations", ev->annotations, "CSV file,label,x0,y0,x1,y1 or a folder of VOC/ImageNet XML files")->required();
  eval->add_option("--images", ev->images_dir, "image folder (XML annotations; for a CSV, overrides the CSV's folder)");
  eval->add_option("--report", ev->report, "JSON report to write")->capture_default_str();
  eval->add_option("--threshold", ev->threshold, "keep map values >= threshold * max")->check(real_number(0, 1))->capture_default_str();
  eval->add_flag("--sweep", ev->sweep, "also evaluate thresholds 0.05, 0.10 ... 0.95");
  eval->add_option("--connectivity", ev->connectivity, "4 or 8")->check(CLI::IsMember({4, 8}))->capture_default_str();
  eval->add_flag("--largest-by-box-area", ev->by_box_area, "choose the component with the largest box, not the most pixels");
  eval->add_option("--tolerance", ev->tolerance, "pointing game tolerance in pixels")->check(whole_number(0))->capture_default_str();
  eval->add_option("--method", ev->method, "gradcam or counterfactual; with --task detection gradcam, gradcam++, "
                   "xgradcam, hirescam, layercam or eigencam")->capture_default_str();
  add_detection_flags(eval, ev->detection);
  return {&ev->common, [ev, eval] {
            prepare_detection(*eval, ev->detection, ev->common, {ev->method});
            if (!ev->detection.on()) {
              GRADCAM_CHECK(ev->method == "gradcam" || ev->method == "counterfactual",
                            "eval-loc takes --method gradcam or counterfactual, not '", ev->method,
                            "' (other methods with --task detection)");
              return run_eval_loc(*ev);
            }
            GRADCAM_CHECK(ev->common.shard.empty(), "--shard splits eval-loc of classifiers; with --task detection "
                          "the reports of shards cannot be merged yet, so run it whole");
            return run_eval_loc_detection(
                {ev->common, ev->detection, ev->annotations, ev->images_dir, ev->report, ev->method, ev->tolerance});
          }};
}

}  // namespace gradcam_cli
