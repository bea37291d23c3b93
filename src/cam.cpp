// src/cam.cpp: CAM (Zhou et al., 2016), the row of Method::cam in kMethods (methods.cpp): the
// linear layer after global average pooling, found once per explainer, and the check that it
// really is the layer pooled into the logits.
#include <ATen/ATen.h>

#include <gradcam/error.hpp>

#include "methods.hpp"
#include "util.hpp"

namespace gradcam::detail {

namespace {

/// Finds the linear layer after global pooling: `path` (a module path) or, if empty, the last
/// parameter named "weight" of shape [classes, K]. Throws gradcam::Error naming what was looked
/// for.
LinearHead find_linear_head(const torch::jit::Module& module, const std::string& path,
                            int64_t channels, int64_t classes) {
  LinearHead head;
  if (!path.empty()) {
    std::string prefix = path + ".";
    for (const auto& p : module.named_parameters(/*recurse=*/true)) {
      if (p.name == prefix + "weight") head.weight = p.value;
      if (p.name == prefix + "bias") head.bias = p.value;
    }
    GRADCAM_CHECK(head.weight.defined(), "CAM: cam_linear '", path,
                  "' has no parameter 'weight' (name the linear layer after global pooling, e.g. "
                  "'fc' or 'classifier.1')");
    head.name = path;
  } else {
    for (const auto& p : module.named_parameters(/*recurse=*/true)) {
      const std::string& name = p.name;
      const bool is_weight = name == "weight" || (name.size() > 7 &&
                                                  name.compare(name.size() - 7, 7, ".weight") == 0);
      if (is_weight && p.value.dim() == 2 && p.value.size(0) == classes &&
          p.value.size(1) == channels) {
        head.weight = p.value;
        head.name = name.size() > 7 ? name.substr(0, name.size() - 7) : std::string();
      }
    }
    GRADCAM_CHECK(head.weight.defined(), "CAM needs a model whose head is global average pooling "
                  "+ one linear layer: no parameter 'weight' of shape [", classes, ", ", channels,
                  "] found (a frozen model has no named parameters); set cam_linear to the linear "
                  "layer's module path, or use another method");
    const std::string bias = head.name.empty() ? "bias" : head.name + ".bias";
    for (const auto& p : module.named_parameters(/*recurse=*/true)) {
      if (p.name == bias) head.bias = p.value;
    }
  }
  GRADCAM_CHECK(head.weight.dim() == 2 && head.weight.size(0) == classes &&
                    head.weight.size(1) == channels,
                "CAM: '", head.name, ".weight' has shape ", shape_str(head.weight.sizes()),
                "; expected [classes, channels] = [", classes, ", ", channels, "]");
  head.weight = head.weight.detach();
  if (head.bias.defined()) head.bias = head.bias.detach();
  return head;
}

/// CAM for the classes [N] of one rank; checks that the head really is GAP + that linear layer by
/// reproducing the logits, and throws gradcam::Error otherwise.
Weighted class_activation_map(const LinearHead& head, const at::Tensor& a, const at::Tensor& classes,
                              const at::Tensor& logits, const std::string& layer) {
  Weighted out;
  out.weights = head.weight.to(a.scalar_type()).index_select(0, classes);  // [N,K]
  out.signed_map = weighted_sum(out.weights, a);
  // A GAP + linear head gives logit_c = mean_ij CAM_c + bias_c: check it, so that CAM is never
  // silently computed from a layer that is not the one pooled into the linear layer.
  at::Tensor predicted = out.signed_map.flatten(1).mean(1);
  if (head.bias.defined()) predicted = predicted + head.bias.to(a.scalar_type()).index_select(0, classes);
  const at::Tensor actual = logits.to(a.scalar_type()).gather(1, classes.view({-1, 1})).squeeze(1);
  const double scale = 1.0 + logits.abs().max().item<double>();
  const double err = (predicted - actual).abs().max().item<double>();
  const double tol = a.scalar_type() == at::kDouble ? 1e-8 : 1e-3;
  GRADCAM_CHECK(err <= tol * scale, "CAM does not apply to layer '", layer, "' with linear layer '",
                head.name, "': global average pooling of the layer followed by it does not "
                "reproduce the logits (off by ", err, "); CAM needs the layer whose output is "
                "pooled straight into the final linear layer");
  return out;
}

}  // namespace

/// The head is found once, from the first activation, and shared by the others.
Prepared prepare_cam(const PrepareInputs& in) {
  Prepared p;
  if (in.first != nullptr && in.first->head) {
    p.head = in.first->head;
    return p;
  }
  GRADCAM_CHECK(in.logits.defined(), "CAM explains class targets, not a Target::score");
  p.head = std::make_shared<const LinearHead>(
      find_linear_head(in.module, in.options.cam_linear(), in.a.size(1), in.logits.size(1)));
  return p;
}

Weighted cam_map(const MethodInputs& in) {
  return class_activation_map(*in.prepared.head, in.a, in.classes, in.logits, in.layer);
}

}  // namespace gradcam::detail
