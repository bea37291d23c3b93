// src/engine.hpp: the engine behind both explainers, GradCAM (grad_cam.cpp) and GuidedBackprop
// (guided.cpp). It owns the rewritten forward graph of a module (graph.hpp) and runs one
// compute(): forward with captures, target scores, then per target rank the partial backward to
// the captured activations, every method's map (methods.hpp), and the guided gradients.
#pragma once

#include <torch/csrc/jit/api/module.h>

#include <memory>
#include <string>
#include <vector>

#include <gradcam/grad_cam.hpp>

#include "graph.hpp"
#include "methods.hpp"

namespace gradcam {
namespace detail {

/// Built once per explainer. With no layers in `options` it computes guided gradients only
/// (GuidedBackprop, or a GradCAM asked for nothing else).
struct Engine {
  /// Checks the options, moves a private copy of the module to options.device() when it lives
  /// elsewhere, resolves "auto" layers, and rewrites the forward graph.
  Engine(const torch::jit::Module& module, GradCAMOptions options);
  /// See GradCAM::compute. const and thread-safe: each call keeps its state on its own stack.
  /// With GradCAMOptions::aug_smooth, aug_smoothed (augment.cpp) calls compute_copies.
  GradCAMResult compute(const at::Tensor& input, const Target& target) const;
  /// One pass over `input`, `copies` blocks of input.size(0) / copies images: block 0 the images
  /// themselves, the others augmented copies of them. Class targets are read on block 0 and
  /// explain the same class in every block.
  /// `classes` [input.size(0) / copies, R], when defined, are explained instead of the classes a
  /// class target would read (aug_smooth's other input sizes).
  GradCAMResult compute_copies(const at::Tensor& input, const Target& target, int64_t copies,
                               const at::Tensor& classes = {}) const;

  GradCAMOptions options;
  torch::jit::Module module;        ///< the caller's, or a private copy on options.device()
  std::vector<std::string> layers;  ///< resolved names ("auto" replaced)
  std::unique_ptr<Forward> forward;
  std::vector<AttentionModule> attention;  ///< attention rollout: the modules whose input is observed
  std::vector<BiasLayer> bias_layers;      ///< FullGrad: every layer with a bias (fullgrad.cpp)...
  std::vector<size_t> bias_slots;          ///< ...and its capture slot (a named layer's own, or one after them)
};

/// GradCAMOptions::aug_smooth (augment.cpp): the 6 augmented copies of the batch in one pass
/// (compute_copies), each copy's maps mapped back and averaged; the rest of the result the
/// unaugmented copy's.
GradCAMResult aug_smoothed(const Engine& engine, const at::Tensor& input, const Target& target);

}  // namespace detail
}  // namespace gradcam
