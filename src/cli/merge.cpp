// src/cli/merge.cpp: `gradcam merge`: the reports of a run's shards (--shard I/N) combined into the
// report the unsharded run writes: counts added (exact integers, loc_report.hpp), metrics and the
// sweep table recomputed from them by eval-loc's own report builder.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>
#include <map>
#include <memory>

#include <gradcam/gradcam.hpp>

#include "commands.hpp"
#include "common.hpp"
#include "loc_report.hpp"
#include "shard.hpp"

namespace gradcam_cli {

using json = nlohmann::json;

namespace {

struct MergeArgs {
  Common common;  ///< unused but for --threads and the shared run path
  std::vector<std::string> reports;
  std::string out = "merged.json";
};

/// The settings every shard must share (they describe what was measured, not the shard).
const char* const kSameSettings[] = {"method", "layer", "model", "annotations", "connectivity", "largest_by",
                                     "pointing_tolerance", "threshold"};

json read_report(const std::string& path) {
  std::ifstream in(path);
  GRADCAM_CHECK(in.good(), "cannot read report '", path, "'");
  json j = json::parse(in, nullptr, false);
  GRADCAM_CHECK(!j.is_discarded() && j.is_object(), "'", path, "' is not a JSON report");
  GRADCAM_CHECK(j.contains("gt_known_loc") && j.contains("counts"), "'", path,
                "' is not an eval-loc report with counts; gradcam merge combines the shards of eval-loc "
                "(reports of gradcam 0.x before --shard have no counts)");
  return j;
}

/// Checks that the reports are the shards 0..N-1 of one run, each once; returns N.
long long check_shards(const std::vector<json>& reports, const std::vector<std::string>& paths) {
  std::map<long long, std::string> seen;
  long long count = 0;
  for (size_t i = 0; i < reports.size(); ++i) {
    const Shard s = parse_shard(reports[i].value("shard", std::string()));
    if (i == 0) count = s.count;
    GRADCAM_CHECK(s.count == count, "'", paths[i], "' is shard ", s.str(), " but '", paths[0], "' is one of ", count);
    GRADCAM_CHECK(seen.emplace(s.index, paths[i]).second, "shard ", s.str(), " is given twice: '", seen[s.index],
                  "' and '", paths[i], "'");
    for (const char* key : kSameSettings) {
      GRADCAM_CHECK(reports[i].value(key, json()) == reports[0].value(key, json()), "'", paths[i], "' has ", key, " ",
                    reports[i].value(key, json()).dump(), " but '", paths[0], "' has ",
                    reports[0].value(key, json()).dump(), ": not shards of one run");
    }
    GRADCAM_CHECK(reports[i].contains("sweep") == reports[0].contains("sweep"), "'", paths[i],
                  "' and '", paths[0], "' differ in --sweep: not shards of one run");
  }
  for (long long k = 0; k < count; ++k) {
    GRADCAM_CHECK(seen.count(k), "shard ", k, "/", count, " is missing (given: ", reports.size(), " report(s))");
  }
  return count;
}

/// The counts of every threshold of one report: the top level's, and each sweep row's.
std::map<double, gradcam::LocCounts> counts_of(const json& r, const std::string& path) {
  std::map<double, gradcam::LocCounts> out;
  out[r["threshold"].get<double>()] = loc_counts_of(r, path);
  if (r.contains("sweep")) {
    for (const json& row : r["sweep"]) out[row["threshold"].get<double>()] = loc_counts_of(row, path);
  }
  return out;
}

int run_merge(const MergeArgs& a) {
  std::vector<json> reports;
  for (const auto& path : a.reports) reports.push_back(read_report(path));
  const long long count = check_shards(reports, a.reports);
  LocReportParts p;
  for (const char* key : kSameSettings) {
    if (std::string(key) != "threshold") p.settings[key] = reports[0][key];
  }
  p.threshold = reports[0]["threshold"].get<double>();
  p.sweep = reports[0].contains("sweep");
  for (size_t i = 0; i < reports.size(); ++i) {
    const json& r = reports[i];
    for (const auto& [t, c] : counts_of(r, a.reports[i])) p.counts[t] += c;
    p.images += r.value("images", size_t{0});
    p.unreadable += r.value("unreadable", size_t{0});
    p.nonfinite += r.value("nan_outputs", size_t{0});
    p.interrupted = p.interrupted || r.value("interrupted", false);
    // the shards ran side by side: the run's rate is the sum of theirs
    p.images_per_s += r.value("images_per_s", 0.0);
    p.network_images_per_s += r.value("network_images_per_s", 0.0);
  }
  const json merged = loc_report(p);
  write_atomically(a.out, merged.dump(2) + "\n");
  const gradcam::LocMetrics m = p.counts.at(p.threshold).metrics();
  std::printf("merged %lld shard(s): %lld images; GT-known loc %.1f%%, top-1 loc %.1f%% at threshold %.2f; wrote %s\n",
              count, static_cast<long long>(m.n), 100 * m.gt_known_loc, 100 * m.top1_loc, p.threshold, a.out.c_str());
  return p.interrupted || p.unreadable + p.nonfinite > 0 ? 1 : 0;
}

}  // namespace

Subcommand add_merge(CLI::App* sub) {
  auto a = std::make_shared<MergeArgs>();
  sub->add_option("reports", a->reports, "the shards' reports (eval-loc --shard I/N --report ...), every shard once")
      ->required()->check(CLI::ExistingFile);
  sub->add_option("--out", a->out, "the merged report")->capture_default_str();
  return {&a->common, [a] { return run_merge(*a); }};
}

}  // namespace gradcam_cli
