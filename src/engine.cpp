// src/engine.cpp: the engine behind GradCAM and GuidedBackprop (engine.hpp): the target scores,
// the capture of the layers, the partial backward per rank, the maps, and guided gradients.
#include "engine.hpp"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/jit/api/module.h>

#include <algorithm>
#include <cmath>

#include <gradcam/error.hpp>

#include "layout.hpp"
#include "methods.hpp"
#include "outputs.hpp"
#include "util.hpp"

namespace gradcam {
namespace detail {

void check_input(const Forward& forward, const at::Tensor& input) {
  GRADCAM_CHECK(input.defined(), "the input tensor is undefined");
  const int64_t dim = forward.expected_dim() > 0 ? forward.expected_dim() : 4;
  GRADCAM_CHECK(input.dim() == dim, "input has shape ", shape_str(input.sizes()), "; expected a ",
                dim, "-D batch [N, C, H, W]");
  GRADCAM_CHECK(input.size(0) > 0, "input batch is empty (shape ", shape_str(input.sizes()), ")");
  if (forward.expected_channels() > 0) {
    GRADCAM_CHECK(input.size(1) == forward.expected_channels(), "input has ", input.size(1),
                  " channels (shape ", shape_str(input.sizes()),
                  ") but the model's first convolution expects ", forward.expected_channels());
  }
  GRADCAM_CHECK(input.is_floating_point(), "input has dtype ", input.scalar_type(),
                "; expected a floating-point tensor (e.g. float32)");
  const int64_t bad = (~at::isfinite(input)).sum().item<int64_t>();
  GRADCAM_CHECK(bad == 0, "input contains ", bad, " NaN or Inf value", bad == 1 ? "" : "s",
                " (shape ", shape_str(input.sizes()), ")");
}

namespace {

/// The output without its autograd history: a result must not keep the call's graph (memory,
/// and the guided ops' pointers to the call's context) alive.
c10::IValue detached(const c10::IValue& v) {
  return map_tensors(v, [](const at::Tensor& t) { return t.detach(); });
}

}  // namespace

namespace {

/// The options' own consistency, before anything is built (Engine's constructor).
void check_options(const GradCAMOptions& options) {
  GRADCAM_CHECK(!options.layers().empty() || options.guided() != GuidedMode::none,
                "GradCAMOptions names no layer");
  GRADCAM_CHECK(!options.methods().empty() || options.layers().empty(),
                "GradCAMOptions::methods is empty; name at least one method (e.g. Method::gradcam)");
  GRADCAM_CHECK(options.perturbation_batch() >= 0, "perturbation_batch must be >= 1 (or 0: automatic), got ",
                options.perturbation_batch());
  GRADCAM_CHECK(options.samples() >= 0, "samples must be >= 1 (or 0: the method's default), got ", options.samples());
  GRADCAM_CHECK(!options.aug_smooth() || options.guided() == GuidedMode::none,
                "aug_smooth averages CAM maps over flipped copies of the input; guided gradients are not averaged "
                "that way: compute them without aug_smooth");
  GRADCAM_CHECK(options.aug_scales().empty() || options.aug_smooth(), "aug_scales adds input sizes to aug_smooth; "
                "set aug_smooth too");
  for (double f : options.aug_scales()) {
    GRADCAM_CHECK(std::isfinite(f) && f > 0 && f <= 4, "aug_scales: each factor must be in (0, 4], got ", f);
  }
  GRADCAM_CHECK(!options.noise_std() || (std::isfinite(*options.noise_std()) && *options.noise_std() >= 0),
                "noise_std must be a finite number >= 0, got ", options.noise_std().value_or(0));
  for (size_t i = 0; i < options.methods().size(); ++i) {
    const Method m = options.methods()[i];
    GRADCAM_CHECK(!options.counterfactual() || !uses_bias_gradients(m), "counterfactual maps come from negated "
                  "gradients; method '", method_name(m), "' sums absolute values (|x dy/dx| and |b dy/db|), which "
                  "negated gradients leave unchanged: it has no counterfactual form");
    GRADCAM_CHECK(!options.counterfactual() || uses_gradients(m), "counterfactual maps come from "
                  "negated gradients; method '", method_name(m), "' does not use gradients (use "
                  "gradcam, gradcam++, xgradcam, hirescam or layercam)");
    for (size_t j = 0; j < i; ++j) {
      GRADCAM_CHECK(options.methods()[j] != m, "method '", method_name(m), "' is listed twice");
    }
  }
}

}  // namespace

Engine::Engine(const torch::jit::Module& m, GradCAMOptions opts) : options(std::move(opts)), module(m) {
  check_options(options);
  if (options.device()) {
    const c10::Device device = *options.device();
    GRADCAM_CHECK(!device.is_cuda() || at::hasCUDA(), "device '", device.str(),
                  "' requested but CUDA is not available on this machine or LibTorch build");
    bool elsewhere = false;
    for (const auto& p : module.parameters()) {
      elsewhere = p.device() != device;
      break;
    }
    if (elsewhere) {  // never move the caller's module: work on a private copy
      module = m.clone();
      module.to(device);
    }
  }
  if (in_training_mode(module)) {
    TORCH_WARN("gradcam: the model is in training mode; explaining it in eval mode "
               "(batch norm uses running statistics, dropout is off). Call model.eval().");
  }
  layers = options.layers();
  for (auto& layer : layers) {
    if (layer == "auto") {
      const LayerListing listing = probe_layers(module, at::Tensor(), options.probe_shape());
      layer = listing.auto_layer;
      GRADCAM_CHECK(!layer.empty(), "'auto' ",
                    listing.auto_note.empty() ? "found no 4-D activation with spatial size > 1" : "chose no layer",
                    " for input shape ", shape_str(options.probe_shape()),
                    listing.auto_note.empty() ? "" : ": " + listing.auto_note,
                    "; name a layer (see `gradcam layers`) or set probe_shape");
    }
  }
  RewriteSpec spec;
  spec.layers = layers;
  spec.guided = options.guided();
  if (std::find(options.methods().begin(), options.methods().end(), Method::rollout) != options.methods().end()) {
    attention = find_attention(module, options.attention_heads());
    for (const auto& a : attention) spec.inputs.push_back(a.path);
  }
  if (std::any_of(options.methods().begin(), options.methods().end(), uses_bias_gradients) && !layers.empty()) {
    bias_layers = find_bias_layers(module);
    for (const BiasLayer& b : bias_layers) {  // a named layer keeps its one slot
      const auto named = std::find(layers.begin(), layers.end(), b.path);
      bias_slots.push_back(named != layers.end() ? static_cast<size_t>(named - layers.begin()) : spec.layers.size());
      if (named == layers.end()) spec.layers.push_back(b.path);
    }
  }
  forward = std::make_unique<Forward>(module, spec);
}

namespace {

/// What one compute() call shares between its steps.
struct Call {
  explicit Call(const Engine& e)
      : options(e.options), forward(*e.forward), module(e.module), layers(e.layers), attention(e.attention),
        engine(e), ctx(forward.slots(), CaptureContext::Mode::leaf, forward.observe_from()) {}
  const GradCAMOptions& options;
  const detail::Forward& forward;
  const torch::jit::Module& module;
  const std::vector<std::string>& layers;
  const std::vector<AttentionModule>& attention;
  const Engine& engine;
  AttentionCalls attention_calls;  ///< the observed self-attention calls, in call order
  at::Tensor input;  ///< detached, on the options' device; requires grad for guided gradients
  bool layer_gradients = false;  ///< a gradient method on a layer: a backward pass to the leaves
  bool hessian = false;          ///< ShapleyCAM: that pass records a graph, for H A
  bool fullgrad = false;         ///< FullGrad: a backward pass to the bias layers and the input
  std::vector<at::Tensor> bias_outputs;  ///< FullGrad: each call's output of each bias layer...
  std::vector<size_t> bias_of;           ///< ...and which of Engine::bias_layers made it
  detail::CaptureContext ctx;
  Scores scores;
  std::vector<at::Tensor> leaves;                  ///< captured activations A, one per call
  std::vector<std::pair<size_t, int64_t>> where;   ///< (slot, call) of each leaf
  std::vector<Layout> layouts;                     ///< how each leaf is read as a grid
  std::vector<std::vector<detail::Prepared>> prepared;  ///< [leaf][method]
};

// Step 1: the forward pass, with the captures recorded in c.ctx.
c10::IValue run_forward(Call& c) {
  try {
    return c.forward.run(c.input, c.ctx);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail(concat("the model's forward pass failed on input of shape ", shape_str(c.input.sizes()),
                ": ", detail::torch_message(e)));
  }
}

// Step 2: every capture of every layer, in slot then call order, with the layout it is read in;
// and the self-attention calls, in call order.
void collect(Call& c) {
  const size_t first = c.forward.observe_from();
  std::vector<size_t> next(c.attention.size(), 0);
  for (size_t slot : c.ctx.order) {
    if (slot < first) continue;
    c.attention_calls.modules.push_back(&c.attention[slot - first]);
    c.attention_calls.inputs.push_back(c.ctx.captures[slot][next[slot - first]++]);
  }
  for (size_t slot = 0; slot < c.layers.size(); ++slot) {
    GRADCAM_CHECK(!c.ctx.captures[slot].empty(), "layer '", c.layers[slot],
                  "' was not reached by this forward pass (it is inside a branch not taken)");
    for (size_t call = 0; call < c.ctx.captures[slot].size(); ++call) {
      const at::Tensor& a = c.ctx.captures[slot][call];
      // A detector's region heads see a batch of boxes, not of images: no map of the image.
      GRADCAM_CHECK(a.dim() >= 1 && a.size(0) == c.input.size(0), "layer '", c.layers[slot], "' (call ", call,
                    ") gives shape ", shape_str(a.sizes()), ", whose first dimension is not the batch of ",
                    c.input.size(0), " image", c.input.size(0) == 1 ? "" : "s",
                    "; choose a layer that sees the whole image (a backbone or FPN layer of a detector)");
      c.layouts.push_back(resolve_layout(c.options.token_layout(), c.layers[slot], a.sizes(), c.input.sizes()));
      c.leaves.push_back(a);
      c.where.emplace_back(slot, static_cast<int64_t>(call));
    }
  }
  for (size_t b = 0; c.fullgrad && b < c.engine.bias_layers.size(); ++b) {
    for (const at::Tensor& z : c.ctx.captures[c.engine.bias_slots[b]]) {
      GRADCAM_CHECK(z.dim() == 4 && z.size(0) == c.input.size(0), "FullGrad sums the bias gradients of every "
                    "Conv2d and BatchNorm2d layer over the image, and layer '", c.engine.bias_layers[b].path,
                    "' gives shape ", shape_str(z.sizes()), ", not [", c.input.size(0), ", K, h, w] (a detector's "
                    "region heads see boxes, not images): choose another method for this model");
      c.bias_outputs.push_back(z);
      c.bias_of.push_back(b);
    }
  }
}

GradCAMResult new_result(const Call& c, const c10::IValue& out) {
  GradCAMResult result;
  result.output = std::make_shared<const c10::IValue>(detached(out));
  result.classes = c.scores.classes;
  result.logits = c.scores.logits;
  std::vector<at::Tensor> cols;
  for (const auto& s : c.scores.per_rank) cols.push_back(s.detach());
  result.scores = at::stack(cols, 1);
  result.untouched_activations = c.forward.untouched_activations();
  result.replaced_activations = c.forward.replaced_activations();
  return result;
}

// Step 3: each method's work shared by every rank, per activation (methods.hpp).
void prepare(Call& c) {
  const at::Tensor input = c.input.detach();
  const auto& methods = c.options.methods();
  c.prepared.resize(c.leaves.size());
  for (size_t i = 0; i < c.leaves.size(); ++i) {
    const at::Tensor a = to_grid(c.leaves[i].detach(), c.layouts[i]);
    for (size_t j = 0; j < methods.size(); ++j) {
      const detail::Prepared* first = i > 0 ? &c.prepared[0][j] : nullptr;
      c.prepared[i].push_back(detail::prepare_method(
          methods[j], {c.forward, c.module, c.options, input, a, c.layouts[i], c.where[i].first,
                       c.where[i].second, c.scores.logits, c.scores.classes, first, c.attention_calls}));
    }
  }
}

/// dy/dA of leaf i read as a grid, checked, and negated for counterfactual maps.
at::Tensor leaf_gradient(const Call& c, size_t i, const at::Tensor& raw) {
  const std::string& layer = c.layers[c.where[i].first];
  GRADCAM_CHECK(raw.defined(), "the target score does not depend on layer '", layer, "' (call ",
                c.where[i].second,
                "): no gradient reaches it, so its map would be blank; choose a layer the score is "
                "computed from");
  const at::Tensor g = to_grid(raw, c.layouts[i]);
  const bool any = g.ne(0).any().item<bool>();
  // A class-token head reads only the class token after the last attention: the grid's tokens
  // of the last block's output get no gradient, though the extra tokens do.
  GRADCAM_CHECK(any || !raw.ne(0).any().item<bool>(), "the gradient of the target score with respect to layer '",
                layer, "' is zero at every grid token and reaches only its extra tokens, so its map would be "
                "blank: the head reads the class token, and no attention follows this layer to carry the grid's "
                "tokens into it; choose a layer before the last attention (the last block's first norm, e.g. "
                "ln_1 or norm1)");
  GRADCAM_CHECK(any, "the gradient of the target score with respect to "
                "layer '", layer, "' is zero everywhere, so its map would be blank");
  return c.options.counterfactual() ? g.neg() : g;
}

/// ShapleyCAM's H A for leaf i from g = dy/dA (recorded with its graph), read as a grid; negated
/// for counterfactual maps.
at::Tensor hessian_times_a(const Call& c, size_t i, const at::Tensor& g) {
  at::Tensor h;
  // where y is linear in A after the layer (ReLU and linear layers only) g has no graph: H A = 0
  if (g.defined() && g.requires_grad()) {
    try {
      h = torch::autograd::grad({g}, {c.leaves[i]}, {c.leaves[i].detach()}, true, false, true)[0];
    } catch (const std::exception& e) {
      fail(concat("ShapleyCAM needs the second derivative of the score with respect to layer '",
                  c.layers[c.where[i].first], "', and this LibTorch has none for an operator after it (",
                  torch_message(e), "); LibTorch 2.x's fused attention kernels have none: choose another method "
                  "for this layer"));
    }
  }
  h = to_grid(h.defined() ? h : at::zeros_like(c.leaves[i]), c.layouts[i]);
  return c.options.counterfactual() ? h.neg() : h;
}

/// dy/dA of every leaf, read as grids; with c.hessian (ShapleyCAM) also H A, the Hessian of y with
/// respect to A times A, from a backward pass that records its own graph (create_graph). Both
/// negated for counterfactual maps.
struct LeafGradients {
  std::vector<at::Tensor> g, hvp;
};

LeafGradients leaf_gradients(Call& c, const at::Tensor& score, bool retain) {
  LeafGradients out;
  out.g.resize(c.leaves.size());
  out.hvp.resize(c.leaves.size());
  if (!c.layer_gradients) return out;
  c.ctx.backward_mode = detail::BackwardMode::ordinary;
  std::vector<at::Tensor> g;
  try {
    g = torch::autograd::grad({score}, c.leaves, {}, retain || c.hessian, c.hessian, /*allow_unused=*/true);
  } catch (const std::exception& e) {  // the autograd engine throws std::runtime_error
    backward_failed("to the layers", e);
  }
  for (size_t i = 0; c.hessian && i < g.size(); ++i) out.hvp[i] = hessian_times_a(c, i, g[i]);
  for (size_t i = 0; i < g.size(); ++i) out.g[i] = leaf_gradient(c, i, g[i].defined() ? g[i].detach() : g[i]);
  return out;
}

/// FullGrad's map of one rank (fullgrad.cpp), from a backward pass in ordinary mode to every bias
/// layer's outputs and to the input.
at::Tensor full_gradient_map(Call& c, const at::Tensor& score, bool retain) {
  c.ctx.backward_mode = detail::BackwardMode::ordinary;
  std::vector<at::Tensor> to = c.bias_outputs;
  to.push_back(c.input);
  std::vector<at::Tensor> g;
  try {
    g = torch::autograd::grad({score}, to, {}, retain, false, /*allow_unused=*/true);
  } catch (const std::exception& e) {  // the autograd engine throws std::runtime_error
    backward_failed("to the bias layers and the input (FullGrad)", e);
  }
  std::vector<BiasGradient> terms;
  for (size_t i = 0; i < c.bias_outputs.size(); ++i) {  // no gradient: the score does not read it
    if (g[i].defined()) terms.push_back({c.engine.bias_layers[c.bias_of[i]].bias, g[i]});
  }
  const at::Tensor gx = g.back().defined() ? g.back() : at::zeros_like(c.input);
  return fullgrad_map(c.input.detach(), gx, terms);
}

// Step 4: the maps of rank r: the backward passes to the leaves (and for FullGrad to the bias
// layers and the input), then every method on every leaf.
void rank_maps(Call& c, int64_t r, const at::Tensor& score, bool retain, GradCAMResult& result) {
  const LeafGradients grads = leaf_gradients(c, score, retain || c.fullgrad);
  const at::Tensor full = c.fullgrad ? full_gradient_map(c, score, retain) : at::Tensor();
  const at::Tensor classes = c.scores.classes.narrow(1, r, 1).squeeze(1);
  const at::Tensor score_r = c.scores.per_rank[static_cast<size_t>(r)].detach();
  const auto& methods = c.options.methods();
  for (size_t i = 0; i < c.leaves.size(); ++i) {
    const std::string& layer = c.layers[c.where[i].first];
    const at::Tensor a = to_grid(c.leaves[i].detach(), c.layouts[i]);
    for (size_t j = 0; j < methods.size(); ++j) {
      detail::Weighted w = detail::method_map(
          methods[j], {a, grads.g[i], classes, score_r, c.scores.logits, layer, c.prepared[i][j], r, grads.hvp[i], full});
      if (c.options.eigen_smooth()) w = detail::eigen_smoothed(w, a);
      LayerMap m;
      m.method = methods[j];
      m.layer = layer;
      m.call = c.where[i].second;
      m.rank = r;
      m.layout = to_public(c.layouts[i]);
      m.map = at::relu(w.signed_map);
      if (c.options.keep_signed()) m.map_signed = w.signed_map;
      if (c.options.keep_weights()) m.weights = w.weights;
      if (c.options.keep_activations()) m.activations = a;
      if (c.options.keep_gradients() && grads.g[i].defined()) m.gradients = grads.g[i];
      result.maps.push_back(std::move(m));
    }
  }
}

// Step 5: guided gradients of rank r's score to the input, and Guided Grad-CAM for the rank's maps
// (those from first_map on).
void guided_maps(Call& c, const at::Tensor& score, bool retain, size_t first_map,
                 GradCAMResult& result) {
  const GuidedMode guided = c.options.guided();
  c.ctx.backward_mode = guided == GuidedMode::guided ? detail::BackwardMode::guided
                                                     : detail::BackwardMode::deconvnet;
  std::vector<at::Tensor> g;
  try {
    g = torch::autograd::grad({score}, {c.input}, {}, retain, false, true);
  } catch (const std::exception& e) {  // the autograd engine throws std::runtime_error
    backward_failed("to the input (guided gradients)", e);
  }
  at::Tensor gin = g[0].defined() ? g[0] : at::zeros_like(c.input);
  const std::vector<int64_t> input_hw = {c.input.size(2), c.input.size(3)};
  for (size_t i = first_map; i < result.maps.size(); ++i) {
    LayerMap& m = result.maps[i];
    GRADCAM_CHECK(m.map.dim() == 4, "layer '", m.layer, "': Guided Grad-CAM needs a 4-D activation");
    m.guided_gradcam = gin * upsample(m.map, input_hw);
  }
  result.guided.push_back(gin);
}

}  // namespace

GradCAMResult Engine::compute(const at::Tensor& input, const Target& target) const {
  return options.aug_smooth() ? aug_smoothed(*this, input, target) : compute_copies(input, target, 1);
}

GradCAMResult Engine::compute_copies(const at::Tensor& input, const Target& target, int64_t copies,
                                     const at::Tensor& classes) const {
  const Engine& impl = *this;
  check_input(*impl.forward, input);
  Call c(impl);
  c.input = input.detach();
  if (impl.options.device() && c.input.device() != *impl.options.device()) {
    c.input = c.input.to(*impl.options.device());
  }
  const GuidedMode guided = impl.options.guided();
  const std::vector<Method>& methods = impl.options.methods();
  const bool any_layer = !impl.layers.empty();
  c.layer_gradients = any_layer && std::any_of(methods.begin(), methods.end(), uses_gradients);
  c.hessian = c.layer_gradients && std::any_of(methods.begin(), methods.end(), detail::uses_hessian);
  c.fullgrad = any_layer && std::any_of(methods.begin(), methods.end(), detail::uses_bias_gradients);
  const bool function_target = target.kind() == Target::Kind::score || target.kind() == Target::Kind::ranked;
  for (Method m : methods) {
    GRADCAM_CHECK(!any_layer || !function_target || !detail::is_perturbation(m), "method '", method_name(m),
                  "' explains class targets (top-k or classes): it runs the model again on perturbed inputs and "
                  "reads their class scores, where a Target::score or Target::ranked function cannot be evaluated");
  }
  // Without gradient methods or guided gradients no backward pass runs: record no graph.
  const bool need_backward = c.layer_gradients || c.fullgrad || guided != GuidedMode::none;
  c10::AutoGradMode grad_on(need_backward);
  if (guided != GuidedMode::none || c.fullgrad) c.input.requires_grad_(true);

  const c10::IValue out = run_forward(c);
  c.scores = resolve_target(target, out, c.input.size(0), copies, classes);
  collect(c);
  GradCAMResult result = new_result(c, out);
  prepare(c);
  const auto ranks = static_cast<int64_t>(c.scores.per_rank.size());
  for (int64_t r = 0; r < ranks; ++r) {
    const at::Tensor score = c.scores.per_rank[static_cast<size_t>(r)].sum();
    const bool last = r + 1 == ranks;
    if (need_backward) {
      GRADCAM_CHECK(score.requires_grad(), "the target score does not depend on ",
                    c.leaves.empty() ? std::string("the input")
                                     : concat("layer '", impl.layers.front(), "'"),
                    ": no gradient can flow back from it");
    }
    const size_t first_map = result.maps.size();
    rank_maps(c, r, score, guided != GuidedMode::none || !last, result);
    if (guided != GuidedMode::none) guided_maps(c, score, !last, first_map, result);
  }
  return result;
}

}  // namespace detail
}  // namespace gradcam
