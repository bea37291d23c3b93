// src/cli/diagnose_report.cpp: diagnose's summary.json: ranking the confusions, writing the summary
// and reading one back (diagnose.hpp), shared by `diagnose` and by `gradcam merge`, which rebuilds
// one summary and one index.html from a run's shards.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include <gradcam/error.hpp>

#include "diagnose.hpp"

namespace gradcam_cli {

using json = nlohmann::json;

void rank_confusions(Diagnosis& d) {
  d.pairs.clear();
  for (const auto& [tp, n] : d.confusion)
    if (tp.first != tp.second) d.pairs.emplace_back(n, tp.first, tp.second);
  std::sort(d.pairs.begin(), d.pairs.end(), [](const auto& l, const auto& r) {
    if (std::get<0>(l) != std::get<0>(r)) return std::get<0>(l) > std::get<0>(r);
    return std::make_pair(std::get<1>(l), std::get<2>(l)) < std::make_pair(std::get<1>(r), std::get<2>(r));
  });
  std::map<std::pair<int64_t, int64_t>, size_t> rank;
  for (size_t i = 0; i < d.pairs.size(); ++i) rank[{std::get<1>(d.pairs[i]), std::get<2>(d.pairs[i])}] = i;
  // ties by image path: the order does not depend on the order the images ran in (shards)
  std::sort(d.mistakes.begin(), d.mistakes.end(), [&](const Mistake& l, const Mistake& r) {
    const size_t a1 = rank[{l.truth, l.predicted}], b1 = rank[{r.truth, r.predicted}];
    if (a1 != b1) return a1 < b1;
    if (l.p_pred != r.p_pred) return l.p_pred > r.p_pred;
    return l.image < r.image;
  });
}

json summary_json(const Diagnosis& d) {
  json summary = d.settings;
  summary["model"] = d.model;
  summary["layer"] = d.layer;
  summary["images"] = d.evaluated;
  summary["unreadable"] = d.unreadable;
  summary["correct"] = d.correct;
  summary["accuracy"] = d.evaluated ? static_cast<double>(d.correct) / static_cast<double>(d.evaluated) : 0.0;
  summary["mistakes"] = json::array();
  summary["confusions"] = json::array();
  for (const auto& m : d.mistakes) {
    summary["mistakes"].push_back({{"image", m.image}, {"true", m.truth}, {"true_label", d.name_of(m.truth)},
                                   {"predicted", m.predicted}, {"predicted_label", d.name_of(m.predicted)},
                                   {"p_true", m.p_true}, {"p_predicted", m.p_pred}, {"panel", m.panel}, {"thumbnail", m.thumb}});
  }
  for (const auto& [n, t, p] : d.pairs) {
    summary["confusions"].push_back({{"true", t}, {"true_label", d.name_of(t)}, {"predicted", p},
                                     {"predicted_label", d.name_of(p)}, {"count", n}});
  }
  // what merge needs to rebuild the whole run: every (true, predicted) count, correct ones too,
  // and every class's name
  summary["num_classes"] = d.num_classes;
  json confusion = json::array();
  for (const auto& [tp, n] : d.confusion) confusion.push_back({tp.first, tp.second, n});
  summary["confusion"] = confusion;
  json names = json::array();
  for (int64_t c = 0; c < d.num_classes; ++c) names.push_back(d.name_of(c));
  summary["class_names"] = names;
  return summary;
}

Diagnosis read_summary(const std::string& path, json& raw) {
  std::ifstream in(path);
  GRADCAM_CHECK(in.good(), "cannot read '", path, "'");
  raw = json::parse(in, nullptr, false);
  GRADCAM_CHECK(!raw.is_discarded() && raw.is_object() && raw.contains("confusion") && raw.contains("class_names"),
                "'", path, "' is not a diagnose summary.json with its confusion counts (gradcam 0.x before --shard?)");
  Diagnosis d;
  d.model = raw.value("model", std::string());
  d.layer = raw.value("layer", std::string());
  d.evaluated = raw.value("images", size_t{0});
  d.unreadable = raw.value("unreadable", size_t{0});
  d.correct = raw.value("correct", size_t{0});
  d.num_classes = raw.value("num_classes", int64_t{-1});
  for (const json& c : raw["confusion"]) d.confusion[{c[0].get<int64_t>(), c[1].get<int64_t>()}] = c[2].get<int64_t>();
  const std::string folder = std::filesystem::path(path).parent_path().string();
  for (const json& m : raw["mistakes"]) {
    // panels and thumbnails relative to this summary's folder
    d.mistakes.push_back({m["image"].get<std::string>(), (std::filesystem::path(folder) / m["panel"].get<std::string>()).string(),
                          (std::filesystem::path(folder) / m["thumbnail"].get<std::string>()).string(),
                          m["true"].get<int64_t>(), m["predicted"].get<int64_t>(), m["p_true"].get<double>(),
                          m["p_predicted"].get<double>()});
  }
  const std::vector<std::string> names = raw["class_names"].get<std::vector<std::string>>();
  d.name_of = [names](int64_t c) { return c >= 0 && static_cast<size_t>(c) < names.size() ? names[c] : std::to_string(c); };
  return d;
}

}  // namespace gradcam_cli
