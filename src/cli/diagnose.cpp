// src/cli/diagnose.cpp: `gradcam diagnose`: the misclassified images of a labelled set, each with
// panels of the predicted and the true class (image | Grad-CAM | Guided Grad-CAM), an offline
// HTML report (confusions, worst first) and a JSON summary.
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

#include "batches.hpp"
#include "commands.hpp"
#include "common.hpp"
#include "diagnose.hpp"
#include "image_sets.hpp"
#include "shard.hpp"

namespace gradcam_cli {

using json = nlohmann::json;

namespace {

struct DiagnoseArgs {
  Common common;
  std::string annotations;
  std::string images_dir;
  std::string out = "diagnose_out";
  double alpha = 0.5;
  int panel_height = 192;
  int limit = 0;
};

/// One `diagnose` run: its model, explainer, labelled images, and what it found so far.
struct DiagnoseRun {
  const DiagnoseArgs& a;
  c10::Device device;
  torch::jit::Module module;
  std::vector<Item> items;
  gradcam::Labels labels;
  std::vector<int64_t> truth;  // per item
  std::unique_ptr<gradcam::GradCAM> cam;
  gradcam::ScoreModel model;
  int colormap;
  std::map<std::string, int> stems;
  size_t done = 0;
  Diagnosis found;

  explicit DiagnoseRun(const DiagnoseArgs& args)
      : a(args), device(a.common.device), module(gradcam::load_model(a.common.model, device)),
        items(read_set(a.annotations, a.images_dir, true)) {
    if (a.limit > 0 && items.size() > static_cast<size_t>(a.limit)) items.resize(static_cast<size_t>(a.limit));
    const Shard shard = parse_shard(a.common.shard);
    items = take_shard(items, shard, [&](const Item& it) { return shard_key(it.path, a.images_dir); });
    found.settings = {{"annotations", a.annotations}, {"images_folder", a.images_dir}};
    if (shard.on()) found.settings["shard"] = shard.str();
    if (!a.common.labels.empty()) labels = gradcam::Labels::read(a.common.labels);
    truth = resolve_labels(items, labels, a.common.labels, a.annotations.empty());
  }

  /// After the output folders exist and are locked: the explainer.
  void make_explainer() {
    cam = std::make_unique<gradcam::GradCAM>(module, cam_options(a.common, {a.common.layer}).guided(gradcam::GuidedMode::guided));
    model = gradcam::score_model(module);
    colormap = gradcam::colormap_from_name("jet");
    found.model = a.common.model;
    found.layer = cam->layers().front();
    found.name_of = [this](int64_t c) { return labels.size() ? labels.name(c) : std::to_string(c); };
  }
};

/// The Grad-CAM overlay of row `w` of `r` over image `im`.
cv::Mat heat(const DiagnoseRun& run, const gradcam::GradCAMResult& r, int64_t w, const LoadedImage& im) {
  return gradcam::overlay(im.image, gradcam::map_to_image(r.maps.front().map[w][0], im.geometry), run.colormap, run.a.alpha);
}

/// The Guided Grad-CAM of row `w` of `r`, drawn where the input region lies in image `im`.
cv::Mat guided(const gradcam::GradCAMResult& r, int64_t w, const LoadedImage& im) {
  const cv::Mat g = gradcam::rgb_to_mat(gradcam::guided_to_display(r.maps.front().guided_gradcam[w]));
  cv::Mat full(im.image.size(), im.image.type(), cv::Scalar(0, 0, 0));
  const gradcam::Geometry& geo = im.geometry;
  const auto box = geo.to_image({0, 0, geo.input_width - 1, geo.input_height - 1});
  cv::Mat dst = full(cv::Rect(box.x0, box.y0, box.x1 - box.x0 + 1, box.y1 - box.y0 + 1));
  cv::resize(g, dst, dst.size());
  return full;
}

/// Writes the panel and thumbnail of mistake `m` (row `w` of the predicted- and true-class results).
void write_mistake(DiagnoseRun& run, Mistake m, const gradcam::GradCAMResult& rp, const gradcam::GradCAMResult& rt,
                   int64_t w, const LoadedImage& im) {
  const std::string stem = unique_stem(im.path, run.stems);
  m.panel = "panels/" + stem + ".png";
  m.thumb = "thumbs/" + stem + ".png";
  const cv::Mat panel = gradcam::panel(
      {im.image, heat(run, rp, w, im), guided(rp, w, im), heat(run, rt, w, im), guided(rt, w, im)},
      {"image", "pred " + run.found.name_of(m.predicted) + " p=" + fmt(m.p_pred, 2), "guided, pred",
       "true " + run.found.name_of(m.truth) + " p=" + fmt(m.p_true, 2), "guided, true"},
      run.a.panel_height);
  gradcam::save_image((fs::path(run.a.out) / m.panel).string(), panel);
  cv::Mat thumb;
  const cv::Mat small = heat(run, rp, w, im);
  cv::resize(small, thumb, cv::Size(std::max(1, 96 * small.cols / std::max(1, small.rows)), 96), 0, 0, cv::INTER_AREA);
  gradcam::save_image((fs::path(run.a.out) / m.thumb).string(), thumb);
  run.found.mistakes.push_back(std::move(m));
}

/// Explains the misclassified rows `wrong` of a batch, for the predicted and the true class.
void explain_mistakes(DiagnoseRun& run, const ImageBatch& batch, const at::Tensor& x, const std::vector<int64_t>& wrong,
                      const at::Tensor& pred, const at::Tensor& probs) {
  const at::Tensor xw = x.index_select(0, at::tensor(wrong, at::kLong).to(x.device()));
  std::vector<int64_t> pc, tc;
  for (int64_t k : wrong) {
    pc.push_back(pred[k].item<int64_t>());
    tc.push_back(run.truth[batch.images[static_cast<size_t>(k)].index]);
  }
  const gradcam::GradCAMResult rp = run.cam->compute(xw, gradcam::Target::classes(pc));
  check_map_has_extent(run.module, rp, xw);
  const gradcam::GradCAMResult rt = run.cam->compute(xw, gradcam::Target::classes(tc));
  for (size_t w = 0; w < wrong.size(); ++w) {
    const LoadedImage& im = batch.images[static_cast<size_t>(wrong[w])];
    const Mistake m{im.path, "", "", tc[w], pc[w], probs[wrong[w]][tc[w]].item<double>(),
                    probs[wrong[w]][pc[w]].item<double>()};
    write_mistake(run, m, rp, rt, static_cast<int64_t>(w), im);
  }
}

void diagnose_batch(DiagnoseRun& run, const ImageBatch& batch) {
  const at::Tensor x = batch.inputs(run.device);
  const at::Tensor logits = run.model(x).to(at::kDouble).cpu();
  Diagnosis& d = run.found;
  if (d.num_classes < 0) {
    d.num_classes = logits.size(1);
    check_label_count(run.labels, run.a.common.labels, d.num_classes);
  }
  const at::Tensor probs = at::softmax(logits, 1);
  const at::Tensor pred = logits.argmax(1);
  std::vector<int64_t> wrong;  // rows of this batch
  for (size_t k = 0; k < batch.images.size(); ++k) {
    const auto row = static_cast<int64_t>(k);
    const LoadedImage& im = batch.images[k];
    const int64_t t = run.truth[im.index];
    GRADCAM_CHECK(t < d.num_classes, "class ", t, " of ", im.path, " is out of range: the model has ", d.num_classes,
                  " classes");
    if (!at::isfinite(logits[row]).all().item<bool>()) {
      say() << "skipping " << im.path << ": the model's output for it is NaN or infinite, so there is no prediction\n";
      ++d.unreadable;
      continue;
    }
    const int64_t p = pred[row].item<int64_t>();
    ++d.confusion[{t, p}];
    if (p == t) {
      ++d.correct;
    } else {
      wrong.push_back(row);
    }
  }
  if (!wrong.empty()) explain_mistakes(run, batch, x, wrong, pred, probs);
  run.done += batch.images.size();
}

int run_diagnose(const DiagnoseArgs& a) {
  DiagnoseRun run(a);
  make_dir(a.out);
  make_dir((fs::path(a.out) / "panels").string());
  make_dir((fs::path(a.out) / "thumbs").string());
  const OutputLock lock(a.out);  // a second diagnose into this folder would mix its panels in
  run.make_explainer();
  Diagnosis& d = run.found;
  Progress progress(run.items.size(), !a.common.quiet);
  std::vector<std::string> paths;
  for (const auto& it : run.items) paths.push_back(it.path);
  for_each_batch(paths, a.common, "skipping unreadable image ", d.unreadable, run.done, progress,
                 [&](const ImageBatch& batch) { diagnose_batch(run, batch); });
  rank_confusions(d);
  d.evaluated = run.done - d.unreadable;
  write_atomically((fs::path(a.out) / "summary.json").string(), summary_json(d).dump(2) + "\n");
  write_atomically((fs::path(a.out) / "index.html").string(), diagnose_html(d));
  std::printf("%zu images, %zu correct (%.1f%%), %zu mistakes; report: %s\n", d.evaluated, d.correct,
              100.0 * static_cast<double>(d.correct) / static_cast<double>(std::max<size_t>(d.evaluated, 1)),
              d.mistakes.size(), (fs::path(a.out) / "index.html").string().c_str());
  for (size_t i = 0; i < d.pairs.size() && i < 5; ++i) {
    const auto& [n, t, p] = d.pairs[i];
    std::printf("  %s -> %s: %lld\n", d.name_of(t).c_str(), d.name_of(p).c_str(), static_cast<long long>(n));
  }
  return d.unreadable > 0 ? 1 : 0;
}

}  // namespace

Subcommand add_diagnose(CLI::App* d) {
  auto da = std::make_shared<DiagnoseArgs>();
  add_common(d, da->common);
  d->add_option("--annotations", da->annotations, "CSV file,label,... or a folder of VOC/ImageNet XML files");
  d->add_option("--images", da->images_dir, "a folder with one sub-folder of images per class (name or index), or the "
                                           "images of XML annotations");
  d->add_option("--out", da->out, "output folder (index.html, summary.json, panels/, thumbs/)")->capture_default_str();
  d->add_option("--alpha", da->alpha, "heatmap opacity")->check(real_number(0, 1))->capture_default_str();
  d->add_option("--panel-height", da->panel_height, "tile height in pixels")->check(whole_number(32, 2048))->capture_default_str();
  d->add_option("--limit", da->limit, "use only the first N images (0: all)")->check(whole_number(0));
  add_shard(d, da->common.shard);
  return {&da->common, [da] { return run_diagnose(*da); }};
}

}  // namespace gradcam_cli
