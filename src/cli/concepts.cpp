// src/cli/concepts.cpp: `gradcam concepts`: Deep Feature Factorization (gradcam/factorization.hpp)
// of a layer over a set of images: the concepts shared by the images, each concept's top classes
// through the model's linear head, and per image a panel of where each concept is.
#include <ATen/ATen.h>
#include <torch/csrc/jit/api/module.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <map>
#include <memory>

#include <gradcam/gradcam.hpp>

#include "commands.hpp"
#include "common.hpp"
#include "image_sets.hpp"

namespace gradcam_cli {

using json = nlohmann::json;

namespace {

struct ConceptArgs {
  Common common;
  std::vector<std::string> images;
  std::string images_dir;
  int64_t components = 5;
  int64_t iterations = 200;
  int64_t top = 3;
  std::string linear;
  std::string out = "concepts_out";
  int panel_height = 160;
};

/// The linear head the concepts go through: the module path given, else the last 2-D parameter
/// named "weight" whose second dimension is the layer's channels (as CAM finds it). Empty
/// tensors when there is none.
std::pair<at::Tensor, at::Tensor> linear_head(const torch::jit::Module& module, const std::string& path, int64_t k) {
  std::map<std::string, at::Tensor> params;
  std::string chosen;  // the weight's name
  for (const auto& p : module.named_parameters(/*recurse=*/true)) {
    params[p.name] = p.value;
    const bool named = path.empty() ? p.name.size() >= 6 && p.name.compare(p.name.size() - 6, 6, "weight") == 0
                                    : p.name == path + ".weight";
    if (named && p.value.dim() == 2 && p.value.size(1) == k) chosen = p.name;
  }
  GRADCAM_CHECK(path.empty() || !chosen.empty(), "--linear '", path, "' names no linear layer with a weight [classes, ",
                k, "]");
  if (chosen.empty()) return {};
  const auto bias = params.find(chosen.substr(0, chosen.size() - 6) + "bias");
  return {params[chosen], bias != params.end() ? bias->second : at::Tensor()};
}

/// The activations of every readable image at the layer, in --batch chunks; the images' paths,
/// pictures and geometries alongside.
struct Loaded {
  std::vector<std::string> paths;
  std::vector<cv::Mat> pictures;
  std::vector<gradcam::Geometry> geometries;
  at::Tensor activations;
  std::string layer;
  size_t unreadable = 0;
};

Loaded load_activations(const ConceptArgs& a, const torch::jit::Module& module, const c10::Device& device) {
  Loaded l;
  std::vector<at::Tensor> inputs;
  for (const auto& path : a.images) {
    try {
      cv::Mat img = gradcam::load_image(path, a.common.max_pixels);
      gradcam::Geometry g;
      inputs.push_back(gradcam::to_tensor(img, preprocess_of(a.common), &g));
      l.paths.push_back(path);
      l.pictures.push_back(img);
      l.geometries.push_back(g);
    } catch (const gradcam::Error& e) {
      say() << "skipping unreadable image " << path << ": " << for_the_command(e.what()) << "\n";
      ++l.unreadable;
    }
  }
  GRADCAM_CHECK(!inputs.empty(), "no readable image to factorise");
  for (const auto& x : inputs) {
    GRADCAM_CHECK(x.sizes() == inputs.front().sizes(), "the images give inputs of different sizes (",
                  inputs.front().size(2), " x ", inputs.front().size(3), " and ", x.size(2), " x ", x.size(3),
                  "); the concepts are shared by every image: keep --crop, or resize them to one size");
  }
  // EigenCAM: the cheapest method that captures the layer without a backward pass
  gradcam::GradCAM cam(module, cam_options(a.common, {a.common.layer}).methods({gradcam::Method::eigencam})
                                   .keep_activations(true).device(device));
  l.layer = cam.layers().front();
  std::vector<at::Tensor> acts;
  for (size_t i = 0; i < inputs.size(); i += static_cast<size_t>(a.common.batch)) {
    const size_t end = std::min(inputs.size(), i + static_cast<size_t>(a.common.batch));
    const at::Tensor x = at::cat(std::vector<at::Tensor>(inputs.begin() + static_cast<long>(i), inputs.begin() + static_cast<long>(end)));
    acts.push_back(cam.compute(x.to(device)).maps.front().activations.cpu());
  }
  l.activations = at::cat(acts);
  return l;
}

/// One concept's record: its top classes through the head.
json concept_record(int64_t c, const at::Tensor& scores, int64_t top, const gradcam::Labels& labels) {
  json j = {{"concept", c}};
  if (!scores.defined()) return j;
  const auto best = scores[c].topk(std::min<int64_t>(top, scores.size(1)));
  json classes = json::array();
  for (int64_t t = 0; t < std::get<1>(best).size(0); ++t) {
    const int64_t cls = std::get<1>(best)[t].item<int64_t>();
    classes.push_back({{"class", cls}, {"label", labels.size() ? labels.name(cls) : std::to_string(cls)},
                       {"score", std::get<0>(best)[t].item<double>()}});
  }
  j["top_classes"] = classes;
  return j;
}

int run_concepts(ConceptArgs a) {
  if (!a.images_dir.empty()) {
    const auto more = list_images(a.images_dir);
    a.images.insert(a.images.end(), more.begin(), more.end());
  }
  GRADCAM_CHECK(!a.images.empty(), "no images given: use --image PATH or --images DIR");
  const c10::Device device(a.common.device);
  const auto module = gradcam::load_model(a.common.model, device);
  gradcam::Labels labels;
  if (!a.common.labels.empty()) labels = gradcam::Labels::read(a.common.labels);
  make_dir((fs::path(a.out) / "panels").string());
  const OutputLock lock(a.out);
  const Loaded l = load_activations(a, module, device);
  const auto f = gradcam::factorize(l.activations, gradcam::FactorizationOptions().components(a.components).iterations(a.iterations));
  const auto [weight, bias] = linear_head(module, a.linear, l.activations.size(1));
  const at::Tensor scores = weight.defined() ? gradcam::concept_scores(f, weight.cpu(), bias.defined() ? bias.cpu() : bias) : at::Tensor();
  json concepts = json::array(), images = json::array();
  for (int64_t c = 0; c < a.components; ++c) concepts.push_back(concept_record(c, scores, a.top, labels));
  const int colormap = gradcam::colormap_from_name("jet");
  std::map<std::string, int> stems;
  for (size_t i = 0; i < l.paths.size(); ++i) {
    const std::string stem = unique_stem(l.paths[i], stems);
    std::vector<cv::Mat> tiles = {l.pictures[i]};
    std::vector<std::string> captions = {stem};
    for (int64_t c = 0; c < a.components; ++c) {
      tiles.push_back(gradcam::overlay(l.pictures[i], gradcam::map_to_image(f.maps[static_cast<int64_t>(i)][c], l.geometries[i]), colormap, 0.5));
      const json& rec = concepts[static_cast<size_t>(c)];
      captions.push_back("concept " + std::to_string(c) + (rec.contains("top_classes") ? ": " + rec["top_classes"][0]["label"].get<std::string>() : ""));
    }
    const std::string panel = "panels/" + stem + ".png", npy = "panels/" + stem + "_maps.npy";
    gradcam::save_image((fs::path(a.out) / panel).string(), gradcam::panel(tiles, captions, a.panel_height));
    gradcam::save_npy((fs::path(a.out) / npy).string(), f.maps[static_cast<int64_t>(i)]);
    images.push_back({{"image", l.paths[i]}, {"panel", panel}, {"maps", npy}});
  }
  const json report = {{"model", a.common.model}, {"layer", l.layer}, {"components", a.components},
                       {"iterations", a.iterations}, {"residual", f.residual}, {"linear_head", weight.defined()},
                       {"concepts", concepts}, {"images", images}, {"unreadable", l.unreadable}};
  write_atomically((fs::path(a.out) / "concepts.json").string(), report.dump(2) + "\n");
  std::printf("%lld concepts of layer %s over %zu image(s), residual %.3f; %s\n", static_cast<long long>(a.components),
              l.layer.c_str(), l.paths.size(), f.residual, (fs::path(a.out) / "concepts.json").string().c_str());
  return l.unreadable > 0 ? 1 : 0;
}

}  // namespace

Subcommand add_concepts(CLI::App* c) {
  auto ca = std::make_shared<ConceptArgs>();
  add_common(c, ca->common);
  c->add_option("--image", ca->images, "image file(s)")->expected(1, -1);
  c->add_option("--images", ca->images_dir, "a folder of images");
  c->add_option("--components", ca->components, "concepts to find")->check(whole_number(1, 4096))->capture_default_str();
  c->add_option("--iterations", ca->iterations, "NMF iterations")->check(whole_number(1, 1000000))->capture_default_str();
  c->add_option("--top", ca->top, "classes listed per concept")->check(whole_number(1, 100))->capture_default_str();
  c->add_option("--linear", ca->linear, "module path of the linear head the concepts go through (default: the last "
                "weight [classes, channels])");
  c->add_option("--out", ca->out, "output folder (concepts.json, panels/)")->capture_default_str();
  c->add_option("--panel-height", ca->panel_height, "tile height in pixels")->check(whole_number(32, 2048))->capture_default_str();
  return {&ca->common, [ca] { return run_concepts(*ca); }};
}

}  // namespace gradcam_cli
