// gradcam/guided.hpp: Guided Backpropagation and Deconvnet gradients with respect to the input.
//
// GuidedBackprop rewrites every ReLU of a private copy of the forward graph (aten::relu, relu_,
// from modules and functional calls alike, in every block and branch; ReLU6 = hardtanh(0, 6))
// into an op whose backward is modified; the user's module is untouched. For Guided Grad-CAM
// (guided gradients times the upsampled Grad-CAM map, from one shared forward pass) use
// GradCAMOptions::guided, which returns both in one GradCAMResult.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <gradcam/arg.hpp>
#include <gradcam/grad_cam.hpp>

namespace gradcam {

namespace detail {
struct Engine;  // src/engine.hpp: shared with GradCAM
}  // namespace detail

/// Options of GuidedBackprop.
class GuidedBackpropOptions {
  /// GuidedMode::guided (default) or GuidedMode::deconvnet.
  GRADCAM_ARG(GuidedMode, mode) = GuidedMode::guided;
  /// The device to run on; see GradCAMOptions::device. Default: the module's.
  GRADCAM_ARG(std::optional<c10::Device>, device) = std::nullopt;
};

/// Guided (or deconvnet) gradients of one compute() call.
struct GuidedResult {
  /// Per target rank, d score / d input with the modified ReLU backward: [N,C,H,W].
  std::vector<at::Tensor> gradients;
  at::Tensor classes;  ///< [N,R] class explained per sample and rank (-1 for Target::score)
  at::Tensor scores;   ///< [N,R] the explained scores
  at::Tensor logits;   ///< the tensor class targets were read from
  /// How many ReLU / ReLU6 ops of the graph got the modified backward.
  int64_t replaced_activations = 0;
  /// Other activation kinds found (GELU, SiLU, Hardswish...): left with their usual backward.
  std::vector<std::string> untouched_activations;
};

/// Guided backpropagation / deconvnet explainer. Thread safety as GradCAM: compute() is const
/// and may be called concurrently.
class GuidedBackprop {
 public:
  explicit GuidedBackprop(const torch::jit::Module& module, GuidedBackpropOptions options = {});
  ~GuidedBackprop();
  GuidedBackprop(GuidedBackprop&&) noexcept;
  GuidedBackprop& operator=(GuidedBackprop&&) noexcept;

  /// input: [N,C,H,W]. One forward pass and one backward pass per target rank.
  GuidedResult compute(const at::Tensor& input, const Target& target = Target::top1()) const;

 private:
  std::unique_ptr<detail::Engine> engine_;
};

/// Guided gradients [N,C,H,W] or [C,H,W] to a viewable image in [0,1], as the paper and its code
/// show them: per image, subtract the mean, divide by the standard deviation (+1e-5), scale by
/// 0.1, shift by 0.5, clip to [0,1].
at::Tensor guided_to_display(const at::Tensor& gradients);

}  // namespace gradcam
