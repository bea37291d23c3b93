// src/cli/image_sets.hpp: the labelled image sets of diagnose and compare, and their output
// folders (image_sets.cpp).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <gradcam/gradcam.hpp>

#include "common.hpp"

namespace gradcam_cli {

/// One image of a labelled (or unlabelled) set.
struct Item {
  std::string path;
  std::string label;  // "" when unlabelled
};

/// Images with labels from annotations (CSV / XML), class folders (DIR/<class>/*.png), or, when
/// labels are optional, a flat folder.
std::vector<Item> read_set(const std::string& annotations, const std::string& images_dir, bool need_labels);

/// Class index of every item's label; throws naming the unknown label / folder and the choices.
std::vector<int64_t> resolve_labels(const std::vector<Item>& items, const gradcam::Labels& labels,
                                    const std::string& labels_path, bool folders);

/// Creates an output folder (and its parents), or throws naming it.
void make_dir(const std::string& dir);

/// A number with `prec` decimals, for panel captions and the HTML report.
std::string fmt(double v, int prec = 3);

/// A unique file stem per image (same names in different folders get a suffix).
std::string unique_stem(const std::string& path, std::map<std::string, int>& used);

}  // namespace gradcam_cli
