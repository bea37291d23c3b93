// src/cli/faith_report.cpp: eval-faith's integer sums and its report (faith_report.hpp).
#include "faith_report.hpp"

#include <ATen/ATen.h>

#include <cmath>

#include <gradcam/error.hpp>

namespace gradcam_cli {

using json = nlohmann::json;

namespace {

constexpr double kUnit = 4294967296.0;  // 2^32: a sum's integer is its value times this

int64_t fixed(double v) { return std::llround(v * kUnit); }

json counts_json(const FaithCounts& c) {
  return {{"n", c.n}, {"deletion", c.deletion}, {"insertion", c.insertion}, {"drop", c.drop},
          {"increase", c.increase}, {"morf", c.morf}, {"lerf", c.lerf}, {"change", c.change},
          {"coherency", c.coherency}, {"complexity", c.complexity}, {"adcc", c.adcc},
          {"pointing", c.pointing}, {"deletion_curve", c.deletion_curve}, {"insertion_curve", c.insertion_curve}, {"unit", "2^-32"}};
}

/// A method's means: AUCs and mean curves, Average Drop, Increase in Confidence and the confidence
/// change, ROAD, ADCC (the mean of each image's; its three parts' means beside it), the pointing
/// game's hit rate.
json means(const FaithCounts& c, const std::set<std::string>& metrics) {
  json m = json::object();
  if (c.n <= 0) return m;
  const double n = static_cast<double>(c.n);
  auto mean = [&](int64_t sum) { return static_cast<double>(sum) / kUnit / n; };
  auto curve = [&](const std::vector<int64_t>& sums) {
    json arr = json::array();
    for (int64_t v : sums) arr.push_back(mean(v));
    return arr;
  };
  if (metrics.count("deletion")) m["deletion_auc"] = mean(c.deletion), m["deletion_curve"] = curve(c.deletion_curve);
  if (metrics.count("insertion")) m["insertion_auc"] = mean(c.insertion), m["insertion_curve"] = curve(c.insertion_curve);
  if (metrics.count("drop")) {
    m["average_drop"] = mean(c.drop);
    m["increase_in_confidence"] = 100 * mean(c.increase);
    m["confidence_change"] = mean(c.change);
  }
  if (metrics.count("road")) {
    m["road_morf"] = mean(c.morf);
    m["road_lerf"] = mean(c.lerf);
    m["road_combined"] = (mean(c.lerf) - mean(c.morf)) / 2;
  }
  if (metrics.count("adcc")) {
    m["adcc"] = mean(c.adcc);
    m["adcc_coherency"] = mean(c.coherency);
    m["adcc_complexity"] = mean(c.complexity);
  }
  if (metrics.count("pointing")) m["pointing_game"] = mean(c.pointing);
  return m;
}

}  // namespace

FaithCounts& FaithCounts::operator+=(const FaithCounts& o) {
  n += o.n;
  deletion += o.deletion;
  insertion += o.insertion;
  drop += o.drop;
  increase += o.increase;
  morf += o.morf;
  lerf += o.lerf;
  change += o.change;
  coherency += o.coherency;
  complexity += o.complexity;
  adcc += o.adcc;
  pointing += o.pointing;
  auto add = [](std::vector<int64_t>& to, const std::vector<int64_t>& from) {
    if (to.size() < from.size()) to.resize(from.size(), 0);
    for (size_t i = 0; i < from.size(); ++i) to[i] += from[i];
  };
  add(deletion_curve, o.deletion_curve);
  add(insertion_curve, o.insertion_curve);
  return *this;
}

void add_each(int64_t& sum, const at::Tensor& values) {
  const at::Tensor v = values.to(at::kDouble).cpu().contiguous().view(-1);
  const double* p = v.data_ptr<double>();
  for (int64_t i = 0; i < v.numel(); ++i) sum += fixed(p[i]);
}

void add_rows(std::vector<int64_t>& sums, const at::Tensor& curves) {
  const at::Tensor c = curves.to(at::kDouble).cpu().contiguous();
  sums.resize(static_cast<size_t>(c.size(1)), 0);
  for (int64_t k = 0; k < c.size(1); ++k) add_each(sums[static_cast<size_t>(k)], c.select(1, k));
}

json faith_report(const FaithReportParts& p) {
  json report = p.settings;
  report["report"] = "eval-faith";
  report["images"] = p.images;
  report["unreadable"] = p.unreadable;
  report["interrupted"] = p.interrupted;
  report["seconds"] = p.seconds;
  json per_method = json::object(), counts = json::object();
  for (const auto& method : p.methods) {
    const auto c = p.counts.find(method);
    per_method[method] = c == p.counts.end() ? json::object() : means(c->second, p.metrics);
    counts[method] = counts_json(c == p.counts.end() ? FaithCounts{} : c->second);
  }
  report["methods"] = per_method;
  report["counts"] = counts;
  return report;
}

FaithCounts faith_counts_of(const json& report, const std::string& method, const std::string& source) {
  GRADCAM_CHECK(report.contains("counts") && report["counts"].contains(method), "'", source,
                "' has no counts for method '", method, "' (an eval-faith report of gradcam 0.x before --shard?)");
  const json& j = report["counts"][method];
  FaithCounts c;
  c.n = j.at("n").get<int64_t>();
  c.deletion = j.at("deletion").get<int64_t>();
  c.insertion = j.at("insertion").get<int64_t>();
  c.drop = j.at("drop").get<int64_t>();
  c.increase = j.at("increase").get<int64_t>();
  c.morf = j.at("morf").get<int64_t>();
  c.lerf = j.at("lerf").get<int64_t>();
  for (auto [key, field] : {std::pair{"change", &c.change}, {"coherency", &c.coherency}, {"complexity", &c.complexity},
                            {"adcc", &c.adcc}, {"pointing", &c.pointing}}) {
    *field = j.value(key, int64_t{0});  // absent in the reports of gradcam before these metrics
  }
  c.deletion_curve = j.at("deletion_curve").get<std::vector<int64_t>>();
  c.insertion_curve = j.at("insertion_curve").get<std::vector<int64_t>>();
  return c;
}

}  // namespace gradcam_cli
