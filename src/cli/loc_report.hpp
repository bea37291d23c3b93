// src/cli/loc_report.hpp: eval-loc's report, built from its counts (loc_report.cpp), by eval-loc
// itself and by `gradcam merge`, which adds the counts of a run's shards: one builder, so that a
// merged report is the report the unsharded run writes.
#pragma once

#include <nlohmann/json.hpp>

#include <map>
#include <string>

#include <gradcam/evaluate.hpp>

namespace gradcam_cli {

/// What an eval-loc report is made from.
struct LocReportParts {
  nlohmann::json settings;  ///< method, layer, model, annotations, connectivity, largest_by, pointing_tolerance
  double threshold = 0.15;  ///< the main threshold (--threshold)
  bool sweep = false;
  std::map<double, gradcam::LocCounts> counts;  ///< per threshold; the main one always
  size_t images = 0, unreadable = 0, nonfinite = 0;
  bool interrupted = false;
  double images_per_s = 0, network_images_per_s = 0;
};

/// The report: the main threshold's metrics and counts at the top, the settings, the image counts,
/// and with a sweep one row per threshold and the best threshold by GT-known localization.
nlohmann::json loc_report(const LocReportParts& parts);

/// The counts of a report row ("counts" of the top level or of a sweep row); a gradcam::Error
/// naming `source` when they are missing (a report written before counts were added).
gradcam::LocCounts loc_counts_of(const nlohmann::json& row, const std::string& source);

}  // namespace gradcam_cli
