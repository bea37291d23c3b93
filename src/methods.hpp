// src/methods.hpp (private): the CAM methods' weighting, given what the engine captured.
//
// grad_cam.cpp runs the forward pass and the backward passes; this file turns activations A
// [N,K,h,w] and gradients g = dy/dA into maps for each Method, and runs the extra, batched forward
// passes of the perturbation methods (Score-CAM, Ablation-CAM) through the same rewritten graph.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>
#include <torch/csrc/jit/api/module.h>

#include <string>

#include <gradcam/grad_cam.hpp>

#include "graph.hpp"

namespace gradcam::detail {

/// A map before ReLU, and the channel weights [N,K] where the method has them.
struct Weighted {
  at::Tensor signed_map;  ///< [N,1,h,w]
  at::Tensor weights;     ///< [N,K] or undefined
};

/// Grad-CAM, Grad-CAM++, XGrad-CAM, HiResCAM, LayerCAM from A and g (already negated for
/// counterfactual maps).
Weighted gradient_method(Method method, const at::Tensor& a, const at::Tensor& g);

/// EigenCAM: A (centred over positions) projected on its first principal component; the sign is
/// chosen so that the projection correlates positively with the channel sum of A.
Weighted eigen_cam(const at::Tensor& a);

/// The linear layer CAM reads: weight [classes, K] and bias [classes] (undefined if none).
struct LinearHead {
  std::string name;
  at::Tensor weight;
  at::Tensor bias;
};

/// Finds the linear layer after global pooling: `path` (a module path) or, if empty, the last
/// parameter named "weight" of shape [classes, K]. Throws gradcam::Error naming what was looked
/// for.
LinearHead find_linear_head(const torch::jit::Module& module, const std::string& path,
                            int64_t channels, int64_t classes);

/// CAM for the classes [N] of one rank; checks that the head really is GAP + that linear layer by
/// reproducing the logits, and throws gradcam::Error otherwise.
Weighted class_activation_map(const LinearHead& head, const at::Tensor& a, const at::Tensor& classes,
                              const at::Tensor& logits, const std::string& layer);

/// The logits [N,K,classes] of the model on perturbed inputs, one per (sample, channel):
/// Score-CAM: input * normalised upsampled A_k; Ablation-CAM: input with channel k of the capture
/// (slot, call) set to zero. Runs `batch` perturbed inputs per forward pass.
at::Tensor perturbed_logits(Method method, const Forward& forward, const at::Tensor& input,
                            const at::Tensor& a, size_t slot, int64_t call, int64_t batch);

/// The class-score tensor of a model output (a tensor, the first tensor of a tuple, a dict's
/// "out"); throws gradcam::Error naming what the output is. (grad_cam.cpp)
at::Tensor logits_of(const c10::IValue& out);

}  // namespace gradcam::detail
