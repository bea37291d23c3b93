// src/cli/layers.cpp: `gradcam layers`: a model's layers with their output shapes for the input
// `explain` would give it; * marks the auto choice.
#include <ATen/ATen.h>
#include <torch/csrc/jit/api/module.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <iomanip>
#include <iostream>
#include <map>
#include <memory>
#include <set>

#include <gradcam/gradcam.hpp>

#include "commands.hpp"
#include "common.hpp"

namespace gradcam_cli {

using json = nlohmann::json;

namespace {

struct LayersArgs {
  Common common;
  std::vector<int> size;
  bool as_json = false;
};

/// "7x7", "1 + 4x4 tokens", "16x16 nhwc", or "" for no grid (gradcam layers' grid column).
std::string grid_str(const std::optional<gradcam::TokenLayout>& t) {
  if (!t || t->grid_h < 1) return "";
  const std::string grid = std::to_string(t->grid_h) + "x" + std::to_string(t->grid_w);
  if (t->kind == gradcam::TokenLayout::Kind::tokens) return std::to_string(t->extra) + " + " + grid + " tokens";
  if (t->kind == gradcam::TokenLayout::Kind::channels_last) return grid + " nhwc";
  return grid;
}

int run_layers(const Common& c, const std::vector<int>& size, bool as_json) {
  auto module = gradcam::load_model(c.model, c10::Device(c.device));
  // the input explain would give the model: --size, else the crop, else the resized square
  GRADCAM_CHECK(size.size() == 2 || c.crop > 0 || c.resize > 0,
                "with --resize 0 --crop 0 the input is each image's own size; give it with --size H W");
  const int h = size.size() == 2 ? size[0] : c.crop > 0 ? c.crop : c.resize;
  const int w = size.size() == 2 ? size[1] : c.crop > 0 ? c.crop : c.resize;
  // channels (-1) come from the model's first convolution
  auto listing = gradcam::list_layers(module, std::vector<int64_t>{1, -1, h, w});
  auto shape = [](const std::vector<int64_t>& s) {
    std::string out = "[";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
  };
  if (as_json) {
    json arr = json::array();
    for (const auto& l : listing.layers) {
      arr.push_back({{"name", l.name}, {"type", l.type}, {"shape", l.shape}, {"calls", l.calls},
                     {"is_tensor", l.is_tensor}, {"layout", l.layout ? layout_json(*l.layout) : json(nullptr)},
                     {"auto", l.name == listing.auto_layer}});
    }
    json out = {{"layers", arr}, {"auto", listing.auto_layer}, {"frozen", listing.frozen}};
    if (!listing.auto_note.empty()) out["auto_note"] = listing.auto_note;
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  size_t width = 5;
  for (const auto& l : listing.layers) width = std::max(width, l.name.size());
  std::printf("  %-*s  %-22s  %-22s  %-5s  %s\n", static_cast<int>(width), "layer", "type", "output shape", "calls",
              "grid");
  for (const auto& l : listing.layers) {
    const bool is_auto = l.name == listing.auto_layer;
    std::printf("%s %-*s  %-22s  %-22s  %-5lld  %s\n", is_auto ? "*" : " ", static_cast<int>(width), l.name.c_str(),
                l.type.c_str(), l.is_tensor ? shape(l.shape).c_str() : "(not a tensor)", static_cast<long long>(l.calls),
                grid_str(l.layout).c_str());
  }
  const std::string chosen = listing.auto_layer.empty() ? "(none: " + listing.auto_note + ")" : listing.auto_layer;
  std::printf("\n* auto = %s (input 1x?x%dx%d)%s\n", chosen.c_str(), h, w,
              listing.frozen ? "; frozen model: names are graph values" : "");
  if (!listing.auto_layer.empty() && !listing.auto_note.empty()) std::printf("  %s\n", listing.auto_note.c_str());
  std::printf("grid: how CAM methods read the output (tokens: extra tokens + rows x columns; nhwc: channels last)\n");
  return 0;
}

}  // namespace

Subcommand add_layers(CLI::App* layers) {
  auto la = std::make_shared<LayersArgs>();
  add_common(layers, la->common);
  layers->add_option("--size", la->size, "input height and width")->expected(2)->check(whole_number(1));
  layers->add_flag("--json", la->as_json, "print JSON");
  return {&la->common, [la] { return run_layers(la->common, la->size, la->as_json); }};
}

}  // namespace gradcam_cli
