// src/cli/eval_faith.cpp: `gradcam eval-faith`: faithfulness of explanations (deletion and
// insertion AUC, Average Drop, Increase in Confidence, confidence change, ROAD, ADCC, and with
// annotations the pointing game) and the parameter-randomisation check.
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
#include "faith_report.hpp"
#include "shard.hpp"
#include "image_sets.hpp"

namespace gradcam_cli {

using json = nlohmann::json;

namespace {

struct FaithArgs {
  Common common;
  std::string annotations;
  std::string images_dir;
  std::vector<std::string> methods = {"gradcam"};
  std::vector<std::string> metrics = {"deletion", "insertion", "drop", "road"};
  int steps = 50;
  int sanity = 0;
  int limit = 0;
  int perturbation_batch = 0;
  int tolerance = 15;
  std::string report = "eval_faith.json";
};

/// An image to explain: its path, and with annotations its label and the boxes of that label.
struct FaithItem {
  std::string path;
  std::string label;  ///< "": explain the predicted class
  std::vector<gradcam::Box> truth;
};

/// One `eval-faith` run: its model, explainer, images and sums.
struct FaithRun {
  const FaithArgs& a;
  c10::Device device;
  torch::jit::Module module;
  std::set<std::string> metrics;
  gradcam::Labels labels;
  std::vector<FaithItem> items;
  std::unique_ptr<gradcam::GradCAM> cam;
  std::string layer;
  gradcam::ScoreModel model;
  gradcam::CurveOptions curve_opts;
  gradcam::RoadOptions road_opts;
  std::map<std::string, FaithCounts> sums;
  Shard shard;
  std::vector<at::Tensor> sanity_inputs;
  std::vector<int64_t> sanity_classes;
  size_t done = 0, unreadable = 0;

  explicit FaithRun(const FaithArgs& args)
      : a(args), device(a.common.device), module(gradcam::load_model(a.common.model, device)),
        metrics(a.metrics.begin(), a.metrics.end()), shard(parse_shard(a.common.shard)) {
    GRADCAM_CHECK(!shard.on() || a.sanity == 0, "--sanity checks the first images of the whole set; run it without "
                  "--shard (the shards' reports are merged without it)");
    GRADCAM_CHECK(!metrics.count("pointing") || !a.annotations.empty(), "--metrics pointing needs --annotations: "
                  "the pointing game asks whether a map's maximum falls in a true box");
    if (!a.common.labels.empty()) labels = gradcam::Labels::read(a.common.labels);
    read_items();
    items = take_shard(items, shard, [&](const FaithItem& item) { return shard_key(item.path, a.images_dir); });
    cam = std::make_unique<gradcam::GradCAM>(module, options());
    layer = cam->layers().empty() ? std::string("(input)") : cam->layers().front();
    model = gradcam::score_model(module);
    curve_opts = gradcam::CurveOptions().steps(a.steps).batch(std::max(a.common.batch, 32));
    road_opts = gradcam::RoadOptions().batch(std::max(a.common.batch, 32));
  }

  /// Images and, with annotations, their true classes (explained); otherwise the top-1 class.
  void read_items() {
    if (!a.annotations.empty()) {
      for (const auto& ann : gradcam::read_annotations(a.annotations, a.images_dir)) {
        const int64_t c = class_of(labels, ann.objects.front(), a.common.labels);  // a bad label is the file's error
        FaithItem item{ann.image, ann.objects.front().label, {}};
        for (const auto& o : ann.objects) {
          if (labels.index(o.label) == c) item.truth.push_back(o.box);
        }
        items.push_back(std::move(item));
      }
    } else {
      GRADCAM_CHECK(!a.images_dir.empty(), "give --annotations FILE (explains the true classes) or --images DIR "
                    "(explains the predicted classes)");
      for (const auto& path : list_images(a.images_dir)) items.push_back({path, "", {}});
    }
    if (a.limit > 0 && items.size() > static_cast<size_t>(a.limit)) items.resize(static_cast<size_t>(a.limit));
  }

  gradcam::GradCAMOptions options() const {
    std::vector<gradcam::Method> cam_methods;
    bool guided = false;
    for (const auto& m : a.methods) {
      if (m == "guided") {
        guided = true;
      } else {
        cam_methods.push_back(gradcam::method_from_name(m));
      }
    }
    gradcam::GradCAMOptions opts = cam_options(a.common, cam_methods.empty() ? std::vector<std::string>{} : std::vector<std::string>{a.common.layer});
    if (!cam_methods.empty()) opts.methods(cam_methods);
    opts.perturbation_batch(command_perturbation_batch(a.perturbation_batch)).guided(guided ? gradcam::GuidedMode::guided : gradcam::GuidedMode::none);
    return opts;
  }

  /// The classes explained for these images: their true classes, or each one's top-1.
  gradcam::Target target_of(const std::vector<size_t>& indices) const {
    if (a.annotations.empty()) return gradcam::Target::top1();
    std::vector<int64_t> cls;
    for (size_t i : indices) {
      const std::string& w = items[i].label;
      auto c = labels.index(w);
      GRADCAM_CHECK(c.has_value(), "label '", w, "' is not in the labels file",
                    a.common.labels.empty() ? " (give --labels FILE)" : "");
      cls.push_back(*c);
    }
    return gradcam::Target::classes(cls);
  }

  /// The saliency [N,1,h,w] of `method` in a result.
  at::Tensor saliency(const gradcam::GradCAMResult& r, const std::string& method) const {
    if (method == "guided") return r.guided.at(0).abs().sum(1, true);
    return r.get(layer, 0, 0, gradcam::method_from_name(method)).map;
  }

  /// `method` alone as a function of (input, classes), as the randomisation check and ADCC call it.
  gradcam::ExplainFn explainer(const std::string& method) const {
    const int batch = command_perturbation_batch(a.perturbation_batch);
    return [this, method, batch](const torch::jit::Module& m, const at::Tensor& in, const at::Tensor& c) {
      const at::Tensor cc = c.to(at::kCPU, at::kLong).contiguous();
      std::vector<int64_t> idx(cc.data_ptr<int64_t>(), cc.data_ptr<int64_t>() + cc.numel());
      if (method == "guided") {
        return gradcam::GuidedBackprop(m).compute(in, gradcam::Target::classes(idx)).gradients.at(0).abs().sum(1, true);
      }
      const auto meth = gradcam::method_from_name(method);
      gradcam::GradCAM e(m, cam_options(a.common, {layer}).methods({meth}).perturbation_batch(batch));
      return e.compute(in, gradcam::Target::classes(idx)).get(layer, 0, 0, meth).map;
    };
  }
};

/// FNV-1a, 64 bits: a seed from an image's path that every platform and run computes alike.
uint64_t path_seed(const std::string& key) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : key) h = (h ^ c) * 1099511628211ull;
  return h;
}

/// ROAD of each image on its own, its imputation noise seeded from its path (relative to
/// --images): an image's noise, and so its score, does not depend on the images batched with it,
/// so a run's shards give the whole run's numbers. [N, fractions] per order.
gradcam::RoadResult road_per_image(const FaithRun& run, const at::Tensor& x, const at::Tensor& sal,
                                   const at::Tensor& classes, const std::vector<std::string>& keys) {
  std::vector<at::Tensor> morf, lerf;
  for (int64_t k = 0; k < x.size(0); ++k) {
    const auto opts = gradcam::RoadOptions(run.road_opts).seed(path_seed(keys[static_cast<size_t>(k)]));
    auto c = gradcam::road(run.model, x.narrow(0, k, 1), sal.narrow(0, k, 1), classes.narrow(0, k, 1), opts);
    morf.push_back(c.most_relevant_first);
    lerf.push_back(c.least_relevant_first);
  }
  gradcam::RoadResult out;
  out.most_relevant_first = at::cat(morf, 0);
  out.least_relevant_first = at::cat(lerf, 0);
  return out;
}

/// The pointing game as eval-loc plays it: 1 for each image whose saliency, upsampled to the input,
/// has its maximum (mapped back to the original image's pixels) within --tolerance pixels of one of
/// the image's true boxes of the explained class, else 0. [N] double.
at::Tensor pointing_hits(const FaithRun& run, const at::Tensor& sal, const std::vector<const LoadedImage*>& ims) {
  std::vector<double> hits;
  for (int64_t k = 0; k < sal.size(0); ++k) {
    const LoadedImage& im = *ims[static_cast<size_t>(k)];
    const int64_t w = im.geometry.input_width;
    const int64_t flat = gradcam::upsample(sal[k][0], {im.geometry.input_height, w}).argmax().item<int64_t>();
    const int px = static_cast<int>(flat % w), py = static_cast<int>(flat / w);
    const gradcam::Box peak = im.geometry.to_image({px, py, px, py});
    const std::pair<int, int> at_image{(peak.x0 + peak.x1) / 2, (peak.y0 + peak.y1) / 2};
    hits.push_back(gradcam::pointing_hit(at_image, run.items[im.index].truth, run.a.tolerance) ? 1.0 : 0.0);
  }
  return at::tensor(hits, at::kDouble);
}

/// Adds the metrics of every method on the images `x` (their results `r`; `ims` the images they
/// came from) to the sums, image by image (faith_report.hpp: exact integers, so that shards merge
/// to the whole run's bits).
void add_metrics(FaithRun& run, const at::Tensor& x, const gradcam::GradCAMResult& r, const at::Tensor& classes,
                 const std::vector<const LoadedImage*>& ims) {
  std::vector<std::string> keys;
  for (const LoadedImage* im : ims) keys.push_back(shard_key(im->path, run.a.images_dir));
  for (const auto& method : run.a.methods) {
    FaithCounts& s = run.sums[method];
    const at::Tensor sal = run.saliency(r, method);
    s.n += x.size(0);
    if (run.metrics.count("deletion")) {
      auto c = gradcam::deletion_curve(run.model, x, sal, classes, run.curve_opts);
      add_each(s.deletion, c.auc);
      add_rows(s.deletion_curve, c.scores);
    }
    if (run.metrics.count("insertion")) {
      auto c = gradcam::insertion_curve(run.model, x, sal, classes, run.curve_opts);
      add_each(s.insertion, c.auc);
      add_rows(s.insertion_curve, c.scores);
    }
    if (run.metrics.count("drop")) {
      auto c = gradcam::confidence_change(run.model, x, sal, classes);
      add_each(s.drop, c.drop);
      add_each(s.increase, c.increase);
      add_each(s.change, c.change);
    }
    if (run.metrics.count("road")) {
      auto c = road_per_image(run, x, sal, classes, keys);
      add_each(s.morf, c.most_relevant_first.mean(1));
      add_each(s.lerf, c.least_relevant_first.mean(1));
    }
    if (run.metrics.count("adcc")) {
      const gradcam::ExplainFn explain = run.explainer(method);
      auto c = gradcam::adcc(run.model, x, sal, classes,
                             [&](const at::Tensor& in, const at::Tensor& cls) { return explain(run.module, in, cls); });
      add_each(s.coherency, c.coherency);
      add_each(s.complexity, c.complexity);
      add_each(s.adcc, c.adcc);
    }
    if (run.metrics.count("pointing")) add_each(s.pointing, pointing_hits(run, sal, ims));
  }
}

void faith_batch(FaithRun& run, const ImageBatch& batch) {
  at::Tensor x = batch.inputs(run.device);
  std::vector<size_t> indices;
  for (const auto& im : batch.images) indices.push_back(im.index);
  gradcam::GradCAMResult r = run.cam->compute(x, run.target_of(indices));
  if (run.done == run.unreadable) check_map_has_extent(run.module, r, x);  // the first batch
  // An image whose output is NaN would make every sum NaN: name it, drop it, redo the others.
  std::vector<int64_t> keep;
  std::vector<size_t> kept;
  for (int64_t k = 0; k < x.size(0); ++k) {
    const std::string why = nonfinite_reason(r, k);
    if (why.empty()) {
      keep.push_back(k);
      kept.push_back(indices[static_cast<size_t>(k)]);
      continue;
    }
    say() << "skipping " << batch.images[static_cast<size_t>(k)].path << ": " << why << "\n";
    ++run.unreadable;
    ++run.done;
  }
  if (keep.empty()) return;
  if (static_cast<int64_t>(keep.size()) < x.size(0)) {
    x = x.index_select(0, at::tensor(keep, at::kLong).to(run.device));
    r = run.cam->compute(x, run.target_of(kept));
  }
  if (run.labels.size() > 0) check_label_count(run.labels, run.a.common.labels, r.logits.size(1));
  const at::Tensor classes = r.classes.select(1, 0).contiguous();
  std::vector<const LoadedImage*> ims;
  for (int64_t k : keep) ims.push_back(&batch.images[static_cast<size_t>(k)]);
  add_metrics(run, x, r, classes, ims);
  for (int64_t k = 0; k < x.size(0) && static_cast<int>(run.sanity_inputs.size()) < run.a.sanity; ++k) {
    run.sanity_inputs.push_back(x.narrow(0, k, 1));
    run.sanity_classes.push_back(classes[k].item<int64_t>());
  }
  run.done += static_cast<size_t>(x.size(0));
}

/// Sanity check (Adebayo et al.): cascading randomisation on the first --sanity images.
void sanity_check(const FaithRun& run, json& per_method) {
  const at::Tensor sx = at::cat(run.sanity_inputs, 0);
  const at::Tensor sc = at::tensor(run.sanity_classes, at::TensorOptions().dtype(at::kLong));
  for (const auto& method : run.a.methods) {
    json steps = json::array();
    for (const auto& st : gradcam::randomization_check(run.module, sx, sc, run.explainer(method))) {
      steps.push_back({{"module", st.module}, {"spearman", st.correlation.mean().item<double>()}});
    }
    per_method[method]["sanity"] = steps;
    per_method[method]["sanity_final_spearman"] = steps.back()["spearman"];
    per_method[method]["sanity_top_spearman"] = steps.front()["spearman"];
  }
}

json run_report(const FaithRun& run, double wall) {
  const FaithArgs& a = run.a;
  FaithReportParts p;
  p.settings = {{"model", a.common.model}, {"layer", run.layer},
                {"explained", a.annotations.empty() ? "predicted class" : "true class"}, {"steps", a.steps},
                {"metrics", a.metrics}, {"annotations", a.annotations}};
  if (run.shard.on()) p.settings["shard"] = run.shard.str();
  if (a.common.eigen_smooth) p.settings["eigen_smooth"] = true;
  if (a.common.aug_smooth) p.settings["aug_smooth"] = true;
  if (!a.common.aug_scales.empty()) p.settings["aug_scales"] = a.common.aug_scales;
  if (std::find(a.metrics.begin(), a.metrics.end(), "pointing") != a.metrics.end()) p.settings["tolerance"] = a.tolerance;
  for (const auto& m : a.methods) {
    if (m == "sscam" || m == "iscam" || m == "smoothgradcam++") {
      p.settings["samples"] = a.common.samples;  // 0: the method's default
      p.settings["noise_std"] = a.common.noise_std >= 0 ? nlohmann::json(a.common.noise_std) : nlohmann::json("default");
    }
  }
  p.methods = a.methods;
  p.metrics = run.metrics;
  p.counts = run.sums;
  p.images = run.done - run.unreadable;
  p.unreadable = run.unreadable;
  p.interrupted = g_interrupted.load();
  p.seconds = wall;
  json report = faith_report(p);
  if (!run.sanity_inputs.empty() && !g_interrupted) {
    sanity_check(run, report["methods"]);
    report["sanity_images"] = run.sanity_inputs.size();
  }
  return report;
}

/// The printed table's columns: the report key, the heading, the digits (one row per metric).
struct FaithColumn {
  const char* key;
  const char* heading;
  int digits;
};
const FaithColumn kFaithColumns[] = {
    {"deletion_auc", "deletion AUC (lower better)", 3},
    {"insertion_auc", "insertion AUC (higher)", 3},
    {"average_drop", "Average Drop % (lower)", 1},
    {"increase_in_confidence", "Increase in Confidence % (higher)", 1},
    {"confidence_change", "confidence change (higher)", 3},
    {"road_morf", "ROAD MoRF (lower)", 3},
    {"road_lerf", "ROAD LeRF (higher)", 3},
    {"road_combined", "ROAD combined (higher)", 3},
    {"adcc", "ADCC (higher)", 3},
    {"pointing_game", "pointing game (higher)", 3},
};

void print_faith_table(const FaithRun& run, const json& report, double wall) {
  auto cell = [](const json& m, const char* k, int prec) { return m.contains(k) ? fmt(m[k].get<double>(), prec) : "-"; };
  std::printf("faithfulness at %s, %zu images (%s)%s\n", run.layer.c_str(), run.done - run.unreadable,
              report["explained"].get<std::string>().c_str(), g_interrupted ? " (interrupted)" : "");
  std::string head = "| method |", rule = "| --- |";
  for (const auto& col : kFaithColumns) head += std::string(" ") + col.heading + " |", rule += " --- |";
  std::printf("%s sanity: Spearman after top layer / all layers |\n%s --- |\n", head.c_str(), rule.c_str());
  for (const auto& method : run.a.methods) {
    const json& m = report["methods"][method];
    std::string row = "| " + method + " |";
    for (const auto& col : kFaithColumns) row += " " + cell(m, col.key, col.digits) + " |";
    std::printf("%s %s / %s |\n", row.c_str(), cell(m, "sanity_top_spearman", 2).c_str(),
                cell(m, "sanity_final_spearman", 2).c_str());
  }
  std::printf("(%.1f s; report: %s)\n", wall, run.a.report.c_str());
}

int run_eval_faith(const FaithArgs& a) {
  FaithRun run(a);
  InterruptGuard interrupt_guard;
  Progress progress(run.items.size(), !a.common.quiet);
  const auto t_start = std::chrono::steady_clock::now();
  std::vector<std::string> paths;
  for (const auto& item : run.items) paths.push_back(item.path);
  for_each_batch(paths, a.common, "skipping unreadable image ", run.unreadable, run.done, progress,
                 [&](const ImageBatch& batch) { faith_batch(run, batch); });
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  const json report = run_report(run, wall);
  write_atomically(a.report, report.dump(2) + "\n");
  print_faith_table(run, report, wall);
  if (g_interrupted) return 130;
  return run.unreadable > 0 ? 1 : 0;
}

}  // namespace

Subcommand add_eval_faith(CLI::App* faith) {
  auto fa = std::make_shared<FaithArgs>();
  add_common(faith, fa->common);
  faith->add_option("--annotations", fa->annotations, "CSV or XML folder as for eval-loc: explain each image's true class");
  faith->add_option("--images", fa->images_dir, "image folder (alone: explain the predicted class; with XML annotations: their images)");
  std::vector<std::string> faith_methods = cam_method_names();
  faith_methods.emplace_back("guided");
  faith->add_option("--method", fa->methods, "methods to compare (several allowed): the CAM methods and guided")
      ->expected(1, -1)->check(CLI::IsMember(faith_methods))->capture_default_str();
  faith->add_option("--metrics", fa->metrics, "deletion, insertion, drop (Average Drop, Increase in Confidence and the "
                    "confidence change), road (MoRF, LeRF and combined), adcc (explains each masked image again), "
                    "pointing (the pointing game; needs --annotations)")
      ->expected(0, -1)->check(CLI::IsMember({"deletion", "insertion", "drop", "road", "adcc", "pointing"}))
      ->capture_default_str();
  faith->add_option("--tolerance", fa->tolerance, "pointing game tolerance in pixels, as eval-loc's")
      ->check(whole_number(0))->capture_default_str();
  faith->add_option("--steps", fa->steps, "deletion / insertion steps")->check(whole_number(1))->capture_default_str();
  faith->add_option("--sanity", fa->sanity, "run the parameter-randomisation check on the first N images (0: off)")
      ->check(whole_number(0))->capture_default_str();
  faith->add_option("--limit", fa->limit, "use only the first N images (0: all)")->check(whole_number(0));
  faith->add_option("--perturbation-batch", fa->perturbation_batch, "scorecam, sscam, iscam, ablationcam: perturbed images per forward pass (0: 32, or with GRADCAM_MALLOC=default the library's default: 1 on the CPU, 32 on a GPU)")
      ->check(whole_number(1))->capture_default_str();
  faith->add_option("--report", fa->report, "JSON report to write")->capture_default_str();
  add_shard(faith, fa->common.shard);
  add_cam_smoothing(faith, fa->common);
  return {&fa->common, [fa] { return run_eval_faith(*fa); }};
}

}  // namespace gradcam_cli
