// src/guided.cpp: GuidedBackprop (the engine, engine.hpp, with no target layer) and display conversion.
#include <gradcam/guided.hpp>

#include <ATen/ATen.h>
#include <torch/csrc/jit/api/module.h>

#include <gradcam/error.hpp>

#include "engine.hpp"

namespace gradcam {

GuidedBackprop::GuidedBackprop(const torch::jit::Module& module, GuidedBackpropOptions options) {
  GRADCAM_CHECK(options.mode() != GuidedMode::none,
                "GuidedBackprop needs GuidedMode::guided or GuidedMode::deconvnet");
  engine_ = std::make_unique<detail::Engine>(
      module, GradCAMOptions(std::vector<std::string>{}).guided(options.mode()).device(options.device()));
}

GuidedBackprop::~GuidedBackprop() = default;
GuidedBackprop::GuidedBackprop(GuidedBackprop&&) noexcept = default;
GuidedBackprop& GuidedBackprop::operator=(GuidedBackprop&&) noexcept = default;

GuidedResult GuidedBackprop::compute(const at::Tensor& input, const Target& target) const {
  GradCAMResult r = engine_->compute(input, target);
  GuidedResult out;
  out.gradients = std::move(r.guided);
  out.classes = r.classes;
  out.scores = r.scores;
  out.logits = r.logits;
  out.replaced_activations = r.replaced_activations;
  out.untouched_activations = std::move(r.untouched_activations);
  return out;
}

at::Tensor guided_to_display(const at::Tensor& gradients) {
  GRADCAM_CHECK(gradients.defined() && (gradients.dim() == 3 || gradients.dim() == 4),
                "guided_to_display needs gradients [N,C,H,W] or [C,H,W]");
  if (gradients.dim() == 3) return guided_to_display(gradients.unsqueeze(0)).squeeze(0);
  at::Tensor flat = gradients.detach().reshape({gradients.size(0), -1});
  at::Tensor centred = flat - flat.mean(1, true);
  at::Tensor scaled = centred / (centred.std(1, /*unbiased=*/false, true) + 1e-5) * 0.1 + 0.5;
  return scaled.clamp(0, 1).view(gradients.sizes());
}

}  // namespace gradcam
