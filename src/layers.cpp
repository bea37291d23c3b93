// src/layers.cpp: layer discovery (list_layers) and the "auto" layer choice.
#include <gradcam/layers.hpp>

#include <ATen/ATen.h>
#include <torch/csrc/jit/api/module.h>

#include <map>

#include <gradcam/error.hpp>

#include "graph.hpp"
#include "layout.hpp"
#include "util.hpp"

namespace gradcam {
namespace detail {

/// Sets listing.auto_layer (and auto_note when it chooses none) from a probe run's shapes.
void choose_auto(LayerListing& listing, const CaptureContext& ctx, const std::vector<ProbeSlot>& slots,
                 const at::Tensor& input) {
  // auto: the last-produced 4-D activation with h*w > 1; an enclosing module's output is
  // produced after its children's, so ties go to the outermost module.
  // Adaptive pooling (VGG's avgpool to 7x7, or global pooling) is the head's input, not a
  // feature map, and is skipped.
  // A transformer's only grid is its patch embedding, which explains nothing: when the one grid
  // layer is followed by token layers, auto chooses none and says why.
  size_t grids = 0;
  std::string tokens_after;
  for (size_t slot : ctx.order) {
    const auto& s = ctx.shapes[slot].front();
    const std::string& type = slots[slot].type;
    const bool pooling = type.rfind("Adaptive", 0) == 0 || type.find("adaptive_") != std::string::npos;
    const Layout layout = infer_layout(s, input.sizes());
    if (s.size() == 4 && s[2] * s[3] > 1 && !pooling && layout.kind == Layout::Kind::channels_first) {
      listing.auto_layer = slots[slot].name;
      ++grids;
      tokens_after.clear();
    } else if (layout.kind == Layout::Kind::tokens && tokens_after.empty()) {
      tokens_after = "'" + slots[slot].name + "' gives " + describe(layout, s);
    }
  }
  if (grids == 1 && !tokens_after.empty()) {
    listing.auto_note = "the one grid layer, '" + listing.auto_layer + "', is followed by token layers (" +
                        tokens_after + "): a transformer, whose grid layer is its patch embedding, and gradcam "
                        "does not read token layers yet";
    listing.auto_layer.clear();
  }
}

LayerListing probe_layers(const torch::jit::Module& module, const at::Tensor& example,
                          std::vector<int64_t> shape) {
  RewriteSpec spec;
  spec.probe_all = true;
  Forward forward(module, spec);
  at::Tensor input = example;
  if (!input.defined()) {
    for (size_t i = 0; i < shape.size(); ++i) {
      if (shape[i] < 0) shape[i] = i == 1 && forward.expected_channels() > 0 ? forward.expected_channels() : (i == 1 ? 3 : 224);
    }
    auto opts = at::TensorOptions().dtype(at::kFloat);
    for (const auto& p : module.parameters()) {
      opts = opts.device(p.device()).dtype(p.scalar_type());
      break;
    }
    input = at::zeros(shape, opts);
  }
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
    return li;
  };
  choose_auto(listing, ctx, slots, input);
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
