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

#include "commands.hpp"
#include "common.hpp"

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
};

json metrics_json(const gradcam::LocMetrics& m) {
  return {{"n", m.n}, {"top1_cls", m.top1_cls}, {"top1_loc", m.top1_loc}, {"top5_loc", m.top5_loc},
          {"gt_known_loc", m.gt_known_loc}, {"mean_iou", m.mean_iou}, {"pointing_game", m.pointing_game},
          {"top1_loc_err", 1 - m.top1_loc}, {"top5_loc_err", 1 - m.top5_loc}};
}

int run_eval_loc(const EvalArgs& a) {
  const c10::Device device(a.common.device);
  auto module = gradcam::load_model(a.common.model, device);
  const auto annotations = gradcam::read_annotations(a.annotations, a.images_dir);
  gradcam::Labels labels;
  if (!a.common.labels.empty()) labels = gradcam::Labels::read(a.common.labels);
  // A label that names no class is the annotation file's error, with its line, before any image
  // runs; not an "unreadable image" among the results.
  for (const auto& ann : annotations) class_of(labels, ann.objects.front(), a.common.labels);
  gradcam::GradCAM cam(module, gradcam::GradCAMOptions(a.common.layer).keep_signed(true));
  const std::string layer = cam.layers().front();
  const auto pre = preprocess_of(a.common);

  std::vector<double> thresholds = {a.threshold};
  if (a.sweep) {
    for (int i = 1; i <= 19; ++i) {
      const double t = i * 0.05;
      if (std::abs(t - a.threshold) > 1e-9) thresholds.push_back(t);
    }
    std::sort(thresholds.begin(), thresholds.end());
  }
  std::map<double, gradcam::LocAccumulator> acc;
  for (double t : thresholds) acc.emplace(t, gradcam::LocAccumulator(0.5, a.tolerance));

  struct Item {
    size_t index;
    cv::Mat image;
    gradcam::Geometry geometry;
    at::Tensor input;
    int64_t true_class;
    std::vector<gradcam::Box> truth;
  };
  struct Batch {
    std::vector<Item> items;
    std::vector<std::string> unreadable;
  };
  // Decoding and preprocessing of the next batch runs on another thread while the network runs.
  auto load = [&](size_t start) {
    Batch b;
    for (size_t i = start; i < annotations.size() && i < start + static_cast<size_t>(a.common.batch); ++i) {
      const auto& ann = annotations[i];
      try {
        Item it;
        it.index = i;
        it.true_class = class_of(labels, ann.objects.front(), a.common.labels);  // checked above
        for (const auto& o : ann.objects) {
          auto oc = labels.index(o.label);
          if (oc && *oc == it.true_class) it.truth.push_back(o.box);
        }
        it.image = gradcam::load_image(ann.image, a.common.max_pixels);
        it.input = gradcam::to_tensor(it.image, pre, &it.geometry);
        b.items.push_back(std::move(it));
      } catch (const gradcam::Error& e) {
        b.unreadable.push_back(ann.image + ": " + e.what());
      }
    }
    return b;
  };

  InterruptGuard interrupt_guard;
  Progress progress(annotations.size(), !a.common.quiet);
  size_t done = 0, unreadable = 0, nonfinite = 0;
  double compute_s = 0;
  const auto t_start = std::chrono::steady_clock::now();
  int64_t top_k = -1;
  bool labels_checked = false;
  std::future<Batch> next = std::async(std::launch::async, load, size_t{0});
  for (size_t start = 0; start < annotations.size() && !g_interrupted;) {
    Batch batch = next.get();
    start += static_cast<size_t>(a.common.batch);
    if (start < annotations.size()) next = std::async(std::launch::async, load, start);
    for (const auto& u : batch.unreadable) say() << "skipping unreadable image " << for_the_command(u) << "\n";
    unreadable += batch.unreadable.size();
    done += batch.unreadable.size();
    // inputs of equal shape go through the network together
    for (size_t first = 0; first < batch.items.size();) {
      size_t last = first + 1;
      while (last < batch.items.size() && batch.items[last].input.sizes() == batch.items[first].input.sizes()) ++last;
      std::vector<at::Tensor> xs;
      for (size_t i = first; i < last; ++i) xs.push_back(batch.items[i].input);
      const at::Tensor x = at::cat(xs, 0).to(device);
      const auto t0 = std::chrono::steady_clock::now();
      gradcam::GradCAMResult ranked;
      if (top_k < 0) {  // the first batch tells how many classes the model has
        ranked = cam.compute(x, gradcam::Target::topk(1));
        check_map_has_extent(module, ranked, x);
        top_k = std::min<int64_t>(5, ranked.logits.size(1));
        if (!labels_checked && labels.size()) {
          GRADCAM_CHECK(static_cast<int64_t>(labels.size()) == ranked.logits.size(1), "labels file '",
                        a.common.labels, "' has ", labels.size(), " names but the model has ",
                        ranked.logits.size(1), " classes");
          labels_checked = true;
        }
      }
      if (ranked.maps.empty() || top_k > 1) ranked = cam.compute(x, gradcam::Target::topk(top_k));
      const int64_t k = top_k;
      std::vector<int64_t> truth_classes;
      bool all_in_topk = true;
      for (size_t i = first; i < last; ++i) {
        truth_classes.push_back(batch.items[i].true_class);
        GRADCAM_CHECK(batch.items[i].true_class < ranked.logits.size(1), "class ", batch.items[i].true_class,
                      " of ", annotations[batch.items[i].index].image, " is out of range: the model has ",
                      ranked.logits.size(1), " classes");
      }
      at::Tensor known_maps;  // [n,1,h,w] maps of the true classes
      std::vector<at::Tensor> rows;
      for (size_t i = first; i < last; ++i) {
        const auto n = static_cast<int64_t>(i - first);
        int64_t found = -1;
        for (int64_t r = 0; r < k; ++r)
          if (ranked.classes[n][r].item<int64_t>() == batch.items[i].true_class) found = r;
        if (found < 0) {
          all_in_topk = false;
          break;
        }
        const auto& lm = ranked.get(layer, found);
        rows.push_back(a.method == "gradcam" ? lm.map[n] : at::relu(-lm.map_signed[n]));
      }
      if (all_in_topk) {
        known_maps = at::stack(rows, 0);
      } else {
        auto known = cam.compute(x, gradcam::Target::classes(truth_classes));
        const auto& lm = known.get(layer);
        known_maps = a.method == "gradcam" ? lm.map : at::relu(-lm.map_signed);
      }
      compute_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      for (size_t i = first; i < last; ++i) {
        const auto n = static_cast<int64_t>(i - first);
        const Item& it = batch.items[i];
        if (const std::string why = nonfinite_reason(ranked, n); !why.empty()) {
          say() << "skipping " << annotations[it.index].image << ": " << why << "\n";
          ++nonfinite;
          ++done;
          continue;
        }
        const std::vector<int64_t> size = {it.geometry.input_height, it.geometry.input_width};
        std::vector<at::Tensor> ups;
        std::vector<int64_t> predicted;
        for (int64_t r = 0; r < k; ++r) {
          const auto& lm = ranked.get(layer, r);
          ups.push_back(gradcam::upsample(a.method == "gradcam" ? lm.map[n][0] : at::relu(-lm.map_signed[n][0]), size));
          predicted.push_back(ranked.classes[n][r].item<int64_t>());
        }
        const at::Tensor known_up = gradcam::upsample(known_maps[n][0], size);
        const int64_t flat = known_up.argmax().item<int64_t>();
        auto peak_box = it.geometry.to_image({static_cast<int>(flat % size[1]), static_cast<int>(flat / size[1]),
                                              static_cast<int>(flat % size[1]), static_cast<int>(flat / size[1])});
        for (double t : thresholds) {
          auto opts = gradcam::LocalizeOptions().threshold(t).connectivity(a.connectivity).largest_by_box_area(a.by_box_area);
          auto to_image = [&](const std::optional<gradcam::Box>& b) -> std::optional<gradcam::Box> {
            if (!b) return std::nullopt;
            auto m = it.geometry.to_image({b->x0, b->y0, b->x1, b->y1});
            gradcam::Box o = *b;
            o.x0 = m[0];
            o.y0 = m[1];
            o.x1 = m[2];
            o.y1 = m[3];
            return o;
          };
          gradcam::LocSample s;
          s.true_class = it.true_class;
          s.truth = it.truth;
          s.predicted = predicted;
          for (const auto& up : ups) s.boxes.push_back(to_image(gradcam::localize(up, opts).front().box));
          s.known_box = to_image(gradcam::localize(known_up, opts).front().box);
          s.peak = std::make_pair((peak_box[0] + peak_box[2]) / 2, (peak_box[1] + peak_box[3]) / 2);
          acc.at(t).add(s);
        }
        ++done;
      }
      first = last;
    }
    progress.update(done);
  }
  if (next.valid()) next.wait();
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();

  const auto main = acc.at(a.threshold).metrics();
  json report = metrics_json(main);
  report["threshold"] = a.threshold;
  report["method"] = a.method;
  report["layer"] = layer;
  report["model"] = a.common.model;
  report["annotations"] = a.annotations;
  report["images"] = annotations.size();
  report["unreadable"] = unreadable;
  report["nan_outputs"] = nonfinite;  // images whose output or map was NaN or infinite, skipped
  report["interrupted"] = g_interrupted.load();
  report["connectivity"] = a.connectivity;
  report["largest_by"] = a.by_box_area ? "box_area" : "pixels";
  report["pointing_tolerance"] = a.tolerance;
  report["images_per_s"] = wall > 0 ? static_cast<double>(main.n) / wall : 0.0;
  report["network_images_per_s"] = compute_s > 0 ? static_cast<double>(main.n) / compute_s : 0.0;
  if (a.sweep) {
    json sweep = json::array();
    double best_t = a.threshold, best = -1;
    for (const auto& [t, ac] : acc) {
      json row = metrics_json(ac.metrics());
      row["threshold"] = t;
      sweep.push_back(row);
      if (ac.metrics().gt_known_loc > best) {
        best = ac.metrics().gt_known_loc;
        best_t = t;
      }
    }
    report["sweep"] = sweep;
    report["best_threshold"] = {{"metric", "gt_known_loc"}, {"threshold", best_t}, {"value", best}};
  }
  write_atomically(a.report, report.dump(2) + "\n");
  auto pct = [](double v) {
    std::ostringstream o;
    o << std::fixed << std::setprecision(1) << 100 * v;
    return o.str();
  };
  std::printf("%s at %s, threshold %.2f, %lld images%s\n", a.method.c_str(), layer.c_str(), a.threshold,
              static_cast<long long>(main.n), g_interrupted ? " (interrupted)" : "");
  std::printf("| threshold | top-1 cls | top-1 loc | top-5 loc | GT-known loc | mean IoU | pointing |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- |\n");
  for (const auto& [t, ac] : acc) {
    if (!a.sweep && t != a.threshold) continue;
    const auto m = ac.metrics();
    std::printf("| %.2f%s | %s | %s | %s | %s | %.3f | %s |\n", t, t == a.threshold ? "*" : "", pct(m.top1_cls).c_str(),
                pct(m.top1_loc).c_str(), pct(m.top5_loc).c_str(), pct(m.gt_known_loc).c_str(), m.mean_iou,
                pct(m.pointing_game).c_str());
  }
  std::printf("(accuracies in %%; %.1f images/s; report: %s)\n", report["images_per_s"].get<double>(), a.report.c_str());
  if (g_interrupted) return 130;
  return unreadable + nonfinite > 0 ? 1 : 0;
}

}  // namespace

Subcommand add_eval_loc(CLI::App* eval) {
  auto ev = std::make_shared<EvalArgs>();
  add_common(eval, ev->common);
  eval->add_option("--annotations", ev->annotations, "CSV file,label,x0,y0,x1,y1 or a folder of VOC/ImageNet XML files")->required();
  eval->add_option("--images", ev->images_dir, "image folder (XML annotations; for a CSV, overrides the CSV's folder)");
  eval->add_option("--report", ev->report, "JSON report to write")->capture_default_str();
  eval->add_option("--threshold", ev->threshold, "keep map values >= threshold * max")->check(real_number(0, 1))->capture_default_str();
  eval->add_flag("--sweep", ev->sweep, "also evaluate thresholds 0.05, 0.10 ... 0.95");
  eval->add_option("--connectivity", ev->connectivity, "4 or 8")->check(CLI::IsMember({4, 8}))->capture_default_str();
  eval->add_flag("--largest-by-box-area", ev->by_box_area, "choose the component with the largest box, not the most pixels");
  eval->add_option("--tolerance", ev->tolerance, "pointing game tolerance in pixels")->check(whole_number(0))->capture_default_str();
  eval->add_option("--method", ev->method, "gradcam or counterfactual")->check(CLI::IsMember({"gradcam", "counterfactual"}))->capture_default_str();
  return {&ev->common, [ev] { return run_eval_loc(*ev); }};
}

}  // namespace gradcam_cli
