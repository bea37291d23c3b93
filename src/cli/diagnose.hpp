// src/cli/diagnose.hpp: what `gradcam diagnose` found (diagnose.cpp), and its HTML report
// (diagnose_html.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace gradcam_cli {

/// A misclassified image: small records only, the images and maps are not kept.
struct Mistake {
  std::string image, panel, thumb;  // panel and thumb: relative to the output folder
  int64_t truth, predicted;
  double p_true, p_pred;
};

struct Diagnosis {
  std::string model, layer;
  nlohmann::json settings = nlohmann::json::object();     // annotations, images, shard: written first
  size_t evaluated = 0, unreadable = 0, correct = 0;
  int64_t num_classes = -1;                               // -1: no image ran
  std::map<std::pair<int64_t, int64_t>, int64_t> confusion;  // (true, predicted) -> images
  std::vector<std::tuple<int64_t, int64_t, int64_t>> pairs;  // count, true, predicted: worst first
  std::vector<Mistake> mistakes;                             // grouped by pair, in that order
  std::function<std::string(int64_t)> name_of;              // a class's display name
};

/// Confusions, worst (most frequent) first; mistakes grouped by confusion in that order, each
/// group by the predicted class's probability, highest first (ties by image path).
/// (diagnose_report.cpp, as the two below)
void rank_confusions(Diagnosis& d);

/// summary.json: the settings, counts and accuracy, the mistakes and confusions in rank order, and
/// what merge needs (every (true, predicted) count, num_classes, every class's name).
nlohmann::json summary_json(const Diagnosis& d);

/// A summary.json read back, its panels and thumbnails as paths from the current folder (the
/// summary's folder joined in); `raw` gets the JSON itself. Throws gradcam::Error naming `path`.
Diagnosis read_summary(const std::string& path, nlohmann::json& raw);

/// The offline HTML report: confusions worst first, the confusion matrix (40 classes or fewer),
/// and the mistakes' thumbnails, each linking its panel.
std::string diagnose_html(const Diagnosis& d);

}  // namespace gradcam_cli
