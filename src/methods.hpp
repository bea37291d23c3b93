// src/methods.hpp (private): the CAM methods' weighting, given what the engine captured.
//
// grad_cam.cpp runs the forward pass and the backward passes, and calls two functions here for each
// Method: prepare_method once per captured activation (EigenCAM's decomposition, CAM's linear
// head, and the extra, batched forward passes of Score-CAM and Ablation-CAM through the same
// rewritten graph), then method_map per rank, which turns activations A [N,K,h,w] and gradients
// g = dy/dA into a map. methods.cpp holds one function per method and the table kMethods.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>
#include <torch/csrc/jit/api/module.h>

#include <map>
#include <memory>
#include <string>

#include <gradcam/grad_cam.hpp>

#include "graph.hpp"
#include "layout.hpp"

namespace gradcam::detail {

/// A map before ReLU, and the channel weights [N,K] where the method has them.
struct Weighted {
  at::Tensor signed_map;  ///< [N,1,h,w]
  at::Tensor weights;     ///< [N,K] or undefined
  at::Tensor terms;       ///< [N,K,h,w]: the per-channel terms of an element-wise method, or undefined
};

/// The linear layer CAM reads: weight [classes, K] and bias [classes] (undefined if none).
struct LinearHead {
  std::string name;
  at::Tensor weight;
  at::Tensor bias;
};

/// An nn.MultiheadAttention's query and key projections (attention rollout).
struct AttentionModule {
  std::string path;
  at::Tensor q_weight, k_weight;  ///< [C, C]
  at::Tensor q_bias, k_bias;      ///< [C], or undefined
  int64_t heads = 0;
  int batch_first = -1;           ///< 1, 0, or -1: unknown (traced), read from the input's shape
};

/// The model's nn.MultiheadAttention modules, for attention rollout; `heads` overrides num_heads
/// (0: read it). Throws gradcam::Error when there is none, or when the heads are unknown.
std::vector<AttentionModule> find_attention(const torch::jit::Module& module, int64_t heads);

/// The self-attention calls of one forward pass, in call order: the module and its query input.
struct AttentionCalls {
  std::vector<const AttentionModule*> modules;
  std::vector<at::Tensor> inputs;
};

/// SmoothGrad-CAM++: the means over the noisy copies of g, g^2 and g^3, for one rank.
struct GradientMoments {
  at::Tensor g, g2, g3;  ///< [N,K,h,w], read as a grid
};

/// SmoothGrad-CAM++: every capture's gradient moments, as the layers output them, made by the
/// preparation of the first capture and read by the others: key (slot, call), one per rank.
struct NoisyGradients {
  std::map<std::pair<size_t, int64_t>, std::vector<GradientMoments>> raw;
};

/// What a method computes once per captured activation and reuses for every rank.
struct Prepared {
  at::Tensor perturbed;                    ///< Score-/Ablation-CAM: logits [N,K,classes]
  Weighted eigen;                          ///< EigenCAM and attention rollout (class-agnostic)
  std::shared_ptr<const LinearHead> head;  ///< CAM: the linear layer after pooling
  std::shared_ptr<const NoisyGradients> noisy;  ///< SmoothGrad-CAM++: every capture's moments
  std::vector<GradientMoments> moments;    ///< SmoothGrad-CAM++: this capture's, per rank, as a grid
};

/// What a method's preparation may read: the call, and one captured activation.
struct PrepareInputs {
  const Forward& forward;           ///< the rewritten forward (perturbation methods rerun it)
  const torch::jit::Module& module;
  const GradCAMOptions& options;
  const at::Tensor& input;          ///< the model input [N,C,H,W], detached
  const at::Tensor& a;              ///< the activation [N,K,...] read as a grid, detached
  const Layout& layout;             ///< how the layer's output is read as a grid (Ablation-CAM)
  size_t slot;                      ///< where it was captured: the layer's slot...
  int64_t call;                     ///< ...and which call of it
  const at::Tensor& logits;         ///< [N, classes] for class targets, else undefined
  const at::Tensor& classes;        ///< [N, R] the class of each sample and rank
  const Prepared* first;            ///< this method's preparation of the first activation, or null
  const AttentionCalls& attention;  ///< attention rollout: the self-attention calls
};

/// What a method's map may read: one captured activation, at one rank.
struct MethodInputs {
  const at::Tensor& a;         ///< [N,K,...] read as a grid, detached
  const at::Tensor& g;         ///< dy/dA (negated for counterfactual maps); gradient methods only
  const at::Tensor& classes;   ///< [N] the class explained for each sample at this rank
  const at::Tensor& score;     ///< [N] the explained score at this rank, detached
  const at::Tensor& logits;    ///< [N, classes] for class targets, else undefined
  const std::string& layer;
  const Prepared& prepared;    ///< this method's preparation of this activation
  int64_t rank;                ///< the target rank
  const at::Tensor& hvp;       ///< H A: the Hessian of y with respect to A times A (uses_hessian), else undefined
  const at::Tensor& full;      ///< FullGrad: the rank's map [N,1,H,W] at the input's resolution, else undefined
};

/// [N,K] weights broadcast against A [N,K,...] and summed over K: [N,1,...].
at::Tensor weighted_sum(const at::Tensor& w, const at::Tensor& a);

/// A map from channel weights [N,K]: their weighted sum of A, and the weights (eigen-smoothing
/// reads them).
Weighted from_weights(const at::Tensor& w, const at::Tensor& a);

/// Grad-CAM++'s map from g, g^2 and g^3 (their means over noisy copies for SmoothGrad-CAM++).
Weighted grad_cam_pp_from(const at::Tensor& g, const at::Tensor& g2, const at::Tensor& g3, const at::Tensor& a);

/// The methods that run the model again on perturbed inputs (perturbation.cpp), rows of kMethods:
/// Score-CAM, SS-CAM, IS-CAM and Ablation-CAM prepare the logits [N,K,classes] of their perturbed
/// inputs (M names the method); the maps read the explained class's column.
template <Method M>
Prepared prepare_perturbed(const PrepareInputs& in);
Weighted score_cam_map(const MethodInputs& in);  ///< Score-CAM, SS-CAM, IS-CAM
Weighted ablation_cam_map(const MethodInputs& in);
/// SmoothGrad-CAM++ (perturbation.cpp): the gradient moments over noisy copies of the input.
Prepared prepare_smooth_grad_cam_pp(const PrepareInputs& in);
Weighted smooth_grad_cam_pp_map(const MethodInputs& in);

/// CAM (cam.cpp), the row of Method::cam in kMethods.
Prepared prepare_cam(const PrepareInputs& in);
Weighted cam_map(const MethodInputs& in);

/// Attention rollout (rollout.cpp), the row of Method::rollout in kMethods.
Prepared prepare_rollout(const PrepareInputs& in);
Weighted rollout_map(const MethodInputs& in);

/// FullGrad (fullgrad.cpp): a layer that adds a bias to every position of its output.
struct BiasLayer {
  std::string path;
  at::Tensor bias;  ///< [K]: Conv2d's bias; BatchNorm2d's in eval mode, b - mean * w / sqrt(var + eps)
};

/// Every torch.nn Conv2d with a bias and BatchNorm2d with one in `module`, in named_modules order
/// (pytorch-grad-cam's choice); throws gradcam::Error when there is none (a frozen model).
std::vector<BiasLayer> find_bias_layers(const torch::jit::Module& module);

/// One call of a bias layer: its bias [K] and the gradient of the score at its output [N,K,h,w].
struct BiasGradient {
  const at::Tensor& bias;
  at::Tensor g;
};

/// FullGrad's map [N,1,H,W] of one rank: psi(|x * dy/dx|) + sum over the bias layers' calls of
/// psi(|b * dy/dz|), psi scaling each sample's channel to [0, 1] and upsampling it bilinearly to
/// the input's H x W, then summing over channels. Not normalised.
at::Tensor fullgrad_map(const at::Tensor& input, const at::Tensor& input_grad, const std::vector<BiasGradient>& terms);
Weighted full_grad(const MethodInputs& in);  ///< MethodInputs::full, as the engine made it

/// The method's work shared by every rank (nothing for the gradient methods).
Prepared prepare_method(Method method, const PrepareInputs& in);

/// The method's map and weights for one activation at one rank.
Weighted method_map(Method method, const MethodInputs& in);

/// GradCAMOptions::eigen_smooth: the map replaced by the first principal component of the
/// per-channel terms (`terms`, else weights * A); unchanged where the method has neither.
Weighted eigen_smoothed(const Weighted& w, const at::Tensor& a);

/// The method's map in TorchScript for an exported explainer (`gradcam export`): the body of
/// `_signed_map(self, a, g)` over the grid A [N,K,h,w] and its gradient, reading the helpers
/// `self._weighted(w, a)` and `self._safe_div(num, den)`; nullptr when it cannot be exported.
const char* method_script(Method method);

/// ShapleyCAM: its backward pass records a graph, for the Hessian-vector product H A.
bool uses_hessian(Method method);

/// FullGrad: the engine captures every bias layer (find_bias_layers) and takes, per rank, the
/// gradient at their outputs and at the input (MethodInputs::full).
bool uses_bias_gradients(Method method);

/// Score-CAM, its variants, Ablation-CAM and SmoothGrad-CAM++: weights from extra forward passes of
/// perturbed inputs, so they explain class targets only.
bool is_perturbation(Method method);

}  // namespace gradcam::detail
