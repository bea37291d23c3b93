// src/cli/faith_report.hpp: eval-faith's sums as exact integers, and its report built from them
// (faith_report.cpp), by eval-faith itself and by `gradcam merge`, which adds the sums of a run's
// shards: one builder, so that a merged report is the report the unsharded run writes.
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace gradcam_cli {

/// One method's sums over the images. Every image's value is rounded once to a multiple of 2^-32
/// and the sums are integers, so that they add up to the same bits in any order: a run's shards,
/// merged, give the whole run's numbers. (2^-32 is below every printed digit; an image adds at
/// most 100 * 2^32 to a sum, so int64 holds 21 million images.)
struct FaithCounts {
  int64_t n = 0;
  int64_t deletion = 0, insertion = 0, drop = 0, increase = 0, morf = 0, lerf = 0;
  int64_t change = 0, coherency = 0, complexity = 0, adcc = 0, pointing = 0;
  std::vector<int64_t> deletion_curve, insertion_curve;  ///< per step, summed over the images
  FaithCounts& operator+=(const FaithCounts& other);
};

/// Adds each element of `values` (one per image), rounded to units of 2^-32, to `sum`.
void add_each(int64_t& sum, const at::Tensor& values);
/// Adds the rows of `curves` [images, steps] to `sums`, each value rounded as add_each does.
void add_rows(std::vector<int64_t>& sums, const at::Tensor& curves);

/// What an eval-faith report is made from.
struct FaithReportParts {
  nlohmann::json settings;  ///< model, layer, explained, steps, metrics, annotations; shard if any
  std::vector<std::string> methods;
  std::set<std::string> metrics;
  std::map<std::string, FaithCounts> counts;  ///< per method
  size_t images = 0, unreadable = 0;
  bool interrupted = false;
  double seconds = 0;
};

/// The report: the settings, the image counts, each method's means (and mean curves), and the
/// counts they come from ("counts", per method), which merge adds.
nlohmann::json faith_report(const FaithReportParts& parts);

/// A report's counts of `method`; a gradcam::Error naming `source` when they are missing.
FaithCounts faith_counts_of(const nlohmann::json& report, const std::string& method, const std::string& source);

}  // namespace gradcam_cli
