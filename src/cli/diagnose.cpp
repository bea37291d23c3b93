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

#include "commands.hpp"
#include "common.hpp"
#include "image_sets.hpp"

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
  return {&da->common, [da] { return run_diagnose(*da); }};
}

}  // namespace gradcam_cli
