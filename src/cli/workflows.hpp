// src/cli/workflows.hpp: the `gradcam diagnose` and `gradcam compare` subcommands (workflows.cpp).
//
//   gradcam diagnose --model M (--annotations CSV|DIR | --images CLASS_FOLDERS) [--labels F] --out DIR
//     misclassified images -> panels (image | Grad-CAM and Guided Grad-CAM of the predicted class |
//     the same for the true class), an offline HTML report (confusions, worst first) and JSON.
//   gradcam compare --model A --model B (--image P... | --images DIR | --annotations ...) --out DIR
//     two models' Grad-CAM side by side for the same class, with rank correlation and box IoU.
#pragma once

#include <CLI/CLI.hpp>

#include <string>
#include <vector>

#include "common.hpp"

namespace gradcam_cli {

struct DiagnoseArgs {
  Common common;
  std::string annotations;
  std::string images_dir;
  std::string out = "diagnose_out";
  double alpha = 0.5;
  int panel_height = 192;
  int limit = 0;
};

struct CompareArgs {
  Common common;
  std::vector<std::string> models;
  std::string layer_b;
  std::vector<std::string> images;
  std::string images_dir;
  std::string annotations;
  std::string out = "compare_out";
  double threshold = 0.15;
  int panel_height = 192;
};

/// Adds the subcommands' flags; returns the subcommand.
CLI::App* add_diagnose(CLI::App& app, DiagnoseArgs& a);
CLI::App* add_compare(CLI::App& app, CompareArgs& a);

int run_diagnose(const DiagnoseArgs& a);
int run_compare(const CompareArgs& a);

}  // namespace gradcam_cli
