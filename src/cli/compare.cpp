// src/cli/compare.cpp: `gradcam compare`: two models' Grad-CAM side by side for the same class,
// with their rank correlation and the IoU of their localization boxes.
#include <ATen/ATen.h>
#include <torch/csrc/jit/api/module.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <opencv2/imgproc.hpp>

#include <iomanip>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>

#include <gradcam/gradcam.hpp>

#include "commands.hpp"
#include "common.hpp"
#include "image_sets.hpp"

namespace gradcam_cli {

using json = nlohmann::json;

namespace {

struct CompareArgs {
  Common common;
  std::vector<std::string> models;
  std::string layer_b;
  std::vector<std::string> images;
  std::string images_dir;
  std::string annotations;
  std::string out = "compare_out";
  double threshold = 0.15;
  int panel_height = 192;
};

/// One `compare` run: the two models and explainers, the images, and the sums.
struct CompareRun {
  const CompareArgs& a;
  c10::Device device;
  torch::jit::Module model_a, model_b;
  std::vector<Item> items;
  bool labelled = false;  // every image has a label: explain the true class
  gradcam::Labels labels;
  std::vector<int64_t> truth;
  std::unique_ptr<gradcam::GradCAM> cam_a, cam_b;
  int colormap = 0;
  json rows = json::array();
  std::map<std::string, int> stems;
  double sum_rho = 0, sum_iou = 0;
  size_t compared = 0, skipped = 0, unreadable = 0;

  explicit CompareRun(const CompareArgs& args) : a(args), device(a.common.device) {
    GRADCAM_CHECK(a.models.size() == 2, "compare needs exactly two models (--model A.pt --model B.pt), got ", a.models.size());
    model_a = gradcam::load_model(a.models[0], device);
    model_b = gradcam::load_model(a.models[1], device);
    for (const auto& p : a.images) items.push_back({p, ""});
    if (!a.images_dir.empty() || !a.annotations.empty()) {
      auto more = read_set(a.annotations, a.images_dir, false);
      items.insert(items.end(), more.begin(), more.end());
    }
    GRADCAM_CHECK(!items.empty(), "no images given: use --image PATH, --images DIR or --annotations");
    labelled = std::all_of(items.begin(), items.end(), [](const Item& i) { return !i.label.empty(); });
    if (!a.common.labels.empty()) labels = gradcam::Labels::read(a.common.labels);
    if (labelled) truth = resolve_labels(items, labels, a.common.labels, a.annotations.empty());
  }

  /// After the output folder exists and is locked: the explainers.
  void make_explainers() {
    cam_a = std::make_unique<gradcam::GradCAM>(model_a, cam_options(a.common, {a.common.layer}));
    cam_b = std::make_unique<gradcam::GradCAM>(model_b, cam_options(a.common, {a.layer_b.empty() ? a.common.layer : a.layer_b}));
    colormap = gradcam::colormap_from_name("jet");
  }
  std::string name_of(int64_t c) const { return labels.size() ? labels.name(c) : std::to_string(c); }
};

/// Compares the two models' maps of class `cls` on one image (`ra`, `rb`: their results for it):
/// writes the panel and adds the row.
void add_comparison(CompareRun& run, size_t i, const cv::Mat& img, const gradcam::Geometry& g, int64_t cls,
                    const gradcam::GradCAMResult& ra, const gradcam::GradCAMResult& rb) {
  const std::vector<int64_t> size = {g.input_height, g.input_width};
  const at::Tensor ma = gradcam::upsample(ra.maps.front().map[0][0], size);
  const at::Tensor mb = gradcam::upsample(rb.maps.front().map[0][0], size);
  const double rho = gradcam::spearman(ma.unsqueeze(0), mb.unsqueeze(0))[0].item<double>();
  const auto opts = gradcam::LocalizeOptions().threshold(run.a.threshold);
  const auto ba = gradcam::localize(ma, opts).front().box;
  const auto bb = gradcam::localize(mb, opts).front().box;
  const double iou = ba && bb ? gradcam::iou(*ba, *bb) : 0.0;
  const double pa = at::softmax(ra.logits.to(at::kDouble), 1)[0][cls].item<double>();
  const double pb = at::softmax(rb.logits.to(at::kDouble), 1)[0][cls].item<double>();
  cv::Mat oa = gradcam::overlay(img, gradcam::map_to_image(ma, g), run.colormap, 0.5);
  cv::Mat ob = gradcam::overlay(img, gradcam::map_to_image(mb, g), run.colormap, 0.5);
  const std::string& path = run.items[i].path;
  const std::string panel = "panels/" + unique_stem(path, run.stems) + ".png";
  gradcam::save_image((fs::path(run.a.out) / panel).string(),
                      gradcam::panel({img, oa, ob},
                                     {run.name_of(cls), "A p=" + fmt(pa, 2), "B p=" + fmt(pb, 2) + " rho=" + fmt(rho, 2)},
                                     run.a.panel_height));
  run.rows.push_back({{"image", path}, {"class", cls}, {"label", run.name_of(cls)}, {"p_a", pa}, {"p_b", pb},
                      {"spearman", rho}, {"box_iou", iou}, {"panel", panel}});
  run.sum_rho += rho;
  run.sum_iou += iou;
  ++run.compared;
}

/// By default the true class, kept only where both models are right (the paper's trust study);
/// unlabelled images: model A's prediction.
void compare_image(CompareRun& run, size_t i) {
  cv::Mat img;
  gradcam::Geometry g;
  at::Tensor x;
  const std::string& path = run.items[i].path;
  try {
    img = gradcam::load_image(path, run.a.common.max_pixels);
    x = gradcam::to_tensor(img, preprocess_of(run.a.common), &g).to(run.device);
  } catch (const gradcam::Error& e) {
    say() << "skipping unreadable image " << path << ": " << for_the_command(e.what()) << "\n";
    ++run.unreadable;
    return;
  }
  const gradcam::GradCAMResult ra0 = run.cam_a->compute(x);
  check_map_has_extent(run.model_a, ra0, x);
  const int64_t pred_a = ra0.classes[0][0].item<int64_t>();
  const int64_t cls = run.labelled ? run.truth[i] : pred_a;
  const gradcam::GradCAMResult rb = run.cam_b->compute(x, gradcam::Target::classes({cls}));
  check_map_has_extent(run.model_b, rb, x);
  const std::string why_a = nonfinite_reason(ra0, 0), why_b = nonfinite_reason(rb, 0);
  if (!why_a.empty() || !why_b.empty()) {
    say() << "skipping " << path << ": " << (why_a.empty() ? "model B: " + why_b : "model A: " + why_a) << "\n";
    ++run.unreadable;
    return;
  }
  GRADCAM_CHECK(!run.labelled || cls < ra0.logits.size(1), "class ", cls, " of ", path,
                " is out of range: model A has ", ra0.logits.size(1), " classes");
  const int64_t pred_b = rb.logits.argmax(1)[0].item<int64_t>();
  if (run.labelled && (pred_a != cls || pred_b != cls)) {
    ++run.skipped;
    return;
  }
  const gradcam::GradCAMResult ra = pred_a == cls ? ra0 : run.cam_a->compute(x, gradcam::Target::classes({cls}));
  add_comparison(run, i, img, g, cls, ra, rb);
}

int run_compare(const CompareArgs& a) {
  CompareRun run(a);
  make_dir((fs::path(a.out) / "panels").string());
  const OutputLock lock(a.out);
  run.make_explainers();
  Progress progress(run.items.size(), !a.common.quiet);
  for (size_t i = 0; i < run.items.size(); ++i) {
    progress.update(i + 1);
    compare_image(run, i);
  }
  const double n = static_cast<double>(std::max<size_t>(run.compared, 1));
  json report = {{"model_a", a.models[0]}, {"model_b", a.models[1]}, {"layer_a", run.cam_a->layers().front()},
                 {"layer_b", run.cam_b->layers().front()},
                 {"class", run.labelled ? "true class, both models right" : "model A's prediction"},
                 {"compared", run.compared}, {"skipped_not_both_right", run.skipped}, {"unreadable", run.unreadable},
                 {"mean_spearman", run.sum_rho / n}, {"mean_box_iou", run.sum_iou / n}, {"images", run.rows}};
  write_atomically((fs::path(a.out) / "compare.json").string(), report.dump(2) + "\n");
  std::printf("compared %zu image(s)%s: mean rank correlation %.3f, mean box IoU %.3f; %s\n", run.compared,
              run.labelled ? gradcam::detail::concat(" (", run.skipped, " skipped: not both right)").c_str() : "",
              run.sum_rho / n, run.sum_iou / n, (fs::path(a.out) / "compare.json").string().c_str());
  return run.unreadable > 0 ? 1 : 0;
}

}  // namespace

Subcommand add_compare(CLI::App* c) {
  auto ca = std::make_shared<CompareArgs>();
  add_common(c, ca->common, /*with_model=*/false);
  c->add_option("--model", ca->models, "the two TorchScript models (--model A.pt --model B.pt)")
      ->required()->expected(1)->check(CLI::ExistingFile)->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  c->add_option("--layer-b", ca->layer_b, "the second model's layer (default: --layer)");
  c->add_option("--image", ca->images, "image file(s)")->expected(1, -1);
  c->add_option("--images", ca->images_dir, "a folder of images, or one sub-folder per class (labelled)");
  c->add_option("--annotations", ca->annotations, "CSV or XML annotations: labelled images");
  c->add_option("--out", ca->out, "output folder (compare.json, panels/)")->capture_default_str();
  c->add_option("--threshold", ca->threshold, "localization box threshold (x max)")->check(real_number(0, 1))->capture_default_str();
  c->add_option("--panel-height", ca->panel_height, "tile height in pixels")->check(whole_number(32, 2048))->capture_default_str();
  return {&ca->common, [ca] { return run_compare(*ca); }};
}

}  // namespace gradcam_cli
