// src/cli/loc_report.cpp: eval-loc's report from its counts (loc_report.hpp).
#include "loc_report.hpp"

#include <gradcam/error.hpp>

namespace gradcam_cli {

using json = nlohmann::json;

namespace {

json metrics_json(const gradcam::LocCounts& c) {
  const gradcam::LocMetrics m = c.metrics();
  return {{"n", m.n}, {"top1_cls", m.top1_cls}, {"top1_loc", m.top1_loc}, {"top5_loc", m.top5_loc},
          {"gt_known_loc", m.gt_known_loc}, {"mean_iou", m.mean_iou}, {"pointing_game", m.pointing_game},
          {"top1_loc_err", 1 - m.top1_loc}, {"top5_loc_err", 1 - m.top5_loc},
          {"counts", {{"n", c.n}, {"top1_cls", c.top1_cls}, {"top1_loc", c.top1_loc}, {"top5_loc", c.top5_loc},
                      {"gt_known_loc", c.gt_known_loc}, {"pointing_game", c.pointing_game},
                      {"iou_sum_2e-40", c.iou_sum}}}};
}

}  // namespace

json loc_report(const LocReportParts& p) {
  json report = metrics_json(p.counts.at(p.threshold));
  report["threshold"] = p.threshold;
  for (const auto& [key, value] : p.settings.items()) report[key] = value;
  report["images"] = p.images;
  report["unreadable"] = p.unreadable;
  report["nan_outputs"] = p.nonfinite;  // images whose output or map was NaN or infinite, skipped
  report["interrupted"] = p.interrupted;
  report["images_per_s"] = p.images_per_s;
  report["network_images_per_s"] = p.network_images_per_s;
  if (p.sweep) {
    json sweep = json::array();
    double best_t = p.threshold, best = -1;
    for (const auto& [t, c] : p.counts) {
      json row = metrics_json(c);
      row["threshold"] = t;
      sweep.push_back(row);
      if (c.metrics().gt_known_loc > best) {
        best = c.metrics().gt_known_loc;
        best_t = t;
      }
    }
    report["sweep"] = sweep;
    report["best_threshold"] = {{"metric", "gt_known_loc"}, {"threshold", best_t}, {"value", best}};
  }
  return report;
}

gradcam::LocCounts loc_counts_of(const json& row, const std::string& source) {
  GRADCAM_CHECK(row.contains("counts") && row["counts"].is_object(), source,
                ": no \"counts\" in the report (written by an older gradcam, or not by eval-loc)");
  const json& c = row["counts"];
  gradcam::LocCounts out;
  auto get = [&](const char* key) -> int64_t {
    GRADCAM_CHECK(c.contains(key) && c[key].is_number_integer(), source, ": counts.", key, " is missing or not an integer");
    return c[key].get<int64_t>();
  };
  out.n = get("n");
  out.top1_cls = get("top1_cls");
  out.top1_loc = get("top1_loc");
  out.top5_loc = get("top5_loc");
  out.gt_known_loc = get("gt_known_loc");
  out.pointing_game = get("pointing_game");
  out.iou_sum = get("iou_sum_2e-40");
  return out;
}

}  // namespace gradcam_cli
