// gradcam/factorization.hpp: Deep Feature Factorization (Collins, Achanta & Süsstrunk, ECCV 2018),
// as pytorch-grad-cam's DeepFeatureFactorization: a layer's activations of a whole batch factorised
// by non-negative matrix factorisation into a few concepts (directions in channel space) shared by
// every image, and one map per image and concept saying where that concept is. Class-agnostic and
// gradient-free; the concepts' class scores come from the model's linear head.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include <gradcam/arg.hpp>

namespace gradcam {

/// Options of factorize().
struct FactorizationOptions {
  /// The concepts C. Default 5, as pytorch-grad-cam's dff().
  GRADCAM_ARG(int64_t, components) = 5;
  /// Multiplicative-update iterations (Lee & Seung 2001, Frobenius loss). Default 200.
  GRADCAM_ARG(int64_t, iterations) = 200;
  /// The seed of the initial factors (uniform, scaled by sqrt(mean / C) as scikit-learn's 'random'
  /// initialisation), drawn in float64 on the CPU: the numbers of PyTorch's torch.rand with
  /// torch.Generator().manual_seed(seed). Default 0.
  GRADCAM_ARG(uint64_t, seed) = 0;
};

/// What factorize() found.
struct Factorization {
  /// [C, K]: each concept as a direction in channel space, in the activations' units (the
  /// per-channel offset that made them non-negative added back, as pytorch-grad-cam does).
  at::Tensor concepts;
  /// [N, C, h, w] >= 0: where each concept is in each image (not normalised).
  at::Tensor maps;
  /// ||X - W H|| / ||X|| of the factorisation (Frobenius norms, X the shifted activations).
  double residual = 0;
};

/// Factorises activations A [N, K, h, w] (LayerMap::activations with GradCAMOptions::keep_activations,
/// or any grid): X [K, N*h*w] = A per channel over every image and position, minus each channel's
/// minimum, = W [K, C] H [C, N*h*w] with W, H >= 0. Computed in float64; returned in A's dtype.
/// Throws gradcam::Error for a shape that is not [N, K, h, w], a NaN or Inf, components < 1 or
/// > K, or iterations < 1.
Factorization factorize(const at::Tensor& activations, const FactorizationOptions& options = {});

/// The class scores [C, classes] of each concept through the model's linear head, weight
/// [classes, K] and bias [classes] (undefined: none): the head applied to the concept as if it
/// were the pooled feature, as pytorch-grad-cam's computation_on_concepts. For resnet18:
/// module.attr("fc").toModule().attr("weight").toTensor(). Throws gradcam::Error when the
/// weight's second dimension is not the concepts' K.
at::Tensor concept_scores(const Factorization& f, const at::Tensor& weight, const at::Tensor& bias = {});

}  // namespace gradcam
