// src/cli/explain.cpp: `gradcam explain`: overlays, maps as .npy, boxes and JSON records for
// images, from one forward pass per batch for every CAM method asked for.
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

json box_json(const std::optional<gradcam::Box>& box, const gradcam::Geometry& g) {
  if (!box) return nullptr;
  auto b = g.to_image({box->x0, box->y0, box->x1, box->y1});
  return json::array({b[0], b[1], b[2], b[3]});
}

struct ExplainArgs {
  Common common;
  std::vector<std::string> layers;
  std::string fuse;
  int perturbation_batch = 32;
  std::vector<std::string> images;
  std::string images_dir;
  std::vector<int64_t> classes;
  int topk = 0;
  std::vector<std::string> methods = {"gradcam"};
  std::string colormap = "jet";
  double alpha = 0.5;
  std::string out = "gradcam_out";
  bool json_lines = false;
  double threshold = 0.15;
};

/// OUT/records.jsonl of `explain`: appended, so that an earlier run's records (and the files they
/// list) survive a later run into the same folder; each record names its run. Opened on the first
/// record, so a run that explains nothing leaves no file, and flushed per record, so that an
/// interrupted or killed run keeps the record of every image it finished.
class RecordsFile {
 public:
  RecordsFile(std::string path, std::string run) : path_(std::move(path)), run_(std::move(run)) {}
  void write(json rec) {
    if (!out_.is_open()) {
      out_.open(path_, std::ios::app);
      GRADCAM_CHECK(out_.good(), "cannot write records to '", path_, "'");
    }
    rec["run"] = run_;
    out_ << rec.dump() << "\n";
    out_.flush();
    GRADCAM_CHECK(out_.good(), "cannot write records to '", path_, "'");
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_, run_;
  std::ofstream out_;
};

/// Tells a batch the network refused (an odd image) from a setting that fails every batch (a
/// class out of range): the same message on the first kRepeats batches, with no image explained
/// yet, is the run's error; so is the last one when no image could be explained at all.
class BatchFailures {
 public:
  static constexpr int kRepeats = 3;
  void note(const std::string& message, bool none_explained_yet) {
    repeats_ = none_explained_yet && message == last_ ? repeats_ + 1 : 1;
    last_ = message;
    if (none_explained_yet && repeats_ >= kRepeats) gradcam::fail(message);
  }
  void at_end(bool none_explained) const {
    if (none_explained && !last_.empty()) gradcam::fail(last_);
  }

 private:
  std::string last_;
  int repeats_ = 0;
};

int run_explain(const ExplainArgs& a) {
  const c10::Device device(a.common.device);
  auto module = gradcam::load_model(a.common.model, device);
  const auto labels = read_labels(a.common.labels);
  const int colormap = gradcam::colormap_from_name(a.colormap);
  std::set<std::string> methods(a.methods.begin(), a.methods.end());
  GRADCAM_CHECK(methods.size() == a.methods.size(), "a --method is listed twice");
  const bool want_guided = methods.count("guided") || methods.count("guided-gradcam");
  const bool want_deconv = methods.count("deconvnet") || methods.count("deconvnet-gradcam");

  std::vector<std::string> images = a.images;
  if (!a.images_dir.empty()) {
    auto more = list_images(a.images_dir);
    images.insert(images.end(), more.begin(), more.end());
  }
  GRADCAM_CHECK(!images.empty(), "no images given: use --image PATH or --images DIR");
  std::error_code ec;
  fs::create_directories(a.out, ec);
  GRADCAM_CHECK(fs::is_directory(a.out), "cannot create output directory '", a.out, "'");
  {
    const std::string probe = (fs::path(a.out) / ".gradcam_write_test").string();
    std::ofstream t(probe);
    GRADCAM_CHECK(t.good(), "output directory '", a.out, "' is not writable");
    t.close();
    fs::remove(probe, ec);
  }

  // One explainer computes every CAM method (one forward pass); Grad-CAM is always computed: the
  // guided methods, counterfactual maps and boxes of non-map methods use it.
  std::vector<gradcam::Method> cam_methods = {gradcam::Method::gradcam};
  for (const auto& m : a.methods) {
    if (is_cam_method(m) && m != "gradcam") cam_methods.push_back(gradcam::method_from_name(m));
  }
  const std::vector<std::string> layer_args = a.layers.empty() ? std::vector<std::string>{a.common.layer} : a.layers;
  GRADCAM_CHECK(a.fuse.empty() || layer_args.size() > 1, "--fuse combines several layers; give two or more --layer");
  gradcam::GradCAMOptions opts(layer_args);
  opts.keep_signed(true).methods(cam_methods).perturbation_batch(a.perturbation_batch)
      .guided(want_guided ? gradcam::GuidedMode::guided : gradcam::GuidedMode::none);
  gradcam::GradCAM cam(module, opts);
  std::unique_ptr<gradcam::GradCAM> deconv;
  if (want_deconv) {
    deconv = std::make_unique<gradcam::GradCAM>(
        module, gradcam::GradCAMOptions(cam.layers()).guided(gradcam::GuidedMode::deconvnet));
  }
  const std::string layer = cam.layers().front();
  // The layers maps are written for: each one, or one fused entry.
  std::vector<std::string> out_layers = a.fuse.empty() ? cam.layers() : std::vector<std::string>{"fused"};
  gradcam::Target target = a.topk > 0 ? gradcam::Target::topk(a.topk)
                           : !a.classes.empty() ? gradcam::Target::classes(a.classes)
                                                : gradcam::Target::top1();
  const auto pre = preprocess_of(a.common);
  const OutputLock lock(a.out);
  RecordsFile records((fs::path(a.out) / "records.jsonl").string(), make_run_id());

  InterruptGuard interrupt_guard;
  Progress progress(images.size(), !a.common.quiet);
  size_t done = 0, failed = 0;
  BatchFailures rejected;
  std::map<std::string, int> stems;
  bool labels_checked = false, extent_checked = false;
  for (size_t start = 0; start < images.size() && !g_interrupted;) {
    // a batch of consecutive images whose inputs have the same shape
    std::vector<std::string> paths;
    std::vector<cv::Mat> originals;
    std::vector<gradcam::Geometry> geoms;
    std::vector<at::Tensor> inputs;
    size_t i = start;
    for (; i < images.size() && static_cast<int>(inputs.size()) < a.common.batch; ++i) {
      try {
        cv::Mat img = gradcam::load_image(images[i], a.common.max_pixels);
        gradcam::Geometry g;
        at::Tensor t = gradcam::to_tensor(img, pre, &g);
        if (!inputs.empty() && t.sizes() != inputs.front().sizes()) break;
        paths.push_back(images[i]);
        originals.push_back(img);
        geoms.push_back(g);
        inputs.push_back(t);
      } catch (const gradcam::Error& e) {
        say() << "skipping " << images[i] << ": " << for_the_command(e.what()) << "\n";
        ++failed;
        ++done;
      }
    }
    start = i;
    if (inputs.empty()) continue;
    at::Tensor x = at::cat(inputs, 0).to(device);
    gradcam::GradCAMResult r, rd;
    try {
      r = cam.compute(x, target);
      if (deconv) rd = deconv->compute(x, target);
    } catch (const gradcam::Error& e) {
      // A batch holds images of one shape: an input the network cannot take (a 1x1 image) fails
      // the batch. Skip and name them, and go on. The same error on the first batches, before any
      // success, comes from the settings, not the images: stop with it.
      rejected.note(e.what(), done == failed);
      for (const auto& p : paths) say() << "skipping " << p << ": " << for_the_command(e.what()) << "\n";
      failed += paths.size();
      done += paths.size();
      progress.update(done);
      continue;
    }
    if (!labels_checked && !labels.empty() && r.logits.defined()) {
      GRADCAM_CHECK(static_cast<int64_t>(labels.size()) == r.logits.size(1), "labels file '", a.common.labels,
                    "' has ", labels.size(), " names but the model has ", r.logits.size(1), " classes");
      labels_checked = true;
    }
    if (!extent_checked) {
      check_map_has_extent(module, r, x);
      extent_checked = true;
    }
    at::Tensor probs = r.logits.defined() ? at::softmax(r.logits.to(at::kFloat), 1).cpu() : at::Tensor();
    const int64_t ranks = r.classes.size(1);
    for (size_t n = 0; n < paths.size(); ++n) {
      const auto ni = static_cast<int64_t>(n);
      if (const std::string why = nonfinite_reason(r, ni); !why.empty()) {
        say() << "skipping " << paths[n] << ": " << why << "\n";
        const json rec = {{"image", paths[n]}, {"error", why}};
        records.write(rec);
        if (a.json_lines) std::cout << rec.dump() << std::endl;
        ++failed;
        progress.update(++done);
        continue;
      }
      std::string stem = fs::path(paths[n]).stem().string();
      if (int k = stems[stem]++; k > 0) stem += "_" + std::to_string(k);
      for (int64_t rank = 0; rank < ranks; ++rank) {
        const int64_t cls = r.classes[ni][rank].item<int64_t>();
        const double score = r.scores[ni][rank].item<double>();
        const std::string cname = cls >= 0 && cls < static_cast<int64_t>(labels.size()) ? labels[static_cast<size_t>(cls)] : std::to_string(cls);
        for (const std::string& out_layer : out_layers)
        for (const std::string& method : a.methods) {
          // Grad-CAM of this layer (fused output: of the first layer) for counterfactual, guided, boxes
          const gradcam::LayerMap& lm = r.get(a.fuse.empty() ? out_layer : layer, rank, 0);
          std::string suffix = out_layers.size() > 1 || !a.fuse.empty() ? "_" + out_layer : std::string();
          std::replace(suffix.begin(), suffix.end(), '%', '_');
          const std::string base = (fs::path(a.out) / (stem + "_c" + std::to_string(cls) + "_" + method + suffix)).string();
          json files = json::object();
          at::Tensor map;  // [h,w] for the map-based methods
          if (is_cam_method(method)) {
            const auto m = gradcam::method_from_name(method);
            if (a.fuse.empty()) {
              map = r.get(out_layer, rank, 0, m).map[ni][0];
            } else {
              std::vector<at::Tensor> parts;
              for (const auto& l : cam.layers()) parts.push_back(r.get(l, rank, 0, m).map.narrow(0, ni, 1));
              map = gradcam::fuse(parts, a.fuse == "max" ? gradcam::Fusion::max : gradcam::Fusion::mean,
                                  {x.size(2), x.size(3)})[0][0];
            }
          }
          if (method == "counterfactual") map = at::relu(-lm.map_signed[ni][0]);
          json box = nullptr;
          if (map.defined()) {
            const gradcam::Geometry& g = geoms[n];
            cv::Mat heat = gradcam::map_to_image(map, g);
            gradcam::save_image(base + ".png", gradcam::overlay(originals[n], heat, colormap, a.alpha));
            files["overlay"] = base + ".png";
            gradcam::save_npy(base + "_map.npy", map);
            files["map"] = base + "_map.npy";
            at::Tensor up = gradcam::upsample(map, {g.input_height, g.input_width});
            gradcam::save_npy(base + "_map_upsampled.npy", up);
            files["map_upsampled"] = base + "_map_upsampled.npy";
            box = box_json(gradcam::localize(up, gradcam::LocalizeOptions().threshold(a.threshold)).front().box, g);
          } else {
            at::Tensor grad;
            if (method == "guided") grad = r.guided.at(static_cast<size_t>(rank))[ni];
            if (method == "guided-gradcam") grad = lm.guided_gradcam[ni];
            if (method == "deconvnet") grad = rd.guided.at(static_cast<size_t>(rank))[ni];
            if (method == "deconvnet-gradcam") grad = rd.get(lm.layer, rank, 0).guided_gradcam[ni];
            gradcam::save_image(base + ".png", gradcam::rgb_to_mat(gradcam::guided_to_display(grad)));
            files["guided"] = base + ".png";
            gradcam::save_npy(base + ".npy", grad);
            files["gradients"] = base + ".npy";
            box = box_json(gradcam::localize(gradcam::upsample(lm.map[ni][0], {geoms[n].input_height, geoms[n].input_width}),
                                             gradcam::LocalizeOptions().threshold(a.threshold)).front().box, geoms[n]);
          }
          json rec = {{"image", paths[n]}, {"class", cls}, {"label", cname}, {"rank", rank},
                      {"score", score}, {"prob", probs.defined() ? json(probs[ni][cls].item<double>()) : json(nullptr)},
                      {"layer", a.fuse.empty() ? out_layer : "fused:" + a.fuse}, {"method", method}, {"box", box}, {"files", files}};
          records.write(rec);
          if (a.json_lines) std::cout << rec.dump() << std::endl;
        }
      }
      ++done;
      progress.update(done);
    }
  }
  if (!a.json_lines && !a.common.quiet) {
    std::string names;
    for (const auto& l : cam.layers()) names += (names.empty() ? "'" : ", '") + l + "'";
    std::cerr << "gradcam: explained " << (done - failed) << " image(s) at layer " << names << "; wrote " << a.out << "\n";
  }
  if (g_interrupted) {
    std::cerr << "gradcam: interrupted after " << done << " of " << images.size() << " image(s); "
              << records.path() << " has the records of every image done\n";
    return 130;
  }
  rejected.at_end(done == failed);
  if (failed > 0) {
    std::cerr << "gradcam: " << failed << " image(s) could not be read or explained\n";
    return 1;
  }
  return 0;
}

}  // namespace

Subcommand add_explain(CLI::App* explain) {
  auto ex = std::make_shared<ExplainArgs>();
  add_common(explain, ex->common);
  explain->add_option("--image", ex->images, "image file(s)")->expected(1, -1);
  explain->add_option("--images", ex->images_dir, "a folder of images");
  auto* cls = explain->add_option("--class", ex->classes, "class index to explain (one for all images, or one per image)")->expected(1, -1)->check(whole_number(0, std::numeric_limits<long long>::max()));
  explain->add_option("--topk", ex->topk, "explain the K best classes of each image")->check(whole_number(1))->excludes(cls);
  std::vector<std::string> explain_methods = cam_method_names();
  for (const char* m : {"counterfactual", "guided", "deconvnet", "guided-gradcam", "deconvnet-gradcam"}) explain_methods.emplace_back(m);
  explain->add_option("--method", ex->methods, "gradcam, gradcam++, xgradcam, hirescam, layercam, scorecam, ablationcam, eigencam, cam, counterfactual, guided, deconvnet, guided-gradcam, deconvnet-gradcam (several allowed)")
      ->expected(1, -1)
      ->check(CLI::IsMember(explain_methods))
      ->capture_default_str();
  explain->add_option("--layers", ex->layers, "several target layers (instead of --layer): one map each, or one fused map with --fuse")->expected(1, -1);
  explain->add_option("--fuse", ex->fuse, "combine the normalised maps of the --layers: mean or max")->check(CLI::IsMember({"mean", "max"}));
  explain->add_option("--perturbation-batch", ex->perturbation_batch, "scorecam / ablationcam: perturbed images per forward pass")
      ->check(whole_number(1))->capture_default_str();
  explain->add_option("--colormap", ex->colormap, "heatmap colours")->check(CLI::IsMember(gradcam::colormap_names()))->capture_default_str();
  explain->add_option("--alpha", ex->alpha, "heatmap opacity over the image")->check(real_number(0, 1))->capture_default_str();
  explain->add_option("--out", ex->out, "output folder")->capture_default_str();
  explain->add_flag("--json", ex->json_lines, "print one JSON record per image, class and method on stdout");
  explain->add_option("--threshold", ex->threshold, "localization box: keep map values >= threshold * max")
      ->check(real_number(0, 1))->capture_default_str();
  return {&ex->common, [ex] { return run_explain(*ex); }};
}

}  // namespace gradcam_cli
