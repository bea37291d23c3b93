// src/cli/workflows.cpp: `gradcam diagnose` and `gradcam compare` (see workflows.hpp). Public API only.
#include "workflows.hpp"

#include <ATen/ATen.h>
#include <torch/csrc/jit/api/module.h>

#include <nlohmann/json.hpp>
#include <opencv2/imgproc.hpp>

#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>

namespace gradcam_cli {

using json = nlohmann::json;

namespace {

/// One image of a labelled (or unlabelled) set.
struct Item {
  std::string path;
  std::string label;  // "" when unlabelled
};

/// Images with labels from annotations (CSV / XML), class folders (DIR/<class>/*.png), or, when
/// labels are optional, a flat folder.
std::vector<Item> read_set(const std::string& annotations, const std::string& images_dir, bool need_labels) {
  std::vector<Item> items;
  if (!annotations.empty()) {
    for (const auto& ann : gradcam::read_annotations(annotations, images_dir)) {
      items.push_back({ann.image, ann.objects.front().label});
    }
    return items;
  }
  GRADCAM_CHECK(!images_dir.empty(), "give --annotations FILE|DIR or --images DIR (one folder per class)");
  std::error_code ec;
  GRADCAM_CHECK(fs::is_directory(images_dir, ec), "--images '", images_dir, "' is not a directory");
  std::vector<std::string> classes;
  for (const auto& e : fs::directory_iterator(images_dir, ec)) {
    if (e.is_directory()) classes.push_back(e.path().filename().string());
  }
  std::sort(classes.begin(), classes.end());
  if (classes.empty()) {
    GRADCAM_CHECK(!need_labels, "--images '", images_dir, "' has no class folders: put each class's images in "
                  "DIR/<class name or index>/, or give --annotations");
    for (const auto& p : list_images(images_dir)) items.push_back({p, ""});
    return items;
  }
  for (const auto& c : classes) {
    for (const auto& p : list_images_or_empty((fs::path(images_dir) / c).string())) items.push_back({p, c});
  }
  GRADCAM_CHECK(!items.empty(), "the class folders of '", images_dir, "' contain no images");
  return items;
}

/// Class index of every item's label; throws naming the unknown label / folder and the choices.
std::vector<int64_t> resolve_labels(const std::vector<Item>& items, const gradcam::Labels& labels,
                                    const std::string& labels_path, bool folders) {
  std::vector<int64_t> out;
  std::map<std::string, int64_t> seen;
  for (const auto& it : items) {
    auto f = seen.find(it.label);
    if (f == seen.end()) {
      auto c = labels.index(it.label);
      if (!c) {
        std::string known;
        for (size_t i = 0; i < labels.size() && i < 12; ++i) known += (i ? ", " : "") + labels.name(static_cast<int64_t>(i));
        if (labels.size() > 12) known += ", ...";
        gradcam::fail(gradcam::detail::concat(
            folders ? "class folder '" : "label '", it.label, "' (", it.path, ") is not ",
            labels_path.empty() ? "a class index (give --labels FILE to use class names)"
                                : "in the labels file '" + labels_path + "' (its classes: " + known + ")"));
      }
      f = seen.emplace(it.label, *c).first;
    }
    out.push_back(f->second);
  }
  return out;
}

std::string html_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}

/// A path relative to the report folder, usable as a URL (percent-encodes what needs it).
std::string url(const std::string& rel) {
  std::ostringstream o;
  for (unsigned char c : rel) {
    if (std::isalnum(c) || c == '/' || c == '.' || c == '_' || c == '-') {
      o << c;
    } else {
      o << '%' << std::uppercase << std::hex << std::setw(2) << std::setfill('0') << static_cast<int>(c) << std::dec;
    }
  }
  return o.str();
}

std::string fmt(double v, int prec = 3) {
  std::ostringstream o;
  o << std::fixed << std::setprecision(prec) << v;
  return o.str();
}

void make_dir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  GRADCAM_CHECK(fs::is_directory(dir, ec), "cannot create output directory '", dir, "'");
}

/// A unique file stem per image (same names in different folders get a suffix).
std::string unique_stem(const std::string& path, std::map<std::string, int>& used) {
  std::string stem = fs::path(path).stem().string();
  for (auto& c : stem) {
    if (c == '/' || c == '\\' || c == '%' || c == '#' || c == '?') c = '_';
  }
  if (int k = used[stem]++; k > 0) stem += "_" + std::to_string(k);
  return stem;
}

}  // namespace

CLI::App* add_diagnose(CLI::App& app, DiagnoseArgs& a) {
  auto* d = app.add_subcommand("diagnose", "find misclassified images and explain them: panels of the predicted and the "
                                           "true class, an HTML report and a JSON summary");
  add_common(d, a.common);
  d->add_option("--annotations", a.annotations, "CSV file,label,... or a folder of VOC/ImageNet XML files");
  d->add_option("--images", a.images_dir, "a folder with one sub-folder of images per class (name or index), or the "
                                          "images of XML annotations");
  d->add_option("--out", a.out, "output folder (index.html, summary.json, panels/, thumbs/)")->capture_default_str();
  d->add_option("--alpha", a.alpha, "heatmap opacity")->check(real_number(0, 1))->capture_default_str();
  d->add_option("--panel-height", a.panel_height, "tile height in pixels")->check(whole_number(32, 2048))->capture_default_str();
  d->add_option("--limit", a.limit, "use only the first N images (0: all)")->check(whole_number(0));
  return d;
}

int run_diagnose(const DiagnoseArgs& a) {
  const c10::Device device(a.common.device);
  auto module = gradcam::load_model(a.common.model, device);
  std::vector<Item> items = read_set(a.annotations, a.images_dir, true);
  if (a.limit > 0 && items.size() > static_cast<size_t>(a.limit)) items.resize(static_cast<size_t>(a.limit));
  gradcam::Labels labels;
  if (!a.common.labels.empty()) labels = gradcam::Labels::read(a.common.labels);
  const std::vector<int64_t> truth = resolve_labels(items, labels, a.common.labels, a.annotations.empty());
  make_dir(a.out);
  make_dir((fs::path(a.out) / "panels").string());
  make_dir((fs::path(a.out) / "thumbs").string());
  const OutputLock lock(a.out);  // a second diagnose into this folder would mix its panels in

  gradcam::GradCAM cam(module, gradcam::GradCAMOptions(a.common.layer).guided(gradcam::GuidedMode::guided));
  const std::string layer = cam.layers().front();
  const gradcam::ScoreModel model = gradcam::score_model(module);
  const auto pre = preprocess_of(a.common);
  const int colormap = gradcam::colormap_from_name("jet");
  auto name_of = [&](int64_t c) { return labels.size() ? labels.name(c) : std::to_string(c); };

  struct Mistake {
    std::string image, panel, thumb;
    int64_t truth, predicted;
    double p_true, p_pred;
  };
  std::vector<Mistake> mistakes;  // small records only: images and maps are not kept
  std::map<std::pair<int64_t, int64_t>, int64_t> confusion;
  std::map<std::string, int> stems;
  size_t done = 0, unreadable = 0, correct = 0;
  int64_t num_classes = -1;
  Progress progress(items.size(), !a.common.quiet);
  for (size_t start = 0; start < items.size();) {
    std::vector<cv::Mat> originals;
    std::vector<gradcam::Geometry> geoms;
    std::vector<at::Tensor> xs;
    std::vector<size_t> index;
    size_t i = start;
    for (; i < items.size() && static_cast<int>(xs.size()) < a.common.batch; ++i) {
      try {
        gradcam::Geometry g;
        cv::Mat img = gradcam::load_image(items[i].path, a.common.max_pixels);
        at::Tensor t = gradcam::to_tensor(img, pre, &g);
        if (!xs.empty() && t.sizes() != xs.front().sizes()) break;
        originals.push_back(img);
        geoms.push_back(g);
        xs.push_back(t);
        index.push_back(i);
      } catch (const gradcam::Error& e) {
        say() << "skipping unreadable image " << items[i].path << ": " << for_the_command(e.what()) << "\n";
        ++unreadable;
        ++done;
      }
    }
    start = i;
    if (xs.empty()) continue;
    const at::Tensor x = at::cat(xs, 0).to(device);
    const at::Tensor logits = model(x).to(at::kDouble).cpu();
    if (num_classes < 0) {
      num_classes = logits.size(1);
      GRADCAM_CHECK(labels.size() == 0 || static_cast<int64_t>(labels.size()) == num_classes, "labels file '",
                    a.common.labels, "' has ", labels.size(), " names but the model has ", num_classes, " classes");
    }
    const at::Tensor probs = at::softmax(logits, 1);
    const at::Tensor pred = logits.argmax(1);
    std::vector<int64_t> wrong;  // rows of this batch
    for (size_t k = 0; k < index.size(); ++k) {
      const int64_t t = truth[index[k]];
      GRADCAM_CHECK(t < num_classes, "class ", t, " of ", items[index[k]].path, " is out of range: the model has ",
                    num_classes, " classes");
      if (!at::isfinite(logits[static_cast<int64_t>(k)]).all().item<bool>()) {
        say() << "skipping " << items[index[k]].path
              << ": the model's output for it is NaN or infinite, so there is no prediction\n";
        ++unreadable;
        continue;
      }
      const int64_t p = pred[static_cast<int64_t>(k)].item<int64_t>();
      ++confusion[{t, p}];
      if (p == t) {
        ++correct;
      } else {
        wrong.push_back(static_cast<int64_t>(k));
      }
    }
    if (!wrong.empty()) {
      const at::Tensor rows = at::tensor(wrong, at::kLong);
      const at::Tensor xw = x.index_select(0, rows.to(x.device()));
      std::vector<int64_t> pc, tc;
      for (int64_t k : wrong) {
        pc.push_back(pred[k].item<int64_t>());
        tc.push_back(truth[index[static_cast<size_t>(k)]]);
      }
      const gradcam::GradCAMResult rp = cam.compute(xw, gradcam::Target::classes(pc));
      check_map_has_extent(module, rp, xw);
      const gradcam::GradCAMResult rt = cam.compute(xw, gradcam::Target::classes(tc));
      for (size_t w = 0; w < wrong.size(); ++w) {
        const auto wi = static_cast<int64_t>(w);
        const auto k = static_cast<size_t>(wrong[w]);
        const Item& it = items[index[k]];
        const cv::Mat& img = originals[k];
        const std::string stem = unique_stem(it.path, stems);
        auto heat = [&](const gradcam::GradCAMResult& r) {
          return gradcam::overlay(img, gradcam::map_to_image(r.maps.front().map[wi][0], geoms[k]), colormap, a.alpha);
        };
        auto guided = [&](const gradcam::GradCAMResult& r) {
          cv::Mat g = gradcam::rgb_to_mat(gradcam::guided_to_display(r.maps.front().guided_gradcam[wi]));
          cv::Mat full(img.size(), img.type(), cv::Scalar(0, 0, 0));  // the input region in the original frame
          const auto box = geoms[k].to_image({0, 0, geoms[k].input_width - 1, geoms[k].input_height - 1});
          cv::Mat dst = full(cv::Rect(box[0], box[1], box[2] - box[0] + 1, box[3] - box[1] + 1));
          cv::resize(g, dst, dst.size());
          return full;
        };
        const double p_pred = probs[static_cast<int64_t>(k)][pc[w]].item<double>();
        const double p_true = probs[static_cast<int64_t>(k)][tc[w]].item<double>();
        const cv::Mat panel = gradcam::panel(
            {img, heat(rp), guided(rp), heat(rt), guided(rt)},
            {"image", "pred " + name_of(pc[w]) + " p=" + fmt(p_pred, 2), "guided, pred",
             "true " + name_of(tc[w]) + " p=" + fmt(p_true, 2), "guided, true"},
            a.panel_height);
        Mistake m{it.path, "panels/" + stem + ".png", "thumbs/" + stem + ".png", tc[w], pc[w], p_true, p_pred};
        gradcam::save_image((fs::path(a.out) / m.panel).string(), panel);
        cv::Mat thumb;
        const cv::Mat small = heat(rp);
        cv::resize(small, thumb, cv::Size(std::max(1, 96 * small.cols / std::max(1, small.rows)), 96), 0, 0, cv::INTER_AREA);
        gradcam::save_image((fs::path(a.out) / m.thumb).string(), thumb);
        mistakes.push_back(std::move(m));
      }
    }
    done += xs.size();
    progress.update(done);
  }

  // Confusions, worst (most frequent) first; mistakes grouped by confusion in that order.
  std::vector<std::tuple<int64_t, int64_t, int64_t>> pairs;  // count, true, predicted
  for (const auto& [tp, n] : confusion)
    if (tp.first != tp.second) pairs.emplace_back(n, tp.first, tp.second);
  std::sort(pairs.begin(), pairs.end(), [](const auto& l, const auto& r) {
    if (std::get<0>(l) != std::get<0>(r)) return std::get<0>(l) > std::get<0>(r);
    return std::make_pair(std::get<1>(l), std::get<2>(l)) < std::make_pair(std::get<1>(r), std::get<2>(r));
  });
  std::map<std::pair<int64_t, int64_t>, size_t> rank;
  for (size_t i = 0; i < pairs.size(); ++i) rank[{std::get<1>(pairs[i]), std::get<2>(pairs[i])}] = i;
  std::stable_sort(mistakes.begin(), mistakes.end(), [&](const Mistake& l, const Mistake& r) {
    const size_t a1 = rank[{l.truth, l.predicted}], b1 = rank[{r.truth, r.predicted}];
    if (a1 != b1) return a1 < b1;
    return l.p_pred > r.p_pred;
  });
  const size_t evaluated = done - unreadable;

  json summary = {{"model", a.common.model}, {"layer", layer}, {"images", evaluated}, {"unreadable", unreadable},
                  {"correct", correct}, {"accuracy", evaluated ? static_cast<double>(correct) / static_cast<double>(evaluated) : 0.0},
                  {"mistakes", json::array()}, {"confusions", json::array()}};
  for (const auto& m : mistakes) {
    summary["mistakes"].push_back({{"image", m.image}, {"true", m.truth}, {"true_label", name_of(m.truth)},
                                   {"predicted", m.predicted}, {"predicted_label", name_of(m.predicted)},
                                   {"p_true", m.p_true}, {"p_predicted", m.p_pred}, {"panel", m.panel}, {"thumbnail", m.thumb}});
  }
  for (const auto& [n, t, p] : pairs) {
    summary["confusions"].push_back({{"true", t}, {"true_label", name_of(t)}, {"predicted", p},
                                     {"predicted_label", name_of(p)}, {"count", n}});
  }
  write_atomically((fs::path(a.out) / "summary.json").string(), summary.dump(2) + "\n");

  std::ostringstream h;
  h << "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>gradcam diagnose</title>\n<style>"
       "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;"
       "text-align:right}.z{color:#bbb}.m{display:inline-block;margin:4px;text-align:center;font-size:12px}"
       ".m img{display:block}h2{margin-top:1.5em}</style></head><body>\n";
  h << "<h1>Misclassified images</h1>\n<p>Model <code>" << html_escape(a.common.model) << "</code>, layer <code>"
    << html_escape(layer) << "</code>: " << evaluated << " images, " << correct << " correct ("
    << fmt(100.0 * static_cast<double>(correct) / static_cast<double>(std::max<size_t>(evaluated, 1)), 1) << "%), "
    << mistakes.size() << " mistakes" << (unreadable ? ", " + std::to_string(unreadable) + " unreadable" : "")
    << ". Each panel: the image, Grad-CAM and Guided Grad-CAM for the predicted class, then for the true class.</p>\n";
  h << "<h2>Worst confusions</h2>\n<table><tr><th>true</th><th>predicted as</th><th>images</th></tr>\n";
  for (const auto& [n, t, p] : pairs) {
    h << "<tr><td><a href=\"#c" << t << "_" << p << "\">" << html_escape(name_of(t)) << "</a></td><td>"
      << html_escape(name_of(p)) << "</td><td>" << n << "</td></tr>\n";
  }
  h << "</table>\n";
  if (num_classes > 0 && num_classes <= 40) {
    h << "<h2>Confusion matrix</h2>\n<table><tr><th>true \\ predicted</th>";
    for (int64_t p = 0; p < num_classes; ++p) h << "<th>" << html_escape(name_of(p)) << "</th>";
    h << "</tr>\n";
    for (int64_t t = 0; t < num_classes; ++t) {
      h << "<tr><th>" << html_escape(name_of(t)) << "</th>";
      for (int64_t p = 0; p < num_classes; ++p) {
        auto f = confusion.find({t, p});
        const int64_t n = f == confusion.end() ? 0 : f->second;
        h << "<td" << (n == 0 ? " class=\"z\"" : "") << ">" << n << "</td>";
      }
      h << "</tr>\n";
    }
    h << "</table>\n";
  }
  std::pair<int64_t, int64_t> group{-1, -1};
  for (const auto& m : mistakes) {
    if (std::make_pair(m.truth, m.predicted) != group) {
      group = {m.truth, m.predicted};
      h << "<h2 id=\"c" << m.truth << "_" << m.predicted << "\">" << html_escape(name_of(m.truth)) << " predicted as "
        << html_escape(name_of(m.predicted)) << "</h2>\n";
    }
    h << "<div class=\"m\"><a href=\"" << url(m.panel) << "\"><img src=\"" << url(m.thumb) << "\" alt=\""
      << html_escape(fs::path(m.image).filename().string()) << "\"></a>" << html_escape(fs::path(m.image).filename().string())
      << "<br>p=" << fmt(m.p_pred, 2) << " vs " << fmt(m.p_true, 2) << "</div>\n";
  }
  h << "</body></html>\n";
  write_atomically((fs::path(a.out) / "index.html").string(), h.str());

  std::printf("%zu images, %zu correct (%.1f%%), %zu mistakes; report: %s\n", evaluated, correct,
              100.0 * static_cast<double>(correct) / static_cast<double>(std::max<size_t>(evaluated, 1)), mistakes.size(),
              (fs::path(a.out) / "index.html").string().c_str());
  for (size_t i = 0; i < pairs.size() && i < 5; ++i) {
    const auto& [n, t, p] = pairs[i];
    std::printf("  %s -> %s: %lld\n", name_of(t).c_str(), name_of(p).c_str(), static_cast<long long>(n));
  }
  return unreadable > 0 ? 1 : 0;
}

CLI::App* add_compare(CLI::App& app, CompareArgs& a) {
  auto* c = app.add_subcommand("compare", "two models' Grad-CAM side by side for the same class, with their rank "
                                          "correlation and the IoU of their localization boxes");
  add_common(c, a.common, /*with_model=*/false);
  c->add_option("--model", a.models, "the two TorchScript models (--model A.pt --model B.pt)")
      ->required()->expected(1)->check(CLI::ExistingFile)->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  c->add_option("--layer-b", a.layer_b, "the second model's layer (default: --layer)");
  c->add_option("--image", a.images, "image file(s)")->expected(1, -1);
  c->add_option("--images", a.images_dir, "a folder of images, or one sub-folder per class (labelled)");
  c->add_option("--annotations", a.annotations, "CSV or XML annotations: labelled images");
  c->add_option("--out", a.out, "output folder (compare.json, panels/)")->capture_default_str();
  c->add_option("--threshold", a.threshold, "localization box threshold (x max)")->check(real_number(0, 1))->capture_default_str();
  c->add_option("--panel-height", a.panel_height, "tile height in pixels")->check(whole_number(32, 2048))->capture_default_str();
  return c;
}

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

}  // namespace gradcam_cli
