// src/cli/diagnose_html.cpp: the offline HTML report of `gradcam diagnose` (diagnose.hpp).
#include <cctype>
#include <filesystem>
#include <iomanip>
#include <sstream>

#include "diagnose.hpp"
#include "image_sets.hpp"

namespace gradcam_cli {

namespace fs = std::filesystem;

namespace {

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

}  // namespace

std::string diagnose_html(const Diagnosis& d) {
  std::ostringstream h;
  h << "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>gradcam diagnose</title>\n<style>"
       "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;"
       "text-align:right}.z{color:#bbb}.m{display:inline-block;margin:4px;text-align:center;font-size:12px}"
       ".m img{display:block}h2{margin-top:1.5em}</style></head><body>\n";
  h << "<h1>Misclassified images</h1>\n<p>Model <code>" << html_escape(d.model) << "</code>, layer <code>"
    << html_escape(d.layer) << "</code>: " << d.evaluated << " images, " << d.correct << " correct ("
    << fmt(100.0 * static_cast<double>(d.correct) / static_cast<double>(std::max<size_t>(d.evaluated, 1)), 1) << "%), "
    << d.mistakes.size() << " mistakes" << (d.unreadable ? ", " + std::to_string(d.unreadable) + " unreadable" : "")
    << ". Each panel: the image, Grad-CAM and Guided Grad-CAM for the predicted class, then for the true class.</p>\n";
  h << "<h2>Worst confusions</h2>\n<table><tr><th>true</th><th>predicted as</th><th>images</th></tr>\n";
  for (const auto& [n, t, p] : d.pairs) {
    h << "<tr><td><a href=\"#c" << t << "_" << p << "\">" << html_escape(d.name_of(t)) << "</a></td><td>"
      << html_escape(d.name_of(p)) << "</td><td>" << n << "</td></tr>\n";
  }
  h << "</table>\n";
  if (d.num_classes > 0 && d.num_classes <= 40) {
    h << "<h2>Confusion matrix</h2>\n<table><tr><th>true \\ predicted</th>";
    for (int64_t p = 0; p < d.num_classes; ++p) h << "<th>" << html_escape(d.name_of(p)) << "</th>";
    h << "</tr>\n";
    for (int64_t t = 0; t < d.num_classes; ++t) {
      h << "<tr><th>" << html_escape(d.name_of(t)) << "</th>";
      for (int64_t p = 0; p < d.num_classes; ++p) {
        auto f = d.confusion.find({t, p});
        const int64_t n = f == d.confusion.end() ? 0 : f->second;
        h << "<td" << (n == 0 ? " class=\"z\"" : "") << ">" << n << "</td>";
      }
      h << "</tr>\n";
    }
    h << "</table>\n";
  }
  std::pair<int64_t, int64_t> group{-1, -1};
  for (const auto& m : d.mistakes) {
    if (std::make_pair(m.truth, m.predicted) != group) {
      group = {m.truth, m.predicted};
      h << "<h2 id=\"c" << m.truth << "_" << m.predicted << "\">" << html_escape(d.name_of(m.truth)) << " predicted as "
        << html_escape(d.name_of(m.predicted)) << "</h2>\n";
    }
    h << "<div class=\"m\"><a href=\"" << url(m.panel) << "\"><img src=\"" << url(m.thumb) << "\" alt=\""
      << html_escape(fs::path(m.image).filename().string()) << "\"></a>" << html_escape(fs::path(m.image).filename().string())
      << "<br>p=" << fmt(m.p_pred, 2) << " vs " << fmt(m.p_true, 2) << "</div>\n";
  }
  h << "</body></html>\n";
  return h.str();
}

}  // namespace gradcam_cli
