// src/layers.cpp: layer discovery (list_layers) and the "auto" layer choice.
#include <gradcam/layers.hpp>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/jit/api/module.h>

#include <algorithm>
#include <cstring>
#include <map>

#include <gradcam/error.hpp>

#include "graph.hpp"
#include "layout.hpp"
#include "outputs.hpp"
#include "util.hpp"

namespace gradcam {
namespace detail {

namespace {

/// The last-produced token or channels-last layer whose grid the model's output depends on, with
/// the ordinary gradient: one forward and backward pass, every module output captured, of a fixed
/// pseudo-random input and a fixed random weighting of the class scores (so that no cancellation
/// or dead unit of a zero input hides a dependence). Empty when there is none, or when the output
/// has no class scores; then `why` says why, when the probe failed.
std::string deepest_dependent(const Forward& forward, const CaptureContext& probe,
                              const std::vector<ProbeSlot>& slots, const at::Tensor& like, std::string& why) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(20171022);
  const at::Tensor x = at::randn(like.sizes(), gen, at::TensorOptions().dtype(at::kFloat)).to(like.options());
  CaptureContext ctx(forward.slots());
  c10::AutoGradMode grad_on(true);
  try {
    const at::Tensor logits = logits_of(forward.run(x, ctx));
    const at::Tensor w = at::randn(logits.sizes(), gen, at::TensorOptions().dtype(at::kFloat)).to(logits.options());
    const at::Tensor score = (logits * w).sum();
    if (!score.requires_grad()) return "";
    std::vector<size_t> which;
    std::vector<Layout> layouts;
    std::vector<at::Tensor> leaves;
    for (size_t slot : probe.order) {
      const Layout l = infer_layout(probe.shapes[slot].front(), like.sizes());
      const bool grid = l.kind == Layout::Kind::tokens || l.kind == Layout::Kind::channels_last;
      if (!grid || ctx.captures[slot].empty() || std::find(which.begin(), which.end(), slot) != which.end()) continue;
      which.push_back(slot);
      layouts.push_back(l);
      leaves.push_back(ctx.captures[slot].front());
    }
    if (leaves.empty()) return "";
    std::vector<at::Tensor> grads;
    try {
      grads = torch::autograd::grad({score}, leaves, {}, false, false, /*allow_unused=*/true);
    } catch (const std::exception& e) {  // the autograd engine throws std::runtime_error
      backward_failed("of auto's probe", e);
    }
    std::string chosen;
    for (size_t i = 0; i < grads.size(); ++i) {
      if (grads[i].defined() && to_grid(grads[i], layouts[i]).ne(0).any().item<bool>()) chosen = slots[which[i]].name;
    }
    return chosen;
  } catch (const std::exception& e) {  // no class scores, or an output auto cannot read: no choice
    why = torch_message(e);
    return "";
  }
}

/// A detector's stage for auto: the last of `stages` (direct children of its backbone body, in
/// production order) that the top detections of a fixed pseudo-random image all depend on, by one
/// backward pass per detection. SSDlite's heads read both its stages, so a box of the first level
/// does not depend on the last; Faster R-CNN's and RetinaNet's read the FPN over every stage. The
/// last stage when the probe finds no detection.
std::string detector_stage(const Forward& forward, const std::vector<ProbeSlot>& slots, const std::vector<size_t>& stages,
                           const at::Tensor& like) {
  if (stages.empty()) return "";
  auto gen = at::make_generator<at::CPUGeneratorImpl>(20171022);
  const at::Tensor x = at::rand(like.sizes(), gen, at::TensorOptions().dtype(at::kFloat)).to(like.options());
  CaptureContext ctx(forward.slots());
  c10::AutoGradMode grad_on(true);
  std::vector<bool> all(stages.size(), true);
  try {
    const auto detections = torchvision_detections(forward.run(x, ctx));
    if (!detections || detections->empty()) return slots[stages.back()].name;
    const at::Tensor scores = detections->front().scores;
    std::vector<at::Tensor> leaves;
    for (size_t slot : stages) {
      if (ctx.captures[slot].empty()) return slots[stages.back()].name;
      leaves.push_back(ctx.captures[slot].front());
    }
    const int64_t count = std::min<int64_t>(scores.size(0), 5);
    if (count == 0 || !scores.requires_grad()) return slots[stages.back()].name;
    for (int64_t j = 0; j < count; ++j) {
      const auto g = torch::autograd::grad({scores[j]}, leaves, {}, true, false, /*allow_unused=*/true);
      for (size_t i = 0; i < g.size(); ++i) all[i] = all[i] && g[i].defined() && g[i].ne(0).any().item<bool>();
    }
  } catch (const std::exception&) {  // the probe could not run: the last stage
    return slots[stages.back()].name;
  }
  for (size_t i = stages.size(); i-- > 0;) {
    if (all[i]) return slots[stages[i]].name;
  }
  return slots[stages.back()].name;
}

/// A torchvision detector's backbone body ("backbone.body", or "backbone.features" for SSD), or
/// "" for any other model.
std::string detector_body(const std::vector<ProbeSlot>& slots) {
  for (const char* body : {"backbone.body.", "backbone.features."}) {
    for (const auto& slot : slots) {
      if (slot.name.rfind(body, 0) == 0) return std::string(body, std::strlen(body) - 1);
    }
  }
  return "";
}

/// Sets listing.auto_layer (and auto_note for a transformer or a detector) from a probe run's shapes.
void choose_auto(LayerListing& listing, const Forward& forward, const CaptureContext& ctx,
                 const at::Tensor& input) {
  // auto: the last-produced 4-D activation with h*w > 1; an enclosing module's output is
  // produced after its children's, so ties go to the outermost module.
  // Adaptive pooling (VGG's avgpool to 7x7, or global pooling) is the head's input, not a
  // feature map, and is skipped.
  // A transformer's only grid is its patch embedding, which explains nothing: when at most one
  // grid layer is followed by token layers, auto takes a token layer (deepest_dependent).
  // A torchvision detector (a `backbone` with a `body` or `features`): the backbone's last stage,
  // a direct child of those; its FPN levels are there to be named.
  const auto& slots = forward.probe_slots();
  const std::string stage_of = detector_body(slots);
  if (!stage_of.empty()) {
    listing.auto_note = "a detector: the last stage of its backbone ('" + stage_of + "') that its top detections of a "
                        "random image all depend on";
  }
  size_t grids = 0;
  std::string tokens_after;
  std::vector<size_t> stages;  // a detector's
  for (size_t slot : ctx.order) {
    const auto& s = ctx.shapes[slot].front();
    const std::string& type = slots[slot].type;
    const bool pooling = type.rfind("Adaptive", 0) == 0 || type.find("adaptive_") != std::string::npos;
    const Layout layout = infer_layout(s, input.sizes());
    // a region head's batch is of boxes, not images
    const bool images = !s.empty() && s[0] == input.size(0);
    const std::string& name = slots[slot].name;
    const bool stage = stage_of.empty() || (name.rfind(stage_of + ".", 0) == 0 &&
                                            name.find('.', stage_of.size() + 1) == std::string::npos);
    if (s.size() == 4 && s[2] * s[3] > 1 && !pooling && images && stage && layout.kind == Layout::Kind::channels_first) {
      listing.auto_layer = slots[slot].name;
      if (!stage_of.empty()) stages.push_back(slot);
      ++grids;
      tokens_after.clear();
    } else if (layout.kind == Layout::Kind::tokens && tokens_after.empty()) {
      tokens_after = "'" + slots[slot].name + "' gives " + describe(layout, s);
    }
  }
  if (!stage_of.empty()) {
    listing.auto_layer = detector_stage(forward, slots, stages, input);
    return;
  }
  if (grids > 1 || tokens_after.empty()) return;
  const std::string embedding = listing.auto_layer.empty() ? std::string("it has no grid layer")
                                                           : "its one grid layer, '" + listing.auto_layer + "', is its patch embedding";
  std::string why;
  listing.auto_layer = deepest_dependent(forward, ctx, slots, input, why);
  listing.auto_note = "a transformer (" + embedding + ", followed by token layers: " + tokens_after + "): " +
                      (!listing.auto_layer.empty() ? std::string("the last token layer whose grid tokens the output depends on")
                       : why.empty() ? std::string("the output depends on no token layer's grid for a random input (is the head all zeros?)")
                                     : "no token layer could be chosen: " + why);
}

at::Tensor zeros_for(const Forward& forward, const torch::jit::Module& module, std::vector<int64_t> shape) {
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0) shape[i] = i == 1 && forward.expected_channels() > 0 ? forward.expected_channels() : (i == 1 ? 3 : 224);
  }
  auto opts = at::TensorOptions().dtype(at::kFloat);
  for (const auto& p : module.parameters()) {
    opts = opts.device(p.device()).dtype(p.scalar_type());
    break;
  }
  return at::zeros(shape, opts);
}

}  // namespace

at::Tensor example_input(const torch::jit::Module& module, std::vector<int64_t> shape) {
  return zeros_for(Forward(module, RewriteSpec{}), module, std::move(shape));
}

LayerListing probe_layers(const torch::jit::Module& module, const at::Tensor& example,
                          std::vector<int64_t> shape) {
  RewriteSpec spec;
  spec.probe_all = true;
  Forward forward(module, spec);
  const at::Tensor input = example.defined() ? example : zeros_for(forward, module, std::move(shape));
  check_input(forward, input);
  CaptureContext ctx(forward.slots(), CaptureContext::Mode::probe);
  c10::NoGradGuard no_grad;
  try {
    forward.run(input, ctx);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail(concat("the model's forward pass failed on input of shape ", shape_str(input.sizes()),
                ": ", torch_message(e)));
  }
  ctx.shapes.resize(forward.slots());

  LayerListing listing;
  listing.frozen = forward.frozen();
  const auto& slots = forward.probe_slots();
  auto info = [&](size_t slot) {
    LayerInfo li;
    li.name = slots[slot].name;
    li.type = slots[slot].type;
    li.is_tensor = slots[slot].is_tensor;
    li.calls = static_cast<int64_t>(ctx.captures[slot].size());
    if (!ctx.shapes[slot].empty()) li.shape = ctx.shapes[slot].front();
    const Layout layout = infer_layout(li.shape, input.sizes());
    if (layout.kind != Layout::Kind::other) li.layout = to_public(layout);
    return li;
  };
  choose_auto(listing, forward, ctx, input);
  if (listing.frozen) {
    for (size_t slot = 0; slot < slots.size(); ++slot) listing.layers.push_back(info(slot));
  } else {
    // definition order (named_modules), which puts a module before its children
    std::map<std::string, size_t> index;
    for (size_t slot = 0; slot < slots.size(); ++slot) index[slots[slot].name] = slot;
    for (const auto& path : module_paths(module)) {
      auto it = index.find(path);
      if (it != index.end()) {
        listing.layers.push_back(info(it->second));
      } else {
        LayerInfo li;  // a module forward never calls
        li.name = path;
        li.type = "(not called)";
        li.is_tensor = false;
        listing.layers.push_back(li);
      }
    }
  }
  return listing;
}

}  // namespace detail

LayerListing list_layers(const torch::jit::Module& module, const at::Tensor& example_input) {
  GRADCAM_CHECK(example_input.defined(), "list_layers needs an example input");
  return detail::probe_layers(module, example_input);
}

LayerListing list_layers(const torch::jit::Module& module, std::vector<int64_t> shape) {
  GRADCAM_CHECK(!shape.empty(), "list_layers needs an input shape");
  return detail::probe_layers(module, at::Tensor(), std::move(shape));
}

}  // namespace gradcam
