// gradcam/export.hpp: an explaining TorchScript model (`gradcam export`, docs/deploy.md). The
// module written computes the model's class scores and the CAM maps of its top classes in one
// call, with standard operators only: it loads with plain torch.jit.load in Python or LibTorch,
// in Triton's PyTorch backend or TorchServe, without this library.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <gradcam/arg.hpp>
#include <gradcam/grad_cam.hpp>

namespace torch::jit {
struct Module;
}  // namespace torch::jit

namespace gradcam {

/// What an exported explainer computes. Its forward(x) returns (scores [N, classes], maps
/// [N, K, H, W] or [N, K, h, w], classes [N, K] int64): the model's class scores (its output, or
/// its output tuple's first tensor), then for each of the K highest-scoring classes, in order, the
/// map ReLU(method(A, dy/dA)) of that class's score y, equal to GradCAM's.
class ExportOptions {
 public:
  /// The layer: a module path, a frozen model's "%value", or "auto" (default), resolved as
  /// GradCAMOptions resolves it, on input_shape. It must be called once per forward pass.
  GRADCAM_ARG(std::string, layer) = "auto";
  /// A gradient method: gradcam (default), gradcam++, xgradcam, hirescam, layercam or
  /// gradcamelementwise. The others need more than the layer's gradient (Score-CAM, Ablation-CAM:
  /// extra forward passes; EigenCAM, EigenGradCAM: an SVD per sample) and are refused by name.
  GRADCAM_ARG(Method, method) = Method::gradcam;
  /// Maps for the k highest-scoring classes (top-k), K = topk. Default 1.
  GRADCAM_ARG(int64_t, topk) = 1;
  /// Maps upsampled bilinearly (align_corners false, as gradcam::upsample) to the input's H x W;
  /// false (default): at the layer's resolution h x w, as LayerMap::map.
  GRADCAM_ARG(bool, upsample) = false;
  /// The input the export resolves "auto" and the layer's layout on, and checks its module on (a
  /// random input of this shape: the module's maps must equal GradCAM's). -1 entries are filled
  /// from the model (channels) or with 224. Default {1, -1, 224, 224}. A convolutional layer's
  /// module takes any batch and image size; a token layer's grid is fixed by this shape's H x W.
  GRADCAM_ARG(std::vector<int64_t>, input_shape) = std::vector<int64_t>{1, -1, 224, 224};
  /// How the layer's output is read as a grid, as GradCAMOptions::token_layout. Default inferred.
  GRADCAM_ARG(TokenLayout, token_layout) = TokenLayout{};
};

/// The explaining module of `model` (a clone: `model` is not modified). Checked before it is
/// returned: on a random input of options.input_shape, its scores, classes and maps equal
/// GradCAM's. Throws gradcam::Error for an option or model it cannot export, naming it.
torch::jit::Module explainer_module(const torch::jit::Module& model, const ExportOptions& options = {});

/// explainer_module(model, options), saved to `path`: written to a temporary file beside it, loaded
/// back and checked again as above, then renamed to `path` (an existing file is replaced only by a
/// checked one). Throws gradcam::Error naming the path when it cannot be written.
void export_explainer(const torch::jit::Module& model, const ExportOptions& options, const std::string& path);

}  // namespace gradcam
