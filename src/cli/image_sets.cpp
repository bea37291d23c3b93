// src/cli/image_sets.cpp: the labelled image sets of diagnose and compare, and their output
// folders (image_sets.hpp).
#include "image_sets.hpp"

#include <iomanip>
#include <map>
#include <sstream>

namespace gradcam_cli {

/// Images with labels from annotations (CSV / XML), class folders (DIR/<class>/*.png), or, when
/// labels are optional, a flat folder.
std::vector<Item> read_set(const std::string& annotations, const std::string& images_dir, bool need_labels) {
  std::vector<Item> items;
  if (!annotations.empty()) {
    for (const auto& ann : gradcam::read_annotations(annotations, images_dir)) {
      items.push_back({ann.image, ann.objects.front().label});
    }
    return items;
  }
  GRADCAM_CHECK(!images_dir.empty(), "give --annotations FILE|DIR or --images DIR (one folder per class)");
  std::error_code ec;
  GRADCAM_CHECK(fs::is_directory(images_dir, ec), "--images '", images_dir, "' is not a directory");
  std::vector<std::string> classes;
  for (const auto& e : fs::directory_iterator(images_dir, ec)) {
    if (e.is_directory()) classes.push_back(e.path().filename().string());
  }
  std::sort(classes.begin(), classes.end());
  if (classes.empty()) {
    GRADCAM_CHECK(!need_labels, "--images '", images_dir, "' has no class folders: put each class's images in "
                  "DIR/<class name or index>/, or give --annotations");
    for (const auto& p : list_images(images_dir)) items.push_back({p, ""});
    return items;
  }
  for (const auto& c : classes) {
    for (const auto& p : list_images_or_empty((fs::path(images_dir) / c).string())) items.push_back({p, c});
  }
  GRADCAM_CHECK(!items.empty(), "the class folders of '", images_dir, "' contain no images");
  return items;
}

/// Class index of every item's label; throws naming the unknown label / folder and the choices.
std::vector<int64_t> resolve_labels(const std::vector<Item>& items, const gradcam::Labels& labels,
                                    const std::string& labels_path, bool folders) {
  std::vector<int64_t> out;
  std::map<std::string, int64_t> seen;
  for (const auto& it : items) {
    auto f = seen.find(it.label);
    if (f == seen.end()) {
      auto c = labels.index(it.label);
      if (!c) {
        std::string known;
        for (size_t i = 0; i < labels.size() && i < 12; ++i) known += (i ? ", " : "") + labels.name(static_cast<int64_t>(i));
        if (labels.size() > 12) known += ", ...";
        gradcam::fail(gradcam::detail::concat(
            folders ? "class folder '" : "label '", it.label, "' (", it.path, ") is not ",
            labels_path.empty() ? "a class index (give --labels FILE to use class names)"
                                : "in the labels file '" + labels_path + "' (its classes: " + known + ")"));
      }
      f = seen.emplace(it.label, *c).first;
    }
    out.push_back(f->second);
  }
  return out;
}

void make_dir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  GRADCAM_CHECK(fs::is_directory(dir, ec), "cannot create output directory '", dir, "'");
}

/// A unique file stem per image (same names in different folders get a suffix).
std::string unique_stem(const std::string& path, std::map<std::string, int>& used) {
  std::string stem = fs::path(path).stem().string();
  for (auto& c : stem) {
    if (c == '/' || c == '\\' || c == '%' || c == '#' || c == '?') c = '_';
  }
  if (int k = used[stem]++; k > 0) stem += "_" + std::to_string(k);
  return stem;
}

std::string fmt(double v, int prec) {
  std::ostringstream o;
  o << std::fixed << std::setprecision(prec) << v;
  return o.str();
}

}  // namespace gradcam_cli
