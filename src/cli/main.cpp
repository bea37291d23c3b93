// src/cli/main.cpp: the `gradcam` command. Built only on the public API.
//
//   gradcam explain    --model M --image a.png [b.png ...] | --images DIR  [--method ...] [--json]
//   gradcam layers     --model M [--size H W] [--json]
//   gradcam eval-loc   --model M --annotations CSV|DIR [--sweep]
//   gradcam eval-faith --model M --annotations CSV|DIR | --images DIR [--method ...] [--sanity N]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/jit/api/module.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <future>
#include <iomanip>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <thread>
#include <unistd.h>

#include <gradcam/gradcam.hpp>

#include "common.hpp"
#include "workflows.hpp"

using json = nlohmann::json;

namespace {

using namespace gradcam_cli;  // NOLINT: the command's shared helpers

json box_json(const std::optional<gradcam::Box>& box, const gradcam::Geometry& g) {
  if (!box) return nullptr;
  auto b = g.to_image({box->x0, box->y0, box->x1, box->y1});
  return json::array({b[0], b[1], b[2], b[3]});
}

/// The CAM methods of the library, by command-line name.
std::vector<std::string> cam_method_names() {
  std::vector<std::string> out;
  for (auto m : gradcam::all_methods()) out.emplace_back(gradcam::method_name(m));
  return out;
}

bool is_cam_method(const std::string& name) {
  const auto names = cam_method_names();
  return std::find(names.begin(), names.end(), name) != names.end();
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

struct FaithArgs {
  Common common;
  std::string annotations;
  std::string images_dir;
  std::vector<std::string> methods = {"gradcam"};
  std::vector<std::string> metrics = {"deletion", "insertion", "drop", "road"};
  int steps = 50;
  int sanity = 0;
  int limit = 0;
  int perturbation_batch = 32;
  std::string report = "eval_faith.json";
};

/// Sums per method for eval-faith.
struct FaithSums {
  double n = 0, deletion = 0, insertion = 0, drop = 0, increase = 0, morf = 0, lerf = 0;
  std::vector<double> deletion_curve, insertion_curve;
};

int run_eval_faith(const FaithArgs& a) {
  const c10::Device device(a.common.device);
  auto module = gradcam::load_model(a.common.model, device);
  std::set<std::string> metrics(a.metrics.begin(), a.metrics.end());
  // Images and, with annotations, their true classes (explained); otherwise the top-1 class.
  gradcam::Labels labels;
  if (!a.common.labels.empty()) labels = gradcam::Labels::read(a.common.labels);
  std::vector<std::pair<std::string, std::string>> items;  // path, label ("" = predicted class)
  if (!a.annotations.empty()) {
    for (const auto& ann : gradcam::read_annotations(a.annotations, a.images_dir)) {
      class_of(labels, ann.objects.front(), a.common.labels);  // a bad label is the file's error
      items.emplace_back(ann.image, ann.objects.front().label);
    }
  } else {
    GRADCAM_CHECK(!a.images_dir.empty(), "give --annotations FILE (explains the true classes) or --images DIR "
                  "(explains the predicted classes)");
    for (const auto& path : list_images(a.images_dir)) items.emplace_back(path, "");
  }
  if (a.limit > 0 && items.size() > static_cast<size_t>(a.limit)) items.resize(static_cast<size_t>(a.limit));

  std::vector<gradcam::Method> cam_methods;
  bool guided = false;
  for (const auto& m : a.methods) {
    if (m == "guided") {
      guided = true;
    } else {
      cam_methods.push_back(gradcam::method_from_name(m));
    }
  }
  std::vector<std::string> layers = {a.common.layer};
  gradcam::GradCAMOptions opts(cam_methods.empty() ? std::vector<std::string>{} : layers);
  if (!cam_methods.empty()) opts.methods(cam_methods);
  opts.perturbation_batch(a.perturbation_batch).guided(guided ? gradcam::GuidedMode::guided : gradcam::GuidedMode::none);
  gradcam::GradCAM cam(module, opts);
  const std::string layer = cam.layers().empty() ? std::string("(input)") : cam.layers().front();
  const auto pre = preprocess_of(a.common);
  const gradcam::ScoreModel model = gradcam::score_model(module);
  const auto curve_opts = gradcam::CurveOptions().steps(a.steps).batch(std::max(a.common.batch, 32));
  const auto road_opts = gradcam::RoadOptions().batch(std::max(a.common.batch, 32));

  /// The saliency [N,1,h,w] of `method` in a result.
  auto saliency = [&](const gradcam::GradCAMResult& r, const std::string& method) {
    if (method == "guided") return r.guided.at(0).abs().sum(1, true);
    return r.get(layer, 0, 0, gradcam::method_from_name(method)).map;
  };
  std::map<std::string, FaithSums> sums;
  std::vector<at::Tensor> sanity_inputs;
  std::vector<int64_t> sanity_classes;

  InterruptGuard interrupt_guard;
  Progress progress(items.size(), !a.common.quiet);
  size_t done = 0, unreadable = 0;
  bool labels_checked = false;
  const auto t_start = std::chrono::steady_clock::now();
  for (size_t start = 0; start < items.size() && !g_interrupted;) {
    std::vector<at::Tensor> xs;
    std::vector<std::string> wanted, names;
    size_t i = start;
    for (; i < items.size() && static_cast<int>(xs.size()) < a.common.batch; ++i) {
      try {
        at::Tensor t = gradcam::to_tensor(gradcam::load_image(items[i].first, a.common.max_pixels), pre);
        if (!xs.empty() && t.sizes() != xs.front().sizes()) break;
        xs.push_back(t);
        wanted.push_back(items[i].second);
        names.push_back(items[i].first);
      } catch (const gradcam::Error& e) {
        say() << "skipping unreadable image " << items[i].first << ": " << for_the_command(e.what()) << "\n";
        ++unreadable;
        ++done;
      }
    }
    start = i;
    if (xs.empty()) continue;
    at::Tensor x = at::cat(xs, 0).to(device);
    auto target_of = [&](const std::vector<std::string>& names_wanted) {
      if (a.annotations.empty()) return gradcam::Target::top1();
      std::vector<int64_t> cls;
      for (const auto& w : names_wanted) {
        auto c = labels.index(w);
        GRADCAM_CHECK(c.has_value(), "label '", w, "' is not in the labels file",
                      a.common.labels.empty() ? " (give --labels FILE)" : "");
        cls.push_back(*c);
      }
      return gradcam::Target::classes(cls);
    };
    gradcam::GradCAMResult r = cam.compute(x, target_of(wanted));
    if (done == unreadable) check_map_has_extent(module, r, x);  // the first batch
    // An image whose output is NaN would make every sum NaN: name it, drop it, redo the others.
    std::vector<int64_t> keep;
    std::vector<std::string> kept_wanted;
    for (int64_t k = 0; k < x.size(0); ++k) {
      const std::string why = nonfinite_reason(r, k);
      if (why.empty()) {
        keep.push_back(k);
        kept_wanted.push_back(wanted[static_cast<size_t>(k)]);
        continue;
      }
      say() << "skipping " << names[static_cast<size_t>(k)] << ": " << why << "\n";
      ++unreadable;
      ++done;
    }
    if (keep.empty()) continue;
    if (static_cast<int64_t>(keep.size()) < x.size(0)) {
      x = x.index_select(0, at::tensor(keep, at::kLong).to(device));
      r = cam.compute(x, target_of(kept_wanted));
    }
    if (!labels_checked && labels.size() > 0) {
      GRADCAM_CHECK(static_cast<int64_t>(labels.size()) == r.logits.size(1), "labels file '", a.common.labels,
                    "' has ", labels.size(), " names but the model has ", r.logits.size(1), " classes");
      labels_checked = true;
    }
    const at::Tensor classes = r.classes.select(1, 0).contiguous();
    for (const auto& method : a.methods) {
      FaithSums& s = sums[method];
      const at::Tensor sal = saliency(r, method);
      const auto n = static_cast<double>(x.size(0));
      s.n += n;
      auto add_curve = [](std::vector<double>& acc, const at::Tensor& scores) {
        const at::Tensor total = scores.sum(0);
        acc.resize(static_cast<size_t>(total.size(0)), 0.0);
        for (int64_t k = 0; k < total.size(0); ++k) acc[static_cast<size_t>(k)] += total[k].item<double>();
      };
      if (metrics.count("deletion")) {
        auto c = gradcam::deletion_curve(model, x, sal, classes, curve_opts);
        s.deletion += c.auc.sum().item<double>();
        add_curve(s.deletion_curve, c.scores);
      }
      if (metrics.count("insertion")) {
        auto c = gradcam::insertion_curve(model, x, sal, classes, curve_opts);
        s.insertion += c.auc.sum().item<double>();
        add_curve(s.insertion_curve, c.scores);
      }
      if (metrics.count("drop")) {
        auto c = gradcam::confidence_change(model, x, sal, classes);
        s.drop += c.drop.sum().item<double>();
        s.increase += c.increase.to(at::kDouble).sum().item<double>();
      }
      if (metrics.count("road")) {
        auto c = gradcam::road(model, x, sal, classes, road_opts);
        s.morf += c.most_relevant_first.mean(1).sum().item<double>();
        s.lerf += c.least_relevant_first.mean(1).sum().item<double>();
      }
    }
    for (int64_t k = 0; k < x.size(0) && static_cast<int>(sanity_inputs.size()) < a.sanity; ++k) {
      sanity_inputs.push_back(x.narrow(0, k, 1));
      sanity_classes.push_back(classes[k].item<int64_t>());
    }
    done += static_cast<size_t>(x.size(0));
    progress.update(done);
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();

  json report = {{"model", a.common.model}, {"layer", layer}, {"images", done - unreadable},
                 {"unreadable", unreadable}, {"interrupted", g_interrupted.load()},
                 {"explained", a.annotations.empty() ? "predicted class" : "true class"},
                 {"steps", a.steps}, {"seconds", wall}};
  json per_method = json::object();
  for (const auto& method : a.methods) {
    const FaithSums& s = sums[method];
    json m = json::object();
    if (s.n > 0) {
      auto mean_curve = [&](const std::vector<double>& c) {
        json arr = json::array();
        for (double v : c) arr.push_back(v / s.n);
        return arr;
      };
      if (metrics.count("deletion")) m["deletion_auc"] = s.deletion / s.n, m["deletion_curve"] = mean_curve(s.deletion_curve);
      if (metrics.count("insertion")) m["insertion_auc"] = s.insertion / s.n, m["insertion_curve"] = mean_curve(s.insertion_curve);
      if (metrics.count("drop")) m["average_drop"] = s.drop / s.n, m["increase_in_confidence"] = 100 * s.increase / s.n;
      if (metrics.count("road")) {
        m["road_morf"] = s.morf / s.n;
        m["road_lerf"] = s.lerf / s.n;
        m["road_combined"] = (s.lerf - s.morf) / (2 * s.n);
      }
    }
    per_method[method] = m;
  }
  // Sanity check (Adebayo et al.): cascading randomisation on the first --sanity images.
  if (!sanity_inputs.empty() && !g_interrupted) {
    const at::Tensor sx = at::cat(sanity_inputs, 0);
    const at::Tensor sc = at::tensor(sanity_classes, at::TensorOptions().dtype(at::kLong));
    for (const auto& method : a.methods) {
      gradcam::ExplainFn fn = [&](const torch::jit::Module& m, const at::Tensor& in, const at::Tensor& c) {
        std::vector<int64_t> idx(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
        if (method == "guided") {
          return gradcam::GuidedBackprop(m).compute(in, gradcam::Target::classes(idx)).gradients.at(0).abs().sum(1, true);
        }
        const auto meth = gradcam::method_from_name(method);
        gradcam::GradCAM e(m, gradcam::GradCAMOptions(layer).methods({meth}).perturbation_batch(a.perturbation_batch));
        return e.compute(in, gradcam::Target::classes(idx)).get(layer, 0, 0, meth).map;
      };
      json steps = json::array();
      for (const auto& st : gradcam::randomization_check(module, sx, sc, fn)) {
        steps.push_back({{"module", st.module}, {"spearman", st.correlation.mean().item<double>()}});
      }
      per_method[method]["sanity"] = steps;
      per_method[method]["sanity_final_spearman"] = steps.back()["spearman"];
      per_method[method]["sanity_top_spearman"] = steps.front()["spearman"];
    }
    report["sanity_images"] = sanity_inputs.size();
  }
  report["methods"] = per_method;
  write_atomically(a.report, report.dump(2) + "\n");
  auto cell = [](const json& m, const char* k, int prec) {
    if (!m.contains(k)) return std::string("-");
    std::ostringstream o;
    o << std::fixed << std::setprecision(prec) << m[k].get<double>();
    return o.str();
  };
  std::printf("faithfulness at %s, %zu images (%s)%s\n", layer.c_str(), done - unreadable,
              report["explained"].get<std::string>().c_str(), g_interrupted ? " (interrupted)" : "");
  std::printf("| method | deletion AUC (lower better) | insertion AUC (higher) | Average Drop %% (lower) | Increase in Confidence %% (higher) | ROAD MoRF (lower) | ROAD LeRF (higher) | sanity: Spearman after top layer / all layers |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- |\n");
  for (const auto& method : a.methods) {
    const json& m = per_method[method];
    std::printf("| %s | %s | %s | %s | %s | %s | %s | %s / %s |\n", method.c_str(), cell(m, "deletion_auc", 3).c_str(),
                cell(m, "insertion_auc", 3).c_str(), cell(m, "average_drop", 1).c_str(),
                cell(m, "increase_in_confidence", 1).c_str(), cell(m, "road_morf", 3).c_str(), cell(m, "road_lerf", 3).c_str(),
                cell(m, "sanity_top_spearman", 2).c_str(), cell(m, "sanity_final_spearman", 2).c_str());
  }
  std::printf("(%.1f s; report: %s)\n", wall, a.report.c_str());
  if (g_interrupted) return 130;
  return unreadable > 0 ? 1 : 0;
}

int run_layers(const Common& c, const std::vector<int>& size, bool as_json) {
  auto module = gradcam::load_model(c.model, c10::Device(c.device));
  // the input explain would give the model: --size, else the crop, else the resized square
  GRADCAM_CHECK(size.size() == 2 || c.crop > 0 || c.resize > 0,
                "with --resize 0 --crop 0 the input is each image's own size; give it with --size H W");
  const int h = size.size() == 2 ? size[0] : c.crop > 0 ? c.crop : c.resize;
  const int w = size.size() == 2 ? size[1] : c.crop > 0 ? c.crop : c.resize;
  // channels (-1) come from the model's first convolution
  auto listing = gradcam::list_layers(module, std::vector<int64_t>{1, -1, h, w});
  auto shape = [](const std::vector<int64_t>& s) {
    std::string out = "[";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
  };
  if (as_json) {
    json arr = json::array();
    for (const auto& l : listing.layers) {
      arr.push_back({{"name", l.name}, {"type", l.type}, {"shape", l.shape}, {"calls", l.calls},
                     {"is_tensor", l.is_tensor}, {"auto", l.name == listing.auto_layer}});
    }
    std::cout << json{{"layers", arr}, {"auto", listing.auto_layer}, {"frozen", listing.frozen}}.dump(2) << "\n";
    return 0;
  }
  size_t width = 5;
  for (const auto& l : listing.layers) width = std::max(width, l.name.size());
  std::printf("  %-*s  %-22s  %-22s  %s\n", static_cast<int>(width), "layer", "type", "output shape", "calls");
  for (const auto& l : listing.layers) {
    const bool is_auto = l.name == listing.auto_layer;
    std::printf("%s %-*s  %-22s  %-22s  %lld\n", is_auto ? "*" : " ", static_cast<int>(width), l.name.c_str(),
                l.type.c_str(), l.is_tensor ? shape(l.shape).c_str() : "(not a tensor)", static_cast<long long>(l.calls));
  }
  std::printf("\n* auto = %s (input 1x?x%dx%d)%s\n", listing.auto_layer.c_str(), h, w,
              listing.frozen ? "; frozen model: names are graph values" : "");
  return 0;
}

}  // namespace

/// The whole command; with parse_only, stops after parsing (the command-line fuzzer uses this).
int gradcam_main(int argc, char** argv, bool parse_only = false) {
  CLI::App app{"gradcam: Grad-CAM, Guided Grad-CAM and friends for TorchScript models (version " +
               std::string(gradcam::version) + ")"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string(gradcam::version));

  ExplainArgs ex;
  auto* explain = app.add_subcommand("explain", "explain images: heatmap overlays, maps as .npy, boxes, JSON records");
  add_common(explain, ex.common);
  explain->add_option("--image", ex.images, "image file(s)")->expected(1, -1);
  explain->add_option("--images", ex.images_dir, "a folder of images");
  auto* cls = explain->add_option("--class", ex.classes, "class index to explain (one for all images, or one per image)")->expected(1, -1)->check(whole_number(0, std::numeric_limits<long long>::max()));
  explain->add_option("--topk", ex.topk, "explain the K best classes of each image")->check(whole_number(1))->excludes(cls);
  std::vector<std::string> explain_methods = cam_method_names();
  for (const char* m : {"counterfactual", "guided", "deconvnet", "guided-gradcam", "deconvnet-gradcam"}) explain_methods.emplace_back(m);
  explain->add_option("--method", ex.methods, "gradcam, gradcam++, xgradcam, hirescam, layercam, scorecam, ablationcam, eigencam, cam, counterfactual, guided, deconvnet, guided-gradcam, deconvnet-gradcam (several allowed)")
      ->expected(1, -1)
      ->check(CLI::IsMember(explain_methods))
      ->capture_default_str();
  explain->add_option("--layers", ex.layers, "several target layers (instead of --layer): one map each, or one fused map with --fuse")->expected(1, -1);
  explain->add_option("--fuse", ex.fuse, "combine the normalised maps of the --layers: mean or max")->check(CLI::IsMember({"mean", "max"}));
  explain->add_option("--perturbation-batch", ex.perturbation_batch, "scorecam / ablationcam: perturbed images per forward pass")
      ->check(whole_number(1))->capture_default_str();
  explain->add_option("--colormap", ex.colormap, "heatmap colours")->check(CLI::IsMember(gradcam::colormap_names()))->capture_default_str();
  explain->add_option("--alpha", ex.alpha, "heatmap opacity over the image")->check(real_number(0, 1))->capture_default_str();
  explain->add_option("--out", ex.out, "output folder")->capture_default_str();
  explain->add_flag("--json", ex.json_lines, "print one JSON record per image, class and method on stdout");
  explain->add_option("--threshold", ex.threshold, "localization box: keep map values >= threshold * max")
      ->check(real_number(0, 1))->capture_default_str();

  Common lc;
  std::vector<int> size;
  bool layers_json = false;
  auto* layers = app.add_subcommand("layers", "list the layers of a model with their output shapes; * marks the auto choice");
  add_common(layers, lc);
  layers->add_option("--size", size, "input height and width")->expected(2)->check(whole_number(1));
  layers->add_flag("--json", layers_json, "print JSON");

  if (argc > 1 && argv[1][0] != '-' && std::string(argv[1]) != "explain" && std::string(argv[1]) != "layers" &&
      std::string(argv[1]) != "eval-loc" && std::string(argv[1]) != "eval-faith" && std::string(argv[1]) != "diagnose" &&
      std::string(argv[1]) != "compare") {
    std::cerr << "gradcam: unknown command '" << argv[1]
              << "'; the commands are: explain, layers, eval-loc, eval-faith, diagnose, compare (see --help)\n";
    return 2;
  }
  EvalArgs ev;
  auto* eval = app.add_subcommand("eval-loc", "weakly supervised localization accuracy against ground-truth boxes");
  add_common(eval, ev.common);
  eval->add_option("--annotations", ev.annotations, "CSV file,label,x0,y0,x1,y1 or a folder of VOC/ImageNet XML files")->required();
  eval->add_option("--images", ev.images_dir, "image folder (XML annotations; for a CSV, overrides the CSV's folder)");
  eval->add_option("--report", ev.report, "JSON report to write")->capture_default_str();
  eval->add_option("--threshold", ev.threshold, "keep map values >= threshold * max")->check(real_number(0, 1))->capture_default_str();
  eval->add_flag("--sweep", ev.sweep, "also evaluate thresholds 0.05, 0.10 ... 0.95");
  eval->add_option("--connectivity", ev.connectivity, "4 or 8")->check(CLI::IsMember({4, 8}))->capture_default_str();
  eval->add_flag("--largest-by-box-area", ev.by_box_area, "choose the component with the largest box, not the most pixels");
  eval->add_option("--tolerance", ev.tolerance, "pointing game tolerance in pixels")->check(whole_number(0))->capture_default_str();
  eval->add_option("--method", ev.method, "gradcam or counterfactual")->check(CLI::IsMember({"gradcam", "counterfactual"}))->capture_default_str();

  FaithArgs fa;
  auto* faith = app.add_subcommand("eval-faith", "faithfulness of explanations: deletion/insertion AUC, Average Drop, "
                                                 "Increase in Confidence, ROAD, parameter-randomisation sanity check");
  add_common(faith, fa.common);
  faith->add_option("--annotations", fa.annotations, "CSV or XML folder as for eval-loc: explain each image's true class");
  faith->add_option("--images", fa.images_dir, "image folder (alone: explain the predicted class; with XML annotations: their images)");
  std::vector<std::string> faith_methods = cam_method_names();
  faith_methods.emplace_back("guided");
  faith->add_option("--method", fa.methods, "methods to compare (several allowed): the CAM methods and guided")
      ->expected(1, -1)->check(CLI::IsMember(faith_methods))->capture_default_str();
  faith->add_option("--metrics", fa.metrics, "deletion, insertion, drop (Average Drop + Increase in Confidence), road")
      ->expected(0, -1)->check(CLI::IsMember({"deletion", "insertion", "drop", "road"}))->capture_default_str();
  faith->add_option("--steps", fa.steps, "deletion / insertion steps")->check(whole_number(1))->capture_default_str();
  faith->add_option("--sanity", fa.sanity, "run the parameter-randomisation check on the first N images (0: off)")
      ->check(whole_number(0))->capture_default_str();
  faith->add_option("--limit", fa.limit, "use only the first N images (0: all)")->check(whole_number(0));
  faith->add_option("--perturbation-batch", fa.perturbation_batch, "scorecam / ablationcam: perturbed images per forward pass")
      ->check(whole_number(1))->capture_default_str();
  faith->add_option("--report", fa.report, "JSON report to write")->capture_default_str();

  gradcam_cli::DiagnoseArgs da;
  auto* diagnose = gradcam_cli::add_diagnose(app, da);
  gradcam_cli::CompareArgs ca;
  auto* compare = gradcam_cli::add_compare(app, ca);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (parse_only) return 0;
  CommandWarnings::install();
  try {
    const Common& c = explain->parsed() ? ex.common : eval->parsed() ? ev.common : faith->parsed() ? fa.common
                      : diagnose->parsed() ? da.common : compare->parsed() ? ca.common : lc;
    // more intra-op threads than cores only adds contention (1000 made one small image take 56 s)
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    if (c.threads > cores) {
      std::cerr << "gradcam: warning: --threads " << c.threads << " is more than this machine's " << cores
                << " cores; using " << cores << "\n";
    }
    at::set_num_threads(c.threads > 0 ? std::min(c.threads, cores) : cores);
    if (explain->parsed()) return run_explain(ex);
    if (eval->parsed()) return run_eval_loc(ev);
    if (faith->parsed()) return run_eval_faith(fa);
    if (diagnose->parsed()) return gradcam_cli::run_diagnose(da);
    if (compare->parsed()) return gradcam_cli::run_compare(ca);
    return run_layers(lc, size, layers_json);
  } catch (const gradcam::Error& e) {
    say() << "error: " << for_the_command(e.what()) << "\n";
    return 1;
  } catch (const std::exception& e) {
    say() << "error: " << e.what() << "\n";
    return 1;
  }
}
#if !defined(GRADCAM_CLI_NO_MAIN)
int main(int argc, char** argv) { return gradcam_main(argc, argv); }
#endif
