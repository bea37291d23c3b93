// src/fullgrad.cpp: FullGrad (Srinivas & Fleuret, NeurIPS 2019), the row of Method::fullgrad in
// kMethods. Its map does not come from the named layer: it sums the input-gradient term
// psi(|x * dy/dx|) and, for every layer that adds a bias b, psi(|b * dy/dz|) with z the layer's
// output, psi a per-channel min-max scaling followed by bilinear upsampling to the input, summed
// over channels (the paper's equation 4; pytorch-grad-cam's layers: torch.nn's Conv2d with a
// bias and BatchNorm2d). The engine captures those layers besides the named ones and runs one
// backward pass per rank to them and to the input (engine.cpp, `full_gradient_map`); this file
// finds the layers and their biases and sums the terms.
#include <ATen/ATen.h>
#include <torch/csrc/jit/api/module.h>

#include <string>
#include <vector>

#include <gradcam/error.hpp>

#include "graph.hpp"
#include "methods.hpp"
#include "util.hpp"

namespace gradcam::detail {

namespace {

/// The class name of a module of torch.nn (`__torch__.torch.nn.modules.conv.Conv2d`, also with a
/// `___torch_mangle_N.` before the class), or "" for any other module.
std::string torch_nn_class(const torch::jit::Module& m) {
  const auto type = m.type();
  if (!type->name()) return "";
  const std::string name = type->name()->qualifiedName();
  const std::string prefix = "__torch__.torch.nn.modules.";
  if (name.rfind(prefix, 0) != 0) return "";
  return name.substr(name.rfind('.') + 1);
}

at::Tensor tensor_attr(const torch::jit::Module& m, const char* name) {
  if (!m.hasattr(name)) return {};
  const c10::IValue v = m.attr(name);
  return v.isTensor() ? v.toTensor().detach() : at::Tensor();
}

/// A BatchNorm2d's bias in eval mode, b - mean * w / sqrt(var + eps): the layer's output for a zero
/// input, from its own forward rewritten in eval mode (graph.hpp), so that eps is the model's
/// (a constant of its graph, not an attribute of a traced module). It runs on a clone: the
/// caller's module and its running statistics are not touched.
at::Tensor batch_norm_bias(const torch::jit::Module& bn, const std::string& path, const at::Tensor& bias) {
  try {
    const torch::jit::Module copy = bn.clone();
    const Forward forward(copy, RewriteSpec{});
    CaptureContext ctx(forward.slots());
    const at::NoGradGuard no_grad;
    const c10::IValue out = forward.run(at::zeros({1, bias.numel(), 1, 1}, bias.options()), ctx);
    return out.toTensor().reshape({bias.numel()}).detach();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail(concat("FullGrad: layer '", path, "' (BatchNorm2d) could not be run on a zero input to read its bias: ",
                torch_message(e)));
  }
}

/// Each (n, k) of t [N,K,h,w] scaled to [0, 1]: (t - min) / (max(t - min) + 1e-7), as
/// pytorch-grad-cam's scale_cam_image.
at::Tensor scaled(const at::Tensor& t) {
  const at::Tensor flat = t.flatten(2);
  const at::Tensor shifted = flat - std::get<0>(flat.min(2, /*keepdim=*/true));
  return (shifted / (std::get<0>(shifted.max(2, /*keepdim=*/true)) + 1e-7)).view_as(t);
}

}  // namespace

std::vector<BiasLayer> find_bias_layers(const torch::jit::Module& module) {
  std::vector<BiasLayer> out;
  for (const auto& item : module.named_modules()) {
    if (item.name.empty()) continue;
    const std::string kind = torch_nn_class(item.value);
    if (kind != "Conv2d" && kind != "BatchNorm2d") continue;
    const at::Tensor bias = tensor_attr(item.value, "bias");
    if (!bias.defined()) continue;  // Conv2d(bias=False), BatchNorm2d(affine=False): no bias term
    out.push_back({item.name, kind == "Conv2d" ? bias : batch_norm_bias(item.value, item.name, bias)});
  }
  GRADCAM_CHECK(!out.empty(), "FullGrad needs the layers that add a bias (torch.nn.Conv2d with a bias, BatchNorm2d), "
                "and this model has none",
                module.named_children().size() == 0 ? " (it has no submodules: a frozen model has them folded away)"
                                                     : "");
  return out;
}

at::Tensor fullgrad_map(const at::Tensor& input, const at::Tensor& input_grad, const std::vector<BiasGradient>& terms) {
  const std::vector<int64_t> size = {input.size(2), input.size(3)};
  at::Tensor map = scaled((input * input_grad).abs()).sum(1, /*keepdim=*/true);
  for (const BiasGradient& t : terms) {
    const at::Tensor b = t.bias.view({1, -1, 1, 1});
    // upsampling is linear: the channels' sum upsampled once equals the sum of each upsampled
    const at::Tensor sum = scaled((b * t.g).abs()).sum(1, /*keepdim=*/true);
    map = map + upsample(sum, size);
  }
  return map;
}

Weighted full_grad(const MethodInputs& in) { return {in.full, {}, {}}; }

}  // namespace gradcam::detail
