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

#include "batches.hpp"
#include "commands.hpp"
#include "common.hpp"
#include "explain.hpp"
#include "explain_detection.hpp"
#include "shard.hpp"

namespace gradcam_cli {

using json = nlohmann::json;

namespace {

json box_json(const std::optional<gradcam::Box>& box, const gradcam::Geometry& g) {
  if (!box) return nullptr;
  const gradcam::Box b = g.to_image(*box);
  return json::array({b.x0, b.y0, b.x1, b.y1});
}

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

/// One `explain` run: its settings, explainers, outputs and counts.
struct ExplainRun {
  const ExplainArgs& a;
  c10::Device device;
  torch::jit::Module module;
  gradcam::Labels labels;
  int colormap;
  std::unique_ptr<gradcam::GradCAM> cam, deconv;
  std::vector<std::string> out_layers;  // the layers maps are written for: each one, or one "fused"
  gradcam::Target target;
  RecordsFile records;
  std::map<std::string, int> stems;
  size_t done = 0, failed = 0;
  BatchFailures rejected;
  bool checked = false;  // labels and map extent, on the first batch explained

  /// Loads the model and the labels; make_explainers() follows once the inputs are checked.
  explicit ExplainRun(const ExplainArgs& args)
      : a(args),
        device(a.common.device),
        module(gradcam::load_model(a.common.model, device)),
        colormap(gradcam::colormap_from_name(a.colormap)),
        target(a.finer > 0          ? finer_target(a)
               : a.detection.on()   ? detection_target(a.detection)
               : a.topk > 0         ? gradcam::Target::topk(a.topk)
               : !a.classes.empty() ? gradcam::Target::classes(a.classes)
                                    : gradcam::Target::top1()),
        records((fs::path(a.out) / "records.jsonl").string(), make_run_id()) {
    if (!a.common.labels.empty()) labels = gradcam::Labels::read(a.common.labels);
  }

  /// `first`: the first image, whose own size resolves "auto" with --resize 0 --crop 0 (a ViT takes
  /// one input size only).
  void make_explainers(const std::string& first) {
    std::vector<int64_t> own_hw;
    if (a.common.resize == 0 && a.common.crop == 0 && !first.empty()) {
      try {
        const cv::Mat im = gradcam::load_image(first, a.common.max_pixels);
        own_hw = {im.rows, im.cols};
      } catch (const gradcam::Error&) {  // said and skipped when its batch is read
      }
    }
    cam = std::make_unique<gradcam::GradCAM>(module, explain_options(a, own_hw));
    if (wants(a, "deconvnet", "deconvnet-gradcam")) {
      deconv = std::make_unique<gradcam::GradCAM>(
          module, cam_options(a.common, cam->layers()).guided(gradcam::GuidedMode::deconvnet));
    }
    out_layers = a.fuse.empty() ? cam->layers() : std::vector<std::string>{"fused"};
  }

  void write(const json& rec) {
    records.write(rec);
    if (a.json_lines) std::cout << rec.dump() << std::endl;
  }

  /// The last batch's files and records, written on another thread while the network runs the
  /// next batch (PNG encoding and writing cost about what a small model's forward does); it
  /// returns how many of its images failed. Only that thread writes records while it runs.
  std::future<size_t> writing;
  size_t writing_images = 0;
  Worker writer;  // last: destroyed first, after the batch being written

  /// Waits for the batch being written (rethrowing what failed there) and counts its images.
  void finish_writing(Progress& progress) {
    if (!writing.valid()) return;
    failed += writing.get();
    done += writing_images;
    writing_images = 0;
    progress.update(done);
  }
};

/// The CAM map [h,w] of `method` (a CAM method name) for image `n`, rank `rank`: of `out_layer`,
/// or the --fuse of every layer's.
at::Tensor cam_map(const ExplainRun& run, const gradcam::GradCAMResult& r, const std::string& method,
                   const std::string& out_layer, int64_t rank, int64_t n, const at::Tensor& x) {
  const auto m = gradcam::method_from_name(method);
  if (run.a.fuse.empty()) return r.get(out_layer, rank, 0, m).map[n][0];
  std::vector<at::Tensor> parts;
  for (const auto& l : run.cam->layers()) parts.push_back(r.get(l, rank, 0, m).map.narrow(0, n, 1));
  return gradcam::fuse(parts, run.a.fuse == "max" ? gradcam::Fusion::max : gradcam::Fusion::mean,
                       {x.size(2), x.size(3)})[0][0];
}

/// Writes a map's overlay, map and upsampled map under `base`; returns the files and the box.
std::pair<json, json> write_map(const ExplainRun& run, const at::Tensor& map, const LoadedImage& im,
                                const std::string& base) {
  const gradcam::Geometry& g = im.geometry;
  json files = json::object();
  cv::Mat heat = gradcam::map_to_image(map, g);
  gradcam::save_image(base + ".png", gradcam::overlay(im.image, heat, run.colormap, run.a.alpha));
  files["overlay"] = base + ".png";
  gradcam::save_npy(base + "_map.npy", map);
  files["map"] = base + "_map.npy";
  at::Tensor up = gradcam::upsample(map, {g.input_height, g.input_width});
  gradcam::save_npy(base + "_map_upsampled.npy", up);
  files["map_upsampled"] = base + "_map_upsampled.npy";
  return {files, box_json(gradcam::localize(up, gradcam::LocalizeOptions().threshold(run.a.threshold)).front().box, g)};
}

/// Writes an input gradient's picture and values under `base`; the box is Grad-CAM's (`lm`).
std::pair<json, json> write_gradient(const ExplainRun& run, const at::Tensor& grad, const gradcam::LayerMap& lm,
                                     int64_t n, const LoadedImage& im, const std::string& base) {
  json files = json::object();
  gradcam::save_image(base + ".png", gradcam::rgb_to_mat(gradcam::guided_to_display(grad)));
  files["guided"] = base + ".png";
  gradcam::save_npy(base + ".npy", grad);
  files["gradients"] = base + ".npy";
  const gradcam::Geometry& g = im.geometry;
  const at::Tensor up = gradcam::upsample(lm.map[n][0], {g.input_height, g.input_width});
  return {files, box_json(gradcam::localize(up, gradcam::LocalizeOptions().threshold(run.a.threshold)).front().box, g)};
}

/// The files and box of one method for image `n` at one rank and output layer.
std::pair<json, json> explain_method(const ExplainRun& run, const gradcam::GradCAMResult& r,
                                     const gradcam::GradCAMResult& rd, const std::string& method,
                                     const std::string& out_layer, int64_t rank, const LoadedImage& im, int64_t n,
                                     const at::Tensor& x, const std::string& base) {
  // Grad-CAM of this layer (fused output: of the first layer) for counterfactual, guided, boxes
  const gradcam::LayerMap& lm = r.get(run.a.fuse.empty() ? out_layer : run.cam->layers().front(), rank, 0);
  if (is_cam_method(method)) return write_map(run, cam_map(run, r, method, out_layer, rank, n, x), im, base);
  if (method == "counterfactual") return write_map(run, at::relu(-lm.map_signed[n][0]), im, base);
  at::Tensor grad;
  if (method == "guided") grad = r.guided.at(static_cast<size_t>(rank))[n];
  if (method == "guided-gradcam") grad = lm.guided_gradcam[n];
  if (method == "deconvnet") grad = rd.guided.at(static_cast<size_t>(rank))[n];
  if (method == "deconvnet-gradcam") grad = rd.get(lm.layer, rank, 0).guided_gradcam[n];
  return write_gradient(run, grad, lm, n, im, base);
}

/// Writes the files of image `n` of a batch, named from `stem` (every rank, output layer and
/// method), and returns its records. Runs on a writer thread: reads `run`, changes nothing in it.
std::vector<json> explain_image(const ExplainRun& run, const gradcam::GradCAMResult& r,
                                const gradcam::GradCAMResult& rd, const at::Tensor& probs, const LoadedImage& im,
                                int64_t n, const at::Tensor& x, const std::string& stem) {
  const ExplainArgs& a = run.a;
  if (a.detection.on()) {
    const BoxWriter w{a.detection, run.out_layers, a.methods, run.labels, a.out, run.colormap, a.alpha};
    return explain_boxes(w, r, im, n, stem);
  }
  std::vector<json> records;
  for (int64_t rank = 0; rank < r.classes.size(1); ++rank) {
    const int64_t cls = r.classes[n][rank].item<int64_t>();
    for (const std::string& out_layer : run.out_layers) {
      for (const std::string& method : a.methods) {
        std::string suffix = run.out_layers.size() > 1 || !a.fuse.empty() ? "_" + out_layer : std::string();
        std::replace(suffix.begin(), suffix.end(), '%', '_');
        const std::string base = (fs::path(a.out) / (stem + "_c" + std::to_string(cls) + "_" + method + suffix)).string();
        const auto [files, box] = explain_method(run, r, rd, method, out_layer, rank, im, n, x, base);
        records.push_back({{"image", im.path}, {"class", cls}, {"label", run.labels.name(cls)}, {"rank", rank},
                   {"score", r.scores[n][rank].item<double>()},
                   {"prob", probs.defined() ? json(probs[n][cls].item<double>()) : json(nullptr)},
                   {"layer", a.fuse.empty() ? out_layer : "fused:" + a.fuse},
                   {"layout", a.fuse.empty() ? layout_json(r.get(out_layer, rank).layout) : json(nullptr)},
                   {"method", method}, {"box", box}, {"files", files}});
      }
    }
  }
  return records;
}

/// Writes a batch's files and records, image by image (the records of every image written so
/// far survive a failure); returns how many images were skipped. `stems[n]` is empty for an image
/// whose maps are not finite (`why[n]` says why). (Writing images on several threads at once was
/// slower on 2 cores: they compete with the network's threads.)
size_t write_batch(ExplainRun& run, const ImageBatch& batch, const gradcam::GradCAMResult& r,
                   const gradcam::GradCAMResult& rd, const at::Tensor& probs, const at::Tensor& x,
                   const std::vector<std::string>& stems, const std::vector<std::string>& why) {
  size_t skipped = 0;
  for (size_t n = 0; n < batch.images.size(); ++n) {
    const LoadedImage& im = batch.images[n];
    if (!why[n].empty()) {
      say() << "skipping " << im.path << ": " << why[n] << "\n";
      run.write({{"image", im.path}, {"error", why[n]}});
      ++skipped;
      continue;
    }
    for (const auto& rec : explain_image(run, r, rd, probs, im, static_cast<int64_t>(n), x, stems[n])) run.write(rec);
  }
  return skipped;
}

/// Explains the images of one batch, or names them as skipped when the network refuses the batch.
void explain_batch(ExplainRun& run, const ImageBatch& batch, Progress& progress) {
  const at::Tensor x = batch.inputs(run.device);
  gradcam::GradCAMResult r, rd;
  try {
    r = run.cam->compute(x, run.target);
    if (run.deconv) rd = run.deconv->compute(x, run.target);
  } catch (const gradcam::detection::NoDetection& e) {  // explained: nothing above the threshold
    run.finish_writing(progress);
    for (const auto& im : batch.images) {
      run.write({{"image", im.path}, {"task", "detection"}, {"boxes", 0}, {"note", e.what()}});
    }
    run.done += batch.images.size();
    progress.update(run.done);
    return;
  } catch (const gradcam::Error& e) {
    // A batch holds images of one shape: an input the network cannot take (a 1x1 image) fails
    // the batch. Skip and name them, and go on. The same error on the first batches, before any
    // success, comes from the settings, not the images: stop with it.
    run.finish_writing(progress);
    run.rejected.note(e.what(), run.done == run.failed);
    for (const auto& im : batch.images) say() << "skipping " << im.path << ": " << for_the_command(e.what()) << "\n";
    run.failed += batch.images.size();
    run.done += batch.images.size();
    progress.update(run.done);
    return;
  }
  run.finish_writing(progress);
  if (!run.checked) {
    if (r.logits.defined()) check_label_count(run.labels, run.a.common.labels, r.logits.size(1));
    check_map_has_extent(run.module, r, x);
    if ((wants(run.a, "guided", "guided-gradcam") || run.deconv) && r.replaced_activations + rd.replaced_activations == 0) {
      std::string kinds;
      for (const auto& k : r.untouched_activations.empty() ? rd.untouched_activations : r.untouched_activations) {
        kinds += (kinds.empty() ? "" : ", ") + k;
      }
      say() << "warning: guided: the model has no ReLU" << (kinds.empty() ? "" : " (it uses " + kinds + ")")
            << ", so guided and deconvnet gradients are its plain input gradients (docs/guided.md)\n";
    }
    run.checked = true;
  }
  const at::Tensor probs = r.logits.defined() ? at::softmax(r.logits.to(at::kFloat), 1).cpu() : at::Tensor();
  // stems here, in order, so that names do not depend on which writer thread comes first
  std::vector<std::string> stems(batch.images.size()), why(batch.images.size());
  for (size_t n = 0; n < batch.images.size(); ++n) {
    why[n] = nonfinite_reason(r, static_cast<int64_t>(n));
    if (!why[n].empty()) continue;
    stems[n] = fs::path(batch.images[n].path).stem().string();
    if (int k = run.stems[stems[n]]++; k > 0) stems[n] += "_" + std::to_string(k);
  }
  run.writing_images = batch.images.size();
  run.writing = run.writer.submit([&run, batch, r, rd, probs, x, stems, why] {
    return write_batch(run, batch, r, rd, probs, x, stems, why);
  });
}

int run_explain(const ExplainArgs& a) {
  ExplainRun run(a);
  std::set<std::string> methods(a.methods.begin(), a.methods.end());
  GRADCAM_CHECK(methods.size() == a.methods.size(), "a --method is listed twice");
  const std::vector<std::string> images = explain_inputs(a);
  run.make_explainers(images.empty() ? std::string() : images.front());
  const OutputLock lock(a.out);

  InterruptGuard interrupt_guard;
  Progress progress(images.size(), !a.common.quiet);
  for_each_batch(images, a.common, "skipping ", run.failed, run.done, progress,
                 [&](const ImageBatch& batch) { explain_batch(run, batch, progress); });
  run.finish_writing(progress);
  if (!a.json_lines && !a.common.quiet) {
    std::string names;
    for (const auto& l : run.cam->layers()) names += (names.empty() ? "'" : ", '") + l + "'";
    std::cerr << "gradcam: explained " << (run.done - run.failed) << " image(s) at layer " << names << " "
              << progress.rate_str(run.done - run.failed) << "; wrote " << a.out << "\n";
  }
  if (g_interrupted) {
    std::cerr << "gradcam: interrupted after " << run.done << " of " << images.size() << " image(s); "
              << run.records.path() << " has the records of every image done\n";
    return 130;
  }
  run.rejected.at_end(run.done == run.failed);
  if (run.failed > 0) {
    std::cerr << "gradcam: " << run.failed << " image(s) could not be read or explained\n";
    return 1;
  }
  return 0;
}

}  // namespace

Subcommand add_explain(CLI::App* explain) {
  auto ex = std::make_shared<ExplainArgs>();
  add_common(explain, ex->common);
  add_shard(explain, ex->common.shard);
  add_cam_smoothing(explain, ex->common);
  explain->add_option("--image", ex->images, "image file(s)")->expected(1, -1);
  explain->add_option("--images", ex->images_dir, "a folder of images");
  auto* cls = explain->add_option("--class", ex->classes, "class index to explain (one for all images, or one per image)")->expected(1, -1)->check(whole_number(0, std::numeric_limits<long long>::max()));
  auto* topk = explain->add_option("--topk", ex->topk, "explain the K best classes of each image")->check(whole_number(1))->excludes(cls);
  explain->add_option("--finer", ex->finer, "Finer-CAM: explain the class against the K classes whose scores are "
                      "nearest to it (0: off)")->check(whole_number(0))->excludes(topk)->capture_default_str();
  explain->add_option("--finer-alpha", ex->finer_alpha, "Finer-CAM: the weight of the reference classes' scores")
      ->check(real_number(0, 1e6))->capture_default_str();
  std::vector<std::string> explain_methods = cam_method_names();
  for (const char* m : {"counterfactual", "guided", "deconvnet", "guided-gradcam", "deconvnet-gradcam"}) explain_methods.emplace_back(m);
  explain->add_option("--method", ex->methods, "gradcam, gradcam++, xgradcam, hirescam, layercam, scorecam, ablationcam, eigencam, eigengradcam, kpcacam, gradcamelementwise, randomcam, sscam, iscam, smoothgradcam++, shapleycam, fullgrad, cam, rollout, counterfactual, guided, deconvnet, guided-gradcam, deconvnet-gradcam (several allowed)")
      ->expected(1, -1)
      ->check(CLI::IsMember(explain_methods))
      ->capture_default_str();
  explain->add_option("--layers", ex->layers, "several target layers (instead of --layer): one map each, or one fused map with --fuse")->expected(1, -1);
  explain->add_option("--fuse", ex->fuse, "combine the normalised maps of the --layers: mean or max")->check(CLI::IsMember({"mean", "max"}));
  explain->add_option("--perturbation-batch", ex->perturbation_batch, "scorecam, sscam, iscam, ablationcam: perturbed images per forward pass (0: 32, or with GRADCAM_MALLOC=default the library's default: 1 on the CPU, 32 on a GPU)")
      ->check(whole_number(1))->capture_default_str();
  explain->add_option("--colormap", ex->colormap, "heatmap colours")->check(CLI::IsMember(gradcam::colormap_names()))->capture_default_str();
  explain->add_option("--alpha", ex->alpha, "heatmap opacity over the image")->check(real_number(0, 1))->capture_default_str();
  explain->add_option("--out", ex->out, "output folder")->capture_default_str();
  explain->add_flag("--json", ex->json_lines, "print one JSON record per image, class and method on stdout");
  explain->add_option("--threshold", ex->threshold, "localization box: keep map values >= threshold * max")
      ->check(real_number(0, 1))->capture_default_str();
  add_detection_flags(explain, ex->detection);
  return {&ex->common, [ex, explain] {
            prepare_detection(*explain, ex->detection, ex->common, ex->methods);
            return run_explain(*ex);
          }};
}

}  // namespace gradcam_cli
