// src/methods.cpp: the CAM methods' weighting (see methods.hpp) and the method names.
#include "methods.hpp"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cctype>

#include <gradcam/error.hpp>

namespace gradcam {

using detail::concat;

namespace {
struct Named {
  Method method;
  const char* name;
};
constexpr Named kMethods[] = {
    {Method::gradcam, "gradcam"},         {Method::gradcam_pp, "gradcam++"},
    {Method::xgradcam, "xgradcam"},       {Method::hirescam, "hirescam"},
    {Method::layercam, "layercam"},       {Method::scorecam, "scorecam"},
    {Method::ablationcam, "ablationcam"}, {Method::eigencam, "eigencam"},
    {Method::cam, "cam"},
};
}  // namespace

const char* method_name(Method method) {
  for (const auto& m : kMethods) {
    if (m.method == method) return m.name;
  }
  return "unknown";
}

Method method_from_name(const std::string& name) {
  std::string low;
  for (char c : name) {
    if (c != '-' && c != '_') low += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  if (low == "gradcampp" || low == "gradcamplusplus") return Method::gradcam_pp;
  for (const auto& m : kMethods) {
    if (low == m.name) return m.method;
  }
  std::string names;
  for (const auto& m : kMethods) names += concat(names.empty() ? "" : ", ", m.name);
  fail(concat("unknown method '", name, "'; the methods are: ", names));
}

std::vector<Method> all_methods() {
  std::vector<Method> out;
  for (const auto& m : kMethods) out.push_back(m.method);
  return out;
}

bool uses_gradients(Method method) {
  return method == Method::gradcam || method == Method::gradcam_pp || method == Method::xgradcam ||
         method == Method::hirescam || method == Method::layercam;
}

}  // namespace gradcam

namespace gradcam::detail {

namespace {

std::vector<int64_t> spatial_dims(const at::Tensor& a) {
  std::vector<int64_t> d;
  for (int64_t i = 2; i < a.dim(); ++i) d.push_back(i);
  return d;
}

/// [N,K] weights broadcast against A [N,K,...].
at::Tensor weighted_sum(const at::Tensor& w, const at::Tensor& a) {
  std::vector<int64_t> shape = {a.size(0), a.size(1)};
  shape.resize(static_cast<size_t>(a.dim()), 1);
  return (w.view(shape) * a).sum(1, /*keepdim=*/true);
}

/// num / den where den != 0, else 0 (no epsilon: an epsilon would bias small gradients).
at::Tensor safe_div(const at::Tensor& num, const at::Tensor& den) {
  const at::Tensor nz = den != 0;
  return at::where(nz, num / at::where(nz, den, at::ones_like(den)), at::zeros_like(num));
}

}  // namespace

Weighted gradient_method(Method method, const at::Tensor& a, const at::Tensor& g) {
  const auto sp = spatial_dims(a);
  Weighted out;
  switch (method) {
    case Method::gradcam:
      out.weights = g.mean(sp);
      break;
    case Method::gradcam_pp: {
      const at::Tensor g2 = g * g;
      const at::Tensor g3 = g2 * g;
      const at::Tensor sum_a = a.sum(sp, /*keepdim=*/true);
      const at::Tensor alpha = safe_div(g2, 2 * g2 + sum_a * g3);
      out.weights = (alpha * at::relu(g)).sum(sp);
      break;
    }
    case Method::xgradcam:
      out.weights = safe_div((g * a).sum(sp), a.sum(sp));
      break;
    case Method::hirescam:
      out.signed_map = (g * a).sum(1, /*keepdim=*/true);
      return out;
    case Method::layercam:
      out.signed_map = (at::relu(g) * a).sum(1, /*keepdim=*/true);
      return out;
    default:
      GRADCAM_ASSERT(false);
  }
  out.signed_map = weighted_sum(out.weights, a);
  return out;
}

Weighted eigen_cam(const at::Tensor& a) {
  const int64_t n = a.size(0);
  const int64_t k = a.size(1);
  std::vector<at::Tensor> maps;
  for (int64_t i = 0; i < n; ++i) {
    at::Tensor x = a[i].reshape({k, -1}).t();  // [positions, K]
    x = x - x.mean(0, /*keepdim=*/true);
    at::Tensor vh = std::get<2>(at::linalg_svd(x, /*full_matrices=*/false));
    at::Tensor proj = at::matmul(x, vh[0]);  // [positions]
    const at::Tensor ref = x.sum(1);         // centred channel sum
    if (at::dot(proj, ref).item<double>() < 0) proj = -proj;
    std::vector<int64_t> shape = {1};
    for (int64_t d = 2; d < a.dim(); ++d) shape.push_back(a.size(d));
    maps.push_back(proj.view(shape));
  }
  Weighted out;
  out.signed_map = at::stack(maps, 0);
  return out;
}

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

at::Tensor perturbed_logits(Method method, const Forward& forward, const at::Tensor& input,
                            const at::Tensor& a, size_t slot, int64_t call, int64_t batch) {
  GRADCAM_CHECK(batch >= 1, "perturbation_batch must be >= 1, got ", batch);
  GRADCAM_CHECK(a.dim() == 4, "Score-CAM / Ablation-CAM need a 4-D activation [N,K,h,w]");
  c10::NoGradGuard no_grad;
  const int64_t n = a.size(0);
  const int64_t k = a.size(1);
  const int64_t total = n * k;
  at::Tensor masks;
  if (method == Method::scorecam) {
    at::Tensor up = at::upsample_bilinear2d(a.reshape({total, 1, a.size(2), a.size(3)}),
                                            {input.size(2), input.size(3)}, false);
    at::Tensor flat = up.view({total, -1});
    at::Tensor lo = std::get<0>(flat.min(1, true));
    at::Tensor hi = std::get<0>(flat.max(1, true));
    at::Tensor range = hi - lo;
    masks = at::where(range > 0, (flat - lo) / at::where(range > 0, range, at::ones_like(range)),
                      at::zeros_like(flat))
                .view({total, 1, input.size(2), input.size(3)});
  }
  const at::Tensor sample_of = at::arange(n, input.options().dtype(at::kLong)).repeat_interleave(k);
  const at::Tensor channel_of = at::arange(k, input.options().dtype(at::kLong)).repeat({n});
  std::vector<at::Tensor> chunks;
  for (int64_t start = 0; start < total; start += batch) {
    const int64_t len = std::min(batch, total - start);
    const at::Tensor rows = sample_of.narrow(0, start, len);
    at::Tensor x = input.index_select(0, rows);
    CaptureContext ctx(forward.slots(), CaptureContext::Mode::perturb);
    if (method == Method::scorecam) {
      x = x * masks.narrow(0, start, len).to(x.scalar_type());
    } else {
      ctx.ablate_slot = static_cast<int64_t>(slot);
      ctx.ablate_call = call;
      ctx.ablate_mask = at::ones({len, k}, a.options());
      ctx.ablate_mask.scatter_(1, channel_of.narrow(0, start, len).view({-1, 1}), 0.0);
    }
    at::Tensor logits = logits_of(forward.run(x, ctx));
    GRADCAM_CHECK(logits.dim() == 2 && logits.size(0) == len, "the model output has shape ",
                  shape_str(logits.sizes()), " on a perturbed batch of ", len,
                  "; Score-CAM and Ablation-CAM need class scores [N, classes]");
    chunks.push_back(logits.detach());
  }
  at::Tensor all = at::cat(chunks, 0);
  return all.view({n, k, all.size(1)});
}

}  // namespace gradcam::detail
