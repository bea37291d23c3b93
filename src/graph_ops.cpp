// src/graph_ops.cpp (private): the two operators the graph rewrite (graph.cpp) inserts,
// gradcam::capture and gradcam::guided_act, and the per-thread context they read. Behind
// graph.hpp like graph.cpp; docs/architecture.md has the why.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>

#include <gradcam/error.hpp>

#include "graph.hpp"

namespace gradcam::detail {

CaptureContext*& current_context() {
  thread_local CaptureContext* context = nullptr;
  return context;
}

namespace {

// gradcam::capture(Tensor x, int slot) -> Tensor
// Leaf mode: records A = x.detach().requires_grad_() and returns a clone of A, so that the rest of
// the forward pass is recorded by autograd from A on (and only from A on), and in-place ops after
// the layer (out += identity, relu_) act on the clone, never on A.
at::Tensor capture_op(const at::Tensor& x, int64_t slot) {
  CaptureContext* ctx = current_context();
  if (ctx == nullptr || slot < 0 || slot >= static_cast<int64_t>(ctx->captures.size())) {
    return x.clone();
  }
  if (static_cast<size_t>(slot) >= ctx->observe_from) {
    ctx->captures[slot].push_back(x.detach());
    ctx->order.push_back(static_cast<size_t>(slot));
    return x;
  }
  if (ctx->mode == CaptureContext::Mode::probe) {
    ctx->shapes.resize(ctx->captures.size());
    ctx->shapes[slot].push_back(x.sizes().vec());
    ctx->captures[slot].emplace_back();
    ctx->order.push_back(static_cast<size_t>(slot));
    return x;
  }
  if (ctx->mode == CaptureContext::Mode::perturb) {
    const auto call = static_cast<int64_t>(ctx->captures[slot].size());
    ctx->captures[slot].emplace_back();
    if (slot == ctx->ablate_slot && call == ctx->ablate_call && ctx->ablate) return ctx->ablate(x);
    return x;
  }
  GRADCAM_CHECK(x.is_floating_point(), "the target layer's output has dtype ", x.scalar_type(),
                "; Grad-CAM needs a floating-point activation");
  if (x.requires_grad()) {
    // Already recorded by autograd (an earlier capture, or guided gradients from the input):
    // gradients are taken with respect to x itself, and the rest of the graph uses a copy.
    ctx->captures[slot].push_back(x);
    return x.clone();
  }
  at::Tensor a = x.detach().requires_grad_(true);
  ctx->captures[slot].push_back(a);
  return a.clone();
}

// gradcam::guided_act(Tensor x, float lo, float hi) -> Tensor
// relu (hi = inf) or hardtanh(lo, hi) whose backward follows the current context's mode.
struct GuidedAct : public torch::autograd::Function<GuidedAct> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, double lo,
                            double hi) {
    ctx->save_for_backward({x});
    ctx->saved_data["lo"] = lo;
    ctx->saved_data["hi"] = hi;
    // saved_data holds IValues only, so the context travels as an int64. It outlives this node's
    // backward: the call that installed it (GradCAM::compute, GuidedBackprop) runs that backward.
    ctx->saved_data["ctx"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(current_context()));
    return std::isinf(hi) ? at::relu(x) : at::hardtanh(x, lo, hi);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor x = ctx->get_saved_variables()[0];
    const double lo = ctx->saved_data["lo"].toDouble();
    const double hi = ctx->saved_data["hi"].toDouble();
    auto* owner =
        reinterpret_cast<CaptureContext*>(static_cast<intptr_t>(ctx->saved_data["ctx"].toInt()));
    const BackwardMode mode = owner != nullptr ? owner->backward_mode.load() : BackwardMode::ordinary;
    at::Tensor g = grads[0];
    if (mode == BackwardMode::deconvnet) {  // only the sign of the incoming gradient matters
      return {at::relu(g), at::Tensor(), at::Tensor()};
    }
    if (mode == BackwardMode::guided) g = at::relu(g);  // positive gradients only...
    // ...through the ordinary mask (input > lo, and < hi for ReLU6), as relu's own backward does
    at::Tensor gin = std::isinf(hi) ? at::threshold_backward(g, x, lo) : at::hardtanh_backward(g, x, lo, hi);
    return {gin, at::Tensor(), at::Tensor()};
  }
};

at::Tensor guided_act_op(const at::Tensor& x, double lo, double hi) {
  return GuidedAct::apply(x, lo, hi);
}

// Registered with this file, which graph.cpp always links through current_context().
TORCH_LIBRARY(gradcam, m) {
  m.def("capture(Tensor x, int slot) -> Tensor", &capture_op);
  m.def("guided_act(Tensor x, float lo, float hi) -> Tensor", &guided_act_op);
}

}  // namespace
}  // namespace gradcam::detail
