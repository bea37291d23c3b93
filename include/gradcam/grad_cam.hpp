// gradcam/grad_cam.hpp: Grad-CAM (Selvaraju et al., ICCV 2017) on any TorchScript model.
//
// GradCAM takes a loaded torch::jit::Module (scripted, traced or frozen) and the module paths of
// one or more layers. compute() runs ONE forward pass through a private, rewritten copy of the
// model's forward graph that records each target layer's activations A, then takes the gradient
// of the score y_c with respect to A only (a partial backward: nothing before the layer is
// recorded, no parameter gradient is computed) and returns ReLU(sum_k alpha_k A_k) with
// alpha_k = mean over space of dy_c/dA_k. The user's module is never modified.
//
// The same call gives, on request, Guided Grad-CAM / Deconvnet Grad-CAM (GradCAMOptions::guided),
// counterfactual maps (GradCAMOptions::counterfactual) and the other CAM methods of
// GradCAMOptions::methods (Grad-CAM++, XGrad-CAM, HiResCAM, LayerCAM from the same gradients;
// EigenCAM and CAM from the same activations; Score-CAM and Ablation-CAM from batched extra forward
// passes). GradCAM is the library's one explainer interface. See
// docs/architecture.md and docs/methods.md.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <gradcam/arg.hpp>

namespace c10 {
struct IValue;
}
namespace torch::jit {
struct Module;
}

namespace gradcam {

/// How ReLUs (aten::relu, relu_, ReLU6 = hardtanh(0, 6)) back-propagate for guided gradients.
/// Other activations (GELU, SiLU, Hardswish, LeakyReLU...) keep their ordinary backward; the
/// result lists which ones the model has (GradCAMResult::untouched_activations).
enum class GuidedMode {
  none,       ///< no guided gradients
  guided,     ///< Springenberg et al.: grad.clamp_min(0) * (input > 0)
  deconvnet,  ///< Zeiler & Fergus: grad.clamp_min(0)
};

/// The class activation map methods. All share one forward pass through the rewritten graph; the
/// gradient methods share one backward pass per target rank. With A the layer's activations
/// [K,h,w], g = dy/dA and y the target score:
enum class Method {
  gradcam,      ///< Grad-CAM: alpha_k = mean_ij g_kij; ReLU(sum_k alpha_k A_k)
  gradcam_pp,   ///< Grad-CAM++ (Chattopadhyay 2018), closed form for an exponential score:
                ///< a_kij = g^2 / (2 g^2 + sum_ab A_kab g^3), w_k = sum_ij a_kij ReLU(g_kij)
  xgradcam,     ///< XGrad-CAM (Fu 2020): w_k = sum_ij g_kij A_kij / sum_ij A_kij
  hirescam,     ///< HiResCAM (Draelos 2020): ReLU(sum_k g_k * A_k), element-wise
  layercam,     ///< LayerCAM (Jiang 2021): ReLU(sum_k ReLU(g_k) * A_k)
  scorecam,     ///< Score-CAM (Wang 2020): w = softmax_k y(X * norm(up(A_k))); batched forwards
  ablationcam,  ///< Ablation-CAM (Desai 2020): w_k = (y - y with A_k zeroed) / y; batched
  eigencam,     ///< EigenCAM (Muhammad 2020): projection of A on its first principal component
  eigengradcam,  ///< EigenGradCAM (pytorch-grad-cam): EigenCAM of g * A, so class-discriminative
  kpcacam,      ///< KPCA-CAM (Karmani 2024): EigenCAM with kernel PCA, sigmoid kernel
                ///< tanh(x_i . x_j / K + 1) over positions; O((h w)^3) per sample
  gradcam_elementwise,  ///< Grad-CAM element-wise (pytorch-grad-cam): ReLU(sum_k ReLU(g_k * A_k))
  randomcam,    ///< RandomCAM, a baseline for the metrics: ReLU(sum_k w_k A_k), w uniform in [-1, 1]
                ///< per sample and channel, from a generator seeded with 0 at every call
  sscam,        ///< SS-CAM (Wang 2020, smoothed Score-CAM): w = softmax_k of the mean over S draws
                ///< of y(X * (norm(up(A_k)) + noise)), noise N(0, noise_std^2) per pixel; S x K forwards
  iscam,        ///< IS-CAM (Naidu 2020, integrated Score-CAM): w = softmax_k of the mean over
                ///< s = 1..S of y(X * c_s norm(up(A_k))), c_s = (1 + ... + s) / S; S x K forwards
  smoothgradcam_pp,  ///< SmoothGrad-CAM++ (Omeiza 2019): Grad-CAM++'s weights from the means of g,
                     ///< g^2 and g^3 over S noisy copies X + N(0, noise_std^2) of the input, with A
                     ///< the clean input's; S forward and S x ranks backward passes more
  shapleycam,   ///< ShapleyCAM (Cai 2025): alpha_k = mean_ij (g - H A / 2)_kij, H the Hessian of y
                ///< with respect to A (H A by double backward); Grad-CAM where y is piecewise linear in A
  fullgrad,     ///< FullGrad (Srinivas 2019): psi(|x * dy/dx|) + sum over every layer with a bias (torch.nn
                ///< Conv2d, BatchNorm2d) and call of psi(|b * dy/dz|), psi = per-channel min-max scaling,
                ///< bilinear upsampling to the input, sum over channels; the map is at the input's
                ///< resolution and does not depend on the named layer (the same under each). One backward
                ///< pass per rank to every bias layer and the input, which requires grad
  cam,          ///< CAM (Zhou 2016): ReLU(sum_k W_ck A_k), W the linear layer after global pooling
  rollout,      ///< Attention rollout (Abnar & Zuidema 2020), transformers with nn.MultiheadAttention:
                ///< R = prod_l (A_l + I) / 2 over the model's self-attention calls (A_l averaged over
                ///< heads, recomputed from each call's input); the map is the rows of the extra
                ///< tokens (all rows without them) at the grid's tokens. Class-agnostic, no gradient.
};

/// "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "scorecam", "ablationcam",
/// "eigencam", "eigengradcam", "kpcacam", "gradcamelementwise", "randomcam", "sscam", "iscam",
/// "smoothgradcam++", "shapleycam", "fullgrad", "cam", "rollout".
const char* method_name(Method method);
/// The method with that name (case-insensitive, also "gradcampp" and "smoothgradcampp"); throws
/// gradcam::Error listing the names.
Method method_from_name(const std::string& name);
/// Every method, in the enum's order.
std::vector<Method> all_methods();
/// True for the methods computed from dy/dA of the input's own forward pass (gradcam, gradcam_pp,
/// xgradcam, hirescam, layercam, eigengradcam, gradcam_elementwise, shapleycam): those
/// counterfactual maps apply to. SmoothGrad-CAM++ reads the gradients of noisy copies instead.
bool uses_gradients(Method method);

/// What to explain: the differentiable score(s) y whose gradient is taken.
class Target {
 public:
  /// Receives the model's output (tensor, tuple, dict...) and returns one score per sample, [N].
  using ScoreFn = std::function<at::Tensor(const c10::IValue& output)>;
  /// Several scores per sample, one target rank each (a detector's boxes): `scores` [N, R] and
  /// `classes` [N, R] int64 (undefined: -1 everywhere). A sample with fewer than R targets fills
  /// the rest with class -1 and a constant score 0; their maps are zero.
  struct Ranked {
    at::Tensor scores;
    at::Tensor classes;
  };
  using RankedFn = std::function<Ranked(const c10::IValue& output)>;
  enum class Kind { top_k, classes, score, ranked };

  /// The top-1 predicted class of each sample (the default).
  static Target top1() { return topk(1); }
  /// The k highest-scoring classes of each sample: k maps per layer, from one forward pass.
  static Target topk(int64_t k);
  /// One class per sample ([N] indices), or one class for every sample (a single index).
  static Target classes(std::vector<int64_t> indices);
  /// Any differentiable function of the output; gradcam does not apply softmax to it.
  static Target score(ScoreFn fn);
  /// R differentiable scores per sample from one forward pass, one backward pass per rank
  /// (gradcam/detection.hpp builds them for detectors).
  static Target ranked(RankedFn fn);

  Kind kind() const noexcept { return kind_; }
  int64_t k() const noexcept { return k_; }
  const std::vector<int64_t>& indices() const noexcept { return indices_; }
  const ScoreFn& fn() const noexcept { return fn_; }
  const RankedFn& ranked_fn() const noexcept { return ranked_fn_; }

 private:
  Kind kind_ = Kind::top_k;
  int64_t k_ = 1;
  std::vector<int64_t> indices_;
  ScoreFn fn_;
  RankedFn ranked_fn_;
};

/// How a layer's output is read as a grid of positions [N, K, h, w], the form every CAM method
/// reads (docs/transformers.md). Convolutional layers are channels first already; a transformer's
/// token layer [N, T, K] is read as its extra tokens (class, distillation, registers), which the
/// map leaves out, followed by an h x w grid in row-major order; a channels-last layer
/// [N, h, w, K] (Swin, ConvNeXt blocks) is permuted.
struct TokenLayout {
  enum class Kind {
    automatic,       ///< inferred from the layer's output shape and the input's (the default)
    channels_first,  ///< [N, K, h, w], read as it is
    tokens,          ///< [N, T, K]: `extra` leading tokens, then a grid_h x grid_w grid
    channels_last,   ///< [N, h, w, K], permuted to [N, K, h, w]
  };
  Kind kind = Kind::automatic;
  /// tokens: the leading tokens before the grid; -1: inferred (the fewest, 0 to 8, after which
  /// the rest form a grid of the input's aspect ratio with one patch size).
  int64_t extra = -1;
  /// tokens: the grid's rows and columns; -1: inferred from the token count and the input's
  /// aspect ratio.
  int64_t grid_h = -1;
  int64_t grid_w = -1;
};

/// "automatic", "nchw", "tokens", "nhwc".
const char* layout_name(TokenLayout::Kind kind);

/// Options of GradCAM. The layers are module paths as Python's named_modules() prints them
/// ("layer4", "features.29", "layer4.1.conv2"), "auto" (the last spatial activation before global
/// pooling), or for a frozen model a graph value name listed by `gradcam layers` ("%input.5").
class GradCAMOptions {
 public:
  GradCAMOptions(std::string layer) : layers_{std::move(layer)} {}  // NOLINT: implicit on purpose
  GradCAMOptions(const char* layer) : layers_{std::string(layer)} {}  // NOLINT
  GradCAMOptions(std::vector<std::string> layers) : layers_(std::move(layers)) {}  // NOLINT

  /// The target layers; the maps come in this order. Required.
  GRADCAM_ARG(std::vector<std::string>, layers);
  /// The device to run on. Unset (default): wherever the module's parameters are. If the module is
  /// elsewhere, GradCAM works on a private copy moved there; move the module yourself
  /// (module.to(device)) before constructing to avoid that copy. Inputs are moved to this device.
  GRADCAM_ARG(std::optional<c10::Device>, device) = std::nullopt;
  /// The methods to compute; every map of the result says its method. Default {Method::gradcam}.
  GRADCAM_ARG(std::vector<Method>, methods) = std::vector<Method>{Method::gradcam};
  /// Score-CAM / Ablation-CAM: how many perturbed inputs go through the model per forward pass.
  /// The result does not depend on it (up to float rounding); memory grows with it. 0 (default):
  /// 1 on the CPU, where larger batches measured slower per image (resnet18 and resnet50 at 224 px,
  /// docs/performance.md), and 32 on a GPU, where one image per pass leaves it idle.
  GRADCAM_ARG(int64_t, perturbation_batch) = 0;
  /// SS-CAM / IS-CAM: the noise draws or integration steps S per channel (S x K forward passes per
  /// sample); SmoothGrad-CAM++: the noisy copies of the input (S forward passes of the batch). 0
  /// (default): torchcam's defaults, 35 for SS-CAM, 10 for IS-CAM and 4 for SmoothGrad-CAM++.
  GRADCAM_ARG(int64_t, samples) = 0;
  /// The standard deviation of the Gaussian noise: SS-CAM adds it to the masks (which lie in
  /// [0, 1]), SmoothGrad-CAM++ to the input (as the model receives it, normalised). Draw s
  /// (0-based) comes from a generator seeded with s, the same for every image and call, so that
  /// maps are reproducible and an image's map does not depend on its batch. Unset (default): the
  /// method's default, as torchcam's: 2.0 for SS-CAM, 0.3 for SmoothGrad-CAM++.
  GRADCAM_ARG(std::optional<double>, noise_std) = std::nullopt;
  /// CAM: module path of the linear layer after global average pooling whose weight [classes, K]
  /// weighs the channels. Empty (default): the last 2-D parameter named "weight" of shape
  /// [classes, K]. compute() checks that mean_ij(CAM_c) + bias_c reproduces the logit.
  GRADCAM_ARG(std::string, cam_linear) = "";
  /// Counterfactual explanation (paper, section 5.3): weights from the negated gradients, showing
  /// the regions whose removal would make the network more confident of the class. Applies to the
  /// gradient methods (uses_gradients); other methods reject it. Default false.
  GRADCAM_ARG(bool, counterfactual) = false;
  /// Eigen-smoothing (pytorch-grad-cam's eigen_smooth): the map is the first principal component
  /// of the method's per-channel terms (w_k A_k for the methods with channel weights; g_k A_k,
  /// ReLU(g_k) A_k and ReLU(g_k A_k) for HiResCAM, LayerCAM and Grad-CAM element-wise) over the
  /// positions, as EigenCAM projects A, instead of their sum; the sign towards their sum. Smoother,
  /// less noisy maps. The methods that have no such terms (EigenCAM, EigenGradCAM, KPCA-CAM,
  /// rollout) are unchanged. Default false.
  GRADCAM_ARG(bool, eigen_smooth) = false;
  /// Augmentation smoothing (pytorch-grad-cam's aug_smooth, test-time augmentation): the batch is
  /// explained as 6 copies in one pass, each image unflipped and flipped left-right, times the
  /// factors 0.9, 1.0 and 1.1 (its ttach transforms); each copy's map is flipped back and the 6
  /// maps (after ReLU, not normalised) averaged. Every copy explains the class of the image itself
  /// (top-k read on the unaugmented copy), so function targets (Target::score, Target::ranked:
  /// boxes and masks that do not flip with the image) and guided gradients are refused. The
  /// scores, logits and output are the unaugmented copy's, as are weights, activations and
  /// gradients when kept; map_signed is the mean of the copies' signed maps. Six times the
  /// memory of one pass. Default false.
  GRADCAM_ARG(bool, aug_smooth) = false;
  /// aug_smooth: more input sizes, as factors of H and W (0.75: round(0.75 H) x round(0.75 W)),
  /// each a pass of its own over its six copies, the input resized bilinearly (align_corners false).
  /// Each copy explains the classes read at the input's own size, and its map is resized bilinearly
  /// to the map size of that pass before the mean over every copy of every size. A factor of 1
  /// adds nothing (the input's own size is always explained). Each factor in (0, 4], the size it
  /// gives at least 1. Default {}: pytorch-grad-cam's aug_smooth, one size.
  GRADCAM_ARG(std::vector<double>, aug_scales) = std::vector<double>{};
  /// Also compute guided (or deconvnet) gradients with respect to the input and the Guided
  /// Grad-CAM maps, from the same forward pass. Default GuidedMode::none.
  GRADCAM_ARG(GuidedMode, guided) = GuidedMode::none;
  /// Keep the signed map before ReLU in LayerMap::map_signed. Default false.
  GRADCAM_ARG(bool, keep_signed) = false;
  /// Keep the channel weights alpha [N,K] in LayerMap::weights. Default false.
  GRADCAM_ARG(bool, keep_weights) = false;
  /// Keep the activations A [N,K,h,w] in LayerMap::activations. Default false.
  GRADCAM_ARG(bool, keep_activations) = false;
  /// Keep the gradients dy/dA [N,K,h,w] in LayerMap::gradients. Default false.
  GRADCAM_ARG(bool, keep_gradients) = false;
  /// How the layers' outputs are read as grids: inferred per layer (default), or stated for every
  /// layer where inference cannot decide (TokenLayout). Each map says what was read
  /// (LayerMap::layout).
  GRADCAM_ARG(TokenLayout, token_layout) = TokenLayout{};
  /// Attention rollout: the number of heads of every nn.MultiheadAttention. 0 (default): read from
  /// the module's num_heads, which a scripted model keeps and a traced one does not.
  GRADCAM_ARG(int64_t, attention_heads) = 0;
  /// Input shape used to resolve "auto" at construction; -1 entries are filled from the model
  /// (channels) or with 224. Default {1, -1, 224, 224}.
  GRADCAM_ARG(std::vector<int64_t>, probe_shape) = std::vector<int64_t>{1, -1, 224, 224};
};

/// One map: one method, one layer, one call of that layer, one target rank.
struct LayerMap {
  Method method = Method::gradcam;  ///< how the map was computed
  std::string layer;  ///< module path (as resolved; "auto" is replaced by the chosen name)
  int64_t call = 0;   ///< which call of the layer in the forward pass (reused blocks: 0, 1, ...)
  int64_t rank = 0;   ///< which target: 0 for the top-1 / first explicit target, k-1 for top-k
  TokenLayout layout;  ///< how the layer's output was read as a grid (kind never automatic)
  at::Tensor map;             ///< [N,1,h,w] float, ReLU(sum_k alpha_k A_k), not normalised
  at::Tensor map_signed;      ///< [N,1,h,w] before ReLU (keep_signed)
  at::Tensor weights;         ///< [N,K] alpha (keep_weights; not for hirescam, layercam,
                              ///< eigencam, whose weights are per pixel); negated when counterfactual
  at::Tensor activations;     ///< [N,K,h,w] A (keep_activations), read as a grid (layout)
  at::Tensor gradients;       ///< [N,K,h,w] dy/dA (keep_gradients), read as a grid (layout)
  at::Tensor guided_gradcam;  ///< [N,C,H,W] guided gradients * upsampled map (guided != none)
};

/// Everything one compute() call produced.
struct GradCAMResult {
  /// For each rank, for each layer (options order), for each call of it, for each method (options
  /// order): one LayerMap.
  std::vector<LayerMap> maps;
  /// [N,R] int64 class explained per sample and rank (-1 for Target::score).
  at::Tensor classes;
  /// [N,R] the explained score per sample and rank (pre-softmax logits for class targets).
  at::Tensor scores;
  /// The tensor class targets were read from ([N,classes]; undefined for Target::score).
  at::Tensor logits;
  /// The model's full output (tensor, tuple, dict...).
  std::shared_ptr<const c10::IValue> output;
  /// Per rank, the guided (or deconvnet) gradient w.r.t. the input [N,C,H,W] (guided != none).
  std::vector<at::Tensor> guided;
  /// Guided modes: how many ReLU / ReLU6 ops got the modified backward.
  int64_t replaced_activations = 0;
  /// Activation kinds found in the model that guided backprop left with their usual backward.
  std::vector<std::string> untouched_activations;

  /// The map of `layer` for target rank `rank` and call `call`, computed by `method`; throws
  /// gradcam::Error if absent.
  const LayerMap& get(const std::string& layer, int64_t rank = 0, int64_t call = 0,
                      Method method = Method::gradcam) const;
};

/// Grad-CAM explainer bound to one module. Thread safety: compute() is const and may be called
/// from several threads at once on one GradCAM object; several GradCAM objects may share one
/// module. The module must not be modified (e.g. by module.to()) while a GradCAM uses it.
class GradCAM {
 public:
  /// Throws gradcam::Error for an unknown layer (with the closest names), a layer that forward
  /// never calls, or a module whose forward does not take exactly one input.
  GradCAM(const torch::jit::Module& module, GradCAMOptions options);
  ~GradCAM();
  GradCAM(GradCAM&&) noexcept;
  GradCAM& operator=(GradCAM&&) noexcept;
  GradCAM(const GradCAM&) = delete;
  GradCAM& operator=(const GradCAM&) = delete;

  /// Explains a batch. input: [N,C,H,W] floating point, finite. Returns the maps on the device
  /// the computation ran on. Throws gradcam::Error for a bad shape, a class out of range, a
  /// non-finite input, or a target that does not depend on a layer.
  GradCAMResult compute(const at::Tensor& input, const Target& target = Target::top1()) const;

  /// The resolved layer names ("auto" replaced by the chosen layer).
  const std::vector<std::string>& layers() const;
  const GradCAMOptions& options() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// How fuse() combines maps of several layers.
enum class Fusion { mean, max };

/// Multi-layer fusion: each map [N,1,h_i,w_i] is upsampled to `size` = {H, W}, min-max normalised
/// per sample, and the results are averaged (Fusion::mean) or their maximum taken. [N,1,H,W].
at::Tensor fuse(const std::vector<at::Tensor>& maps, Fusion fusion, std::vector<int64_t> size);

/// Upsamples maps [N,1,h,w] (or [h,w]) bilinearly (align_corners=false) to `size` = {H, W}.
at::Tensor upsample(const at::Tensor& map, std::vector<int64_t> size);

/// Min-max normalises each sample of [N,...] (or a single [h,w] map) to [0,1]; a constant map
/// becomes all zeros.
at::Tensor normalize(const at::Tensor& map);

}  // namespace gradcam
