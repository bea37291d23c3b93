// src/cli/merge.cpp: `gradcam merge`: the reports of a run's shards (--shard I/N) combined into the
// report the unsharded run writes. One row of kKinds per subcommand whose shards merge: how its
// report is recognised, the settings its shards must share, and how the whole run's report is
// rebuilt from the shards' exact counts by that subcommand's own builder (loc_report.hpp,
// faith_report.hpp, diagnose.hpp). Adding a kind: its merge function and one row.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>

#include <gradcam/gradcam.hpp>

#include "commands.hpp"
#include "common.hpp"
#include "diagnose.hpp"
#include "faith_report.hpp"
#include "image_sets.hpp"
#include "loc_report.hpp"
#include "shard.hpp"

namespace gradcam_cli {

using json = nlohmann::json;

namespace {

struct MergeArgs {
  Common common;  ///< unused but for --threads and the shared run path
  std::vector<std::string> reports;
  std::string out;  ///< empty: the kind's default
};

/// The shards' reports as read, with their paths (a diagnose folder is read as its summary.json).
struct Shards {
  std::vector<json> reports;
  std::vector<std::string> paths;
  long long count = 0;
};

/// A kind of report merge combines.
struct Kind {
  const char* name;
  bool (*is)(const json&);
  std::vector<const char*> same;  ///< settings every shard must share (what was measured, not the shard)
  const char* default_out;
  int (*merge)(const Shards&, const std::string& out);
};

// ---- eval-loc ----

/// The counts of every threshold of one report: the top level's, and each sweep row's.
std::map<double, gradcam::LocCounts> loc_counts(const json& r, const std::string& path) {
  std::map<double, gradcam::LocCounts> out;
  out[r["threshold"].get<double>()] = loc_counts_of(r, path);
  if (r.contains("sweep")) {
    for (const json& row : r["sweep"]) out[row["threshold"].get<double>()] = loc_counts_of(row, path);
  }
  return out;
}

int merge_loc(const Shards& s, const std::string& out) {
  LocReportParts p;
  for (const char* key : {"method", "layer", "model", "annotations", "connectivity", "largest_by", "pointing_tolerance"}) {
    p.settings[key] = s.reports[0][key];
  }
  p.threshold = s.reports[0]["threshold"].get<double>();
  p.sweep = s.reports[0].contains("sweep");
  for (size_t i = 0; i < s.reports.size(); ++i) {
    const json& r = s.reports[i];
    GRADCAM_CHECK(r.contains("sweep") == p.sweep, "'", s.paths[i], "' and '", s.paths[0],
                  "' differ in --sweep: not shards of one run");
    for (const auto& [t, c] : loc_counts(r, s.paths[i])) p.counts[t] += c;
    p.images += r.value("images", size_t{0});
    p.unreadable += r.value("unreadable", size_t{0});
    p.nonfinite += r.value("nan_outputs", size_t{0});
    p.interrupted = p.interrupted || r.value("interrupted", false);
    // the shards ran side by side: the run's rate is the sum of theirs
    p.images_per_s += r.value("images_per_s", 0.0);
    p.network_images_per_s += r.value("network_images_per_s", 0.0);
  }
  write_atomically(out, loc_report(p).dump(2) + "\n");
  const gradcam::LocMetrics m = p.counts.at(p.threshold).metrics();
  std::printf("merged %lld shard(s): %lld images; GT-known loc %.1f%%, top-1 loc %.1f%% at threshold %.2f; wrote %s\n",
              s.count, static_cast<long long>(m.n), 100 * m.gt_known_loc, 100 * m.top1_loc, p.threshold, out.c_str());
  return p.interrupted || p.unreadable + p.nonfinite > 0 ? 1 : 0;
}

// ---- eval-faith ----

int merge_faith(const Shards& s, const std::string& out) {
  const json& first = s.reports[0];
  FaithReportParts p;
  for (const char* key : {"model", "layer", "explained", "steps", "metrics", "annotations"}) p.settings[key] = first[key];
  for (const auto& [method, unused] : first["counts"].items()) p.methods.push_back(method);
  const auto metrics = first["metrics"].get<std::vector<std::string>>();
  p.metrics = {metrics.begin(), metrics.end()};
  for (size_t i = 0; i < s.reports.size(); ++i) {
    const json& r = s.reports[i];
    for (const auto& [method, unused] : r["counts"].items()) {
      GRADCAM_CHECK(std::find(p.methods.begin(), p.methods.end(), method) != p.methods.end(), "'", s.paths[i],
                    "' has method '", method, "' but '", s.paths[0], "' does not: not shards of one run");
    }
    for (const auto& method : p.methods) p.counts[method] += faith_counts_of(r, method, s.paths[i]);
    p.images += r.value("images", size_t{0});
    p.unreadable += r.value("unreadable", size_t{0});
    p.interrupted = p.interrupted || r.value("interrupted", false);
    p.seconds = std::max(p.seconds, r.value("seconds", 0.0));  // side by side: the slowest shard's
  }
  write_atomically(out, faith_report(p).dump(2) + "\n");
  std::printf("merged %lld shard(s): %zu images, %zu method(s); wrote %s\n", s.count, p.images, p.methods.size(),
              out.c_str());
  return p.interrupted || p.unreadable > 0 ? 1 : 0;
}

// ---- diagnose ----

int merge_diagnose(const Shards& s, const std::string& out) {
  make_dir(out);
  const OutputLock lock(out);
  Diagnosis d;
  for (size_t i = 0; i < s.paths.size(); ++i) {
    json raw;
    Diagnosis shard = read_summary(s.paths[i], raw);
    if (i == 0) {
      d.model = shard.model;
      d.layer = shard.layer;
      d.num_classes = shard.num_classes;
      d.name_of = shard.name_of;
      d.settings = {{"annotations", raw["annotations"]}, {"images_folder", raw["images_folder"]}};
    }
    GRADCAM_CHECK(shard.num_classes == d.num_classes || shard.num_classes < 0 || d.num_classes < 0, "'", s.paths[i],
                  "' counts ", shard.num_classes, " classes but '", s.paths[0], "' ", d.num_classes,
                  ": not shards of one run");
    if (d.num_classes < 0) d.num_classes = shard.num_classes, d.name_of = shard.name_of;
    d.evaluated += shard.evaluated;
    d.unreadable += shard.unreadable;
    d.correct += shard.correct;
    for (const auto& [tp, n] : shard.confusion) d.confusion[tp] += n;
    for (Mistake& m : shard.mistakes) {
      // the panels stay in the shards' folders: link them from the merged one
      m.panel = std::filesystem::path(m.panel).lexically_proximate(out).generic_string();
      m.thumb = std::filesystem::path(m.thumb).lexically_proximate(out).generic_string();
      d.mistakes.push_back(std::move(m));
    }
  }
  if (!d.name_of) d.name_of = [](int64_t c) { return std::to_string(c); };
  rank_confusions(d);
  write_atomically((std::filesystem::path(out) / "summary.json").string(), summary_json(d).dump(2) + "\n");
  write_atomically((std::filesystem::path(out) / "index.html").string(), diagnose_html(d));
  std::printf("merged %lld shard(s): %zu images, %zu correct, %zu mistakes; report: %s\n", s.count, d.evaluated,
              d.correct, d.mistakes.size(), (std::filesystem::path(out) / "index.html").string().c_str());
  return d.unreadable > 0 ? 1 : 0;
}

const Kind kKinds[] = {
    {"eval-loc", [](const json& r) { return r.contains("gt_known_loc"); },
     {"method", "layer", "model", "annotations", "connectivity", "largest_by", "pointing_tolerance", "threshold"},
     "merged.json", merge_loc},
    {"eval-faith", [](const json& r) { return r.value("report", std::string()) == "eval-faith"; },
     {"model", "layer", "explained", "steps", "metrics", "annotations"}, "merged.json", merge_faith},
    {"diagnose", [](const json& r) { return r.contains("mistakes") && r.contains("confusions"); },
     {"model", "layer", "annotations", "images_folder"}, "diagnose_merged", merge_diagnose},
};

/// A report file, or a diagnose output folder (its summary.json).
std::string report_path(const std::string& given) {
  return std::filesystem::is_directory(given) ? (std::filesystem::path(given) / "summary.json").string() : given;
}

json read_report(const std::string& path) {
  std::ifstream in(path);
  GRADCAM_CHECK(in.good(), "cannot read report '", path, "'");
  json j = json::parse(in, nullptr, false);
  GRADCAM_CHECK(!j.is_discarded() && j.is_object(), "'", path, "' is not a JSON report");
  return j;
}

const Kind& kind_of(const json& r, const std::string& path) {
  for (const Kind& k : kKinds) {
    if (k.is(r)) return k;
  }
  gradcam::fail(gradcam::detail::concat("'", path, "' is not a report gradcam merge combines: eval-loc's or eval-faith's --report, or "
                     "diagnose's summary.json or --out folder"));
}

/// Checks that the reports are the shards 0..N-1 of one run of one kind, each once; returns N.
long long check_shards(const Kind& kind, const Shards& s) {
  std::map<long long, std::string> seen;
  long long count = 0;
  for (size_t i = 0; i < s.reports.size(); ++i) {
    const json& r = s.reports[i];
    GRADCAM_CHECK(&kind_of(r, s.paths[i]) == &kind, "'", s.paths[i], "' is ", kind_of(r, s.paths[i]).name,
                  "'s but '", s.paths[0], "' is ", kind.name, "'s");
    const Shard sh = parse_shard(r.value("shard", std::string()));
    if (i == 0) count = sh.count;
    GRADCAM_CHECK(sh.count == count, "'", s.paths[i], "' is shard ", sh.str(), " but '", s.paths[0], "' is one of ", count);
    GRADCAM_CHECK(seen.emplace(sh.index, s.paths[i]).second, "shard ", sh.str(), " is given twice: '", seen[sh.index],
                  "' and '", s.paths[i], "'");
    for (const char* key : kind.same) {
      GRADCAM_CHECK(r.value(key, json()) == s.reports[0].value(key, json()), "'", s.paths[i], "' has ", key, " ",
                    r.value(key, json()).dump(), " but '", s.paths[0], "' has ", s.reports[0].value(key, json()).dump(),
                    ": not shards of one run");
    }
  }
  for (long long k = 0; k < count; ++k) {
    GRADCAM_CHECK(seen.count(k), "shard ", k, "/", count, " is missing (given: ", s.reports.size(), " report(s))");
  }
  return count;
}

int run_merge(const MergeArgs& a) {
  Shards s;
  for (const auto& given : a.reports) {
    s.paths.push_back(report_path(given));
    s.reports.push_back(read_report(s.paths.back()));
  }
  const Kind& kind = kind_of(s.reports[0], s.paths[0]);
  s.count = check_shards(kind, s);
  return kind.merge(s, a.out.empty() ? kind.default_out : a.out);
}

}  // namespace

Subcommand add_merge(CLI::App* sub) {
  auto a = std::make_shared<MergeArgs>();
  sub->add_option("reports", a->reports, "the shards' reports, every shard once: eval-loc's or eval-faith's --report "
                  "files, or diagnose's --out folders (or their summary.json)")
      ->required()->check(CLI::ExistingPath);
  sub->add_option("--out", a->out, "the merged report (eval-loc, eval-faith; default merged.json) or output folder "
                  "(diagnose: summary.json and index.html linking the shards' panels; default diagnose_merged)");
  return {&a->common, [a] { return run_merge(*a); }};
}

}  // namespace gradcam_cli
