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

int run_compare(const CompareArgs& a) {
  GRADCAM_CHECK(a.models.size() == 2, "compare needs exactly two models (--model A.pt --model B.pt), got ", a.models.size());
  const c10::Device device(a.common.device);
  auto model_a = gradcam::load_model(a.models[0], device);
  auto model_b = gradcam::load_model(a.models[1], device);
  std::vector<Item> items;
  for (const auto& p : a.images) items.push_back({p, ""});
  if (!a.images_dir.empty() || !a.annotations.empty()) {
    auto more = read_set(a.annotations, a.images_dir, false);
    items.insert(items.end(), more.begin(), more.end());
  }
  GRADCAM_CHECK(!items.empty(), "no images given: use --image PATH, --images DIR or --annotations");
  const bool labelled = std::all_of(items.begin(), items.end(), [](const Item& i) { return !i.label.empty(); });
  gradcam::Labels labels;
  if (!a.common.labels.empty()) labels = gradcam::Labels::read(a.common.labels);
  std::vector<int64_t> truth;
  if (labelled) truth = resolve_labels(items, labels, a.common.labels, a.annotations.empty());
  make_dir((fs::path(a.out) / "panels").string());
  const OutputLock lock(a.out);

  gradcam::GradCAM cam_a(model_a, gradcam::GradCAMOptions(a.common.layer));
  gradcam::GradCAM cam_b(model_b, gradcam::GradCAMOptions(a.layer_b.empty() ? a.common.layer : a.layer_b));
  const auto pre = preprocess_of(a.common);
  const int colormap = gradcam::colormap_from_name("jet");
  auto name_of = [&](int64_t c) { return labels.size() ? labels.name(c) : std::to_string(c); };

  json rows = json::array();
  std::map<std::string, int> stems;
  double sum_rho = 0, sum_iou = 0;
  size_t compared = 0, skipped = 0, unreadable = 0;
  Progress progress(items.size(), !a.common.quiet);
  for (size_t i = 0; i < items.size(); ++i) {
    progress.update(i + 1);
    cv::Mat img;
    gradcam::Geometry g;
    at::Tensor x;
    try {
      img = gradcam::load_image(items[i].path, a.common.max_pixels);
      x = gradcam::to_tensor(img, pre, &g).to(device);
    } catch (const gradcam::Error& e) {
      say() << "skipping unreadable image " << items[i].path << ": " << for_the_command(e.what()) << "\n";
      ++unreadable;
      continue;
    }
    // By default the true class, kept only where both models are right (the paper's trust study);
    // unlabelled images: model A's prediction.
    const gradcam::GradCAMResult ra0 = cam_a.compute(x);
    check_map_has_extent(model_a, ra0, x);
    const int64_t pred_a = ra0.classes[0][0].item<int64_t>();
    const int64_t cls = labelled ? truth[i] : pred_a;
    const gradcam::GradCAMResult rb = cam_b.compute(x, gradcam::Target::classes({cls}));
    check_map_has_extent(model_b, rb, x);
    const std::string why_a = nonfinite_reason(ra0, 0), why_b = nonfinite_reason(rb, 0);
    if (!why_a.empty() || !why_b.empty()) {
      say() << "skipping " << items[i].path << ": " << (why_a.empty() ? "model B: " + why_b : "model A: " + why_a) << "\n";
      ++unreadable;
      continue;
    }
    GRADCAM_CHECK(!labelled || cls < ra0.logits.size(1), "class ", cls, " of ", items[i].path,
                  " is out of range: model A has ", ra0.logits.size(1), " classes");
    const int64_t pred_b = rb.logits.argmax(1)[0].item<int64_t>();
    if (labelled && (pred_a != cls || pred_b != cls)) {
      ++skipped;
      continue;
    }
    const gradcam::GradCAMResult ra = pred_a == cls ? ra0 : cam_a.compute(x, gradcam::Target::classes({cls}));
    const std::vector<int64_t> size = {g.input_height, g.input_width};
    const at::Tensor ma = gradcam::upsample(ra.maps.front().map[0][0], size);
    const at::Tensor mb = gradcam::upsample(rb.maps.front().map[0][0], size);
    const double rho = gradcam::spearman(ma.unsqueeze(0), mb.unsqueeze(0))[0].item<double>();
    const auto opts = gradcam::LocalizeOptions().threshold(a.threshold);
    const auto ba = gradcam::localize(ma, opts).front().box;
    const auto bb = gradcam::localize(mb, opts).front().box;
    const double iou = ba && bb ? gradcam::iou(*ba, *bb) : 0.0;
    const double pa = at::softmax(ra.logits.to(at::kDouble), 1)[0][cls].item<double>();
    const double pb = at::softmax(rb.logits.to(at::kDouble), 1)[0][cls].item<double>();
    cv::Mat oa = gradcam::overlay(img, gradcam::map_to_image(ma, g), colormap, 0.5);
    cv::Mat ob = gradcam::overlay(img, gradcam::map_to_image(mb, g), colormap, 0.5);
    const std::string stem = unique_stem(items[i].path, stems);
    const std::string panel = "panels/" + stem + ".png";
    gradcam::save_image((fs::path(a.out) / panel).string(),
                        gradcam::panel({img, oa, ob},
                                       {name_of(cls), "A p=" + fmt(pa, 2), "B p=" + fmt(pb, 2) + " rho=" + fmt(rho, 2)},
                                       a.panel_height));
    rows.push_back({{"image", items[i].path}, {"class", cls}, {"label", name_of(cls)}, {"p_a", pa}, {"p_b", pb},
                    {"spearman", rho}, {"box_iou", iou}, {"panel", panel}});
    sum_rho += rho;
    sum_iou += iou;
    ++compared;
  }
  const double n = static_cast<double>(std::max<size_t>(compared, 1));
  json report = {{"model_a", a.models[0]}, {"model_b", a.models[1]}, {"layer_a", cam_a.layers().front()},
                 {"layer_b", cam_b.layers().front()}, {"class", labelled ? "true class, both models right" : "model A's prediction"},
                 {"compared", compared}, {"skipped_not_both_right", skipped}, {"unreadable", unreadable},
                 {"mean_spearman", sum_rho / n}, {"mean_box_iou", sum_iou / n}, {"images", rows}};
  write_atomically((fs::path(a.out) / "compare.json").string(), report.dump(2) + "\n");
  std::printf("compared %zu image(s)%s: mean rank correlation %.3f, mean box IoU %.3f; %s\n", compared,
              labelled ? gradcam::detail::concat(" (", skipped, " skipped: not both right)").c_str() : "", sum_rho / n,
              sum_iou / n, (fs::path(a.out) / "compare.json").string().c_str());
  return unreadable > 0 ? 1 : 0;
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
